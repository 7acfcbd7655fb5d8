"""SIP door: the session server of sfront networking, and standard SIP user agents (thin
Twisted adapter).

Binds the two SIP ports sfront clients are built with (``sip.port`` for
their RTP sockets, ``sip.port + 1`` for their RTCP sockets) and, on
``sip.media.host``, one RTP/RTCP port pair per declared session; every
datagram goes to the sans-IO :class:`~gateway.protocols.sip.server.SessionServer`
with the local port it arrived on, and its actions are carried out here:
datagrams written, drops counted, verified clients joined to the bus as
:class:`SfrontMember`, their MIDI published, and what the session plays
encoded once per fan-out and sent to each client signed with its
session's key. The ``sip`` section is :mod:`~gateway.protocols.sip.config`,
the Prometheus collector :mod:`~gateway.protocols.sip.metrics`.

Standard SIP user agents (``sip.uas``: softphones, SIP libraries, RTP-MIDI
endpoints) are served by :class:`~gateway.protocols.sip.agents.StandardAgents`.
By default they share ``sip.port`` over UDP with sfront clients, as a softphone
dialling ``sip:demo@HOST`` expects port 5060: each datagram on it goes to the
sfront server when it is in sfront's dialect
(:func:`~gateway.protocols.sip.sfront.speaks_sfront`: NUL-terminated, bare-LF
lines) and to the RFC 3261 core otherwise. TCP and TLS are theirs alone
(sfront speaks only UDP; its ``port + 1`` is UDP too, so TLS on TCP 5061 is free).

The calls the gateway makes itself (``sip.invite``) are
:class:`~gateway.protocols.sip.outbound.OutboundCalls`, on the standard user
agents' sockets and media ports.
"""

import socket

from twisted.internet import defer, protocol, task
from zope.interface import implementer

from gateway.actions import Drop, PeerAlive, PeerLeft, Send, dispatcher
from gateway.bus.throttle import JoinThrottle
from gateway.bus.values import LEFT, JoinRefused, JoinRequest, Refusal, Verified, unused_name
from gateway.doorservice import DoorService
from gateway.interfaces import IMember
from gateway.protocols.rtpmidi.stream import RTP_MIDI_LIST, prepare
from gateway.protocols.sip import channels, metrics
from gateway.protocols.sip.sfront import speaks_sfront
from gateway.protocols.sip.server import Admit, DeclaredSession, Played, Refused, SessionServer

DOOR = "sip"
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
MAX_DATAGRAM = 65535
# Often enough that guard packets leave within 50 ms of when they are due.
TIMER_INTERVAL = 0.05


@implementer(IMember)
class SfrontMember:
    """One joined sfront client: the bus member whose media the gateway anchors."""

    door = DOOR

    def __init__(self, sip_door, client):
        self.sip_door = sip_door
        self.client = client
        self.membership = None
        session = client.session
        self._memo_key = (DOOR, session.name, client.clock_rate)
        # The socket itself, as the RTP-MIDI door does: Port.write's checks cost per packet.
        self._sendto = sip_door.media_listeners[session.name].socket.sendto

    def deliver(self, delivery):
        delivery = delivery.without_beat_clock()     # sfront follows no clock
        if delivery is None:
            return
        client = self.client
        sip_door = self.sip_door
        now, timestamp, packets = delivery.memo(self._memo_key, sip_door.prepare, delivery,
                                                client.session.name, client.clock_rate)
        rtp_packet = client.rtp_packet
        address = client.rtp_to
        for prepared in packets:
            try:
                self._sendto(rtp_packet(prepared, timestamp, now), address)
            except OSError as error:
                sip_door.drop(address, "send_failed", error.strerror or str(error))

    def roster_changed(self, notice):
        if notice.change == LEFT:
            self.sip_door.player_left(self.client.session.name, notice.entry.member_id)

    def disconnect(self, reason):
        self.membership = None
        self.sip_door.remove(self.client, reason)

    def describe(self):
        return self.client.describe()


class _Datagrams(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, sip_door, port):
        self.sip_door = sip_door
        self.port = port

    def datagramReceived(self, data, addr):
        self.sip_door.receive(data, addr, self.port)


class SipDoor(DoorService):
    """The SIP ports, the media ports of every declared session, and their clients."""

    name = DOOR

    def __init__(self, config, context):
        super().__init__(config, context)
        declared = context.config.sessions
        media_ports = config.media_ports(declared)
        self.sessions = [DeclaredSession(session.name, session.passphrase,
                                         media_ports[session.name]) for session in declared]
        limits = context.config.limits
        network = context.config.network
        self.server = SessionServer(
            self.sessions, network.advertised(config.host), config.port,
            network.advertised(config.media.host),
            now=self.reactor.seconds(), latetime=config.latetime, journal=config.journal,
            max_clients=config.max_clients,
            throttle=JoinThrottle(limits.join_failures_before_throttle,
                                  limits.join_throttle_seconds,
                                  limits.join_throttle_max_seconds))
        self.members = {}           # Client -> SfrontMember
        self.player_channels = {session.name: channels.PlayerChannels()
                                for session in self.sessions} \
            if config.channels == channels.PER_PLAYER else None
        self.listeners = {}         # local port -> IListeningPort
        self.media_listeners = {}   # session name -> its RTP media IListeningPort
        self._timer = task.LoopingCall(self._tick)
        self._timer.clock = self.reactor
        self.carry_out = dispatcher({
            Send: self._send, Drop: self._dropped, Admit: self._admit, Played: self._played,
            Refused: self._refused_by_server,
            PeerAlive: self._alive, PeerLeft: lambda action: self._left(action.peer,
                                                                        action.reason)})
        self.agents = None
        self.outbound = None
        self._shared_udp = config.uas.enabled and config.uas_udp_port == config.port
        if config.uas.enabled:
            from gateway.protocols.sip.agents import StandardAgents
            self.agents = StandardAgents(self, config, context)
            if config.invite:
                from gateway.protocols.sip.outbound import OutboundCalls
                self.outbound = OutboundCalls(self, self.agents, config)
        if context.metrics is not None:
            context.metrics.register(metrics.SipCollector(self))

    # Service -------------------------------------------------------------------

    def startService(self):
        super().startService()
        config = self.config
        for number in (config.port, config.port + 1):
            self._listen(number, config.host)
        for session in self.sessions:
            self.media_listeners[session.name] = self._listen(session.media_port,
                                                              config.media.host)
            self._listen(session.media_port + 1, config.media.host)
        if self.agents is not None:
            self.agents.start(self.listeners[config.port] if self._shared_udp else None)
        if self.outbound is not None:
            self.outbound.start()
        self._timer.start(TIMER_INTERVAL, now=False)
        self.log.info("sip: sfront session server on udp {host}:{port} (RTCP side {rtcp}),"
                      " media on {media} ports {first}-{last} for {count} sessions",
                      host=config.host, port=config.port, rtcp=config.port + 1,
                      media=config.media.host,
                      first=min(session.media_port for session in self.sessions),
                      last=max(session.media_port for session in self.sessions) + 1,
                      count=len(self.sessions))

    def _listen(self, number, host):
        listening = self.listen_udp(number, _Datagrams(self, number), host,
                               maxPacketSize=MAX_DATAGRAM)
        listening.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self.listeners[number] = listening
        return listening

    def stopService(self):
        """Our member says RTCP BYE to every client, the members leave, the ports close."""
        super().stopService()
        if self._timer.running:
            self._timer.stop()
        self.carry_out(self.server.close(self.reactor.seconds()))
        for client in list(self.members):
            self._left(client, "shutdown")
        if self.outbound is not None:
            self.outbound.stop()            # BYEs leave before the sockets close
        stopping = [self.agents.stop()] if self.agents is not None else []
        listening, self.listeners = list(self.listeners.values()), {}
        return defer.gatherResults(stopping + [defer.maybeDeferred(port.stopListening)
                                               for port in listening])

    # Datagrams -------------------------------------------------------------------

    def receive(self, data, addr, port):
        if self._shared_udp and port == self.config.port and not speaks_sfront(data):
            self.agents.datagram(data, addr)
            return
        self.carry_out(self.server.receive(data, addr, port, self.reactor.seconds()))

    def _tick(self):
        self.carry_out(self.server.timer(self.reactor.seconds()))
        if self.agents is not None:
            self.agents.tick()
        if self.outbound is not None:
            self.outbound.tick()

    def _send(self, action):
        listening = self.listeners.get(action.via)
        if listening is None:
            return
        try:
            listening.write(action.data, action.address)
        except OSError as error:
            self.drop(action.address, "send_failed", error.strerror or str(error))

    def _dropped(self, action):
        self.drop(action.source, action.reason, action.detail or "", action.count)

    def _refused_by_server(self, action):
        """sfront's own check refused a client: the bus counts, throttles and logs it."""
        self.bus.refused(JoinRequest(action.session, "sfront client", DOOR, Verified(),
                                     action.source[0]),
                         Refusal(action.reason, f"refused by the sfront session server"
                                                f" ({action.reason})"))

    # Members -------------------------------------------------------------------

    def _admit(self, action):
        client = action.client
        # login@host is no name its player chose: two clients of one login on one
        # machine are numbered, not refused as taken.
        client.name = unused_name(client.name, self.bus.session_view(client.session.name))
        member = SfrontMember(self, client)
        self.members[client] = member
        joining = self.bus.join(JoinRequest(client.session.name, client.name, DOOR, Verified(),
                                            client.rtp_source[0]), member)
        joining.addCallbacks(self._joined, self._refused, callbackArgs=(member,),
                             errbackArgs=(member,))

    def _joined(self, membership, member):
        client = member.client
        if self.members.get(client) is not member or client.state != "admitting":
            membership.leave("left while joining")
            return
        member.membership = membership
        self.carry_out(self.server.admitted(client, self.reactor.seconds()))

    def _refused(self, failure, member):
        failure.trap(JoinRefused)       # counted and logged by the bus
        client = member.client
        if self.members.get(client) is member:
            del self.members[client]
        self.carry_out(self.server.refused(client, failure.value.reason,
                                           self.reactor.seconds()))

    def _played(self, action):
        member = self.members.get(action.client)
        if member is not None and member.membership is not None:
            midi_list = action.midi_list
            member.membership.publish(action.events, None if midi_list is None
                                      else {RTP_MIDI_LIST: midi_list})

    def _alive(self, action):
        member = self.members.get(action.peer)
        if member is not None and member.membership is not None:
            member.membership.touch()

    def _left(self, client, reason):
        member = self.members.pop(client, None)
        if member is not None and member.membership is not None:
            membership, member.membership = member.membership, None
            membership.leave(reason)

    def remove(self, client, reason):
        """The bus ended ``client``'s membership: our member says BYE to it."""
        self.members.pop(client, None)
        self.carry_out(self.server.remove(client, reason, self.reactor.seconds()))

    # Encoding --------------------------------------------------------------------

    def prepare(self, delivery, session_name, clock_rate):
        """``(now, RTP timestamp, prepared packets)`` for a delivery to one session's
        clients at one clock rate (once per fan-out)."""
        now = self.reactor.seconds()
        events = delivery.events
        midi_list = delivery.encodings.get(RTP_MIDI_LIST)
        if self.player_channels is not None:
            events = self.player_channels[session_name].remap(events,
                                                              delivery.source.member_id)
            midi_list = None
        packets, refused = prepare(events, clock_rate, midi_list)
        for reason in refused:
            self.drop(delivery.source.name, "too_large", reason)
        return now, self.server.ticks(now, clock_rate), packets

    def player_left(self, session_name, member_id):
        if self.player_channels is not None:
            self.player_channels[session_name].left(member_id)

    # Status --------------------------------------------------------------------

    def status(self):
        config = self.config
        totals = self.server.totals()
        return {"host": config.host, "port": config.port, "rtcp_port": config.port + 1,
                "media_host": config.media.host, "channels": config.channels,
                "sessions": [{"session": session.name, "media_port": session.media_port}
                             for session in self.sessions],
                **totals,
                "user_agents": self.agents.status() if self.agents is not None else None,
                "invite": self.outbound.status() if self.outbound is not None else None}


def make_service(config, context):
    return SipDoor(config, context)
