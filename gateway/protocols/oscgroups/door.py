"""OSCgroups door: the rendezvous server and the OSC <-> MIDI bridge (thin adapters).

Two UDP sockets on ``host``:

* the server port moves datagrams between the network and
  :class:`.server.RendezvousServer`. It is bound to one address, so every
  reply leaves from exactly the address the client sent to (the C++ client
  ignores replies from anywhere else, shared/protocols/oscgroups.md §2.3,
  §6.2); ``0.0.0.0`` is refused by :meth:`.config.Config.check`. A group that names a
  gateway session (through ``groups`` or by having the same name) accepts
  the lower-case MD5 hex of the session passphrase as its group password,
  which is what OscGroupClient sends; other groups follow OSCgroups' own rule.
* the bridge port moves datagrams between the network and
  :class:`.bridge.Bridge`, an OSCgroups user that registers with this server
  over real UDP like any client, so clients list it, ping it and send it
  their traffic.

Every peer the server lists in a bridged group becomes an
:class:`OscPeerMember` of the group's session. It joins with
:class:`~gateway.bus.values.Verified`: the server has already checked the
peer's group password against the session passphrase with the bus (the
bridge never sees that password), and bridged groups must be declared
sessions, which is all Verified may join. The member stays while the server
lists it and leaves when the server purges it, so the bus releases whatever it
held.

OSC peers of one group already hear each other directly (OscGroupClient sends
application traffic to every peer), so the bridge does not pass one OSC
peer's MIDI to another, except the note-offs the bus sends for a peer
that left. A bridged group whose session is full answers newcomers
``user limit reached``, counting the peers the server lists but the bridge
has not joined yet.

Unless ``relay.policy`` is ``never``, :class:`.relay.Relay` decides which
pairs of users meet through relay ports on ``relay.host`` (the server
lists them through its ``listed_endpoints`` hook); this adapter opens
and closes those ports, frees a user's port when the server purges it, tells
the relay from which source the bridge hears each peer (a per-destination
NAT shows there) and forwards with the socket's ``sendto`` directly, since
the addresses come from the kernel (shared/performance.md).
"""

import secrets
import socket
import typing

from twisted.internet import error, protocol, task
from zope.interface import implementer

from gateway.actions import Drop, PeerAlive, PeerLeft, PeerMidi, Send, dispatcher
from gateway.bus.values import JoinRefused, JoinRequest, Verified
from gateway.doorservice import DoorService
from gateway.interfaces import IMember
from gateway.midi import MidiEvent
from gateway.addresses import is_wildcard

from . import bridge as bridge_core
from . import client, mapping, server, wire
from . import relay as relay_core
from .metrics import OscGroupsCollector

DOOR = "oscgroups"
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024    # shared/performance.md: busy UDP sockets


class GroupPassword(typing.NamedTuple):
    """A credential holding what OscGroupClient sends: the MD5 hex of the passphrase."""

    password_md5: str
    passphrase = None

    def matches(self, secret):
        return secrets.compare_digest(wire.password_hash(secret).encode("ascii"),
                                      self.password_md5.encode("utf-8", "replace"))


class _Datagrams(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, on_datagram):
        self._on_datagram = on_datagram

    def datagramReceived(self, data, addr):
        self._on_datagram(data, addr)


class _RelayPort(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, on_datagram, number):
        self._on_datagram = on_datagram
        self.number = number

    def datagramReceived(self, data, addr):
        self._on_datagram(self.number, data, addr)


@implementer(IMember)
class OscPeerMember:
    """An OSCgroups peer in one session, reached through the bridge socket."""

    door = DOOR

    def __init__(self, door, name, group):
        self.door_service = door
        self.name = name
        self.group = group
        self.membership = None

    def deliver(self, delivery):
        if delivery.source.door == DOOR and not delivery.released:
            return      # the peers of a group exchange their own traffic directly
        self.door_service.send_midi(self.name, delivery)

    def roster_changed(self, notice):
        pass            # OSCgroups has no message for it

    def disconnect(self, reason):
        self.door_service.member_ended(self)

    def describe(self):
        return {"group": self.group, "path": self.door_service.bridge.path(self.name)}


class OscGroupsDoor(DoorService):
    """Runs the rendezvous server and, when enabled, the bridge."""

    name = DOOR

    def __init__(self, config, context):
        super().__init__(config, context)
        network = context.config.network
        # The bridge meets its own server over loopback when the server listens on
        # every address; peers are told where they reach it (public_aliases).
        local_host = "127.0.0.1" if is_wildcard(config.host) else config.host
        self.server_address = (local_host, config.port)
        bridge_endpoint = (network.advertised(config.host) or local_host, config.bridge.port)
        aliases = {}
        if config.bridge.enabled and bridge_endpoint != (local_host, config.bridge.port):
            aliases[(local_host, config.bridge.port)] = bridge_endpoint
        self.server = server.RendezvousServer(
            max_users=config.max_users, max_groups=config.max_groups,
            timeout=config.timeout, authorize_group=self._authorize_group,
            group_full=self._group_full, public_aliases=aliases, now=self.reactor.seconds())
        relay_advertised = network.advertised(config.relay_host)
        self.bridge = None
        self.relay = None
        self._relay_ports = {}    # port number -> (listening port, its socket)
        self.members = {}         # (peer name, group) -> OscPeerMember
        # One dispatch table per socket: what each core's actions mean here.
        self._carry_out_bridge = dispatcher({
            Send: lambda action: self._write(self._bridge_port, action.data, action.address),
            PeerMidi: lambda action: self._publish(action.peer, action.messages),
            PeerAlive: lambda action: self._touch(action.peer),
            bridge_core.PeerListed: lambda action: self._listed(action.name, action.groups),
            PeerLeft: lambda action: self._listed(action.peer, frozenset()),
            Drop: self._dropped})
        relay_actions = {relay_core.OpenPort: self._open_port,
                         relay_core.ClosePort: lambda action: self._close_relay_port(action.port)}
        self._perform_relay = dispatcher(relay_actions)
        self._perform_server = dispatcher({
            **relay_actions,       # the relay's, from listed_endpoints
            Send: lambda action: self._write(self._server_port, action.data, action.address),
            Drop: self._dropped,
            server.Purged: lambda action: self._purged(action.names)})
        self._ports = []
        self._purge = task.LoopingCall(self._purge_users)
        self._purge.clock = self.reactor
        self._tick = task.LoopingCall(self._bridge_tick)
        self._tick.clock = self.reactor
        if config.bridge.enabled:
            self.bridge = self._make_bridge(config, context.config, bridge_endpoint,
                                            relay_advertised)
        if config.relay.policy != relay_core.NEVER:
            self.relay = relay_core.Relay(
                self.server.users, host=relay_advertised, port_min=config.relay.port_min,
                port_max=config.relay.port_max, policy=config.relay.policy,
                max_allocations=config.relay.max_allocations,
                packets_per_second=config.relay.packets_per_second,
                exempt=[config.bridge.user] if self.bridge is not None else [],
                refused=self.server.refused)
            self.server.listed_endpoints = self._listed_endpoints
        if context.metrics is not None:
            context.metrics.register(OscGroupsCollector(self))

    def _make_bridge(self, config, gateway_config, endpoint, relay_host):
        passphrases = {session.name: session.passphrase for session in gateway_config.sessions}
        groups = [(group, wire.password_hash(passphrases[config.session_name(group)]))
                  for group in config.bridge.groups]
        password = config.bridge.password or secrets.token_hex(16)
        relay_ports = (relay_host, config.relay.port_min, config.relay.port_max)
        return bridge_core.Bridge(
            config.bridge.user, wire.password_hash(password), groups, self.server_address,
            endpoint,
            mapping.OscMidiMapping(config.bridge.prefix, config.bridge.outgoing),
            relay=relay_ports if config.relay.policy != relay_core.NEVER else None)

    # ------------------------------------------------------------------
    # Service

    def startService(self):
        super().startService()
        host = self.config.host
        self._server_port = self.listen_udp(self.config.port,
                                            _Datagrams(self._server_datagram), host)
        self._ports.append(self._server_port)
        self._purge.start(self.server.purge_interval, now=False)
        if self.bridge is not None:
            self._bridge_port = self.listen_udp(self.config.bridge.port,
                                                _Datagrams(self._bridge_datagram), host)
            self._bridge_port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                                RECEIVE_BUFFER_BYTES)
            self._ports.append(self._bridge_port)
            self._tick.start(client.TICK_INTERVAL, now=True)
        relay_config = self.config.relay
        self.log.info("oscgroups: server on {host}:{port}, bridge {bridge}, relay {relay}",
                      host=host, port=self.config.port,
                      bridge=(f"user {self.config.bridge.user!r} on port"
                              f" {self.config.bridge.port} in {self.config.bridge.groups}"
                              if self.bridge is not None else "off"),
                      relay=(f"{relay_config.policy} on {self.config.relay_host}:"
                             f"{relay_config.port_min}-{relay_config.port_max}"
                             f" (advertised as {self.relay.host})"
                             if self.relay is not None else "off"))

    def stopService(self):
        super().stopService()
        for loop in (self._purge, self._tick):
            if loop.running:
                loop.stop()
        for member in list(self.members.values()):
            self._leave(member, "gateway stopping")
        if self.relay is not None:
            for name in list(self.relay.allocations):
                self._perform_relay(self.relay.release(name))
        ports, self._ports = self._ports, []
        for listening in ports:
            listening.stopListening()

    # ------------------------------------------------------------------
    # Rendezvous server

    def _server_datagram(self, data, addr):
        try:
            actions = self.server.receive(data, addr, self.reactor.seconds())
        except Exception:
            # The core is fuzzed; should it still fail, one datagram must not matter.
            self.drops.count(DOOR, "server_error")
            self.log.failure("oscgroups: server failed on a datagram from {peer}",
                             peer=addr)
            return
        self._perform_server(actions)


    def _authorize_group(self, group_name, password_md5, address):
        """Whether a group password opens the session of ``group_name`` (None: no such session).

        The bus checks it (and throttles guessing) without admitting anyone:
        the peer joins once the bridge hears the server list it.
        """
        session = self.config.session_name(group_name)
        if self.bus.session_view(session) is None:
            return None
        return self.bus.check(JoinRequest(session, "oscgroups peer", DOOR,
                                          GroupPassword(password_md5), address[0])) is None

    def _group_full(self, group_name, user_name):
        """A bridged group's session is full, counting listed peers not joined yet."""
        if self.bridge is None or group_name not in self.config.bridge.groups:
            return False
        bridge_user = self.bridge.client.user_name
        view = self.bus.session_view(self.config.session_name(group_name))
        if user_name == bridge_user or view is None:
            return False
        group = self.server.groups.get(group_name)
        # Not joined yet: the bridge has not asked the bus, or the bus has not answered.
        joining = 0 if group is None else sum(
            1 for name in group.members
            if name != bridge_user
            and getattr(self.members.get((name, group_name)), "membership", None) is None)
        return view.member_count + joining >= view.max_members

    def _purge_users(self):
        self._perform_server(self.server.purge(self.reactor.seconds()))

    def _purged(self, names):
        self.log.info("oscgroups: purged {users} after {timeout} s without user_alive",
                      users=names, timeout=self.config.timeout)
        if self.relay is not None:
            for name in names:
                self._perform_relay(self.relay.release(name))

    # ------------------------------------------------------------------
    # Relay

    def _listed_endpoints(self, user, viewer, actions):
        return self.relay.listed_endpoints(user, viewer, self.reactor.seconds(), actions)

    def _dropped(self, action):
        self.drop(action.source, action.reason, action.detail or "", action.count)

    def _open_port(self, action):
        if not self._open_relay_port(action.port):
            self.relay.port_unavailable(action.port)

    def _open_relay_port(self, number):
        try:
            listening = self.listen_udp(number, _RelayPort(self._relay_datagram, number),
                                        self.config.relay_host)
        except error.CannotListenError as exc:
            self.log.warn("oscgroups: relay port {port} is unavailable: {error}",
                          port=number, error=exc)
            return False
        listening.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self._relay_ports[number] = (listening, listening.socket)
        return True

    def _close_relay_port(self, number):
        listening, _socket = self._relay_ports.pop(number)
        listening.stopListening()

    def _relay_datagram(self, number, data, addr):
        try:
            action = self.relay.receive(data, addr, self.reactor.seconds(), number)
        except Exception:
            # The core is fuzzed; should it still fail, one datagram must not matter.
            self.drops.count(DOOR, "relay_error")
            self.log.failure("oscgroups: relay failed on a datagram from {peer}", peer=addr)
            return
        if type(action) is Send:
            try:
                self._relay_ports[action.via][1].sendto(data, action.address)
            except OSError as exc:
                self.drop(action.address, "send_failed", str(exc))
        elif action is not None:
            self._dropped(action)

    # ------------------------------------------------------------------
    # Bridge

    def _bridge_tick(self):
        self._perform(self.bridge.timer(self.reactor.seconds()))

    def _bridge_datagram(self, data, addr):
        actions = self.bridge.receive(data, addr, self.reactor.seconds())
        if self.relay is not None:
            for action in actions:
                if type(action) is PeerAlive:
                    self.relay.saw_mapping(action.peer, addr)
        self._perform(actions)

    def _perform(self, actions):
        self._carry_out_bridge(actions)
        for line in self.bridge.client.take_events():
            self.log.debug("oscgroups bridge: {line}", line=line)

    def _listed(self, name, groups):
        """Join ``name`` to the sessions of ``groups``; leave the others."""
        for (peer, group), member in list(self.members.items()):
            if peer == name and group not in groups:
                self._leave(member, "no longer listed by the OSCgroups server")
        for group in groups:
            member = self.members.get((name, group))
            if member is not None:
                if member.membership is not None:
                    member.membership.touch()
                continue
            member = self.members[(name, group)] = OscPeerMember(self, name, group)
            user = self.server.users.get(name)      # the source its group password came from
            source = user.public_endpoint[0] if user and user.public_endpoint else None
            # The server has checked the group password: the bridge only hears listed peers.
            joining = self.bus.join(JoinRequest(self.config.session_name(group), name, DOOR,
                                                Verified(), source), member)
            joining.addCallbacks(self._joined, self._refused, callbackArgs=(member,),
                                 errbackArgs=(member,))

    def _joined(self, membership, member):
        if self.members.get((member.name, member.group)) is not member:
            membership.leave("no longer listed while joining")
            return
        member.membership = membership

    def _refused(self, failure, member):
        failure.trap(JoinRefused)      # counted and logged by the bus; retried at the next reply
        if self.members.get((member.name, member.group)) is member:
            del self.members[(member.name, member.group)]

    def _touch(self, name):
        for group in self.bridge.client.peers[name].groups:
            member = self.members.get((name, group))
            if member is not None and member.membership is not None:
                member.membership.touch()

    def _publish(self, name, messages):
        now = self.reactor.seconds()
        events = [MidiEvent(data, now) for data in messages]
        published = False
        for group in self.bridge.client.peers[name].groups:
            member = self.members.get((name, group))
            if member is not None and member.membership is not None:
                member.membership.publish(events)
                published = True
        if not published:
            self.drop(name, "not_a_member", amount=len(messages))

    def send_midi(self, name, delivery):
        datagrams = delivery.memo((DOOR,), self._encode_for_peers, delivery.events,
                                  delivery.tempo)
        self._perform(self.bridge.send_to_peer(name, datagrams, self.reactor.seconds()))

    def _encode_for_peers(self, events, tempo):
        datagrams, too_large = self.bridge.encode_midi([event.data for event in events], tempo)
        if too_large:
            self.drop(None, "too_large_for_osc_peer", "MIDI message over"
                      f" {bridge_core.MAX_PEER_DATAGRAM} bytes as OSC", too_large)
        return datagrams

    def member_ended(self, member):
        self.members.pop((member.name, member.group), None)

    def _leave(self, member, reason):
        self.members.pop((member.name, member.group), None)
        if member.membership is not None:
            member.membership.leave(reason)

    # ------------------------------------------------------------------

    def _write(self, listening, data, address):
        # Straight to the socket: every address here came from the kernel or
        # from wire's IPv4 decoding, so Twisted's per-write checks only cost.
        try:
            listening.socket.sendto(data, address)
        except OSError as exc:
            self.drop(address, "send_failed", str(exc))

    def status(self):
        body = {"server": {"address": f"{self.config.host}:{self.config.port}",
                           "users": {name: {"groups": list(user.groups),
                                            "public": _format(user.public_endpoint),
                                            "private": _format(user.private_endpoint)}
                                     for name, user in self.server.users.items()},
                           "groups": {name: sorted(group.members)
                                      for name, group in self.server.groups.items()},
                           "counters": dict(self.server.counters)},
                "bridge": None,
                "relay": self.relay.status() if self.relay is not None else None}
        if self.bridge is not None:
            body["bridge"] = dict(self.bridge.status(),
                                  address=f"{self.config.host}:{self.config.bridge.port}",
                                  members=len(self.members))
        return body


def _format(endpoint):
    return None if endpoint is None else f"{endpoint[0]}:{endpoint[1]}"


def make_service(config, context):
    return OscGroupsDoor(config, context)
