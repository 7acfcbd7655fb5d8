"""OSCgroups relay for members whose NAT defeats hole punching (sans-IO core).

OSCgroups never had a relay (shared/protocols/oscgroups.md §2.4, §7.6): a
client behind a symmetric NAT reaches a peer only when that peer has no NAT
at all. This relay fixes it without touching the clients. Hand-written: no
library relays OSCgroups.

**How unmodified clients are fooled into talking through it.** Every relayed
user U gets one relay port R(U) on the gateway. The server lists R(U) as U's
*public* endpoint in user_info (hook ``listed_endpoints``), so a peer X pings
and sends to R(U). X's pings name X (§4.3), which tells the relay that
datagrams reaching R(U) from that source are X's and opens a mapping in X's
NAT towards R(U). A datagram from X arriving on R(U) leaves from R(X) towards
the source U's own pings to R(X) came from. So U receives it from R(X), which
is exactly the public endpoint U was told for X: U credits it to X (§5.3) and
its NAT lets it in, because U sent to R(X) first. Nothing is rewritten; pings
pass through like data.

Because X needs R(X) for the way back, relaying is decided per *pair*
(:meth:`Relay.relays_between`) and both get a port.

**A fallback, not a detour.** A client sends to the first of a peer's
endpoints it heard a ping from, in the order private, public, ping endpoint
(§5.3). For a pair that may well punch a hole, the listing puts the direct
candidate first and the relay second: the peer's *public* endpoint in the
private slot (its LAN endpoint instead when both are behind the same NAT
address) and R(peer) in the public slot, so a client pings both and keeps the
direct path when it works. The C++ client, though, credits every ping from an
address of 128.0.0.0 and up to its ping endpoint (§7.5) and restarts
establishment, with a round of pings to every endpoint, whenever that ping
endpoint changes: were the relay to pass pings while the direct path also
works, pings would arrive over both and each round would set off more rounds
on the other side (measured on the NAT rig: some 1300 pings per client in 7 s
instead of 21). So the relay *holds back* a peer's pings towards a client
until that client has gone on pinging the relay for :data:`PROBATION` seconds:
a client that hears its peer directly stops pinging the other endpoints when
establishment ends (at most 15 s after its last restart, §5.4), one that hears
nothing pings every endpoint every 6 s for ever. From then on, and as soon as
the client sends data through the relay, the peer's pings pass too. Data
always passes: a client sends it only where it heard a ping.

**Policy** (``never``, ``always``, ``auto``). ``auto`` lists the relay for
every pair of users that are both behind a NAT (private endpoint ≠ public
endpoint): as a fallback as above, or alone at once when one of them is
*flagged*: its NAT did not keep its private port as its public port, or the
gateway saw its pings arrive from another port than the one the server saw
(its NAT maps each destination to a new port, which hole punching cannot
guess; reported with :meth:`Relay.saw_mapping`). Such a pair is listed with
its private endpoints and the relay, and the relay passes pings at once
(unless the two share a public address, where the private one may work). A
member without NAT talks to anyone directly (§2.4: bob ↔ pete works).
``always`` lists only the relay, for both endpoints, for every pair. Users in
``exempt`` (the gateway's own bridge) are never relayed.

**Refused users get nothing.** A ping from a source whose registration the
server refused (``refused``: the server's :attr:`.server.RendezvousServer.refused`)
teaches the relay nothing and flags nobody, whatever name it gives.

**Bounds.** At most ``max_allocations`` ports; a pair is relayed only if both
ports can be had. Allocations live as long as the registration (the adapter
calls :meth:`Relay.release` when the server purges the user). Each user's
forwarded datagrams are limited by a token bucket of ``packets_per_second``
(one second of burst). Only users sharing a group are ever joined, and a
ping only teaches a source that comes from the named user's registered
public or private IP, so the relay is no open proxy.

The relay does no I/O and calls nothing back for it: it returns actions for
the adapter to carry out. Listing a pair (:meth:`Relay.listed_endpoints`)
appends :class:`OpenPort` for each port it allocates; a port the adapter
cannot open goes back with :meth:`Relay.port_unavailable`, and the user gets
another one at the next listing. :meth:`Relay.release` returns
:class:`ClosePort`; :meth:`Relay.receive` returns a Send, a Drop (counted and
to be logged; :mod:`gateway.actions`) or None (nothing to do). Time is a
parameter.
"""

import collections
from typing import NamedTuple

from gateway.actions import Drop, Send

from . import wire

NEVER, ALWAYS, AUTO = "never", "always", "auto"
POLICIES = (NEVER, ALWAYS, AUTO)

_PING_MARKER = wire.PING.encode("ascii")

# A client that hears its peer directly pings the peer's other endpoints for at
# most 15 s after its last establishment restart, which comes at most about 7 s
# after its first ping (§5.4); one that hears nothing pings them every 6 s. So
# pings to a relay port that go on for longer than this mean the direct path failed.
PROBATION = 25
# A pause in a client's pings to a relay port longer than this ends a run (§5.4:
# at most 6 s between establishment rounds, in whole seconds).
RUN_GAP = 10


class OpenPort(NamedTuple):
    """Bind relay port ``port``; report a failure with :meth:`Relay.port_unavailable`."""

    port: int


class ClosePort(NamedTuple):
    """Close relay port ``port``."""

    port: int


class Allocation:
    """User ``user_name``'s relay port and what it learnt from peers' pings."""

    __slots__ = ("user_name", "port", "peer_at", "peer_from", "runs", "relying",
                 "packets", "bytes", "pings", "tokens", "refilled")

    def __init__(self, user_name, port, tokens, now):
        self.user_name = user_name
        self.port = port
        self.peer_at = {}         # peer name -> source address of its pings to this port
        self.peer_from = {}       # the reverse: source address -> peer name
        self.runs = {}            # peer name -> [first, last] time of its run of pings here
        self.relying = set()      # peers that hear this user only through the relay
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
        self.runs.pop(peer_name, None)
        self.relying.discard(peer_name)

    def pinged_by(self, peer_name, now):
        """``peer_name`` pinged this port; it relies on the relay once its pings outlast
        establishment (:data:`PROBATION`)."""
        run = self.runs.get(peer_name)
        if run is None or now - run[1] > RUN_GAP:
            run = self.runs[peer_name] = [now, now]
        run[1] = now
        if now - run[0] >= PROBATION:
            self.relying.add(peer_name)

    def describe(self):
        return {"port": self.port, "packets": self.packets, "bytes": self.bytes,
                "pings": self.pings, "peers": sorted(self.peer_at),
                "relying": sorted(self.relying)}


class Relay:
    """Relay ports for the users of a :class:`.server.RendezvousServer`."""

    def __init__(self, users, *, host, port_min, port_max, policy=AUTO, max_allocations=64,
                 packets_per_second=500, exempt=(), refused=None):
        if policy not in POLICIES:
            raise ValueError(f"relay policy must be one of {POLICIES}, got {policy!r}")
        self.users = users        # the server's live name -> User mapping
        self.host = host
        self.port_range = range(port_min, port_max + 1)
        self.policy = policy
        self.max_allocations = max_allocations
        self.packets_per_second = packets_per_second
        self.exempt = frozenset(exempt)
        self.refused = refused if refused is not None else {}   # source -> refusal
        self.allocations = {}     # user name -> Allocation
        self.by_port = {}         # port -> Allocation
        self.flagged = {}         # user name -> why auto relays it
        self.counters = collections.Counter()
        self._unusable = set()

    # ------------------------------------------------------------------
    # Policy

    def listed_endpoints(self, subject, viewer, now, actions):
        """(private, public) endpoints to list ``subject`` with for ``viewer``, or None.

        None keeps the real ones: for ``viewer``'s own entry, a non-member's
        query (``viewer`` None), a pair that is not relayed, or when ports run out.
        An :class:`OpenPort` for every port allocated is appended to ``actions``.
        """
        if viewer is None or not self.relays_between(subject, viewer):
            return None
        missing = [user for user in (subject, viewer) if user.name not in self.allocations]
        if len(self.allocations) + len(missing) > self.max_allocations:
            # Half a pair would hold a port for nothing.
            self.counters["allocations_refused"] += 1
            return None
        if not all(self._allocate(user, now, actions) for user in missing):
            return None
        relay = (self.host, self.allocations[subject.name].port)
        if self.policy == ALWAYS:
            return relay, relay
        if (self._relay_only(subject, viewer)
                or subject.public_endpoint[0] == viewer.public_endpoint[0]):
            return subject.private_endpoint, relay
        return subject.public_endpoint, relay

    def relays_between(self, first, second):
        if self.policy == NEVER or first is second:
            return False
        if first.name in self.exempt or second.name in self.exempt:
            return False
        if self.policy == ALWAYS:
            return True
        return _behind_nat(first) and _behind_nat(second)

    def _relay_only(self, first, second):
        """Whether the pair cannot meet directly: the relay passes its pings at once."""
        if self.policy == ALWAYS:
            return True
        flagged = [self._needs_relay(user) for user in (first, second)]
        return any(flagged) and first.public_endpoint[0] != second.public_endpoint[0]

    def _pair_relay_only(self, first_name, second_name):
        first, second = self.users.get(first_name), self.users.get(second_name)
        return first is not None and second is not None and self._relay_only(first, second)

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
        if (source[0], source[1]) in self.refused:
            return          # an impostor whose registration was refused
        public_ip, public_port = user.public_endpoint
        if source[0] == public_ip and source[1] != public_port:
            self.flagged[user_name] = "its NAT maps each destination to another port"

    # ------------------------------------------------------------------
    # Allocations

    def _allocate(self, user, now, actions):
        for port in self.port_range:
            if port in self.by_port or port in self._unusable:
                continue
            allocation = Allocation(user.name, port, self.packets_per_second, now)
            self.allocations[user.name] = self.by_port[port] = allocation
            self.counters["allocations"] += 1
            actions.append(OpenPort(port))
            return True
        self.counters["allocations_refused"] += 1
        return False

    def port_unavailable(self, port):
        """The adapter could not open ``port``: never use it again, drop its allocation."""
        self._unusable.add(port)
        self.counters["ports_unavailable"] += 1
        allocation = self.by_port.get(port)
        if allocation is not None:
            self._forget_allocation(allocation)

    def release(self, user_name):
        """Free ``user_name``'s port (the registration ended); forget it everywhere.

        Returns [:class:`ClosePort`], or [] when it held none.
        """
        self.flagged.pop(user_name, None)
        allocation = self.allocations.get(user_name)
        if allocation is None:
            return []
        self._forget_allocation(allocation)
        self.counters["released"] += 1
        return [ClosePort(allocation.port)]

    def _forget_allocation(self, allocation):
        user_name = allocation.user_name
        del self.allocations[user_name]
        del self.by_port[allocation.port]
        for other in self.allocations.values():
            other.forget(user_name)
        # The hot path counts per allocation; keep the totals once it is gone.
        self.counters["forwarded_packets"] += allocation.packets
        self.counters["forwarded_bytes"] += allocation.bytes
        self.counters["forwarded_pings"] += allocation.pings

    # ------------------------------------------------------------------
    # Datagrams

    def receive(self, data, source, now, port):
        """A datagram reached relay ``port`` from ``source``: one Send (``via`` the relay
        port it leaves from), one Drop, or None (nothing to do).

        One action or none rather than a list: this is the relay's per-datagram path.
        """
        receiver = self.by_port.get(port)
        if receiver is None:
            return None
        is_ping = _PING_MARKER in data and self._learn_from_ping(receiver, data, source)
        sender_name = receiver.peer_from.get(source)
        if sender_name is None:
            return self._drop("relay_unknown_source", source)
        if is_ping:
            receiver.pinged_by(sender_name, now)
        else:
            # Data here means the sender chose the relay to reach the receiver.
            receiver.relying.add(sender_name)
        sender = self.allocations[sender_name]
        destination = sender.peer_at.get(receiver.user_name)
        if destination is None:
            if is_ping:
                # Normal while the pair meets: the receiver has not pinged yet.
                self.counters["pings_before_receiver"] += 1
                return None
            return self._drop("relay_receiver_unknown", source)
        if is_ping and receiver.user_name not in sender.relying and not self._pair_relay_only(
                sender_name, receiver.user_name):
            # The receiver may hear the sender directly: wait until it shows it does not.
            self.counters["pings_held"] += 1
            return None
        if not self._take_token(sender, now):
            return self._drop("relay_rate_limited", source)
        if is_ping:
            sender.pings += 1
        else:
            sender.packets += 1
            sender.bytes += len(data)
        return Send(data, destination, sender.port)

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
        if (source[0], source[1]) in self.refused:
            self.counters["pings_from_refused_sources"] += 1
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
        return Drop(reason, source)

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
