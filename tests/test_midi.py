"""MIDI core: stream parsing, helpers, note tracking."""

import mido
import pytest
from hypothesis import given, strategies as st

from gateway import midi


def test_running_status_is_expanded():
    assert midi.split_messages(bytes([0x90, 60, 100, 62, 100])) == [
        bytes([0x90, 60, 100]), bytes([0x90, 62, 100])]


def test_realtime_inside_a_message_and_inside_sysex():
    data = bytes([0x90, 60, 0xF8, 100, 0xF0, 1, 0xFE, 2, 0xF7])
    assert midi.split_messages(data) == [bytes([0xF8]), bytes([0x90, 60, 100]), bytes([0xFE]),
                                         bytes([0xF0, 1, 2, 0xF7])]


def test_system_common_cancels_running_status():
    assert midi.split_messages(bytes([0x90, 60, 100, 0xF6, 62, 100])) == [
        bytes([0x90, 60, 100]), bytes([0xF6])]


def test_sysex_split_across_feeds():
    parser = midi.MidiStreamParser()
    assert parser.feed(bytes([0xF0, 0x7E, 0x7F])) == []
    assert parser.feed(bytes([0x06, 0x01, 0xF7])) == [bytes([0xF0, 0x7E, 0x7F, 0x06, 0x01, 0xF7])]


def test_stray_data_and_truncated_messages_are_dropped_and_counted():
    parser = midi.MidiStreamParser()
    assert parser.feed(bytes([60, 100, 0x90, 60, 0xC0, 5])) == [bytes([0xC0, 5])]
    assert parser.dropped_bytes == 4


def test_oversized_sysex_is_dropped():
    parser = midi.MidiStreamParser(max_sysex=4)
    assert parser.feed(bytes([0xF0, 1, 2, 3, 4, 5, 0xF7])) == []
    assert parser.dropped_bytes > 0


@given(st.binary(max_size=200))
def test_every_parsed_message_is_valid_midi(data):
    for message in midi.split_messages(data):
        mido.Message.from_bytes(list(message))


@given(st.lists(st.tuples(st.integers(0x80, 0xEF), st.integers(0, 127), st.integers(0, 127)),
                max_size=20))
def test_channel_messages_round_trip(triples):
    messages = [bytes((status, a, b))[:1 + midi.data_length(status)]
                for status, a, b in triples]
    assert midi.split_messages(b"".join(messages)) == messages


def test_validate_uses_mido():
    assert midi.validate(b"\x90\x3c\x64") == b"\x90\x3c\x64"
    with pytest.raises(ValueError):
        midi.validate(b"\x90\x3c")
    with pytest.raises(ValueError):
        midi.validate(b"")


def test_from_mido_fields():
    assert midi.from_mido_fields(type="note_on", channel=2, note=60, velocity=1) == b"\x92\x3c\x01"
    with pytest.raises(ValueError):
        midi.from_mido_fields(type="note_on", note=200)


def test_transpose():
    assert midi.transpose(b"\x90\x3c\x64", 7) == b"\x90\x43\x64"
    assert midi.transpose(b"\xa0\x3c\x64", -12) == b"\xa0\x30\x64"
    assert midi.transpose(b"\x90\x7c\x64", 7) is None
    assert midi.transpose(b"\xb0\x07\x64", 7) == b"\xb0\x07\x64"


def test_remap_channel_and_velocity_cap():
    assert midi.remap_channel(b"\x90\x3c\x64", 9) == b"\x99\x3c\x64"
    assert midi.remap_channel(b"\xf8", 9) == b"\xf8"
    assert midi.cap_velocity(b"\x90\x3c\x7f", 100) == b"\x90\x3c\x64"
    assert midi.cap_velocity(b"\x90\x3c\x00", 100) == b"\x90\x3c\x00"


def test_note_off_forms():
    assert midi.is_note_off(b"\x80\x3c\x40") and midi.is_note_off(b"\x90\x3c\x00")
    assert midi.is_note_on(b"\x90\x3c\x01") and not midi.is_note_on(b"\x90\x3c\x00")


def test_note_tracker_releases_notes_and_pedals():
    tracker = midi.NoteTracker()
    for message in (b"\x90\x3c\x64", b"\x91\x40\x64", b"\x90\x43\x64", b"\x90\x43\x00",
                    b"\xb0\x40\x7f", b"\xb2\x42\x40", b"\xb2\x42\x00"):
        tracker.observe(message)
    assert tracker.sounding == {(0, 60), (1, 64)}
    assert tracker.release_messages() == [b"\x80\x3c\x40", b"\x81\x40\x40", b"\xb0\x40\x00"]
    assert tracker.release_messages() == []


def test_all_notes_off_clears_the_channel():
    tracker = midi.NoteTracker()
    for message in (b"\x90\x3c\x64", b"\x91\x3c\x64", b"\xb0\x7b\x00"):
        tracker.observe(message)
    assert tracker.sounding == {(1, 60)}
