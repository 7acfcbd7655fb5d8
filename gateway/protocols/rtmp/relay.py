# implements the live relay of RTMP spec 1.0 §7.2.2.6 (publish) and §7.2.2.1 (play) as FMS,
#   rtmplite and node-media-server do it: one publisher per stream name, any number of
#   players, sequence headers (FLV spec 10.1 E.4.2.1 AACPacketType 0, E.4.3.1 AVCPacketType
#   0) and onMetaData kept for players who join late
"""Live streams of a session: who publishes, who plays, what a late joiner needs first.

A :class:`LiveStream` is keyed by (session, stream name). Its publisher's
audio, video and data messages become :class:`Frame` values, each encoded
into chunks once and written to every player (:meth:`Frame.chunks`); a
player that joins late first gets the cached onMetaData and the AAC/AVC
sequence headers, then frames from the next video key frame (any audio
frame for an audio-only stream). A stream exists while it has a publisher
or a player; its players outlive the publisher and hear the next one.

:class:`PlayerQueue` is one player's bound: what waits while its socket is
full. Over the bound, whole frames are dropped, video before audio (a late
key frame restarts video); a player that stays behind longer than allowed
is to be disconnected. Everything counts what it dropped.

Sans-IO: no sockets, no clock (``now`` is passed in).
"""

import collections

from gateway.protocols.rtmp import amf0
from gateway.protocols.rtmp.chunks import AUDIO, DATA_AMF0, VIDEO, ChunkWriter, Message

AUDIO_CHUNK_STREAM = 6
VIDEO_CHUNK_STREAM = 7
DATA_CHUNK_STREAM = 5
RELAY_CHUNK_SIZE = 4096         # every connection's outgoing chunk size, set at connect

_AAC = 10                       # FLV SoundFormat
_AVC_CODECS = (7, 12)           # FLV CodecID: AVC, HEVC (enhanced RTMP's legacy id)
_KEY_FRAME = 1                  # FLV FrameType

_CHUNK_STREAMS = {AUDIO: AUDIO_CHUNK_STREAM, VIDEO: VIDEO_CHUNK_STREAM,
                  DATA_AMF0: DATA_CHUNK_STREAM}
_HEADER_WRITER = ChunkWriter(RELAY_CHUNK_SIZE, compress_headers=False)


class Frame:
    """One audio, video or data message of a live stream, as every player gets it.

    ``chunks(stream_id)`` is the message in chunks for a player whose play
    stream has that message stream id; it is built once per id and shared,
    since every chunk has a full (type 0) header and so does not depend on
    what a player was sent before.
    """

    __slots__ = ("type_id", "timestamp", "payload", "key", "sequence_header", "_encoded")

    def __init__(self, type_id, timestamp, payload, key=False, sequence_header=False):
        self.type_id = type_id
        self.timestamp = timestamp
        self.payload = payload
        self.key = key
        self.sequence_header = sequence_header
        self._encoded = {}

    @property
    def size(self):
        return len(self.payload)

    def chunks(self, stream_id):
        chunked = self._encoded.get(stream_id)
        if chunked is None:
            chunked = self._encoded[stream_id] = _HEADER_WRITER.write(Message(
                self.type_id, stream_id, self.timestamp, self.payload,
                _CHUNK_STREAMS[self.type_id]))
        return chunked

    def flv_tag(self):
        """The frame as an FLV tag with its PreviousTagSize (FLV spec E.4.1, E.3)."""
        tag = self._encoded.get("flv")
        if tag is None:
            tag = self._encoded["flv"] = flv_tag(self.type_id, self.timestamp, self.payload)
        return tag

    def encoded(self, key, build):
        """``build(self)``, made once per frame for every player that shares ``key``."""
        value = self._encoded.get(key)
        if value is None:
            value = self._encoded[key] = build(self)
        return value

    def at(self, timestamp):
        """This frame with another timestamp (a cached header sent to a late joiner)."""
        return Frame(self.type_id, timestamp, self.payload, self.key, self.sequence_header)


def flv_header(has_video):
    """An FLV file header (FLV spec E.2) and the first PreviousTagSize0."""
    return b"FLV\x01" + bytes((0x05 if has_video else 0x04,)) + b"\x00\x00\x00\x09" + bytes(4)


def flv_tag(type_id, timestamp, payload):
    size = len(payload)
    # TimestampExtended is the top octet, after the lower three; StreamID is always 0.
    header = (bytes((type_id,)) + size.to_bytes(3, "big")
              + (timestamp & 0xFFFFFF).to_bytes(3, "big")
              + bytes(((timestamp >> 24) & 0xFF, 0, 0, 0)))
    return header + payload + (size + 11).to_bytes(4, "big")


def classify(type_id, timestamp, payload):
    """The :class:`Frame` of a publisher's audio or video message."""
    if type_id == AUDIO:
        header = len(payload) >= 2 and payload[0] >> 4 == _AAC and payload[1] == 0
        return Frame(AUDIO, timestamp, payload, key=True, sequence_header=header)
    first = payload[0] if payload else 0
    codec = first & 0x0F
    header = codec in _AVC_CODECS and len(payload) >= 2 and payload[1] == 0
    return Frame(VIDEO, timestamp, payload, key=first >> 4 == _KEY_FRAME,
                 sequence_header=header)


def data_frame(timestamp, values):
    """The :class:`Frame` of a data message (its values without @setDataFrame)."""
    return Frame(DATA_AMF0, timestamp, amf0.encode(*values))


class LiveStream:
    """One stream name in one session: its publisher, players and what late joiners need."""

    __slots__ = ("session", "name", "publisher", "players", "metadata", "audio_header",
                 "video_header", "timestamp", "frames_in", "bytes_in", "has_video")

    def __init__(self, session, name):
        self.session = session
        self.name = name
        self.publisher = None
        self.players = {}           # player -> True once it is sent frames (not just headers)
        self.metadata = None        # Frame of ['onMetaData', {...}]
        self.audio_header = None
        self.video_header = None
        self.timestamp = 0          # of the publisher's last frame
        self.frames_in = 0
        self.bytes_in = 0
        self.has_video = False

    def start_frames(self):
        """What a player that starts now is sent first, stamped with the current time."""
        return [frame.at(self.timestamp) for frame in
                (self.metadata, self.audio_header, self.video_header) if frame is not None]

    def accept(self, frame):
        """Take in a publisher's frame: cache it if late joiners need it; return it."""
        self.frames_in += 1
        self.bytes_in += frame.size
        self.timestamp = frame.timestamp
        if frame.type_id == VIDEO:
            self.has_video = True
            if frame.sequence_header:
                self.video_header = frame
        elif frame.type_id == AUDIO and frame.sequence_header:
            self.audio_header = frame
        return frame

    def set_metadata(self, frame):
        self.metadata = frame
        self.frames_in += 1
        self.bytes_in += frame.size

    def forget_publisher(self):
        """The publisher left: a new one brings its own headers."""
        self.publisher = None
        self.metadata = self.audio_header = self.video_header = None
        self.has_video = False

    def waits_for_key_frame(self, player, frame):
        """True while ``player`` must skip ``frame`` to start at a key frame.

        A player starts with the first key video frame, or the first audio frame
        of a stream without video; until then only sequence headers reach it.
        """
        if self.players.get(player):
            return False
        if frame.sequence_header or frame.type_id == DATA_AMF0:
            return False
        if frame.type_id == VIDEO and frame.key or not self.has_video:
            self.players[player] = True
            return False
        return True

    def describe(self):
        return {"session": self.session, "stream": self.name,
                "publishing": self.publisher is not None, "players": len(self.players),
                "frames_in": self.frames_in, "bytes_in": self.bytes_in,
                "audio_header": self.audio_header is not None,
                "video_header": self.video_header is not None,
                "metadata": self.metadata is not None}


class LiveStreams:
    """Every live stream of the door, by (session, name)."""

    def __init__(self):
        self._streams = {}

    def get(self, session, name):
        return self._streams.get((session, name))

    def _stream(self, session, name):
        stream = self._streams.get((session, name))
        if stream is None:
            stream = self._streams[(session, name)] = LiveStream(session, name)
        return stream

    def publish(self, session, name, publisher):
        """The stream ``publisher`` now publishes, or None if another one does."""
        stream = self._stream(session, name)
        if stream.publisher is not None and stream.publisher is not publisher:
            self._discard_if_idle(stream)
            return None
        stream.publisher = publisher
        return stream

    def unpublish(self, stream, publisher):
        if stream.publisher is publisher:
            stream.forget_publisher()
        self._discard_if_idle(stream)

    def play(self, session, name, player):
        stream = self._stream(session, name)
        stream.players[player] = False
        return stream

    def stop(self, stream, player):
        stream.players.pop(player, None)
        self._discard_if_idle(stream)

    def _discard_if_idle(self, stream):
        if stream.publisher is None and not stream.players:
            self._streams.pop((stream.session, stream.name), None)

    def __iter__(self):
        return iter(list(self._streams.values()))

    def __len__(self):
        return len(self._streams)


class PlayerQueue:
    """What waits for one player while its socket cannot take more.

    The adapter writes straight through while the socket takes data
    (``paused`` False); while paused, :meth:`offer` queues frames up to
    ``max_bytes``. Over that, the incoming video frame is dropped; an
    incoming audio frame first evicts the queued video; video then waits for
    the next key frame. :meth:`behind` says whether the player has been
    paused for longer than ``max_behind_seconds``: it is to be disconnected.
    """

    __slots__ = ("max_bytes", "max_behind_seconds", "frames", "queued_bytes", "paused",
                 "paused_since", "dropped", "needs_key_frame")

    def __init__(self, max_bytes, max_behind_seconds):
        self.max_bytes = max_bytes
        self.max_behind_seconds = max_behind_seconds
        self.frames = collections.deque()    # (Frame, chunk bytes)
        self.queued_bytes = 0
        self.paused = False
        self.paused_since = None
        self.dropped = {"audio": 0, "video": 0, "data": 0}
        self.needs_key_frame = False

    def pause(self, now):
        self.paused = True
        if self.paused_since is None:
            self.paused_since = now

    def behind(self, now):
        return (self.paused_since is not None
                and now - self.paused_since > self.max_behind_seconds)

    def offer(self, frame, data):
        """Queue ``data`` (``frame`` in chunks); False if it was dropped instead."""
        if frame.type_id == VIDEO and not frame.sequence_header:
            if self.needs_key_frame and not frame.key:
                self.dropped["video"] += 1
                return False
            self.needs_key_frame = False
        if self.queued_bytes + len(data) > self.max_bytes:
            if frame.type_id == VIDEO and not frame.sequence_header:
                self.dropped["video"] += 1
                self.needs_key_frame = True
                return False
            self._evict_video()
            if self.queued_bytes + len(data) > self.max_bytes:
                self.dropped["audio" if frame.type_id == AUDIO else "data"] += 1
                return False
        self.frames.append((frame, data))
        self.queued_bytes += len(data)
        return True

    def _evict_video(self):
        kept = collections.deque()
        for frame, data in self.frames:
            if frame.type_id == VIDEO and not frame.sequence_header:
                self.dropped["video"] += 1
                self.queued_bytes -= len(data)
                self.needs_key_frame = True
            else:
                kept.append((frame, data))
        self.frames = kept

    def resume(self):
        """The socket takes data again: the queued chunk bytes, oldest first, in one piece."""
        self.paused = False
        self.paused_since = None
        data = b"".join(data for _, data in self.frames)
        self.frames.clear()
        self.queued_bytes = 0
        return data

    def clear(self):
        self.frames.clear()
        self.queued_bytes = 0
