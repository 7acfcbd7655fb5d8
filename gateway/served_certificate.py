"""A TLS server certificate that can be replaced while its ports listen.

Twisted's ``CertificateOptions`` builds one OpenSSL context from one
certificate, and every listener keeps the options object it was given. So
that a renewed certificate (certbot's deploy hook sends SIGHUP) serves without
a restart, every TLS door of a config section gets the same
:class:`ServedCertificate`, which hands each new handshake to the options of
the files as last read. A connection keeps the context it started with, so
connections (and the sessions on them) outlive a reload.
"""

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from gateway.config import ConfigError
from gateway.tls import certificate_options, checked_chain


class CertificateUnusable(ConfigError):
    """A section's files cannot serve: at start-up a config error, on reload a reason to
    keep the old certificate. ``problems``: one line each, naming the key."""


@implementer(IOpenSSLServerConnectionCreator)
class ServedCertificate:
    """The certificate of config section ``path`` (``web.tls``, ``sip.uas.tls``) for
    ``listenSSL`` / ``internet.SSLServer``: what :meth:`reload` read last."""

    def __init__(self, path, section):
        self.path = path
        self.section = section
        self._options = None
        self.reload()

    def reload(self):
        """Read the section's files again; later handshakes serve them. Returns the leaf.

        Raises :class:`CertificateUnusable` (and keeps what was served)
        when they cannot serve.
        """
        chain, key, problems = checked_chain(self.path, self.section)
        if problems:
            raise CertificateUnusable(problems)
        options = certificate_options(chain, key)
        try:
            # Twisted builds the OpenSSL context at the first handshake; build it now, so
            # that what OpenSSL refuses (a key too small, say) fails here, not each client.
            options.getContext()
        except SSL.Error as error:
            raise CertificateUnusable([f"{self.path}.certificate: expected a certificate"
                                       f" and key OpenSSL accepts, but it says {error}"]) \
                from None
        self._options = options
        return chain[0]

    def serverConnectionForTLS(self, protocol):
        return self._options.serverConnectionForTLS(protocol)
