"""RFC 6295 payload codec: golden packets, edge cases, property tests."""

import json
import pathlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.rtpmidi.journal_wire import Journal
from gateway.protocols.rtpmidi.payload import (
    MAX_DELTA, MalformedPacket, RtpMidiPacket, SysExReassembler, encode_delta,
)

FIXTURES = json.loads(
    (pathlib.Path(__file__).parent / "fixtures" / "golden_packets.json").read_text())


def golden(name):
    return bytes.fromhex(FIXTURES[name]["hex"].replace(" ", ""))


def header(sequence=1, timestamp=1000, ssrc=1, first=0x80, second=0x61):
    return struct.pack("!BBHII", first, second, sequence, timestamp, ssrc)


# -- golden packets -----------------------------------------------------------

def test_macos_note_on_with_chapter_n():
    packet = RtpMidiPacket.parse(golden("macos_note_on_chapter_n"))
    assert (packet.sequence, packet.timestamp, packet.ssrc) == (17018, 0x4B9F3036, 0x47D81096)
    assert packet.marker is False and packet.payload_type == 97 and packet.phantom is False
    assert packet.commands == [(0, bytes.fromhex("903026"))]
    assert packet.journal.checkpoint == 17014
    [channel] = packet.journal.channels
    assert channel.channel == 0 and channel.notes.logs == []
    assert channel.notes.off_notes == [48, 53, 55]


def test_macos_running_status_and_two_channel_journals():
    packet = RtpMidiPacket.parse(golden("macos_running_status_two_channels"))
    assert packet.sequence == 17050
    assert packet.commands == [(0, bytes.fromhex("903e31")), (10, bytes.fromhex("90403b"))]
    journal = packet.journal
    assert journal.checkpoint == 17020 and journal.system is None
    assert [channel.channel for channel in journal.channels] == [0, 9]
    assert journal.channels[0].notes.logs == [(False, 60, False, 37)]


def test_macos_control_change_with_chapters_c_and_n():
    packet = RtpMidiPacket.parse(golden("macos_control_change_chapters_c_n"))
    assert packet.sequence == 19365
    assert packet.commands == [(0, bytes.fromhex("b06c00"))]
    [channel] = packet.journal.channels
    assert channel.controllers.logs == [(False, 108, False, 127)]
    assert channel.notes.off_notes == [60]


def test_packet_without_journal():
    packet = RtpMidiPacket.parse(golden("pymidi_no_journal"))
    assert packet.journal is None and packet.commands == [(0, bytes.fromhex("903446"))]


def test_py_pack_running_status_with_delta():
    packet = RtpMidiPacket.parse(golden("py_pack_running_status"))
    assert packet.ssrc == 0x664B3F39
    assert packet.commands == [(0, bytes.fromhex("903c64")), (10, bytes.fromhex("903c00"))]


def test_node_zero_flag_with_zero_deltas():
    data = golden("node_z1_zero_deltas")
    packet = RtpMidiPacket.parse(data)
    assert packet.commands == [(0, bytes.fromhex("90407f")), (0, bytes.fromhex("804000"))]
    # Built again it drops the needless first delta (Z=0) and uses no running status here.
    assert bytes(packet)[12:] == bytes.fromhex("07 90407f 00 804000")


def test_long_header():
    packet = RtpMidiPacket.parse(golden("long_header"))
    assert len(packet.commands) == 7 and packet.commands[-1] == (0, b"\xf8")
    assert [delta for delta, _ in packet.commands] == [0, 1, 1, 2, 2, 3, 0]


def test_lone_timing_clock():
    assert RtpMidiPacket.parse(golden("lone_timing_clock")).commands == [(0, b"\xf8")]


def test_program_change_then_channel_pressure():
    packet = RtpMidiPacket.parse(golden("program_then_channel_pressure"))
    assert packet.commands == [(0, b"\xc0\x05"), (0, b"\xd0\x7f")]


def test_delta_128_is_big_endian():
    packet = RtpMidiPacket.parse(golden("delta_128"))
    assert packet.commands[1] == (128, bytes.fromhex("803c40"))


@pytest.mark.parametrize("name", [name for name in FIXTURES if not name.startswith("_")])
def test_golden_round_trip(name):
    data = golden(name)
    packet = RtpMidiPacket.parse(data)
    assert RtpMidiPacket.parse(bytes(packet)) == packet
    # Node's Z=1 list is written with Z=0; a one-octet list is written with Z=1 (below).
    if name not in ("node_z1_zero_deltas", "lone_timing_clock"):
        assert bytes(packet) == data


def test_a_one_octet_list_is_written_after_a_zero_delta():
    # node-rtpmidi 1.0.0 drops LEN=1 lists: a lone clock goes as Z=1, LEN=2, "00 f8".
    packet = RtpMidiPacket(7, 100, 0x1234, [(0, b"\xf8")])
    assert bytes(packet)[12:] == bytes((0x22, 0x00, 0xF8))
    assert RtpMidiPacket.parse(bytes(packet)).commands == [(0, b"\xf8")]
    two = RtpMidiPacket(7, 100, 0x1234, [(0, b"\xfa"), (0, b"\xf8")])
    assert bytes(two)[12:] == bytes((0x03, 0xFA, 0x00, 0xF8))


# -- building ---------------------------------------------------------------

@pytest.mark.parametrize("delta, octets", [
    (0, "00"), (127, "7f"), (128, "8100"), (300, "822c"), (16383, "ff7f"),
    (16384, "818000"), (MAX_DELTA, "ffffff7f"),
])
def test_delta_encoding(delta, octets):
    assert encode_delta(delta).hex() == octets


@pytest.mark.parametrize("delta", [-1, MAX_DELTA + 1])
def test_delta_out_of_range(delta):
    with pytest.raises(ValueError):
        encode_delta(delta)


def test_build_sends_m0_pt97_and_running_status():
    packet = RtpMidiPacket(7, 1234, 0xABCD, [
        (0, b"\x90\x3c\x64"), (5, b"\x90\x3e\x64"), (0, b"\xf8"), (1, b"\x90\x40\x64"),
        (0, b"\xf3\x01"), (0, b"\x90\x41\x64")])
    data = bytes(packet)
    assert data[:2] == b"\x80\x61"
    # Real-time keeps running status; system common cancels it.
    assert data[12:] == bytes.fromhex("8012 903c64 05 3e64 00 f8 01 4064 00 f301 00 904164")


def test_build_first_delta_sets_z():
    data = bytes(RtpMidiPacket(1, 0, 0, [(300, b"\xfa")]))
    assert data[12:] == bytes.fromhex("23 822c fa")


def test_build_long_list_uses_b_header():
    commands = [(0, bytes((0x90, note, 100))) for note in range(10)]
    data = bytes(RtpMidiPacket(1, 0, 0, commands))
    assert data[12] & 0x80 and ((data[12] & 0x0F) << 8 | data[13]) == len(data) - 14


def test_build_journal_sets_j():
    data = bytes(RtpMidiPacket(1, 0, 0, [], journal=Journal(1, s_bit=True)))
    assert data[12:] == bytes.fromhex("40 80 0001")


def test_marker_and_phantom_accepted():
    data = header(second=0xE1) + bytes.fromhex("13 903c64")
    packet = RtpMidiPacket.parse(data)
    assert packet.marker and packet.phantom
    assert RtpMidiPacket.parse(bytes(packet)) == packet


def test_csrc_extension_and_padding_are_skipped():
    data = (header(first=0xB1) + b"\x00\x00\x00\x09"          # P, X, CC=1
            + b"\xbe\xde\x00\x01" + b"\x01\x02\x03\x04"       # one-word extension
            + bytes.fromhex("03 903c64") + b"\x00\x00\x03")    # padding of 3
    assert RtpMidiPacket.parse(data).commands == [(0, b"\x90\x3c\x64")]


def test_every_message_kind_round_trips():
    messages = [b"\x80\x01\x02", b"\x91\x01\x02", b"\xa2\x01\x02", b"\xb3\x01\x02",
                b"\xc4\x01", b"\xd5\x01", b"\xe6\x01\x02", b"\xf1\x01", b"\xf2\x01\x02",
                b"\xf3\x01", b"\xf6", b"\xf0\x7e\x7f\x06\x01\xf7", b"\xf8", b"\xfa", b"\xfb",
                b"\xfc", b"\xfe", b"\xff"]
    packet = RtpMidiPacket(1, 2, 3, [(index, message) for index, message in enumerate(messages)])
    assert RtpMidiPacket.parse(bytes(packet)) == packet


# -- SysEx ------------------------------------------------------------------

def test_sysex_segments_reassemble():
    reassembler = SysExReassembler()
    pieces = [b"\xf0\x7e\x01\xf0", b"\xf7\x02\x03\xf0", b"\xf7\x04\xf7"]
    for piece in pieces:
        packet = RtpMidiPacket.parse(bytes(RtpMidiPacket(1, 0, 0, [(0, piece)])))
        assert packet.commands == [(0, piece)]
    assert [reassembler.feed(piece) for piece in pieces] == [None, None, b"\xf0\x7e\x01\x02\x03\x04\xf7"]


def test_sysex_cancel_and_orphans_are_dropped():
    reassembler = SysExReassembler()
    assert reassembler.feed(b"\xf0\x01\xf0") is None
    assert reassembler.feed(b"\xf7\x02\xf4") is None
    assert reassembler.feed(b"\xf7\x03\xf7") is None
    assert reassembler.dropped == 2
    assert reassembler.feed(b"\xf0\x05\xf7") == b"\xf0\x05\xf7"


def test_sysex_size_limit():
    reassembler = SysExReassembler(max_size=4)
    reassembler.feed(b"\xf0\x01\x02\xf0")
    assert reassembler.feed(b"\xf7\x03\x04\x05\xf7") is None and reassembler.dropped == 1


def test_realtime_inside_sysex_is_delivered_separately():
    data = header() + bytes.fromhex("07 f0 01 f8 02 fe 03 f7")
    assert RtpMidiPacket.parse(data).commands == [
        (0, b"\xf8"), (0, b"\xfe"), (0, b"\xf0\x01\x02\x03\xf7")]


# -- malformed input --------------------------------------------------------

@pytest.mark.parametrize("data, reason", [
    (b"", "shorter"),
    (header(first=0x40) + b"\x00", "version"),
    (header(), "shorter"),
    (header(first=0x81) + b"\x00\x00\x00\x01", "no MIDI command section"),
    (header() + b"\x85\x00", "runs past"),
    (header() + b"\x83\x90\x3c", "runs past"),
    (header() + b"\x04\xc0\x05\xd0\x7f", "ends after a delta"),
    (header() + b"\x02\x3c\x64", "without running status"),
    (header() + b"\x02\x90\x3c", "inside a command"),
    (header() + b"\x03\x90\x3c\x90", "status octet inside"),
    (header() + b"\x03\xf0\x01\x02", "no F0/F7/F4 terminator"),
    (header() + b"\x03\xf0\x90\xf7", "inside SysEx"),
    (header() + b"\x26\x80\x80\x80\x80\x00\xf8", "longer than 4"),
    (header() + b"\x40", "journal header truncated"),
    (header(first=0xA0) + b"\x01\xf8\x09", "padding"),
])
def test_malformed(data, reason):
    with pytest.raises(MalformedPacket, match=reason):
        RtpMidiPacket.parse(data)


def test_lazy_journal_is_read_on_first_use():
    eager = RtpMidiPacket.parse(golden("macos_note_on_chapter_n"))
    lazy = RtpMidiPacket.parse(golden("macos_note_on_chapter_n"), lazy_journal=True)
    assert lazy.commands == eager.commands and lazy.journal == eager.journal
    broken = RtpMidiPacket.parse(header() + b"\x41\xf8\x00", lazy_journal=True)
    assert broken.commands == [(0, b"\xf8")]
    with pytest.raises(MalformedPacket, match="journal header truncated"):
        broken.journal


# -- properties -------------------------------------------------------------

data_byte = st.integers(0, 127)
channel_message = st.builds(
    lambda status, data: bytes((status,)) + bytes(data[:2 if status >> 4 not in (0xC, 0xD) else 1]),
    st.integers(0x80, 0xEF), st.lists(data_byte, min_size=2, max_size=2))
system_message = st.sampled_from([b"\xf1\x10", b"\xf2\x01\x02", b"\xf3\x05", b"\xf4", b"\xf5",
                                  b"\xf6", b"\xf8", b"\xf9", b"\xfa", b"\xfb", b"\xfc", b"\xfd",
                                  b"\xfe", b"\xff"])
sysex_message = st.builds(
    lambda opening, body, closing: bytes((opening,)) + bytes(body) + bytes((closing,)),
    st.sampled_from([0xF0, 0xF7]), st.lists(data_byte, max_size=12),
    st.sampled_from([0xF0, 0xF7, 0xF4]))
midi_message = st.one_of(channel_message, channel_message, system_message, sysex_message)
commands = st.lists(st.tuples(st.integers(0, MAX_DELTA), midi_message), max_size=40)


@settings(max_examples=300, deadline=None)
@given(commands, st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF),
       st.integers(0, 0xFFFFFFFF), st.booleans(), st.booleans())
def test_any_command_list_round_trips(commands, sequence, timestamp, ssrc, marker, phantom):
    packet = RtpMidiPacket(sequence, timestamp, ssrc, commands, marker=marker, phantom=phantom)
    assert RtpMidiPacket.parse(bytes(packet)) == packet


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_raise_only_malformed(data):
    try:
        packet = RtpMidiPacket.parse(data)
    except MalformedPacket:
        return
    assert RtpMidiPacket.parse(bytes(packet)) == packet


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from([name for name in FIXTURES if not name.startswith("_")]),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 60))
def test_mutated_golden_packets_raise_only_malformed(name, mutations, cut):
    data = bytearray(golden(name))
    for index, value in mutations:
        if index < len(data):
            data[index] = value
    data = bytes(data[:len(data) - cut] if cut < len(data) else data)
    try:
        packet = RtpMidiPacket.parse(data)
    except MalformedPacket:
        return
    assert RtpMidiPacket.parse(bytes(packet)) == packet
