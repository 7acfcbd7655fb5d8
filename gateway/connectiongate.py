"""Twisted side of the per-source connection limits (:mod:`gateway.bus.sources`).

A guarded listening factory asks the gate in ``buildProtocol``, which
Twisted calls as it accepts a connection: a refused one gets no protocol,
so Twisted closes it before any TLS handshake, HTTP request or RTMP
handshake costs anything. Admitted connections are counted until their
protocol's ``connectionLost``. The factory itself is left as it is (no
WrappingFactory): doors write on the transport's socket directly, which a
protocol wrapper would hide.
"""

from gateway.bus.sources import SourceGate


class ConnectionGate:
    def __init__(self, limits, clock, drops, log):
        self.gate = SourceGate(
            limits.connections_per_second, limits.connection_burst,
            limits.network_connections_per_second, limits.network_connection_burst,
            limits.concurrent_connections_per_source, exempt=limits.source_limits_exempt)
        self.clock = clock
        self.drops = drops
        self.log = log

    def guard(self, factory, door):
        """Make ``factory`` (of ``door``) refuse connections over the limits as they arrive."""
        build = factory.buildProtocol
        gate, clock = self.gate, self.clock

        def buildProtocol(address):  # noqa: N802 -- Twisted's name
            host = getattr(address, "host", None)
            refusal = gate.admit(host, clock.seconds())
            if refusal is not None:
                self.drops.count(door, refusal)
                self.log.dropped((door, host, refusal), clock.seconds(),
                                 "{door}: refused a connection from {peer}: {reason}",
                                 door=door, peer=host, reason=refusal)
                return None
            protocol = build(address)
            if protocol is None:
                gate.closed(host)
                return None
            lost = protocol.connectionLost
            ended = []

            def connectionLost(reason):  # noqa: N802
                if not ended:
                    ended.append(True)
                    gate.closed(host)
                return lost(reason)

            protocol.connectionLost = connectionLost
            return protocol

        factory.buildProtocol = buildProtocol
        return factory

    def status(self):
        return {"open": sum(self.gate.open.values()), "sources": len(self.gate.open),
                "refused": dict(self.gate.refused)}
