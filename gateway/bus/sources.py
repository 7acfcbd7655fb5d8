"""Per-source limits, before any credential or parsing (sans-IO: addresses and times in,
a refusal reason or None out).

A flood costs the gateway something for every connection (a socket, a TLS
handshake, an HTTP upgrade) and every datagram (a read, a parse) before any
credential is seen. The gates answer before that: at accept time for
connections (:class:`SourceGate`), before the door reads a datagram for
datagrams (:class:`DatagramGate`). Each keeps a token bucket per address,
and one per /24 or /64 so a host cannot dodge it by walking its addresses;
the connection gate also keeps one for all addresses together, and bounds how
many connections an address holds at once. Buckets are bounded: past ``max_sources`` the longest idle half is
forgotten, which only makes a gate more lenient. Exempt networks (loopback by
default: a reverse proxy, the tests, the benches) are never limited.
"""

import ipaddress

from gateway.addresses import peer_address

RATE = "connection_rate"
NETWORK_RATE = "network_connection_rate"
TOTAL_RATE = "total_connection_rate"
CONCURRENT = "concurrent_connections"
DATAGRAM_RATE = "datagram_rate"
NETWORK_DATAGRAM_RATE = "network_datagram_rate"
PRE_JOIN_MESSAGES = "pre_join_messages"
PRE_JOIN_BYTES = "pre_join_bytes"


class SourceKeys:
    """A peer's host string -> (its address, its network), or None when exempt or no address.

    Cached per host string: the datagram gate asks for every datagram, and
    parsing an address each time would cost more than the bucket arithmetic.
    """

    def __init__(self, exempt=(), ipv4_prefix=24, ipv6_prefix=64, max_hosts=65536):
        self.exempt = [ipaddress.ip_network(cidr, strict=False) for cidr in exempt]
        self.prefixes = {4: ipv4_prefix, 6: ipv6_prefix}
        self.max_hosts = max_hosts
        self._keys = {}

    def __call__(self, host):
        try:
            return self._keys[host]
        except KeyError:
            pass
        if len(self._keys) >= self.max_hosts:
            self._keys.clear()
        keys = self._keys[host] = self._work_out(host)
        return keys

    def _work_out(self, host):
        address = peer_address(host)
        if address is None or any(address in network for network in self.exempt):
            return None
        network = ipaddress.ip_network(f"{address}/{self.prefixes[address.version]}",
                                       strict=False)
        return str(address), str(network)


class TokenBuckets:
    """Token buckets by key, each filled at its caller's rate up to its burst."""

    def __init__(self, max_keys=20000):
        self.max_keys = max_keys
        self._buckets = {}         # key -> [tokens, last time]

    def take(self, key, per_second, burst, now):
        """Take one token from ``key``'s bucket: False when it has none."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_idle_half()
            bucket = self._buckets[key] = [burst, now]
        else:
            bucket[0] = min(burst, bucket[0] + (now - bucket[1]) * per_second)
            bucket[1] = now
        if bucket[0] < 1:
            return False
        bucket[0] -= 1
        return True

    def _forget_idle_half(self):
        by_age = sorted(self._buckets.items(), key=lambda item: item[1][1])
        self._buckets = dict(by_age[len(by_age) // 2:])

    def __len__(self):
        return len(self._buckets)


class SourceGate:
    """New connections: a rate per address, per network and in all, and how many at once
    per address.

    The rate in all (of every address not exempt) is what holds when a flood
    comes from more networks than the per-network rate can tell apart: members
    already in keep playing while newcomers may have to try again.
    """

    def __init__(self, per_second, burst, network_per_second, network_burst, max_concurrent,
                 total_per_second=None, total_burst=None, exempt=(), ipv4_prefix=24,
                 ipv6_prefix=64, max_sources=20000):
        self.per_second = per_second
        self.burst = burst
        self.network_per_second = network_per_second
        self.network_burst = network_burst
        self.max_concurrent = max_concurrent
        self.total_per_second = total_per_second       # None: no rate in all
        self.total_burst = total_burst
        self.keys = SourceKeys(exempt, ipv4_prefix, ipv6_prefix)
        self.buckets = TokenBuckets(max_sources)
        self.open = {}                 # address -> connections open
        self.refused = {}              # reason -> connections refused

    def admit(self, host, now):
        """Whether a new connection from ``host`` may proceed: None, or the refusal reason.

        An admitted connection must be :meth:`closed` when it ends.
        """
        keys = self.keys(host)
        if keys is None:
            return None
        address, network = keys
        reason = None
        if self.open.get(address, 0) >= self.max_concurrent:
            reason = CONCURRENT
        elif not self.buckets.take(address, self.per_second, self.burst, now):
            reason = RATE
        elif not self.buckets.take(network, self.network_per_second, self.network_burst, now):
            reason = NETWORK_RATE
        elif self.total_per_second is not None and not self.buckets.take(
                None, self.total_per_second, self.total_burst, now):
            reason = TOTAL_RATE
        if reason is not None:
            self.refused[reason] = self.refused.get(reason, 0) + 1
            return reason
        self.open[address] = self.open.get(address, 0) + 1
        return None

    def closed(self, host):
        """An admitted connection from ``host`` ended."""
        keys = self.keys(host)
        if keys is None:
            return
        address = keys[0]
        if self.open.get(address, 0) <= 1:
            self.open.pop(address, None)
        else:
            self.open[address] -= 1

    def __len__(self):
        """Addresses and networks remembered."""
        return len(self.buckets)


class DatagramGate:
    """Datagrams from one source at one UDP door: a rate per address and per network.

    Asked before the door reads a datagram, so over the rate a flood costs a
    dictionary look-up and a subtraction, not a parse. The defaults are
    generous (a jam's busiest peer sends tens of datagrams a second, a member
    may send at most ``limits.events_per_second`` events) and the gate says
    nothing about credentials: guessing is the join throttle's business.
    """

    def __init__(self, per_second, burst, network_per_second, network_burst, exempt=(),
                 ipv4_prefix=24, ipv6_prefix=64, max_sources=20000):
        self.per_second = per_second
        self.burst = burst
        self.network_per_second = network_per_second
        self.network_burst = network_burst
        self.keys = SourceKeys(exempt, ipv4_prefix, ipv6_prefix)
        self.buckets = TokenBuckets(max_sources)

    def admit(self, host, now):
        """None when a datagram from ``host`` may be read, else why it is dropped unread."""
        keys = self.keys(host)
        if keys is None:
            return None
        take = self.buckets.take
        if not take(keys[0], self.per_second, self.burst, now):
            return DATAGRAM_RATE
        if not take(keys[1], self.network_per_second, self.network_burst, now):
            return NETWORK_DATAGRAM_RATE
        return None


class ConnectionBudget:
    """What one connection may send before it has joined: messages and bytes per second.

    A joined member answers to ``limits.events_per_second``; before that, a
    connection has no business sending more than a join or two, and a
    connection sending a stream of guesses or garbage spends its budget and is
    closed. Both are token buckets, full when the connection opens.
    """

    __slots__ = ("_limits", "_messages", "_bytes", "_stamp")

    def __init__(self, limits, now):
        self._limits = limits
        self._messages = limits.pre_join_message_burst
        self._bytes = limits.pre_join_byte_burst
        self._stamp = now

    def spend(self, size, now, messages=1):
        """Spend ``messages`` and ``size`` bytes: None, or why the connection must close."""
        limits = self._limits
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._messages = min(limits.pre_join_message_burst,
                             self._messages + elapsed * limits.pre_join_messages_per_second)
        self._bytes = min(limits.pre_join_byte_burst,
                          self._bytes + elapsed * limits.pre_join_bytes_per_second)
        self._messages -= messages
        self._bytes -= size
        if self._messages < 0:
            return PRE_JOIN_MESSAGES
        if self._bytes < 0:
            return PRE_JOIN_BYTES
        return None
