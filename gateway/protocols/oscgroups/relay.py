"""OSCgroups relay for members whose NAT defeats hole punching (sans-IO core).

OSCgroups never had a relay (shared/protocols/oscgroups.md §2.4, §7.6): a
client behind a symmetric NAT reaches a peer only when that peer has no NAT
at all. This relay fixes it without touching the clients. Hand-written: no
library relays OSCgroups.

**How unmodified clients are fooled into talking through it.** Every relayed
user U gets one relay port R(U) on the gateway. The server advertises R(U) as
U's *public* endpoint in user_info (hook ``advertised_endpoint``), so a peer X
pings and sends to R(U). X's pings name X (§4.3), which tells the relay that
datagrams reaching R(U) from that source are X's and opens a mapping in X's
NAT towards R(U). A datagram from X arriving on R(U) leaves from R(X) towards
the source U's own pings to R(X) came from. So U receives it from R(X), which
is exactly the public endpoint U was told for X: U credits it to X (§5.3) and
its NAT lets it in, because U sent to R(X) first. Nothing is rewritten; pings
pass through like data, and the path each client settles on is its "public"
endpoint, the relay.

Because X needs R(X) for the way back, relaying is decided per *pair*
(:meth:`Relay.relays_between`) and both get a port.

**Policy** (``never``, ``always``, ``auto``). ``auto`` relays a pair when
both are behind a NAT (private endpoint ≠ public endpoint) and one of them is
*flagged*: its NAT did not keep its private port as its public port, or the
gateway saw its pings arrive from another port than the one the server saw
(its NAT maps each destination to a new port, which hole punching cannot
guess; reported with :meth:`Relay.saw_mapping`). A member without NAT talks
to anyone directly (§2.4: bob ↔ pete works), and two cone NATs punch holes
fine. Users in ``exempt`` (the gateway's own bridge) are never relayed.

**Bounds.** At most ``max_allocations`` ports; a pair is relayed only if both
ports can be had. Allocations live as long as the registration (the adapter
calls :meth:`Relay.release` when the server purges the user). Each user's
forwarded datagrams are limited by a token bucket of ``packets_per_second``
(one second of burst). Only users sharing a group are ever joined, and a
ping only teaches a source that comes from the named user's registered
public or private IP, so the relay is no open proxy.

Ports are opened and closed through the injected ``bind(port) -> bool`` and
``unbind(port)``; drops are reported to ``on_drop(reason, source)``. Time is
a parameter.
"""

import collections

from . import wire

NEVER, ALWAYS, AUTO = "never", "always", "auto"
POLICIES = (NEVER, ALWAYS, AUTO)

_PING_MARKER = wire.PING.encode("ascii")


class Allocation:
    """User ``user_name``'s relay port and what it learnt from peers' pings."""

    __slots__ = ("user_name", "port", "peer_at", "peer_from", "packets", "bytes",
                 "pings", "tokens", "refilled")

    def __init__(self, user_name, port, tokens, now):
        self.user_name = user_name
        self.port = port
        self.peer_at = {}         # peer name -> source address of its pings to this port
        self.peer_from = {}       # the reverse: source address -> peer name
        self.packets = 0          # data datagrams from this user forwarded
        self.bytes = 0
        self.pings = 0
        self.tokens = tokens
        self.refilled = now

    def learn(self, peer_name, source):
        previous = self.peer_at.get(peer_name)
        if previous == source:
            return
        if previous is not None:
            del self.peer_from[previous]
        stale_owner = self.peer_from.get(source)
        if stale_owner is not None:
            del self.peer_at[stale_owner]
        self.peer_at[peer_name] = source
        self.peer_from[source] = peer_name

    def forget(self, peer_name):
        source = self.peer_at.pop(peer_name, None)
        if source is not None:
            del self.peer_from[source]

    def describe(self):
        return {"port": self.port, "packets": self.packets, "bytes": self.bytes,
                "pings": self.pings, "peers": sorted(self.peer_at)}


class Relay:
    """Relay ports for the users of a :class:`.server.RendezvousServer`."""

    def __init__(self, users, *, host, port_min, port_max, policy=AUTO, max_allocations=64,
                 packets_per_second=500, exempt=(), bind, unbind, on_drop=None):
        if policy not in POLICIES:
            raise ValueError(f"relay policy must be one of {POLICIES}, got {policy!r}")
        self.users = users        # the server's live name -> User mapping
        self.host = host
        self.port_range = range(port_min, port_max + 1)
        self.policy = policy
        self.max_allocations = max_allocations
        self.packets_per_second = packets_per_second
        self.exempt = frozenset(exempt)
        self.bind = bind
        self.unbind = unbind
        self.on_drop = on_drop
        self.allocations = {}     # user name -> Allocation
        self.by_port = {}         # port -> Allocation
        self.flagged = {}         # user name -> why auto relays it
        self.counters = collections.Counter()
        self._unusable = set()

    # ------------------------------------------------------------------
    # Policy

    def advertised_endpoint(self, subject, viewer, now):
        """(host, port) to show ``viewer`` as ``subject``'s public endpoint, or None."""
        if viewer is None or not self.relays_between(subject, viewer):
            return None
        missing = [user for user in (subject, viewer) if user.name not in self.allocations]
        if len(self.allocations) + len(missing) > self.max_allocations:
            # Half a pair would hold a port for nothing.
            self.counters["allocations_refused"] += 1
            return None
        if not all(self._allocate(user, now) for user in missing):
            return None
        return self.host, self.allocations[subject.name].port

    def relays_between(self, first, second):
        if self.policy == NEVER or first is second:
            return False
        if first.name in self.exempt or second.name in self.exempt:
            return False
        if self.policy == ALWAYS:
            return True
        return (_behind_nat(first) and _behind_nat(second)
                and (self._needs_relay(first) or self._needs_relay(second)))

    def _needs_relay(self, user):
        """Whether ``user``'s NAT defeats hole punching; the reason is kept for /status."""
        if user.name in self.flagged:
            return True
        if user.public_endpoint[1] != user.private_endpoint[1]:
            self.flagged[user.name] = "its NAT changed the port"
            return True
        return False

    def saw_mapping(self, user_name, source):
        """The bridge heard ``user_name`` from ``source``: flag a per-destination NAT."""
        user = self.users.get(user_name)
        if user is None or user_name in self.flagged or user.public_endpoint is None:
            return
        public_ip, public_port = user.public_endpoint
        if source[0] == public_ip and source[1] != public_port:
            self.flagged[user_name] = "its NAT maps each destination to another port"

    # ------------------------------------------------------------------
    # Allocations

    def _allocate(self, user, now):
        for port in self.port_range:
            if port in self.by_port or port in self._unusable:
                continue
            if not self.bind(port):
                self._unusable.add(port)
                continue
            allocation = Allocation(user.name, port, self.packets_per_second, now)
            self.allocations[user.name] = self.by_port[port] = allocation
            self.counters["allocations"] += 1
            return True
        self.counters["allocations_refused"] += 1
        return False

    def release(self, user_name):
        """Free ``user_name``'s port (the registration ended); forget it everywhere."""
        self.flagged.pop(user_name, None)
        allocation = self.allocations.pop(user_name, None)
        if allocation is None:
            return
        del self.by_port[allocation.port]
        for other in self.allocations.values():
            other.forget(user_name)
        self.unbind(allocation.port)
        self.counters["released"] += 1
        # The hot path counts per allocation; keep the totals once it is gone.
        self.counters["forwarded_packets"] += allocation.packets
        self.counters["forwarded_bytes"] += allocation.bytes
        self.counters["forwarded_pings"] += allocation.pings

    # ------------------------------------------------------------------
    # Datagrams

    def datagram_received(self, port, data, source, now):
        """A datagram reached relay ``port`` from ``source``: (from port, to address) or None."""
        receiver = self.by_port.get(port)
        if receiver is None:
            return None
        is_ping = _PING_MARKER in data and self._learn_from_ping(receiver, data, source)
        sender_name = receiver.peer_from.get(source)
        if sender_name is None:
            self._drop("relay_unknown_source", source)
            return None
        sender = self.allocations[sender_name]
        destination = sender.peer_at.get(receiver.user_name)
        if destination is None:
            if is_ping:
                # Normal while the pair meets: the receiver has not pinged yet.
                self.counters["pings_before_receiver"] += 1
            else:
                self._drop("relay_receiver_unknown", source)
            return None
        if not self._take_token(sender, now):
            self._drop("relay_rate_limited", source)
            return None
        if is_ping:
            sender.pings += 1
        else:
            sender.packets += 1
            sender.bytes += len(data)
        return sender.port, destination

    def _learn_from_ping(self, receiver, data, source):
        try:
            messages = wire.parse_packet(data)
        except wire.MalformedPacket:
            return False
        pinged = False
        for message in messages:
            if message.address != wire.PING:
                continue
            try:
                name = wire.Ping.from_message(message).user_name
            except wire.MalformedPacket:
                continue
            pinged = True
            if self._may_reach(name, receiver.user_name, source):
                receiver.learn(name, source)
        return pinged

    def _may_reach(self, sender_name, receiver_name, source):
        if sender_name == receiver_name or sender_name not in self.allocations:
            return False
        sender = self.users.get(sender_name)
        receiver = self.users.get(receiver_name)
        if sender is None or receiver is None or sender.groups.keys().isdisjoint(receiver.groups):
            return False
        return source[0] in (sender.public_endpoint[0], sender.private_endpoint[0])

    def _take_token(self, allocation, now):
        rate = self.packets_per_second
        tokens = allocation.tokens + (now - allocation.refilled) * rate
        allocation.refilled = now
        if tokens > rate:
            tokens = rate
        if tokens < 1:
            allocation.tokens = tokens
            return False
        allocation.tokens = tokens - 1
        return True

    def _drop(self, reason, source):
        self.counters[reason] += 1
        if self.on_drop is not None:
            self.on_drop(reason, source)

    # ------------------------------------------------------------------

    def totals(self):
        """Data packets, bytes and pings forwarded since start."""
        allocations = self.allocations.values()
        return {"packets": self.counters["forwarded_packets"] + sum(a.packets for a in allocations),
                "bytes": self.counters["forwarded_bytes"] + sum(a.bytes for a in allocations),
                "pings": self.counters["forwarded_pings"] + sum(a.pings for a in allocations)}

    def status(self):
        return {"policy": self.policy, "host": self.host,
                "ports": f"{self.port_range.start}-{self.port_range.stop - 1}",
                "allocations": {name: allocation.describe()
                                for name, allocation in self.allocations.items()},
                "flagged": dict(self.flagged), "forwarded": self.totals(),
                "counters": dict(self.counters)}


def _behind_nat(user):
    return user.private_endpoint != user.public_endpoint
