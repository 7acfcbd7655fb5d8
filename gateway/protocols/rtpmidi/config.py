"""RTP-MIDI door: configuration (the ``rtpmidi`` section).

Imports nothing from Twisted, zeroconf or prometheus_client, so a
configuration is validated without them; the door itself is
:mod:`gateway.protocols.rtpmidi.door`.
"""

import dataclasses
import ipaddress
import typing

from gateway.schema import bounded, port


@dataclasses.dataclass
class SessionPortConfig:
    session: str = bounded(doc="name of a session declared in the top-level 'sessions'")
    port: int = bounded(minimum=2, maximum=65534,
                        doc="even control port; the data port is port + 1")
    name: typing.Optional[str] = bounded(
        None, doc="AppleMIDI/Bonjour name; default 'netgateway <session>'")

    @property
    def display_name(self):
        return self.name or f"netgateway {self.session}"


@dataclasses.dataclass
class InviteConfig:
    session: str = bounded(doc="a session listed in rtpmidi.sessions")
    host: str = bounded(doc="address of the listening AppleMIDI peer (e.g. a Mac)")
    port: int = port(doc="the peer's control port")


@dataclasses.dataclass
class Config:
    enabled: bool = True
    host: typing.Optional[str] = bounded(None, doc="address the session ports listen on;"
                                                   " null: network.bind")
    sessions: typing.List[SessionPortConfig] = bounded(default_factory=list)
    invite: typing.List[InviteConfig] = bounded(
        default_factory=list, doc="peers the gateway invites (it is the initiator)")
    mdns: bool = bounded(False, doc="advertise each session as _apple-midi._udp")
    latetime: float = bounded(1.0, minimum=0.001, maximum=60.0,
                              doc="seconds; later note-ons are dropped and counted")
    journal: bool = bounded(True, doc="send the RFC 6295 recovery journal")

    def listening_ports(self, path):
        ports = []
        for index, entry in enumerate(self.sessions):
            if entry is None or entry.port is None:
                continue
            key = f"{path}.sessions[{index}].port"
            ports += [(key, "udp", entry.port), (key, "udp", entry.port + 1)]
        return ports

    def check(self, name, config):
        problems = []
        declared = {session.name for session in config.sessions}
        served = set()
        for index, entry in enumerate(self.sessions):
            path = f"{name}.sessions[{index}]"
            if entry.port % 2:
                problems.append(f"{path}.port: expected an even control port (the data port"
                                f" is port + 1; node-rtpmidi needs it even), got {entry.port}")
            if entry.session not in declared:
                problems.append(f"{path}.session: expected a session declared in 'sessions'"
                                f" (AppleMIDI peers cannot create one), got {entry.session!r}")
            if entry.session in served:
                problems.append(f"{path}.session: session {entry.session!r} is already"
                                f" served on another port")
            served.add(entry.session)
        for index, entry in enumerate(self.invite):
            if entry.session not in served:
                problems.append(f"{name}.invite[{index}].session: expected a session listed"
                                f" in {name}.sessions, got {entry.session!r}")
            if not _is_ip_address(entry.host):
                problems.append(f"{name}.invite[{index}].host: expected an IP address,"
                                f" got {entry.host!r}")
        return problems


def _is_ip_address(host):
    """Whether ``host`` is an IPv4 or IPv6 address (an IPv6 one may carry a %scope)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
