"""Doors meet only at the session bus: what each door package may import.

A door may use the contract (gateway.interfaces, gateway.bus.values), the
shared helpers every door has (MIDI model, DoorService, schema, logging, the
join throttle's back-off, the per-source limits, the beat clock, recordings) and its own package; never the bus implementation,
the service that wires doors together, or another door.

One door's code is shared on purpose: the RTP-MIDI media codec
(:data:`MEDIA_CODEC`), which AppleMIDI sessions and SDP-negotiated SIP
sessions both carry. It may import no signalling of the RTP-MIDI door.
"""

import ast
import os

import pytest

from gateway import doors
from tests.conftest import REPO

MEDIA_CODEC = {f"gateway.protocols.rtpmidi.{name}" for name in (
    "media", "payload", "stream", "journal_wire", "journal_state", "journal_sender",
    "journal_receiver")}
SHARED = {"gateway.interfaces", "gateway.bus.values", "gateway.bus.throttle",
          "gateway.bus.sources", "gateway.actions", "gateway.midi", "gateway.beatclock",
          "gateway.recording", "gateway.doorservice", "gateway.schema", "gateway.log",
          "gateway.tls", "gateway.udp", "gateway.addresses"} | MEDIA_CODEC
DOOR_PACKAGES = sorted({module.rsplit(".", 1)[0] for pair in doors.DOORS.values()
                        for module in pair})


def gateway_imports(path, package):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names = [package]           # relative: inside the door's own package
            else:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "gateway":
                yield node.lineno, name


def allowed(name, package):
    return (name == package or name.startswith(package + ".") or name in SHARED
            or name in ("gateway", "gateway.bus", "gateway.protocols")
            or any(name.startswith(shared + ".") for shared in SHARED))


@pytest.mark.parametrize("package", DOOR_PACKAGES)
def test_a_door_imports_only_the_contract_shared_helpers_and_itself(package):
    folder = os.path.join(REPO, *package.split("."))
    modules = [name for name in os.listdir(folder) if name.endswith(".py")]
    assert modules
    wrong = [f"{module}:{line} imports {name}" for module in modules
             for line, name in gateway_imports(os.path.join(folder, module), package)
             if not allowed(name, package)]
    assert wrong == []


@pytest.mark.parametrize("module", sorted(MEDIA_CODEC))
def test_the_shared_media_codec_imports_no_signalling(module):
    path = os.path.join(REPO, *module.split(".")) + ".py"
    wrong = [f"{line} imports {name}" for line, name in gateway_imports(path, module)
             if name.startswith("gateway.protocols.")
             and not any(name == codec or name.startswith(codec + ".") for codec in MEDIA_CODEC)]
    assert wrong == []


def test_the_check_catches_a_door_importing_another_door():
    assert not allowed("gateway.protocols.rtpmidi.session", "gateway.protocols.sip")
    assert not allowed("gateway.bus.local", "gateway.protocols.websocket")
    assert allowed("gateway.bus.values.JoinRequest", "gateway.protocols.websocket")
