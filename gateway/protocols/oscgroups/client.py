"""OSCgroups client core (sans-IO): registration, NAT hole punching, forwarding.

Implements the client side of shared/protocols/oscgroups.md: the alive
bundle of §4.1 every 6 s, peers learnt from user_info (§5.4), pings of §4.3
to each peer's private, public and ping endpoints, the path choice of §5.3
(private, else public, else ping endpoint; nothing until a peer has pinged
us), the establishment / steady / retry ping schedule and the 180-s peer
purge of §5.4, and the data path of §5.5. Hand-written because no library
implements OSCgroups; OSC goes through :mod:`.wire` (python-osc).

Deliberate differences from the C++ client:

* endpoints are compared as real addresses, so the §7.5 sign-extension bug
  (every ping credited to the ping endpoint) is not reproduced;
* malformed or oversized datagrams never stop the client (§7.3); server
  datagrams that fail to parse are counted and dropped;
* a ping from a user we don't know yet makes us re-register at once (at most
  once a second), so we learn the peer from the reply instead of waiting up to
  6 s for the next alive;
* an endpoint inside the optional ``relay`` (host, first port, last port) is
  reported as the ``relay`` path: the gateway's relay is listed by the
  server in place of a peer's public endpoint (see :mod:`.relay`). The
  private endpoint of such a listing is the peer's direct candidate (its
  public endpoint, or its LAN endpoint behind the same NAT), so a path there
  is reported as ``direct``.

For the gateway's bridge (:mod:`.bridge`), which is one user in several
groups, a client can also join ``extra_groups`` (the user_alive carries one
pair per group, which the wire format allows, and one query per group goes
with it), remembers which of its groups each peer is listed in
(``Peer.groups``), can forget a peer the server stopped listing
(``forget_unlisted_after`` seconds; the C++ client never does, §5.4), and can
send to one peer at a time (:meth:`GroupClient.send_to_peer`).

Feed it :meth:`GroupClient.timer` every :data:`TICK_INTERVAL` seconds, every
datagram from the network to :meth:`GroupClient.receive` and every datagram
from the local application to :meth:`GroupClient.send_from_app`, with the
time; it returns :class:`~gateway.actions.Send` (from the external socket)
and :class:`DeliverToApp` actions (:mod:`gateway.actions`). Human-readable lines accumulate for
:meth:`GroupClient.take_events`. Time is whole seconds, as in the original.
"""

import collections
from typing import NamedTuple

from gateway.actions import Send

from . import wire

TICK_INTERVAL = 0.6
ALIVE_INTERVAL = 6
ESTABLISHMENT_ROUNDS = 5
STEADY_PING_INTERVAL = 6
# While data flows the data itself keeps NAT mappings open.
BUSY_PING_INTERVAL = 30
RETRY_AFTER = 60
PEER_PURGE_AFTER = 180
EARLY_REREGISTER_INTERVAL = 1

PRIVATE = "private"
PUBLIC = "public"
PING_ENDPOINT = "ping"
RELAY = "relay"
DIRECT = "direct"
_PREFERENCE = (PRIVATE, PUBLIC, PING_ENDPOINT)

# Cheap test before parsing a peer datagram: only pings concern the core.
_PING_MARKER = wire.PING.encode("ascii")


class DeliverToApp(NamedTuple):
    """Send ``data`` to the local application (localhost:localrxport)."""

    data: bytes


class Endpoint:
    __slots__ = ("address", "ping_received", "last_ping_received",
                 "pings_sent", "packets_forwarded")

    def __init__(self, address=None):
        self.address = address
        self.reset()

    def reset(self):
        self.ping_received = False
        self.last_ping_received = None
        self.pings_sent = 0
        self.packets_forwarded = 0


class Peer:
    __slots__ = ("name", "endpoints", "establishing", "rounds_done", "next_round",
                 "last_alive_reported", "last_ping_received", "last_forwarded",
                 "last_steady_ping", "reported_path", "groups", "last_listed")

    def __init__(self, name, private_address, public_address):
        self.name = name
        self.endpoints = {PRIVATE: Endpoint(private_address),
                          PUBLIC: Endpoint(public_address),
                          PING_ENDPOINT: Endpoint()}
        self.establishing = False
        self.rounds_done = 0
        self.next_round = 0
        self.last_alive_reported = 0
        self.last_ping_received = None
        self.last_forwarded = None
        self.last_steady_ping = 0
        self.reported_path = None
        self.groups = frozenset()     # our groups the server last listed it in
        self.last_listed = 0

    def selected(self):
        """(kind, Endpoint) that data goes to, or None before any ping arrived."""
        for kind in _PREFERENCE:
            endpoint = self.endpoints[kind]
            if endpoint.ping_received:
                return kind, endpoint
        return None


class GroupClient:
    """One OSCgroups user in one group, as OscGroupClient is."""

    def __init__(self, user_name, user_password_md5, group_name, group_password_md5,
                 server, private_endpoint, relay=None, *, extra_groups=(),
                 forget_unlisted_after=None):
        self.user_name = user_name
        self.user_password_md5 = user_password_md5
        self.group_name = group_name
        self.group_password_md5 = group_password_md5
        self.groups = ((group_name, group_password_md5),) + tuple(map(tuple, extra_groups))
        self._group_names = frozenset(name for name, _password in self.groups)
        self.forget_unlisted_after = forget_unlisted_after
        self.server = tuple(server)
        self.relay = relay
        self.peers = {}
        self.counters = collections.Counter()
        self._events = []
        self._last_alive_sent = None
        # Built once, like the original: the same bytes every 6 s.
        self._alive_bundle = wire.encode_bundle(
            [wire.UserAlive(user_name, user_password_md5, tuple(private_endpoint),
                            self.groups).encode()]
            + [wire.GroupUsersQuery(*group).encode() for group in self.groups])
        self._ping_bundle = wire.encode_bundle([wire.Ping(user_name).encode()])

    def take_events(self):
        events, self._events = self._events, []
        return events

    def paths(self):
        """{peer name: (path kind, address) or None} as data would go now."""
        return {name: self._path(peer) for name, peer in self.peers.items()}

    # ------------------------------------------------------------------
    # Inputs

    def timer(self, now):
        seconds = int(now)
        actions = []
        if self._last_alive_sent is None or seconds - self._last_alive_sent >= ALIVE_INTERVAL:
            actions.append(self._alive(seconds))
        for peer in list(self.peers.values()):
            if self._expired(peer, seconds):
                del self.peers[peer.name]
                self._events.append(f"peer '{peer.name}' purged after {PEER_PURGE_AFTER} s of silence")
            elif self._unlisted(peer, seconds):
                del self.peers[peer.name]
                self._events.append(f"peer '{peer.name}' forgotten: the server stopped listing it")
            else:
                actions.extend(self._scheduled_pings(peer, seconds))
        return actions

    def send_from_app(self, data, now):
        seconds = int(now)
        actions = []
        for peer in self.peers.values():
            selected = peer.selected()
            if selected is None:
                continue
            _kind, endpoint = selected
            endpoint.packets_forwarded += 1
            peer.last_forwarded = seconds
            actions.append(Send(data, endpoint.address))
        return actions

    def send_to_peer(self, name, data, now):
        """[Send] of ``data`` on the path to peer ``name``; [] while it has none."""
        peer = self.peers.get(name)
        selected = peer.selected() if peer is not None else None
        if selected is None:
            return []
        _kind, endpoint = selected
        endpoint.packets_forwarded += 1
        peer.last_forwarded = int(now)
        return [Send(data, endpoint.address)]

    def peer_at(self, address):
        """The name of the peer with an endpoint at ``address``, or None."""
        address = (address[0], address[1])
        for peer in self.peers.values():
            for endpoint in peer.endpoints.values():
                if endpoint.address == address:
                    return peer.name
        return None

    def receive(self, data, source, now):
        seconds = int(now)
        source = (source[0], source[1])
        if source == self.server:
            return self._server_datagram(data, seconds)
        return [DeliverToApp(data)] + self.pinged(self.pings_in(data), source, now)

    def pinged(self, pings, source, now):
        """What the well-formed ``pings`` of one peer datagram from ``source`` ask for."""
        actions = []
        for ping in pings:
            actions.extend(self._ping_received(ping.user_name, (source[0], source[1]),
                                               int(now)))
        return actions

    def pings_in(self, data):
        """The well-formed pings of a peer datagram (counting the malformed ones)."""
        if _PING_MARKER not in data:
            return []
        try:
            messages = wire.parse_packet(data)
        except wire.MalformedPacket:
            self.counters["malformed_peer_datagrams"] += 1
            return []
        pings = []
        for message in messages:
            if message.address != wire.PING:
                continue
            try:
                pings.append(wire.Ping.from_message(message))
            except wire.MalformedPacket:
                self.counters["bad_pings"] += 1
        return pings

    # ------------------------------------------------------------------
    # Server replies

    def _server_datagram(self, data, seconds):
        try:
            messages = wire.parse_packet(data)
        except wire.MalformedPacket:
            self.counters["malformed_server_datagrams"] += 1
            return []
        actions = []
        for message in messages:
            try:
                reply = wire.decode_message(message)
            except wire.MalformedPacket:
                self.counters["bad_server_messages"] += 1
                continue
            if isinstance(reply, wire.UserInfo):
                actions.extend(self._user_info(reply, seconds))
            elif isinstance(reply, (wire.UserAliveStatus, wire.UserGroupStatus)):
                self._status(reply)
        return actions

    def _status(self, reply):
        if (reply.user_name, reply.user_password) != (self.user_name, self.user_password_md5):
            return
        if isinstance(reply, wire.UserAliveStatus):
            if reply.status == wire.STATUS_OK:
                self._events.append(f"ok: user '{self.user_name}' is registered with server")
            else:
                self._events.append(f"user registration error: server returned status of "
                                    f"'{reply.status}' for user '{self.user_name}'")
        elif (reply.group_name, reply.group_password) in self.groups:
            if reply.status == wire.STATUS_OK:
                self._events.append(f"ok: user '{self.user_name}' is a member of group "
                                    f"'{reply.group_name}'")
            else:
                self._events.append(f"group membership error: server returned status of "
                                    f"'{reply.status}' for user '{self.user_name}' membership "
                                    f"of group '{reply.group_name}'")

    def _user_info(self, info, seconds):
        self._events.append(
            f"user info received for '{info.user_name}', private: {_format(info.private_endpoint)} "
            f"public: {_format(info.public_endpoint)}")
        listed_in = self._group_names.intersection(info.groups)
        if info.user_name == self.user_name or not listed_in:
            return []
        peer = self.peers.get(info.user_name)
        if peer is None:
            peer = self.peers[info.user_name] = Peer(
                info.user_name, info.private_endpoint, info.public_endpoint)
            changed = True
        else:
            changed = False
            for kind, address in ((PRIVATE, info.private_endpoint), (PUBLIC, info.public_endpoint)):
                endpoint = peer.endpoints[kind]
                if endpoint.address != address:
                    endpoint.address = address
                    endpoint.reset()
                    peer.endpoints[PING_ENDPOINT].reset()
                    changed = True
        peer.last_alive_reported = seconds - info.seconds_since_alive
        peer.groups = listed_in
        peer.last_listed = seconds
        if not changed:
            return []
        self._report_path(peer)
        return self._start_establishment(peer, seconds)

    # ------------------------------------------------------------------
    # Pings

    def _ping_received(self, name, source, seconds):
        peer = self.peers.get(name)
        if peer is None:
            self.counters["pings_from_unknown_users"] += 1
            registered_recently = (self._last_alive_sent is not None and
                                   seconds - self._last_alive_sent < EARLY_REREGISTER_INTERVAL)
            if name != self.user_name and not registered_recently:
                return [self._alive(seconds)]
            return []
        endpoint = self._credit(peer, source)
        first_from_here = not endpoint.ping_received
        endpoint.ping_received = True
        endpoint.last_ping_received = seconds
        peer.last_ping_received = seconds
        self._report_path(peer)
        if first_from_here:
            return self._start_establishment(peer, seconds)
        return []

    @staticmethod
    def _credit(peer, source):
        for kind in (PRIVATE, PUBLIC):
            if peer.endpoints[kind].address == source:
                return peer.endpoints[kind]
        endpoint = peer.endpoints[PING_ENDPOINT]
        if endpoint.address != source:
            endpoint.address = source
            endpoint.reset()
        return endpoint

    def _start_establishment(self, peer, seconds):
        peer.establishing = True
        peer.rounds_done = 0
        return self._round(peer, seconds)

    def _round(self, peer, seconds):
        peer.rounds_done += 1
        gap = min(int(STEADY_PING_INTERVAL * (peer.rounds_done + 1) / 5), STEADY_PING_INTERVAL)
        peer.next_round = seconds + gap
        endpoints = [peer.endpoints[PRIVATE], peer.endpoints[PUBLIC]]
        if peer.endpoints[PING_ENDPOINT].address is not None:
            endpoints.append(peer.endpoints[PING_ENDPOINT])
        return [self._ping(endpoint) for endpoint in endpoints]

    def _ping(self, endpoint):
        endpoint.pings_sent += 1
        return Send(self._ping_bundle, endpoint.address)

    def _scheduled_pings(self, peer, seconds):
        if peer.establishing:
            if peer.endpoints[PRIVATE].ping_received or (
                    peer.rounds_done >= ESTABLISHMENT_ROUNDS and peer.last_ping_received is not None):
                peer.establishing = False
                peer.last_steady_ping = seconds
                return []
            return self._round(peer, seconds) if seconds >= peer.next_round else []
        if peer.last_ping_received is not None and seconds - peer.last_ping_received > RETRY_AFTER:
            if peer.endpoints[PRIVATE].ping_received:
                return [self._ping(peer.endpoints[PRIVATE])]
            return self._round(peer, seconds)
        busy = peer.last_forwarded is not None and seconds - peer.last_forwarded < STEADY_PING_INTERVAL
        interval = BUSY_PING_INTERVAL if busy else STEADY_PING_INTERVAL
        if seconds - peer.last_steady_ping < interval:
            return []
        peer.last_steady_ping = seconds
        return [self._ping(peer.selected()[1])]

    # ------------------------------------------------------------------

    def _alive(self, seconds):
        self._last_alive_sent = seconds
        return Send(self._alive_bundle, self.server)

    @staticmethod
    def _expired(peer, seconds):
        newest = peer.last_alive_reported
        if peer.last_ping_received is not None:
            newest = max(newest, peer.last_ping_received)
        return seconds - newest > PEER_PURGE_AFTER

    def _unlisted(self, peer, seconds):
        return (self.forget_unlisted_after is not None
                and seconds - peer.last_listed > self.forget_unlisted_after)

    def _path(self, peer):
        selected = peer.selected()
        if selected is None:
            return None
        kind, endpoint = selected
        if self._is_relay(endpoint.address):
            return RELAY, endpoint.address
        if kind == PRIVATE and self._is_relay(peer.endpoints[PUBLIC].address):
            return DIRECT, endpoint.address
        return kind, endpoint.address

    def _is_relay(self, address):
        if self.relay is None:
            return False
        host, first_port, last_port = self.relay
        return address[0] == host and first_port <= address[1] <= last_port

    def _report_path(self, peer):
        path = self._path(peer)
        if path != peer.reported_path:
            peer.reported_path = path
            if path is None:
                self._events.append(f"path to '{peer.name}': none yet")
            else:
                kind, address = path
                self._events.append(f"path to '{peer.name}': {kind} {_format(address)}")


def _format(endpoint):
    return f"{endpoint[0]}:{endpoint[1]}"
