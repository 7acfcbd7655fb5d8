"""RTMP door: streaming tools in sessions, and their live streams on the web (thin adapter).

Each TCP connection (``rtmp.port``; ``rtmp.tls_port`` for rtmps with the web
site's certificate) is an :class:`RtmpConnection`: bytes go to the sans-IO
:class:`~gateway.protocols.rtmp.netconnection.Connection`, whose actions are
carried out here. A connection is a bus member once it named its session
and passphrase; its onMidi is published, and the session's MIDI goes to the
streams it plays under ``rtmp.midi_stream``.

Live streams (:mod:`~gateway.protocols.rtmp.relay`) go to RTMP players and,
on the web site under ``/<http_path>/SESSION/STREAM.flv?passphrase=...``,
to HTTP-FLV and FLV-over-WebSocket listeners (:class:`LiveResource`), who
are checked like a join but are not members. Every player writes straight
through while its socket takes data; while the socket is full it queues up
to ``player_queue_bytes`` and drops whole frames past that
(:class:`~gateway.protocols.rtmp.relay.PlayerQueue`); one whose socket stays
full for ``slow_player_seconds`` is disconnected and counted.
"""

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import defer, protocol, task, tcp
from twisted.web import resource, server
from zope.interface import implementer

from gateway.actions import RoundTrip
from gateway.bus.sources import ConnectionBudget
from gateway.bus.values import THROTTLED, JoinRefused, JoinRequest, Passphrase, unused_name
from gateway.doorservice import DoorService
from gateway.interfaces import IMember
from gateway.midi import MidiEvent
from gateway.protocols.rtmp import metrics, netconnection, onmidi
from gateway.protocols.rtmp.chunks import DATA_AMF0
from gateway.protocols.rtmp.relay import Frame, LiveStreams, PlayerQueue, flv_header

DOOR = "rtmp"
TIMER_INTERVAL = 1.0
# How long a connection the door ended may take to read the door's last words and close.
CLOSE_LINGER_SECONDS = 2.0
LISTENER_NAME = "web listener"
MIDI_DATA = Frame(DATA_AMF0, 0, b"")        # what the player queue knows of onMidi chunks


def direct_writer(transport):
    """A ``write(data)`` for ``transport`` that sends at once when Twisted holds nothing.

    Twisted's ``transport.write`` buffers the bytes and registers the socket
    for writing, and the reactor sends them on its next turn and unregisters
    it: two epoll_ctl calls, an epoll event and Python bookkeeping per frame
    and player. A relay writes one small frame to each of hundreds of players
    some 43 times a second, so this sends on the socket itself whenever
    Twisted's buffer is empty, and hands Twisted whatever the socket did not
    take (keeping the order, the back-pressure and the error handling).
    bench/rtmp_fanout.py --quick (up to 200 players of a 128 kbit/s AAC
    stream, node-media-server in the same run): 30.1 us of gateway CPU per
    frame delivered through ``transport.write`` (2.77x NMS's), 12.9 us this
    way (0.94x). Plain TCP only: a TLS transport is written through Twisted.
    """
    if type(transport) is not tcp.Server:
        return lambda data: transport.write(data)
    send = transport.socket.send
    write = transport.write

    def write_now(data):
        if (transport._tempDataLen or transport.offset < len(transport.dataBuffer)
                or transport.disconnecting or not transport.connected):
            write(data)
            return
        try:
            sent = send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            write(data)     # Twisted meets the error again and closes the connection
            return
        if sent < len(data):
            write(data[sent:])
    return write_now


class _QueuedSink:
    """Writes frames to one socket, queueing within bounds while it is full (IPushProducer)."""

    queue = None
    door = None
    gone = False        # closed, or being closed: nothing more is written

    def write_frame(self, frame, data, now):
        if self.gone:
            return
        queue = self.queue
        if not queue.paused:
            self.write(data)
            return
        if queue.behind(now):
            self.gone = True
            queue.clear()
            self.door.drop(self.peer, "slow_player", f"socket full for more than"
                                                     f" {queue.max_behind_seconds:g} s")
            self.abort("too slow")
            return
        if not queue.offer(frame, data):
            self.door.drop(self.peer, "frame_dropped", "player behind")

    def pauseProducing(self):
        self.queue.pause(self.door.reactor.seconds())

    def resumeProducing(self):
        data = self.queue.resume()
        if data:
            self.write(data)

    def stopProducing(self):
        self.queue.clear()


class RtmpPlayer:
    """One playing NetStream of a connection, as a relay player."""

    __slots__ = ("connection", "stream_id")

    def __init__(self, connection, stream_id):
        self.connection = connection
        self.stream_id = stream_id

    def send_frame(self, frame, now):
        self.connection.write_frame(frame, frame.chunks(self.stream_id), now)

    def publisher_changed(self, started):
        self.connection.write(self.connection.core.publisher_changed(self.stream_id, started))

    def abort(self, reason):
        self.connection.abort(reason)


@implementer(IMember)
class RtmpConnection(_QueuedSink, protocol.Protocol):
    """One RTMP client connection; its member in the session once it joined."""

    def __init__(self, rtmp_door):
        self.door = rtmp_door
        self.core = None
        self.membership = None
        self.peer = None
        self.publishing = {}        # stream id -> LiveStream
        self.playing = {}           # stream id -> (LiveStream, RtmpPlayer)
        self.queue = PlayerQueue(rtmp_door.config.player_queue_bytes,
                                 rtmp_door.config.slow_player_seconds)
        self._linger = None
        self._pending = []          # written in this reactor turn, sent at its end
        self._budget = None         # what it may send before it joins

    # Protocol ------------------------------------------------------------------

    def connectionMade(self):
        door = self.door
        address = self.transport.getPeer()
        self.peer = f"{address.host}:{address.port}"
        self.core = netconnection.Connection(
            door.config.app, door.reactor.seconds(), default_stream=door.config.default_stream,
            midi_stream=door.config.midi_stream)
        if len(door.connections) >= door.config.max_connections:
            door.drop(self.peer, "too_many_connections",
                      f"{door.config.max_connections} connections open")
            self.transport.abortConnection()
            return
        door.connections.add(self)
        self._budget = ConnectionBudget(door.limits, door.reactor.seconds())
        self.transport.setTcpNoDelay(True)
        self.transport.registerProducer(self, True)
        self._write_now = direct_writer(self.transport)

    def dataReceived(self, data):
        now = self.door.reactor.seconds()
        if self.membership is None and not self.gone:
            overspent = self._budget.spend(len(data), now, messages=0)
            if overspent is not None:
                self.door.drop(self.peer, overspent, "closed before joining")
                self.abort(overspent)
                return
        self.carry_out(self.core.receive(data, now))

    def connectionLost(self, reason=None):
        self.gone = True
        self._pending = []
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self.door.connections.discard(self)
        self.queue.clear()
        self._stop_all()
        membership, self.membership = self.membership, None
        if membership is not None:
            membership.leave("disconnected")

    def write(self, data):
        """Send ``data`` at the end of this reactor turn, with whatever else it brings."""
        if data and not self.gone:
            if not self._pending:
                self.door.flush_later(self)
            self._pending.append(data)

    def flush(self):
        pending, self._pending = self._pending, []
        if pending and not self.transport.disconnecting:
            self._write_now(pending[0] if len(pending) == 1 else b"".join(pending))

    def abort(self, reason):
        self.gone = True
        self._pending = []
        self._leave(reason)
        self._stop_all()
        self.transport.abortConnection()

    def _stop_all(self):
        for stream_id in list(self.publishing) + list(self.playing):
            self._stop(stream_id)

    # Actions ---------------------------------------------------------------------

    def carry_out(self, actions):
        for action in actions:
            handler = self._HANDLERS[type(action)]
            handler(self, action)

    def _write(self, action):
        self.write(action.data)

    def _alive(self, action):
        if self.membership is not None:
            self.membership.touch()

    def _join(self, action):
        name = action.name
        if name == netconnection.DEFAULT_PLAYER_NAME:
            # ffmpeg and OBS send no name: the second of them is numbered, not refused.
            name = unused_name(name, self.door.bus.session_view(action.session))
        joining = self.door.bus.join(JoinRequest(action.session, name, DOOR,
                                                 Passphrase(action.passphrase),
                                                 self.transport.getPeer().host), self)
        joining.addCallbacks(self._joined, self._refused)
        joining.addErrback(lambda failure: self.door.log.failure("rtmp: join failed", failure))

    def _joined(self, membership):
        if self.gone:
            membership.leave("disconnected while joining")
            return
        self.membership = membership
        self.carry_out(self.core.joined(self.door.reactor.seconds()))

    def _refused(self, failure):
        failure.trap(JoinRefused)
        if not self.gone:
            self.carry_out(self.core.refused(failure.value.message, failure.value.reason))

    def _publish(self, action):
        core = self.core
        stream = self.door.live.publish(core.session, action.name, self)
        if stream is None:
            self.door.refused_publishers += 1
            self.carry_out(core.publish_refused(action.stream_id, action.name))
            return
        self.publishing[action.stream_id] = stream
        self.carry_out(core.publish_started(action.stream_id, action.name))
        for player in list(stream.players):
            player.publisher_changed(True)

    def _play(self, action):
        now = self.door.reactor.seconds()
        player = RtmpPlayer(self, action.stream_id)
        stream = self.door.live.play(self.core.session, action.name, player)
        self.playing[action.stream_id] = (stream, player)
        self.carry_out(self.core.play_started(action.stream_id, action.name, now,
                                              stream.publisher is not None))
        for frame in stream.start_frames():
            player.send_frame(frame, now)

    def _stop_stream(self, action):
        self._stop(action.stream_id)

    def _stop(self, stream_id):
        live = self.door.live
        stream = self.publishing.pop(stream_id, None)
        if stream is not None:
            live.unpublish(stream, self)
            for player in list(stream.players):
                player.publisher_changed(False)
        playing = self.playing.pop(stream_id, None)
        if playing is not None:
            live.stop(*playing)

    def _media(self, action):
        stream = self.publishing.get(action.stream_id)
        if stream is not None:
            self.door.relay(stream, stream.accept(action.frame))

    def _metadata(self, action):
        stream = self.publishing.get(action.stream_id)
        if stream is None:
            return
        stream.set_metadata(action.frame)
        if action.frame is not None:
            self.door.relay(stream, action.frame)

    def _played_midi(self, action):
        if self.membership is not None:
            now = self.door.reactor.seconds()
            self.membership.publish([MidiEvent(data, now) for data in action.messages])

    def _close(self, action):
        self.flush()                # the last words go before the half-close
        self.gone = True
        self._leave(action.reason)
        self._stop_all()
        # Half-close, and read (the core ignores it) until the peer closes: a full close
        # answers what the client sends meanwhile (ffmpeg acknowledges the window sizes
        # that came before a refusal) with a reset, and the client then fails on a write
        # ("Broken pipe") before it has read the refusal. rtmps has no half-close.
        lose_write = getattr(self.transport, "loseWriteConnection", None)
        if lose_write is None:
            self.transport.loseConnection()
            return
        lose_write()
        self._linger = self.door.reactor.callLater(CLOSE_LINGER_SECONDS,
                                                   self.transport.abortConnection)

    def _dropped(self, action):
        self.door.drop(self.peer, action.reason, action.detail)

    def _round_trip(self, action):
        if self.membership is not None:
            self.membership.report_latency(round(action.rtt * 1000.0, 2))

    _HANDLERS = {
        netconnection.Write: _write, netconnection.Alive: _alive, netconnection.Join: _join,
        netconnection.Publish: _publish, netconnection.Play: _play,
        netconnection.StopStream: _stop_stream, netconnection.Media: _media,
        netconnection.Metadata: _metadata, netconnection.PlayedMidi: _played_midi,
        netconnection.Close: _close, netconnection.Dropped: _dropped,
        RoundTrip: _round_trip,
    }

    def _leave(self, reason):
        membership, self.membership = self.membership, None
        if membership is not None:
            membership.leave(reason)

    # IMember -----------------------------------------------------------------------

    def deliver(self, delivery):
        if not self.core.plays_midi:
            return
        delivery = delivery.without_beat_clock()
        if delivery is None:
            return
        bodies = delivery.memo((DOOR, "onMidi"), _on_midi_bodies, delivery)
        # Through the player's queue, like media: a player that stops reading is
        # disconnected rather than held in memory.
        self.write_frame(MIDI_DATA, self.core.midi_data(bodies), self.door.reactor.seconds())

    def roster_changed(self, notice):
        pass        # RTMP has no roster message; /status lists the members

    def disconnect(self, reason):
        self.membership = None
        self.carry_out(self.core.close(reason))

    def describe(self):
        return {"peer": self.peer, **self.core.describe()}


def _on_midi_bodies(delivery):
    source = delivery.source
    return [(event.time, onmidi.encode_on_midi(event.data, source.name, source.member_id))
            for event in delivery.events]


class RtmpFactory(protocol.Factory):
    noisy = False

    def __init__(self, rtmp_door):
        self.rtmp_door = rtmp_door

    def buildProtocol(self, addr):
        return RtmpConnection(self.rtmp_door)


# The web side: HTTP-FLV and FLV over WebSocket ---------------------------------------

class _FlvListener:
    """A relay player that writes FLV tags to a web listener (HTTP body or WebSocket)."""

    __slots__ = ("sink",)

    def __init__(self, sink):
        self.sink = sink

    def send_frame(self, frame, now):
        self.sink.write_frame(frame, self.sink.encode(frame), now)

    def publisher_changed(self, started):
        if not started:
            self.sink.finish()      # the next publisher's timestamps start afresh

    def abort(self, reason):
        self.sink.abort(reason)


class HttpFlvListener(_QueuedSink):
    """One ``GET /live/SESSION/STREAM.flv``: a never-ending FLV body."""

    def __init__(self, rtmp_door, request, stream):
        self.door = rtmp_door
        self.request = request
        self.stream = stream
        address = request.getClientAddress()
        self.peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        self.queue = PlayerQueue(rtmp_door.config.player_queue_bytes,
                                 rtmp_door.config.slow_player_seconds)
        self.player = _FlvListener(self)
        self._finished = False

    def start(self):
        request = self.request
        request.setHeader(b"content-type", b"video/x-flv")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"access-control-allow-origin", b"*")
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._gone)
        self.door.web_listeners.add(self)
        stream = self.door.live.play(self.stream.session, self.stream.name, self.player)
        self.stream = stream
        self.write(flv_header(stream.has_video))
        now = self.door.reactor.seconds()
        for frame in stream.start_frames():
            self.player.send_frame(frame, now)

    @staticmethod
    def encode(frame):
        return frame.flv_tag()

    def write(self, data):
        if not self._finished:
            self.request.write(data)

    def abort(self, reason):
        self.gone = True
        self.request.transport.abortConnection()

    def finish(self):
        if not self._finished:
            self._finished = True
            self.request.unregisterProducer()
            self.request.finish()

    def _gone(self, _):
        self._finished = True
        self.door.web_listeners.discard(self)
        self.door.live.stop(self.stream, self.player)


class FlvWebSocket(_QueuedSink, WebSocketServerProtocol):
    """FLV over WebSocket: binary messages that, read in order, are one FLV stream."""

    def __init__(self):
        super().__init__()
        self.stream = None
        self.player = _FlvListener(self)
        self._open = False

    def onConnect(self, request):
        door = self.factory.rtmp_door
        self.door = door
        self.peer = request.peer
        self.queue = PlayerQueue(door.config.player_queue_bytes,
                                 door.config.slow_player_seconds)
        path = request.path.strip("/").split("/")[1:]
        status, text, stream = door.find_live(path, request.params.get("passphrase", [""])[-1],
                                              self.transport.getPeer().host)
        if stream is None:
            raise ConnectionDeny(status, text)
        self.stream = stream
        return None

    def onOpen(self):
        door = self.door
        self._open = True
        self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)
        door.web_listeners.add(self)
        self.stream = door.live.play(self.stream.session, self.stream.name, self.player)
        self.write(flv_header(self.stream.has_video))
        now = door.reactor.seconds()
        for frame in self.stream.start_frames():
            self.player.send_frame(frame, now)

    @staticmethod
    def encode(frame):
        return frame.flv_tag()

    def write(self, data):
        # mpegts.js and flv.js read the messages as one byte stream: tags may share one.
        # Once autobahn started closing, sending raises: the listener is leaving anyway.
        if self._open and data and self.state == self.STATE_OPEN:
            self.sendMessage(data, isBinary=True)

    def abort(self, reason):
        self.gone = True
        self.dropConnection(abort=True)

    def finish(self):
        if self._open:
            self.sendClose(1000, "the publisher stopped")

    def onClose(self, wasClean, code, reason):
        self._open = False
        if self.stream is not None and self.door is not None:
            self.door.web_listeners.discard(self)
            self.door.live.stop(self.stream, self.player)


class FlvWebSocketFactory(WebSocketServerFactory):
    protocol = FlvWebSocket

    def __init__(self, rtmp_door):
        super().__init__()
        self.rtmp_door = rtmp_door
        self.setProtocolOptions(autoPingInterval=10, autoPingTimeout=30,
                                openHandshakeTimeout=10, closeHandshakeTimeout=2)


class LiveResource(resource.Resource):
    """``/<http_path>/SESSION/STREAM.flv?passphrase=...``: HTTP-FLV, or FLV over WebSocket."""

    isLeaf = True

    def __init__(self, rtmp_door):
        super().__init__()
        self.rtmp_door = rtmp_door
        self.websocket = WebSocketResource(FlvWebSocketFactory(rtmp_door))

    def render(self, request):
        request.setHeader(b"access-control-allow-origin", b"*")
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade == b"websocket":
            return self.websocket.render(request)
        return super().render(request)

    def render_GET(self, request):
        door = self.rtmp_door
        path = [segment.decode("utf-8", "replace") for segment in request.postpath]
        passphrase = (request.args.get(b"passphrase") or [b""])[-1].decode("utf-8", "replace")
        status, text, stream = door.find_live(path, passphrase, request.getClientAddress().host)
        if stream is None:
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return (text + "\n").encode("utf-8")
        HttpFlvListener(door, request, stream).start()
        return server.NOT_DONE_YET


# The door -------------------------------------------------------------------------

class RtmpDoor(DoorService):
    """The RTMP (and rtmps) port, the live streams, and their web listeners."""

    name = DOOR

    def __init__(self, config, context):
        super().__init__(config, context)
        self.context = context
        self.connections = set()
        self.web_listeners = set()
        self.live = LiveStreams()
        self.refused_publishers = 0
        self.frames_relayed = 0
        self.listeners = []
        # The web site's certificate, read now so that files OpenSSL refuses stop start-up.
        self.tls_options = context.tls_options() if config.tls_port is not None else None
        self._unflushed = []
        self._timer = task.LoopingCall(self._tick)
        self._timer.clock = self.reactor
        if context.web_root is not None:
            context.web_root.putChild(config.http_path.strip("/").encode("ascii"),
                                      LiveResource(self))
        if context.metrics is not None:
            context.metrics.register(metrics.RtmpCollector(self))

    def startService(self):
        super().startService()
        config = self.config
        factory = self.guard(RtmpFactory(self))
        self.listeners.append(self.reactor.listenTCP(config.port, factory, interface=config.host))
        if config.tls_port is not None:
            self.listeners.append(self.reactor.listenSSL(
                config.tls_port, factory, self.tls_options, interface=config.host))
        self._timer.start(TIMER_INTERVAL, now=False)
        scheme = f" and rtmps://{config.host}:{config.tls_port}" if config.tls_port else ""
        self.log.info("rtmp: listening on rtmp://{host}:{port}/{app}/SESSION{tls}",
                      host=config.host, port=config.port, app=config.app, tls=scheme)

    def stopService(self):
        super().stopService()
        if self._timer.running:
            self._timer.stop()
        for connection in list(self.connections):
            connection.disconnect("gateway stopping")
        for listener in list(self.web_listeners):
            listener.finish()
        listening, self.listeners = self.listeners, []
        return defer.gatherResults([defer.maybeDeferred(port.stopListening)
                                    for port in listening])

    def _tick(self):
        now = self.reactor.seconds()
        config = self.config
        for connection in list(self.connections):
            connection.carry_out(connection.core.timer(now, config.handshake_timeout,
                                                       config.idle_timeout))

    def flush_later(self, connection):
        """Send ``connection``'s writes when this reactor turn ends.

        One send per connection per turn, not per message: a burst of MIDI (one
        onMidi per message) or a frame with its headers leaves in one segment.
        bench/rtmp_midi_fanout.py --quick measured the RTMP door at 0.25-0.54 of the
        WebSocket door's maximum with a send per message, and at 0.75-2.29 (96k and
        128k messages/s to 10 and 50 players) with this; bench/rtmp_fanout.py --quick
        stayed at 14.5 us per frame delivered (1.14x node-media-server's).
        """
        if not self._unflushed:
            self.reactor.callLater(0, self._flush)
        self._unflushed.append(connection)

    def _flush(self):
        unflushed, self._unflushed = self._unflushed, []
        for connection in unflushed:
            try:
                connection.flush()
            except Exception:
                self._failed(connection)

    def relay(self, stream, frame):
        """Send a publisher's frame to every player of its stream."""
        now = self.reactor.seconds()
        waits = stream.waits_for_key_frame
        for player in tuple(stream.players):
            if not waits(player, frame):
                try:
                    player.send_frame(frame, now)
                except Exception:
                    self._player_failed(stream, player)
        self.frames_relayed += 1

    def _player_failed(self, stream, player):
        """A player raised while it was sent a frame: it goes, and nobody else notices."""
        self.live.stop(stream, player)
        self._failed(player)

    def _failed(self, player):
        self.log.failure("rtmp: a player failed; it is disconnected")
        self.drops.count(DOOR, "player_error")
        try:
            player.abort("error")
        except Exception:
            self.log.failure("rtmp: a failed player could not be closed")

    def find_live(self, path, passphrase, source):
        """``(status, text, LiveStream)`` for a web listener's path: the stream, or why not."""
        if len(path) != 2 or not path[1].endswith(".flv") or not path[0]:
            return 404, f"expected /{self.config.http_path}/SESSION/STREAM.flv", None
        session, name = path[0], path[1][:-len(".flv")]
        refusal = self.bus.check(JoinRequest(session, LISTENER_NAME, DOOR,
                                             Passphrase(passphrase), source))
        if refusal is not None:
            return (429 if refusal.reason == THROTTLED else 403), refusal.message, None
        stream = self.live.get(session, name)
        if stream is None or stream.publisher is None:
            return 404, f"no one is publishing {name!r} in session {session!r}", None
        return 200, "", stream

    def status(self):
        config = self.config
        return {"host": config.host, "port": config.port, "tls_port": config.tls_port,
                "app": config.app, "connections": len(self.connections),
                "web_listeners": len(self.web_listeners),
                "streams": [stream.describe() for stream in self.live],
                "frames_relayed": self.frames_relayed,
                "refused_publishers": self.refused_publishers}


def make_service(config, context):
    return RtmpDoor(config, context)
