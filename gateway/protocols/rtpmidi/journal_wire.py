"""The RTP-MIDI recovery journal's wire format: parse and build, no semantics.

# implements RFC 6295 §5 (recovery journal format: journal header, channel journals,
#   system journal header; the S bits are carried, their meaning is §4's)
# implements RFC 6295 Appendix A.1-A.9 (channel chapters P, C, M, W, N, E, T, A: parse and build;
#   M is carried verbatim, its parameter logs are not interpreted)
# implements RFC 6295 Appendix B.1 (system journal header; chapters D, V, Q, F, X carried verbatim, skipped by LENGTH)

Hand-written because no maintained Python library implements the RFC 6295
recovery journal: pymidi only reads the journal header, node-rtpmidi and
rtpmidid do not send one (see /work/shared/protocols/rtpmidi.md).

``Journal.parse(octets)`` decodes the octets after a packet's MIDI list into
:class:`Journal`, :class:`ChannelJournal` and chapter records; ``bytes(journal)``
gives them back. What a journal should say is decided elsewhere:
journal_sender.py writes one per packet (straight to octets, with the bitmap
helpers below), journal_receiver.py repairs from one.

Sans-IO: bytes in, records out, and back.
"""

__all__ = [
    "MalformedPacket", "Journal", "ChannelJournal", "SystemJournal",
    "ProgramChapter", "ControllerChapter", "ParameterChapter", "PitchChapter",
    "NoteChapter", "ExtrasChapter", "PressureChapter", "PolyPressureChapter",
]


class MalformedPacket(ValueError):
    """An RTP-MIDI packet or journal that cannot be decoded; the message says why."""


# Channel journal table of contents (Figure 9), in wire order.
TOC_P = 0x80
TOC_C = 0x40
TOC_M = 0x20
TOC_W = 0x10
TOC_N = 0x08
TOC_E = 0x04
TOC_T = 0x02
TOC_A = 0x01

JOURNAL_S = 0x80
JOURNAL_Y = 0x40
JOURNAL_A = 0x20
JOURNAL_H = 0x10

NO_BITMAP_LOW = 15
NOTE_GROUPS = 16                # bitmap octets of 8 notes each
NO_BITMAP_HIGH = 0


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

    def __init__(self, logs=(), low=NO_BITMAP_LOW, offbits=b"", b_bit=False):
        self.b_bit = b_bit
        self.logs = list(logs)
        self.low = low
        self.offbits = bytes(offbits)

    @classmethod
    def with_off_notes(cls, logs, off_notes, b_bit=False):
        if not off_notes:
            return cls(logs, b_bit=b_bit)
        return cls(logs, *off_bitmap(off_notes), b_bit)

    def widened(self, octets):
        """This chapter with zero octets added around its bitmap to make ``octets`` (at most 16).

        A zero octet logs no NoteOff (A.6), so the meaning is unchanged.
        """
        if octets <= len(self.offbits):
            return self
        return NoteChapter(self.logs, *widen_bitmap(self.low, self.offbits, octets), self.b_bit)

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
        if length == 127 and low == NO_BITMAP_LOW and high == NO_BITMAP_HIGH:
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
        low = data[pos + 1] >> 4 if octets else NO_BITMAP_LOW
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
            low, high = NO_BITMAP_LOW, 1
        else:
            low, high = NO_BITMAP_LOW, NO_BITMAP_HIGH
        out.append((self.b_bit << 7) | min(count, 127))
        out.append((low << 4) | high)
        _build_logs(out, self.logs)
        out += self.offbits


def off_bitmap(off_notes):
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


def widen_bitmap(low, offbits, octets):
    """(LOW, bitmap) with zero octets around ``offbits`` to make ``octets`` (at most 16)."""
    missing = octets - len(offbits)
    high = low + len(offbits) - 1
    above = min(missing, NOTE_GROUPS - 1 - high)
    below = missing - above
    return low - below, bytes(below) + offbits + bytes(above)


# Chapters in table-of-contents order, as (TOC bit, attribute, class).
_CHAPTERS = (
    (TOC_P, "program", ProgramChapter),
    (TOC_C, "controllers", ControllerChapter),
    (TOC_M, "parameters", ParameterChapter),
    (TOC_W, "pitch", PitchChapter),
    (TOC_N, "notes", NoteChapter),
    (TOC_E, "extras", ExtrasChapter),
    (TOC_T, "pressure", PressureChapter),
    (TOC_A, "poly_pressure", PolyPressureChapter),
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
        journal = cls((data[1] << 8) | data[2], s_bit=bool(flags & JOURNAL_S),
                      h_bit=bool(flags & JOURNAL_H))
        pos = 3
        if flags & JOURNAL_Y:
            journal.system, pos = SystemJournal.parse(data, pos, end)
        if flags & JOURNAL_A:
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
            flags |= JOURNAL_Y
        if count:
            flags |= JOURNAL_A | (count - 1)
        out = bytearray((flags, (self.checkpoint >> 8) & 0xFF, self.checkpoint & 0xFF))
        if self.system is not None:
            self.system.build(out)
        for channel_journal in self.channels:
            channel_journal.build(out)
        return bytes(out)

