"""AMF0/AMF3 codec: real clients' bytes, every marker, bounds, round trips and fuzz.

Golden bytes come from shared/protocols/rtmp-clients.md (§1.3, §1.4). The
command shapes are built here by hand, byte by byte per the AMF0 spec, so the
decoder is checked against the spec rather than against our own encoder.
"""

import ast
import datetime
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocols.rtmp import amf0
from gateway.protocols.rtmp.amf0 import (UNDEFINED, AmfError, EcmaArray, TypedObject,
                                         XmlDocument, decode, decode_all, encode)

UTC = datetime.timezone.utc

# rtmp-clients.md §1.4: what `ffmpeg ... -f data pipe:1 | xxd` printed for one onMidi tag.
ON_MIDI = bytes.fromhex(
    "0200 066f 6e4d 6964 6903 0003 7365 7100 4008 0000 0000 0000 0003 6865 7802 0006"
    " 3930 3366 3634 0000 09".replace(" ", ""))


# -- hand-built AMF0, straight from the spec's layouts --------------------

def number(value):
    return b"\x00" + struct.pack(">d", value)


def boolean(value):
    return b"\x01" + (b"\x01" if value else b"\x00")


def string(text):
    raw = text.encode("utf-8")
    return b"\x02" + struct.pack(">H", len(raw)) + raw


def name(text):
    raw = text.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def members(*pairs):
    return b"".join(name(key) + value for key, value in pairs) + b"\x00\x00\x09"


def object_(*pairs):
    return b"\x03" + members(*pairs)


def ecma_array(count, *pairs):
    return b"\x08" + struct.pack(">I", count) + members(*pairs)


def strict_array(*items):
    return b"\x0a" + struct.pack(">I", len(items)) + b"".join(items)


def reference(index):
    return b"\x07" + struct.pack(">H", index)


NULL = b"\x05"


# -- real clients ---------------------------------------------------------

def test_ffmpeg_onmidi_data_message_decodes_to_name_and_object():
    values = decode_all(ON_MIDI)
    assert values == ["onMidi", {"seq": 3.0, "hex": "903f64"}]
    assert type(values[1]) is dict and type(values[1]["seq"]) is float
    assert list(values[1]) == ["seq", "hex"]


def test_the_onmidi_message_encodes_back_to_the_same_bytes():
    assert encode("onMidi", {"seq": 3.0, "hex": "903f64"}) == ON_MIDI
    assert encode("onMidi", {"seq": 3, "hex": "903f64"}) == ON_MIDI


def test_onmidi_bodies_back_to_back_decode_in_order():
    second = ON_MIDI.replace(b"903f64", b"904064")
    assert decode_all(ON_MIDI + second) == [
        "onMidi", {"seq": 3.0, "hex": "903f64"}, "onMidi", {"seq": 3.0, "hex": "904064"}]


def test_ffmpeg_connect_with_rtmp_conn_arguments():
    # ffmpeg -rtmp_conn "S:room42 N:7 O:1 NS:user:alice NB:midi:1 O:0" (§1.3)
    body = (string("connect") + number(1.0)
            + object_(("app", string("jam")), ("type", string("nonprivate")),
                      ("flashVer", string("FMLE/3.0 (compatible; Lavf59.27.100)")),
                      ("tcUrl", string("rtmp://127.0.0.1:1935/jam")))
            + string("room42") + number(7.0)
            + object_(("user", string("alice")), ("midi", boolean(True))))
    assert decode_all(body) == [
        "connect", 1.0,
        {"app": "jam", "type": "nonprivate",
         "flashVer": "FMLE/3.0 (compatible; Lavf59.27.100)",
         "tcUrl": "rtmp://127.0.0.1:1935/jam"},
        "room42", 7.0, {"user": "alice", "midi": True}]


def test_rtmpdump_connect_with_extra_arguments():
    # rtmpdump -C S:room42 -C O:1 -C NS:user:bob -C O:0 (§1.3)
    body = (string("connect") + number(1.0)
            + object_(("app", string("jam")), ("flashVer", string("LNX 10,0,32,18")),
                      ("fpad", boolean(False)), ("capabilities", number(15.0)),
                      ("audioCodecs", number(3191.0)), ("videoFunction", number(1.0)))
            + string("room42") + object_(("user", string("bob"))))
    values = decode_all(body)
    assert values[3:] == ["room42", {"user": "bob"}]
    assert values[2]["fpad"] is False and values[2]["capabilities"] == 15.0


def test_librtmp_call_with_null_command_object():
    # python-librtmp conn.call('midiNote', ...) on the wire (§1.4 route B)
    body = string("midiNote") + number(6.0) + NULL + number(0.0) + string("903c64")
    assert decode_all(body) == ["midiNote", 6.0, None, 0.0, "903c64"]
    assert encode("midiNote", 6.0, None, 0.0, "903c64") == body


def test_set_data_frame_metadata_as_ecma_array_with_a_zero_count_hint():
    body = (string("@setDataFrame") + string("onMetaData")
            + ecma_array(0, ("duration", number(0.0)), ("audiocodecid", number(10.0)),
                         ("encoder", string("Lavf59.27.100"))))
    values = decode_all(body)
    assert values == ["@setDataFrame", "onMetaData",
                      {"duration": 0.0, "audiocodecid": 10.0, "encoder": "Lavf59.27.100"}]
    assert type(values[2]) is EcmaArray
    assert encode(*values) == body.replace(b"\x08\x00\x00\x00\x00", b"\x08\x00\x00\x00\x03")


def test_librtmp_onmidi_with_a_bytes_array():
    body = string("onMidi") + object_(
        ("seq", number(0.0)),
        ("bytes", strict_array(number(144.0), number(60.0), number(100.0))),
        ("hex", string("903c64")))
    assert decode_all(body) == ["onMidi", {"seq": 0.0, "bytes": [144.0, 60.0, 100.0],
                                           "hex": "903c64"}]
    assert encode(*decode_all(body)) == body


# -- every AMF0 marker ----------------------------------------------------

def test_undefined_is_a_sentinel_distinct_from_null():
    assert decode_all(b"\x06\x05") == [UNDEFINED, None]
    assert decode(b"\x06") is UNDEFINED and repr(UNDEFINED) == "UNDEFINED"
    assert encode(UNDEFINED, None) == b"\x06\x05"


def test_boolean_any_nonzero_byte_is_true():
    assert decode_all(b"\x01\x00\x01\x01\x01\x7f") == [False, True, True]


def test_reference_resolves_to_the_earlier_object():
    shared = object_(("a", number(1.0)))
    body = strict_array(shared, reference(1), strict_array(), reference(2))
    values = decode(body)
    assert values == [{"a": 1.0}, {"a": 1.0}, [], []]
    assert values[0] is values[1] and values[2] is values[3]


def test_reference_numbering_counts_typed_objects_and_ecma_arrays():
    body = (b"\x10" + name("Point") + members(("x", number(1.0)))
            + ecma_array(1, ("k", string("v"))) + reference(0) + reference(1))
    point, array, point_again, array_again = decode_all(body)
    assert point_again is point and array_again is array


def test_date_is_utc_and_ignores_the_reserved_zone():
    when = datetime.datetime(2026, 12, 2, 0, 1, 2, 345000, tzinfo=UTC)
    milliseconds = (when - datetime.datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1000
    body = b"\x0b" + struct.pack(">dh", milliseconds, -60)
    assert decode(body) == when
    assert encode(when) == body[:9] + b"\x00\x00"
    assert encode(when.replace(tzinfo=None)) == encode(when)


def test_long_string_and_the_encoder_choosing_it():
    text = "é" * 40000  # 80,000 UTF-8 bytes: too long for a plain string
    body = b"\x0c" + struct.pack(">I", 80000) + text.encode("utf-8")
    assert decode(body) == text
    assert encode(text) == body
    assert encode("é" * 32767)[0] == 0x02


def test_xml_document_stays_text():
    body = b"\x0f" + struct.pack(">I", 7) + b"<a>b</a>"[:7]
    value = decode(body)
    assert type(value) is XmlDocument and value == "<a>b</a"
    assert encode(value) == body


def test_typed_object_keeps_its_class_name_and_instantiates_nothing():
    body = b"\x10" + name("os.system") + members(("cmd", string("true")))
    value = decode(body)
    assert type(value) is TypedObject and value.class_name == "os.system"
    assert value == {"cmd": "true"}
    assert encode(value) == body
    assert value != TypedObject("other", cmd="true")


def test_non_ascii_strings_are_measured_in_utf8_bytes():
    assert encode("ü") == b"\x02\x00\x02\xc3\xbc"
    assert decode(b"\x02\x00\x02\xc3\xbc") == "ü"


def test_nan_and_infinities_pass_through():
    assert math.isnan(decode(encode(float("nan"))))
    assert decode_all(encode(float("inf"), float("-inf"))) == [float("inf"), float("-inf")]


def test_tuples_encode_as_strict_arrays_and_ints_as_numbers():
    assert encode((1, 2.5)) == strict_array(number(1.0), number(2.5))


# -- AMF3 after the AVM+ switch (0x11) --------------------------------------

def test_amf3_scalars():
    body = b"".join(b"\x11" + value for value in (
        b"\x00", b"\x01", b"\x02", b"\x03",
        b"\x04\x05", b"\x04\x81\x00", b"\x04\xff\xff\xff\xff",  # 5, 128, -1
        b"\x04\xbf\xff\xff\xff",                                # 2**28 - 1
        b"\x05" + struct.pack(">d", 2.5), b"\x06\x07foo", b"\x06\x01"))
    assert decode_all(body) == [UNDEFINED, None, False, True, 5, 128, -1, 2**28 - 1,
                                2.5, "foo", ""]


def test_amf3_anonymous_object_with_dynamic_members_and_string_references():
    # traits inline, dynamic, no sealed members, class "" ; then {seq: 3, hex: "903f64", again: <ref "hex">}
    body = (b"\x11\x0a\x0b\x01" + b"\x07seq\x04\x03" + b"\x07hex\x06\x0d903f64"
            + b"\x0bagain\x06\x02" + b"\x01")
    assert decode(body) == {"seq": 3, "hex": "903f64", "again": "hex"}


def test_amf3_command_object_as_a_flash_client_with_object_encoding_3_sends_it():
    # ['connect', 1.0, <AMF3 {app: 'jam', objectEncoding: 3.0}>]
    body = (string("connect") + number(1.0)
            + b"\x11\x0a\x0b\x01\x07app\x06\x07jam\x1dobjectEncoding\x05"
            + struct.pack(">d", 3.0) + b"\x01")
    assert decode_all(body) == ["connect", 1.0, {"app": "jam", "objectEncoding": 3.0}]


def test_amf3_sealed_typed_object_and_a_traits_reference():
    # array of two Point objects; the second reuses traits 0 by reference
    point = b"\x0a\x23\x0bPoint\x03x\x03y" + b"\x04\x01\x04\x02"
    second = b"\x0a\x01" + b"\x04\x03\x04\x04"
    body = b"\x11\x09\x05\x01" + point + second
    first, other = decode(body)
    assert type(first) is TypedObject and first.class_name == "Point"
    assert first == {"x": 1, "y": 2} and other == {"x": 3, "y": 4}


def test_amf3_arrays_dense_mixed_and_by_reference():
    dense = b"\x09\x05\x01\x04\x01\x04\x02"  # [1, 2]
    assert decode(b"\x11" + dense) == [1, 2]
    mixed = b"\x09\x03\x03k\x06\x03v\x01\x04\x07"  # {k: 'v'} + [7]
    assert decode(b"\x11" + mixed) == {"k": "v", "0": 7}
    outer = b"\x11\x09\x05\x01" + dense + b"\x09\x02"  # [[1, 2], <ref 1>]
    inner, again = decode(outer)
    assert inner is again


def test_amf3_date_bytearray_and_xml():
    stamp = b"\x08\x01" + struct.pack(">d", 1000.0)
    assert decode(b"\x11" + stamp) == datetime.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert decode(b"\x11\x0c\x07\x90\x3c\x64") == b"\x90\x3c\x64"
    xml = decode(b"\x11\x0b\x09<a/>")
    assert type(xml) is XmlDocument and xml == "<a/>"


@pytest.mark.parametrize("body, message", [
    (b"\x11\x0a\x07\x01", "externalizable"),
    (b"\x11\x0d\x03\x00", "not supported"),
    (b"\x11\x11\x01", "not supported"),
    (b"\x11\x06\x02", "string reference"),
    (b"\x11\x0a\x02", "object reference"),
    (b"\x11\x0a\x05", "traits reference"),
    (b"\x11\x09\x03\x01\x09\x00", "still being decoded"),
    (b"\x11\x09\xff\xff\xff\x01", "claims"),
])
def test_amf3_refusals(body, message):
    with pytest.raises(AmfError, match=message):
        decode_all(body)


# -- malformed input: one exception class, a clear message ----------------

@pytest.mark.parametrize("body, message", [
    (b"\x00\x40\x08", "truncated"),
    (b"\x02\x00\x05abc", "truncated"),
    (b"\x03\x00\x01a\x00", "truncated"),
    (b"\x12", "unknown AMF0 marker 0x12"),
    (b"\x09", "object-end marker outside an object"),
    (b"\x04", "reserved or unsupported"),
    (b"\x0d", "reserved or unsupported"),
    (b"\x0e", "reserved or unsupported"),
    (b"\x07\x00\x00", "reference 0 to one of 0"),
    (b"\x03\x00\x01a\x07\x00\x00\x00\x00\x09", "still being decoded"),
    (b"\x02\x00\x02\xc3\x28", "invalid UTF-8"),
    (b"\x0a\xff\xff\xff\xff", "claims 4294967295 elements"),
    (b"\x03\x00\x00\x05", "empty member name without object-end"),
    (b"\x0b" + struct.pack(">dh", 1e300, 0), "date out of range"),
    (b"\x0b" + struct.pack(">dh", float("nan"), 0), "date out of range"),
])
def test_malformed_input_raises_amf_error(body, message):
    with pytest.raises(AmfError, match=message):
        decode_all(body)


def test_amf_error_is_a_value_error():
    assert issubclass(AmfError, ValueError)


def test_non_bytes_input_is_refused():
    with pytest.raises(AmfError, match="not bytes"):
        decode_all(5)
    assert decode_all(bytearray(ON_MIDI)) == decode_all(memoryview(ON_MIDI))


def test_decode_refuses_trailing_bytes():
    with pytest.raises(AmfError, match="1 bytes after the value"):
        decode(b"\x05\x05")
    assert decode_all(b"") == []


def test_depth_bomb_is_refused_without_recursing_deeply():
    bomb = b"\x0a\x00\x00\x00\x01" * 100_000 + b"\x05"
    with pytest.raises(AmfError, match="nested deeper than 32"):
        decode_all(bomb)
    objects = (b"\x03\x00\x01a") * 100_000
    with pytest.raises(AmfError, match="nested deeper"):
        decode_all(objects)
    amf3 = b"\x11" + b"\x09\x03\x01" * 100_000 + b"\x01"
    with pytest.raises(AmfError, match="nested deeper"):
        decode_all(amf3)


def test_depth_limit_is_exact():
    def nested(levels):
        return b"\x0a\x00\x00\x00\x01" * levels + b"\x05"
    assert decode(nested(32)) is not None
    with pytest.raises(AmfError):
        decode(nested(33))
    assert decode(nested(3), max_depth=3) == [[[None]]]


def test_reference_expansion_bomb_is_refused():
    # Each array holds two references to the one before: the 20th stands for 2**20 values.
    levels = [strict_array(number(0.0), number(0.0))]
    levels += [strict_array(reference(index), reference(index)) for index in range(19)]
    with pytest.raises(AmfError, match="more than 10000 values"):
        decode_all(b"".join(levels))
    assert len(decode_all(b"".join(levels[:8]))) == 8


def test_value_count_limit():
    body = strict_array(*[NULL] * 50)
    assert len(decode(body, max_values=51)) == 50
    with pytest.raises(AmfError, match="more than 50 values"):
        decode(body, max_values=50)


# -- encoding refusals ----------------------------------------------------

@pytest.mark.parametrize("value, message", [
    (object(), "no AMF0 form for object"),
    ({1: "a"}, "member names must be str"),
    ({"": "a"}, "empty member name"),
    (10**400, "integer too large"),
    ("\ud800", "not encodable as UTF-8"),
    (b"raw", "no AMF0 form for bytes"),
])
def test_encode_refuses_what_amf0_cannot_carry(value, message):
    with pytest.raises(AmfError, match=message):
        encode(value)


def test_encode_refuses_a_cycle():
    cycle = []
    cycle.append(cycle)
    with pytest.raises(AmfError, match="nested deeper"):
        encode(cycle)


# -- properties -----------------------------------------------------------

whole_milliseconds = st.datetimes(
    min_value=datetime.datetime(1900, 1, 1), max_value=datetime.datetime(2200, 1, 1),
    timezones=st.just(UTC)).map(lambda when: when.replace(microsecond=when.microsecond
                                                          // 1000 * 1000))
texts = st.text(st.characters(codec="utf-8"), max_size=20)
keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
leaves = st.one_of(
    st.floats(allow_nan=False), st.booleans(), texts, st.none(), st.just(UNDEFINED),
    whole_milliseconds, texts.map(XmlDocument))


def containers(children):
    return st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(keys, children, max_size=5),
        st.dictionaries(keys, children, max_size=5).map(EcmaArray),
        st.tuples(keys, st.dictionaries(keys, children, max_size=5)).map(
            lambda pair: TypedObject(*pair)))


values = st.recursive(leaves, containers, max_leaves=30)


def same(left, right):
    """Equal and of the same types all the way down (True == 1.0 would pass ==)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, TypedObject) and left.class_name != right.class_name:
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same, left, right))
    return left == right


@given(st.lists(values, max_size=4))
def test_round_trip(items):
    body = encode(*items)
    decoded = decode_all(body)
    assert len(decoded) == len(items)
    assert all(map(same, decoded, items))
    assert encode(*decoded) == body


fuzz_settings = settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])


@fuzz_settings
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_amf_error(data):
    for body in (data, b"\x11" + data):
        try:
            decode_all(body)
        except AmfError:
            pass


@st.composite
def mutated(draw):
    """A valid encoding with a few bytes overwritten, inserted or cut: near misses."""
    body = bytearray(encode(*draw(st.lists(values, min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["set", "insert", "cut"]))
        byte = draw(st.integers(0, 255))
        if action == "insert" or position == len(body):
            body.insert(position, byte)
        elif action == "set":
            body[position] = byte
        else:
            del body[position:position + draw(st.integers(1, 8))]
    return bytes(body)


@fuzz_settings
@given(mutated())
def test_mutated_encodings_raise_only_amf_error(body):
    try:
        decode_all(body)
    except AmfError:
        pass


AMF3_PIECES = [b"\x00", b"\x01", b"\x02", b"\x03", b"\x04", b"\x05", b"\x06", b"\x07",
               b"\x08", b"\x09", b"\x0a", b"\x0b", b"\x0c", b"\x01", b"\x03", b"\x07",
               b"\x0b", b"\x23", b"\xff", b"\x80", b"abc"]


@fuzz_settings
@given(st.lists(st.sampled_from(AMF3_PIECES), max_size=40))
def test_amf3_marker_soup_raises_only_amf_error(pieces):
    try:
        decode_all(b"\x11" + b"".join(pieces))
    except AmfError:
        pass


def test_module_imports_only_the_standard_library():
    tree = ast.parse(open(amf0.__file__, encoding="utf-8").read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert imported == {"datetime", "struct"}
