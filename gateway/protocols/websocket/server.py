"""WebSocket door server: autobahn on the gateway's twisted.web site (thin adapter).

Bytes move between autobahn and :mod:`gateway.protocols.websocket.jam`;
members move between the jam protocol and the session bus. Protocol logic
lives in ``jam``.

Back-pressure: every connection registers a push producer with its TCP
transport. While the kernel buffer is full, frames wait in a per-member
queue bounded by ``send_buffer_bytes``; past that the reader is too slow, is
disconnected and counted (``slow_reader``).

Failures: a connection autobahn fails (it closes with 1002, 1007, 1009, ...)
is counted as ``protocol_error_CODE``, an opening handshake it refuses as
``handshake_failed``, each logged through :meth:`DoorService.drop` at most
once per peer address per interval. autobahn's own per-connection warnings
(about three lines for every broken connection, which a flood of garbage
turns into megabytes a minute) are silenced instead: its errors still show.
"""

import collections
import itertools
import urllib.parse

import txaio
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer, task
from zope.interface import implementer

from gateway.bus.sources import ConnectionBudget
from gateway.bus.values import JoinRefused, JoinRequest, Passphrase, TempoChange, unused_name
from gateway.doorservice import DoorService
from gateway.interfaces import IMember
from gateway.midi import MidiEvent
from gateway.protocols.websocket import jam
from gateway.recording import Recording

DOOR = "websocket"
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_IDLE = 4001
CLOSE_KICKED = 4002
_CLOSE_CODES = {"shutdown": CLOSE_GOING_AWAY, "idle": CLOSE_IDLE}


def _frames(factory, events, source, mode):
    encode = jam.encode_midi_binary if mode == jam.MIDI_BINARY else jam.encode_midi_json
    return [factory.prepareMessage(payload, isBinary=binary)
            for payload, binary in encode(events, source)]


@implementer(IMember)
class JamServerProtocol(WebSocketServerProtocol):
    """One browser or app connected over WebSocket."""

    door = DOOR
    # Replaces autobahn's logger for these connections: its warnings and
    # infos are each about one peer's broken connection, which the door counts
    # and logs itself, bounded (_count_failure); errors are autobahn's or ours.
    log = txaio.make_logger(level="error")

    def __init__(self):
        super().__init__()
        self.name = jam.DEFAULT_NAME
        self._handshake_failure = None
        self.membership = None
        self._joining = None
        self.midi_mode = jam.MIDI_JSON
        self.rtt_ms = None
        self._paused = False
        self._queue = collections.deque()
        self._queued_bytes = 0
        self._pings = {}
        self._budget = None
        self._recording = None
        self._tempo = None          # the session's TempoState as last heard, for recordings

    # autobahn callbacks -------------------------------------------------
    def onOpen(self):
        # autobahn's own attempt to set TCP_NODELAY happens too early to work
        # (shared/performance.md): do it here, or latency is ~40 ms.
        self.transport.setTcpNoDelay(True)
        # The HTTPChannel that carried the upgrade request is still the
        # transport's producer; it is done, and this connection takes over.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)
        door = self.factory.door
        door.connections.add(self)
        self._budget = ConnectionBudget(door.limits, door.reactor.seconds())

    def onMessage(self, payload, isBinary):
        door = self.factory.door
        if self.membership is None and self._over_budget(len(payload)):
            return
        request = jam.parse_binary(payload) if isBinary else jam.parse_text(payload)
        if self.membership is not None:
            self.membership.touch()
        if isinstance(request, jam.Midi):
            if self.membership is None:
                self._send_error("not_joined", "join a session before sending MIDI")
                return
            now = door.reactor.seconds()
            self.membership.publish([MidiEvent(data, now) for data in request.messages])
            if self._recording is not None:
                for data in request.messages:
                    self._recording.add(now, self.name, data)
        elif isinstance(request, jam.Pong):
            self._pong(request)
        elif isinstance(request, jam.Ping):
            self._send(jam.encode_pong(request, door.reactor.seconds()))
        elif isinstance(request, jam.Join):
            self._join(request)
        elif isinstance(request, jam.Tempo):
            self._change_tempo(request)
        elif isinstance(request, jam.Leave):
            self._leave("left")
            self.sendClose(CLOSE_NORMAL)
        elif isinstance(request, jam.Record):
            self._record(request.start)
        else:
            door.drop(self._peer_host(), "bad_request", request.message)
            self._send_error("bad_request", request.message)

    def failHandshake(self, reason, code=400, responseHeaders=None):
        self._handshake_failure = reason
        super().failHandshake(reason, code, responseHeaders)

    def onClose(self, wasClean, code, reason):
        self._count_failure()
        self.factory.door.connection_closed(self)
        # A pending join is not cancelled: a bus cannot always take it back, and
        # _joined leaves a membership that arrives after the connection closed.
        self._leave("disconnected" if wasClean else "connection lost")
        self._queue.clear()

    # IPushProducer -------------------------------------------------------
    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        while self._queue and not self._paused:
            frame = self._queue.popleft()
            self._queued_bytes -= len(frame.payload)
            self.sendPreparedMessage(frame)

    def stopProducing(self):
        self._queue.clear()

    # IMember -------------------------------------------------------------
    def deliver(self, delivery):
        # A session clock is no player: its 48 clocks a second would only be left out.
        recorded = None if self._recording is None else delivery.without_beat_clock()
        if recorded is not None:
            now, player = self.factory.door.reactor.seconds(), delivery.source.name
            for event in recorded.events:
                self._recording.add(now, player, event.data)
        if delivery.tempo is not None:
            self._tempo = delivery.tempo
            if self._recording is not None:
                self._recording.set_tempo(self.factory.door.reactor.seconds(), delivery.tempo.bpm)
            self._send_prepared(delivery.memo((DOOR, "tempo"), self._tempo_frame, delivery.tempo))
            if not delivery.events:
                return      # a new bpm alone: no MIDI, and no empty binary frame
        mode = self.midi_mode
        frames = delivery.memo((DOOR, mode), _frames, self.factory, delivery.events,
                               delivery.source, mode)
        for frame in frames:
            self._send_prepared(frame)

    def roster_changed(self, notice):
        self._send(jam.encode_members(notice))

    def disconnect(self, reason):
        self.membership = None
        self.close_with(_CLOSE_CODES.get(reason, CLOSE_KICKED), reason)

    def close_with(self, code, reason):
        # sendClose() refuses 1001 (going away) from applications; the frame
        # method underneath takes any valid code.
        self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:120], isReply=False)

    def describe(self):
        return {"peer": self.peer}

    # ---------------------------------------------------------------------
    def _peer_host(self):
        """The peer's address without its port: what a flood from one host repeats."""
        return self.transport.getPeer().host

    def _count_failure(self):
        """Count (and log, bounded) the handshake or protocol failure that ended this
        connection, if one did: once per connection, however often autobahn failed it."""
        door = self.factory.door
        if self._handshake_failure is not None:
            door.drop(self._peer_host(), "handshake_failed", self._handshake_failure)
        elif self.failedByMe:
            detail = (self.localCloseReason or b"").decode("utf-8", "replace")
            door.drop(self._peer_host(), f"protocol_error_{self.localCloseCode}", detail)

    def _over_budget(self, size):
        """Spend from what a connection may send before it joins; close it when spent."""
        overspent = self._budget.spend(size, self.factory.door.reactor.seconds())
        if overspent is None:
            return False
        self.factory.door.drop(self._peer_host(), overspent, "closed before joining")
        self.close_with(CLOSE_POLICY_VIOLATION, "too much sent before joining")
        self.dropConnection(abort=False)
        return True

    def _join(self, request):
        door = self.factory.door
        if self.membership is not None or self._joining is not None:
            self._send_error("already_joined", "leave the current session first")
            return
        name = request.name
        if name == jam.DEFAULT_NAME:
            # A program that sends no name: the second of them is numbered, not refused.
            name = unused_name(name, door.bus.session_view(request.session))
        self.name = name
        self.midi_mode = request.midi_mode
        joining = self._joining = door.bus.join(
            JoinRequest(request.session, name, DOOR, Passphrase(request.passphrase),
                        self.transport.getPeer().host), self)
        joining.addCallbacks(self._joined, self._refused)
        joining.addErrback(lambda failure: door.log.failure("websocket: join failed", failure))

    def _joined(self, membership):
        self._joining = None
        if self.state != self.STATE_OPEN:
            membership.leave("disconnected while joining")
            return
        self.membership = membership
        self._tempo = membership.welcome.tempo
        self._send(jam.encode_joined(membership.welcome, self.factory.door.reactor.seconds()))

    def _tempo_frame(self, state):
        return self.factory.prepareMessage(
            jam.encode_tempo(state, self.factory.door.reactor.seconds()), isBinary=False)

    def _change_tempo(self, request):
        if self.membership is None:
            self._send_error("not_joined", "join a session before changing its tempo")
            return
        refusal = self.membership.change_tempo(TempoChange(
            request.control_passphrase, request.bpm, request.transport, self._peer_host(),
            request.position))
        if refusal is not None:
            self._send_error(refusal.reason, refusal.message)

    def _refused(self, failure):
        self._joining = None
        failure.trap(JoinRefused)
        self._send_error(failure.value.reason, failure.value.message)

    def _record(self, start):
        """Start a recording of what this member hears and plays, or stop it and say where
        to download it (the URL's token is this member's alone)."""
        door = self.factory.door
        if self.membership is None:
            self._send_error("not_joined", "join a session before recording it")
            return
        now = door.reactor.seconds()
        if start:
            if self._recording is None:
                tempo = {} if self._tempo is None else {
                    "bpm": self._tempo.bpm, "beats_per_bar": self._tempo.beats_per_bar}
                self._recording = Recording(self.membership.welcome.session, now, **tempo)
            self._send(jam.encode_recording(self._recording))
            return
        recording, self._recording = self._recording, None
        if recording is None:
            self._send_error("not_recording", "no recording to stop")
            return
        token = door.recordings.keep(recording, now)
        self._send(jam.encode_recording(recording, recording_url(recording.session, token)))

    def _leave(self, reason):
        self._recording = None
        membership, self.membership = self.membership, None
        if membership is not None:
            membership.leave(reason)

    def send_ping(self, ping_id, now):
        self._pings[ping_id] = now
        if len(self._pings) > 8:     # unanswered pings are forgotten, not hoarded
            del self._pings[min(self._pings)]
        self._send(jam.encode_ping(ping_id, now))

    def _pong(self, pong):
        sent = self._pings.pop(pong.id, None) if isinstance(pong.id, int) else None
        if sent is None:
            return
        self.rtt_ms = round((self.factory.door.reactor.seconds() - sent) * 1000.0, 2)
        if self.membership is not None:
            self.membership.report_latency(self.rtt_ms)

    def _send_error(self, code, message):
        self._send(jam.encode_error(code, message))

    def _send(self, payload):
        self._send_prepared(self.factory.prepareMessage(payload, isBinary=False))

    def _send_prepared(self, frame):
        if self.state != self.STATE_OPEN:
            return
        if not self._paused:
            self.sendPreparedMessage(frame)
            return
        self._queue.append(frame)
        self._queued_bytes += len(frame.payload)
        if self._queued_bytes > self.factory.door.config.send_buffer_bytes:
            self.factory.door.drop(self._peer_host(), "slow_reader",
                                   f"more than {self._queued_bytes} bytes queued")
            self._queue.clear()
            self._queued_bytes = 0
            self._leave("too slow")
            self.dropConnection(abort=True)


def recording_url(session, token):
    """Where a stopped recording is downloaded (gateway.web.site serves it)."""
    return f"/sessions/{urllib.parse.quote(session, safe='')}/recording.mid?token={token}"


class JamServerFactory(WebSocketServerFactory):
    protocol = JamServerProtocol

    def __init__(self, door):
        super().__init__()
        self.door = door
        limit = door.config.max_message_bytes
        # Past these limits autobahn closes with 1009 (message too big); without
        # failByDrop=False it would drop the TCP connection and peers see 1006.
        # webStatus=False: a request without Upgrade is a failed handshake (426),
        # not autobahn's status page with its version.
        self.setProtocolOptions(maxMessagePayloadSize=limit, maxFramePayloadSize=limit,
                                failByDrop=False, autoPingInterval=0, webStatus=False,
                                openHandshakeTimeout=10,
                                closeHandshakeTimeout=2)


class WebSocketDoor(DoorService):
    """Mounts the WebSocket endpoint on the web site; pings members for latency."""

    name = DOOR

    def __init__(self, config, context):
        super().__init__(config, context)
        self.connections = set()
        self.recordings = context.recordings
        self._drained = None
        self.factory = JamServerFactory(self)
        self._ping_ids = itertools.count(1)
        self._pinger = task.LoopingCall(self._ping_all)
        self._pinger.clock = self.reactor
        context.web_root.putChild(config.path.strip("/").encode("ascii"),
                                  WebSocketResource(self.factory))

    def startService(self):
        super().startService()
        self._pinger.start(self.config.ping_interval, now=False)

    def stopService(self):
        """Tell every peer with a 1001 close; wait (briefly) for the close handshakes."""
        if self._pinger.running:
            self._pinger.stop()
        super().stopService()
        for connection in list(self.connections):
            connection._leave("gateway stopping")
            connection.close_with(CLOSE_GOING_AWAY, "gateway stopping")
        if not self.connections:
            return None
        self._drained = defer.Deferred()
        timeout = self.reactor.callLater(1.0, self._drained.callback, None)
        self._drained.addBoth(lambda result: timeout.active() and timeout.cancel())
        return self._drained

    def connection_closed(self, connection):
        self.connections.discard(connection)
        if not self.connections and self._drained is not None and not self._drained.called:
            self._drained.callback(None)

    def _ping_all(self):
        now = self.reactor.seconds()
        ping_id = next(self._ping_ids)
        for connection in list(self.connections):
            if connection.membership is not None:
                connection.send_ping(ping_id, now)

    def status(self):
        return {"connections": len(self.connections), "path": "/" + self.config.path.strip("/")}


def make_service(config, context):
    return WebSocketDoor(config, context)
