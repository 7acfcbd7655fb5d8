"""OSC <-> MIDI mapping for the OSCgroups door (sans-IO).

OSCgroups carries arbitrary OSC between applications (shared/protocols/
oscgroups.md §4.4); this module decides which of those OSC messages are MIDI
and how MIDI from the session is written back as OSC. Nothing here is in the
OSC spec beyond the ``m`` (MIDI) and ``b`` (blob) type tags, so the readable
address scheme is ours, kept small and documented here.

Incoming, with ``prefix`` = ``/midi`` (configurable; ``raw_address`` is the
prefix itself, or ``/midi`` when the prefix is empty):

* ``/midi`` with any number of ``m`` arguments (port id, status, data1, data2)
  and/or ``b`` blobs holding raw MIDI bytes (SysEx included);
* ``/midi/note ch note vel`` (vel 0 means note off), ``/midi/noteon ch note vel``,
  ``/midi/noteoff ch note [vel]`` (release velocity 64 when absent),
  ``/midi/cc ch controller value``, ``/midi/program ch program``,
  ``/midi/pitchbend ch value``;
* MIDI beat clock: ``/midi/clock`` (no arguments; 24 per quarter note),
  ``/midi/start``, ``/midi/stop``, ``/midi/continue``, ``/midi/songpos
  sixteenths`` (0..16383, the Song Position Pointer).

Channels count 1–16 as musicians do. Numbers may be int or float (tags
``i h f d``; floats are rounded) because OSC apps send either. Pitch bend is
0..16383 with 8192 as centre when sent as an integer; a float is read as
-1.0..1.0 with 0.0 as centre. Anything else, or out of range, maps to None so
the caller can count it.

Outgoing, ``outgoing_form`` is ``readable`` (the addresses above, note-on as
``noteon``, note-off as ``noteoff``; messages without a readable address fall
back to the raw form) or ``midi`` (everything at ``raw_address``: an ``m``
argument for short messages, a blob for SysEx).

A session with a tempo (README.rst, "Session tempo") sends its beat clock in
the same forms (readable: ``/midi/clock`` per clock, ``/midi/start`` ...), and
in both forms ``/tempo bpm`` (one float; the address is outside the prefix)
whenever the tempo starts, stops or changes.
"""

import math

from gateway import beatclock, midi

from . import wire

READABLE = "readable"
RAW_MIDI = "midi"
OUTGOING_FORMS = (READABLE, RAW_MIDI)

TEMPO_ADDRESS = "/tempo"
PITCH_BEND_CENTRE = 8192
PITCH_BEND_MAX = 16383

_NUMBER_TAGS = frozenset("ihfd")


class _Unmappable(Exception):
    pass


def _integer(tag, value, low, high):
    if tag not in _NUMBER_TAGS:
        raise _Unmappable
    if tag in "fd":
        if not math.isfinite(value):
            raise _Unmappable
        value = round(value)
    if not low <= value <= high:
        raise _Unmappable
    return value


def _channel(tag, value):
    return _integer(tag, value, 1, 16) - 1


def _data(tag, value):
    return _integer(tag, value, 0, 127)


def _pitch_bend(tag, value):
    if tag in "fd":
        if not (math.isfinite(value) and -1.0 <= value <= 1.0):
            raise _Unmappable
        return min(PITCH_BEND_CENTRE + round(value * PITCH_BEND_CENTRE), PITCH_BEND_MAX)
    return _integer(tag, value, 0, PITCH_BEND_MAX)


def _note(fields):
    channel, note, velocity = fields
    return midi.note_on(channel, note, velocity) if velocity else midi.note_off(channel, note)


def _note_off(fields):
    channel, note, *velocity = fields
    return midi.note_off(channel, note, *velocity)


def _song_position(tag, value):
    return _integer(tag, value, 0, beatclock.SONG_POSITION_MODULUS - 1)


def _pitch_bend_message(fields):
    channel, value = fields
    return bytes((midi.PITCH_BEND | channel, value & 0x7F, value >> 7))


# suffix -> (field parsers, how many trailing fields are optional, message builder)
_READABLE_IN = {
    "/note": ((_channel, _data, _data), 0, _note),
    "/noteon": ((_channel, _data, _data), 0, lambda f: midi.note_on(*f)),
    "/noteoff": ((_channel, _data, _data), 1, _note_off),
    "/cc": ((_channel, _data, _data), 0, lambda f: midi.control_change(*f)),
    "/program": ((_channel, _data), 0, lambda f: bytes((midi.PROGRAM_CHANGE | f[0], f[1]))),
    "/pitchbend": ((_channel, _pitch_bend), 0, _pitch_bend_message),
    "/clock": ((), 0, lambda f: bytes((beatclock.TIMING_CLOCK,))),
    "/start": ((), 0, lambda f: bytes((beatclock.START,))),
    "/stop": ((), 0, lambda f: bytes((beatclock.STOP,))),
    "/continue": ((), 0, lambda f: bytes((beatclock.CONTINUE,))),
    "/songpos": ((_song_position,), 0, lambda f: beatclock.song_position_pointer(f[0])),
}
# The beat clock's readable addresses, by status (the song position has its argument).
_READABLE_CLOCK_OUT = {beatclock.TIMING_CLOCK: "/clock", beatclock.START: "/start",
                       beatclock.STOP: "/stop", beatclock.CONTINUE: "/continue"}


class OscMidiMapping:
    """Turns OSC messages into MIDI message bytes and back."""

    def __init__(self, prefix="/midi", outgoing_form=READABLE, port_id=0):
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError(f"OSC prefix must start with '/' and not end with it: {prefix!r}")
        if outgoing_form not in OUTGOING_FORMS:
            raise ValueError(f"outgoing_form must be one of {OUTGOING_FORMS}: {outgoing_form!r}")
        self.prefix = prefix
        self.raw_address = prefix or "/midi"
        self.outgoing_form = outgoing_form
        self.port_id = port_id
        self._readable_in = {prefix + suffix: spec for suffix, spec in _READABLE_IN.items()}

    # ------------------------------------------------------------------
    # OSC -> MIDI

    def osc_to_midi(self, message):
        """MIDI messages (list of bytes) carried by a :class:`wire.Message`, or None."""
        if message.args is None:
            return None
        try:
            if message.address == self.raw_address:
                return self._raw_to_midi(message) or None
            spec = self._readable_in.get(message.address)
            if spec is None:
                return None
            return [self._readable_to_midi(message, *spec)]
        except _Unmappable:
            return None

    def datagram_to_midi(self, data):
        """(MIDI messages, count of OSC messages that were not MIDI) for one datagram."""
        events = []
        unmapped = 0
        try:
            messages = wire.parse_packet(data)
        except wire.MalformedPacket:
            return events, 1
        for message in messages:
            mapped = self.osc_to_midi(message)
            if mapped is None:
                unmapped += 1
            else:
                events.extend(mapped)
        return events, unmapped

    @staticmethod
    def _raw_to_midi(message):
        events = []
        for tag, value in zip(message.type_tags, message.args):
            if tag == "m":
                _port, status, *data = value
                length = midi.data_length(status) if status >= 0x80 else None
                if length is None or any(byte >= 0x80 for byte in data[:length]):
                    raise _Unmappable
                events.append(bytes((status, *data[:length])))
            elif tag == "b":
                events.extend(midi.split_messages(value))
            else:
                raise _Unmappable
        return events

    @staticmethod
    def _readable_to_midi(message, parsers, optional, build):
        args = message.args
        if not len(parsers) - optional <= len(args) <= len(parsers):
            raise _Unmappable
        fields = [parse(tag, value)
                  for parse, tag, value in zip(parsers, message.type_tags, args)]
        return build(fields)

    # ------------------------------------------------------------------
    # MIDI -> OSC

    def midi_to_osc(self, data):
        """One OSC message (bytes) for one complete MIDI message."""
        if self.outgoing_form == READABLE:
            readable = self._readable_out(data) if data[0] < 0xF0 else self._clock_out(data)
            if readable is not None:
                return readable
        if len(data) <= 3 and data[0] != midi.SYSEX_START:
            padded = tuple(data) + (0,) * (3 - len(data))
            return wire.encode_message(self.raw_address, "m", [(self.port_id, *padded)])
        return wire.encode_message(self.raw_address, "b", [bytes(data)])

    def _readable_out(self, data):
        kind = data[0] & 0xF0
        channel = (data[0] & 0x0F) + 1
        if midi.is_note_off(data):
            return self._encode("/noteoff", channel, data[1], data[2])
        if kind == midi.NOTE_ON:
            return self._encode("/noteon", channel, data[1], data[2])
        if kind == midi.CONTROL_CHANGE:
            return self._encode("/cc", channel, data[1], data[2])
        if kind == midi.PROGRAM_CHANGE:
            return self._encode("/program", channel, data[1])
        if kind == midi.PITCH_BEND:
            return self._encode("/pitchbend", channel, data[1] | data[2] << 7)
        return None

    def _clock_out(self, data):
        suffix = _READABLE_CLOCK_OUT.get(data[0])
        if suffix is not None:
            return self._encode(suffix)
        if data[0] == beatclock.SONG_POSITION:
            return self._encode("/songpos", data[1] | data[2] << 7)
        return None

    @staticmethod
    def tempo_to_osc(bpm):
        """``/tempo bpm`` (a float), sent when a session's tempo starts, stops or changes."""
        return wire.encode_message(TEMPO_ADDRESS, "f", [bpm])

    def _encode(self, suffix, *numbers):
        return wire.encode_message(self.prefix + suffix, "i" * len(numbers), numbers)
