"""SIP door: configuration (the ``sip`` section).

Imports nothing from Twisted or prometheus_client, so a configuration is
validated without them; the door itself is :mod:`gateway.protocols.sip.door`.
"""

import dataclasses
import ipaddress

from gateway.schema import bounded, port
from gateway.protocols.sip import channels

# sfront refuses a member whose c= is one of these (shared/protocols/sfront.md §2.3).
_REFUSED_MEDIA_HOSTS = ("127.0.0.1", "0.0.0.0", "255.255.255.255")


@dataclasses.dataclass
class MediaConfig:
    host: str = bounded("127.0.0.5", doc="IPv4 address of the gateway's media ports as"
                                         " clients reach it; not 127.0.0.1 (sfront refuses it)")
    port_min: int = port(6000, doc="first media port; declared session k uses"
                                   " port_min + 2k (RTP) and the next (RTCP)")
    port_max: int = port(6127, doc="last media port")


@dataclasses.dataclass
class Config:
    enabled: bool = True
    host: str = bounded("127.0.0.1", doc="IPv4 address sfront clients were built with"
                                         " (-sip_ip); replies leave from exactly it")
    port: int = bounded(5060, minimum=1, maximum=65534,
                        doc="SIP port of clients' RTP sockets (-sip_port); their RTCP"
                            " sockets use port + 1")
    media: MediaConfig = dataclasses.field(default_factory=MediaConfig)
    channels: str = bounded(channels.KEEP, choices=channels.POLICIES,
                            doc="keep: remote players keep their channels; per_player:"
                                " each remote player gets a channel of its own")
    latetime: float = bounded(1.0, minimum=0.001, maximum=60.0,
                              doc="seconds; later note-ons are dropped and counted")
    journal: bool = bounded(True, doc="send the RFC 6295 recovery journal to clients")
    max_clients: int = bounded(64, minimum=1, maximum=10000,
                               doc="sfront clients at once; more are refused with 503")

    def media_ports(self, sessions):
        """The RTP media port of each declared session, by name."""
        return {session.name: self.media.port_min + 2 * index
                for index, session in enumerate(sessions)}

    def listening_ports(self, path):
        ports = [(f"{path}.port", "udp", self.port), (f"{path}.port", "udp", self.port + 1)]
        ports += [(f"{path}.media.port_min-port_max", "udp", number)
                  for number in range(self.media.port_min, self.media.port_max + 1)]
        return ports

    def check(self, name, config):
        problems = []
        if not _is_ipv4(self.host) or self.host == "0.0.0.0":
            problems.append(f"{name}.host: expected the one IPv4 address clients were built"
                            f" with (replies must leave from exactly it), got {self.host!r}")
        media = self.media
        if not _is_ipv4(media.host) or media.host in _REFUSED_MEDIA_HOSTS:
            problems.append(f"{name}.media.host: expected an IPv4 address other than "
                            + ", ".join(_REFUSED_MEDIA_HOSTS)
                            + f" (sfront refuses those), got {media.host!r}")
        if media.port_min % 2:
            problems.append(f"{name}.media.port_min: expected an even port (RTP even, RTCP"
                            f" the next), got {media.port_min}")
        needed = 2 * len(config.sessions)
        if media.port_max - media.port_min + 1 < needed:
            problems.append(f"{name}.media.port_max: expected at least"
                            f" {media.port_min + needed - 1} (two ports for each of the"
                            f" {len(config.sessions)} declared sessions), got {media.port_max}")
        return problems


def _is_ipv4(host):
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
    except ValueError:
        return False
