"""Twisted side of the per-source limits (:mod:`gateway.bus.sources`): where the gates
meet connections and datagrams.

A guarded listening factory asks the connection gate in ``buildProtocol``,
which Twisted calls as it accepts a connection: a refused one gets no
protocol, so Twisted closes it before any TLS handshake, HTTP request or RTMP
handshake costs anything. Admitted connections are counted until their
protocol's ``connectionLost``. A guarded datagram protocol asks the datagram
gate before its own ``datagramReceived`` runs. Neither is wrapped in another
object (no WrappingFactory or proxy protocol): doors write on the transport's
socket directly, which a wrapper would hide, so the one method is replaced.
"""

from OpenSSL import SSL
from prometheus_client.core import GaugeMetricFamily

from gateway.bus.sources import DatagramGate, SourceGate

TLS_ERROR = "tls_error"


class _Guard:
    def __init__(self, clock, drops, log):
        self.clock = clock
        self.drops = drops
        self.log = log

    def _refused(self, door, host, reason, what):
        self.drops.count(door, reason)
        self.log.dropped((door, host, reason), self.clock.seconds(),
                         "{door}: refused {what} from {peer}: {reason}",
                         door=door, what=what, peer=host, reason=reason)


class ConnectionGate(_Guard):
    def __init__(self, limits, clock, drops, log):
        super().__init__(clock, drops, log)
        self.gate = SourceGate(
            limits.connections_per_second, limits.connection_burst,
            limits.network_connections_per_second, limits.network_connection_burst,
            limits.concurrent_connections_per_source, limits.total_connections_per_second,
            limits.total_connection_burst, exempt=limits.source_limits_exempt)

    def guard(self, factory, door):
        """Make ``factory`` (of ``door``) refuse connections over the limits as they arrive."""
        build = factory.buildProtocol
        gate, clock = self.gate, self.clock

        def buildProtocol(address):  # noqa: N802 -- Twisted's name
            host = getattr(address, "host", None)
            refusal = gate.admit(host, clock.seconds())
            if refusal is not None:
                self._refused(door, host, refusal, "a connection")
                return None
            protocol = build(address)
            if protocol is None:
                gate.closed(host)
                return None
            make = protocol.makeConnection

            def makeConnection(transport):  # noqa: N802
                # The end is watched on the transport: a protocol may hand its
                # transport to another (twisted.web to a WebSocket, on upgrade),
                # and only the last one hears connectionLost.
                lost = transport.connectionLost

                def connectionLost(*reason):  # noqa: N802
                    if transport.__dict__.pop("connectionLost", None) is not None:
                        gate.closed(host)
                    return lost(*reason)

                transport.connectionLost = connectionLost
                return make(transport)

            protocol.makeConnection = makeConnection
            first_lost = protocol.connectionLost

            def connectionLostCounted(reason=None):  # noqa: N802
                # A failed TLS handshake ends the first protocol with the TLS
                # layer's error, and nothing else would count or log it.
                if reason is not None and reason.check(SSL.Error):
                    self._refused(door, host, TLS_ERROR, "a TLS connection")
                return first_lost(reason)

            protocol.connectionLost = connectionLostCounted
            return protocol

        factory.buildProtocol = buildProtocol
        return factory

    def status(self):
        return {"open": sum(self.gate.open.values()), "sources": len(self.gate.open),
                "refused": dict(self.gate.refused)}

    def collect(self):
        """/metrics: connections open from addresses the limits apply to (the refusals are
        the doors' drops, in netgateway_dropped)."""
        opened = GaugeMetricFamily("netgateway_connections_open",
                                   "TCP connections open from addresses not exempt")
        opened.add_metric([], sum(self.gate.open.values()))
        yield opened


class DatagramGuard(_Guard):
    """One datagram gate per UDP door (a peer's rate at one door does not spend another's)."""

    def __init__(self, limits, clock, drops, log):
        super().__init__(clock, drops, log)
        self.limits = limits
        self.gates = {}

    def guard(self, protocol, door):
        """Make ``protocol`` (a door's DatagramProtocol) drop, unread, datagrams over the limits."""
        gate = self.gates.get(door)
        if gate is None:
            limits = self.limits
            gate = self.gates[door] = DatagramGate(
                limits.datagrams_per_second, limits.datagram_burst,
                limits.network_datagrams_per_second, limits.network_datagram_burst,
                exempt=limits.source_limits_exempt)
        received, admit, clock = protocol.datagramReceived, gate.admit, self.clock

        def datagramReceived(data, peer):  # noqa: N802 -- Twisted's name
            refusal = admit(peer[0], clock.seconds())
            if refusal is None:
                return received(data, peer)
            self._refused(door, peer[0], refusal, "datagrams")
            return None

        protocol.datagramReceived = datagramReceived
        return protocol
