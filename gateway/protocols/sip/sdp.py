"""Session descriptions: the SDP bodies of SIP INVITEs, as ordered ``type=value`` lines.

# implements RFC 4566 §5 (``<type>=<value>`` lines; o, s, t, m, c and a fields)
# implements RFC 4566 §6 for the attributes the SIP door reads: rtpmap and
#   free-form ``a=name:value`` / ``a=flag``

Only the fields a door needs are interpreted (:meth:`Sdp.origin`,
:meth:`Sdp.media`, :meth:`Sdp.connection`, :meth:`Sdp.rtpmap`); every line
is kept in order, so a body can be written back unchanged.

Sans-IO: bytes in, values out.
"""

import typing

__all__ = ["MalformedSdp", "Sdp", "Origin", "Media", "RtpMap", "NTP_UNIX_OFFSET"]

NTP_UNIX_OFFSET = 2208988800
"""Seconds from the NTP epoch (1900) to the Unix epoch (1970); SDP times are NTP."""

MAX_LINES = 128


class MalformedSdp(ValueError):
    """A body that is not the session description a door needs."""


class Origin(typing.NamedTuple):
    username: str
    session_id: int
    version: str
    address: str


class Media(typing.NamedTuple):
    kind: str
    port: int
    protocol: str
    formats: typing.Tuple[str, ...]


class RtpMap(typing.NamedTuple):
    payload_type: int
    encoding: str
    clock_rate: typing.Optional[int]


class Sdp:
    """An SDP body: its lines in order, ``(type, value)``."""

    __slots__ = ("lines",)

    def __init__(self, lines=()):
        self.lines = list(lines)

    @classmethod
    def parse(cls, body):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedSdp("SDP is not UTF-8") from None
        lines = []
        for raw in text.replace("\r\n", "\n").split("\n"):
            if not raw.strip():
                continue
            kind, equals, value = raw.partition("=")
            kind = kind.strip()
            if not equals or len(kind) != 1 or not kind.isalpha():
                raise MalformedSdp(f"not an SDP line: {raw[:40]!r}")
            if len(lines) >= MAX_LINES:
                raise MalformedSdp(f"more than {MAX_LINES} SDP lines")
            lines.append((kind, value.strip()))
        return cls(lines)

    def to_bytes(self, line_end="\r\n"):
        return "".join(f"{kind}={value}{line_end}" for kind, value in self.lines).encode("utf-8")

    def first(self, kind):
        for key, value in self.lines:
            if key == kind:
                return value
        return None

    def attribute(self, name):
        """The value of the first ``a=name:value`` (``""`` for a flag ``a=name``), or None."""
        for key, value in self.lines:
            if key != "a":
                continue
            attribute, colon, rest = value.partition(":")
            if attribute.strip() == name:
                return rest.strip() if colon else ""
        return None

    def _required(self, kind):
        value = self.first(kind)
        if value is None:
            raise MalformedSdp(f"no {kind}= line")
        return value

    def origin(self):
        parts = self._required("o").split()
        if len(parts) != 6 or parts[3:5] != ["IN", "IP4"] or not parts[1].isdigit():
            raise MalformedSdp(f"bad o= line {self.first('o')[:60]!r}")
        return Origin(parts[0], int(parts[1]), parts[2], parts[5])

    def media(self):
        parts = self._required("m").split()
        if len(parts) < 4 or not parts[1].isdigit() or not 0 < int(parts[1]) < 65535:
            raise MalformedSdp(f"bad m= line {self.first('m')[:60]!r}")
        return Media(parts[0], int(parts[1]), parts[2], tuple(parts[3:]))

    def connection(self):
        parts = self._required("c").split()
        if len(parts) != 3 or parts[:2] != ["IN", "IP4"]:
            raise MalformedSdp(f"bad c= line {self.first('c')[:60]!r}")
        return parts[2].split("/", 1)[0]

    def start_time(self):
        """The ``t=`` start time as Unix time (0: unbounded)."""
        parts = self._required("t").split()
        if not parts or not parts[0].isdigit():
            raise MalformedSdp(f"bad t= line {self.first('t')[:60]!r}")
        start = int(parts[0])
        return 0 if start == 0 else start - NTP_UNIX_OFFSET

    def rtpmap(self):
        """The first ``a=rtpmap`` as an :class:`RtpMap`."""
        value = self.attribute("rtpmap")
        if value is None:
            raise MalformedSdp("no a=rtpmap line")
        number, _, encoding = value.partition(" ")
        name, _, rate = encoding.strip().partition("/")
        rate = rate.split("/", 1)[0]
        if not number.isdigit() or int(number) > 127 or not name or (rate and not rate.isdigit()):
            raise MalformedSdp(f"bad a=rtpmap {value[:60]!r}")
        return RtpMap(int(number), name, int(rate) if rate else None)


# Lines a session refresh may change without changing the media (RFC 3264 §8: the
# origin's version moves; names, times and bandwidth say nothing about the streams).
_MEDIA_NEUTRAL_LINES = frozenset("osiuepzrtbk")


def same_media(offer, previous):
    """Whether SDP ``offer`` describes the same media as ``previous`` (a session refresh)."""
    if previous is None:
        return False
    try:
        return _media_lines(offer) == _media_lines(previous)
    except MalformedSdp:
        return False


def _media_lines(body):
    return [(kind, " ".join(value.split())) for kind, value in Sdp.parse(body).lines
            if kind not in _MEDIA_NEUTRAL_LINES]
