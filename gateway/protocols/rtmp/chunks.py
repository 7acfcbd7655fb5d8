"""The RTMP chunk stream: chunks in, messages out; messages in, chunks out.

# implements RTMP spec 1.0 §5.3 (chunk format: 1/2/3-octet basic headers for chunk
#   stream ids 2..65599, message header types 0-3, extended timestamp, timestamp deltas)
# implements RTMP spec 1.0 §5.4 (protocol control messages 1, 2, 3, 5, 6: Set Chunk Size,
#   Abort, Acknowledgement, Window Acknowledgement Size, Set Peer Bandwidth)
# implements RTMP spec 1.0 §6.2 and §7.1.7 (User Control messages: Stream Begin, Stream EOF,
#   Stream Dry, Set Buffer Length, Stream Is Recorded, Ping Request, Ping Response)

Written by hand because no maintained Python library has a sans-IO RTMP
chunk stream (rtmplite3 and pyrtmp tie theirs to their own sockets, see
shared/protocols/rtmp-clients.md §1.4).

Where the spec is silent or ambiguous, this follows what ffmpeg and librtmp
do on the wire, since those are the clients:

- a type 3 chunk carries the extended timestamp again when the header it
  inherits had one, on continuations too (ffmpeg, librtmp, OBS all write it);
- a type 3 chunk that starts a new message reuses the previous header's
  timestamp field as its delta, and after a type 0 header that field is the
  absolute timestamp (ffmpeg's reading; the writer here never relies on it);
- a type 0/1/2 header on a chunk stream whose message is unfinished is an
  error, not an implicit abort: no client does that, and guessing would
  splice two messages.

Everything the peer can make us hold is bounded: one message (declared
length), all partial messages together, the number of chunk streams, and the
chunk size it may set. Anything malformed raises :class:`ChunkError`, and
nothing else: the connection must then be closed, since a chunk stream has no
way to resynchronise.

Sans-IO: no sockets, no clock, no Twisted.
"""

import struct
import typing

# Message type ids (§5.4, §6.2, §7.1).
SET_CHUNK_SIZE = 1
ABORT = 2
ACKNOWLEDGEMENT = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
DATA_AMF3 = 15
SHARED_OBJECT_AMF3 = 16
COMMAND_AMF3 = 17
DATA_AMF0 = 18
SHARED_OBJECT_AMF0 = 19
COMMAND_AMF0 = 20
AGGREGATE = 22

# User Control event types (§7.1.7).
STREAM_BEGIN = 0
STREAM_EOF = 1
STREAM_DRY = 2
SET_BUFFER_LENGTH = 3
STREAM_IS_RECORDED = 4
PING_REQUEST = 6
PING_RESPONSE = 7

# Set Peer Bandwidth limit types (§5.4.5).
LIMIT_HARD = 0
LIMIT_SOFT = 1
LIMIT_DYNAMIC = 2

CONTROL_CHUNK_STREAM = 2            # §5.4: control messages go on csid 2, message stream 0
COMMAND_CHUNK_STREAM = 3
DEFAULT_CHUNK_SIZE = 128            # §5.4.1: until a Set Chunk Size says otherwise
MIN_CHUNK_STREAM_ID = 2
MAX_CHUNK_STREAM_ID = 65599         # 64 + 0xFFFF, the 3-octet basic header's reach
MAX_MESSAGE_LENGTH = 0xFFFFFF       # the 3-octet length field
MAX_SET_CHUNK_SIZE = 0x7FFFFFFF     # §5.4.1: 31 bits, the top bit must be zero

# Limits on what a peer may make us hold. Real clients set chunk sizes of
# 128..60000 (ffmpeg and OBS 4096, NMS 60000) and send command and data
# messages of a few hundred octets; a video key frame is the largest message.
DEFAULT_MAX_PEER_CHUNK_SIZE = 65536
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
DEFAULT_MAX_REASSEMBLY_BYTES = 4 << 20
DEFAULT_MAX_CHUNK_STREAMS = 64

_EXTENDED = 0xFFFFFF                # a 3-octet timestamp field saying "see the 4 octets after"
_U32_MASK = 0xFFFFFFFF
_HEADER_SIZES = (11, 7, 3, 0)

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_U16_U32 = struct.Struct(">HI")
_U16_U32_U32 = struct.Struct(">HII")
_U32_U8 = struct.Struct(">IB")
_STREAM_ID = struct.Struct("<I")     # the one little-endian field of RTMP


class ChunkError(ValueError):
    """The peer's chunk stream is malformed or exceeds a limit; close the connection."""


class Message(typing.NamedTuple):
    """One complete RTMP message.

    ``chunk_stream_id`` is where it arrived (reader) or where to send it (writer).
    """

    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes
    chunk_stream_id: int = COMMAND_CHUNK_STREAM


# Protocol control messages and User Control events, as values.

class SetChunkSize(typing.NamedTuple):
    size: int


class Abort(typing.NamedTuple):
    chunk_stream_id: int


class Acknowledgement(typing.NamedTuple):
    sequence_number: int


class WindowAckSize(typing.NamedTuple):
    size: int


class SetPeerBandwidth(typing.NamedTuple):
    size: int
    limit_type: int = LIMIT_DYNAMIC


class StreamBegin(typing.NamedTuple):
    stream_id: int


class StreamEOF(typing.NamedTuple):
    stream_id: int


class StreamDry(typing.NamedTuple):
    stream_id: int


class StreamIsRecorded(typing.NamedTuple):
    stream_id: int


class SetBufferLength(typing.NamedTuple):
    stream_id: int
    milliseconds: int


class PingRequest(typing.NamedTuple):
    timestamp: int


class PingResponse(typing.NamedTuple):
    timestamp: int


class UnknownUserControl(typing.NamedTuple):
    """A User Control event this module does not know (FMS's buffer events, SWF verification)."""

    event_type: int
    data: bytes


class AcknowledgementDue(typing.NamedTuple):
    """The peer's window has passed since our last acknowledgement: send one with this number."""

    sequence_number: int


_STREAM_EVENTS = {
    STREAM_BEGIN: StreamBegin,
    STREAM_EOF: StreamEOF,
    STREAM_DRY: StreamDry,
    STREAM_IS_RECORDED: StreamIsRecorded,
}
_TIMESTAMP_EVENTS = {PING_REQUEST: PingRequest, PING_RESPONSE: PingResponse}
_CONTROL_TYPES = frozenset(
    {SET_CHUNK_SIZE, ABORT, ACKNOWLEDGEMENT, USER_CONTROL, WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH})


def _u32(payload, what):
    if len(payload) < 4:
        raise ChunkError(f"{what} needs 4 octets, got {len(payload)}")
    return _U32.unpack_from(payload)[0]


def _checked_chunk_size(size):
    if size == 0 or size > MAX_SET_CHUNK_SIZE:
        raise ChunkError(f"Set Chunk Size {size} is outside 1..{MAX_SET_CHUNK_SIZE}")
    return size


def parse_user_control(payload):
    """A User Control message's payload (§7.1.7) as an event value."""
    if len(payload) < 2:
        raise ChunkError(f"User Control message of {len(payload)} octets has no event type")
    event_type = _U16.unpack_from(payload)[0]
    data = payload[2:]
    if event_type in _STREAM_EVENTS:
        return _STREAM_EVENTS[event_type](_u32(data, "a User Control stream event"))
    if event_type in _TIMESTAMP_EVENTS:
        return _TIMESTAMP_EVENTS[event_type](_u32(data, "a ping"))
    if event_type == SET_BUFFER_LENGTH:
        if len(data) < 8:
            raise ChunkError(f"Set Buffer Length needs 8 octets, got {len(data)}")
        return SetBufferLength(*struct.unpack_from(">II", data))
    return UnknownUserControl(event_type, bytes(data))


def parse_control(message):
    """The value of a protocol control or User Control message; None for any other type.

    Trailing octets past a field are ignored: the spec gives exact sizes, but
    a longer body loses nothing and refusing it would drop a client for it.
    """
    type_id, payload = message.type_id, message.payload
    if type_id == SET_CHUNK_SIZE:
        return SetChunkSize(_checked_chunk_size(_u32(payload, "Set Chunk Size")))
    if type_id == ABORT:
        return Abort(_u32(payload, "Abort"))
    if type_id == ACKNOWLEDGEMENT:
        return Acknowledgement(_u32(payload, "Acknowledgement"))
    if type_id == WINDOW_ACK_SIZE:
        return WindowAckSize(_u32(payload, "Window Acknowledgement Size"))
    if type_id == SET_PEER_BANDWIDTH:
        if len(payload) < 5:
            raise ChunkError(f"Set Peer Bandwidth needs 5 octets, got {len(payload)}")
        size, limit_type = _U32_U8.unpack_from(payload)
        if limit_type > LIMIT_DYNAMIC:
            raise ChunkError(f"Set Peer Bandwidth limit type {limit_type} is not 0, 1 or 2")
        return SetPeerBandwidth(size, limit_type)
    if type_id == USER_CONTROL:
        return parse_user_control(payload)
    return None


def control_message(value):
    """The :class:`Message` (csid 2, message stream 0, timestamp 0) that carries ``value``."""
    kind = type(value)
    if kind is SetChunkSize:
        type_id, payload = SET_CHUNK_SIZE, _U32.pack(_checked_chunk_size(value.size))
    elif kind is Abort:
        type_id, payload = ABORT, _U32.pack(value.chunk_stream_id)
    elif kind is Acknowledgement:
        type_id, payload = ACKNOWLEDGEMENT, _U32.pack(value.sequence_number & _U32_MASK)
    elif kind is WindowAckSize:
        type_id, payload = WINDOW_ACK_SIZE, _U32.pack(value.size)
    elif kind is SetPeerBandwidth:
        type_id, payload = SET_PEER_BANDWIDTH, _U32_U8.pack(value.size, value.limit_type)
    elif kind in (StreamBegin, StreamEOF, StreamDry, StreamIsRecorded):
        event_type = {StreamBegin: STREAM_BEGIN, StreamEOF: STREAM_EOF, StreamDry: STREAM_DRY,
                      StreamIsRecorded: STREAM_IS_RECORDED}[kind]
        type_id, payload = USER_CONTROL, _U16_U32.pack(event_type, value.stream_id)
    elif kind is SetBufferLength:
        type_id, payload = USER_CONTROL, _U16_U32_U32.pack(
            SET_BUFFER_LENGTH, value.stream_id, value.milliseconds)
    elif kind in (PingRequest, PingResponse):
        event_type = PING_REQUEST if kind is PingRequest else PING_RESPONSE
        type_id, payload = USER_CONTROL, _U16_U32.pack(event_type, value.timestamp & _U32_MASK)
    elif kind is UnknownUserControl:
        type_id, payload = USER_CONTROL, _U16.pack(value.event_type) + bytes(value.data)
    else:
        raise TypeError(f"not a control value: {value!r}")
    return Message(type_id, 0, 0, payload, CONTROL_CHUNK_STREAM)


class _InboundChunkStream:
    """What one chunk stream id remembers between chunks (§5.3.1.2)."""

    __slots__ = ("timestamp", "timestamp_field", "length", "type_id", "stream_id",
                 "extended", "parts", "remaining")

    def __init__(self):
        self.timestamp = 0
        self.timestamp_field = 0    # the last header's delta (absolute timestamp after type 0)
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.extended = False       # the last type 0/1/2 header had an extended timestamp
        self.parts = []
        self.remaining = 0          # octets still to come of the message in progress


class ChunkReader:
    """Reassembles the peer's chunks into messages.

    ``receive(data)`` returns, in order, a :class:`Message` for every
    complete message that is not protocol control, a control value
    (:class:`SetChunkSize`, :class:`WindowAckSize`, :class:`StreamBegin`, ...)
    for every control message, and, last, an :class:`AcknowledgementDue` when
    the peer's acknowledgement window has passed. Set Chunk Size, Abort and
    Window Acknowledgement Size take effect here; the others are the
    caller's to act on. Raises only :class:`ChunkError`; after one, the
    reader stays broken, and messages completed earlier in the same call are
    not returned (the connection is being closed anyway). Unparsed input held
    between calls is at most one chunk (header + chunk size octets).
    """

    def __init__(self, max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
                 max_reassembly_bytes=DEFAULT_MAX_REASSEMBLY_BYTES,
                 max_peer_chunk_size=DEFAULT_MAX_PEER_CHUNK_SIZE,
                 max_chunk_streams=DEFAULT_MAX_CHUNK_STREAMS):
        self.max_message_size = max_message_size
        self.max_reassembly_bytes = max_reassembly_bytes
        self.max_peer_chunk_size = max_peer_chunk_size
        self.max_chunk_streams = max_chunk_streams
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.bytes_received = 0
        self.ack_window = None      # set by the peer's Window Acknowledgement Size
        self._acknowledged = 0
        self._streams = {}
        self._reassembling = 0      # octets held in unfinished messages, all chunk streams
        self._buffer = bytearray()
        self._broken = None

    @property
    def reassembly_bytes(self):
        """Octets held for unfinished messages across all chunk streams."""
        return self._reassembling

    def receive(self, data):
        if self._broken is not None:
            raise ChunkError(f"the chunk stream is already broken: {self._broken}")
        self.bytes_received += len(data)
        buffer = self._buffer
        buffer += data
        events = []
        position = 0
        try:
            while True:
                after = self._read_chunk(buffer, position, events)
                if after is None:
                    break
                position = after
        except ChunkError as error:
            self._broken = str(error)
            self._buffer = bytearray()
            raise
        del buffer[:position]
        if (self.ack_window is not None
                and self.bytes_received - self._acknowledged >= self.ack_window):
            self._acknowledged = self.bytes_received
            events.append(AcknowledgementDue(self.bytes_received & _U32_MASK))
        return events

    def _read_chunk(self, buffer, position, events):
        """Read one chunk at ``position``; return where the next starts, or None if incomplete.

        Nothing is changed until the whole chunk is in the buffer, so an
        incomplete chunk is simply read again with more bytes next time.
        """
        end = len(buffer)
        if position >= end:
            return None
        first = buffer[position]
        header_type = first >> 6
        csid = first & 0x3F
        cursor = position + 1
        if csid == 0:
            if cursor + 1 > end:
                return None
            csid = 64 + buffer[cursor]
            cursor += 1
        elif csid == 1:
            if cursor + 2 > end:
                return None
            csid = 64 + buffer[cursor] + (buffer[cursor + 1] << 8)
            cursor += 2
        header_size = _HEADER_SIZES[header_type]
        if cursor + header_size > end:
            return None

        state = self._streams.get(csid)
        if state is None and header_type != 0:
            raise ChunkError(
                f"chunk stream {csid} starts with a type {header_type} header; "
                "the first must be type 0")
        in_progress = state is not None and state.remaining > 0
        if in_progress and header_type != 3:
            raise ChunkError(
                f"type {header_type} header on chunk stream {csid} before its message was complete")

        timestamp_field = length = type_id = stream_id = None
        if header_type <= 2:
            timestamp_field = int.from_bytes(buffer[cursor:cursor + 3], "big")
            if header_type <= 1:
                length = int.from_bytes(buffer[cursor + 3:cursor + 6], "big")
                type_id = buffer[cursor + 6]
                if header_type == 0:
                    stream_id = _STREAM_ID.unpack_from(buffer, cursor + 7)[0]
            extended = timestamp_field == _EXTENDED
        else:
            extended = state.extended
        cursor += header_size
        if extended:
            if cursor + 4 > end:
                return None
            extended_value = _U32.unpack_from(buffer, cursor)[0]
            cursor += 4
            if header_type <= 2:
                timestamp_field = extended_value
            elif not in_progress:
                # A type 3 header starting a message: the 4 octets repeat its delta.
                timestamp_field = extended_value

        if in_progress:
            body_size = min(self.chunk_size, state.remaining)
            if cursor + body_size > end:
                return None
        else:
            message_length = state.length if length is None else length
            if message_length > self.max_message_size:
                raise ChunkError(
                    f"message of {message_length} octets on chunk stream {csid} exceeds the "
                    f"limit of {self.max_message_size}")
            body_size = min(self.chunk_size, message_length)
            if cursor + body_size > end:
                return None
            if state is None:
                if len(self._streams) >= self.max_chunk_streams:
                    raise ChunkError(
                        f"more than {self.max_chunk_streams} chunk streams in use")
                state = self._streams[csid] = _InboundChunkStream()
            # The whole chunk is here: commit its header.
            if header_type == 0:
                state.timestamp = timestamp_field
                state.stream_id = stream_id
            else:
                if timestamp_field is None:
                    timestamp_field = state.timestamp_field
                state.timestamp = (state.timestamp + timestamp_field) & _U32_MASK
            state.timestamp_field = timestamp_field
            if length is not None:
                state.length = length
                state.type_id = type_id
            if header_type <= 2:
                state.extended = extended
            state.remaining = message_length

        if body_size:
            if self._reassembling + body_size > self.max_reassembly_bytes:
                raise ChunkError(
                    f"unfinished messages would hold more than {self.max_reassembly_bytes} octets")
            state.parts.append(bytes(buffer[cursor:cursor + body_size]))
            self._reassembling += body_size
            state.remaining -= body_size
        cursor += body_size
        if state.remaining == 0:
            payload = b"".join(state.parts)
            state.parts = []
            self._reassembling -= len(payload)
            self._complete(Message(state.type_id, state.stream_id, state.timestamp, payload, csid),
                           events)
        return cursor

    def _complete(self, message, events):
        if message.type_id not in _CONTROL_TYPES:
            events.append(message)
            return
        value = parse_control(message)
        kind = type(value)
        if kind is SetChunkSize:
            if value.size > self.max_peer_chunk_size:
                raise ChunkError(
                    f"Set Chunk Size {value.size} exceeds this server's limit of "
                    f"{self.max_peer_chunk_size}")
            self.chunk_size = value.size
        elif kind is Abort:
            aborted = self._streams.get(value.chunk_stream_id)
            if aborted is not None and aborted.remaining:
                self._reassembling -= sum(map(len, aborted.parts))
                aborted.parts = []
                aborted.remaining = 0
        elif kind is WindowAckSize:
            if value.size == 0:
                raise ChunkError("Window Acknowledgement Size 0 would ask for an ack per octet")
            self.ack_window = value.size
        events.append(value)


def _basic_header(header_type, csid):
    if csid < 64:
        return bytes(((header_type << 6) | csid,))
    if csid < 320:
        return bytes((header_type << 6, csid - 64))
    return bytes(((header_type << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8))


def _u24(value):
    return bytes(((value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF))


class ChunkWriter:
    """Splits messages into chunks at the current outgoing chunk size.

    ``write(item)`` takes a :class:`Message` or a control value (which goes
    on csid 2, stream 0) and returns the bytes to send. The first message on
    a chunk stream gets a type 0 header; later ones a type 1 (same message
    stream, new length or type) or type 2 (only the timestamp moved) when
    ``compress_headers``, else type 0; continuations are type 3. Writing a
    :class:`SetChunkSize` switches the writer to it after that message.
    """

    def __init__(self, chunk_size=DEFAULT_CHUNK_SIZE, compress_headers=True):
        self.chunk_size = _checked_chunk_size(chunk_size)
        self.compress_headers = compress_headers
        self._last = {}             # csid -> (stream_id, length, type_id, timestamp)

    def write(self, item):
        if isinstance(item, Message):
            return self._write_message(item)
        data = self._write_message(control_message(item))
        if type(item) is SetChunkSize:
            self.chunk_size = item.size
        return data

    def write_all(self, items):
        return b"".join(self.write(item) for item in items)

    def _write_message(self, message):
        type_id, stream_id, timestamp, payload, csid = message
        length = len(payload)
        if not MIN_CHUNK_STREAM_ID <= csid <= MAX_CHUNK_STREAM_ID:
            raise ValueError(f"chunk stream id {csid} is outside 2..65599")
        if length > MAX_MESSAGE_LENGTH:
            raise ValueError(f"a message of {length} octets does not fit RTMP's 24-bit length")
        if not 0 <= timestamp <= _U32_MASK or not 0 <= stream_id <= _U32_MASK:
            raise ValueError("timestamp and stream id must fit 32 bits")
        if not 0 <= type_id <= 0xFF:
            raise ValueError(f"message type {type_id} does not fit an octet")

        previous = self._last.get(csid)
        self._last[csid] = (stream_id, length, type_id, timestamp)
        if (not self.compress_headers or previous is None or previous[0] != stream_id
                or timestamp < previous[3]):
            header_type, timestamp_field = 0, timestamp
        else:
            timestamp_field = timestamp - previous[3]
            header_type = 1 if (previous[1], previous[2]) != (length, type_id) else 2

        extended = timestamp_field >= _EXTENDED
        field = _u24(_EXTENDED if extended else timestamp_field)
        if header_type == 0:
            header = field + _u24(length) + bytes((type_id,)) + _STREAM_ID.pack(stream_id)
        elif header_type == 1:
            header = field + _u24(length) + bytes((type_id,))
        else:
            header = field
        extended_field = _U32.pack(timestamp_field) if extended else b""

        pieces = [_basic_header(header_type, csid), header, extended_field]
        chunk_size = self.chunk_size
        pieces.append(payload[:chunk_size])
        if length > chunk_size:
            continuation = _basic_header(3, csid) + extended_field
            for start in range(chunk_size, length, chunk_size):
                pieces.append(continuation)
                pieces.append(payload[start:start + chunk_size])
        return b"".join(pieces)
