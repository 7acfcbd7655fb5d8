"""The MIDI event model every door speaks (MIDI 1.0 messages as raw bytes).

An event is one *complete* MIDI message: status byte plus data bytes, with
running status already expanded and SysEx whole (``F0 ... F7``). Keeping raw
bytes rather than objects keeps the fan-out hot path cheap; mido validates at
the edges where text or foreign structures come in (:func:`from_mido_fields`,
:func:`validate`).

Nothing here imports Twisted or does I/O.
"""

import mido

NOTE_OFF = 0x80
NOTE_ON = 0x90
POLY_PRESSURE = 0xA0
CONTROL_CHANGE = 0xB0
PROGRAM_CHANGE = 0xC0
CHANNEL_PRESSURE = 0xD0
PITCH_BEND = 0xE0
SYSEX_START = 0xF0
SYSEX_END = 0xF7

CC_SUSTAIN = 64
CC_SOSTENUTO = 66

# Data-byte count for each status nibble (channel voice messages).
_CHANNEL_DATA_LENGTH = {0x8: 2, 0x9: 2, 0xA: 2, 0xB: 2, 0xC: 1, 0xD: 1, 0xE: 2}
# Data-byte count for system common / real-time statuses; SysEx is variable.
_SYSTEM_DATA_LENGTH = {
    0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF4: 0, 0xF5: 0, 0xF6: 0,
    0xF8: 0, 0xF9: 0, 0xFA: 0, 0xFB: 0, 0xFC: 0, 0xFD: 0, 0xFE: 0, 0xFF: 0,
}
# MIDI 1.0 leaves these undefined; receivers ignore them.
UNDEFINED_STATUSES = frozenset((0xF4, 0xF5, 0xF9, 0xFD))


class MidiEvent:
    """One complete MIDI message with the time it was played.

    ``time`` is in seconds on the gateway's clock; doors convert from and to
    their wire clocks.
    """

    __slots__ = ("data", "time")

    def __init__(self, data, time=0.0):
        self.data = data if type(data) is bytes else bytes(data)
        self.time = time

    def __repr__(self):
        return f"MidiEvent({self.data.hex(' ')}, t={self.time:.6f})"

    def __eq__(self, other):
        return (isinstance(other, MidiEvent)
                and self.data == other.data and self.time == other.time)

    def __hash__(self):
        return hash((self.data, self.time))

    @property
    def status(self):
        return self.data[0]

    @property
    def channel(self):
        """0-15 for channel messages, None for system messages."""
        status = self.data[0]
        return status & 0x0F if status < 0xF0 else None


def data_length(status):
    """Number of data bytes that follow ``status``; None for SysEx (variable)."""
    if status < 0x80:
        raise ValueError(f"not a status byte: 0x{status:02x}")
    if status < 0xF0:
        return _CHANNEL_DATA_LENGTH[status >> 4]
    if status == SYSEX_START or status == SYSEX_END:
        return None
    return _SYSTEM_DATA_LENGTH[status]


def is_note_on(data):
    return (data[0] & 0xF0) == NOTE_ON and data[2] > 0


def is_note_off(data):
    """True for note-off, including the note-on-with-velocity-0 form."""
    kind = data[0] & 0xF0
    return kind == NOTE_OFF or (kind == NOTE_ON and data[2] == 0)


def note_on(channel, note, velocity):
    return bytes((NOTE_ON | channel, note, velocity))


def note_off(channel, note, velocity=64):
    return bytes((NOTE_OFF | channel, note, velocity))


def control_change(channel, controller, value):
    return bytes((CONTROL_CHANGE | channel, controller, value))


class MidiStreamParser:
    """Turns a MIDI byte stream into complete messages.

    Handles running status, real-time bytes interleaved anywhere (even inside
    SysEx), SysEx split across calls, and stray data bytes (dropped and
    counted in ``dropped_bytes``). State persists between :meth:`feed` calls,
    as on a serial MIDI cable.
    """

    def __init__(self, max_sysex=65536):
        self.max_sysex = max_sysex
        self.running_status = None
        self.dropped_bytes = 0
        self._pending = bytearray()
        self._needed = 0
        self._in_sysex = False

    def feed(self, data):
        """Return the list of complete messages (bytes) found in ``data``."""
        messages = []
        pending = self._pending
        for byte in data:
            if byte >= 0xF8:
                if byte in UNDEFINED_STATUSES:
                    self.dropped_bytes += 1
                else:
                    messages.append(bytes((byte,)))
                continue
            if self._in_sysex:
                if byte == SYSEX_END:
                    pending.append(byte)
                    messages.append(bytes(pending))
                    pending.clear()
                    self._in_sysex = False
                elif byte < 0x80:
                    if len(pending) < self.max_sysex:
                        pending.append(byte)
                    else:
                        self.dropped_bytes += len(pending) + 1
                        pending.clear()
                        self._in_sysex = False
                else:
                    # An unterminated SysEx is lost; the new status starts afresh.
                    self.dropped_bytes += len(pending)
                    pending.clear()
                    self._in_sysex = False
                    self._start(byte, messages)
                continue
            if byte >= 0x80:
                if pending:
                    self.dropped_bytes += len(pending)
                    pending.clear()
                self._start(byte, messages)
                continue
            if not pending:
                if self.running_status is None:
                    self.dropped_bytes += 1
                    continue
                pending.append(self.running_status)
                self._needed = _CHANNEL_DATA_LENGTH[self.running_status >> 4]
            pending.append(byte)
            self._needed -= 1
            if self._needed == 0:
                messages.append(bytes(pending))
                pending.clear()
        return messages

    def _start(self, status, messages):
        pending = self._pending
        if status == SYSEX_START:
            self.running_status = None
            self._in_sysex = True
            pending.append(status)
            return
        if status == SYSEX_END or status in UNDEFINED_STATUSES:
            self.running_status = None
            self.dropped_bytes += 1
            return
        needed = data_length(status)
        if status < 0xF0:
            self.running_status = status
        else:
            self.running_status = None
        if needed == 0:
            messages.append(bytes((status,)))
            return
        pending.append(status)
        self._needed = needed


def split_messages(data):
    """Parse a self-contained byte string (no state carried) into messages."""
    return MidiStreamParser().feed(data)


def validate(data):
    """Check one message with mido; raise ValueError naming the problem."""
    if not data:
        raise ValueError("empty MIDI message")
    try:
        mido.Message.from_bytes(list(data))
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"invalid MIDI message {bytes(data).hex(' ')}: {exc}") from None
    return bytes(data)


def from_mido_fields(**fields):
    """Build message bytes from mido keyword fields, validated by mido.

    Example: ``from_mido_fields(type='note_on', channel=0, note=60, velocity=100)``.
    """
    try:
        return bytes(mido.Message(**fields).bytes())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid MIDI fields {fields}: {exc}") from None


def transpose(data, semitones):
    """Transpose a note message; None if the note would leave 0-127.

    Messages without a note number are returned unchanged.
    """
    kind = data[0] & 0xF0
    if data[0] >= 0xF0 or kind not in (NOTE_OFF, NOTE_ON, POLY_PRESSURE):
        return data
    note = data[1] + semitones
    if not 0 <= note <= 127:
        return None
    return bytes((data[0], note, data[2]))


def remap_channel(data, channel):
    """Move a channel message to ``channel`` (0-15); system messages unchanged."""
    if data[0] >= 0xF0:
        return data
    return bytes((data[0] & 0xF0 | channel,)) + data[1:]


def cap_velocity(data, cap):
    """Limit a note-on's velocity to ``cap`` (never turning it into a note-off)."""
    if (data[0] & 0xF0) == NOTE_ON and data[2] > cap:
        return bytes((data[0], data[1], max(cap, 1)))
    return data


class NoteTracker:
    """Remembers which notes and pedals a source holds, to release them later.

    ``observe`` every message a member sends; ``release_messages`` gives the
    note-offs and pedal releases that silence whatever is still held, which
    the session bus sends to the others when that member goes away.
    """

    __slots__ = ("_notes", "_pedals")

    def __init__(self):
        self._notes = set()    # (channel, note)
        self._pedals = set()   # (channel, controller) held down

    def observe(self, data):
        status = data[0]
        if status >= 0xF0:
            return
        kind = status & 0xF0
        if kind == NOTE_ON:
            if data[2]:
                self._notes.add((status & 0x0F, data[1]))
            else:
                self._notes.discard((status & 0x0F, data[1]))
        elif kind == NOTE_OFF:
            self._notes.discard((status & 0x0F, data[1]))
        elif kind == CONTROL_CHANGE and data[1] in (CC_SUSTAIN, CC_SOSTENUTO):
            key = (status & 0x0F, data[1])
            if data[2] >= 64:
                self._pedals.add(key)
            else:
                self._pedals.discard(key)
        elif kind == CONTROL_CHANGE and data[1] in (120, 123):
            # All Sound Off / All Notes Off end every note on that channel.
            channel = status & 0x0F
            self._notes = {key for key in self._notes if key[0] != channel}

    @property
    def sounding(self):
        return frozenset(self._notes)

    @property
    def pedals_down(self):
        return frozenset(self._pedals)

    def release_messages(self):
        """Note-offs for every held note, then pedal releases; clears the state."""
        messages = [note_off(channel, note) for channel, note in sorted(self._notes)]
        messages += [control_change(channel, controller, 0)
                     for channel, controller in sorted(self._pedals)]
        self._notes.clear()
        self._pedals.clear()
        return messages
