"""Per-source limits on new connections: rate per address and per network, and how many
at once per address (sans-IO: addresses and times in, a refusal reason or None out).

A flood of connections costs the gateway a socket, a TLS handshake or an
HTTP upgrade each before any credential is seen. The gate answers at
accept time, before any of that: a source over its rate (a token bucket
per address, and one per /24 or /64 so a host cannot dodge it by walking
its addresses) or holding too many connections at once is refused there.
Buckets are bounded: past ``max_sources`` the longest idle ones are
forgotten, which only makes the gate more lenient. Exempt networks
(loopback by default: a reverse proxy, the tests, the benches) are never
limited.
"""

import collections
import ipaddress

from gateway.addresses import peer_address

RATE = "connection_rate"
NETWORK_RATE = "network_connection_rate"
CONCURRENT = "concurrent_connections"


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens, stamp):
        self.tokens = tokens
        self.stamp = stamp


class SourceGate:
    def __init__(self, per_second, burst, network_per_second, network_burst, max_concurrent,
                 exempt=(), ipv4_prefix=24, ipv6_prefix=64, max_sources=20000):
        self.per_second = per_second
        self.burst = burst
        self.network_per_second = network_per_second
        self.network_burst = network_burst
        self.max_concurrent = max_concurrent
        self.exempt = [ipaddress.ip_network(cidr, strict=False) for cidr in exempt]
        self.prefixes = {4: ipv4_prefix, 6: ipv6_prefix}
        self.max_sources = max_sources
        self._buckets = collections.OrderedDict()      # address or network -> _Bucket
        self.open = collections.Counter()              # address -> connections open
        self.refused = collections.Counter()           # reason -> connections refused

    def admit(self, host, now):
        """Whether a new connection from ``host`` may proceed: None, or the refusal reason.

        An admitted connection must be :meth:`closed` when it ends.
        """
        address = peer_address(host)
        if address is None or any(address in network for network in self.exempt):
            return None
        key = str(address)
        reason = None
        if self.open[key] >= self.max_concurrent:
            reason = CONCURRENT
        elif not self._take(key, self.per_second, self.burst, now):
            reason = RATE
        else:
            network = ipaddress.ip_network(f"{address}/{self.prefixes[address.version]}",
                                           strict=False)
            if not self._take(str(network), self.network_per_second, self.network_burst, now):
                reason = NETWORK_RATE
        if reason is not None:
            self.refused[reason] += 1
            return reason
        self.open[key] += 1
        return None

    def closed(self, host):
        """An admitted connection from ``host`` ended."""
        address = peer_address(host)
        if address is None:
            return
        key = str(address)
        if self.open[key] <= 1:
            self.open.pop(key, None)
        else:
            self.open[key] -= 1

    def __len__(self):
        """Addresses and networks remembered."""
        return len(self._buckets)

    def _take(self, key, per_second, burst, now):
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(burst, now)
        else:
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * per_second)
            bucket.stamp = now
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

