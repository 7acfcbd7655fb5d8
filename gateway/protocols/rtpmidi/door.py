"""RTP-MIDI door: AppleMIDI sessions over UDP (thin Twisted adapter).

Implements the Twisted side of the RTP-MIDI door: for every configured
session two UDP ports (control P, data P+1) feed one sans-IO
:class:`~gateway.protocols.rtpmidi.session.AppleMidiSession`; each joined
AppleMIDI peer becomes a member of a session on the bus, with an
:class:`~gateway.protocols.rtpmidi.media.RtpMidiStream` (the RTP-MIDI media
core, which knows nothing of AppleMIDI) for its media: a datagram is parsed
once, routed to its peer by SSRC, and received by that stream; outgoing MIDI
is encoded once per fan-out and sent on each peer's stream.
Sessions can be advertised as ``_apple-midi._udp`` with python-zeroconf
(:mod:`~gateway.protocols.rtpmidi.mdns`). The ``rtpmidi`` section is
:mod:`~gateway.protocols.rtpmidi.config`, the Prometheus collector
:mod:`~gateway.protocols.rtpmidi.metrics`.

AppleMIDI has no authentication: a session's ``allow_addresses`` list is what
admits a peer. Invitations the gateway sends itself (``invite``) name their
peer in the config and are trusted.
"""

import functools
import random
import socket

from twisted.internet import defer, protocol, task, threads
from twisted.internet.abstract import isIPAddress, isIPv6Address
from zope.interface import implementer

from gateway.actions import (
    ClockSynced, Drop, Feedback, PeerJoined, PeerLeft, Send, dispatcher,
)
from gateway.bus.values import AllowedAddress, JoinRefused, JoinRequest, Verified, unused_name
from gateway.doorservice import DoorService
from gateway.interfaces import IMember
from gateway.protocols.rtpmidi import mdns, metrics
from gateway.protocols.rtpmidi.applemidi import is_applemidi
from gateway.protocols.rtpmidi.media import RtpMidiStream
from gateway.protocols.rtpmidi.payload import MalformedPacket, RtpMidiPacket
from gateway.protocols.rtpmidi.session import (
    CLOCK_RATE, CONTROL, DATA, AppleMidiSession, InvitationFailed, Peer,
)
from gateway.protocols.rtpmidi.stream import RTP_MIDI_LIST, prepare

DOOR = "rtpmidi"
# AppleMIDI invitations may leave their name out.
DEFAULT_PEER_NAME = "rtpmidi peer"
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
MAX_DATAGRAM = 65535
# Often enough that guard packets leave within 50 ms of when they are due.
TIMER_INTERVAL = 0.05
REINVITE_DELAY = 5.0
_U32 = 0xFFFFFFFF


@implementer(IMember)
class RtpMidiMember:
    """One joined AppleMIDI peer: the bus member for its RTP-MIDI media stream."""

    door = DOOR

    def __init__(self, endpoint, peer):
        self.endpoint = endpoint
        self.peer = peer
        self.name = peer.name or DEFAULT_PEER_NAME
        self.membership = None
        self.data_addr = peer.data_addr
        self._sendto = endpoint.data_socket.sendto
        session = endpoint.session
        self.stream = RtpMidiStream(session.ssrc, random.getrandbits(16), CLOCK_RATE,
                                    session.clock_base, endpoint.config.latetime,
                                    journal=endpoint.config.journal)

    def rtp_received(self, packet, now):
        try:
            received = self.stream.receive(packet, now)
        except MalformedPacket as error:      # its journal, read after a loss
            self.endpoint.drop("malformed", self.data_addr, str(error))
            return
        if received.late:
            self.endpoint.drop("late", self.data_addr, "note-on later than latetime",
                               received.late)
        if received.events and self.membership is not None:
            midi_list = received.midi_list
            self.membership.publish(received.events, None if midi_list is None
                                    else {RTP_MIDI_LIST: midi_list})

    # IMember ----------------------------------------------------------------
    def deliver(self, delivery):
        endpoint = self.endpoint
        now, timestamp, packets = delivery.memo((DOOR, endpoint), endpoint.prepare, delivery)
        stream = self.stream
        for prepared in packets:
            self._send(stream.packet(prepared, timestamp, now))

    def send_guard_packet(self, now, timestamp):
        data = self.stream.guard_packet(timestamp, now)
        if data is not None:
            self._send(data)

    def _send(self, data):
        try:
            self._sendto(data, self.data_addr)
        except OSError as error:
            self.endpoint.drop("send_failed", self.data_addr, error.strerror or str(error))

    def feedback_received(self, sequence):
        self.stream.feedback(sequence)

    def roster_changed(self, notice):
        pass            # AppleMIDI has no message for it

    def disconnect(self, reason):
        self.membership = None
        self.endpoint.kick(self.peer)

    def describe(self):
        peer = self.peer
        stream = self.stream
        receiver = stream.journal_receiver
        host, number = peer.control_addr[:2]
        return {"rtt_ms": None if peer.rtt is None else round(peer.rtt * 1000.0, 2),
                "peer": f"{host}:{number}", "role": peer.local_role,
                "packets_received": stream.packets_received,
                "packets_lost": receiver.lost_packets,
                "gaps_repaired": receiver.repaired_gaps,
                "late_dropped": stream.late_dropped}


class _PortProtocol(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, endpoint, which):
        self.endpoint = endpoint
        self.which = which

    def datagramReceived(self, data, addr):
        self.endpoint.receive(data, addr, self.which)


class _DataPortProtocol(_PortProtocol):
    """The data port: RTP takes the endpoint's direct path, AppleMIDI the general one."""

    def __init__(self, endpoint):
        super().__init__(endpoint, DATA)

    def datagramReceived(self, data, addr):
        if is_applemidi(data):
            self.endpoint.receive(data, addr, DATA)
        else:
            self.endpoint.rtp_received(data, addr)


class SessionEndpoint:
    """One configured session: its two UDP ports, AppleMIDI state and members."""

    def __init__(self, door, entry):
        self.door = door
        self.entry = entry
        self.config = door.config
        self.reactor = door.reactor
        self.bus = door.bus
        self.session = AppleMidiSession(entry.display_name, random.getrandbits(32),
                                        self.reactor.seconds(), accept=self.accept)
        self.members = {}        # Peer -> RtpMidiMember
        self.control_port = None
        self.data_port = None
        self.data_socket = None
        self._invite_targets = sorted({(invite.host, invite.port) for invite in door.config.invite
                                       if invite.session == entry.session})
        self._invited = {}         # Peer -> the configured target its invitation went to
        self._reinvitations = {}
        self.carry_out = dispatcher({
            Send: self._send, Drop: self._dropped, Feedback: self._feedback,
            ClockSynced: self._clock_synced,
            PeerJoined: lambda action: self._peer_joined(action.peer),
            PeerLeft: lambda action: self._peer_gone(action.peer, action.reason),
            InvitationFailed: lambda action: self._peer_gone(action.peer, action.reason)})

    def start(self):
        host = self.config.host
        self.control_port = self.door.listen_udp(
            self.entry.port, _PortProtocol(self, CONTROL), host, maxPacketSize=MAX_DATAGRAM)
        self.data_port = self.door.listen_udp(
            self.entry.port + 1, _DataPortProtocol(self), host, maxPacketSize=MAX_DATAGRAM)
        self.data_socket = self.data_port.socket
        self.data_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        for target in self._invite_targets:
            self.invite(target)

    def stop(self):
        for call in self._reinvitations.values():
            if call.active():
                call.cancel()
        self._reinvitations.clear()
        self.carry_out(self.session.close())
        return defer.gatherResults([defer.maybeDeferred(listening.stopListening)
                                    for listening in (self.control_port, self.data_port)
                                    if listening is not None])

    def invite(self, target):
        self._reinvitations.pop(target, None)
        peer, actions = self.session.invite(target, self.reactor.seconds())
        self._invited[peer] = target
        self.carry_out(actions)

    def accept(self, addr, name):
        """AppleMIDI answers an invitation at once: ask the bus whether a join would pass."""
        refusal = self.bus.check(JoinRequest(self.entry.session, name or DEFAULT_PEER_NAME,
                                             DOOR, AllowedAddress(), addr[0]))
        if refusal is not None:
            return refusal.message
        view = self.bus.session_view(self.entry.session)
        if view is None:
            return f"session {self.entry.session!r} does not exist"
        return f"session {view.name!r} is full" if view.full else True

    def prepare(self, delivery):
        """``(now, RTP timestamp, prepared packets)`` for a delivery (once per fan-out)."""
        now = self.reactor.seconds()
        packets, refused = prepare(delivery.events, CLOCK_RATE,
                                   delivery.encodings.get(RTP_MIDI_LIST))
        for reason in refused:
            self.drop("too_large", delivery.source.name, reason)
        return now, self.session.ticks(now) & _U32, packets

    def tick(self):
        now = self.reactor.seconds()
        self.carry_out(self.session.timer(now))
        if self.config.journal:
            timestamp = self.session.ticks(now) & _U32
            for member in list(self.members.values()):
                member.send_guard_packet(now, timestamp)

    def kick(self, peer):
        self.carry_out(self.session.kick(peer))

    def receive(self, data, addr, port):
        self.carry_out(self.session.receive(data, addr, self.reactor.seconds(), port))

    def rtp_received(self, data, addr):
        try:
            packet = RtpMidiPacket.parse(data, lazy_journal=True)
        except MalformedPacket as error:
            self.drop("malformed", addr, str(error))
            return
        source = self.session.rtp_source(packet.ssrc, packet.sequence, addr)
        if type(source) is Peer:
            member = self.members.get(source)
            if member is not None:
                member.rtp_received(packet, self.reactor.seconds())
        else:
            self._dropped(source)

    def _send(self, action):
        listening = self.control_port if action.via == CONTROL else self.data_port
        listening.write(action.data, action.address)

    def _feedback(self, action):
        member = self.members.get(action.peer)
        if member is not None:
            member.feedback_received(action.sequence)
            if member.membership is not None:
                member.membership.touch()

    def _clock_synced(self, action):
        member = self.members.get(action.peer)
        if member is None:
            return
        member.stream.clock_offset = action.offset
        if member.membership is not None:
            member.membership.touch()
            member.membership.report_latency(round(action.rtt * 1000.0, 2))

    def _dropped(self, action):
        self.drop(action.reason.replace(" ", "_"), action.source, action.detail, action.count)

    def _peer_joined(self, peer):
        host = peer.data_addr[0]
        if not (isIPAddress(host) or isIPv6Address(host)):
            self.drop("bad_address", peer.data_addr, "not an IP address")
            self.kick(peer)
            return
        member = RtpMidiMember(self, peer)
        self.members[peer] = member
        credential = Verified() if peer in self._invited else AllowedAddress()
        # Numbered, not refused as taken: an AppleMIDI name is the device's or the
        # session's ("Session 1" on every Mac), not one its player typed.
        member.name = unused_name(member.name, self.bus.session_view(self.entry.session))
        joining = self.bus.join(JoinRequest(self.entry.session, member.name, DOOR, credential,
                                            host), member)
        joining.addCallbacks(self._joined, self._refused, callbackArgs=(member,),
                             errbackArgs=(member,))

    def _joined(self, membership, member):
        if self.members.get(member.peer) is not member:
            membership.leave("left while joining")      # the peer said BY meanwhile
            return
        member.membership = membership

    def _refused(self, failure, member):
        failure.trap(JoinRefused)      # counted and logged by the bus
        if self.members.get(member.peer) is member:
            self.kick(member.peer)

    def _peer_gone(self, peer, reason):
        member = self.members.pop(peer, None)
        if member is not None and member.membership is not None:
            membership, member.membership = member.membership, None
            membership.leave(reason)
        target = self._invited.pop(peer, None)
        if target is not None and self.door.running and target not in self._reinvitations:
            self.door.log.info("rtpmidi: invitation to {target} ended ({reason});"
                               " inviting again in {delay} s", target=target, reason=reason,
                               delay=REINVITE_DELAY)
            self._reinvitations[target] = self.reactor.callLater(
                REINVITE_DELAY, self.invite, target)

    def drop(self, reason, addr, detail=None, amount=1):
        where = f"(session {self.entry.session!r})"
        self.door.drop(addr, reason, f"{detail} {where}" if detail else where, amount)

    def status(self):
        return {"session": self.entry.session, "name": self.entry.display_name,
                "control_port": self.entry.port, "data_port": self.entry.port + 1,
                "peers": len(self.members)}


class RtpMidiDoor(DoorService):
    """Opens every configured AppleMIDI session and drives their timers."""

    name = DOOR

    def __init__(self, config, context):
        super().__init__(config, context)
        self.endpoints = [SessionEndpoint(self, entry) for entry in config.sessions]
        self._timer = task.LoopingCall(self._tick)
        self._timer.clock = self.reactor
        self.mdns = None
        if config.mdns:
            in_thread = functools.partial(threads.deferToThreadPool, self.reactor,
                                          self.reactor.getThreadPool())
            self.mdns = mdns.MdnsAdvertiser(in_thread, self.reactor, config.host,
                                            config.sessions, self.log,
                                            advertised=context.config.network.public_address)
        if context.metrics is not None:
            context.metrics.register(metrics.RtpMidiCollector(self))

    def startService(self):
        super().startService()
        for endpoint in self.endpoints:
            endpoint.start()
            self.log.info("rtpmidi: session {session!r} as {name!r} on udp {host}:{port}"
                          " (data {data})", session=endpoint.entry.session,
                          name=endpoint.entry.display_name, host=self.config.host,
                          port=endpoint.entry.port, data=endpoint.entry.port + 1)
        self._timer.start(TIMER_INTERVAL, now=False)
        if self.mdns is not None:
            self.mdns.start()

    def stopService(self):
        """Say BY to every peer on both ports, release the members, close the ports."""
        super().stopService()
        if self._timer.running:
            self._timer.stop()
        stopping = [endpoint.stop() for endpoint in self.endpoints]
        if self.mdns is not None:
            stopping.append(defer.maybeDeferred(self.mdns.stop))
        return defer.gatherResults(stopping)

    def _tick(self):
        for endpoint in self.endpoints:
            endpoint.tick()

    def status(self):
        return {"sessions": [endpoint.status() for endpoint in self.endpoints]}


def make_service(config, context):
    return RtpMidiDoor(config, context)
