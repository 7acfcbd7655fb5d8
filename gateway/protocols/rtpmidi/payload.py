"""RTP-MIDI packets: the RTP header and the MIDI command section, sans-IO.

# implements RFC 3550 §5.1 (RTP fixed header; CSRC list, extension and padding are skipped)
# implements RFC 6295 §2.1 (RTP header use: V=2, M sent as 0 and accepted either way, PT 97)
# implements RFC 6295 §3 (MIDI command section: B/J/Z/P header, MIDI list)
# implements RFC 6295 §3.1 (delta times, 1-4 octets, most significant group first)
# implements RFC 6295 §3.2 (command coding: running status, system common and
#   real-time commands, SysEx whole or in F0/F7 segments with F4 cancel)
# the recovery journal that may follow (RFC 6295 §4-§5) lives in journal_wire.py (format),
#   journal_sender.py and journal_receiver.py

Hand-written because no maintained Python library implements RFC 6295 with its
recovery journal (pymidi, the only one on PyPI, reads delta times
little-endian, ignores Z and cannot send); see /work/shared/protocols/rtpmidi.md.

Nothing here imports Twisted or touches sockets or clocks: ``RtpMidiPacket.parse``
takes bytes, ``bytes(packet)`` gives them back.
"""

import struct

from gateway.midi import SYSEX_END, SYSEX_START, data_length
from gateway.protocols.rtpmidi.journal_wire import Journal, MalformedPacket

__all__ = [
    "MalformedPacket", "RtpMidiPacket", "SysExReassembler",
    "PAYLOAD_TYPE", "MAX_DELTA", "FLAG_J", "encode_delta", "rtp_header", "command_section",
    "section_of_list",
]

PAYLOAD_TYPE = 97
RTP_VERSION = 2
MAX_DELTA = (1 << 28) - 1
MAX_LIST_LENGTH = 0x0FFF

SYSEX_CANCEL = 0xF4

_RTP_HEADER = struct.Struct("!BBHII")
_RTP_HEADER_SIZE = _RTP_HEADER.size

_FLAG_B = 0x80
FLAG_J = 0x40
_FLAG_Z = 0x20
_FLAG_P = 0x10

# One-octet deltas dominate real traffic; a table avoids building them per packet.
_SHORT_DELTAS = [bytes((value,)) for value in range(128)]
# Data octets after each status octet (SysEx: 0, it is parsed separately), and
# each status as one octet, for expanding running status.
_DATA_OCTETS = tuple(0 if status < 0x80 or status in (SYSEX_START, SYSEX_END)
                     else data_length(status) for status in range(0x100))
_STATUS_OCTETS = [bytes((status,)) for status in range(0x100)]
_SYSEX_TERMINATORS = (SYSEX_START, SYSEX_END, SYSEX_CANCEL)
_ZERO_DELTA = b"\x00"


def encode_delta(delta):
    """Octets of an RFC 6295 §3.1 delta time (0 ... 2**28-1)."""
    if delta < 128:
        if delta < 0:
            raise ValueError(f"delta time {delta} is negative")
        return _SHORT_DELTAS[delta]
    if delta > MAX_DELTA:
        raise ValueError(f"delta time {delta} exceeds {MAX_DELTA}")
    groups = [delta & 0x7F]
    delta >>= 7
    while delta:
        groups.append(0x80 | (delta & 0x7F))
        delta >>= 7
    return bytes(reversed(groups))


def _read_delta(data, pos, end):
    """Return (delta, next position) for the delta time starting at ``pos``."""
    value = 0
    for _ in range(4):
        if pos >= end:
            raise MalformedPacket("MIDI list ends inside a delta time")
        octet = data[pos]
        pos += 1
        value = (value << 7) | (octet & 0x7F)
        if octet < 0x80:
            return value, pos
    raise MalformedPacket("delta time longer than 4 octets")


class RtpMidiPacket:
    """One RTP-MIDI packet.

    ``commands`` is a list of ``(delta_ticks, message_bytes)``; the first delta is
    the offset from ``timestamp``, each later one is relative to the previous
    command. Messages are complete MIDI messages with running status expanded,
    except SysEx segments, which are kept as sent (``F0..F0``, ``F7..F0``,
    ``F7..F7``, ``..F4``) for :class:`SysExReassembler`.

    ``midi_list`` (parsed packets only) holds the MIDI list octets as received
    when the list starts at ``timestamp`` with a status octet (Z=0, P=0), so
    that a relay can forward it without encoding it again; otherwise None.
    """

    _FIELDS = ("sequence", "timestamp", "ssrc", "marker", "payload_type",
               "commands", "phantom", "journal")
    __slots__ = _FIELDS[:-1] + ("_journal", "_journal_octets", "midi_list")

    def __init__(self, sequence=0, timestamp=0, ssrc=0, commands=(), journal=None,
                 marker=False, payload_type=PAYLOAD_TYPE, phantom=False):
        self.sequence = sequence
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.marker = marker
        self.payload_type = payload_type
        self.commands = list(commands)
        self.phantom = phantom
        self._journal = journal
        self._journal_octets = None
        self.midi_list = None

    @property
    def journal(self):
        """The recovery journal, None if the packet has none (J=0).

        Read from the wire on first use when parsed with ``lazy_journal``, so it
        may then raise :class:`MalformedPacket`.
        """
        octets = self._journal_octets
        if octets is not None:
            self._journal_octets = None
            self._journal = Journal.parse(octets)
        return self._journal

    @journal.setter
    def journal(self, journal):
        self._journal = journal
        self._journal_octets = None

    def __eq__(self, other):
        if not isinstance(other, RtpMidiPacket):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self._FIELDS)

    def __repr__(self):
        commands = ", ".join(f"{delta}:{message.hex(' ')}" for delta, message in self.commands)
        return (f"RtpMidiPacket(seq={self.sequence}, ts={self.timestamp}, "
                f"ssrc=0x{self.ssrc:08x}, [{commands}], journal={self.journal!r})")

    @classmethod
    def parse(cls, data, lazy_journal=False):
        """Decode one datagram; raise :class:`MalformedPacket` for anything invalid.

        With ``lazy_journal`` the recovery journal is only read when
        :attr:`journal` is first used: a receiver needs it only after a loss.
        """
        return _parse_packet(data, lazy_journal)

    def __bytes__(self):
        journal = self.journal
        header = rtp_header(self.sequence, self.timestamp, self.ssrc, self.marker,
                            self.payload_type)
        section = command_section(self.commands, journal is not None, self.phantom)
        if journal is None:
            return header + section
        return b"".join((header, section, bytes(journal)))


def _parse_packet(data, lazy_journal):
    # RtpMidiPacket.parse; a function so that the compiled build can type it (payload.pxd).
    if type(data) is not bytes:
        data = bytes(data)
    end = len(data)
    if end < _RTP_HEADER_SIZE + 1:
        raise MalformedPacket(f"packet of {end} octets is shorter than RTP + command header")
    first, second, sequence, timestamp, ssrc = _RTP_HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise MalformedPacket(f"RTP version {first >> 6}, expected 2")
    pos = _RTP_HEADER_SIZE + 4 * (first & 0x0F)
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or padding > end - pos:
            raise MalformedPacket(f"RTP padding count {padding} is invalid")
        end -= padding
    if first & 0x10:
        if pos + 4 > end:
            raise MalformedPacket("RTP header extension truncated")
        pos += 4 + 4 * struct.unpack_from("!H", data, pos + 2)[0]
    if pos >= end:
        raise MalformedPacket("no MIDI command section after the RTP header")

    flags = data[pos]
    length = flags & 0x0F
    pos += 1
    if flags & _FLAG_B:
        if pos >= end:
            raise MalformedPacket("long command section header truncated")
        length = (length << 8) | data[pos]
        pos += 1
    list_end = pos + length
    if list_end > end:
        raise MalformedPacket(f"MIDI list LEN={length} runs past the packet end")
    # Set field by field: __init__ would copy the freshly parsed command list.
    packet = RtpMidiPacket.__new__(RtpMidiPacket)
    packet.sequence = sequence
    packet.timestamp = timestamp
    packet.ssrc = ssrc
    packet.marker = bool(second & 0x80)
    packet.payload_type = second & 0x7F
    packet.commands = _parse_midi_list(data, pos, list_end, flags & _FLAG_Z)
    packet.phantom = bool(flags & _FLAG_P)
    # Forwardable as it came when it starts at the packet's time with a status octet.
    packet.midi_list = None if flags & (_FLAG_Z | _FLAG_P) else data[pos:list_end]
    packet._journal = None
    packet._journal_octets = None
    if flags & FLAG_J:
        if lazy_journal:
            packet._journal_octets = data[list_end:end]
        else:
            packet._journal = Journal.parse(data[list_end:end])
    return packet


def rtp_header(sequence, timestamp, ssrc, marker=False, payload_type=PAYLOAD_TYPE):
    """The 12-octet RTP fixed header RFC 6295 §2.1 asks for."""
    return _RTP_HEADER.pack(0x80, (0x80 if marker else 0) | payload_type, sequence & 0xFFFF,
                            timestamp & 0xFFFFFFFF, ssrc & 0xFFFFFFFF)


def command_section(commands, journal_follows, phantom=False):
    """The MIDI command section (§3): B/J/Z/P/LEN header and the MIDI list of ``commands``.

    Raises ValueError when the list exceeds LEN's 4095 octets.
    """
    midi_list, first_has_delta = _build_midi_list(commands)
    return section_of_list(midi_list, first_has_delta, journal_follows, phantom)


def section_of_list(midi_list, first_has_delta=False, journal_follows=False, phantom=False):
    """The command section for an already encoded MIDI list (as :attr:`RtpMidiPacket.midi_list`).

    A list of one octet (a lone clock, Start, Stop, Active Sensing: a session
    tempo sends 48 a second) goes as the same command after a zero delta
    (Z=1, LEN=2), which RFC 6295 §3 allows and every receiver must read:
    node-rtpmidi 1.0.0 loses every LEN=1 list (shared/protocols/rtpmidi.md §3.3).
    """
    if len(midi_list) == 1 and not first_has_delta:
        midi_list = _ZERO_DELTA + midi_list
        first_has_delta = True
    length = len(midi_list)
    flags = 0
    if first_has_delta:
        flags |= _FLAG_Z
    if phantom:
        flags |= _FLAG_P
    if journal_follows:
        flags |= FLAG_J
    if length <= 0x0F:
        return bytes((flags | length,)) + midi_list
    if length <= MAX_LIST_LENGTH:
        return bytes((flags | _FLAG_B | (length >> 8), length & 0xFF)) + midi_list
    raise ValueError(f"MIDI list of {length} octets exceeds {MAX_LIST_LENGTH}")


def _parse_midi_list(data, pos, end, first_has_delta):
    # The per-packet path of every received RTP-MIDI packet: one-octet deltas
    # and channel messages are decoded inline, the rest by helpers.
    commands = []
    append = commands.append
    running = None
    delta = 0
    read_delta = first_has_delta
    while pos < end:
        if read_delta:
            delta = data[pos]
            if delta < 0x80:
                pos += 1
            else:
                delta, pos = _read_delta(data, pos, end)
            if pos >= end:
                raise MalformedPacket("MIDI list ends after a delta time")
        read_delta = True
        status = data[pos]
        if status < 0x80:
            if running is None:
                raise MalformedPacket(f"data octet 0x{status:02x} without running status")
            needed = _DATA_OCTETS[running]
            message = _STATUS_OCTETS[running] + data[pos:pos + needed]
            pos += needed
        elif status >= 0xF8:
            append((delta, data[pos:pos + 1]))
            pos += 1
            continue
        elif status == SYSEX_START or status == SYSEX_END:
            running = None
            pos = _parse_sysex(data, pos, end, delta, commands)
            continue
        else:
            needed = _DATA_OCTETS[status]
            message = data[pos:pos + needed + 1]
            pos += needed + 1
            running = status if status < 0xF0 else None
        if pos > end:
            raise MalformedPacket("MIDI list ends inside a command")
        if needed and (message[1] | message[-1]) & 0x80:
            raise MalformedPacket(f"status octet inside command {message.hex(' ')}")
        append((delta, message))
    return commands


def _parse_sysex(data, pos, end, delta, commands):
    """Append the SysEx segment at ``pos`` (and any real-time octets inside it)."""
    start = pos
    pos += 1
    embedded = []
    while True:
        if pos >= end:
            raise MalformedPacket("SysEx segment has no F0/F7/F4 terminator")
        octet = data[pos]
        if octet >= 0x80:
            if octet in _SYSEX_TERMINATORS:
                break
            if octet < 0xF8:
                raise MalformedPacket(f"status 0x{octet:02x} inside SysEx")
            embedded.append(pos)
        pos += 1
    pos += 1
    if not embedded:
        commands.append((delta, data[start:pos]))
        return pos
    # Real-time octets may interleave SysEx (§3.2); they are delivered first
    # because they play at this instant while the SysEx only completes later.
    segment = bytearray()
    previous = start
    for index in embedded:
        commands.append((delta, data[index:index + 1]))
        delta = 0
        segment += data[previous:index]
        previous = index + 1
    segment += data[previous:pos]
    commands.append((0, bytes(segment)))
    return pos


def _build_midi_list(commands):
    """Return (MIDI list octets, whether the first command carries a delta)."""
    parts = []
    append = parts.append
    running = None
    first_has_delta = False
    first = True
    for delta, message in commands:
        if first:
            first = False
            if delta:
                first_has_delta = True
                append(encode_delta(delta))
        else:
            append(encode_delta(delta))
        status = message[0]
        if status < 0xF0:
            if status == running:
                append(message[1:])
                continue
            running = status
        elif status < 0xF8:
            running = None
        append(message)
    return b"".join(parts), first_has_delta


class SysExReassembler:
    """Joins SysEx segments (RFC 6295 §3.2) from consecutive packets.

    ``feed`` each SysEx command in order; it returns the complete ``F0 ... F7``
    message when the last segment arrives, else None. A cancelled (``F4``),
    orphaned or oversized message is dropped and counted in ``dropped``.
    """

    __slots__ = ("max_size", "dropped", "_pending")

    def __init__(self, max_size=65536):
        self.max_size = max_size
        self.dropped = 0
        self._pending = None

    def feed(self, segment):
        opening = segment[0] == SYSEX_START
        closing = segment[-1]
        if opening and self._pending is not None:
            self._abandon()
        if closing == SYSEX_CANCEL:
            self._abandon()
            return None
        if opening:
            if closing == SYSEX_END:
                return bytes(segment)
            self._pending = bytearray(segment[:-1])
            return None
        if self._pending is None:
            self.dropped += 1
            return None
        self._pending += segment[1:-1]
        if len(self._pending) > self.max_size:
            self._abandon()
            return None
        if closing == SYSEX_END:
            message = bytes(self._pending) + bytes((SYSEX_END,))
            self._pending = None
            return message
        return None

    def reset(self):
        """Forget a partial message, e.g. after packet loss broke the chain."""
        self._abandon()

    def _abandon(self):
        if self._pending is not None:
            self.dropped += 1
            self._pending = None
