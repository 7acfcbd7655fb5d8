"""A phone's keypad as a MIDI instrument: RFC 4733 DTMF events in, notes out.

# implements RFC 4733 §2.3 (the telephone-event payload: event, E bit,
#   volume, duration) and §2.5.2 on the receiving side: an event is identified
#   by its RTP timestamp (§2.5.1.1); it starts with its first packet, whatever
#   its marker, and ends with the E bit, whose retransmissions (§2.5.1.4:
#   three packets) are recognised and dropped; an event whose packets stop
#   coming ends after a timeout (its end packets were lost); §2.5.1.3 long
#   events, split into segments (each timestamp the previous one plus its
#   duration), stay one digit; §2.5.1.5 several events in one packet
# implements RFC 4733 §3.2 (DTMF event codes 0-15: 0-9, *, #, A-D); other
#   events (flash, tones) are ignored and counted

:class:`TelephoneEvents` turns the payloads into :class:`DigitDown` and
:class:`DigitUp`; :class:`KeypadPlayer` turns those into note-on and
note-off through a :class:`KeypadMap`.

The default keypad map (:data:`DEFAULT_KEYPAD`), laid out as on the phone::

    1 C4   2 D4   3 E4          middle C (MIDI 60) on 1, the C major scale
    4 F4   5 G4   6 A4          upwards, row by row
    7 B4   8 C5   9 D5
    * octave down   0 E5   # octave up
    A F5   B G5   C A5   D B5   (the fourth column of 16-key pads)

``*`` and ``#`` shift every later note by an octave, down or up, two
octaves at most either way; a note already sounding ends as the note it
started as. The map is configurable (:meth:`KeypadMap.from_config`): each
key a MIDI note number, a note name (``C4``, ``F#3``, ``Bb5``; C4 = 60), or
one of the actions ``octave_down``, ``octave_up``, ``sustain`` (toggles the
sustain pedal: DTMF keys are pressed one at a time, so a pedal can only
latch) and ``none``.

Sans-IO: payloads and times in, events out.
"""

import collections
import re
import struct
import typing

from gateway.midi import CC_SUSTAIN, MidiEvent, control_change, note_off, note_on

__all__ = [
    "DIGITS", "DigitDown", "DigitUp", "TelephoneEvents", "KeypadMap", "KeypadPlayer",
    "DEFAULT_KEYPAD", "OCTAVE_DOWN", "OCTAVE_UP", "SUSTAIN", "NONE", "parse_note",
    "EVENT_TIMEOUT", "MalformedEvent",
]

DIGITS = "0123456789*#ABCD"              # RFC 4733 §3.2: event code = index
_BLOCK = struct.Struct("!BBH")           # event, E|R|volume, duration
_END_BIT = 0x80
_VOLUME_MASK = 0x3F
_U32 = 0xFFFFFFFF

EVENT_TIMEOUT = 0.25
"""Seconds without a packet after which an event ends: senders update every
50 ms at most (RFC 4733 §2.5.1.2) and the phones we test every 20 ms, so this
is five missed updates; a lost E bit holds the note no longer than that."""

_REMEMBERED_ENDS = 16                    # ended events whose late packets are recognised


class MalformedEvent(ValueError):
    """A telephone-event payload that is not whole 4-octet blocks."""


class DigitDown(typing.NamedTuple):
    digit: str
    time: float


class DigitUp(typing.NamedTuple):
    """A digit ended: ``reason`` is "end" (the E bit), "timeout", "next" (the
    next event started first) or "hangup"."""

    digit: str
    time: float
    reason: str


class _Event:
    __slots__ = ("timestamp", "code", "duration", "seen")

    def __init__(self, timestamp, code, duration, seen):
        self.timestamp = timestamp
        self.code = code
        self.duration = duration
        self.seen = seen


def _later(timestamp, than):
    """RTP timestamps compared modulo 2**32 (RFC 3550 §5.1)."""
    return 0 < (timestamp - than) & _U32 < 0x80000000


class TelephoneEvents:
    """The DTMF digits of one RTP stream of telephone-event payloads (RFC 4733 §2.5.2)."""

    def __init__(self, timeout=EVENT_TIMEOUT):
        self.timeout = timeout
        self.current = None
        self.ssrc = None
        self._ended = collections.deque(maxlen=_REMEMBERED_ENDS)   # timestamps
        self._latest = None              # timestamp of the latest event started
        self.digits = 0                  # events started
        self.ended_by_bit = 0
        self.ended_by_timeout = 0
        self.duplicates = 0              # packets of an event that had ended (E retransmissions)
        self.stale = 0                   # packets of an event older than the current one
        self.unsupported = 0             # events other than DTMF 0-15

    def receive(self, timestamp, payload, now, ssrc=None):
        """The DigitDown/DigitUp of one packet's payload, which arrived at ``now``.

        Raises MalformedEvent for a payload that is not whole 4-octet blocks.
        """
        if not payload or len(payload) % _BLOCK.size:
            raise MalformedEvent(f"telephone-event payload of {len(payload)} octets"
                                 " is not whole 4-octet blocks")
        changes = []
        if ssrc is not None and ssrc != self.ssrc:
            if self.ssrc is not None:
                # A new stream (re-INVITE, a new SSRC): its timestamps start afresh.
                changes += self.end_all(now, "next")
                self._ended.clear()
                self._latest = None
            self.ssrc = ssrc
        blocks = [_BLOCK.unpack_from(payload, offset)
                  for offset in range(0, len(payload), _BLOCK.size)]
        # RFC 4733 §2.5.1.5: every block but the last is an event that has ended,
        # each starting where the one before it ended, the first at the timestamp.
        start = timestamp
        for code, flags, duration in blocks:
            changes += self._block(start, code, bool(flags & _END_BIT), duration, now)
            start = (start + duration) & _U32
        return changes

    def _block(self, timestamp, code, end, duration, now):
        if code >= len(DIGITS):
            self.unsupported += 1
            return []
        if timestamp in self._ended:
            self.duplicates += 1
            return []
        current = self.current
        changes = []
        if current is not None:
            if timestamp == current.timestamp:
                current.seen = now
                current.duration = duration
                if end:
                    self.ended_by_bit += 1
                    changes.append(self._finish(now, "end"))
                return changes
            if not _later(timestamp, current.timestamp):
                self.stale += 1
                return changes
            if code == current.code and timestamp == (current.timestamp + current.duration) & _U32:
                # The next segment of a long event (§2.5.1.3): the same key, still down.
                self._ended.append(current.timestamp)
                self._latest = current.timestamp = timestamp
                current.duration = duration
                current.seen = now
                if end:
                    self.ended_by_bit += 1
                    changes.append(self._finish(now, "end"))
                return changes
            changes.append(self._finish(now, "next"))
        elif self._latest is not None and not _later(timestamp, self._latest):
            self.stale += 1              # reordered: an event before the last one that ended
            return changes
        self._latest = timestamp
        self.digits += 1
        changes.append(DigitDown(DIGITS[code], now))
        if end:
            # Only its end arrived (the rest was lost): a short press all the same.
            self.ended_by_bit += 1
            self._ended.append(timestamp)
            changes.append(DigitUp(DIGITS[code], now, "end"))
        else:
            self.current = _Event(timestamp, code, duration, now)
        return changes

    def _finish(self, now, reason):
        current = self.current
        self.current = None
        self._ended.append(current.timestamp)
        return DigitUp(DIGITS[current.code], now, reason)

    def expire(self, now):
        """The DigitUp of an event whose packets stopped ``timeout`` ago (or nothing)."""
        current = self.current
        if current is None or now - current.seen < self.timeout:
            return []
        self.ended_by_timeout += 1
        return [self._finish(now, "timeout")]

    def end_all(self, now, reason="hangup"):
        """End the event in progress, if any (the call ended)."""
        if self.current is None:
            return []
        return [self._finish(now, reason)]


# The keypad map -------------------------------------------------------------
OCTAVE_DOWN = "octave_down"
OCTAVE_UP = "octave_up"
SUSTAIN = "sustain"
NONE = "none"
ACTIONS = (OCTAVE_DOWN, OCTAVE_UP, SUSTAIN, NONE)
MAX_OCTAVE_SHIFT = 2

DEFAULT_KEYPAD = {
    "1": "C4", "2": "D4", "3": "E4",
    "4": "F4", "5": "G4", "6": "A4",
    "7": "B4", "8": "C5", "9": "D5",
    "*": OCTAVE_DOWN, "0": "E5", "#": OCTAVE_UP,
    "A": "F5", "B": "G5", "C": "A5", "D": "B5",
}

_NOTE_NAME = re.compile(r"([A-Ga-g])([#b]?)(-?\d+)$")
_PITCH_CLASSES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def parse_note(value):
    """A MIDI note number from a number or a name (``C4`` = 60, ``F#3``, ``Bb5``).

    Raises ValueError naming what is wrong.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a note number 0-127 or a name like C4, got {value!r}")
    if isinstance(value, int):
        note = value
    elif isinstance(value, str) and _NOTE_NAME.match(value.strip()):
        letter, accidental, octave = _NOTE_NAME.match(value.strip()).groups()
        note = (int(octave) + 1) * 12 + _PITCH_CLASSES[letter.upper()]
        note += {"#": 1, "b": -1, "": 0}[accidental]
    else:
        raise ValueError(f"expected a note number 0-127, a name like C4 or F#3, or one of"
                         f" {', '.join(ACTIONS)}, got {value!r}")
    if not 0 <= note <= 127:
        raise ValueError(f"note {value!r} is outside MIDI's 0-127")
    return note


class KeypadMap:
    """What each of the 16 DTMF keys does: a note number or an action."""

    def __init__(self, keys):
        self.keys = dict(keys)           # digit -> note number or action

    @classmethod
    def from_config(cls, mapping=None, base=DEFAULT_KEYPAD):
        """The default map with ``mapping``'s keys changed.

        Raises ValueError with one line per problem, each naming its key.
        """
        keys = {digit: value if value in ACTIONS else parse_note(value)
                for digit, value in base.items()}
        problems = []
        for digit, value in (mapping or {}).items():
            digit = str(digit).upper()
            if digit not in DIGITS:
                problems.append(f"{digit}: not a DTMF key (expected one of {' '.join(DIGITS)})")
                continue
            if value in ACTIONS:
                keys[digit] = value
                continue
            try:
                keys[digit] = parse_note(value)
            except ValueError as exc:
                problems.append(f"{digit}: {exc}")
        if problems:
            raise ValueError("\n".join(problems))
        return cls(keys)

    def __getitem__(self, digit):
        return self.keys.get(digit, NONE)

    def describe(self):
        """One line per key, in keypad order, for logs and documentation."""
        lines = []
        for digit in "123456789*0#ABCD":
            value = self[digit]
            lines.append(f"{digit}: {value if isinstance(value, str) else f'note {value}'}")
        return lines


class KeypadPlayer:
    """DigitDown/DigitUp to MIDI through a :class:`KeypadMap`, never leaving a note on.

    Notes go out on ``channel`` with ``velocity``; each digit's note-off is
    for the note its note-on started, whatever the octave shift did since.
    """

    def __init__(self, keypad=None, channel=0, velocity=100):
        self.keypad = keypad or KeypadMap.from_config()
        self.channel = channel
        self.velocity = velocity
        self.octave = 0
        self.pedal = False
        self.sounding = {}               # digit -> note

    def digit_down(self, digit, now):
        action = self.keypad[digit]
        if action == OCTAVE_DOWN:
            self.octave = max(self.octave - 1, -MAX_OCTAVE_SHIFT)
            return []
        if action == OCTAVE_UP:
            self.octave = min(self.octave + 1, MAX_OCTAVE_SHIFT)
            return []
        if action == SUSTAIN:
            self.pedal = not self.pedal
            return [MidiEvent(control_change(self.channel, CC_SUSTAIN, 127 if self.pedal else 0),
                              now)]
        if action == NONE:
            return []
        events = self.digit_up(digit, now)         # a down without its up: end that first
        note = action + 12 * self.octave
        while note > 127:
            note -= 12
        while note < 0:
            note += 12
        self.sounding[digit] = note
        events.append(MidiEvent(note_on(self.channel, note, self.velocity), now))
        return events

    def digit_up(self, digit, now):
        note = self.sounding.pop(digit, None)
        if note is None:
            return []
        return [MidiEvent(note_off(self.channel, note), now)]

    def play(self, changes):
        """MidiEvents for a list of DigitDown/DigitUp."""
        events = []
        for change in changes:
            if type(change) is DigitDown:
                events += self.digit_down(change.digit, change.time)
            else:
                events += self.digit_up(change.digit, change.time)
        return events

    def release_all(self, now):
        """Note-offs for every sounding note and the pedal's release (the call ended)."""
        events = [MidiEvent(note_off(self.channel, note), now)
                  for note in self.sounding.values()]
        self.sounding.clear()
        if self.pedal:
            self.pedal = False
            events.append(MidiEvent(control_change(self.channel, CC_SUSTAIN, 0), now))
        return events
