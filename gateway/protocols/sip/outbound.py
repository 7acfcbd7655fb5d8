"""SIP door: the calls the gateway makes itself, ``sip.invite`` (thin Twisted adapter).

Each ``sip.invite`` entry is an :class:`Invitation`: at start-up the gateway calls
its URI with an RTP-MIDI offer (:func:`~gateway.protocols.sip.midi_sdp.offer`, on
a media port pair of ``sip.uas.media``), through the sans-IO
:class:`~gateway.protocols.sip.uac.UserAgentClient` (the INVITE client
transaction, challenges answered with the entry's password, ACK, CANCEL, BYE).
When the callee answers with an rtp-midi stream
(:func:`~gateway.protocols.sip.midi_sdp.read_answer`) it becomes a member of the
entry's session (door ``sip``, the entry's ``name``), vouched for by the gateway
(a ``Verified`` credential: declared sessions only, as ``rtpmidi.invite`` does),
and its media is a :class:`~gateway.protocols.sip.midi_call.MidiCall` like a
caller's. An answer without a usable stream is ACKed and hung up (BYE).

A call that fails (a final response, no response in 64*T1, no answer within
``ring_timeout``, a refused answer, a lost connection) or ends (either side's
BYE, media silence, a kick) is made again after ``retry`` seconds, doubled by
each failure in a row up to ``retry_max``, and never sooner than the callee's
Retry-After; a call that was answered starts the count again.

Signalling shares the standard user agents' sockets
(:class:`~gateway.protocols.sip.agents.StandardAgents`): UDP leaves from, and
comes back to, the UAS port (the UAS core hands over every message whose
Call-ID is one of ours, :class:`~gateway.protocols.sip.uas.Foreign`). TCP and
TLS calls open a connection of their own to the callee (TLS verified against
``tls_ca`` or the system's roots, by IP address) and close it when the call ends.
"""

import collections

from twisted.internet import protocol, ssl

from gateway.actions import Drop, Send
from gateway.bus.values import JoinRefused, JoinRequest, Verified
from gateway.protocols.sip import midi_sdp
from gateway.protocols.sip.agents import CallMember, carry_out_media
from gateway.protocols.sip.framing import PING, Broken, StreamFramer
from gateway.protocols.sip.midi_call import MidiCall
from gateway.protocols.sip.uac import Answered, Ended, Failed, Ringing, Target, UserAgentClient

DOOR = "sip"
UDP, TCP, TLS = "UDP", "TCP", "TLS"
CONNECT_TIMEOUT = 10


class InvitedMember(CallMember):
    """The called peer of an answered invitation: a bus member whose media is the call's."""

    def __init__(self, outbound, invitation, call, media, ports):
        super().__init__(outbound, call, media, ports)
        self.invitation = invitation

    def describe(self):
        call = self.call
        host, number = call.target.address
        info = {"transport": call.transport, "state": call.state, "invited": True,
                "signalling": f"{host}:{number}", "media_port": self.ports.rtp_port}
        info.update(self.media.describe())
        return info


class Invitation:
    """One ``sip.invite`` entry: its call now, and how its attempts went."""

    def __init__(self, entry, target):
        self.entry = entry
        self.target = target
        self.name = entry.display_name
        self.state = "idle"         # connecting, calling, ringing, joining, connected, waiting
        self.call = None
        self.ports = None
        self.stream = None          # our TCP/TLS connection to the callee
        self.connector = None
        self.member = None
        self.attempts = 0
        self.answered = 0           # calls that became members
        self.failures_in_a_row = 0
        self.last_status = None
        self.last_reason = None
        self.connected_at = None
        self.retry_at = None
        self.delayed = None

    def describe(self, now):
        entry = self.entry
        info = {"session": entry.session, "uri": entry.uri, "transport": self.target.transport,
                "name": self.name, "state": self.state, "attempts": self.attempts,
                "answered": self.answered, "failures_in_a_row": self.failures_in_a_row,
                "last_status": self.last_status, "last_reason": self.last_reason}
        if self.state == "connected" and self.connected_at is not None:
            info["connected_seconds"] = round(now - self.connected_at, 1)
        if self.state == "waiting" and self.retry_at is not None:
            info["retry_in"] = round(max(0.0, self.retry_at - now), 1)
        if self.member is not None and self.member.membership is not None:
            info["member"] = self.member.describe()
        return info


class _OutboundStream(protocol.Protocol):
    """Our TCP or TLS connection to one callee."""

    def __init__(self, outbound, invitation):
        self.outbound = outbound
        self.invitation = invitation
        self.framer = StreamFramer()
        self.key = None

    def connectionMade(self):
        self.outbound.stream_made(self)

    def dataReceived(self, data):
        self.outbound.stream_received(self, data)

    def connectionLost(self, reason=None):
        self.outbound.stream_lost(self, reason)


class _OutboundFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, outbound, invitation):
        self.outbound = outbound
        self.invitation = invitation

    def buildProtocol(self, addr):
        return _OutboundStream(self.outbound, self.invitation)

    def clientConnectionFailed(self, connector, reason):
        self.outbound.connect_failed(self.invitation, reason)


class OutboundCalls:
    """Every ``sip.invite`` entry's calls, on the standard user agents' sockets."""

    def __init__(self, door, agents, config):
        self.door = door
        self.agents = agents
        self.config = config
        self.reactor = door.reactor
        self.bus = door.bus
        self.core = UserAgentClient(agents.address, agents.ports, now=self.reactor.seconds())
        self.invitations = []
        for entry in config.invite:
            _, _, host, number, transport = entry.target()
            self.invitations.append(Invitation(entry, Target(
                entry.uri, transport, (host, number), entry.username, entry.password)))
        self.by_call = {}           # OutgoingCall -> Invitation
        self.connections = {}       # (transport, (host, port)) -> _OutboundStream
        self.counts = collections.Counter()
        self.media_totals = collections.Counter()
        self.running = False
        self._handlers = {Send: self._send, Drop: self._dropped, Ringing: self._ringing,
                          Answered: self._answered, Failed: self._failed, Ended: self._ended}
        agents.outbound = self
        agents.core.foreign = self.core.owns

    def carry_out(self, actions):
        handlers = self._handlers
        for action in actions:
            handlers[type(action)](action)

    def now(self):
        return self.reactor.seconds()

    # Service -------------------------------------------------------------------------

    def start(self):
        self.running = True
        for invitation in self.invitations:
            self.door.log.info("sip: calling {uri} over {transport} for session {session!r}",
                               uri=invitation.entry.uri, transport=invitation.target.transport,
                               session=invitation.entry.session)
            self.dial(invitation)

    def stop(self):
        """Every call hears our BYE (or CANCEL); nothing is called again."""
        self.running = False
        for invitation in self.invitations:
            if invitation.delayed is not None and invitation.delayed.active():
                invitation.delayed.cancel()
            invitation.delayed = None
            if invitation.call is not None:
                self.hang_up(invitation.call, "shutdown")
            if invitation.connector is not None:
                invitation.connector.disconnect()
            invitation.state = "stopped"
        for stream in list(self.connections.values()):
            stream.transport.loseConnection()

    def tick(self):
        now = self.now()
        self.carry_out(self.core.timer(now))
        for invitation in self.invitations:
            member = invitation.member
            if member is not None and member.membership is not None:
                self._media_actions(member, member.media.timer(now))

    # Dialling --------------------------------------------------------------------------

    def dial(self, invitation):
        invitation.delayed = None
        invitation.retry_at = None
        if not self.running or invitation.call is not None:
            return
        invitation.attempts += 1
        self.counts["attempts"] += 1
        ports = self.agents.pool.take(self, self.agents.media_host)
        if ports is None:
            self.door.drop(invitation.target.address, "no_media_ports",
                           "every sip.uas.media port is in use")
            self._retry(invitation, None, "no free media port", None)
            return
        invitation.ports = ports
        if invitation.target.transport == UDP:
            self._invite(invitation)
            return
        invitation.state = "connecting"
        factory = _OutboundFactory(self, invitation)
        host, number = invitation.target.address
        bind = (self.config.host, 0)
        if invitation.target.transport == TLS:
            invitation.connector = self.reactor.connectSSL(
                host, number, factory, self._tls_options(invitation), timeout=CONNECT_TIMEOUT,
                bindAddress=bind)
        else:
            invitation.connector = self.reactor.connectTCP(
                host, number, factory, timeout=CONNECT_TIMEOUT, bindAddress=bind)

    def _tls_options(self, invitation):
        host = invitation.target.address[0]
        ca = invitation.entry.tls_ca
        if ca is None:
            return ssl.optionsForClientTLS(host)
        with open(ca, "rb") as stream:
            pem = stream.read()
        marker = b"-----END CERTIFICATE-----"
        certificates = [ssl.Certificate.loadPEM(part + marker)
                        for part in pem.split(marker) if b"-----BEGIN CERTIFICATE-----" in part]
        return ssl.optionsForClientTLS(host, trustRoot=ssl.trustRootFromCertificates(
            certificates))

    def _invite(self, invitation):
        ports = invitation.ports
        offer = midi_sdp.offer(self.agents.media_address, ports.rtp_port,
                               self.agents.rng.getrandbits(31))
        call, actions = self.core.invite(invitation.target, offer, self.now(),
                                         invitation.entry.ring_timeout)
        if call is None:
            self.carry_out(actions)
            self._release(invitation)
            self._retry(invitation, None, "too many calls", None)
            return
        invitation.call = call
        invitation.state = "calling"
        self.by_call[call] = invitation
        self.carry_out(actions)

    def connect_failed(self, invitation, reason):
        invitation.connector = None
        if invitation.call is not None or invitation.state != "connecting":
            return
        self.counts["connect_failed"] += 1
        self._release(invitation)
        self._retry(invitation, None, f"connection failed: {reason.getErrorMessage()}"[:160],
                    None)

    def stream_made(self, stream):
        invitation = stream.invitation
        invitation.connector = None
        if not self.running or invitation.state != "connecting":
            stream.transport.loseConnection()
            return
        stream.key = (invitation.target.transport, invitation.target.address)
        self.connections[stream.key] = stream
        invitation.stream = stream
        self._invite(invitation)

    def stream_received(self, stream, data):
        if self.connections.get(stream.key) is not stream:
            return
        now = self.now()
        transport, address = stream.key
        for frame in stream.framer.feed(data):
            if frame is PING:
                stream.transport.write(b"\r\n")
            elif isinstance(frame, Broken):
                self.door.drop(address, frame.reason, f"{transport} from the callee")
                stream.transport.loseConnection()
            else:
                self.carry_out(self.core.receive(frame, transport, address, now))

    def stream_lost(self, stream, reason):
        invitation = stream.invitation
        if invitation.stream is stream:
            invitation.stream = None
        if stream.key is not None and self.connections.get(stream.key) is stream:
            del self.connections[stream.key]
            transport, address = stream.key
            self.carry_out(self.core.connection_lost(transport, address, self.now()))

    def received(self, message, transport, source):
        """A message the UAS core handed over (:class:`~gateway.protocols.sip.uas.Foreign`)."""
        self.carry_out(self.core.receive(message, transport, source, self.now()))

    # The core's actions ------------------------------------------------------------------

    def _send(self, action):
        if action.via != UDP:
            stream = self.connections.get((action.via, action.address))
            if stream is not None:
                stream.transport.write(action.data)
                return
        self.agents.carry_out([action])     # UDP, or a connection the callee opened

    def _dropped(self, action):
        self.door.drop(action.source, action.reason, action.detail or "", action.count)

    def _ringing(self, action):
        invitation = self.by_call.get(action.call)
        if invitation is not None:
            invitation.state = "ringing"
            invitation.last_status = action.status

    def _answered(self, action):
        call = action.call
        invitation = self.by_call.get(call)
        if invitation is None:
            self.carry_out(self.core.hang_up(call, self.now(), "unknown"))
            return
        invitation.last_status = call.last_status
        invitation.last_reason = None
        stream = midi_sdp.read_answer(action.sdp)
        if isinstance(stream, midi_sdp.Refused):
            self.counts["answers_refused"] += 1
            self.door.drop(call.target.address, "answer_refused", stream.text)
            invitation.last_reason = f"answer refused: {stream.text}"
            self.hang_up(call, "answer refused")
            return
        now = self.now()
        agents = self.agents
        hosts = (call.target.address[0],) + ((call.answered_from[0],)
                                             if call.answered_from else ())
        media = MidiCall(stream, agents.rng.getrandbits(32), agents.rng.getrandbits(16),
                         agents.clock_base, now, latetime=self.config.latetime,
                         journal=self.config.journal, timeout=self.config.uas.media_timeout,
                         hosts=hosts, cname=f"netgateway@{agents.media_address}")
        member = InvitedMember(self, invitation, call, media, invitation.ports)
        invitation.ports.member = member
        invitation.member = member
        invitation.state = "joining"
        request = JoinRequest(invitation.entry.session, invitation.name, DOOR, Verified(),
                              call.target.address[0])
        joining = self.bus.join(request, member)
        joining.addCallbacks(self._joined, self._join_refused, callbackArgs=(member,),
                             errbackArgs=(member,))

    def _joined(self, membership, member):
        invitation = member.invitation
        if invitation.member is not member or member.call.state != "confirmed":
            membership.leave("left while joining")      # the call ended meanwhile
            return
        member.membership = membership
        invitation.state = "connected"
        invitation.connected_at = self.now()
        invitation.answered += 1
        invitation.failures_in_a_row = 0
        invitation.last_reason = None
        self.counts["answered"] += 1
        self.door.log.info("sip: {uri} answered; {name!r} joined session {session!r}",
                           uri=invitation.entry.uri, name=invitation.name,
                           session=invitation.entry.session)

    def _join_refused(self, failure, member):
        failure.trap(JoinRefused)           # counted and logged by the bus
        invitation = member.invitation
        if invitation.member is member:
            invitation.last_reason = f"the session refused it: {failure.value.reason}"
            self.hang_up(member.call, "refused")

    def _failed(self, action):
        invitation = self.by_call.pop(action.call, None)
        if invitation is None:
            return
        self.counts["failed"] += 1
        self._release(invitation)
        reason = action.reason if action.status is None else f"{action.status} {action.reason}"
        self._retry(invitation, action.status, reason, action.retry_after)

    def _ended(self, action):
        invitation = self.by_call.pop(action.call, None)
        if invitation is None:
            return
        self.counts[f"ended_{action.reason.replace(' ', '_')}"] += 1
        was_member = invitation.member is not None and invitation.member.membership is not None
        reason = invitation.last_reason if not was_member and invitation.last_reason \
            else action.reason
        self._release(invitation, action.reason)
        if was_member:
            invitation.failures_in_a_row = 0
        self._retry(invitation, invitation.last_status, reason, None, failed=not was_member)

    # Calls ---------------------------------------------------------------------------------

    def hang_up(self, call, reason):
        """The gateway ends ``call`` (its member was kicked, media went silent, shutdown)."""
        self.carry_out(self.core.hang_up(call, self.now(), reason))

    def _release(self, invitation, reason="ended"):
        """The call is over: the member leaves the bus, media ports and connection close."""
        invitation.call = None
        member, invitation.member = invitation.member, None
        ports, invitation.ports = invitation.ports, None
        if member is not None:
            bye = member.media.close(self.now())
            if member.membership is not None:
                self._media_actions(member, bye)
            self.media_totals.update(member.media.counts)
            membership, member.membership = member.membership, None
            if membership is not None:
                membership.leave(reason)
        if ports is not None:
            ports.member = None
            self.agents.pool.give_back(ports)
        stream, invitation.stream = invitation.stream, None
        if stream is not None:
            if self.connections.get(stream.key) is stream:
                del self.connections[stream.key]
            stream.transport.loseConnection()

    def _retry(self, invitation, status, reason, retry_after, failed=True):
        invitation.last_status = status if status is not None else invitation.last_status
        invitation.last_reason = reason
        entry = invitation.entry
        if failed:
            invitation.failures_in_a_row += 1
        if not self.running:
            invitation.state = "stopped"
            return
        delay = entry.retry * 2 ** max(0, invitation.failures_in_a_row - 1)
        delay = min(delay, entry.retry_max)
        if retry_after is not None:
            delay = max(delay, min(retry_after, entry.retry_max))
        invitation.state = "waiting"
        invitation.retry_at = self.now() + delay
        self.door.log.info("sip: call to {uri} {how} ({reason}); calling again in {delay} s",
                           uri=entry.uri, how="failed" if failed else "ended",
                           reason=reason, delay=round(delay, 1))
        invitation.delayed = self.reactor.callLater(delay, self.dial, invitation)

    # Media -----------------------------------------------------------------------------------

    def media_received(self, member, data, addr, via):
        media = member.media
        heard = media.last_heard
        self._media_actions(member, media.receive(data, addr[:2], self.now(), via))
        if media.last_heard != heard and member.membership is not None:
            member.membership.touch()

    def _media_actions(self, member, actions):
        carry_out_media(member, actions, self.door, self.hang_up)

    def prepare(self, delivery, clock_rate):
        """The standard agents' preparation (one clock base for every call's RTP)."""
        return self.agents.prepare(delivery, clock_rate)

    # Status ----------------------------------------------------------------------------------

    def media_counts(self):
        totals = collections.Counter(self.media_totals)
        for invitation in self.invitations:
            if invitation.member is not None:
                totals.update(invitation.member.media.counts)
        return totals

    def connected(self):
        return sum(1 for invitation in self.invitations if invitation.state == "connected")

    def status(self):
        now = self.now()
        return {"invitations": [invitation.describe(now) for invitation in self.invitations],
                "connected": self.connected(), "media_packets": dict(self.media_counts()),
                "core": self.core.totals(), **dict(self.counts)}
