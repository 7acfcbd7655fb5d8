"""Builds the gateway: the session bus plus one child service per enabled door."""

import signal
import sys
import time

from twisted.application import internet, service
from twisted.internet import error, task

from gateway import doors, log as gatewaylog
from gateway.addresses import is_wildcard
from gateway.bus.local import DropCounters, LocalBus
from gateway.recording import RecordingStore
from gateway.served_certificate import CertificateUnusable, ServedCertificate
from gateway.sourcelimits import ConnectionGate, DatagramGuard
from gateway.udp import KernelDrops
from gateway.web.redirect import HttpsRedirect
from gateway.web.site import (GatewaySite, build_metrics_root, build_root,
                              metrics_registry)


class GatewayContext:
    """What a door gets to work with: the session bus, drop sink, reactor, web root, metrics."""

    def __init__(self, config, reactor):
        self.config = config
        self.reactor = reactor
        self.log = gatewaylog.logger("netgateway")
        self.drops = DropCounters()
        self.kernel_drops = KernelDrops()
        refusal_log = gatewaylog.DropLog(self.log, config.logging.drop_log_interval, reactor)
        self.connection_gate = ConnectionGate(config.limits, reactor, self.drops, refusal_log)
        self.datagram_guard = DatagramGuard(config.limits, reactor, self.drops, refusal_log)
        self.bus = LocalBus(config, reactor, self.drops, log=self.log)
        # A session tempo's grid must not move when the wall clock is stepped.
        self.bus.monotonic = time.monotonic
        self.recordings = RecordingStore()
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
        body["kernel_drops"] = self.kernel_drops.snapshot()
        body["connections"] = self.connection_gate.status()
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

    def privilegedStartService(self):
        # twistd binds TCP servers here, before dropping privileges.
        try:
            super().privilegedStartService()
        except error.CannotListenError as failure:
            self._cannot_listen(failure)

    def startService(self):
        try:
            super().startService()
        except error.CannotListenError as failure:
            self._cannot_listen(failure)
        self._expiry.start(self._expiry_interval, now=False)
        self._sighup_before = signal.signal(signal.SIGHUP, self._sighup)
        self._say_where()

    def _sighup(self, number, frame):
        # A handler runs between any two bytecodes of the reactor's work; reloading
        # there could swap options mid-handshake, so the reactor loop does it.
        self.context.reactor.callFromThread(self.context.reload_certificates)

    def _cannot_listen(self, failure):
        """One line naming the key, like a config error; no traceback; exit status 2."""
        reason = getattr(failure.socketError, "strerror", None) or str(failure.socketError)
        sys.stderr.write(f"netgateway: {self.context.config.port_key(failure.port)}:"
                         f" cannot listen on {failure.interface or '*'}:{failure.port}"
                         f" ({reason}); not starting\n")
        sys.stderr.flush()
        raise SystemExit(2)

    def _say_where(self):
        self.context.log.info("{block}", block="\n".join(where_to_go(self.context.config)))

    def stopService(self):
        if self._sighup_before is not None:
            signal.signal(signal.SIGHUP, self._sighup_before)
            self._sighup_before = None
        if self._expiry.running:
            self._expiry.stop()
        stopped = super().stopService()
        stopped.addCallback(lambda _: self.context.bus.close_all("shutdown"))
        return stopped


def where_to_go(config):
    """The start-up block a newcomer follows: the page, its WebSocket, every door's
    address and ports (with the config key of each), the sessions (names only)."""
    sessions = ", ".join(session.name for session in config.sessions) or "none declared"
    web = config.web
    lines = []
    if web.enabled:
        secure = web.tls is not None
        origin = f"{_url_host(config, web.host)}:{web.port}"
        lines.append(f"netgateway: jam page at {'https' if secure else 'http'}://{origin}/"
                     f" (sessions: {sessions})")
        websocket = config.doors.get("websocket")
        if websocket is not None and websocket.enabled:
            lines.append(f"  websocket  {'wss' if secure else 'ws'}://{origin}/{websocket.path}")
        redirect = (f", http to https from tcp {web.redirect_http_port}"
                    " (web.redirect_http_port)" if web.redirect_http_port else "")
        lines.append(f"  web        tcp {web.port} (web.port) on {_host_text(config, web.host)},"
                     f" TLS {'on' if secure else 'off'}{redirect}")
    else:
        lines.append(f"netgateway: no web site; sessions: {sessions}")
    for name, section in config.enabled_doors().items():
        ports = {}
        for key, transport, number in section.listening_ports(name):
            ports.setdefault((key, transport), []).append(number)
        if name == "websocket" or not ports:
            continue
        listed = ", ".join(f"{transport} {_span(numbers)} ({key})"
                           for (key, transport), numbers in ports.items())
        lines.append(f"  {name:<10} {listed} on {_host_text(config, section.host)}")
    metrics = config.metrics
    if metrics.port is not None:
        lines.append(f"  {'metrics':<10} http://{_url_host(config, metrics.host)}:{metrics.port}"
                     "/metrics (metrics.port)")
    return lines


def _span(numbers):
    return str(numbers[0]) if len(numbers) == 1 else f"{min(numbers)}-{max(numbers)}"


def _url_host(config, host):
    if is_wildcard(host):
        host = config.network.public_address or "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _host_text(config, host):
    if not is_wildcard(host):
        return host
    public = config.network.public_address
    return f"every address ({host})" + (f", advertised as {public}" if public else "")


def _site(context, root):
    return GatewaySite(root, context.config.logging, context.reactor)


def _web_service(context, site):
    web = context.config.web
    context.connection_gate.guard(site, "web")
    if web.tls is None:
        return internet.TCPServer(web.port, site, interface=web.host, reactor=context.reactor)
    return internet.SSLServer(web.port, site, context.tls_options(), interface=web.host,
                              reactor=context.reactor)


def _redirect_service(context):
    """Plain HTTP on web.redirect_http_port, answering every request with the https URL."""
    web = context.config.web
    site = context.connection_gate.guard(_site(context, HttpsRedirect(web.port)), "web")
    return internet.TCPServer(web.redirect_http_port, site, interface=web.host,
                              reactor=context.reactor)


def make_gateway(config, reactor):
    """Return (GatewayService, GatewayContext) for a validated config."""
    gatewaylog.set_level(config.logging.level)
    context = GatewayContext(config, reactor)
    gateway = GatewayService(context)
    if config.web.enabled or config.metrics.port is not None:
        context.metrics = metrics_registry(context)
    if config.web.enabled:
        context.web_root = build_root(context)
    for name, section in config.enabled_doors().items():
        door = doors.make_service(name, section, context)
        door.setName(name)
        context.doors[name] = door
        door.setServiceParent(gateway)
    if config.web.enabled:
        web = _web_service(context, _site(context, context.web_root))
        web.setName("web")
        web.setServiceParent(gateway)
        if config.web.redirect_http_port is not None:
            redirect = _redirect_service(context)
            redirect.setName("web-redirect")
            redirect.setServiceParent(gateway)
    if config.metrics.port is not None:
        metrics_site = context.connection_gate.guard(_site(context, build_metrics_root(context.metrics)),
                                                     "metrics")
        metrics = internet.TCPServer(config.metrics.port, metrics_site,
                                     interface=config.metrics.host, reactor=reactor)
        metrics.setName("metrics")
        metrics.setServiceParent(gateway)
    return gateway, context
