"""SIP door, part 2: standard SIP user agents and RTP-MIDI calls (thin Twisted adapter).

Carries bytes between sockets and the sans-IO cores, and members between them
and the bus; the protocol is theirs:

* :class:`~gateway.protocols.sip.uas.UserAgentServer` (RFC 3261: transactions,
  dialogs, registrar, digest) gets every SIP message from UDP (``sip.port``,
  shared with sfront clients: :func:`~gateway.protocols.sip.sfront.speaks_sfront`
  tells their datagrams apart, see :class:`~gateway.protocols.sip.door.SipDoor`;
  or ``sip.uas.udp_port``), TCP (``sip.uas.tcp_port``) and TLS
  (``sip.uas.tls_port``), framed on streams by the core's framer;
* :mod:`~gateway.protocols.sip.midi_sdp` reads each call's SDP offer and writes
  our answer (RFC 6295 §6 parameters honoured or refused with 488 and a Warning);
* :class:`~gateway.protocols.sip.midi_call.MidiCall` runs its media (RTP-MIDI with
  the recovery journal through the RTP-MIDI media core, RTCP both ways) on a UDP
  port pair taken from ``sip.uas.media`` for the length of the call.

The bus: a digest response is a :class:`~gateway.protocols.sip.digest.DigestProof`
(the passphrase never travels). A REGISTER's is checked with ``bus.check``; an
INVITE's is checked with ``bus.check`` at once (so the core can count a wrong one
and keep its nonce counts honest) and the caller joins with ``bus.join`` when its
offer is one we answer: the answer (200) is sent when the membership arrives.
A refusal becomes the core's answer for it (403, 404, 486, 503). The caller is a
member while the call lasts; its BYE, a lost TCP or TLS connection, no ACK, a
media silence of ``sip.uas.media_timeout`` or the bus ending it (idle, kicked,
shutdown: our BYE) leave the bus, which sends everyone the note-offs of what the
caller left sounding.

Phones (audio offers without RTP-MIDI: PCMU/PCMA, telephone-event) go to
:meth:`StandardAgents.phone_offered`: :mod:`~gateway.protocols.sip.audio_sdp`
reads the offer and writes our answer, and a
:class:`~gateway.protocols.sip.audio_call.AudioCall` (the phone media core of
phone.py: DTMF digits to notes, the session's MIDI rendered to G.711) runs its
media on a port pair of ``sip.uas.media``. The caller is a member like an
RTP-MIDI caller (door ``sip``, its digest user name as its name): its keys are
published as notes, and what the session plays is rendered for its ear. One
``LoopingCall`` (:class:`FramePacer`) ticks every phone call every 20 ms on the
reactor clock, and each call's frames are due on that loop's ticks, so a frame
leaves on the tick it is due (one timer for all calls rather than one per call:
a reactor wake-up per 20 ms whatever the number of calls). Hanging up publishes
the note-offs of the keys still down before the member leaves.
"""

import collections
import random

from twisted.internet import defer, error, protocol, task
from twisted.protocols import policies
from zope.interface import implementer

from gateway.actions import Drop, PeerLeft, RoundTrip, Send
from gateway.bus.sources import ConnectionBudget
from gateway.bus.values import JoinRefused, JoinRequest
from gateway.interfaces import IMember
from gateway.protocols.rtpmidi.stream import RTP_MIDI_LIST, prepare
from gateway.protocols.sip import audio_sdp, midi_sdp
from gateway.protocols.sip.audio_call import AudioCall
from gateway.protocols.sip.midi_call import RTCP, RTP, Heard, MidiCall
from gateway.protocols.sip.phone_audio import FRAME_SECONDS, encode_many, render_many
from gateway.protocols.sip.registrar import Registrar
from gateway.protocols.sip.uas import (
    Authenticate, CallConfirmed, CallEnded, CallInfo, CallOffered, CloseConnection, Foreign,
    Limits, UserAgentServer,
)
from gateway.protocols.sip.midi_call import AwaitingAnswer

DOOR = "sip"
UDP, TCP, TLS = "UDP", "TCP", "TLS"
CONNECTION_IDLE_TIMEOUT = 900.0
"""Seconds a TCP or TLS connection may stay silent (registrations refresh well within)."""
MAX_DATAGRAM = 65535
_U32 = 0xFFFFFFFF



def carry_out_media(member, actions, door, hang_up):
    """A call's media actions: packets sent, MIDI heard published, drops counted, and
    ``hang_up(call, reason)`` when the media core gives the caller up."""
    for action in actions:
        kind = type(action)
        if kind is Send:
            member.ports.send(action.via, action.data, action.address)
        elif kind is Heard:
            if member.membership is not None:
                midi_list = action.midi_list
                member.membership.publish(action.events, None if midi_list is None
                                          else {RTP_MIDI_LIST: midi_list})
        elif kind is Drop:
            door.drop(action.source, action.reason, action.detail or "", action.count)
        elif kind is PeerLeft:
            hang_up(member.call, action.reason)
        elif kind is RoundTrip:
            if member.membership is not None:
                member.membership.report_latency(round(action.rtt * 1000.0, 2))

@implementer(IMember)
class CallMember:
    """One answered RTP-MIDI call: the bus member whose media is the call's."""

    door = DOOR

    def __init__(self, agents, call, media, ports):
        self.agents = agents
        self.call = call
        self.media = media
        self.ports = ports
        self.membership = None
        self.forgotten = False
        self._memo_key = (DOOR, "uas", getattr(media.offer, "clock_rate", None))

    def deliver(self, delivery):
        delivery = delivery.without_beat_clock()     # SIP user agents follow no clock
        if delivery is None:
            return
        agents = self.agents
        now, timestamp, packets = delivery.memo(self._memo_key, agents.prepare, delivery,
                                                self.media.offer.clock_rate)
        address = self.media.rtp_to
        for data in self.media.packets(packets, timestamp, now):
            self.ports.send(RTP, data, address)

    def roster_changed(self, notice):
        pass            # SIP has nothing to say about it

    def disconnect(self, reason):
        self.membership = None
        self.agents.hang_up(self.call, reason)

    def answer_sdp(self, host, session_id):
        return midi_sdp.answer(self.media.offer, host, self.ports.rtp_port, session_id)

    def describe(self):
        call = self.call
        info = {"transport": call.transport, "state": call.state, "player": call.player,
                "signalling": f"{call.source[0]}:{call.source[1]}",
                "media_port": self.ports.rtp_port}
        info.update(self.media.describe())
        return info


class PhoneMember(CallMember):
    """One answered phone call: its keys are the member's notes; it hears the session."""

    def __init__(self, agents, call, media, ports):
        super().__init__(agents, call, media, ports)
        self.sendto = None          # the RTP socket's own sendto, once the ports are open

    def deliver(self, delivery):
        self.media.play(delivery.events)

    def answer_sdp(self, host, session_id):
        return audio_sdp.audio_answer(self.media.offer, host, self.ports.rtp_port, session_id)


class FramePacer:
    """One ``LoopingCall`` every 20 ms that sends every phone call's due frames.

    Running only while there are phone calls. Each call's frames are due on the
    loop's ticks (:meth:`first_frame_due`), so a tick on time sends each call's
    frame on time; a late tick sends what is owed (FrameClock's catch-up). The
    frames of every call with notes sounding are rendered together
    (:func:`~gateway.protocols.sip.phone_audio.render_many`: numpy's fixed cost
    per frame paid once per tick, not once per call); silent calls send a
    silent frame, and a call catching up renders its own.
    """

    def __init__(self, agents, reactor):
        self.agents = agents
        self.reactor = reactor
        self.calls = {}             # PhoneMember -> None, in the order they began
        self.loop = task.LoopingCall(self._tick)
        self.loop.clock = reactor
        self.phase = None           # a time the loop ticks at
        self.ticks = 0

    def first_frame_due(self, now):
        """When a call beginning at ``now`` has its first frame due: the loop's next tick."""
        if self.phase is None:
            return now + FRAME_SECONDS
        elapsed = now - self.phase
        return self.phase + (int(elapsed / FRAME_SECONDS) + 1) * FRAME_SECONDS

    def add(self, member):
        if not self.loop.running:
            self.phase = self.reactor.seconds()
            self.loop.start(FRAME_SECONDS, now=False)
        self.calls[member] = None

    def remove(self, member):
        self.calls.pop(member, None)
        if not self.calls and self.loop.running:
            self.loop.stop()
            self.phase = None

    def _tick(self):
        self.ticks += 1
        now = self.reactor.seconds()
        agents = self.agents
        batch = []                  # (member, frames): one frame each, voices sounding
        for member in list(self.calls):
            media = member.media
            try:
                frames, events = media.due(now)
                if events and member.membership is not None:
                    member.membership.publish(events)
                if not frames:
                    continue
                if len(frames) == 1 and media.synthesizer.voices and media.offer.send:
                    batch.append((member, frames))
                    continue
                self._send(member, media.packets(frames))     # silence, or catching up
            except Exception:
                self._failed(member)
        if not batch:
            return
        try:
            rendered = render_many([member.media.synthesizer for member, _ in batch])
            payloads = encode_many(rendered, [member.media.offer.payload_type
                                              for member, _ in batch])
        except Exception:
            agents.door.log.failure("sip: rendering phone calls' frames together failed")
            payloads = [None] * len(batch)
        for (member, frames), payload in zip(batch, payloads):
            try:
                self._send(member, member.media.packets(frames, () if payload is None
                                                        else (payload,)))
            except Exception:
                self._failed(member)

    def _send(self, member, packets):
        sendto = member.sendto
        address = member.media.rtp_to
        try:
            for packet in packets:
                sendto(packet, address)
        except OSError as failure:        # a full socket buffer: this frame is lost
            self.agents.door.drop(address, "send_failed", failure.strerror or str(failure))

    def _failed(self, member):
        # One call's failure must not stop every call's sound.
        agents = self.agents
        agents.door.log.failure("sip: phone call {player} failed; hanging up",
                                player=member.call.player)
        self.remove(member)
        agents.hang_up(member.call, "error")


class _MediaProtocol(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, ports, via):
        self.ports = ports
        self.via = via

    def datagramReceived(self, data, addr):
        self.ports.received(data, addr, self.via)


class MediaPorts:
    """One call's RTP and RTCP sockets on the media host."""

    def __init__(self, agents, rtp_port):
        self.agents = agents
        self.rtp_port = rtp_port
        self.listening = {}
        self.member = None

    def open(self, host):
        try:
            for via, number in ((RTP, self.rtp_port), (RTCP, self.rtp_port + 1)):
                self.listening[via] = self.agents.door.listen_udp(
                    number, _MediaProtocol(self, via), host, maxPacketSize=MAX_DATAGRAM)
        except error.CannotListenError:
            self.close()
            return False
        return True

    def received(self, data, addr, via):
        if self.member is not None:
            self.agents.media_received(self.member, data, addr, via)

    def send(self, via, data, address):
        listening = self.listening.get(via)
        if listening is None:
            return
        try:
            listening.write(data, address)
        except OSError as failure:
            self.agents.door.drop(address, "send_failed", failure.strerror or str(failure))

    def close(self):
        listening, self.listening = list(self.listening.values()), {}
        return defer.gatherResults([defer.maybeDeferred(port.stopListening)
                                    for port in listening])


class MediaPortPool:
    """The even ports of ``sip.uas.media`` not in use: one RTP/RTCP pair per call."""

    def __init__(self, port_min, port_max):
        self.free = collections.deque(range(port_min + port_min % 2, port_max, 2))
        self.used = set()

    def take(self, agents, host):
        """Open the next free pair that the system lets us bind, or None."""
        for _ in range(len(self.free)):
            number = self.free.popleft()
            ports = MediaPorts(agents, number)
            if ports.open(host):
                self.used.add(number)
                return ports
            self.free.append(number)        # taken by another process: try it later
        return None

    def give_back(self, ports):
        if ports.rtp_port in self.used:
            self.used.discard(ports.rtp_port)
            self.free.append(ports.rtp_port)
        return ports.close()


class _Stream(protocol.Protocol, policies.TimeoutMixin):
    """One TCP or TLS connection from a user agent.

    It carries signalling only (calls' media go over UDP), so the bytes a
    connection may send before joining (limits.pre_join_bytes_*) bound it at
    any time: a phone sends a few kilobytes a minute.
    """

    def __init__(self, agents, transport_name):
        self.agents = agents
        self.transport_name = transport_name
        self.address = None
        self.framer = None
        self.budget = None

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.address = (peer.host, peer.port)
        self.framer = self.agents.core.new_framer()
        self.budget = ConnectionBudget(self.agents.door.limits, self.agents.now())
        self.setTimeout(CONNECTION_IDLE_TIMEOUT)
        self.agents.connection_made(self)

    def dataReceived(self, data):
        overspent = self.budget.spend(len(data), self.agents.now(), messages=0)
        if overspent is not None:
            self.agents.door.drop(self.address, overspent, self.transport_name)
            self.transport.abortConnection()
            return
        self.resetTimeout()
        self.agents.stream_received(self, data)

    def timeoutConnection(self):
        self.agents.door.drop(self.address, "connection_idle", self.transport_name)
        self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self.setTimeout(None)
        self.agents.connection_lost(self)


class _StreamFactory(protocol.Factory):
    noisy = False

    def __init__(self, agents, transport_name):
        self.agents = agents
        self.transport_name = transport_name

    def buildProtocol(self, addr):
        return _Stream(self.agents, self.transport_name)


class _Datagrams(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, agents):
        self.agents = agents

    def datagramReceived(self, data, addr):
        self.agents.datagram(data, addr)


class StandardAgents:
    """The standard-SIP half of the SIP door: its listeners, calls, media and members."""

    def __init__(self, door, config, context):
        self.door = door
        self.config = config
        self.uas = uas = config.uas
        self.context = context
        self.reactor = door.reactor
        self.bus = door.bus
        network = context.config.network
        # Listened on, and written in SIP headers and SDP (public_address, if set).
        self.host, self.address = config.host, network.advertised(config.host)
        self.media_host = config.uas_media_host
        self.media_address = network.advertised(self.media_host)
        ports = {UDP: config.uas_udp_port}
        if uas.tcp_port is not None:
            ports[TCP] = uas.tcp_port
        self.tls_options = None
        if uas.tls_port is not None:
            ports[TLS] = uas.tls_port
            # Its own certificate, else the web site's; shared, so SIGHUP reloads it.
            self.tls_options = context.tls_options() if uas.tls is None else \
                context.served_certificate(f"{DOOR}.uas.tls", uas.tls)
        self.ports = ports
        now = self.reactor.seconds()
        self.core = UserAgentServer(
            uas.realm, self.address, ports, now=now,
            limits=Limits(max_dialogs=uas.max_calls),
            registrar=Registrar(max_bindings=uas.max_registrations),
            nonce_lifetime=uas.nonce_lifetime)
        self.clock_base = now
        self.rng = random.SystemRandom()
        self.pool = MediaPortPool(uas.media.port_min, uas.media.port_max)
        self.members = {}           # Call -> CallMember (joining or joined)
        self.connections = {}       # (transport, (host, port)) -> _Stream
        self.udp = None             # the UDP IListeningPort standard agents use
        self.listeners = []         # our own listening ports (TCP, TLS, own UDP)
        self.outbound = None        # the calls we make (sip.invite, outbound.py), if any
        self._requests = {}         # INVITE transaction -> JoinRequest, until CallOffered
        self.counts = collections.Counter()     # door-level counters for /status, /metrics
        self.media_totals = collections.Counter()   # media packets of ended calls, by kind
        self.phone_totals = collections.Counter()   # frames and keys of ended phone calls
        self.phone = uas.phone
        self.keypad = uas.phone.keypad_map() if uas.phone.enabled else None
        self.pacer = FramePacer(self, self.reactor)
        self._handlers = {
            Send: self._send, Drop: self._dropped, Authenticate: self._authenticate,
            CallOffered: self._offered, CallConfirmed: self._confirmed, CallEnded: self._ended,
            CallInfo: self._info, CloseConnection: self._close_connection,
            Foreign: self._foreign}

    def carry_out(self, actions):
        handlers = self._handlers
        for action in actions:
            handlers[type(action)](action)

    def now(self):
        return self.reactor.seconds()

    # Service -------------------------------------------------------------------------

    def start(self, shared_udp):
        """Listen; ``shared_udp`` is sfront's UDP port when the two share it."""
        config, uas, reactor = self.config, self.uas, self.reactor
        if shared_udp is not None:
            self.udp = shared_udp
        else:
            self.udp = self.door.listen_udp(config.uas_udp_port, _Datagrams(self),
                                            config.host, maxPacketSize=MAX_DATAGRAM)
            self.listeners.append(self.udp)
        if uas.tcp_port is not None:
            self.listeners.append(reactor.listenTCP(
                uas.tcp_port, self.door.guard(_StreamFactory(self, TCP)), interface=config.host))
        if uas.tls_port is not None:
            self.listeners.append(reactor.listenSSL(
                uas.tls_port, self.door.guard(_StreamFactory(self, TLS)), self.tls_options,
                interface=config.host))
        self.door.log.info(
            "sip: standard user agents on {host} udp {udp}{shared}{tcp}{tls}, realm {realm!r};"
            " call media on {media} ports {first}-{last}", host=config.host,
            udp=config.uas_udp_port, shared=" (shared with sfront)" if shared_udp else "",
            tcp=f", tcp {uas.tcp_port}" if uas.tcp_port else "",
            tls=f", tls {uas.tls_port}" if uas.tls_port else "", realm=uas.realm,
            media=self.media_host, first=uas.media.port_min, last=uas.media.port_max)

    def stop(self):
        """Every call hears our BYE; connections, listeners and media ports close."""
        for member in list(self.members.values()):
            self.hang_up(member.call, "shutdown")
        stopping = [defer.maybeDeferred(port.stopListening) for port in self.listeners]
        self.listeners = []
        for stream in list(self.connections.values()):
            stream.transport.loseConnection()
        return defer.gatherResults(stopping)

    def tick(self):
        now = self.now()
        self.carry_out(self.core.timer(now))
        for member in list(self.members.values()):
            if member.membership is not None:
                self._media_actions(member, member.media.timer(now))

    # Input -----------------------------------------------------------------------------

    def datagram(self, data, addr):
        self.carry_out(self.core.receive(data, UDP, addr[:2], self.now()))

    def connection_made(self, stream):
        if len(self.connections) >= self.uas.max_connections:
            self.door.drop(stream.address, "too_many_connections", stream.transport_name)
            stream.transport.abortConnection()
            return
        self.connections[(stream.transport_name, stream.address)] = stream
        self.counts[f"connections_{stream.transport_name.lower()}"] += 1

    def stream_received(self, stream, data):
        key = (stream.transport_name, stream.address)
        if self.connections.get(key) is not stream:
            return
        self.carry_out(self.core.receive_stream(stream.framer, data, stream.transport_name,
                                                stream.address, self.now()))

    def connection_lost(self, stream):
        key = (stream.transport_name, stream.address)
        if self.connections.get(key) is stream:
            del self.connections[key]
            self.carry_out(self.core.connection_lost(stream.transport_name, stream.address,
                                                     self.now()))

    def media_received(self, member, data, addr, via):
        media = member.media
        heard = media.last_heard
        self._media_actions(member, media.receive(data, addr[:2], self.now(), via))
        if media.last_heard != heard and member.membership is not None:
            member.membership.touch()

    # The core's actions ----------------------------------------------------------------

    def _send(self, action):
        via = action.via
        if via == UDP:
            try:
                self.udp.write(action.data, action.address)
            except OSError as failure:
                self.door.drop(action.address, "send_failed", failure.strerror or str(failure))
            return
        stream = self.connections.get((via, action.address))
        if stream is None:
            self.door.drop(action.address, "no_connection", f"{via}: the connection closed")
            return
        stream.transport.write(action.data)

    def _dropped(self, action):
        self.door.drop(action.source, action.reason, action.detail or "", action.count)

    def _close_connection(self, action):
        stream = self.connections.get((action.transport, action.address))
        if stream is not None:
            stream.transport.loseConnection()

    def _foreign(self, action):
        """A message of a call we made (the core knows its Call-ID as not its own)."""
        if self.outbound is not None:
            self.outbound.received(action.message, action.transport, action.source)

    def _authenticate(self, action):
        request = JoinRequest(action.session, action.player, DOOR, action.proof, action.source)
        now = self.now()
        refusal = self.bus.check(request)   # counts a wrong digest towards the throttle
        if refusal is not None:
            self.carry_out(self.core.refused(action.ticket, refusal.reason, now))
            return
        if action.method == "INVITE":
            self._requests[action.ticket.transaction] = request
            if len(self._requests) > 4 * self.uas.max_calls:
                self._requests.pop(next(iter(self._requests)))
        self.carry_out(self.core.authenticated(action.ticket, now))

    def _offered(self, action):
        call = action.call
        request = self._requests.pop(call.invite_transaction, None)
        now = self.now()
        if request is None:             # cannot happen: authenticated() answers at once
            self.carry_out(self.core.reject(call, 500, now))
            return
        if action.offer is None:        # the caller wants our offer (RFC 3264 §5)
            self._offerless(call, request)
            return
        offer = midi_sdp.read_offer(action.offer)
        if isinstance(offer, midi_sdp.PhoneOffer):
            self.phone_offered(call, request, offer)
            return
        if isinstance(offer, midi_sdp.Refused):
            self._reject(call, offer)
            return
        ports = self.pool.take(self, self.media_host)
        if ports is None:
            self.door.drop(call.source, "no_media_ports", "every sip.uas.media port is in use")
            self.carry_out(self.core.reject(call, 503, now))
            return
        media = MidiCall(offer, self.rng.getrandbits(32), self.rng.getrandbits(16),
                         self.clock_base, now, latetime=self.config.latetime,
                         journal=self.config.journal, timeout=self.uas.media_timeout,
                         hosts=(call.source[0],), cname=f"netgateway@{self.media_address}")
        member = CallMember(self, call, media, ports)
        ports.member = member
        self.members[call] = member
        joining = self.bus.join(request, member)
        joining.addCallbacks(self._joined, self._join_refused, callbackArgs=(member, offer),
                             errbackArgs=(member,))

    def phone_offered(self, call, request, offer):
        """An audio offer without RTP-MIDI (a phone: PCMU/PCMA and telephone-event).

        The caller joins with a :class:`PhoneMember` whose :class:`AudioCall` runs
        on a media port pair; the answer (PCMU preferred, then PCMA, and
        telephone-event with the offered payload type) goes out when the
        membership arrives. With ``sip.uas.phone.enabled`` false: 488.
        """
        if not self.phone.enabled:
            self.counts["phone_offers_refused"] += 1
            self._reject(call, midi_sdp.Refused(488, 304, "audio-only calls are not served"
                                                          " here; offer rtp-midi (RFC 6295)"))
            return
        audio = audio_sdp.read_audio_offer(offer.sdp)
        if isinstance(audio, midi_sdp.Refused):
            self.counts["phone_offers_refused"] += 1
            self._reject(call, audio)
            return
        now = self.now()
        ports = self.pool.take(self, self.media_host)
        if ports is None:
            self.door.drop(call.source, "no_media_ports", "every sip.uas.media port is in use")
            self.carry_out(self.core.reject(call, 503, now))
            return
        rng = self.rng
        phone = self.phone
        media = AudioCall(audio, rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(32),
                          now, keypad=self.keypad, channel=phone.channel - 1,
                          velocity=phone.velocity, hear_keys=phone.hear_keys,
                          max_voices=phone.max_voices, timeout=self.uas.media_timeout,
                          hosts=(call.source[0],), cname=f"netgateway@{self.media_address}")
        member = PhoneMember(self, call, media, ports)
        member.sendto = ports.listening[RTP].socket.sendto
        ports.member = member
        self.members[call] = member
        joining = self.bus.join(request, member)
        joining.addCallbacks(self._joined, self._join_refused, callbackArgs=(member, audio),
                             errbackArgs=(member,))

    def _reject(self, call, refused):
        self.counts["offers_refused"] += 1
        self.carry_out(self.core.reject(call, refused.status, self.now(),
                                        headers=[("Warning", refused.warning(self.address))]))

    def _joined(self, membership, member, offer):
        call = member.call
        if self.members.get(call) is not member or call.state != "offered":
            membership.leave("left while joining")       # CANCEL, or the INVITE timed out
            return
        member.membership = membership
        answer = member.answer_sdp(self.media_address, self.rng.getrandbits(31))
        self.counts[f"calls_answered_{call.transport.lower()}"] += 1
        now = self.now()
        if isinstance(member, PhoneMember):
            self.counts[f"phone_calls_answered_{call.transport.lower()}"] += 1
            member.media.begin(self.pacer.first_frame_due(now), now)
            self.pacer.add(member)
            media = member.media.offer
            self.door.log.info(
                "sip: phone call from {player!r} ({transport}) in session {session!r}:"
                " {codec}{keys}", player=call.player, transport=call.transport,
                session=call.session,
                codec="PCMU" if media.payload_type == 0 else "PCMA",
                keys=f" + telephone-event {media.event_payload_type}"
                if media.event_payload_type is not None else ", no telephone-event (no keys)")
        self.carry_out(self.core.answer(call, answer, now))

    def _join_refused(self, failure, member):
        failure.trap(JoinRefused)           # counted and logged by the bus
        call = member.call
        if self.members.get(call) is member:
            self._forget(member, "refused")
        self.carry_out(self.core.reject(call, failure.value.reason, self.now()))

    def _confirmed(self, action):
        member = self.members.get(action.call)
        if member is not None and isinstance(member.media, AwaitingAnswer):
            self._answer_in_ack(member, action.sdp)
            return
        if member is not None and member.membership is not None:
            member.membership.touch()

    # INVITEs without an offer (RFC 3261 §13.2.1): ours in the 200, the answer in the ACK

    def _offerless(self, call, request):
        """Join the caller with media ports but no stream yet; our offer goes in the 200."""
        ports = self.pool.take(self, self.media_host)
        if ports is None:
            self.door.drop(call.source, "no_media_ports", "every sip.uas.media port is in use")
            self.carry_out(self.core.reject(call, 503, self.now()))
            return
        member = CallMember(self, call, AwaitingAnswer(self.now()), ports)
        ports.member = member
        self.members[call] = member
        joining = self.bus.join(request, member)
        joining.addCallbacks(self._joined_offerless, self._join_refused,
                             callbackArgs=(member,), errbackArgs=(member,))

    def _joined_offerless(self, membership, member):
        call = member.call
        if self.members.get(call) is not member or call.state != "offered":
            membership.leave("left while joining")       # CANCEL, or the INVITE timed out
            return
        member.membership = membership
        offer = midi_sdp.offer(self.media_address, member.ports.rtp_port, self.rng.getrandbits(31))
        self.counts[f"calls_answered_{call.transport.lower()}"] += 1
        self.counts["offers_made"] += 1
        self.carry_out(self.core.answer(call, offer, self.now()))

    def _answer_in_ack(self, member, sdp):
        """The ACK's answer to our offer: the call's media, or our BYE when it has none
        we can use (RFC 3261 §13.2.2.4 asks the caller for one; RFC 3264 §6)."""
        call = member.call
        stream = midi_sdp.read_answer(sdp)
        if isinstance(stream, midi_sdp.Refused):
            self.counts["answers_refused"] += 1
            self.door.drop(call.source, "answer_refused", stream.text)
            self.hang_up(call, "answer_refused")
            return
        now = self.now()
        member.media = MidiCall(stream, self.rng.getrandbits(32), self.rng.getrandbits(16),
                                self.clock_base, now, latetime=self.config.latetime,
                                journal=self.config.journal, timeout=self.uas.media_timeout,
                                hosts=(call.source[0],), cname=f"netgateway@{self.media_address}")
        if member.membership is not None:
            member.membership.touch()

    def _info(self, action):
        self.counts[f"in_dialog_{action.method.lower()}"] += 1
        member = self.members.get(action.call)
        if member is not None and member.membership is not None:
            member.membership.touch()

    def _ended(self, action):
        member = self.members.get(action.call)
        if member is not None:
            self._forget(member, action.reason)

    def _forget(self, member, reason):
        """The call is over: RTCP BYE, ports closed, and the member leaves the bus."""
        if member.forgotten:
            return
        member.forgotten = True
        if self.members.get(member.call) is member:
            del self.members[member.call]
        self.counts[f"calls_ended_{reason}"] += 1
        bye = member.media.close(self.now())
        if member.membership is not None:       # media flowed: note-offs, RTCP BYE
            self._media_actions(member, bye)
        self.media_totals.update(member.media.counts)
        if isinstance(member, PhoneMember):
            self.pacer.remove(member)
            self.phone_totals.update(member.media.phone_counts)
        member.ports.member = None
        self.pool.give_back(member.ports)
        membership, member.membership = member.membership, None
        if membership is not None:
            membership.leave(reason)

    # Calls -----------------------------------------------------------------------------

    def hang_up(self, call, reason):
        """The gateway ends ``call`` (the bus kicked its member, media went silent): BYE."""
        self.carry_out(self.core.hang_up(call, self.now(), reason))
        member = self.members.get(call)
        if member is not None:
            self._forget(member, reason)

    def _media_actions(self, member, actions):
        carry_out_media(member, actions, self.door, self.hang_up)

    def prepare(self, delivery, clock_rate):
        """``(now, RTP timestamp, prepared packets)`` for a delivery to our callers at one
        clock rate (once per fan-out)."""
        now = self.now()
        packets, refused = prepare(delivery.events, clock_rate,
                                   delivery.encodings.get(RTP_MIDI_LIST))
        for reason in refused:
            self.door.drop(delivery.source.name, "too_large", reason)
        return now, int((now - self.clock_base) * clock_rate) & _U32, packets

    # Status --------------------------------------------------------------------------------

    def media_counts(self):
        totals = collections.Counter(self.media_totals)
        for member in self.members.values():
            totals.update(member.media.counts)
        return totals

    def phone_counts(self):
        """Frames sent, late and skipped, and digits, of every phone call (ended or not)."""
        totals = collections.Counter(self.phone_totals)
        for member in self.members.values():
            if isinstance(member, PhoneMember):
                totals.update(member.media.phone_counts)
        return totals

    def phone_calls(self):
        return sum(1 for member in self.members.values()
                   if isinstance(member, PhoneMember) and member.membership is not None)

    def calls_by_transport(self):
        counts = collections.Counter(member.call.transport for member in self.members.values()
                                     if member.membership is not None)
        return {transport: counts.get(transport, 0) for transport in self.ports}

    def status(self):
        totals = self.core.totals()
        return {"realm": self.uas.realm, "ports": dict(self.ports),
                "udp_shared_with_sfront": self.uas.udp_port in (None, self.config.port),
                "media_host": self.media_host,
                "media_ports": [self.uas.media.port_min, self.uas.media.port_max],
                "calls": len(self.members), "calls_by_transport": self.calls_by_transport(),
                "connections": len(self.connections),
                "media_packets": dict(self.media_counts()),
                "phone_calls": self.phone_calls(), "phone": dict(self.phone_counts()),
                "core": totals, **dict(self.counts)}
