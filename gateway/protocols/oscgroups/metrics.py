"""OSCgroups door: Prometheus metrics (``netgateway_oscgroups_*``).

Reads the door's server, bridge and relay at each scrape; registered by
:class:`~gateway.protocols.oscgroups.door.OscGroupsDoor` when the web site
serves ``/metrics``.
"""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


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
        if door.relay is not None:
            allocations = GaugeMetricFamily("netgateway_oscgroups_relay_allocations",
                                            "Relay ports open (one per relayed user)")
            allocations.add_metric([], len(door.relay.allocations))
            yield allocations
            totals = door.relay.totals()
            for kind, help_text in (("packets", "Data datagrams forwarded by the relay"),
                                    ("bytes", "Bytes of data forwarded by the relay"),
                                    ("pings", "OSCgroups pings forwarded by the relay")):
                forwarded = CounterMetricFamily(
                    f"netgateway_oscgroups_relay_forwarded_{kind}", help_text)
                forwarded.add_metric([], totals[kind])
                yield forwarded
