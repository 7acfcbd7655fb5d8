"""twisted.web resources for the jam page, ``/sessions``, ``/status`` and ``/metrics``."""

import hmac
import json
import os
import re
import time

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.twisted import MetricsResource
from twisted.web import http, resource, server, static

import gateway
from gateway import build, log as gatewaylog
from gateway.bus.sources import TokenBuckets

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
_QUERY = re.compile(r'\?[^\s"]*')


def access_log_line(timestamp, request):
    """Twisted's combined log line without query strings: they may carry a passphrase."""
    return _QUERY.sub("?-", http.combinedLogFormatter(timestamp, request))


class AccessLogBudget:
    """How many access-log lines each client gets: a burst, then a rate (sans-IO).

    A page load is a handful of requests and always logged in full; a GET
    flood from one address would be one line per request. Past the budget a
    client's requests are counted, and :meth:`due_summaries` names those with
    a count once ``interval`` has passed since the first one left out.
    """

    def __init__(self, per_second, burst, interval):
        self.per_second = per_second
        self.burst = burst
        self.interval = interval
        self.buckets = TokenBuckets()
        self.left_out = {}           # client -> [requests not logged, since when]

    def admit(self, client, now):
        if self.buckets.take(client, self.per_second, self.burst, now):
            return True
        entry = self.left_out.get(client)
        if entry is None:
            self.left_out[client] = [1, now]
        else:
            entry[0] += 1
        return False

    def due_summaries(self, now):
        """(client, requests not logged) for every count at least ``interval`` old; reset."""
        due = [(client, entry[0]) for client, entry in self.left_out.items()
               if now - entry[1] >= self.interval]
        for client, _ in due:
            del self.left_out[client]
        return due


class GatewaySite(server.Site):
    """twisted.web's Site with its access log bounded per client (logging.access_log_*)."""

    displayTracebacks = False

    def __init__(self, root, logging_config, reactor):
        super().__init__(root, logFormatter=access_log_line, reactor=reactor)
        self.budget = AccessLogBudget(logging_config.access_lines_per_second,
                                      logging_config.access_line_burst,
                                      max(1.0, logging_config.drop_log_interval))
        self._summaries = None
        # twisted.web's own lines are one per connection or request (a client
        # timed out, a HEAD answered with a body): bounded like a door's drops.
        self.twisted_log = gatewaylog.BoundedLogger("twisted.web", gatewaylog.DropLog(
            gatewaylog.logger("netgateway.web"), logging_config.drop_log_interval, reactor))
        self.requestFactory = type("Request", (server.Request,), {"_log": self.twisted_log})

    def buildProtocol(self, addr):  # noqa: N802 -- Twisted's name
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            protocol._channel._log = self.twisted_log    # the HTTPChannel Twisted wraps
        return protocol

    def log(self, request):
        client = request.getClientAddress()
        if self.budget.admit(getattr(client, "host", None), self.reactor.seconds()):
            super().log(request)
        elif self._summaries is None or not self._summaries.active():
            self._summaries = self.reactor.callLater(self.budget.interval, self._summarise)

    def _summarise(self):
        log_file = self._logFile
        due = self.budget.due_summaries(self.reactor.seconds())
        if log_file is not None:
            for client, count in due:
                log_file.write(f"\"{client}\" - - [{self._logDateTime}] {count} more requests"
                               " not logged (logging.access_line_burst)\n")
        if self.budget.left_out:
            self._summaries = self.reactor.callLater(self.budget.interval, self._summarise)


class StatusResource(resource.Resource):
    """``GET /status``: the operator's JSON for the admin token, a public summary otherwise.

    In full (``Authorization: Bearer`` with ``status.admin_token``): sessions,
    members with their addresses, counters and every door's detail. Without
    credentials: session names with member counts, the doors and the uptime.
    Wrong credentials are answered 401, counted and logged, so guessing shows.
    """

    isLeaf = True

    def __init__(self, context):
        super().__init__()
        self.context = context
        self.started = time.time()
        token = context.config.status.admin_token
        self.admin_token = None if token is None else token.encode("ascii")
        self.refusal_log = gatewaylog.DropLog(context.log,
                                              context.config.logging.drop_log_interval,
                                              context.reactor)

    def render_GET(self, request):
        credentials = request.getHeader(b"authorization")
        if credentials is None:
            body = self.summary()
        elif self.admits(credentials):
            body = self.full()
        else:
            body = self.refuse(request)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body, indent=1, sort_keys=True).encode("utf-8")

    def admits(self, credentials):
        scheme, _, token = credentials.strip().partition(b" ")
        # compare_digest: the time taken does not tell how much of a guess was right.
        return (self.admin_token is not None and scheme.lower() == b"bearer"
                and hmac.compare_digest(token.strip(), self.admin_token))

    def uptime(self):
        return round(time.time() - self.started, 3)

    def full(self):
        body = self.context.status()
        body["version"] = gateway.__version__
        body["compiled_modules"] = build.compiled_modules()
        body["uptime"] = self.uptime()
        return body

    def summary(self):
        """What anyone may know: no member names or addresses, no counters."""
        sessions = self.context.bus.snapshot()["sessions"]
        return {"sessions": [_public_session(session) for session in sessions],
                "doors": sorted(self.context.doors),
                "uptime": self.uptime()}

    def refuse(self, request):
        self.context.drops.count("web", "wrong_admin_token")
        address = request.getClientAddress()
        source = getattr(address, "host", str(address))
        # The join refusals' format, address first, so the fail2ban filter reads both.
        self.refusal_log.dropped((source, "refused", "wrong_admin_token"),
                                 self.context.reactor.seconds(),
                                 "netgateway: refused /status from {source}"
                                 " reason=wrong_admin_token", source=source)
        request.setResponseCode(http.UNAUTHORIZED)
        request.setHeader(b"www-authenticate", b'Bearer realm="netgateway", error="invalid_token"')
        return {"error": "invalid_token",
                "message": "wrong admin token; without an Authorization header /status"
                           " answers a public summary"}


_PUBLIC_TEMPO = ("bpm", "running", "beats_per_bar")


def public_tempo(tempo):
    """What anyone may know of a session's tempo (a dict with its fields, or None)."""
    return None if tempo is None else {key: tempo[key] for key in _PUBLIC_TEMPO}


def _public_session(session):
    """A session as anyone may see it: its name, how many play, its tempo if it has one."""
    # The roster lists a mirror session's echo; it is no player.
    public = {"name": session["name"],
              "members": len(session["members"]) - int(session["mirror"])}
    tempo = session.get("tempo")
    if tempo is not None:
        public["tempo"] = public_tempo(tempo)
    return public


class SessionsResource(resource.Resource):
    """``GET /sessions``: the sessions the config marks ``public``, for the jam page to offer.

    Each with its name, its players (a mirror's echo is none), how many it
    takes, whether it is a mirror, and its tempo (bpm, running, beats per bar;
    null without one). Never a passphrase or a member's name: anyone may ask.
    """

    def __init__(self, context):
        super().__init__()
        self.context = context
        self.public = [session.name for session in context.config.sessions if session.public]

    def getChild(self, name, request):  # noqa: N802 -- Twisted's name
        """``/sessions/NAME/recording.mid``: a member's recording of session NAME."""
        session = resource.Resource()
        session.putChild(b"recording.mid",
                         RecordingResource(self.context, name.decode("utf-8", "replace")))
        return session

    def render_GET(self, request):
        listed = []
        for name in self.public:
            view = self.context.bus.session_view(name)
            if view is None:
                continue
            listed.append({"name": name, "players": view.member_count - int(view.mirror),
                           "max_players": view.max_members, "mirror": view.mirror,
                           "tempo": None if view.tempo is None
                           else public_tempo(view.tempo._asdict())})
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        # Public and without credentials: a jam page served from elsewhere may read it.
        request.setHeader(b"access-control-allow-origin", b"*")
        return json.dumps({"sessions": listed}, indent=1).encode("utf-8")


class RecordingResource(resource.Resource):
    """``GET /sessions/NAME/recording.mid?token=T``: a stopped recording as a Standard MIDI
    File, for the member the WebSocket door gave the token to (its "recording" message).
    Any other token, or none, is 404: nobody learns that a recording exists."""

    isLeaf = True

    def __init__(self, context, session):
        super().__init__()
        self.context = context
        self.session = session

    def render_GET(self, request):  # noqa: N802 -- Twisted's name
        token = (request.args.get(b"token") or [b""])[0].decode("ascii", "replace")
        data = self.context.recordings.fetch(self.session, token, self.context.reactor.seconds())
        if data is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"no such recording (they are kept for ten minutes)\n"
        request.setHeader(b"content-type", b"audio/midi")
        request.setHeader(b"content-disposition", b'attachment; filename="recording.mid"')
        request.setHeader(b"cache-control", b"no-store")
        return data


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


def metrics_registry(context):
    """The registry every part adds its collector to; /metrics exports it."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(BusCollector(context.bus, context.drops))
    registry.register(context.kernel_drops)
    registry.register(context.connection_gate)
    return registry


def build_root(context):
    """The site's root: the static jam page, /status, and /metrics unless metrics.port has it."""
    root = static.File(STATIC_DIR)
    root.putChild(b"status", StatusResource(context))
    root.putChild(b"sessions", SessionsResource(context))
    if context.config.metrics.port is None:
        root.putChild(b"metrics", MetricsResource(registry=context.metrics))
    return root


def build_metrics_root(registry):
    """The root of the site on metrics.port: /metrics and nothing else."""
    root = resource.Resource()
    root.putChild(b"metrics", MetricsResource(registry=registry))
    return root
