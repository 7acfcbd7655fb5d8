"""The table of protocol doors.

Each door has two modules:

* a config module exposing ``Config`` (a dataclass: its YAML section, with an
  ``enabled`` flag and ``listening_ports(path)``, built with
  :mod:`gateway.schema`). It imports no Twisted, zeroconf, prometheus_client
  or autobahn, so validating a configuration starts none of them;
* a service module exposing ``make_service(section, context)``, returning a
  Twisted service; it is imported only when the door is built.

Adding a door means adding one line here; no other door changes.
"""

import importlib
import typing


class Door(typing.NamedTuple):
    config: str      # module with Config
    service: str     # module with make_service(section, context)


DOORS = {
    "websocket": Door("gateway.protocols.websocket.config", "gateway.protocols.websocket.server"),
    "oscgroups": Door("gateway.protocols.oscgroups.config", "gateway.protocols.oscgroups.door"),
    "rtpmidi": Door("gateway.protocols.rtpmidi.config", "gateway.protocols.rtpmidi.door"),
    "sip": Door("gateway.protocols.sip.config", "gateway.protocols.sip.door"),
    "rtmp": Door("gateway.protocols.rtmp.config", "gateway.protocols.rtmp.door"),
}


def config_module(name):
    return importlib.import_module(DOORS[name].config)


def service_module(name):
    return importlib.import_module(DOORS[name].service)


def config_classes():
    return {name: config_module(name).Config for name in DOORS}


def make_service(name, section, context):
    return service_module(name).make_service(section, context)
