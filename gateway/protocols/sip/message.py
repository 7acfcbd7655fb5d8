"""SIP messages: parsing and writing requests and responses, whatever the dialect.

# implements RFC 3261 §7 (message format: start line, headers, body), §7.3.1
#   (header field format: case-insensitive names, folded lines, spaces around
#   the colon), §7.3.3 (compact forms) and §18.2.1 / §20.42 (Via: sent-by,
#   received; RFC 3581 rport)

The message model is the RFC's; a :class:`Dialect` says how a peer writes
them. sfront 0.98 (:mod:`gateway.protocols.sip.sfront`) ends lines with
``\\n`` and its datagrams with a NUL, uses compact names and no
Content-Length; RFC 3261 user agents use CRLF and long names. Parsing accepts
either.

Why not ``twisted.protocols.sip.MessagesParser``: it is a
``LineReceiver`` (Twisted in a sans-IO core, against the boundary rule),
splits lines on CRLF only, so a whole sfront message is one line; it rejects
a status line without a reason phrase, which is exactly what sfront answers
(``SIP/2.0 200``); it decodes as UTF-8 and hands exceptions to the global
log instead of to its caller. Its compact-name table and Via parser are the
same facts as here.

Sans-IO: bytes in, values out; nothing here reads the time or a socket.
"""

import re

__all__ = ["MalformedMessage", "Request", "Response", "Dialect", "RFC3261", "parse",
           "Via", "COMPACT_NAMES"]

MAX_HEADERS = 64
MAX_MESSAGE_OCTETS = 65535

COMPACT_NAMES = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to",
    "v": "via",
}
_LONG_TO_COMPACT = {long: short for short, long in COMPACT_NAMES.items()}
_CANONICAL_SPELLING = {"call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate"}

_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")


class MalformedMessage(ValueError):
    """A datagram that is not a SIP message."""


class _Message:
    """Headers (in order, names as written) and a body."""

    __slots__ = ("headers", "body")

    def __init__(self, headers=(), body=b""):
        self.headers = list(headers)
        self.body = body

    def get(self, name):
        """The first value of header ``name`` (long or compact form, any case), or None."""
        wanted = long_name(name)
        known = _LONG_NAMES.get
        for header, value in self.headers:
            if (known(header) or long_name(header)) == wanted:
                return value
        return None

    def values(self, name):
        wanted = long_name(name)
        return [value for header, value in self.headers if long_name(header) == wanted]

    @property
    def call_id(self):
        return self.get("call-id")

    @property
    def cseq(self):
        """``(number, method or None)`` of the CSeq header, or None when it is absent or bad."""
        value = self.get("cseq")
        if value is None:
            return None
        number, _, method = value.strip().partition(" ")
        if not number.isdigit() or len(number) > 10:
            return None
        return int(number), (method.strip() or None)

    def _lines(self, dialect):
        lines = [self.start_line()]
        for name, value in self.headers:
            lines.append(f"{dialect.spell(name)}: {value}")
        if dialect.content_length and self.get("content-length") is None:
            lines.append(f"{dialect.spell('content-length')}: {len(self.body)}")
        return lines

    def to_bytes(self, dialect):
        """The message as ``dialect`` writes it."""
        end = dialect.line_end
        text = end.join(self._lines(dialect)) + end
        if self.body or dialect.empty_line_without_body:
            text += end
        data = text.encode("utf-8") + self.body
        return data + b"\0" if dialect.trailing_nul else data


class Request(_Message):
    __slots__ = ("method", "uri")

    def __init__(self, method, uri, headers=(), body=b""):
        super().__init__(headers, body)
        self.method = method
        self.uri = uri

    def start_line(self):
        return f"{self.method} {self.uri} SIP/2.0"

    def __repr__(self):
        return f"Request({self.method} {self.uri}, {len(self.headers)} headers)"


class Response(_Message):
    __slots__ = ("status", "reason")

    def __init__(self, status, reason="", headers=(), body=b""):
        super().__init__(headers, body)
        self.status = status
        self.reason = reason

    def start_line(self):
        return f"SIP/2.0 {self.status} {self.reason}".rstrip()

    def __repr__(self):
        return f"Response({self.status} {self.reason}, {len(self.headers)} headers)"


class Dialect:
    """How a peer writes messages: line ending, compact names, Content-Length, a final NUL,
    and whether a message without a body still ends with an empty line (RFC 3261 §7)."""

    __slots__ = ("line_end", "compact", "content_length", "trailing_nul",
                 "empty_line_without_body")

    def __init__(self, line_end="\r\n", compact=False, content_length=True, trailing_nul=False,
                 empty_line_without_body=True):
        self.line_end = line_end
        self.compact = compact
        self.content_length = content_length
        self.trailing_nul = trailing_nul
        self.empty_line_without_body = empty_line_without_body

    def spell(self, name):
        """``name`` as this dialect writes it: compact, or long as written (canonical
        capitals when it was written compact or in lower case)."""
        long = long_name(name)
        if self.compact and long in _LONG_TO_COMPACT:
            return _LONG_TO_COMPACT[long]
        if len(name) > 1 and name != long:
            return name
        if long in _CANONICAL_SPELLING:
            return _CANONICAL_SPELLING[long]
        return "-".join(part.capitalize() for part in long.split("-"))


RFC3261 = Dialect()


_LONG_NAMES = {}
_MAX_REMEMBERED_NAMES = 4096


def long_name(name):
    """A header name's long form in lower case (remembered: headers repeat their names)."""
    long = _LONG_NAMES.get(name)
    if long is None:
        lowered = name.lower()
        long = COMPACT_NAMES.get(lowered, lowered)
        if len(_LONG_NAMES) < _MAX_REMEMBERED_NAMES:
            _LONG_NAMES[name] = long
    return long


def parse(data):
    """The :class:`Request` or :class:`Response` in datagram ``data``.

    Accepts CRLF or LF line ends and trailing NULs (sfront sends one). Without
    a Content-Length the body is the rest of the datagram (RFC 3261 §18.3 for
    UDP). Raises :class:`MalformedMessage` for anything else.
    """
    if len(data) > MAX_MESSAGE_OCTETS:
        raise MalformedMessage("datagram too large for a SIP message")
    data = data.rstrip(b"\0")
    head, body = _split_head(data)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage("header section is not UTF-8") from None
    lines = text.split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    message = _start(lines[0])
    headers = message.headers
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            if not headers:
                raise MalformedMessage("continuation line before any header")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _TOKEN.match(name):
            raise MalformedMessage(f"not a header line: {line[:40]!r}")
        if len(headers) >= MAX_HEADERS:
            raise MalformedMessage(f"more than {MAX_HEADERS} headers")
        headers.append((name, value.strip()))
    length = message.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > len(body):
            raise MalformedMessage(f"Content-Length {length[:12]!r} but {len(body)} body octets")
        body = body[:int(length)]
    message.body = body
    return message


def _split_head(data):
    """``(header octets, body octets)``: they part at the first empty line, LF or CRLF."""
    match = re.search(rb"\r?\n\r?\n", data)
    if match is None:
        return data, b""
    return data[:match.start()], data[match.end():]


def _start(line):
    parts = line.split(" ", 2)
    if len(parts) >= 2 and parts[0] == "SIP/2.0":
        if not (parts[1].isdigit() and len(parts[1]) == 3):
            raise MalformedMessage(f"bad status code {parts[1][:8]!r}")
        return Response(int(parts[1]), parts[2].strip() if len(parts) == 3 else "")
    if len(parts) == 3 and parts[2] == "SIP/2.0" and _TOKEN.match(parts[0]) and parts[1]:
        return Request(parts[0], parts[1])
    raise MalformedMessage(f"not a SIP start line: {line[:40]!r}")


class Via:
    """One Via value: ``SIP/2.0/UDP host:port;param=value...`` (RFC 3261 §20.42)."""

    __slots__ = ("transport", "host", "port", "params")

    def __init__(self, transport, host, port, params):
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params        # [(name, value or None)] in order

    @classmethod
    def parse(cls, value):
        """The Via in header value ``value`` (its first, when comma-separated); ValueError if bad."""
        first = value.split(",", 1)[0].strip()
        protocol, _, rest = first.partition(" ")
        parts = protocol.split("/")
        if len(parts) != 3 or parts[0].upper() != "SIP":
            raise ValueError(f"not a Via: {value[:40]!r}")
        sent_by, *raw_params = rest.strip().split(";")
        host, port = _host_port(sent_by.strip())
        params = []
        for raw in raw_params:
            name, equals, param = raw.strip().partition("=")
            params.append((name.strip().lower(), param.strip() if equals else None))
        return cls(parts[2].upper(), host, port, params)

    def param(self, name):
        for key, value in self.params:
            if key == name:
                return value
        return None

    def has(self, name):
        return any(key == name for key, _ in self.params)

    def with_received(self, host, port):
        """This Via as a server returns it to a client seen at ``(host, port)``
        (RFC 3261 §18.2.1 received, RFC 3581 rport)."""
        params = [(key, value) for key, value in self.params if key not in ("received", "rport")]
        params += [("received", host), ("rport", str(port))]
        return Via(self.transport, self.host, self.port, params)

    def __str__(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        sent_by = host if self.port is None else f"{host}:{self.port}"
        params = "".join(f";{key}" if value is None else f";{key}={value}"
                         for key, value in self.params)
        return f"SIP/2.0/{self.transport} {sent_by}{params}"


def _host_port(text):
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    else:
        host, colon, port = text.partition(":")
        port = port if colon else None
    if not host:
        raise ValueError(f"no host in {text[:40]!r}")
    if port is None:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {text[:40]!r}")
    return host, int(port)
