"""RTP-MIDI door: advertising the sessions as ``_apple-midi._udp`` with python-zeroconf.

So macOS Audio MIDI Setup and other Bonjour browsers list them (``rtpmidi.mdns``).
"""

import socket

import zeroconf

from gateway.addresses import is_wildcard

MDNS_SERVICE_TYPE = "_apple-midi._udp.local."
MDNS_STOP_TIMEOUT = 5.0


class MdnsAdvertiser:
    """Registers the sessions with python-zeroconf off the reactor thread.

    ``in_thread(function)`` runs a blocking call elsewhere and returns a
    Deferred (zeroconf's register waits for its probes, about a second).
    """

    def __init__(self, in_thread, clock, host, entries, log, zeroconf_module=zeroconf,
                 advertised=None):
        self.in_thread = in_thread
        self.clock = clock
        self.host = host
        self.advertised = advertised    # network.public_address, when set
        self.entries = entries
        self.log = log
        self._zeroconf_module = zeroconf_module
        self._zeroconf = None
        self._infos = []
        self._registered = None

    def start(self):
        self._registered = self.in_thread(self._register)
        self._registered.addErrback(
            lambda failure: self.log.failure("rtpmidi: mDNS registration failed", failure))

    def _register(self):
        mdns = self._zeroconf_module
        wildcard = is_wildcard(self.host)
        if self.advertised is not None:
            addresses = [self.advertised]
        else:
            addresses = mdns.get_all_addresses() if wildcard else [self.host]
        interfaces = mdns.InterfaceChoice.All if wildcard else [self.host]
        self._zeroconf = mdns.Zeroconf(interfaces=interfaces)
        for entry in self.entries:
            info = mdns.ServiceInfo(
                MDNS_SERVICE_TYPE, f"{entry.display_name}.{MDNS_SERVICE_TYPE}",
                port=entry.port, parsed_addresses=addresses,
                server=f"{socket.gethostname()}.local.")
            self._zeroconf.register_service(info)
            self._infos.append(info)

    def stop(self):
        """Unregister (after a registration still in progress); bounded by MDNS_STOP_TIMEOUT."""
        if self._registered is None:
            return None
        registered, self._registered = self._registered, None
        stopped = registered.addCallback(lambda _: self.in_thread(self._unregister))
        stopped.addErrback(
            lambda failure: self.log.failure("rtpmidi: mDNS unregistration failed", failure))
        return stopped.addTimeout(MDNS_STOP_TIMEOUT, self.clock).addErrback(lambda _: None)

    def _unregister(self):
        zeroconf, self._zeroconf = self._zeroconf, None
        if zeroconf is None:
            return
        try:
            for info in self._infos:
                zeroconf.unregister_service(info)
        finally:
            self._infos = []
            zeroconf.close()
