"""Plain HTTP that sends every request to the same path on the https site.

Players type ``example.org:80`` or follow an old ``http://`` link; the
redirect (``web.redirect_http_port``) takes them to the TLS port. It goes to
the host the client named itself (the Host header) and nowhere else: a Host
that is not a hostname or an IP address gets 400, so no header can steer the
Location to another site or path.
"""

import ipaddress
import re

from twisted.web import resource

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?")
_HOST_HEADER = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::[0-9]*)?")


def host_of(host_header):
    """The host part of a Host header, bracketed if IPv6; None unless it is a hostname or
    an IP address."""
    matched = _HOST_HEADER.fullmatch(host_header)
    if matched is None:
        return None
    host = matched.group("host")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
        return host
    return host if _HOSTNAME.fullmatch(host) else None


def https_location(host, tls_port, target):
    """The https URL of request-target ``target`` (``/path?query``) on ``host``.

    A target that is not a path (absolute form, ``*``) goes to the site's root.
    """
    port = "" if tls_port == 443 else f":{tls_port}"
    path = target if target.startswith("/") else "/"
    return f"https://{host}{port}{path}"


def local_host(address):
    """The address a client without a Host header reached, for a URL (IPv6 bracketed)."""
    return f"[{address}]" if ":" in address else address


class HttpsRedirect(resource.Resource):
    """Answers every request with 301 to the same path on port ``tls_port`` (https)."""

    isLeaf = True

    def __init__(self, tls_port):
        super().__init__()
        self.tls_port = tls_port

    def render(self, request):
        header = request.getHeader(b"host")
        host = host_of(header.decode("latin-1")) if header is not None \
            else local_host(request.getHost().host)
        if host is None:
            request.setResponseCode(400)
            return b"bad Host header\n"
        location = https_location(host, self.tls_port, request.uri.decode("latin-1"))
        request.setResponseCode(301)
        request.setHeader(b"location", location.encode("latin-1"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"moved to {location}\n".encode("latin-1")
