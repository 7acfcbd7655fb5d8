"""Builds the gateway: the session bus plus one child service per enabled door."""

import sys

from twisted.application import internet, service
from twisted.internet import error, task
from twisted.web import server

from gateway import doors, log as gatewaylog
from gateway.bus.local import DropCounters, LocalBus
from gateway.tls import certificate_options
from gateway.web.site import access_log_line, build_root


class GatewayContext:
    """What a door gets to work with: the session bus, drop sink, reactor, web root, metrics."""

    def __init__(self, config, reactor):
        self.config = config
        self.reactor = reactor
        self.log = gatewaylog.logger("netgateway")
        self.drops = DropCounters()
        self.bus = LocalBus(config, reactor, self.drops, log=self.log)
        self.doors = {}
        self.web_root = None
        self.metrics = None
        self._tls_options = None

    def tls_options(self):
        """The web site's certificate chain as Twisted TLS options (web.tls); rtmps and
        SIP over TLS use it too."""
        if self._tls_options is None:
            tls = self.config.web.tls
            self._tls_options = certificate_options(tls.certificate, tls.key)
        return self._tls_options

    def status(self):
        body = self.bus.snapshot()
        body["doors"] = {name: door.status() for name, door in self.doors.items()}
        return body


class GatewayService(service.MultiService):
    """Parent of every door; on stop, doors close first, then every member is released."""

    def __init__(self, context):
        super().__init__()
        self.context = context
        bus = context.bus
        interval = min(5.0, bus.limits.idle_timeout / 4)
        self._expiry = task.LoopingCall(bus.expire_idle)
        self._expiry.clock = context.reactor
        self._expiry_interval = interval

    def startService(self):
        try:
            super().startService()
        except error.CannotListenError as failure:
            # One line naming the key, like a config error; no traceback.
            reason = getattr(failure.socketError, "strerror", None) or str(failure.socketError)
            sys.stderr.write(f"netgateway: {self.context.config.port_key(failure.port)}:"
                             f" cannot listen on {failure.interface or '*'}:{failure.port}"
                             f" ({reason}); not starting\n")
            sys.stderr.flush()
            raise SystemExit(2)
        self._expiry.start(self._expiry_interval, now=False)
        self._say_where()

    def _say_where(self):
        """One line a newcomer can follow: the page's address and the sessions to join."""
        config = self.context.config
        sessions = ", ".join(session.name for session in config.sessions) or "none declared"
        if config.web.enabled:
            scheme = "https" if config.web.tls is not None else "http"
            host = config.web.host if ":" not in config.web.host else f"[{config.web.host}]"
            self.context.log.info("netgateway: jam page at {url}/ (sessions: {sessions})",
                                  url=f"{scheme}://{host}:{config.web.port}",
                                  sessions=sessions)
        else:
            self.context.log.info("netgateway: no web site; sessions: {sessions}",
                                  sessions=sessions)

    def stopService(self):
        if self._expiry.running:
            self._expiry.stop()
        stopped = super().stopService()
        stopped.addCallback(lambda _: self.context.bus.close_all("shutdown"))
        return stopped


def _web_service(context, site):
    web = context.config.web
    if web.tls is None:
        return internet.TCPServer(web.port, site, interface=web.host, reactor=context.reactor)
    return internet.SSLServer(web.port, site, context.tls_options(), interface=web.host,
                              reactor=context.reactor)


def make_gateway(config, reactor):
    """Return (GatewayService, GatewayContext) for a validated config."""
    gatewaylog.set_level(config.logging.level)
    context = GatewayContext(config, reactor)
    gateway = GatewayService(context)
    if config.web.enabled:
        context.web_root = build_root(context)
    for name, section in config.enabled_doors().items():
        door = doors.make_service(name, section, context)
        door.setName(name)
        context.doors[name] = door
        door.setServiceParent(gateway)
    if config.web.enabled:
        site = server.Site(context.web_root, logFormatter=access_log_line)
        site.displayTracebacks = False
        web = _web_service(context, site)
        web.setName("web")
        web.setServiceParent(gateway)
    return gateway, context
