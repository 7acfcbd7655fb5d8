"""OSCgroups door: the rendezvous server and the OSC <-> MIDI bridge (thin adapters).

Two UDP sockets on ``host``:

* the server port moves datagrams between the network and
  :class:`.server.RendezvousServer`. It is bound to one address, so every
  reply leaves from exactly the address the client sent to (the C++ client
  ignores replies from anywhere else, shared/protocols/oscgroups.md §2.3,
  §6.2); ``0.0.0.0`` is refused by :meth:`Config.check`. A group that names a
  gateway session (through ``groups`` or by having the same name) accepts
  the lower-case MD5 hex of the session passphrase as its group password,
  which is what OscGroupClient sends; other groups follow OSCgroups' own rule.
* the bridge port moves datagrams between the network and
  :class:`.bridge.Bridge`, an OSCgroups user that registers with this server
  over real UDP like any client, so clients list it, ping it and send it
  their traffic.

Every peer the server lists in a bridged group becomes an
:class:`OscPeerMember` of the group's session. It joins with
:class:`~gateway.registry.TrustedPeer`: the server has already checked the
peer's group password against the session passphrase (the bridge never sees
that password), and bridged groups must be declared sessions, which is all
TrustedPeer may join. The member stays while the server lists it and leaves
when the server purges it, so the registry releases whatever it held.

OSC peers of one group already hear each other directly (OscGroupClient sends
application traffic to every peer), so the bridge does not pass one OSC
peer's MIDI to another, except the note-offs the registry sends for a peer
that left. ``advertised_endpoint`` of the server stays free for a relay.
"""

import dataclasses
import secrets
import socket
import typing

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import protocol, task
from zope.interface import implementer

from gateway.config import bounded, port
from gateway.doorservice import DoorService
from gateway.interfaces import IMember
from gateway.midi import MidiEvent
from gateway.registry import JoinRefused, TrustedPeer

from . import bridge as bridge_core
from . import client, mapping, server, wire

DOOR = "oscgroups"
MAX_BRIDGED_GROUPS = 8        # keeps the bridge's alive bundle well inside one request
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024    # shared/performance.md: busy UDP sockets


@dataclasses.dataclass
class BridgeConfig:
    enabled: bool = True
    user: str = bounded("netgateway", doc="OSCgroups user name of the gateway in each group")
    password: typing.Optional[str] = bounded(
        None, doc="the bridge user's OSCgroups password; random at each start when null")
    port: int = port(22241, doc="UDP port of the bridge's own OSCgroups endpoint")
    groups: typing.List[str] = bounded(
        default_factory=lambda: ["demo"],
        doc="OSCgroups groups the gateway joins; each must map to a declared session")
    prefix: str = bounded("/midi", doc="OSC address prefix of MIDI messages")
    outgoing: str = bounded(mapping.READABLE, choices=mapping.OUTGOING_FORMS,
                            doc="readable: /midi/noteon ...; midi: OSC 'm' arguments")


@dataclasses.dataclass
class Config:
    enabled: bool = True
    host: str = bounded("127.0.0.1", doc="IPv4 address the server and bridge bind to")
    port: int = port(22242, doc="UDP port of the rendezvous server")
    timeout: int = bounded(server.DEFAULT_TIMEOUT, minimum=7, maximum=3600,
                           doc="seconds without user_alive before a user is purged;"
                               " clients send one every 6 s")
    max_users: int = bounded(server.DEFAULT_MAX_USERS, minimum=1, maximum=100000)
    max_groups: int = bounded(server.DEFAULT_MAX_GROUPS, minimum=1, maximum=100000)
    groups: dict = bounded(default_factory=dict,
                           doc="group name -> session name; by default a group is the"
                               " session of the same name")
    bridge: BridgeConfig = dataclasses.field(default_factory=BridgeConfig)

    def listening_ports(self, path):
        ports = [(f"{path}.port", "udp", self.port)]
        if self.bridge.enabled:
            ports.append((f"{path}.bridge.port", "udp", self.bridge.port))
        return ports

    def session_name(self, group_name):
        return self.groups.get(group_name, group_name)

    def check(self, name, config):
        problems = []
        if not wire.is_ipv4(self.host):
            problems.append(f"{name}.host: OSCgroups is IPv4 only; expected an IPv4 address"
                            f" such as 127.0.0.1, got {self.host!r}")
        elif self.host == "0.0.0.0":
            problems.append(f"{name}.host: expected the one address clients send to (such"
                            " as 127.0.0.1 or the host's public address), got 0.0.0.0:"
                            " replies from a wildcard socket can leave from another"
                            " address and OscGroupClient ignores them")
        declared = {session.name for session in config.sessions}
        for group, session in self.groups.items():
            if not isinstance(group, str) or not isinstance(session, str):
                problems.append(f"{name}.groups: expected group name: session name strings,"
                                f" got {group!r}: {session!r}")
            elif session not in declared:
                problems.append(f"{name}.groups.{group}: session {session!r} is not declared"
                                " in sessions; expected one of "
                                + (", ".join(sorted(declared)) or "(none declared)"))
        if self.bridge.enabled:
            problems.extend(self._check_bridge(f"{name}.bridge", declared))
        return problems

    def _check_bridge(self, path, declared):
        problems = []
        bridge = self.bridge
        if not bridge.user or len(bridge.user.encode("utf-8")) > server.MAX_STRING_BYTES:
            problems.append(f"{path}.user: expected 1 to {server.MAX_STRING_BYTES} bytes")
        if not 1 <= len(bridge.groups) <= MAX_BRIDGED_GROUPS:
            problems.append(f"{path}.groups: expected 1 to {MAX_BRIDGED_GROUPS} groups"
                            f" (or {path}.enabled: false)")
        if len(set(bridge.groups)) != len(bridge.groups):
            problems.append(f"{path}.groups: a group is listed twice")
        for index, group in enumerate(bridge.groups):
            session = self.session_name(group)
            if session not in declared:
                problems.append(f"{path}.groups[{index}]: group {group!r} is not a declared"
                                f" session (nor mapped to one in groups); expected one of "
                                + (", ".join(sorted(declared)) or "(none declared)"))
        try:
            mapping.OscMidiMapping(bridge.prefix, bridge.outgoing)
        except ValueError as exc:
            problems.append(f"{path}.prefix: {exc}")
        return problems


class _GroupPassword:
    """A credential holding what OscGroupClient sends: the MD5 hex of the passphrase."""

    passphrase = None

    def __init__(self, password_md5):
        self.password_md5 = password_md5

    def matches(self, secret):
        return secrets.compare_digest(wire.password_hash(secret).encode("ascii"),
                                      self.password_md5.encode("utf-8", "replace"))


class _Datagrams(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, on_datagram):
        self._on_datagram = on_datagram

    def datagramReceived(self, data, addr):
        self._on_datagram(data, addr)


@implementer(IMember)
class OscPeerMember:
    """An OSCgroups peer in one session, reached through the bridge socket."""

    door = DOOR

    def __init__(self, door, name, group):
        self.door_service = door
        self.name = name
        self.group = group
        self.membership = None

    def deliver(self, events, source):
        if source.door == DOOR and source.active:
            return      # the peers of a group exchange their own traffic directly
        self.door_service.send_midi(self.name, events)

    def membership_changed(self, change, member, session):
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
        self.server = server.RendezvousServer(
            max_users=config.max_users, max_groups=config.max_groups,
            timeout=config.timeout, authorize_group=self._authorize_group,
            on_drop=self._server_dropped, now=self.reactor.seconds())
        self.server_address = (config.host, config.port)
        self.bridge = None
        self.members = {}         # (peer name, group) -> OscPeerMember
        self._encoded = (None, None)
        self._ports = []
        self._purge = task.LoopingCall(self._purge_users)
        self._purge.clock = self.reactor
        self._tick = task.LoopingCall(self._bridge_tick)
        self._tick.clock = self.reactor
        if config.bridge.enabled:
            self.bridge = self._make_bridge(config, context.config)
        if context.metrics is not None:
            context.metrics.register(OscGroupsCollector(self))

    def _make_bridge(self, config, gateway_config):
        passphrases = {session.name: session.passphrase for session in gateway_config.sessions}
        groups = [(group, wire.password_hash(passphrases[config.session_name(group)]))
                  for group in config.bridge.groups]
        password = config.bridge.password or secrets.token_hex(16)
        return bridge_core.Bridge(
            config.bridge.user, wire.password_hash(password), groups, self.server_address,
            (config.host, config.bridge.port),
            mapping.OscMidiMapping(config.bridge.prefix, config.bridge.outgoing))

    # ------------------------------------------------------------------
    # Service

    def startService(self):
        super().startService()
        host = self.config.host
        self._server_port = self.reactor.listenUDP(
            self.config.port, _Datagrams(self._server_datagram), interface=host)
        self._ports.append(self._server_port)
        self._purge.start(self.server.purge_interval, now=False)
        if self.bridge is not None:
            self._bridge_port = self.reactor.listenUDP(
                self.config.bridge.port, _Datagrams(self._bridge_datagram), interface=host)
            self._bridge_port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                                RECEIVE_BUFFER_BYTES)
            self._ports.append(self._bridge_port)
            self._tick.start(client.TICK_INTERVAL, now=True)
        self.log.info("oscgroups: server on {host}:{port}, bridge {bridge}",
                      host=host, port=self.config.port,
                      bridge=(f"user {self.config.bridge.user!r} on port"
                              f" {self.config.bridge.port} in {self.config.bridge.groups}"
                              if self.bridge is not None else "off"))

    def stopService(self):
        super().stopService()
        for loop in (self._purge, self._tick):
            if loop.running:
                loop.stop()
        for member in list(self.members.values()):
            self._leave(member, "gateway stopping")
        ports, self._ports = self._ports, []
        for listening in ports:
            listening.stopListening()

    # ------------------------------------------------------------------
    # Rendezvous server

    def _server_datagram(self, data, addr):
        try:
            replies = self.server.datagram_received(data, addr, self.reactor.seconds())
        except Exception:
            # The core is fuzzed; should it still fail, one datagram must not matter.
            self.registry.drops.count(DOOR, "server_error")
            self.log.failure("oscgroups: server failed on a datagram from {peer}",
                             peer=addr)
            return
        for reply, destination in replies:
            self._write(self._server_port, reply, destination)

    def _server_dropped(self, counter, addr):
        self.drop(addr, counter.removeprefix("dropped_"))

    def _authorize_group(self, group_name, password_md5):
        session = self.registry.session(self.config.session_name(group_name))
        if session is None:
            return None
        return session.accepts(_GroupPassword(password_md5))

    def _purge_users(self):
        purged = self.server.purge(self.reactor.seconds())
        if purged:
            self.log.info("oscgroups: purged {users} after {timeout} s without user_alive",
                          users=purged, timeout=self.config.timeout)

    # ------------------------------------------------------------------
    # Bridge

    def _bridge_tick(self):
        self._perform(self.bridge.tick(self.reactor.seconds()))

    def _bridge_datagram(self, data, addr):
        self._perform(self.bridge.datagram_received(data, addr, self.reactor.seconds()))

    def _perform(self, actions):
        for action in actions:
            kind = type(action)
            if kind is client.SendTo:
                self._write(self._bridge_port, action.data, action.address)
            elif kind is bridge_core.PeerMidi:
                self._publish(action.name, action.messages)
            elif kind is bridge_core.PeerAlive:
                self._touch(action.name)
            elif kind is bridge_core.PeerListed:
                self._listed(action.name, action.groups)
            elif kind is bridge_core.PeerGone:
                self._listed(action.name, frozenset())
            else:
                self.drop(action.source, action.reason, amount=action.count)
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
                member.membership.touch()
                continue
            member = OscPeerMember(self, name, group)
            try:
                member.membership = self.registry.join(
                    self.config.session_name(group), member, TrustedPeer())
            except JoinRefused:
                continue      # counted and logged by the registry; retried at the next reply
            self.members[(name, group)] = member

    def _touch(self, name):
        for group in self.bridge.client.peers[name].groups:
            member = self.members.get((name, group))
            if member is not None:
                member.membership.touch()

    def _publish(self, name, messages):
        now = self.reactor.seconds()
        events = [MidiEvent(data, now) for data in messages]
        published = False
        for group in self.bridge.client.peers[name].groups:
            member = self.members.get((name, group))
            if member is not None:
                member.membership.publish(events)
                published = True
        if not published:
            self.drop(name, "not_a_member", amount=len(messages))

    def send_midi(self, name, events):
        # The registry hands the same list to every member: encode it once.
        if self._encoded[0] is not events:
            datagrams, too_large = self.bridge.encode_midi([event.data for event in events])
            if too_large:
                self.drop(None, "too_large_for_osc_peer", "MIDI message over"
                          f" {bridge_core.MAX_PEER_DATAGRAM} bytes as OSC", too_large)
            self._encoded = (events, datagrams)
        self._perform(self.bridge.send_to_peer(name, self._encoded[1],
                                               self.reactor.seconds()))

    def member_ended(self, member):
        self.members.pop((member.name, member.group), None)

    def _leave(self, member, reason):
        self.members.pop((member.name, member.group), None)
        member.membership.leave(reason)

    # ------------------------------------------------------------------

    def _write(self, listening, data, address):
        try:
            listening.write(data, address)
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
                "bridge": None}
        if self.bridge is not None:
            body["bridge"] = dict(self.bridge.status(),
                                  address=f"{self.config.host}:{self.config.bridge.port}",
                                  members=len(self.members))
        return body


def _format(endpoint):
    return None if endpoint is None else f"{endpoint[0]}:{endpoint[1]}"


class OscGroupsCollector:
    """Prometheus view of the door: users, groups, bridge peers and counters."""

    def __init__(self, door):
        self.door = door

    def collect(self):
        door = self.door
        users = GaugeMetricFamily("netgateway_oscgroups_users", "Registered OSCgroups users")
        users.add_metric([], len(door.server.users))
        yield users
        groups = GaugeMetricFamily("netgateway_oscgroups_groups", "OSCgroups groups")
        groups.add_metric([], len(door.server.groups))
        yield groups
        server_counters = CounterMetricFamily(
            "netgateway_oscgroups_server_events", "Rendezvous server events by kind",
            labels=["kind"])
        for kind, count in sorted(door.server.counters.items()):
            server_counters.add_metric([kind], count)
        yield server_counters
        if door.bridge is not None:
            peers = GaugeMetricFamily("netgateway_oscgroups_bridge_peers",
                                      "OSCgroups peers the bridge knows")
            peers.add_metric([], len(door.bridge.client.peers))
            yield peers


def make_service(config, context):
    return OscGroupsDoor(config, context)
