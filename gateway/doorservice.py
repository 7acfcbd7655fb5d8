"""What every door's Twisted service has in common."""

from twisted.application import service
from zope.interface import implementer

from gateway import log as gatewaylog
from gateway import udp
from gateway.interfaces import IDoor


@implementer(IDoor)
class DoorService(service.Service):
    """Base of a door's service: config, reactor, the session bus, counting and logging drops.

    Subclasses set ``name`` (the door's config section and label in
    counters) and implement ``status()``.
    """

    name = None

    def __init__(self, config, context):
        self.config = config
        self.limits = context.config.limits
        self.reactor = context.reactor
        self.bus = context.bus
        self.drops = context.drops
        self.log = gatewaylog.logger(f"netgateway.{self.name}")
        self.drop_log = gatewaylog.DropLog(self.log, context.config.logging.drop_log_interval,
                                           self.reactor)
        # Test contexts without one (in-memory networks) have no kernel to ask.
        self.kernel_drops = getattr(context, "kernel_drops", None)
        self.connection_gate = getattr(context, "connection_gate", None)
        self.datagram_guard = getattr(context, "datagram_guard", None)

    def guard(self, factory):
        """``factory`` refusing connections over the per-source limits (limits.connections_*)."""
        if self.connection_gate is not None:
            self.connection_gate.guard(factory, self.name)
        return factory

    def listen_udp(self, port, protocol, interface, **options):
        """:func:`gateway.udp.listen_udp`, its socket's kernel drops counted for this door,
        datagrams over the per-source limits (limits.datagrams_*) dropped unread."""
        if self.datagram_guard is not None:
            self.datagram_guard.guard(protocol, self.name)
        listening = udp.listen_udp(self.reactor, port, protocol, interface, **options)
        if self.kernel_drops is not None:
            self.kernel_drops.watch(self.name, listening)
        return listening

    def drop(self, peer, reason, detail="", amount=1):
        """Count dropped input by reason; log it at most once per peer per interval."""
        self.drops.count(self.name, reason, amount)
        self.drop_log.dropped(peer, self.reactor.seconds(),
                              "{door}: dropped input from {peer}: {reason} {detail}",
                              door=self.name, peer=peer, reason=reason, detail=detail)
