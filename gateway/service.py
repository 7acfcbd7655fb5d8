"""Builds the gateway: the session bus plus one child service per enabled door."""

import signal
import sys

from twisted.application import internet, service
from twisted.internet import error, task
from twisted.web import server

from gateway import doors, log as gatewaylog
from gateway.bus.local import DropCounters, LocalBus
from gateway.served_certificate import CertificateUnusable, ServedCertificate
from gateway.web.redirect import HttpsRedirect
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
        self.certificates = {}      # config path -> ServedCertificate, one per section

    def served_certificate(self, path, section):
        """The TLS options of the ``{certificate, key}`` section at ``path``, shared by
        every door that serves it, so that one reload reaches them all."""
        if path not in self.certificates:
            self.certificates[path] = ServedCertificate(path, section)
        return self.certificates[path]

    def tls_options(self):
        """The web site's certificate (web.tls); rtmps and SIP over TLS use it too."""
        return self.served_certificate("web.tls", self.config.web.tls)

    def reload_certificates(self):
        """Re-read every served certificate's files (on SIGHUP); a section whose new
        files cannot serve keeps its old certificate and logs one error line."""
        if not self.certificates:
            self.log.info("netgateway: reload asked for, but no TLS certificate is served")
        for path, certificate in self.certificates.items():
            try:
                leaf = certificate.reload()
            except CertificateUnusable as unusable:
                self.log.error("netgateway: {path}: certificate not reloaded, still serving"
                               " the previous one: {problems}", path=path,
                               problems="; ".join(unusable.problems))
            else:
                self.log.info("netgateway: {path}: certificate reloaded, now serving {subject}"
                              " (valid until {not_after})", path=path,
                              subject=leaf.subject.rfc4514_string(),
                              not_after=leaf.not_valid_after_utc.isoformat())

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
        self._sighup_before = None

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
        self._sighup_before = signal.signal(signal.SIGHUP, self._sighup)
        self._say_where()

    def _sighup(self, number, frame):
        # A handler runs between any two bytecodes of the reactor's work; reloading
        # there could swap options mid-handshake, so the reactor loop does it.
        self.context.reactor.callFromThread(self.context.reload_certificates)

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
        if self._sighup_before is not None:
            signal.signal(signal.SIGHUP, self._sighup_before)
            self._sighup_before = None
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


def _redirect_service(context):
    """Plain HTTP on web.redirect_http_port, answering every request with the https URL."""
    web = context.config.web
    site = server.Site(HttpsRedirect(web.port), logFormatter=access_log_line)
    site.displayTracebacks = False
    return internet.TCPServer(web.redirect_http_port, site, interface=web.host,
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
        if config.web.redirect_http_port is not None:
            redirect = _redirect_service(context)
            redirect.setName("web-redirect")
            redirect.setServiceParent(gateway)
    return gateway, context
