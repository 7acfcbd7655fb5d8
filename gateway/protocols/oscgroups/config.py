"""OSCgroups door: configuration (the ``oscgroups`` section).

Imports nothing from Twisted or prometheus_client, only the sans-IO cores
whose limits and choices it checks, so a configuration is validated without
them; the door itself is :mod:`gateway.protocols.oscgroups.door`.
"""

import dataclasses
import typing

from gateway.bus.values import name_problem
from gateway.schema import bounded, port

from . import mapping, server, wire
from . import relay as relay_core

MAX_BRIDGED_GROUPS = 8        # keeps the bridge's alive bundle well inside one request


@dataclasses.dataclass
class BridgeConfig:
    enabled: bool = True
    user: str = bounded("netgateway", doc="OSCgroups user name of the gateway in each group")
    password: typing.Optional[str] = bounded(
        None, doc="the bridge user's OSCgroups password; random at each start when null")
    port: int = port(22241, doc="UDP port of the bridge's own OSCgroups endpoint")
    groups: typing.List[str] = bounded(
        default_factory=lambda: ["demo"],
        doc="OSCgroups groups the gateway joins; each must map to a declared session")
    prefix: str = bounded("/midi", doc="OSC address prefix of MIDI messages")
    outgoing: str = bounded(mapping.READABLE, choices=mapping.OUTGOING_FORMS,
                            doc="readable: /midi/noteon ...; midi: OSC 'm' arguments")


@dataclasses.dataclass
class RelayConfig:
    policy: str = bounded(relay_core.AUTO, choices=relay_core.POLICIES,
                          doc="auto: NATed pairs fall back on the relay (at once when a NAT"
                              " changes ports); always: relay every pair; never: no relay")
    host: typing.Optional[str] = bounded(
        None, doc="IPv4 address relay ports listen on, and are advertised at unless"
                  " network.public_address is set; null: oscgroups.host")
    port_min: int = port(22300, doc="first relay UDP port")
    port_max: int = port(22363, doc="last relay UDP port")
    max_allocations: int = bounded(64, minimum=1, maximum=65535,
                                   doc="relay ports open at once (one per relayed user)")
    packets_per_second: int = bounded(500, minimum=1, maximum=1000000,
                                      doc="per user; excess is dropped and counted")


@dataclasses.dataclass
class Config:
    enabled: bool = True
    host: typing.Optional[str] = bounded(
        None, doc="IPv4 address the server and bridge listen on (0.0.0.0: every address,"
                  " each client answered from the one it wrote to); null: network.bind")

    IPV4_ONLY = True     # the protocol carries endpoints as 4-byte addresses
    port: int = port(22242, doc="UDP port of the rendezvous server")
    timeout: int = bounded(server.DEFAULT_TIMEOUT, minimum=7, maximum=3600,
                           doc="seconds without user_alive before a user is purged;"
                               " clients send one every 6 s")
    max_users: int = bounded(server.DEFAULT_MAX_USERS, minimum=1, maximum=100000)
    max_groups: int = bounded(server.DEFAULT_MAX_GROUPS, minimum=1, maximum=100000)
    groups: dict = bounded(default_factory=dict,
                           doc="group name -> session name; by default a group is the"
                               " session of the same name")
    bridge: BridgeConfig = dataclasses.field(default_factory=BridgeConfig)
    relay: RelayConfig = dataclasses.field(default_factory=RelayConfig)

    @property
    def relay_host(self):
        return self.relay.host or self.host

    def listening_ports(self, path):
        ports = [(f"{path}.port", "udp", self.port)]
        if self.bridge.enabled:
            ports.append((f"{path}.bridge.port", "udp", self.bridge.port))
        if self.relay.policy != relay_core.NEVER:
            ports.extend((f"{path}.relay.port_min-port_max", "udp", number)
                         for number in range(self.relay.port_min, self.relay.port_max + 1))
        return ports

    def session_name(self, group_name):
        return self.groups.get(group_name, group_name)

    def check(self, name, config):
        problems = []
        if not wire.is_ipv4(self.host):
            problems.append(f"{name}.host: OSCgroups is IPv4 only; expected an IPv4 address"
                            f" such as 127.0.0.1, got {self.host!r}")
        declared = {session.name for session in config.sessions}
        for group, session in self.groups.items():
            if not isinstance(group, str) or not isinstance(session, str):
                problems.append(f"{name}.groups: expected group name: session name strings,"
                                f" got {group!r}: {session!r}")
            elif session not in declared:
                problems.append(f"{name}.groups.{group}: session {session!r} is not declared"
                                " in sessions; expected one of "
                                + (", ".join(sorted(declared)) or "(none declared)"))
        if self.bridge.enabled:
            problems.extend(self._check_bridge(f"{name}.bridge", declared))
        if self.relay.policy != relay_core.NEVER:
            problems.extend(self._check_relay(f"{name}.relay", config.network))
        return problems

    def _check_relay(self, path, network):
        problems = []
        if self.relay.host is not None and not wire.is_ipv4(self.relay.host):
            problems.append(f"{path}.host: expected an IPv4 address (or null for"
                            f" oscgroups.host), got {self.relay.host!r}")
        elif network.advertised(self.relay_host) is None:
            problems.append(f"{path}.host: the relay listens on every address"
                            f" ({self.relay_host}), so clients must be told one: set"
                            " network.public_address (or this key to the address they reach)")
        elif not wire.is_ipv4(network.advertised(self.relay_host)):
            problems.append(f"network.public_address: the OSCgroups relay advertises IPv4"
                            f" addresses only, got {network.public_address!r}")
        if self.relay.port_min > self.relay.port_max:
            problems.append(f"{path}.port_max: expected at least port_min"
                            f" ({self.relay.port_min}), got {self.relay.port_max}")
        return problems

    def _check_bridge(self, path, declared):
        problems = []
        bridge = self.bridge
        if not bridge.user or len(bridge.user.encode("utf-8")) > server.MAX_STRING_BYTES:
            problems.append(f"{path}.user: expected 1 to {server.MAX_STRING_BYTES} bytes")
        elif name_problem(bridge.user) is not None:
            # The server would refuse the gateway's own bridge at every registration.
            problems.append(f"{path}.user: {name_problem(bridge.user)}, got {bridge.user!r}")
        if not 1 <= len(bridge.groups) <= MAX_BRIDGED_GROUPS:
            problems.append(f"{path}.groups: expected 1 to {MAX_BRIDGED_GROUPS} groups"
                            f" (or {path}.enabled: false)")
        if len(set(bridge.groups)) != len(bridge.groups):
            problems.append(f"{path}.groups: a group is listed twice")
        for index, group in enumerate(bridge.groups):
            session = self.session_name(group)
            if session not in declared:
                problems.append(f"{path}.groups[{index}]: group {group!r} is not a declared"
                                f" session (nor mapped to one in groups); expected one of "
                                + (", ".join(sorted(declared)) or "(none declared)"))
        try:
            mapping.OscMidiMapping(bridge.prefix, bridge.outgoing)
        except ValueError as exc:
            problems.append(f"{path}.prefix: {exc}")
        return problems
