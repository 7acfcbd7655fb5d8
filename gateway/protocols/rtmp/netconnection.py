# implements RTMP spec 1.0 §7.2.1 (NetConnection commands: connect, call, createStream,
#   _result, _error) and §7.2.2 (NetStream commands: play, publish, deleteStream, closeStream;
#   onStatus), with the commands real encoders and players add (releaseStream, FCPublish,
#   FCUnpublish, FCSubscribe, getStreamLength, _checkbw; shared/protocols/rtmp-clients.md §1.3)
"""One RTMP connection, server side: handshake, chunk stream, commands, streams.

Sans-IO in the h11 manner: :meth:`Connection.receive` takes bytes and
``now`` and returns actions; the adapter carries them out and answers the
ones that need the rest of the gateway (the bus, the relay) with
:meth:`~Connection.joined`, :meth:`~Connection.refused`,
:meth:`~Connection.publish_started` and so on.

Which session: ``rtmp://HOST/APP/SESSION/STREAM`` (app ``APP/SESSION``, what
ffmpeg and librtmp make of a three-segment path), ``rtmp://HOST/APP/SESSION``
(app ``APP``, the playpath names the session, the stream is
``default_stream``), or ``session`` given as a connect argument. The
passphrase and player name come as connect arguments, either an object
(``-rtmp_conn "O:1 NS:passphrase:... NS:name:alice O:0"``) or plain strings
in that order (``-rtmp_conn "S:PASSPHRASE S:alice"``, ``rtmpdump -C
S:PASSPHRASE``), or as a query on the URL or stream key
(``...?passphrase=...&name=alice``, for OBS's stream key). The connection
joins the bus (:class:`Join`) as soon as it knows the session and a
passphrase: at connect, whose answer waits for the bus, or at its first
publish or play. A refusal is ``NetConnection.Connect.Rejected`` with the
bus's words as description either way (as the connect's ``_error``, or an
``onStatus`` on the stream), and then the connection closes.
"""

import os
import typing
import urllib.parse

from gateway.actions import RoundTrip
from gateway.protocols.rtmp import amf0, onmidi
from gateway.protocols.rtmp.chunks import (
    AGGREGATE, AUDIO, COMMAND_AMF0, COMMAND_AMF3, DATA_AMF0, DATA_AMF3, LIMIT_DYNAMIC, VIDEO,
    AcknowledgementDue, Acknowledgement, ChunkError, ChunkReader, ChunkWriter, Message,
    PingRequest, PingResponse, SetChunkSize, SetPeerBandwidth, StreamBegin, StreamEOF,
    WindowAckSize)
from gateway.protocols.rtmp.handshake import HandshakeDone, HandshakeError, Reply, ServerHandshake
from gateway.protocols.rtmp.relay import RELAY_CHUNK_SIZE, classify, data_frame

WINDOW_ACK_SIZE = 2_500_000         # what FMS, NMS and ffmpeg's server mode announce
OWN_DATA_CHUNK_STREAM = 4           # onMidi and |RtmpSampleAccess; the relay uses 5-7
MAX_STREAMS = 8                     # NetStreams per connection
MAX_HELD_MESSAGES = 64              # commands held while the bus decides on a join
MAX_SESSION_LENGTH = 64
LATENCY_PING_INTERVAL = 5.0         # seconds between the pings that time a member's round trip
DEFAULT_PLAYER_NAME = "rtmp player"
SERVER_INFO = {"fmsVer": "FMS/3,5,7,7009", "capabilities": 31.0, "mode": 1.0}
MIDI_STREAM_METADATA = amf0.EcmaArray(duration=0.0, description="the session's MIDI as"
                                      " onMidi data messages")

# States.
HANDSHAKE = "handshake"
CONNECTING = "connecting"           # handshake done, waiting for connect
JOINING = "joining"                 # waiting for the bus
OPEN = "open"
CLOSED = "closed"

# Stream modes.
IDLE = "idle"
PUBLISHING = "publishing"
PLAYING = "playing"


# Actions -------------------------------------------------------------------------

class Write(typing.NamedTuple):
    data: bytes


class Join(typing.NamedTuple):
    """Ask the bus to join ``name`` to ``session`` with ``passphrase``."""

    session: str
    name: str
    passphrase: str


class Publish(typing.NamedTuple):
    """Stream ``stream_id`` asks to publish ``name`` in the session."""

    stream_id: int
    name: str


class Play(typing.NamedTuple):
    stream_id: int
    name: str


class StopStream(typing.NamedTuple):
    """Stream ``stream_id`` no longer publishes or plays (the relay forgets it)."""

    stream_id: int


class Media(typing.NamedTuple):
    """A published stream's frame (audio, video or data) for its players."""

    stream_id: int
    frame: typing.Any


class Metadata(typing.NamedTuple):
    """A published stream's onMetaData (None: cleared), kept for late joiners and sent on."""

    stream_id: int
    frame: typing.Any


class PlayedMidi(typing.NamedTuple):
    """The client played these complete MIDI messages."""

    messages: list


class Alive(typing.NamedTuple):
    """Bytes came in: the peer is alive."""


class Close(typing.NamedTuple):
    """Close the connection after writing what was written; ``reason`` says why."""

    reason: str


class Dropped(typing.NamedTuple):
    reason: str
    detail: str = ""


# Helpers ---------------------------------------------------------------------

class NetStream:
    """One stream id of a connection and what it does."""

    __slots__ = ("stream_id", "mode", "name", "epoch", "last_timestamp", "midi")

    def __init__(self, stream_id):
        self.stream_id = stream_id
        self.mode = IDLE
        self.name = None
        self.epoch = 0.0            # gateway time of timestamp 0 for what we send on it
        self.last_timestamp = 0
        self.midi = False           # plays the session's MIDI stream

    def timestamp(self, when):
        timestamp = max(self.last_timestamp, int((when - self.epoch) * 1000))
        self.last_timestamp = timestamp
        return timestamp & 0xFFFFFFFF


def _status(level, code, description, **details):
    return {"level": level, "code": code, "description": description, **details}


def _query(text):
    """``(path, {key: value})`` of ``text`` split at its first '?'."""
    path, _, query = text.partition("?")
    values = {key: items[-1] for key, items in urllib.parse.parse_qs(query).items()}
    return path, values


def _clean_session(name):
    """A session name from a URL query, its whitespace collapsed, or None.

    Player names are not cleaned here: the bus's one name rule refuses bad ones.
    """
    name = " ".join(str(name).split())[:MAX_SESSION_LENGTH]
    return name or None


def split_aggregate(payload):
    """The (type, timestamp, body) sub-messages of an aggregate message (FLV tags inside).

    Raises ChunkError if the tags run past the body.
    """
    messages = []
    position = 0
    first = None
    while position + 11 <= len(payload):
        type_id = payload[position]
        size = int.from_bytes(payload[position + 1:position + 4], "big")
        timestamp = (int.from_bytes(payload[position + 4:position + 7], "big")
                     | payload[position + 7] << 24)
        body_start = position + 11
        if body_start + size + 4 > len(payload):
            raise ChunkError("an aggregate message's tag runs past its end")
        first = timestamp if first is None else first
        messages.append((type_id, timestamp, payload[body_start:body_start + size]))
        position = body_start + size + 4
    return messages


class Connection:
    """The server side of one RTMP connection (see the module docstring).

    ``app`` is the application clients connect to (``jam``), ``midi_stream``
    the stream name whose players get the session's MIDI, ``default_stream``
    the stream of a connection whose playpath named the session.
    """

    def __init__(self, app, now, *, default_stream="live", midi_stream="midi",
                 random_bytes=os.urandom, chunk_limits=None):
        self.app = app
        self.default_stream = default_stream
        self.midi_stream = midi_stream
        self.state = HANDSHAKE
        self.started = now
        self.last_input = now
        self.handshake = ServerHandshake(random_bytes)
        self.reader = ChunkReader(**(chunk_limits or {}))
        self.writer = ChunkWriter()
        self.session = None
        self.player_name = None
        self.passphrase = None
        self.client = {}            # the connect command object's flashVer, tcUrl, ...
        self.client_version = None
        self.streams = {}           # stream id -> NetStream
        self.bytes_in = 0
        self.close_reason = None
        self._connect_transaction = None
        self._held = []             # messages that arrived while JOINING
        self._after_join = None     # the publish or play that made the connection join
        self._session_in_playpath = False
        self.member_joined = False
        self._latency_ping = None   # (timestamp sent, when) of the ping awaiting its response
        self._next_latency_ping = None

    # Input -----------------------------------------------------------------------

    def receive(self, data, now):
        if self.state == CLOSED:
            return []
        self.bytes_in += len(data)
        self.last_input = now
        actions = [Alive()]
        if self.state == HANDSHAKE:
            try:
                events = self.handshake.receive(data, now)
            except HandshakeError as error:
                return actions + self._fail("bad_handshake", str(error))
            data = b""
            for event in events:
                if type(event) is Reply:
                    actions.append(Write(event.data))
                elif type(event) is HandshakeDone:
                    self.state = CONNECTING
                    self.client_version = event.client_version
                    data = event.leftover
            if not data:
                return actions
        try:
            events = self.reader.receive(data)
        except ChunkError as error:
            return actions + self._fail("bad_chunk_stream", str(error))
        for event in events:
            if self.state == CLOSED:
                break
            actions += self._event(event, now)
        return actions

    def _event(self, event, now):
        kind = type(event)
        if kind is Message:
            if self.state == JOINING:
                if len(self._held) >= MAX_HELD_MESSAGES:
                    return self._fail("too_many_messages",
                                      f"more than {MAX_HELD_MESSAGES} messages before the"
                                      " join was decided")
                self._held.append(event)
                return []
            return self._message(event, now)
        if kind is AcknowledgementDue:
            return [Write(self.writer.write(Acknowledgement(event.sequence_number)))]
        if kind is PingRequest:
            return [Write(self.writer.write(PingResponse(event.timestamp)))]
        if kind is PingResponse and self._latency_ping is not None \
                and event.timestamp == self._latency_ping[0]:
            sent = self._latency_ping[1]
            self._latency_ping = None
            return [RoundTrip(self, now - sent)]
        return []       # chunk size, window, acks, buffer length, other pongs: nobody

    def _message(self, message, now):
        type_id = message.type_id
        if type_id in (COMMAND_AMF0, COMMAND_AMF3):
            return self._command(message, now)
        if self.state != OPEN:
            return [Dropped("before_connect", f"message type {type_id} before connect")]
        if type_id in (AUDIO, VIDEO):
            stream = self.streams.get(message.stream_id)
            if stream is None or stream.mode != PUBLISHING:
                return [Dropped("not_publishing",
                                f"media on stream {message.stream_id}, which does not publish")]
            return [Media(message.stream_id, classify(type_id, message.timestamp,
                                                      message.payload))]
        if type_id in (DATA_AMF0, DATA_AMF3):
            return self._data(message)
        if type_id == AGGREGATE:
            return self._aggregate(message, now)
        return [Dropped("unknown_message", f"message type {type_id}")]

    def _aggregate(self, message, now):
        try:
            parts = split_aggregate(message.payload)
        except ChunkError as error:
            return [Dropped("bad_aggregate", str(error))]
        actions = []
        for type_id, timestamp, body in parts:
            if type_id in (AUDIO, VIDEO, DATA_AMF0):
                actions += self._message(Message(type_id, message.stream_id, timestamp, body),
                                         now)
        return actions

    @staticmethod
    def _values(message):
        payload = message.payload
        if message.type_id in (COMMAND_AMF3, DATA_AMF3) and payload[:1] == b"\x00":
            payload = payload[1:]
        return amf0.decode_all(payload)

    # Data messages ------------------------------------------------------------------

    def _data(self, message):
        try:
            values = self._values(message)
        except amf0.AmfError as error:
            return [Dropped("bad_amf", str(error))]
        if onmidi.is_on_midi(values):
            if not self.member_joined:
                return [Dropped("not_joined", "onMidi before joining a session")]
            try:
                return [PlayedMidi(onmidi.data_midi(values))]
            except onmidi.MidiDataError as error:
                return [Dropped("bad_midi", str(error))]
        stream = self.streams.get(message.stream_id)
        if stream is None or stream.mode != PUBLISHING:
            return [Dropped("not_publishing",
                            f"data on stream {message.stream_id}, which does not publish")]
        values = onmidi.strip_set_data_frame(values)
        if not values or not isinstance(values[0], str):
            return [Dropped("bad_data", "a data message without a name")]
        if values[0] == "onMetaData":
            return [Metadata(message.stream_id, data_frame(message.timestamp, values[:2]))]
        if values[0] == "@clearDataFrame":
            return [Metadata(message.stream_id, None)]
        return [Media(message.stream_id, data_frame(message.timestamp, values))]

    # Commands ----------------------------------------------------------------------

    def _command(self, message, now):
        # Before connect there is nothing to keep: a bad first command closes at once.
        refuse = self._fail if self.state == CONNECTING else (
            lambda reason, detail: [Dropped(reason, detail)])
        try:
            values = self._values(message)
        except amf0.AmfError as error:
            return refuse("bad_amf", str(error))
        if len(values) < 2 or not isinstance(values[0], str) \
                or not isinstance(values[1], (int, float)):
            return refuse("bad_command", "a command needs a name and a transaction id")
        name, transaction, arguments = values[0], values[1], values[3:]
        if self.state == CONNECTING:
            if name != "connect":
                return [Dropped("before_connect", f"{name} before connect")]
            command_object = values[2] if len(values) > 2 else None
            return self._connect(transaction, command_object, arguments, now)
        handler = self._COMMANDS.get(name)
        if handler is None:
            return self._reply_error(transaction, "NetConnection.Call.Failed",
                                     f"Method not found ({name[:40]}).")
        return handler(self, transaction, message.stream_id, arguments, now)

    def _connect(self, transaction, command_object, arguments, now):
        if not isinstance(command_object, dict):
            return self._fail("bad_command", "connect without a command object")
        self._connect_transaction = transaction
        self.client = {key: command_object.get(key) for key in
                       ("app", "flashVer", "tcUrl", "swfUrl", "objectEncoding", "type")
                       if isinstance(command_object.get(key), (str, int, float))}
        app_path, app_query = _query(str(command_object.get("app", "")))
        _, url_query = _query(str(command_object.get("tcUrl", "")))
        app, _, session = app_path.strip("/").partition("/")
        credentials = {**url_query, **app_query, **self._connect_arguments(arguments)}
        actions = [Write(self.writer.write_all((
            WindowAckSize(WINDOW_ACK_SIZE), SetPeerBandwidth(WINDOW_ACK_SIZE, LIMIT_DYNAMIC),
            SetChunkSize(RELAY_CHUNK_SIZE))))]
        if app != self.app:
            return actions + self._reject(
                f"no application {app!r} here; connect to rtmp://HOST/{self.app}/SESSION",
                "unknown_app")
        self.session = session or _clean_session(credentials.get("session", "")) or None
        self._learn(credentials)
        if self.session is not None and self.passphrase is not None:
            return actions + self._join()
        return actions + self._connected()

    @staticmethod
    def _connect_arguments(arguments):
        found, strings = {}, []
        for argument in arguments:
            if isinstance(argument, dict):
                found.update({key: value for key, value in argument.items()
                              if key in ("passphrase", "name", "session")
                              and isinstance(value, str)})
            elif isinstance(argument, str):
                strings.append(argument)
        for key, value in zip(("passphrase", "name"), strings):
            found.setdefault(key, value)
        return found

    def _learn(self, credentials):
        if credentials.get("passphrase"):
            self.passphrase = credentials["passphrase"]
        if credentials.get("name") and self.player_name is None:
            self.player_name = credentials["name"]

    def _join(self):
        self.state = JOINING
        self.player_name = self.player_name or DEFAULT_PLAYER_NAME
        return [Join(self.session, self.player_name, self.passphrase)]

    def _connected(self):
        self.state = OPEN
        if self._connect_transaction is None:
            return []
        transaction, self._connect_transaction = self._connect_transaction, None
        encoding = self.client.get("objectEncoding", 0)
        return [Write(self.writer.write_all((
            StreamBegin(0),
            self._command_message(0, "_result", transaction, SERVER_INFO, _status(
                "status", "NetConnection.Connect.Success", "Connection succeeded.",
                objectEncoding=float(encoding) if encoding in (0, 3) else 0.0)))))]

    def _reject(self, description, reason, counted=False):
        """Refuse the connect (its _error) or, after it, the stream that made us join.

        ``counted``: the bus counted it already (its refusals); the door's own are
        counted here, as a drop with ``reason``.
        """
        status = _status("error", "NetConnection.Connect.Rejected", description)
        if self._connect_transaction is not None:
            transaction, self._connect_transaction = self._connect_transaction, None
            data = self.writer.write(self._command_message(0, "_error", transaction, None,
                                                           status))
        else:
            stream_id = self._after_join[1] if self._after_join else 0
            data = self.writer.write(self._command_message(stream_id, "onStatus", 0, None,
                                                           status))
        self.state = CLOSED
        self.close_reason = reason
        dropped = [] if counted else [Dropped(reason, description)]
        return dropped + [Write(data), Close(reason)]

    # The bus's and relay's answers --------------------------------------------------

    def joined(self, now):
        """The bus admitted the connection: answer the connect, or go on with the stream."""
        if self.state != JOINING:
            return []
        self.member_joined = True
        actions = self._connected()
        after, self._after_join = self._after_join, None
        if after is not None:
            handler, stream_id, name = after
            actions += handler(self, stream_id, name, now)
        held, self._held = self._held, []
        for message in held:
            if self.state != OPEN:
                break
            actions += self._message(message, now)
        return actions

    def refused(self, description, reason):
        if self.state != JOINING:
            return []
        self._held = []
        return self._reject(description, reason, counted=True)

    def publish_started(self, stream_id, name):
        stream = self.streams.get(stream_id)
        if stream is None or self.state != OPEN:
            return []
        stream.mode, stream.name = PUBLISHING, name
        return [Write(self.writer.write(self._on_status(
            stream_id, "status", "NetStream.Publish.Start", f"{name} is now published.")))]

    def publish_refused(self, stream_id, name):
        return [Write(self.writer.write(self._on_status(
            stream_id, "error", "NetStream.Publish.BadName",
            f"stream {name!r} of session {self.session!r} already has a publisher")))]

    def play_started(self, stream_id, name, now, publishing):
        """The relay registered the player; ``publishing``: the stream has a publisher now."""
        stream = self.streams.get(stream_id)
        if stream is None or self.state != OPEN:
            return []
        stream.mode, stream.name = PLAYING, name
        stream.epoch = now
        stream.last_timestamp = 0
        stream.midi = name == self.midi_stream
        items = [StreamBegin(stream_id),
                 self._on_status(stream_id, "status", "NetStream.Play.Reset",
                                 f"Playing and resetting {name}."),
                 self._on_status(stream_id, "status", "NetStream.Play.Start",
                                 f"Started playing {name}.")]
        if not publishing and not stream.midi:
            items.append(self._on_status(stream_id, "status", "NetStream.Play.PublishNotify",
                                         f"{name} has no publisher yet; waiting."))
        items.append(Message(DATA_AMF0, stream_id, 0, amf0.encode(
            "|RtmpSampleAccess", True, True), OWN_DATA_CHUNK_STREAM))
        if stream.midi:
            # ffmpeg's player returns from opening the stream only after its first audio
            # or video message, or an onMetaData ECMA array; the MIDI stream has no media.
            items.append(Message(DATA_AMF0, stream_id, 0, amf0.encode(
                "onMetaData", MIDI_STREAM_METADATA), OWN_DATA_CHUNK_STREAM))
        return [Write(self.writer.write_all(items))]

    def publisher_changed(self, stream_id, started):
        """The stream this connection plays got a publisher, or lost it."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.mode != PLAYING:
            return b""
        if started:
            return self.writer.write(self._on_status(
                stream_id, "status", "NetStream.Play.PublishNotify",
                f"{stream.name} is now published."))
        items = [self._on_status(stream_id, "status", "NetStream.Play.UnpublishNotify",
                                 f"{stream.name} is no longer published.")]
        if not stream.midi:
            items.append(StreamEOF(stream_id))
        return self.writer.write_all(items)

    def midi_data(self, bodies):
        """Chunks of onMidi data messages for every stream playing the session's MIDI.

        ``bodies`` is a list of (time played, AMF0 body) pairs.
        """
        pieces = []
        for stream in self.streams.values():
            if stream.midi and stream.mode == PLAYING:
                for when, body in bodies:
                    pieces.append(self.writer.write(Message(
                        DATA_AMF0, stream.stream_id, stream.timestamp(when), body,
                        OWN_DATA_CHUNK_STREAM)))
        return b"".join(pieces)

    @property
    def plays_midi(self):
        return any(stream.midi and stream.mode == PLAYING for stream in self.streams.values())

    # Time ------------------------------------------------------------------------

    def timer(self, now, handshake_timeout, idle_timeout):
        """Close a connection that has not connected in time or has gone silent."""
        if self.state in (HANDSHAKE, CONNECTING) and now - self.started > handshake_timeout:
            return self._fail("handshake_timeout",
                              f"no connect within {handshake_timeout:g} s")
        if self.state == OPEN and now - self.last_input > idle_timeout:
            self.state = CLOSED
            self.close_reason = "idle"
            return [Close("idle")]
        if self.state == OPEN and now - self.last_input > idle_timeout / 3:
            return [Write(self.writer.write(PingRequest(int(now * 1000) & 0xFFFFFFFF)))]
        if self.state == OPEN and self.member_joined and (
                self._next_latency_ping is None or now >= self._next_latency_ping):
            # A ping every few seconds times the member's round trip (ffmpeg, librtmp
            # and OBS answer at once, echoing the timestamp; RTMP spec §6.2 event 6).
            self._next_latency_ping = now + LATENCY_PING_INTERVAL
            self._latency_ping = (int(now * 1000) & 0xFFFFFFFF, now)
            return [Write(self.writer.write(PingRequest(self._latency_ping[0])))]
        return []

    def close(self, reason):
        """The gateway ends the connection (bus kick, shutdown): say so, then close."""
        if self.state == CLOSED:
            return []
        self.state = CLOSED
        self.close_reason = reason
        items = [self._on_status(stream.stream_id, "status", "NetStream.Play.Stop",
                                 f"the gateway ended this connection: {reason}")
                 for stream in self.streams.values() if stream.mode == PLAYING]
        return [Write(self.writer.write_all(items)), Close(reason)] if items \
            else [Close(reason)]

    def _fail(self, reason, detail):
        self.state = CLOSED
        self.close_reason = reason
        return [Dropped(reason, detail), Close(reason)]

    # Command handlers -------------------------------------------------------------

    def _command_message(self, stream_id, name, transaction, command_object, *arguments):
        return Message(COMMAND_AMF0, stream_id, 0,
                       amf0.encode(name, float(transaction), command_object, *arguments))

    def _on_status(self, stream_id, level, code, description):
        return self._command_message(stream_id, "onStatus", 0, None,
                                     _status(level, code, description))

    def _reply(self, transaction, *values):
        if not transaction:
            return []
        return [Write(self.writer.write(self._command_message(0, "_result", transaction,
                                                              None, *values)))]

    def _reply_error(self, transaction, code, description):
        return [Write(self.writer.write(self._command_message(
            0, "_error", transaction, None, _status("error", code, description))))]

    def _create_stream(self, transaction, stream_id, arguments, now):
        if len(self.streams) >= MAX_STREAMS:
            return self._reply_error(transaction, "NetConnection.Call.Failed",
                                     f"at most {MAX_STREAMS} streams per connection")
        new_id = next(number for number in range(1, MAX_STREAMS + 1)
                      if number not in self.streams)
        self.streams[new_id] = NetStream(new_id)
        return self._reply(transaction, float(new_id)) if transaction else []

    def _stream_name(self, arguments):
        """(session, stream name) a publish or play names, learning any query it has.

        When the connect named no session, the playpath is the session and the
        stream is ``default_stream``; the first such stream fixes the session.
        """
        raw = arguments[0] if arguments and isinstance(arguments[0], str) else ""
        path, query = _query(raw)
        self._learn(query)
        path = path.strip("/")
        if self.session is None or self._session_in_playpath:
            self._session_in_playpath = True
            return _clean_session(query.get("session", "")) or path or None, self.default_stream
        return self.session, path or self.default_stream

    def _start_stream(self, handler, stream_id, arguments, now):
        stream = self.streams.get(stream_id)
        if stream is None:
            return [Dropped("bad_stream", f"no stream {stream_id}; createStream first")]
        if stream.mode != IDLE:
            return [Write(self.writer.write(self._on_status(
                stream_id, "error", "NetStream.Failed",
                f"stream {stream_id} already {stream.mode} {stream.name}")))]
        session, name = self._stream_name(arguments)
        if session is None:
            return self._reject("no session named: use rtmp://HOST/"
                                f"{self.app}/SESSION or a session connect argument",
                                "no_session")
        if self.member_joined:
            if session != self.session:
                return [Write(self.writer.write(self._on_status(
                    stream_id, "error", "NetStream.Failed",
                    f"this connection is in session {self.session!r}; one session per"
                    " connection")))]
            return handler(self, stream_id, name, now)
        if self.passphrase is None:
            self._after_join = (handler, stream_id, name)
            return self._reject(
                f"session {session!r} needs its passphrase: a connect argument"
                " (-rtmp_conn S:PASSPHRASE) or ?passphrase= on the stream", "no_passphrase")
        self.session = session
        self._after_join = (handler, stream_id, name)
        return self._join()

    def _publish(self, transaction, stream_id, arguments, now):
        return self._start_stream(Connection._ask_publish, stream_id, arguments, now)

    def _play(self, transaction, stream_id, arguments, now):
        return self._start_stream(Connection._ask_play, stream_id, arguments, now)

    def _ask_publish(self, stream_id, name, now):
        return [Publish(stream_id, name)]

    def _ask_play(self, stream_id, name, now):
        return [Play(stream_id, name)]

    def _stop(self, stream_id):
        stream = self.streams.get(stream_id)
        if stream is None or stream.mode == IDLE:
            return []
        stream.mode, stream.name, stream.midi = IDLE, None, False
        return [StopStream(stream_id)]

    def _delete_stream(self, transaction, stream_id, arguments, now):
        target = arguments[0] if arguments and isinstance(arguments[0], (int, float)) else None
        if target is None or int(target) not in self.streams:
            return []
        actions = self._stop(int(target))
        del self.streams[int(target)]
        return actions

    def _close_stream(self, transaction, stream_id, arguments, now):
        return self._stop(stream_id)

    def _fc_publish(self, transaction, stream_id, arguments, now):
        name = arguments[0] if arguments and isinstance(arguments[0], str) else ""
        return [Write(self.writer.write(self._command_message(
            0, "onFCPublish", 0, None,
            _status("status", "NetStream.Publish.Start", _query(name)[0]))))]

    def _fc_unpublish(self, transaction, stream_id, arguments, now):
        name = arguments[0] if arguments and isinstance(arguments[0], str) else ""
        actions = [Write(self.writer.write(self._command_message(
            0, "onFCUnpublish", 0, None,
            _status("status", "NetStream.Unpublish.Success", _query(name)[0]))))]
        for stream in list(self.streams.values()):
            if stream.mode == PUBLISHING:
                actions += self._stop(stream.stream_id)
        return actions + self._reply(transaction)

    def _acknowledge(self, transaction, stream_id, arguments, now):
        return self._reply(transaction)

    def _get_stream_length(self, transaction, stream_id, arguments, now):
        return self._reply(transaction, 0.0)       # live: no length

    def _check_bandwidth(self, transaction, stream_id, arguments, now):
        return self._reply(transaction)

    def _midi(self, transaction, stream_id, arguments, now):
        if not self.member_joined:
            return [Dropped("not_joined", "midi called before joining a session")]
        try:
            messages = onmidi.call_midi(arguments)
        except onmidi.MidiDataError as error:
            refused = [Dropped("bad_midi", str(error))]
            if transaction:
                refused += self._reply_error(transaction, "NetConnection.Call.BadValue",
                                             str(error))
            return refused
        return [PlayedMidi(messages)] + self._reply(transaction)

    _COMMANDS = {
        "createStream": _create_stream,
        "publish": _publish,
        "play": _play,
        "deleteStream": _delete_stream,
        "closeStream": _close_stream,
        "releaseStream": _acknowledge,
        "FCPublish": _fc_publish,
        "FCUnpublish": _fc_unpublish,
        "FCSubscribe": _acknowledge,
        "FCUnsubscribe": _acknowledge,
        "getStreamLength": _get_stream_length,
        "_checkbw": _check_bandwidth,
        onmidi.CALL_MIDI: _midi,
    }

    # Status ------------------------------------------------------------------------

    def describe(self):
        return {"state": self.state, "session": self.session, "name": self.player_name,
                "flash_version": self.client.get("flashVer"),
                "streams": {str(stream.stream_id): {"mode": stream.mode, "name": stream.name}
                            for stream in self.streams.values()},
                "bytes_in": self.bytes_in}
