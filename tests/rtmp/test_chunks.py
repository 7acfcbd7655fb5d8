"""The RTMP chunk stream: header types, deltas, extended timestamps, control messages, limits.

Hand-written chunk bytes follow RTMP spec 1.0 §5.3 octet by octet, so the
reader is checked against the spec rather than against the writer; the
writer is then checked against the reader with random chunk sizes.
"""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.rtmp.chunks import (
    AUDIO,
    COMMAND_AMF0,
    DATA_AMF0,
    LIMIT_DYNAMIC,
    LIMIT_HARD,
    VIDEO,
    Abort,
    Acknowledgement,
    AcknowledgementDue,
    ChunkError,
    ChunkReader,
    ChunkWriter,
    Message,
    PingRequest,
    PingResponse,
    SetBufferLength,
    SetChunkSize,
    SetPeerBandwidth,
    StreamBegin,
    StreamDry,
    StreamEOF,
    StreamIsRecorded,
    UnknownUserControl,
    WindowAckSize,
    control_message,
)

# A command body stand-in: AMF0 is another module's job, the chunk stream
# only carries octets.
COMMAND_BODY = b"\x02\x00\x07connect\x00\x3f\xf0" + bytes(6) + b"\x03\x00\x00\x09"


def u24(value):
    return value.to_bytes(3, "big")


def type0(csid, timestamp, length, type_id, stream_id, extended=None):
    header = bytes((csid,)) + u24(timestamp) + u24(length) + bytes((type_id,))
    header += struct.pack("<I", stream_id)
    return header + (struct.pack(">I", extended) if extended is not None else b"")


def type1(csid, delta, length, type_id):
    return bytes((0x40 | csid,)) + u24(delta) + u24(length) + bytes((type_id,))


def type2(csid, delta):
    return bytes((0x80 | csid,)) + u24(delta)


def type3(csid, extended=None):
    return bytes((0xC0 | csid,)) + (struct.pack(">I", extended) if extended is not None else b"")


def control(type_id, payload):
    return type0(2, 0, len(payload), type_id, 0) + payload


def messages(events):
    return [e for e in events if isinstance(e, Message)]


# --- header types and timestamps ------------------------------------------

def test_type0_message_in_one_chunk():
    reader = ChunkReader()
    events = reader.receive(type0(3, 1000, len(COMMAND_BODY), COMMAND_AMF0, 0) + COMMAND_BODY)
    assert events == [Message(COMMAND_AMF0, 0, 1000, COMMAND_BODY, 3)]


def test_message_split_over_many_chunks_with_type3_continuations():
    payload = bytes(range(256)) * 3 + b"tail"           # 772 octets: 7 chunks of 128
    data = type0(4, 7, len(payload), AUDIO, 1) + payload[:128]
    for start in range(128, len(payload), 128):
        data += type3(4) + payload[start:start + 128]
    assert ChunkReader().receive(data) == [Message(AUDIO, 1, 7, payload, 4)]


def test_type1_type2_type3_headers_add_deltas_spec_example_1():
    # §5.3.2.1: audio messages on one stream, 20 ms apart, growing header economy.
    data = (type0(3, 1000, 4, AUDIO, 12345) + b"aaaa"
            + type2(3, 20) + b"bbbb"
            + type3(3) + b"cccc"
            + type3(3) + b"dddd"
            + type1(3, 5, 2, VIDEO) + b"ee"
            + type3(3) + b"ff")
    assert ChunkReader().receive(data) == [
        Message(AUDIO, 12345, 1000, b"aaaa", 3),
        Message(AUDIO, 12345, 1020, b"bbbb", 3),
        Message(AUDIO, 12345, 1040, b"cccc", 3),
        Message(AUDIO, 12345, 1060, b"dddd", 3),
        Message(VIDEO, 12345, 1065, b"ee", 3),
        Message(VIDEO, 12345, 1070, b"ff", 3),
    ]


def test_type3_new_message_after_type0_uses_the_timestamp_as_its_delta():
    # ffmpeg's reading of the one case the spec leaves open.
    data = type0(5, 40, 1, DATA_AMF0, 1) + b"x" + type3(5) + b"y"
    assert [m.timestamp for m in ChunkReader().receive(data)] == [40, 80]


def test_extended_timestamp_on_type0_and_repeated_on_type3_continuations():
    timestamp = 0x01234567
    payload = b"v" * 300
    data = (type0(6, 0xFFFFFF, len(payload), VIDEO, 1, extended=timestamp) + payload[:128]
            + type3(6, extended=timestamp) + payload[128:256]
            + type3(6, extended=timestamp) + payload[256:])
    assert ChunkReader().receive(data) == [Message(VIDEO, 1, timestamp, payload, 6)]


def test_extended_delta_on_type2_and_a_type3_message_after_it():
    data = (type0(3, 100, 1, AUDIO, 1) + b"a"
            + type2(3, 0xFFFFFF) + struct.pack(">I", 0x02000000) + b"b"
            + type3(3, extended=0x02000000) + b"c")
    assert [m.timestamp for m in ChunkReader().receive(data)] == [
        100, 100 + 0x02000000, 100 + 2 * 0x02000000]


def test_timestamps_wrap_at_32_bits():
    data = (type0(3, 0xFFFFFF, 1, AUDIO, 1, extended=0xFFFFFFF0) + b"a"
            + type2(3, 0x20) + b"b")
    assert [m.timestamp for m in ChunkReader().receive(data)] == [0xFFFFFFF0, 0x10]


def test_zero_length_message():
    assert ChunkReader().receive(type0(3, 0, 0, DATA_AMF0, 1)) == [Message(DATA_AMF0, 1, 0, b"", 3)]


@pytest.mark.parametrize("csid, basic_header", [
    (2, b"\x02"), (63, b"\x3f"),
    (64, b"\x00\x00"), (319, b"\x00\xff"),
    (320, b"\x01\x00\x01"), (65599, b"\x01\xff\xff"),
])
def test_one_two_and_three_octet_basic_headers(csid, basic_header):
    message = basic_header + type0(0, 9, 3, DATA_AMF0, 1)[1:] + b"abc"
    continued = bytes((basic_header[0] | 0xC0,)) + basic_header[1:] + b"d"
    reader = ChunkReader()
    reader.receive(control(1, struct.pack(">I", 3)))       # chunk size 3: forces a continuation
    events = reader.receive(basic_header + type0(0, 9, 4, DATA_AMF0, 1)[1:] + b"abc" + continued)
    assert events == [Message(DATA_AMF0, 1, 9, b"abcd", csid)]
    assert ChunkReader().receive(message) == [Message(DATA_AMF0, 1, 9, b"abc", csid)]
    assert ChunkWriter().write(Message(DATA_AMF0, 1, 9, b"abc", csid)) == message


def test_interleaved_chunk_streams():
    audio, video, data_body = b"A" * 300, b"V" * 200, b"D" * 10
    wire = (type0(4, 0, len(audio), AUDIO, 1) + audio[:128]
            + type0(6, 0, len(video), VIDEO, 1) + video[:128]
            + type0(5, 3, len(data_body), DATA_AMF0, 1) + data_body
            + type3(4) + audio[128:256]
            + type3(6) + video[128:]
            + type3(4) + audio[256:])
    assert ChunkReader().receive(wire) == [
        Message(DATA_AMF0, 1, 3, data_body, 5),
        Message(VIDEO, 1, 0, video, 6),
        Message(AUDIO, 1, 0, audio, 4),
    ]


def test_bytes_fed_one_at_a_time():
    audio = b"A" * 300
    wire = (control(1, struct.pack(">I", 100))
            + type0(4, 0xFFFFFF, len(audio), AUDIO, 1, extended=1 << 30) + audio[:100]
            + type3(4, extended=1 << 30) + audio[100:200]
            + type3(4, extended=1 << 30) + audio[200:])
    reader = ChunkReader()
    events = []
    for octet in wire:
        events += reader.receive(bytes((octet,)))
    assert events == [SetChunkSize(100), Message(AUDIO, 1, 1 << 30, audio, 4)]


# --- protocol control and user control ------------------------------------

def test_set_chunk_size_from_the_peer_applies_to_the_chunks_after_it():
    payload = b"p" * 4096
    wire = (control(1, struct.pack(">I", 4096))
            + type0(3, 0, len(payload), COMMAND_AMF0, 0) + payload)
    reader = ChunkReader()
    assert reader.receive(wire) == [SetChunkSize(4096), Message(COMMAND_AMF0, 0, 0, payload, 3)]
    assert reader.chunk_size == 4096


@pytest.mark.parametrize("size", [0, 1 << 31, 0xFFFFFFFF])
def test_set_chunk_size_zero_or_top_bit_is_refused(size):
    with pytest.raises(ChunkError, match="Set Chunk Size"):
        ChunkReader().receive(control(1, struct.pack(">I", size)))


def test_set_chunk_size_above_the_servers_limit_is_refused():
    ChunkReader().receive(control(1, struct.pack(">I", 65536)))
    with pytest.raises(ChunkError, match="limit of 65536"):
        ChunkReader().receive(control(1, struct.pack(">I", 65537)))
    assert ChunkReader(max_peer_chunk_size=1 << 24).receive(
        control(1, struct.pack(">I", 65537))) == [SetChunkSize(65537)]


def test_abort_drops_the_partial_message_and_the_chunk_stream_starts_again():
    reader = ChunkReader()
    assert reader.receive(type0(4, 0, 500, AUDIO, 1) + b"x" * 128) == []
    assert reader.reassembly_bytes == 128
    assert reader.receive(control(2, struct.pack(">I", 4))) == [Abort(4)]
    assert reader.reassembly_bytes == 0
    assert reader.receive(type0(4, 5, 2, AUDIO, 1) + b"ok") == [Message(AUDIO, 1, 5, b"ok", 4)]


def test_every_control_message_is_parsed_into_a_value():
    wire = (control(3, struct.pack(">I", 123456))
            + control(5, struct.pack(">I", 2500000))
            + control(6, struct.pack(">IB", 2500000, LIMIT_DYNAMIC))
            + control(4, struct.pack(">HI", 0, 1))
            + control(4, struct.pack(">HI", 1, 1))
            + control(4, struct.pack(">HI", 2, 1))
            + control(4, struct.pack(">HII", 3, 1, 3000))
            + control(4, struct.pack(">HI", 4, 1))
            + control(4, struct.pack(">HI", 6, 99))
            + control(4, struct.pack(">HI", 7, 99))
            + control(4, struct.pack(">H", 31) + b"\x00\x00\x00\x01"))
    assert ChunkReader().receive(wire) == [
        Acknowledgement(123456), WindowAckSize(2500000), SetPeerBandwidth(2500000, LIMIT_DYNAMIC),
        StreamBegin(1), StreamEOF(1), StreamDry(1), SetBufferLength(1, 3000),
        StreamIsRecorded(1), PingRequest(99), PingResponse(99),
        UnknownUserControl(31, b"\x00\x00\x00\x01"),
    ]


@pytest.mark.parametrize("type_id, payload", [
    (1, b"\x00\x00\x10"), (2, b""), (3, b"\x01"), (5, b"\x00\x00"),
    (6, b"\x00\x00\x00\x01"), (6, struct.pack(">IB", 1, 3)),
    (4, b"\x00"), (4, struct.pack(">HH", 0, 1)), (4, struct.pack(">HI", 3, 1)),
    (4, struct.pack(">H", 6)),
])
def test_short_or_invalid_control_messages_are_chunk_errors(type_id, payload):
    with pytest.raises(ChunkError):
        ChunkReader().receive(control(type_id, payload))


def test_acknowledgement_is_due_when_the_peers_window_passes():
    reader = ChunkReader()
    window = control(5, struct.pack(">I", 1000))
    assert reader.receive(window) == [WindowAckSize(1000)]
    body = b"b" * 100
    one = type0(3, 0, len(body), DATA_AMF0, 1) + body        # 112 octets
    due = []
    for _ in range(20):
        due += [e for e in reader.receive(one) if isinstance(e, AcknowledgementDue)]
    total = len(window) + 20 * len(one)
    assert reader.bytes_received == total
    # One acknowledgement each time 1000 more octets have come in.
    assert [d.sequence_number for d in due] == [
        len(window) + n * len(one) for n in (9, 18)]
    assert total - due[-1].sequence_number < 1000


def test_no_acknowledgement_before_the_peer_sets_a_window():
    reader = ChunkReader()
    body = b"b" * 100
    for _ in range(100):
        assert not any(isinstance(e, AcknowledgementDue)
                       for e in reader.receive(type0(3, 0, 100, DATA_AMF0, 1) + body))


def test_window_ack_size_zero_is_refused():
    with pytest.raises(ChunkError):
        ChunkReader().receive(control(5, bytes(4)))


# --- malformed input and limits -------------------------------------------

def test_a_chunk_stream_must_start_with_a_type0_header():
    for header in (type1(3, 0, 1, AUDIO), type2(3, 0), type3(3)):
        with pytest.raises(ChunkError, match="first must be type 0"):
            ChunkReader().receive(header + b"x")


def test_a_new_header_before_the_message_is_complete_is_an_error():
    reader = ChunkReader()
    reader.receive(type0(3, 0, 200, AUDIO, 1) + b"x" * 128)
    with pytest.raises(ChunkError, match="before its message was complete"):
        reader.receive(type2(3, 0) + b"x" * 72)


def test_a_broken_reader_stays_broken():
    reader = ChunkReader()
    with pytest.raises(ChunkError):
        reader.receive(type3(3))
    with pytest.raises(ChunkError, match="already broken"):
        reader.receive(type0(3, 0, 1, AUDIO, 1) + b"x")


def test_a_message_larger_than_the_limit_is_refused_from_its_header():
    reader = ChunkReader(max_message_size=1 << 20)
    reader.receive(type0(3, 0, 1 << 20, VIDEO, 1) + b"x" * 128)        # exactly the limit: fine
    with pytest.raises(ChunkError, match="exceeds the limit"):
        ChunkReader(max_message_size=1 << 20).receive(type0(3, 0, (1 << 20) + 1, VIDEO, 1))


def test_a_message_at_the_limit_is_reassembled():
    payload = bytes(range(256)) * 4096                                # 1 MiB
    writer = ChunkWriter(chunk_size=60000)
    reader = ChunkReader(max_message_size=len(payload))
    reader.receive(writer.write(SetChunkSize(60000)))
    assert reader.receive(writer.write(Message(VIDEO, 1, 0, payload, 6))) == [
        Message(VIDEO, 1, 0, payload, 6)]
    assert reader.reassembly_bytes == 0


def test_partial_messages_together_are_bounded():
    reader = ChunkReader(max_message_size=1000, max_reassembly_bytes=128 * 5)
    for csid in range(3, 8):                       # 5 partials of 128 octets: at the bound
        reader.receive(type0(csid, 0, 1000, VIDEO, 1) + b"x" * 128)
    assert reader.reassembly_bytes == 640
    with pytest.raises(ChunkError, match="more than 640"):
        reader.receive(type0(8, 0, 1000, VIDEO, 1) + b"x" * 128)


def test_the_number_of_chunk_streams_is_bounded():
    reader = ChunkReader(max_chunk_streams=4)
    for csid in range(2, 6):
        reader.receive(type0(csid, 0, 1, AUDIO, 1) + b"x")
    with pytest.raises(ChunkError, match="more than 4 chunk streams"):
        reader.receive(type0(6, 0, 1, AUDIO, 1) + b"x")


def test_incomplete_input_is_held_and_bounded_by_one_chunk():
    reader = ChunkReader()
    assert reader.receive(type0(3, 0, 100, AUDIO, 1) + b"x" * 99) == []
    assert reader.receive(b"x") == [Message(AUDIO, 1, 0, b"x" * 100, 3)]


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_give_values_or_chunk_error_only(data):
    reader = ChunkReader(max_message_size=4096, max_reassembly_bytes=8192)
    try:
        for event in reader.receive(data):
            assert isinstance(event, tuple)
    except ChunkError:
        pass


VALID_SESSION = ChunkWriter().write_all([
    SetChunkSize(64), WindowAckSize(100),
    Message(COMMAND_AMF0, 0, 0, COMMAND_BODY * 4, 3),
    Message(AUDIO, 1, 0x1000000, b"a" * 150, 4),
    StreamBegin(1), SetBufferLength(1, 3000),
])


@settings(max_examples=500)
@given(st.lists(st.tuples(st.integers(0, len(VALID_SESSION) - 1), st.integers(0, 255)),
                max_size=6),
       st.integers(1, 50))
def test_mutated_valid_streams_give_values_or_chunk_error_only(mutations, piece):
    # Arbitrary bytes rarely get past the first header; flipping octets of a
    # real session reaches the deeper states (continuations, control bodies).
    data = bytearray(VALID_SESSION)
    for index, value in mutations:
        data[index] = value
    reader = ChunkReader(max_message_size=4096, max_reassembly_bytes=8192)
    try:
        for start in range(0, len(data), piece):
            for event in reader.receive(bytes(data[start:start + piece])):
                assert isinstance(event, tuple)
    except ChunkError:
        pass


# --- writer ---------------------------------------------------------------

def test_control_messages_on_the_wire():
    def alone(value):
        return ChunkWriter().write(value)
    assert alone(WindowAckSize(2500000)) == bytes.fromhex("02 000000 000004 05 00000000 002625a0")
    assert alone(SetPeerBandwidth(2500000, LIMIT_DYNAMIC)) == bytes.fromhex(
        "02 000000 000005 06 00000000 002625a0 02")
    assert alone(StreamBegin(1)) == bytes.fromhex("02 000000 000006 04 00000000 0000 00000001")
    assert alone(PingRequest(5000)) == bytes.fromhex("02 000000 000006 04 00000000 0006 00001388")
    assert alone(Acknowledgement(1 << 32 | 7)) == bytes.fromhex(
        "02 000000 000004 03 00000000 00000007")


def test_control_messages_after_the_first_share_its_header():
    writer = ChunkWriter()
    writer.write(WindowAckSize(2500000))
    assert writer.write(SetPeerBandwidth(2500000, LIMIT_HARD)) == bytes.fromhex(
        "42 000000 000005 06 002625a0 00")
    assert writer.write(StreamBegin(1)) == bytes.fromhex("42 000000 000006 04 0000 00000001")
    assert writer.write(PingRequest(5000)) == bytes.fromhex("82 000000 0006 00001388")


def test_set_chunk_size_switches_the_writer_after_its_own_message():
    writer = ChunkWriter()
    assert writer.write(SetChunkSize(4096)) == bytes.fromhex(
        "02 000000 000004 01 00000000 00001000")
    assert writer.chunk_size == 4096
    wire = writer.write(Message(COMMAND_AMF0, 0, 0, b"c" * 4096, 3))
    assert len(wire) == 12 + 4096                      # one chunk, no continuation
    with pytest.raises(ChunkError):
        writer.write(SetChunkSize(0))


def test_writer_uses_type0_first_then_type3_for_continuations():
    wire = ChunkWriter().write(Message(AUDIO, 1, 0, b"a" * 300, 4))
    assert wire[0] == 0x04
    assert wire[12 + 128] == 0xC4 and wire[12 + 128 + 1 + 128] == 0xC4
    assert len(wire) == 12 + 300 + 2


def test_writer_compresses_headers_when_it_can():
    writer = ChunkWriter()
    writer.write(Message(AUDIO, 1, 0, b"a" * 10, 4))
    assert writer.write(Message(AUDIO, 1, 23, b"b" * 10, 4))[0] >> 6 == 2      # only the time moved
    assert writer.write(Message(AUDIO, 1, 46, b"b" * 11, 4))[0] >> 6 == 1      # new length
    assert writer.write(Message(AUDIO, 2, 46, b"b" * 11, 4))[0] >> 6 == 0      # new stream
    assert writer.write(Message(AUDIO, 2, 10, b"b" * 11, 4))[0] >> 6 == 0      # time went back
    plain = ChunkWriter(compress_headers=False)
    plain.write(Message(AUDIO, 1, 0, b"a", 4))
    assert plain.write(Message(AUDIO, 1, 1, b"a", 4))[0] >> 6 == 0


def test_writer_refuses_what_rtmp_cannot_carry():
    writer = ChunkWriter()
    for message in (Message(AUDIO, 1, 0, b"", 1), Message(AUDIO, 1, 0, b"", 65600),
                    Message(AUDIO, 1, 1 << 32, b"", 4), Message(256, 1, 0, b"", 4)):
        with pytest.raises(ValueError):
            writer.write(message)
    with pytest.raises(TypeError):
        control_message("not a control value")


message_strategy = st.builds(
    Message,
    type_id=st.sampled_from([AUDIO, VIDEO, DATA_AMF0, COMMAND_AMF0, 15, 17, 22]),
    stream_id=st.sampled_from([0, 1, 2, 0xFFFFFFFF]),
    timestamp=st.one_of(st.integers(0, 100000), st.integers(0xFFFFF0, 0x1000010),
                        st.integers(0, 0xFFFFFFFF)),
    payload=st.binary(max_size=700),
    chunk_stream_id=st.sampled_from([3, 4, 5, 63, 64, 319, 320, 65599]),
)


@settings(max_examples=300)
@given(st.lists(st.one_of(message_strategy,
                          st.builds(SetChunkSize, st.integers(1, 1000)),
                          st.builds(StreamBegin, st.integers(0, 0xFFFFFFFF)),
                          st.builds(PingResponse, st.integers(0, 0xFFFFFFFF)),
                          st.builds(SetBufferLength, st.integers(0, 9), st.integers(0, 99999))),
                max_size=25),
       st.integers(1, 1000), st.booleans(), st.integers(1, 997))
def test_writer_to_reader_round_trip(items, first_chunk_size, compress, piece):
    writer = ChunkWriter(compress_headers=compress)
    wire = writer.write(SetChunkSize(first_chunk_size)) + writer.write_all(items)
    reader = ChunkReader()
    events = []
    for start in range(0, len(wire), piece):
        events += reader.receive(wire[start:start + piece])
    assert events == [SetChunkSize(first_chunk_size)] + list(items)
    assert reader.chunk_size == writer.chunk_size
    assert reader.reassembly_bytes == 0
