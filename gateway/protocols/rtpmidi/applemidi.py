"""AppleMIDI control packets: parse and build.

Implements the packet formats of Apple's MIDI Network Driver Protocol
("AppleMIDI"), the session layer every RTP-MIDI peer actually speaks in place
of RFC 6295 §6's SDP setup and RTCP feedback: IN/OK/NO/BY (invitation,
accept, reject, end), CK (three-way clock synchronisation), RS (receiver
feedback) and RL (bitrate receive limit, recognised but unused).

Written by hand because no maintained Python library implements AppleMIDI;
the layouts follow the fact sheet in shared/protocols/rtpmidi.md §8.1, which
was measured from real peers.

Sans-IO: bytes in, packet objects out; ``bytes(packet)`` goes the other way.
:func:`parse_control` raises only :class:`MalformedPacket` whatever it is fed.
"""

import struct
from dataclasses import dataclass
from typing import Optional

SIGNATURE = b"\xff\xff"
PROTOCOL_VERSION = 2

INVITATION = b"IN"
INVITATION_ACCEPTED = b"OK"
INVITATION_REJECTED = b"NO"
END_SESSION = b"BY"
SYNC = b"CK"
RECEIVER_FEEDBACK = b"RS"
BITRATE_LIMIT = b"RL"

EXCHANGE_COMMANDS = frozenset(
    {INVITATION, INVITATION_ACCEPTED, INVITATION_REJECTED, END_SESSION})

_EXCHANGE_HEADER = struct.Struct(">2s2sIII")
_SYNC = struct.Struct(">2s2sIB3xQQQ")
_SSRC_AND_WORD = struct.Struct(">2s2sII")

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


class MalformedPacket(ValueError):
    """The bytes are not a well-formed AppleMIDI control packet."""


def is_applemidi(data):
    """True if ``data`` looks like an AppleMIDI control packet.

    An RTP header starts with version 2 (0b10......), so its first octet can
    never be 0xFF; the signature alone separates control packets from RTP on
    the data port.
    """
    return data[:2] == SIGNATURE


def _check_range(field, value, maximum):
    if not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValueError(f"{field} must be an integer in 0..{maximum}, got {value!r}")


@dataclass(frozen=True)
class SessionExchange:
    """IN, OK, NO or BY: ``command`` is one of :data:`EXCHANGE_COMMANDS`.

    ``name`` is None when the packet carries no name (BY from Apple-style
    peers, sometimes NO).
    """

    command: bytes
    token: int
    ssrc: int
    name: Optional[str] = None
    version: int = PROTOCOL_VERSION

    def __post_init__(self):
        if self.command not in EXCHANGE_COMMANDS:
            raise ValueError(f"not an exchange command: {self.command!r}")
        _check_range("token", self.token, _U32)
        _check_range("ssrc", self.ssrc, _U32)
        _check_range("version", self.version, _U32)
        if self.name is not None and "\0" in self.name:
            raise ValueError("name must not contain NUL")

    def __bytes__(self):
        header = _EXCHANGE_HEADER.pack(
            SIGNATURE, self.command, self.version, self.token, self.ssrc)
        if self.name is None:
            return header
        return header + self.name.encode("utf-8") + b"\0"


@dataclass(frozen=True)
class Sync:
    """CK: ``count`` 0, 1 or 2 says how many of ts1..ts3 are filled in.

    Timestamps are 64-bit counts of 100 µs on the clock of whoever wrote them.
    """

    ssrc: int
    count: int
    ts1: int = 0
    ts2: int = 0
    ts3: int = 0

    def __post_init__(self):
        _check_range("ssrc", self.ssrc, _U32)
        _check_range("count", self.count, 2)
        for field in ("ts1", "ts2", "ts3"):
            _check_range(field, getattr(self, field), _U64)

    def __bytes__(self):
        return _SYNC.pack(SIGNATURE, SYNC, self.ssrc, self.count,
                          self.ts1, self.ts2, self.ts3)


@dataclass(frozen=True)
class ReceiverFeedback:
    """RS: the highest RTP sequence number ``ssrc`` has received from us."""

    ssrc: int
    seq: int

    def __post_init__(self):
        _check_range("ssrc", self.ssrc, _U32)
        _check_range("seq", self.seq, 0xFFFF)

    def __bytes__(self):
        # The u32 holds the 16-bit sequence number in its upper half (as
        # Wireshark, node-rtpmidi and rtpmidid read it).
        return _SSRC_AND_WORD.pack(SIGNATURE, RECEIVER_FEEDBACK, self.ssrc, self.seq << 16)


@dataclass(frozen=True)
class BitrateLimit:
    """RL: the sender asks to receive at most ``limit`` bits per second."""

    ssrc: int
    limit: int

    def __post_init__(self):
        _check_range("ssrc", self.ssrc, _U32)
        _check_range("limit", self.limit, _U32)

    def __bytes__(self):
        return _SSRC_AND_WORD.pack(SIGNATURE, BITRATE_LIMIT, self.ssrc, self.limit)


def _parse_name(tail):
    if not tail:
        return None
    # The name is only ever displayed, so a missing terminator or broken
    # UTF-8 is not worth refusing an invitation over.
    name = tail.split(b"\0", 1)[0]
    return name.decode("utf-8", errors="replace")


def _require_length(data, minimum, command):
    if len(data) < minimum:
        raise MalformedPacket(
            f"{command.decode()} needs {minimum} bytes, got {len(data)}")


def parse_control(data):
    """Decode one AppleMIDI control packet from a datagram.

    Returns a :class:`SessionExchange`, :class:`Sync`,
    :class:`ReceiverFeedback` or :class:`BitrateLimit`. Trailing bytes after
    a fixed-size packet are ignored. Raises :class:`MalformedPacket` for
    anything else.
    """
    data = bytes(data)
    if len(data) < 4:
        raise MalformedPacket(f"too short for an AppleMIDI header: {len(data)} bytes")
    if not is_applemidi(data):
        raise MalformedPacket("missing FF FF signature")
    command = data[2:4]
    if command in EXCHANGE_COMMANDS:
        _require_length(data, _EXCHANGE_HEADER.size, command)
        _, _, version, token, ssrc = _EXCHANGE_HEADER.unpack_from(data)
        return SessionExchange(command, token, ssrc,
                               _parse_name(data[_EXCHANGE_HEADER.size:]), version)
    if command == SYNC:
        _require_length(data, _SYNC.size, command)
        _, _, ssrc, count, ts1, ts2, ts3 = _SYNC.unpack_from(data)
        if count > 2:
            raise MalformedPacket(f"CK count must be 0, 1 or 2, got {count}")
        return Sync(ssrc, count, ts1, ts2, ts3)
    if command == RECEIVER_FEEDBACK:
        _require_length(data, _SSRC_AND_WORD.size, command)
        _, _, ssrc, word = _SSRC_AND_WORD.unpack_from(data)
        return ReceiverFeedback(ssrc, word >> 16)
    if command == BITRATE_LIMIT:
        _require_length(data, _SSRC_AND_WORD.size, command)
        _, _, ssrc, limit = _SSRC_AND_WORD.unpack_from(data)
        return BitrateLimit(ssrc, limit)
    raise MalformedPacket(f"unknown AppleMIDI command {command!r}")
