"""The table of protocol doors.

Each door module exposes ``Config`` (a dataclass: its YAML section, with an
``enabled`` flag and ``listening_ports(path)``) and
``make_service(section, context)`` returning a Twisted service. Adding a door
means adding one line here; no other door changes.
"""

import importlib

DOOR_MODULES = {
    "websocket": "gateway.protocols.websocket.door",
    "oscgroups": "gateway.protocols.oscgroups.door",
    "rtpmidi": "gateway.protocols.rtpmidi.door",
}


def door_module(name):
    return importlib.import_module(DOOR_MODULES[name])


def config_classes():
    return {name: door_module(name).Config for name in DOOR_MODULES}
