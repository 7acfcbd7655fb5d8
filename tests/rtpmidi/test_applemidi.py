"""AppleMIDI control packets: golden bytes from a real capture, round trips, fuzzing.

The golden packets are the ones tshark decoded in cap/final.pcapng
(shared/protocols/rtpmidi.md §6): pymidi ("pyI") inviting node-rtpmidi ("nodeL").
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols.rtpmidi.applemidi import (
    END_SESSION,
    INVITATION,
    INVITATION_ACCEPTED,
    INVITATION_REJECTED,
    BitrateLimit,
    MalformedPacket,
    ReceiverFeedback,
    SessionExchange,
    Sync,
    is_applemidi,
    parse_control,
)

UDP_OVER_ETHERNET_OVERHEAD = 14 + 20 + 8
PY_SSRC = 0x664B3F39
NODE_SSRC = 0x8E9A6AC1
TOKEN = 0xCBAD7F85

CAPTURED_IN = bytes.fromhex("ffff494e 00000002 cbad7f85 664b3f39") + b"pyI\0"
CAPTURED_OK = bytes.fromhex("ffff4f4b 00000002 cbad7f85 8e9a6ac1") + b"nodeL\0"
CAPTURED_CK0 = bytes.fromhex(
    "ffff434b 664b3f39 00 000000 00001053ef9c6204 0000000000000000 0000000000000000")
CAPTURED_CK2 = bytes.fromhex(
    "ffff434b 664b3f39 02 000000 00001053ef9c6204 000000000000218e 00001053ef9c6211")
CAPTURED_RS = bytes.fromhex("ffff5253 8e9a6ac1 c0cd0000")
PY_BYE = bytes.fromhex("ffff4259 00000002 cbad7f85 664b3f39")
# node puts the remote's name in BY and keeps that name's own trailing NUL.
NODE_BYE = bytes.fromhex("ffff4259 00000002 00000000 8e9a6ac1") + b"pyL\0\0"


def test_invitation_matches_capture():
    packet = parse_control(CAPTURED_IN)
    assert packet == SessionExchange(INVITATION, TOKEN, PY_SSRC, "pyI")
    assert len(CAPTURED_IN) + UDP_OVER_ETHERNET_OVERHEAD == 62
    assert bytes(packet) == CAPTURED_IN


def test_accept_matches_capture():
    packet = parse_control(CAPTURED_OK)
    assert packet == SessionExchange(INVITATION_ACCEPTED, TOKEN, NODE_SSRC, "nodeL")
    assert len(CAPTURED_OK) + UDP_OVER_ETHERNET_OVERHEAD == 64
    assert bytes(packet) == CAPTURED_OK


def test_sync_matches_capture():
    ck0 = parse_control(CAPTURED_CK0)
    assert ck0 == Sync(PY_SSRC, 0, ts1=0x00001053EF9C6204)
    ck2 = parse_control(CAPTURED_CK2)
    assert ck2 == Sync(PY_SSRC, 2, 0x00001053EF9C6204, 0x218E, 0x00001053EF9C6211)
    assert len(CAPTURED_CK0) + UDP_OVER_ETHERNET_OVERHEAD == 78
    assert bytes(ck0) == CAPTURED_CK0
    assert bytes(ck2) == CAPTURED_CK2


def test_receiver_feedback_carries_seq_in_upper_half():
    packet = parse_control(CAPTURED_RS)
    assert packet == ReceiverFeedback(NODE_SSRC, 49357)
    assert len(CAPTURED_RS) + UDP_OVER_ETHERNET_OVERHEAD == 54
    assert bytes(packet) == CAPTURED_RS


def test_bye_without_name_is_16_bytes():
    packet = parse_control(PY_BYE)
    assert packet == SessionExchange(END_SESSION, TOKEN, PY_SSRC)
    assert packet.name is None
    assert len(PY_BYE) + UDP_OVER_ETHERNET_OVERHEAD == 58
    assert bytes(packet) == PY_BYE


def test_node_bye_with_doubled_nul_name():
    packet = parse_control(NODE_BYE)
    assert len(NODE_BYE) + UDP_OVER_ETHERNET_OVERHEAD == 63
    assert packet.command == END_SESSION
    assert packet.name == "pyL"


def test_rejection_and_bitrate_limit_round_trip():
    for packet in (SessionExchange(INVITATION_REJECTED, 1, 2),
                   SessionExchange(INVITATION_REJECTED, 1, 2, "full"),
                   BitrateLimit(0x1234, 64000)):
        assert parse_control(bytes(packet)) == packet
    assert bytes(BitrateLimit(0x1234, 64000)) == bytes.fromhex("ffff524c 00001234 0000fa00")


def test_utf8_name_round_trips():
    packet = SessionExchange(INVITATION, 7, 8, "Café ♪ session")
    assert parse_control(bytes(packet)) == packet


def test_lenient_name_decoding():
    header = bytes.fromhex("ffff494e 00000002 00000001 00000002")
    assert parse_control(header + b"no terminator").name == "no terminator"
    assert parse_control(header + b"bad \xff utf8\0").name == "bad \ufffd utf8"
    assert parse_control(header + b"\0").name == ""


def test_other_versions_parse_so_the_session_can_refuse_them():
    data = bytes.fromhex("ffff494e 00000003 00000001 00000002")
    assert parse_control(data).version == 3


def test_is_applemidi_separates_rtp():
    assert is_applemidi(CAPTURED_CK0)
    assert not is_applemidi(bytes.fromhex("8061c0cd 00000000 8e9a6ac1 0690407f"))
    assert not is_applemidi(b"")


@pytest.mark.parametrize("data, message", [
    (b"", "too short"),
    (b"\xff\xff", "too short"),
    (b"\x80\x61\x00\x01", "signature"),
    (b"\xff\xffXX" + bytes(32), "unknown"),
    (CAPTURED_IN[:15], "16 bytes"),
    (CAPTURED_CK0[:35], "36 bytes"),
    (CAPTURED_RS[:11], "12 bytes"),
    (CAPTURED_CK0[:8] + b"\x03" + CAPTURED_CK0[9:], "count"),
])
def test_malformed_packets(data, message):
    with pytest.raises(MalformedPacket, match=message):
        parse_control(data)


def test_malformed_packet_is_a_value_error():
    assert issubclass(MalformedPacket, ValueError)


@pytest.mark.parametrize("build", [
    lambda: SessionExchange(b"CK", 0, 0),
    lambda: SessionExchange(INVITATION, 1 << 32, 0),
    lambda: SessionExchange(INVITATION, 0, -1),
    lambda: SessionExchange(INVITATION, 0, 0, "a\0b"),
    lambda: Sync(0, 3),
    lambda: Sync(0, 0, 1 << 64),
    lambda: ReceiverFeedback(0, 1 << 16),
])
def test_building_refuses_out_of_range_fields(build):
    with pytest.raises(ValueError):
        build()


u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
names = st.none() | st.text().filter(lambda name: "\0" not in name)
packets = st.one_of(
    st.builds(SessionExchange,
              st.sampled_from([INVITATION, INVITATION_ACCEPTED, INVITATION_REJECTED,
                               END_SESSION]),
              u32, u32, names, u32),
    st.builds(Sync, u32, st.integers(0, 2), u64, u64, u64),
    st.builds(ReceiverFeedback, u32, st.integers(0, 0xFFFF)),
    st.builds(BitrateLimit, u32, u32),
)


@given(packets)
def test_every_packet_round_trips(packet):
    assert parse_control(bytes(packet)) == packet


@given(st.binary(max_size=80) | st.binary(max_size=40).map(lambda tail: b"\xff\xff" + tail))
def test_arbitrary_bytes_parse_or_raise_malformed(data):
    try:
        packet = parse_control(data)
    except MalformedPacket:
        return
    assert is_applemidi(data)
    bytes(packet)
