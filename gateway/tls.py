"""The gateway's certificate: a full chain and its key, read from PEM files.

What Let's Encrypt and most CAs issue is ``fullchain.pem`` (the leaf, then
the intermediates) and ``privkey.pem``; some put the key in the same file.
Twisted's ``PrivateCertificate.loadPEM`` keeps only the first certificate, so
clients that trust the root but not the intermediate refused the gateway
(``openssl s_client``: "unable to verify the first certificate"). This reads
every certificate in order and the key wherever it is, and checks that the
key is the leaf's. Configuration checks use it, so Twisted and pyOpenSSL are
imported only by :func:`certificate_options`, which a running gateway calls
(through :mod:`gateway.served_certificate`, which swaps it on SIGHUP).
"""

import dataclasses
import os
import re
import typing

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.schema import bounded

_CERTIFICATE_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s.+?-----END CERTIFICATE-----", re.S)
_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----\s.+?-----END \1-----", re.S)


@dataclasses.dataclass
class TlsConfig:
    """A ``{certificate, key}`` config section (web.tls, sip.uas.tls)."""

    certificate: str = bounded(doc="PEM certificate chain file: the leaf, then intermediates")
    key: typing.Optional[str] = bounded(None, doc="PEM private key file; null: the key is in"
                                                  " the certificate file")


class TlsFileError(ValueError):
    """A certificate or key file that cannot serve; the text says what is wrong."""


def _read(path):
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise TlsFileError(f"cannot read {path!r} ({error.strerror})") from None


def read_chain(certificate_path, key_path):
    """``(certificates, key)``: the leaf first, then the rest in file order, and its key.

    Raises :class:`TlsFileError` when a file holds no certificate or no key,
    a block does not parse, or the key does not belong to the leaf.
    """
    data = _read(certificate_path)
    blocks = _CERTIFICATE_BLOCK.findall(data)
    if not blocks:
        raise TlsFileError(f"no PEM certificate in {certificate_path!r}")
    try:
        chain = [x509.load_pem_x509_certificate(block) for block in blocks]
    except ValueError as error:
        raise TlsFileError(f"a certificate in {certificate_path!r} does not parse: {error}") \
            from None
    key_data = _read(key_path) if key_path else data
    found = _KEY_BLOCK.search(key_data)
    if found is None:
        raise TlsFileError(f"no PEM private key in {key_path or certificate_path!r}")
    try:
        key = serialization.load_pem_private_key(found.group(0), password=None)
    except (ValueError, TypeError) as error:
        raise TlsFileError(f"the private key in {key_path or certificate_path!r} cannot be"
                           f" used: {error}") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, public)
            != chain[0].public_key().public_bytes(serialization.Encoding.DER, public)):
        raise TlsFileError(f"the private key in {key_path or certificate_path!r} is not the"
                           f" key of the first certificate in {certificate_path!r}")
    return chain, key


def checked_chain(path, tls):
    """``(chain, key, problems)`` for a ``{certificate, key}`` section at ``path``.

    When the files cannot serve, ``chain`` and ``key`` are None and
    ``problems`` holds one config line per fault, naming the key.
    """
    found = []
    for key in ("certificate", "key"):
        value = getattr(tls, key)
        if value is not None and not os.access(value, os.R_OK):
            found.append(f"{path}.{key}: expected a readable PEM file, cannot read {value!r}")
    if found:
        return None, None, found
    try:
        chain, key = read_chain(tls.certificate, tls.key)
    except TlsFileError as error:
        return None, None, [f"{path}.certificate: expected a PEM certificate chain and its key,"
                            f" but {error}"]
    return chain, key, []


def problems(path, tls):
    """Config lines for a ``{certificate, key}`` section at ``path`` that cannot serve."""
    if tls.certificate is None:
        return []
    return checked_chain(path, tls)[2]


def certificate_options(chain, key):
    """Twisted TLS options that serve the whole ``chain`` (from :func:`read_chain`)."""
    import OpenSSL.crypto
    from twisted.internet import ssl
    leaf, *intermediates = [OpenSSL.crypto.X509.from_cryptography(certificate)
                            for certificate in chain]
    return ssl.CertificateOptions(privateKey=OpenSSL.crypto.PKey.from_cryptography_key(key),
                                  certificate=leaf, extraCertChain=intermediates)
