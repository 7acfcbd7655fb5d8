import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pythonosc.osc_message import OscMessage

from gateway.protocols.oscgroups import wire

from .osc_bytes import osc_bundle, osc_int, osc_message, osc_string

GPW = "f27b2e56f097d124c7e69ecdc42f95a5"


def test_password_hash_matches_the_c_client():
    assert wire.password_hash("gpw") == GPW
    assert wire.password_hash("0123456789") == "781e5e245d69b566979b86e28d23f2c7"


def test_inverted_ipv4_examples_from_the_notes():
    assert wire.invert_ipv4("127.0.0.1") == -2130706434
    assert osc_int(wire.invert_ipv4("127.0.0.1")) == bytes.fromhex("80fffffe")
    assert wire.invert_ipv4("192.168.1.2") == 0x3F57FEFD
    assert wire.uninvert_ipv4(-2130706434) == "127.0.0.1"
    assert wire.uninvert_ipv4(0x3F57FEFD) == "192.168.1.2"


def test_alive_bundle_is_byte_exact_and_228_bytes_for_alice():
    alive = wire.UserAlive("alice", "a" * 32, ("127.0.0.1", 22243), (("grp", GPW),)).encode()
    query = wire.GroupUsersQuery("grp", GPW).encode()
    bundle = wire.encode_bundle([alive, query])
    expected = osc_bundle(
        osc_message("/groupserver/user_alive", "ssiiss",
                    "alice", "a" * 32, -2130706434, 22243, "grp", GPW),
        osc_message("/groupserver/get_group_users_info", "ss", "grp", GPW))
    assert bundle == expected
    assert len(bundle) == 228


@pytest.mark.parametrize("name, size", [("bob", 48), ("abcd", 52), ("abcdefg", 52)])
def test_ping_bundle_sizes(name, size):
    assert len(wire.encode_bundle([wire.Ping(name).encode()])) == size


def test_nested_bundles_flatten_in_order_and_time_tags_are_ignored():
    first = osc_message("/a", "i", 1)
    second = osc_message("/b", "s", "x")
    third = osc_message("/c", "")
    data = osc_bundle(first, osc_bundle(second, time_tag=0xDEADBEEF), third)
    assert wire.parse_packet(data) == [
        wire.Message("/a", "i", (1,)), wire.Message("/b", "s", ("x",)), wire.Message("/c", "", ())]


def test_type_tags_are_exposed_so_symbols_can_be_refused():
    symbol_ping = osc_string("/groupclient/ping") + osc_string(",S") + osc_string("bob")
    (message,) = wire.parse_packet(symbol_ping)
    assert message == wire.Message("/groupclient/ping", "S", None)
    with pytest.raises(wire.MalformedPacket):
        wire.decode_message(message)


def test_int64_port_is_refused_where_int32_is_required():
    message = wire.Message("/groupserver/user_alive", "sshi", ("u", "p", -2130706434, 1))
    with pytest.raises(wire.MalformedPacket):
        wire.decode_message(message)


def test_address_matching_is_exact():
    message = wire.Message("/groupclient/pin*", "s", ("bob",))
    assert wire.decode_message(message) is None


@pytest.mark.parametrize("data", [
    b"hello world",
    b"#bundle\x00",
    osc_bundle(osc_message("/a", "i", 1))[:-2],
    b"#bundle\x00" + struct.pack(">Q", 1) + struct.pack(">i", -4),
    b"#bundle\x00" + struct.pack(">Q", 1) + struct.pack(">i", 6) + b"/a\x00\x00,\x00",
    b"/a\x00\x00,i\x00\x00\x00\x01",
    b"/\xff\xfe\x00",
])
def test_malformed_packets_raise_malformed_packet(data):
    with pytest.raises(wire.MalformedPacket):
        wire.parse_packet(data)


def test_deep_nesting_is_refused():
    data = osc_message("/a", "")
    for _ in range(wire.MAX_BUNDLE_DEPTH + 1):
        data = osc_bundle(data)
    with pytest.raises(wire.MalformedPacket):
        wire.parse_packet(data)


def test_pack_bundles_keeps_order_and_size_limit():
    elements = [wire.Ping(f"user{i:03d}").encode() for i in range(200)]
    bundles = wire.pack_bundles(elements, max_size=300)
    assert all(len(b) <= 300 for b in bundles)
    names = [m.args[0] for b in bundles for m in wire.parse_packet(b)]
    assert names == [f"user{i:03d}" for i in range(200)]


def test_user_info_round_trip():
    info = wire.UserInfo("carol", ("192.168.1.2", 22263), ("198.18.1.1", 40000), 6, ("grp", "x"))
    (message,) = wire.parse_packet(info.encode())
    assert message.type_tags == "siiiiiss"
    assert wire.decode_message(message) == info


# OSC strings are UTF-8 without NUL: no surrogates, no "\x00".
OSC_CHARACTERS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=OSC_CHARACTERS, min_size=1, max_size=20),
       st.lists(st.one_of(st.integers(-2**31, 2**31 - 1).map(lambda v: ("i", v)),
                          st.text(alphabet=OSC_CHARACTERS, max_size=12).map(lambda v: ("s", v)),
                          st.binary(max_size=9).map(lambda v: ("b", v))), max_size=5))
def test_our_encoder_and_int_fast_path_agree_with_python_osc(address, arguments):
    """Hand-written encoding and int parsing (for speed) must read back as python-osc reads."""
    tags = "".join(tag for tag, _ in arguments)
    values = [value for _, value in arguments]
    data = wire.encode_message("/" + address, tags, values)
    assert len(data) % 4 == 0
    reference = OscMessage(data)
    (message,) = wire.parse_packet(data)
    assert (message.address, message.type_tags) == ("/" + address, tags)
    assert list(message.args) == list(reference.params) == values
