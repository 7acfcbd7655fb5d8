"""SIP door: Prometheus metrics (``netgateway_sip_*``).

Read from the door's session server at each scrape; registered by
:class:`~gateway.protocols.sip.door.SipDoor` when the web site serves
``/metrics``. Dropped packets, by reason (``bad_signature``,
``unknown_source``, ...), are in ``netgateway_dropped{door="sip"}``.
"""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class SipCollector:
    """Prometheus view of the sfront clients: members, packets verified, refusals."""

    def __init__(self, door):
        self.door = door

    def collect(self):
        server = self.door.server
        clients = GaugeMetricFamily("netgateway_sip_members", "sfront clients joined",
                                    labels=["session"])
        by_session = {}
        for client in server.joined_clients():
            by_session[client.session.name] = by_session.get(client.session.name, 0) + 1
        for session in self.door.sessions:
            clients.add_metric([session.name], by_session.get(session.name, 0))
        verified = CounterMetricFamily("netgateway_sip_packets_verified",
                                       "RTP and RTCP packets whose signature verified")
        verified.add_metric([], server.packets_verified)
        refused = CounterMetricFamily("netgateway_sip_refused",
                                      "INVITEs refused, by reason", labels=["reason"])
        for reason, count in sorted(server.refusals.items()):
            refused.add_metric([reason], count)
        yield from (clients, verified, refused)
