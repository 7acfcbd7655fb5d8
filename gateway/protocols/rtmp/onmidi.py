# implements netgateway's MIDI over RTMP layout (README.rst, "MIDI over RTMP"): AMF0 data
#   messages named onMidi (RTMP spec 1.0 §7.1.2), with or without the @setDataFrame prefix,
#   and the scripted call("midi", ...) command (§7.2.1.3)
"""MIDI in RTMP data messages and calls: what a client may send, what the gateway sends.

Neither RTMP nor FLV has a MIDI type, so MIDI rides in AMF0 data messages
with a name of ours, ``onMidi``, the way cue points ride in ``onCuePoint``.
Every real client can send such a message: ffmpeg copies FLV script tags,
librtmp's ``RTMPStream.write`` prefixes them with ``@setDataFrame``, and
a raw packet has no prefix (shared/protocols/rtmp-clients.md §1.4).

Accepted, after the optional ``@setDataFrame``: ``onMidi`` followed by one
value that is

- an object with ``bytes`` (an array of numbers 0-255) or ``hex`` (a string
  of hex digits, spaces allowed), other keys ignored (``seq``, ``time``);
- an array of numbers, or a hex string, directly.

``call("midi", VALUE)`` takes the same values. The bytes may hold several
MIDI messages, with running status. What the gateway sends, one data
message per MIDI event, on the player's MIDI stream::

    ['onMidi', {'bytes': [144, 60, 100], 'hex': '903c64',
                'from': 'alice', 'member': 3}]

The RTMP message timestamp is the time played, in ms since the player's
stream began.

Sans-IO: values in, values out; no clock, no sockets.
"""

import re

from gateway import midi
from gateway.protocols.rtmp import amf0

ON_MIDI = "onMidi"
CALL_MIDI = "midi"
SET_DATA_FRAME = "@setDataFrame"
MAX_MIDI_BYTES = 4096           # one data message; a SysEx dump larger than this is refused

_HEX_SPACING = re.compile(r"[\s:]+")


class MidiDataError(ValueError):
    """An onMidi value or midi call that does not hold MIDI; its text says why."""


def strip_set_data_frame(values):
    """``values`` without a leading ``@setDataFrame``."""
    if values and values[0] == SET_DATA_FRAME:
        return values[1:]
    return values


def _octets(value):
    if isinstance(value, dict):
        if "bytes" in value:
            return _octets_from_numbers(value["bytes"])
        if "hex" in value:
            return _octets_from_hex(value["hex"])
        raise MidiDataError("an onMidi object needs 'bytes' (numbers) or 'hex' (a string)")
    if isinstance(value, str):
        return _octets_from_hex(value)
    if isinstance(value, (list, tuple)):
        return _octets_from_numbers(value)
    raise MidiDataError(f"onMidi carries an object, an array or a hex string,"
                        f" not {type(value).__name__}")


def _octets_from_numbers(numbers):
    if isinstance(numbers, dict):       # an ECMA array written by some encoders
        numbers = list(numbers.values())
    if not isinstance(numbers, (list, tuple)):
        raise MidiDataError("'bytes' must be an array of numbers")
    if len(numbers) > MAX_MIDI_BYTES:
        raise MidiDataError(f"{len(numbers)} MIDI bytes in one message (at most"
                            f" {MAX_MIDI_BYTES})")
    octets = bytearray()
    for number in numbers:
        if isinstance(number, bool) or not isinstance(number, (int, float)) \
                or number != int(number) or not 0 <= number <= 255:
            raise MidiDataError(f"MIDI byte {number!r} is not a whole number 0-255")
        octets.append(int(number))
    return bytes(octets)


def _octets_from_hex(text):
    if not isinstance(text, str):
        raise MidiDataError("'hex' must be a string")
    digits = _HEX_SPACING.sub("", text)
    if len(digits) > 2 * MAX_MIDI_BYTES:
        raise MidiDataError(f"{len(digits) // 2} MIDI bytes in one message (at most"
                            f" {MAX_MIDI_BYTES})")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise MidiDataError(f"{text[:40]!r} is not hex digits") from None


def midi_messages(value):
    """The complete MIDI messages in one onMidi value or midi call argument.

    Raises :class:`MidiDataError` when the value holds no valid MIDI at all;
    stray bytes around valid messages are dropped (the caller may count them).
    """
    octets = _octets(value)
    messages = []
    for message in midi.split_messages(octets):
        try:
            messages.append(midi.validate(message))
        except ValueError as error:
            raise MidiDataError(str(error)) from None
    if not messages:
        raise MidiDataError(f"no complete MIDI message in {octets[:16].hex()}")
    return messages


def is_on_midi(values):
    """True for a data message whose values (after any prefix) start with onMidi."""
    values = strip_set_data_frame(values)
    return bool(values) and values[0] == ON_MIDI


def data_midi(values):
    """The MIDI messages of an onMidi data message's decoded values."""
    values = strip_set_data_frame(values)
    if len(values) < 2:
        raise MidiDataError("onMidi without a value")
    return midi_messages(values[1])


def call_midi(arguments):
    """The MIDI messages of a ``midi`` call's arguments (after transaction id and null)."""
    if not arguments:
        raise MidiDataError("midi called without a value")
    messages = []
    for argument in arguments:
        messages.extend(midi_messages(argument))
    return messages


def encode_on_midi(data, player_name, member_id):
    """The AMF0 body of one onMidi data message the gateway sends (see the module doc)."""
    return amf0.encode(ON_MIDI, {"bytes": list(data), "hex": data.hex(),
                                 "from": player_name, "member": member_id})
