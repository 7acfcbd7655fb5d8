"""MIDI in RTMP data messages and calls (README.rst, "MIDI over RTMP")."""

import pytest

from gateway.protocols.rtmp import amf0, onmidi


@pytest.mark.parametrize("values", [
    ["onMidi", {"seq": 1.0, "hex": "903c64"}],
    ["@setDataFrame", "onMidi", {"bytes": [144.0, 60.0, 100.0], "hex": "ignored"}],
    ["onMidi", [144.0, 60.0, 100.0]],
    ["onMidi", "90 3C 64"],
    ["onMidi", {"bytes": amf0.EcmaArray({"0": 144.0, "1": 60.0, "2": 100.0})}],
])
def test_every_accepted_form_gives_the_note(values):
    assert onmidi.is_on_midi(values)
    assert onmidi.data_midi(values) == [b"\x90\x3c\x64"]


def test_running_status_and_several_messages_in_one_value():
    assert onmidi.call_midi(["903c643e64", [0x80, 60, 0]]) == [
        b"\x90\x3c\x64", b"\x90\x3e\x64", b"\x80\x3c\x00"]


@pytest.mark.parametrize("value, words", [
    ({"seq": 1.0}, "needs 'bytes'"),
    ([300.0], "0-255"),
    ([1.5], "0-255"),
    ([True], "0-255"),
    ("9g", "not hex"),
    ("3c64", "no complete MIDI message"),
    (7.0, "not float"),
    ([0x90] * (onmidi.MAX_MIDI_BYTES + 1), "at most"),
])
def test_what_is_not_midi_is_refused_saying_why(value, words):
    with pytest.raises(onmidi.MidiDataError, match=words):
        onmidi.midi_messages(value)


def test_other_data_is_not_midi_and_onmidi_needs_a_value():
    assert not onmidi.is_on_midi(["onMetaData", {}])
    assert not onmidi.is_on_midi([])
    with pytest.raises(onmidi.MidiDataError):
        onmidi.data_midi(["onMidi"])


def test_what_the_gateway_sends_decodes_to_the_documented_layout():
    body = onmidi.encode_on_midi(b"\x90\x3c\x64", "alice", 3)
    assert amf0.decode_all(body) == ["onMidi", {"bytes": [144.0, 60.0, 100.0],
                                                "hex": "903c64", "from": "alice",
                                                "member": 3.0}]
