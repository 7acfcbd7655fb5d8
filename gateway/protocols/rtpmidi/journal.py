"""The RTP-MIDI recovery journal: wire format and the sender/receiver semantics.

# implements RFC 6295 §4 (recovery journal: S bits, checkpoint history)
# implements RFC 6295 §5 (recovery journal format: journal header, channel journals, system journal header)
# implements RFC 6295 Appendix A.1-A.9 (channel chapters P, C, M, W, N, E, T, A: parse and build;
#   M is carried verbatim, its parameter logs are not interpreted)
# implements RFC 6295 Appendix B.1 (system journal header; chapters D, V, Q, F, X carried verbatim, skipped by LENGTH)
# implements RFC 6295 Appendix C.2.2 (closed-loop checkpoint policy, fed by AppleMIDI RS feedback),
#   with an open-loop bound on the history when no feedback arrives
# follows RFC 4696's receiver guidance (use the journal after loss to end stuck notes;
#   sounding late NoteOns is a receiver option)

Hand-written because no maintained Python library implements the RFC 6295
recovery journal: pymidi only reads the journal header, node-rtpmidi and
rtpmidid do not send one (see /work/shared/protocols/rtpmidi.md).

Sans-IO: no Twisted, no sockets, no clocks. Sequence numbers and RTP timestamps
are passed in; nothing here reads the time.

Flow on the sending side, per packet ``n``::

    journal = sender.journal_for(seq, timestamp)      # checkpoint .. n-1; None if empty
    packet = RtpMidiPacket(seq, timestamp, ssrc, commands, journal)
    sender.record(seq, timestamp, [message for _, message in commands])
    ...
    sender.acknowledge(rs_sequence)                   # AppleMIDI RS feedback

(stream.py puts ``sender.journal_octets(seq, timestamp)``, the same journal
as octets, straight on the wire) and on the receiving side ``receiver.receive(packet)`` returns the commands to
play, repairs for any loss first.
"""

from gateway.midi import (
    CC_SUSTAIN, CHANNEL_PRESSURE, CONTROL_CHANGE, NOTE_OFF, NOTE_ON, PITCH_BEND,
    POLY_PRESSURE, PROGRAM_CHANGE,
)

__all__ = [
    "MalformedPacket", "Journal", "ChannelJournal", "SystemJournal",
    "ProgramChapter", "ControllerChapter", "ParameterChapter", "PitchChapter",
    "NoteChapter", "ExtrasChapter", "PressureChapter", "PolyPressureChapter",
    "ChannelState", "JournalSender", "JournalReceiver",
]


class MalformedPacket(ValueError):
    """An RTP-MIDI packet or journal that cannot be decoded; the message says why."""


# Channel journal table of contents (Figure 9), in wire order.
_TOC_P = 0x80
_TOC_C = 0x40
_TOC_M = 0x20
_TOC_W = 0x10
_TOC_N = 0x08
_TOC_E = 0x04
_TOC_T = 0x02
_TOC_A = 0x01

_JOURNAL_S = 0x80
_JOURNAL_Y = 0x40
_JOURNAL_A = 0x20
_JOURNAL_H = 0x10

_NO_BITMAP_LOW = 15
_NOTE_GROUPS = 16                # bitmap octets of 8 notes each
_NO_BITMAP_HIGH = 0

CC_BANK_MSB = 0
CC_BANK_LSB = 32
CC_ALL_SOUND_OFF = 120
CC_RESET_ALL_CONTROLLERS = 121
CC_ALL_NOTES_OFF = 123
PITCH_CENTER = 0x2000
UNSET = -1

# Controllers that end every note on the channel (MIDI 1.0 channel mode messages);
# the journal records their effect in chapter N rather than replaying them.
_NOTES_OFF_CONTROLLERS = frozenset((CC_ALL_SOUND_OFF, CC_ALL_NOTES_OFF, 124, 125, 126, 127))
# Commands, not state: a receiver must never replay them as a repair.
_COMMAND_CONTROLLERS = frozenset((CC_ALL_SOUND_OFF, CC_RESET_ALL_CONTROLLERS, CC_ALL_NOTES_OFF))
# What Reset All Controllers sets (MIDI RP-015).
_RESET_CONTROLLER_VALUES = ((1, 0), (11, 127), (CC_SUSTAIN, 0), (65, 0), (66, 0), (67, 0),
                            (98, 127), (99, 127), (100, 127), (101, 127))

_SEQUENCE_MODULUS = 1 << 16
_HALF_SEQUENCE = 1 << 15


def extend_sequence(sequence, reference):
    """Unwrap a 16-bit sequence number to the extended number nearest ``reference``."""
    difference = (sequence - reference) & 0xFFFF
    if difference >= _HALF_SEQUENCE:
        difference -= _SEQUENCE_MODULUS
    return reference + difference


class _Record:
    """Value semantics for the small journal structures below."""

    __slots__ = ()

    def _fields(self):
        return [name for cls in reversed(type(self).__mro__)
                for name in getattr(cls, "__slots__", ())]

    def __eq__(self, other):
        if type(self) is not type(other):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self._fields())

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields())
        return f"{type(self).__name__}({fields})"


# Every structure has an ``s_bit``: RFC 6295's S flag, True when the structure
# holds nothing about the packet just before this one, so a receiver that lost
# only that packet may skip it.

class ProgramChapter(_Record):
    """Chapter P (A.2): the last Program Change and the bank it selected."""

    __slots__ = ("s_bit", "program", "bank_valid", "bank_msb", "bank_reset", "bank_lsb")
    size = 3

    def __init__(self, program, bank_msb=0, bank_lsb=0, bank_valid=False,
                 bank_reset=False, s_bit=False):
        self.s_bit = s_bit
        self.program = program
        self.bank_valid = bank_valid
        self.bank_msb = bank_msb
        self.bank_reset = bank_reset
        self.bank_lsb = bank_lsb

    @classmethod
    def parse(cls, data, pos):
        first, second, third = data[pos], data[pos + 1], data[pos + 2]
        return cls(first & 0x7F, second & 0x7F, third & 0x7F, bool(second & 0x80),
                   bool(third & 0x80), bool(first & 0x80)), pos + 3

    def build(self, out):
        out += bytes(((self.s_bit << 7) | self.program,
                      (self.bank_valid << 7) | self.bank_msb,
                      (self.bank_reset << 7) | self.bank_lsb))


def _parse_logs(data, pos, count):
    """Two-octet logs ``F1 FIELD1(7) F2 FIELD2(7)`` as (flag1, field1, flag2, field2)."""
    logs = []
    for index in range(pos, pos + 2 * count, 2):
        first = data[index]
        second = data[index + 1]
        logs.append((bool(first & 0x80), first & 0x7F, bool(second & 0x80), second & 0x7F))
    return logs


def _build_logs(out, logs):
    for flag1, field1, flag2, field2 in logs:
        out.append((flag1 << 7) | field1)
        out.append((flag2 << 7) | field2)


class _LogChapter(_Record):
    """A chapter of one ``S LEN(7)`` octet then LEN+1 two-octet logs (C, E, A)."""

    __slots__ = ("s_bit", "logs")

    def __init__(self, logs, s_bit=False):
        self.s_bit = s_bit
        self.logs = list(logs)

    @classmethod
    def parse(cls, data, pos):
        count = (data[pos] & 0x7F) + 1
        return cls(_parse_logs(data, pos + 1, count), bool(data[pos] & 0x80)), pos + 1 + 2 * count

    @staticmethod
    def wire_size(data, pos):
        return 1 + 2 * ((data[pos] & 0x7F) + 1)

    def build(self, out):
        if not 1 <= len(self.logs) <= 128:
            raise ValueError(f"{type(self).__name__} needs 1-128 logs, has {len(self.logs)}")
        out.append((self.s_bit << 7) | (len(self.logs) - 1))
        _build_logs(out, self.logs)


class ControllerChapter(_LogChapter):
    """Chapter C (A.3): logs ``(s_bit, controller, alternate, value)``.

    ``alternate`` False means ``value`` is the controller's value (value tool);
    True means the toggle/count tools of A.3.3, carried but not interpreted.
    """

    __slots__ = ()


class ExtrasChapter(_LogChapter):
    """Chapter E (A.7): logs ``(s_bit, note, is_release_velocity, count_or_velocity)``."""

    __slots__ = ()


class PolyPressureChapter(_LogChapter):
    """Chapter A (A.9): logs ``(s_bit, note, x_bit, pressure)``."""

    __slots__ = ()


class ParameterChapter(_Record):
    """Chapter M (A.4), RPN/NRPN state, kept as its raw octets (header included)."""

    __slots__ = ("raw",)

    def __init__(self, raw):
        self.raw = bytes(raw)

    @staticmethod
    def wire_size(data, pos):
        length = ((data[pos] & 0x03) << 8) | data[pos + 1]
        if length < 2:
            raise MalformedPacket(f"chapter M LENGTH {length} is shorter than its header")
        return length

    @classmethod
    def parse(cls, data, pos):
        size = cls.wire_size(data, pos)
        return cls(data[pos:pos + size]), pos + size

    def build(self, out):
        out += self.raw


class PitchChapter(_Record):
    """Chapter W (A.5): the last Pitch Wheel command's two data octets."""

    __slots__ = ("s_bit", "first", "r_bit", "second")
    size = 2

    def __init__(self, first, second, s_bit=False, r_bit=False):
        self.s_bit = s_bit
        self.first = first
        self.r_bit = r_bit
        self.second = second

    @property
    def value(self):
        return self.first | (self.second << 7)

    @classmethod
    def parse(cls, data, pos):
        first, second = data[pos], data[pos + 1]
        return cls(first & 0x7F, second & 0x7F, bool(first & 0x80), bool(second & 0x80)), pos + 2

    def build(self, out):
        out.append((self.s_bit << 7) | self.first)
        out.append((self.r_bit << 7) | self.second)


class PressureChapter(_Record):
    """Chapter T (A.8): the last Channel Pressure value."""

    __slots__ = ("s_bit", "pressure")
    size = 1

    def __init__(self, pressure, s_bit=False):
        self.s_bit = s_bit
        self.pressure = pressure

    @classmethod
    def parse(cls, data, pos):
        return cls(data[pos] & 0x7F, bool(data[pos] & 0x80)), pos + 1

    def build(self, out):
        out.append((self.s_bit << 7) | self.pressure)


class NoteChapter(_Record):
    """Chapter N (A.6): note logs ``(s_bit, note, play, velocity)`` and a NoteOff bitmap.

    ``offbits`` holds the bitmap octets for note groups ``low``... (octet i
    covers notes 8*(low+i) .. 8*(low+i)+7, most significant bit first);
    ``b_bit`` is the bitmap's S flag. Use :meth:`with_off_notes` to build one
    from a set of note numbers.
    """

    __slots__ = ("b_bit", "logs", "low", "offbits")

    def __init__(self, logs=(), low=_NO_BITMAP_LOW, offbits=b"", b_bit=False):
        self.b_bit = b_bit
        self.logs = list(logs)
        self.low = low
        self.offbits = bytes(offbits)

    @classmethod
    def with_off_notes(cls, logs, off_notes, b_bit=False):
        if not off_notes:
            return cls(logs, b_bit=b_bit)
        return cls(logs, *_off_bitmap(off_notes), b_bit)

    def widened(self, octets):
        """This chapter with zero octets added around its bitmap to make ``octets`` (at most 16).

        A zero octet logs no NoteOff (A.6), so the meaning is unchanged.
        """
        if octets <= len(self.offbits):
            return self
        return NoteChapter(self.logs, *_widen_bitmap(self.low, self.offbits, octets), self.b_bit)

    @property
    def off_notes(self):
        notes = []
        for index, octet in enumerate(self.offbits):
            base = (self.low + index) << 3
            for bit in range(8):
                if octet & (0x80 >> bit):
                    notes.append(base + bit)
        return notes

    @staticmethod
    def _counts(first, second):
        """(note log count, bitmap octet count) from the two header octets."""
        length = first & 0x7F
        low = second >> 4
        high = second & 0x0F
        if length == 127 and low == _NO_BITMAP_LOW and high == _NO_BITMAP_HIGH:
            return 128, 0
        return length, (high - low + 1 if low <= high else 0)

    @classmethod
    def wire_size(cls, data, pos):
        count, octets = cls._counts(data[pos], data[pos + 1])
        return 2 + 2 * count + octets

    @classmethod
    def parse(cls, data, pos):
        count, octets = cls._counts(data[pos], data[pos + 1])
        logs = _parse_logs(data, pos + 2, count)
        bitmap_at = pos + 2 + 2 * count
        end = bitmap_at + octets
        low = data[pos + 1] >> 4 if octets else _NO_BITMAP_LOW
        return cls(logs, low, data[bitmap_at:end], bool(data[pos] & 0x80)), end

    def build(self, out):
        count = len(self.logs)
        if count > 128 or (count == 128 and self.offbits):
            raise ValueError("chapter N holds at most 128 note logs, and 128 only without a bitmap")
        if self.offbits:
            low, high = self.low, self.low + len(self.offbits) - 1
            if high > 15:
                raise ValueError(f"chapter N bitmap ends at group {high}, past 15")
        elif count == 127:
            # LOW=15, HIGH=0 with LEN=127 would mean 128 logs; any other LOW > HIGH is empty.
            low, high = _NO_BITMAP_LOW, 1
        else:
            low, high = _NO_BITMAP_LOW, _NO_BITMAP_HIGH
        out.append((self.b_bit << 7) | min(count, 127))
        out.append((low << 4) | high)
        _build_logs(out, self.logs)
        out += self.offbits


def _off_bitmap(off_notes):
    """(LOW, bitmap octets) of a chapter N NoteOff bitmap holding ``off_notes`` (not empty)."""
    if len(off_notes) == 1:
        return _ONE_NOTE_BITMAPS[off_notes[0]]
    low = min(off_notes) >> 3
    bitmap = bytearray((max(off_notes) >> 3) - low + 1)
    for note in off_notes:
        bitmap[(note >> 3) - low] |= 0x80 >> (note & 7)
    return low, bytes(bitmap)


# The common case of one released note, prepared for every note number.
_ONE_NOTE_BITMAPS = tuple((note >> 3, bytes((0x80 >> (note & 7),))) for note in range(128))


def _widen_bitmap(low, offbits, octets):
    """(LOW, bitmap) with zero octets around ``offbits`` to make ``octets`` (at most 16)."""
    missing = octets - len(offbits)
    high = low + len(offbits) - 1
    above = min(missing, _NOTE_GROUPS - 1 - high)
    below = missing - above
    return low - below, bytes(below) + offbits + bytes(above)


# Chapters in table-of-contents order, as (TOC bit, attribute, class).
_CHAPTERS = (
    (_TOC_P, "program", ProgramChapter),
    (_TOC_C, "controllers", ControllerChapter),
    (_TOC_M, "parameters", ParameterChapter),
    (_TOC_W, "pitch", PitchChapter),
    (_TOC_N, "notes", NoteChapter),
    (_TOC_E, "extras", ExtrasChapter),
    (_TOC_T, "pressure", PressureChapter),
    (_TOC_A, "poly_pressure", PolyPressureChapter),
)
# The fewest octets a chapter can occupy, to check before reading its header.
_CHAPTER_MINIMUM = {ProgramChapter: 3, ControllerChapter: 3, ParameterChapter: 2,
                    PitchChapter: 2, NoteChapter: 2, ExtrasChapter: 3,
                    PressureChapter: 1, PolyPressureChapter: 3}
# (TOC bit, attribute, class, fixed size or 0 if variable, minimum size) for parsing.
_CHAPTER_LAYOUT = tuple((bit, name, chapter_class, getattr(chapter_class, "size", 0),
                         _CHAPTER_MINIMUM[chapter_class])
                        for bit, name, chapter_class in _CHAPTERS)


class ChannelJournal(_Record):
    """One channel's journal (§5.2, Figure 9); absent chapters are None."""

    __slots__ = ("s_bit", "channel", "h_bit", "program", "controllers", "parameters",
                 "pitch", "notes", "extras", "pressure", "poly_pressure")

    def __init__(self, channel, program=None, controllers=None, parameters=None, pitch=None,
                 notes=None, extras=None, pressure=None, poly_pressure=None,
                 s_bit=False, h_bit=False):
        self.s_bit = s_bit
        self.channel = channel
        self.h_bit = h_bit
        self.program = program
        self.controllers = controllers
        self.parameters = parameters
        self.pitch = pitch
        self.notes = notes
        self.extras = extras
        self.pressure = pressure
        self.poly_pressure = poly_pressure

    @classmethod
    def parse(cls, data, pos, end):
        if pos + 3 > end:
            raise MalformedPacket("channel journal header truncated")
        first, second, toc = data[pos], data[pos + 1], data[pos + 2]
        length = ((first & 0x03) << 8) | second
        stop = pos + length
        if length < 3 or stop > end:
            raise MalformedPacket(f"channel journal LENGTH {length} does not fit the packet")
        journal = cls((first >> 3) & 0x0F, s_bit=bool(first & 0x80), h_bit=bool(first & 0x04))
        pos += 3
        for bit, name, chapter_class, size, minimum in _CHAPTER_LAYOUT:
            if not toc & bit:
                continue
            if pos + minimum > stop:
                raise MalformedPacket(f"chapter {name} overruns its channel journal")
            if pos + (size or chapter_class.wire_size(data, pos)) > stop:
                raise MalformedPacket(f"chapter {name} overruns its channel journal")
            chapter, pos = chapter_class.parse(data, pos)
            setattr(journal, name, chapter)
        if pos != stop:
            raise MalformedPacket(
                f"channel {journal.channel} journal LENGTH {length} leaves {stop - pos} octets unused")
        return journal, stop

    def build(self, out):
        start = len(out)
        out += b"\0\0\0"
        toc = 0
        for bit, name, _ in _CHAPTERS:
            chapter = getattr(self, name)
            if chapter is not None:
                toc |= bit
                chapter.build(out)
        length = len(out) - start
        if length > 0x3FF:
            raise ValueError(f"channel {self.channel} journal of {length} octets exceeds 1023")
        out[start] = (self.s_bit << 7) | (self.channel << 3) | (self.h_bit << 2) | (length >> 8)
        out[start + 1] = length & 0xFF
        out[start + 2] = toc


class SystemJournal(_Record):
    """The system journal (§5.3, Appendix B), kept as raw octets (header included)."""

    __slots__ = ("raw",)

    def __init__(self, raw):
        self.raw = bytes(raw)

    @property
    def s_bit(self):
        return bool(self.raw[0] & 0x80)

    @property
    def chapters(self):
        """Letters of the chapters present (from D, V, Q, F, X)."""
        return "".join(letter for letter, bit in zip("DVQFX", (0x40, 0x20, 0x10, 0x08, 0x04))
                       if self.raw[0] & bit)

    @classmethod
    def parse(cls, data, pos, end):
        if pos + 2 > end:
            raise MalformedPacket("system journal header truncated")
        length = ((data[pos] & 0x03) << 8) | data[pos + 1]
        if length < 2 or pos + length > end:
            raise MalformedPacket(f"system journal LENGTH {length} does not fit the packet")
        return cls(data[pos:pos + length]), pos + length

    def build(self, out):
        out += self.raw


class Journal(_Record):
    """A recovery journal (§5.1, Figure 7/8): header, optional system journal, channel journals."""

    __slots__ = ("s_bit", "h_bit", "checkpoint", "system", "channels")

    def __init__(self, checkpoint, channels=(), system=None, s_bit=False, h_bit=False):
        self.s_bit = s_bit
        self.h_bit = h_bit
        self.checkpoint = checkpoint
        self.system = system
        self.channels = list(channels)

    @classmethod
    def parse(cls, data):
        """Decode a journal from the bytes after the MIDI list; trailing octets are ignored."""
        try:
            return cls._parse(data)
        except IndexError:
            raise MalformedPacket("recovery journal truncated") from None

    @classmethod
    def _parse(cls, data):
        end = len(data)
        if end < 3:
            raise MalformedPacket("recovery journal header truncated")
        flags = data[0]
        journal = cls((data[1] << 8) | data[2], s_bit=bool(flags & _JOURNAL_S),
                      h_bit=bool(flags & _JOURNAL_H))
        pos = 3
        if flags & _JOURNAL_Y:
            journal.system, pos = SystemJournal.parse(data, pos, end)
        if flags & _JOURNAL_A:
            for _ in range((flags & 0x0F) + 1):
                channel_journal, pos = ChannelJournal.parse(data, pos, end)
                journal.channels.append(channel_journal)
        return journal

    def __bytes__(self):
        count = len(self.channels)
        if count > 16:
            raise ValueError(f"{count} channel journals, at most 16")
        flags = (self.s_bit << 7) | (self.h_bit << 4)
        if self.system is not None:
            flags |= _JOURNAL_Y
        if count:
            flags |= _JOURNAL_A | (count - 1)
        out = bytearray((flags, (self.checkpoint >> 8) & 0xFF, self.checkpoint & 0xFF))
        if self.system is not None:
            self.system.build(out)
        for channel_journal in self.channels:
            channel_journal.build(out)
        return bytes(out)


class ChannelState:
    """What one MIDI channel's messages have set, with the sequence number of each change.

    Both ends keep one per channel: the sender to know what to journal (the
    ``*_stamps`` say which packet last changed each item), the receiver to
    know what a journal must repair.
    """

    __slots__ = ("velocities", "on_stamps", "off_stamps", "on_times", "note_stamps",
                 "controllers", "controller_stamps", "program", "bank_msb", "bank_lsb",
                 "bank_valid", "program_stamp", "pitch", "pitch_stamp", "pressure",
                 "pressure_stamp", "poly_pressure", "poly_stamps", "last_stamp")

    def __init__(self):
        self.velocities = bytearray(128)          # 0 = off
        self.on_stamps = [UNSET] * 128
        self.off_stamps = [UNSET] * 128
        self.on_times = [0] * 128
        self.note_stamps = {}                     # note -> last change, insertion-ordered
        self.controllers = [UNSET] * 128
        self.controller_stamps = {}
        self.program = UNSET
        self.bank_msb = 0
        self.bank_lsb = 0
        self.bank_valid = False
        self.program_stamp = UNSET
        self.pitch = UNSET
        self.pitch_stamp = UNSET
        self.pressure = UNSET
        self.pressure_stamp = UNSET
        self.poly_pressure = {}                   # note -> pressure
        self.poly_stamps = {}
        self.last_stamp = UNSET

    def apply(self, message, stamp, time=0):
        """Update the state for one channel message sent in packet ``stamp`` at ``time``."""
        kind = message[0] & 0xF0
        self.last_stamp = stamp
        if kind == NOTE_ON and message[2]:
            note = message[1]
            self.velocities[note] = message[2]
            self.on_stamps[note] = stamp
            self.on_times[note] = time
            self.note_stamps[note] = stamp
        elif kind == NOTE_OFF or kind == NOTE_ON:
            self._note_off(message[1], stamp)
        elif kind == PITCH_BEND:
            self.pitch = message[1] | (message[2] << 7)
            self.pitch_stamp = stamp
        elif kind == CONTROL_CHANGE:
            self._control_change(message[1], message[2], stamp)
        elif kind == PROGRAM_CHANGE:
            self.program = message[1]
            msb, lsb = self.controllers[CC_BANK_MSB], self.controllers[CC_BANK_LSB]
            self.bank_valid = msb != UNSET or lsb != UNSET
            self.bank_msb = max(msb, 0)
            self.bank_lsb = max(lsb, 0)
            self.program_stamp = stamp
        elif kind == CHANNEL_PRESSURE:
            self.pressure = message[1]
            self.pressure_stamp = stamp
        elif kind == POLY_PRESSURE:
            self.poly_pressure[message[1]] = message[2]
            self.poly_stamps[message[1]] = stamp

    def _note_off(self, note, stamp):
        self.velocities[note] = 0
        self.off_stamps[note] = stamp
        self.note_stamps[note] = stamp

    def _control_change(self, number, value, stamp):
        if number in _NOTES_OFF_CONTROLLERS:
            for note in range(128):
                if self.velocities[note]:
                    self._note_off(note, stamp)
            if number in _COMMAND_CONTROLLERS:
                return
        if number == CC_RESET_ALL_CONTROLLERS:
            for controller, default in _RESET_CONTROLLER_VALUES:
                self.controllers[controller] = default
                self.controller_stamps[controller] = stamp
            self.pitch = PITCH_CENTER
            self.pitch_stamp = stamp
            self.pressure = 0
            self.pressure_stamp = stamp
            for note in self.poly_pressure:
                self.poly_pressure[note] = 0
                self.poly_stamps[note] = stamp
            return
        self.controllers[number] = value
        self.controller_stamps[number] = stamp

    def snapshot(self):
        """Comparable summary: sounding notes, controllers, program, pitch, pressures."""
        return {
            "notes": frozenset(note for note, velocity in enumerate(self.velocities) if velocity),
            "controllers": {number: value for number, value in enumerate(self.controllers)
                            if value != UNSET},
            "program": (self.program, self.bank_valid, self.bank_msb, self.bank_lsb)
            if self.program != UNSET else None,
            "pitch": self.pitch,
            "pressure": self.pressure,
            "poly_pressure": {note: value for note, value in self.poly_pressure.items() if value},
        }


def _forget_older(stamps, checkpoint):
    """Drop the items of ``stamps`` last changed before ``checkpoint``."""
    for item in [item for item, stamp in stamps.items() if stamp < checkpoint]:
        del stamps[item]


def _append_logs(out, stamps, values, previous):
    """A chapter of ``S LEN`` then two-octet logs (C, A) for the items of ``stamps``."""
    chapter_s = True
    start = len(out)
    out.append(0)
    for number, stamp in stamps.items():
        older = stamp != previous
        chapter_s = chapter_s and older
        out.append((older << 7) | number)
        out.append(values[number])
    out[start] = (chapter_s << 7) | (len(stamps) - 1)


class JournalSender:
    """Keeps the checkpoint history of a stream and writes each packet's journal.

    ``late_note_ticks``: a NoteOn younger than this (in RTP timestamp units)
    gets Y=1 in chapter N, telling receivers it is still worth playing late;
    1000 is 100 ms at AppleMIDI's 10 kHz clock. ``max_history``: without
    receiver feedback the checkpoint trails the newest packet by at most this
    many packets (open-loop bound), so the journal stays bounded.

    The journal is written straight to octets (:meth:`journal_octets`, the
    per-packet path); :meth:`journal_for` reads them back as a :class:`Journal`.
    """

    def __init__(self, late_note_ticks=1000, max_history=1024):
        if not 1 <= max_history < _HALF_SEQUENCE:
            raise ValueError(f"max_history must be 1-{_HALF_SEQUENCE - 1}, got {max_history}")
        self.late_note_ticks = late_note_ticks
        self.max_history = max_history
        self.channels = [ChannelState() for _ in range(16)]
        # Channels that may have changed since the checkpoint, highest first.
        self._recent_channels = []
        self._checkpoint = None      # extended sequence number of the oldest packet journalled
        self._last_sent = None       # extended sequence number of the newest recorded packet
        self._forgotten_before = None   # the checkpoint older items were last dropped at
        self._forget_step = max(1, max_history // 32)

    @property
    def checkpoint(self):
        """16-bit sequence number of the checkpoint packet (None before the first packet)."""
        return None if self._checkpoint is None else self._checkpoint & 0xFFFF

    def _extend(self, sequence):
        last = self._last_sent
        if last is None:
            return sequence
        if sequence == (last + 1) & 0xFFFF:
            return last + 1          # the next packet, the per-packet case: nothing to unwrap
        return extend_sequence(sequence, last)

    def journal_for(self, sequence, timestamp):
        """The journal for packet ``sequence`` (sent at RTP ``timestamp``), or None if empty."""
        octets = self.journal_octets(sequence, timestamp)
        return None if octets is None else Journal.parse(octets)

    def journal_octets(self, sequence, timestamp):
        """The journal of packet ``sequence``, covering checkpoint .. n-1, as octets.

        None when it would hold no channel journal: an empty journal repairs
        nothing, and pymidi misreads its header (S=1 taken for a system
        journal) and drops the whole packet, so the packet goes without (J=0).
        """
        return self._octets(self._extend(sequence), timestamp)

    def record(self, sequence, timestamp, messages):
        """Note the MIDI messages packet ``sequence`` carried (call after journal_for)."""
        self._record(self._extend(sequence), timestamp, messages)

    def send(self, sequence, timestamp, messages):
        """:meth:`journal_octets` then :meth:`record` for one packet: the per-packet path."""
        current = self._extend(sequence)
        octets = self._octets(current, timestamp)
        self._record(current, timestamp, messages)
        return octets

    def _octets(self, current, timestamp):
        checkpoint = self._checkpoint
        if checkpoint is None:
            checkpoint = self._checkpoint = self._forgotten_before = current
        elif checkpoint < current - self.max_history:
            checkpoint = self._checkpoint = current - self.max_history
            if checkpoint - self._forgotten_before >= self._forget_step:
                self._forget_before(checkpoint)
        recent_channels = self._recent_channels
        if not recent_channels:
            return None
        previous = current - 1
        parts = []
        s_bit = True
        channels = self.channels
        # Highest channel first, because only the journal's final chapter N gets
        # a widened bitmap; the parts are reversed into wire order below.
        for channel in recent_channels:
            state = channels[channel]
            octets = self._channel_octets(channel, state, checkpoint, previous, timestamp,
                                          not parts)
            if octets is not None:
                parts.append(octets)
                s_bit = s_bit and state.last_stamp != previous
        if not parts:
            return None
        header = bytes(((s_bit << 7) | _JOURNAL_A | (len(parts) - 1),
                        (checkpoint >> 8) & 0xFF, checkpoint & 0xFF))
        if len(parts) == 1:
            return header + parts[0]
        parts.append(header)
        parts.reverse()
        return b"".join(parts)

    def _forget_before(self, checkpoint):
        """Drop what changed before ``checkpoint``: the journal no longer needs it.

        Done when feedback moves the checkpoint, and every ``max_history / 32``
        packets while the history bound drags it along, rather than per packet:
        the per-packet path journals every item still held, and an item a
        little older than the checkpoint states what the receiver already has.
        """
        self._forgotten_before = checkpoint
        channels = self.channels
        for channel in list(self._recent_channels):
            state = channels[channel]
            if state.last_stamp < checkpoint:
                self._recent_channels.remove(channel)
                state.note_stamps.clear()
                state.controller_stamps.clear()
                state.poly_stamps.clear()
                continue
            _forget_older(state.note_stamps, checkpoint)
            _forget_older(state.controller_stamps, checkpoint)
            _forget_older(state.poly_stamps, checkpoint)

    def _channel_octets(self, channel, state, checkpoint, previous, timestamp, final):
        """One channel journal (§5.2) as octets, None if no chapter has anything to say."""
        out = bytearray(3)
        toc = 0
        if state.program_stamp >= checkpoint:
            toc = _TOC_P
            out += bytes((((state.program_stamp != previous) << 7) | state.program,
                          (state.bank_valid << 7) | state.bank_msb, state.bank_lsb))
        if state.controller_stamps:
            toc |= _TOC_C
            _append_logs(out, state.controller_stamps, state.controllers, previous)
        if state.pitch_stamp >= checkpoint:
            toc |= _TOC_W
            pitch = state.pitch
            out.append(((state.pitch_stamp != previous) << 7) | (pitch & 0x7F))
            out.append(pitch >> 7)
        pressure = state.pressure_stamp >= checkpoint
        if state.note_stamps:
            toc |= _TOC_N
            self._append_note_chapter(out, state, checkpoint, previous, timestamp,
                                      final and not pressure and not state.poly_stamps)
        if pressure:
            toc |= _TOC_T
            out.append(((state.pressure_stamp != previous) << 7) | state.pressure)
        if state.poly_stamps:
            toc |= _TOC_A
            _append_logs(out, state.poly_stamps, state.poly_pressure, previous)
        if not toc:
            return None
        length = len(out)
        if length > 0x3FF:
            raise ValueError(f"channel {channel} journal of {length} octets exceeds 1023")
        out[0] = ((state.last_stamp != previous) << 7) | (channel << 3) | (length >> 8)
        out[1] = length & 0xFF
        out[2] = toc
        return out

    def _append_note_chapter(self, out, state, checkpoint, previous, timestamp, ends_journal):
        """Chapter N (A.6) for the notes changed since the checkpoint.

        ``ends_journal``: it is the last chapter of the packet.
        """
        header_at = len(out)
        out += b"\0\0"
        off_notes = []
        offs_from_previous = False
        late_ticks = self.late_note_ticks
        velocities = state.velocities
        on_stamps = state.on_stamps
        off_stamps = state.off_stamps
        on_times = state.on_times
        count = 0
        for note in state.note_stamps:
            velocity = velocities[note]
            if velocity:
                count += 1
                out.append(((on_stamps[note] != previous) << 7) | note)
                out.append(((((timestamp - on_times[note]) & 0xFFFFFFFF) < late_ticks) << 7)
                           | velocity)
            off_stamp = off_stamps[note]
            if off_stamp >= checkpoint:
                off_notes.append(note)
                offs_from_previous = offs_from_previous or off_stamp == previous
        if off_notes and count < 128:
            low, offbits = _off_bitmap(off_notes)
            if ends_journal and count > len(offbits):
                # Wireshark 4.0 and earlier (decode_cj_chapter_n in
                # packet-rtp-midi.c) sizes the bitmap of a packet-ending chapter
                # N by its log count, not HIGH - LOW + 1, and calls the correct
                # chapter malformed; zero octets log nothing (A.6) and keep
                # captures of the gateway readable.
                low, offbits = _widen_bitmap(low, offbits, min(count, _NOTE_GROUPS))
            high = low + len(offbits) - 1
            out += offbits
        else:
            # 128 logs leave no room for a bitmap (every note is sounding anyway);
            # LOW=15, HIGH=0 with LEN=127 would mean 128 logs, so 127 uses HIGH=1.
            low, high = _NO_BITMAP_LOW, 1 if count == 127 else _NO_BITMAP_HIGH
        out[header_at] = ((not offs_from_previous) << 7) | min(count, 127)
        out[header_at + 1] = (low << 4) | high

    def _record(self, current, timestamp, messages):
        if self._checkpoint is None:
            self._checkpoint = self._forgotten_before = current
        self._last_sent = current
        channels = self.channels
        recent_channels = self._recent_channels
        for message in messages:
            status = message[0]
            if status < 0xF0:
                channel = status & 0x0F
                state = channels[channel]
                state.apply(message, current, timestamp)
                if channel not in recent_channels:
                    recent_channels.append(channel)
                    recent_channels.sort(reverse=True)

    def acknowledge(self, sequence):
        """The receiver reports ``sequence`` as its highest received (AppleMIDI RS).

        That packet becomes the checkpoint: its own commands stay journalled, so
        an RS that raced ahead of the receiver's processing is harmless.
        Reports older than the checkpoint or newer than anything sent are ignored.
        """
        if self._last_sent is None:
            return
        acknowledged = extend_sequence(sequence, self._last_sent)
        if acknowledged > self._checkpoint and acknowledged <= self._last_sent:
            self._checkpoint = acknowledged
            self._forget_before(acknowledged)

    def snapshot(self):
        return [state.snapshot() for state in self.channels]


class JournalReceiver:
    """Follows one sender's stream and repairs the MIDI state after packet loss.

    ``receive`` each packet in arrival order. After a gap, the packet's journal
    is compared with what this receiver has played, and the difference is
    played first: NoteOffs for notes the sender released, then program,
    controllers, pitch and pressure, then NoteOns the sender still holds. A
    missed NoteOn is sounded only when the sender marked it as recent (Y=1)
    or when ``sound_late_notes`` is set (RFC 4696 leaves that choice to the
    receiver). Late and duplicate packets are dropped: the journal of the
    packet that revealed the gap already restored their effect.
    """

    def __init__(self, sound_late_notes=False):
        self.sound_late_notes = sound_late_notes
        self.channels = [ChannelState() for _ in range(16)]
        self.lost_packets = 0
        self.late_packets = 0
        self.repaired_gaps = 0
        self.unrecoverable_gaps = 0
        self._highest = None

    def receive(self, packet):
        """Return ``(delta, message)`` pairs to play: repairs (delta 0) then the packet's commands."""
        highest = self._highest
        sequence = packet.sequence
        played = None
        if highest is not None and sequence == (highest + 1) & 0xFFFF:
            current = highest + 1
        else:
            if highest is None:
                current = sequence
            else:
                current = extend_sequence(sequence, highest)
                if current <= highest:
                    self.late_packets += 1
                    return []
            played = [(0, message) for message in self._recover(packet.journal, highest, current)]
        self._highest = current
        commands = packet.commands
        channels = self.channels
        for _, message in commands:
            status = message[0]
            if status < 0xF0:
                state = channels[status & 0x0F]
                state.apply(message, current)
        if not played:
            return commands
        played.extend(commands)
        return played

    def _recover(self, journal, highest, current):
        """Repairs for the packets between ``highest`` and ``current`` (None: stream start)."""
        if highest is not None:
            self.lost_packets += current - highest - 1
        if journal is None:
            if highest is not None:
                self.unrecoverable_gaps += 1
            return []
        checkpoint = extend_sequence(journal.checkpoint, current)
        if highest is not None:
            if checkpoint > highest + 1:
                self.unrecoverable_gaps += 1
            if current == highest + 2 and journal.s_bit:
                return []
            self.repaired_gaps += 1
        repairs = []
        for channel_journal in journal.channels:
            self._repair_channel(channel_journal, checkpoint, current, repairs)
        return repairs

    def _repair_channel(self, channel_journal, checkpoint, stamp, repairs):
        channel = channel_journal.channel
        state = self.channels[channel]
        start = len(repairs)
        notes = channel_journal.notes
        logged = {}
        if notes is not None:
            logged = {note: (play, velocity) for _, note, play, velocity in notes.logs}
            for note in notes.off_notes:
                # A logged note that was also released in the history was struck
                # again; if what sounds here predates the history, it is the old one.
                if state.velocities[note] and (
                        note not in logged or state.on_stamps[note] < checkpoint):
                    repairs.append(bytes((NOTE_OFF | channel, note, 0)))
        program = channel_journal.program
        if program is not None and (
                program.program != state.program or program.bank_valid != state.bank_valid
                or (program.bank_valid and (program.bank_msb, program.bank_lsb)
                    != (state.bank_msb, state.bank_lsb))):
            if program.bank_valid:
                repairs.append(bytes((CONTROL_CHANGE | channel, CC_BANK_MSB, program.bank_msb)))
                repairs.append(bytes((CONTROL_CHANGE | channel, CC_BANK_LSB, program.bank_lsb)))
            repairs.append(bytes((PROGRAM_CHANGE | channel, program.program)))
        # Apply what is queued so far so later comparisons see the repaired program/bank.
        self._apply(state, repairs, start, stamp)
        start = len(repairs)
        if channel_journal.controllers is not None:
            for _, number, alternate, value in channel_journal.controllers.logs:
                if (not alternate and number not in _COMMAND_CONTROLLERS
                        and state.controllers[number] != value):
                    repairs.append(bytes((CONTROL_CHANGE | channel, number, value)))
        pitch = channel_journal.pitch
        if pitch is not None and pitch.value != state.pitch:
            repairs.append(bytes((PITCH_BEND | channel, pitch.first, pitch.second)))
        pressure = channel_journal.pressure
        if pressure is not None and pressure.pressure != state.pressure:
            repairs.append(bytes((CHANNEL_PRESSURE | channel, pressure.pressure)))
        for note, (play, velocity) in logged.items():
            if velocity and not state.velocities[note] and (play or self.sound_late_notes):
                repairs.append(bytes((NOTE_ON | channel, note, velocity)))
        if channel_journal.poly_pressure is not None:
            for _, note, _, value in channel_journal.poly_pressure.logs:
                if state.poly_pressure.get(note, UNSET) != value:
                    repairs.append(bytes((POLY_PRESSURE | channel, note, value)))
        self._apply(state, repairs, start, stamp)

    @staticmethod
    def _apply(state, repairs, start, stamp):
        for index in range(start, len(repairs)):
            state.apply(repairs[index], stamp)

    def snapshot(self):
        return [state.snapshot() for state in self.channels]
