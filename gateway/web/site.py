"""twisted.web resources for the jam page, ``/status`` and ``/metrics``."""

import json
import os
import re
import time

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.twisted import MetricsResource
from twisted.web import http, resource, static

import gateway
from gateway import build

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
_QUERY = re.compile(r'\?[^\s"]*')


def access_log_line(timestamp, request):
    """Twisted's combined log line without query strings: they may carry a passphrase."""
    return _QUERY.sub("?-", http.combinedLogFormatter(timestamp, request))


class StatusResource(resource.Resource):
    """``GET /status``: sessions, members by door, counters, as JSON."""

    isLeaf = True

    def __init__(self, context):
        super().__init__()
        self.context = context
        self.started = time.time()

    def render_GET(self, request):
        body = self.context.status()
        body["version"] = gateway.__version__
        body["compiled_modules"] = build.compiled_modules()
        body["uptime"] = round(time.time() - self.started, 3)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body, indent=1, sort_keys=True).encode("utf-8")


class BusCollector:
    """Exports the bus's sessions and members and the drop sink's counters."""

    def __init__(self, bus, drops):
        self.bus = bus
        self.drops = drops

    def collect(self):
        bus = self.bus
        sessions = GaugeMetricFamily("netgateway_sessions", "Open sessions")
        sessions.add_metric([], len(bus.sessions))
        yield sessions
        members = GaugeMetricFamily("netgateway_members", "Members by door", labels=["door"])
        for door, count in sorted(bus.members_by_door().items()):
            members.add_metric([door], count)
        yield members
        published = CounterMetricFamily("netgateway_events_published",
                                        "MIDI events accepted from members")
        published.add_metric([], bus.events_published)
        yield published
        refusals = CounterMetricFamily("netgateway_join_refusals", "Joins refused, by reason",
                                       labels=["reason"])
        for reason, count in sorted(bus.refusals.items()):
            refusals.add_metric([reason], count)
        yield refusals
        drops = CounterMetricFamily("netgateway_dropped", "Input dropped, by door and reason",
                                    labels=["door", "reason"])
        for (door, reason), count in self.drops.items():
            drops.add_metric([door, reason], count)
        yield drops


def build_root(context):
    """The site's root: static jam page with /status and /metrics beside it."""
    root = static.File(STATIC_DIR)
    root.putChild(b"status", StatusResource(context))
    metrics = CollectorRegistry(auto_describe=True)
    metrics.register(BusCollector(context.bus, context.drops))
    metrics.register(context.kernel_drops)
    context.metrics = metrics
    root.putChild(b"metrics", MetricsResource(registry=metrics))
    return root
