import pytest

from gateway import midi
from gateway.protocols.oscgroups import wire
from gateway.protocols.oscgroups.mapping import RAW_MIDI, OscMidiMapping

M = OscMidiMapping()


def msg(address, type_tags, *args):
    return wire.Message(address, type_tags, args)


@pytest.mark.parametrize("message, expected", [
    (msg("/midi/note", "iii", 1, 60, 100), [midi.note_on(0, 60, 100)]),
    (msg("/midi/note", "iii", 16, 60, 0), [midi.note_off(15, 60)]),
    (msg("/midi/noteon", "fff", 2.0, 61.0, 99.6), [midi.note_on(1, 61, 100)]),
    (msg("/midi/noteoff", "ii", 1, 60), [midi.note_off(0, 60, 64)]),
    (msg("/midi/noteoff", "iii", 1, 60, 10), [midi.note_off(0, 60, 10)]),
    (msg("/midi/cc", "iii", 3, 64, 127), [midi.control_change(2, 64, 127)]),
    (msg("/midi/program", "ih", 1, 5), [bytes((0xC0, 5))]),
    (msg("/midi/pitchbend", "ii", 1, 8192), [bytes((0xE0, 0x00, 0x40))]),
    (msg("/midi/pitchbend", "ii", 1, 0), [bytes((0xE0, 0, 0))]),
    (msg("/midi/pitchbend", "ii", 1, 16383), [bytes((0xE0, 0x7F, 0x7F))]),
    (msg("/midi/pitchbend", "if", 1, 0.0), [bytes((0xE0, 0x00, 0x40))]),
    (msg("/midi/pitchbend", "if", 1, -1.0), [bytes((0xE0, 0, 0))]),
    (msg("/midi/pitchbend", "id", 1, 1.0), [bytes((0xE0, 0x7F, 0x7F))]),
    (msg("/midi", "m", (0, 0x90, 60, 100)), [midi.note_on(0, 60, 100)]),
    (msg("/midi", "mm", (0, 0xC1, 7, 0), (0, 0xF8, 0, 0)), [bytes((0xC1, 7)), b"\xf8"]),
    (msg("/midi", "b", bytes((0xF0, 1, 2, 0xF7, 0x90, 60, 1))),
     [bytes((0xF0, 1, 2, 0xF7)), midi.note_on(0, 60, 1)]),
])
def test_osc_to_midi(message, expected):
    assert M.osc_to_midi(message) == expected


@pytest.mark.parametrize("message", [
    msg("/midi/note", "iii", 0, 60, 100),        # channels count from 1
    msg("/midi/note", "iii", 17, 60, 100),
    msg("/midi/note", "iii", 1, 128, 100),
    msg("/midi/note", "ii", 1, 60),
    msg("/midi/note", "iiii", 1, 60, 1, 1),
    msg("/midi/note", "isi", 1, "C4", 100),
    msg("/midi/note", "iif", 1, 60, float("nan")),
    msg("/midi/pitchbend", "if", 1, 1.5),
    msg("/midi/pitchbend", "ii", 1, 16384),
    msg("/midi", "m", (0, 0x40, 60, 100)),     # data byte as status
    msg("/midi", "m", (0, 0x90, 200, 100)),
    msg("/midi", "m", (0, 0xF0, 1, 2)),        # SysEx cannot fit in m
    msg("/midi", "i", 1),
    msg("/midi", "b", b"\x01\x02"),             # stray data bytes only
    msg("/other", "iii", 1, 60, 100),
    wire.Message("/midi/note", "S", None),       # undecodable type tag
])
def test_unmapped_returns_none(message):
    assert M.osc_to_midi(message) is None


def test_prefix_is_configurable():
    mapping = OscMidiMapping(prefix="/jam")
    assert mapping.osc_to_midi(msg("/jam/cc", "iii", 1, 1, 1)) == [midi.control_change(0, 1, 1)]
    assert mapping.osc_to_midi(msg("/midi/cc", "iii", 1, 1, 1)) is None
    empty = OscMidiMapping(prefix="")
    assert empty.osc_to_midi(msg("/note", "iii", 1, 60, 1)) == [midi.note_on(0, 60, 1)]
    assert empty.raw_address == "/midi"
    with pytest.raises(ValueError):
        OscMidiMapping(prefix="jam/")
    with pytest.raises(ValueError):
        OscMidiMapping(outgoing_form="json")


def decoded(data):
    (message,) = wire.parse_packet(data)
    return message


@pytest.mark.parametrize("event, expected", [
    (midi.note_on(0, 60, 100), msg("/midi/noteon", "iii", 1, 60, 100)),
    (bytes((0x95, 60, 0)), msg("/midi/noteoff", "iii", 6, 60, 0)),
    (midi.note_off(15, 60, 64), msg("/midi/noteoff", "iii", 16, 60, 64)),
    (midi.control_change(0, 7, 90), msg("/midi/cc", "iii", 1, 7, 90)),
    (bytes((0xC3, 12)), msg("/midi/program", "ii", 4, 12)),
    (bytes((0xE0, 0x00, 0x40)), msg("/midi/pitchbend", "ii", 1, 8192)),
    (bytes((0xD0, 33)), msg("/midi", "m", (0, 0xD0, 33, 0))),
    (b"\xf8", msg("/midi/clock", "")),
    (b"\xfa", msg("/midi/start", "")),
    (b"\xfb", msg("/midi/continue", "")),
    (b"\xfc", msg("/midi/stop", "")),
    (bytes((0xF2, 0x10, 0x02)), msg("/midi/songpos", "i", 0x110)),
    (b"\xfe", msg("/midi", "m", (0, 0xFE, 0, 0))),
    (bytes((0xF0, 0x7E, 1, 0xF7)), msg("/midi", "b", bytes((0xF0, 0x7E, 1, 0xF7)))),
])
def test_midi_to_readable_osc(event, expected):
    assert decoded(M.midi_to_osc(event)) == expected


def test_midi_to_raw_osc_and_back():
    raw = OscMidiMapping(outgoing_form=RAW_MIDI, port_id=3)
    events = [midi.note_on(2, 64, 1), bytes((0xC0, 1)), bytes((0xE1, 1, 2)),
              bytes((0xF0, 1, 2, 3, 0xF7)), b"\xfa"]
    for event in events:
        message = decoded(raw.midi_to_osc(event))
        assert message.address == "/midi"
        assert raw.osc_to_midi(message) == [event]
    assert decoded(raw.midi_to_osc(midi.note_on(0, 1, 2))).args == ((3, 0x90, 1, 2),)


def test_tempo_is_one_float_outside_the_prefix():
    assert decoded(OscMidiMapping(prefix="/band").tempo_to_osc(96.5)) == msg("/tempo", "f", 96.5)


def test_readable_round_trip():
    for event in [midi.note_on(9, 36, 127), midi.note_off(0, 1, 0), bytes((0xE5, 0x7F, 0x7F)),
                  b"\xf8", b"\xfa", b"\xfb", b"\xfc", bytes((0xF2, 0x7F, 0x7F))]:
        assert M.osc_to_midi(decoded(M.midi_to_osc(event))) == [event]


def test_datagram_to_midi_counts_what_is_not_midi():
    data = wire.encode_bundle([
        wire.encode_message("/midi/note", "iii", [1, 60, 100]),
        wire.encode_message("/fader/1", "f", [0.5]),
        wire.encode_message("/midi", "m", [(0, 0x80, 60, 0)]),
    ])
    assert M.datagram_to_midi(data) == ([midi.note_on(0, 60, 100), midi.note_off(0, 60, 0)], 1)
    assert M.datagram_to_midi(b"junk") == ([], 1)
