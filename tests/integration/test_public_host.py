"""README "Run it on a public host", walked on an Internet made of network namespaces.

The rig of test_oscgroups_nat.py (``home`` kind: routers that drop unsolicited
inbound). The gateway runs in ``srv`` as README says: ``network.bind:
0.0.0.0``, ``network.public_address`` its public address, https/wss with a
certificate chain from a test CA. Players, each behind its own router:

* ``ann``: Debian's Chromium (the jam page over https, trusting the leaf by its
  key, as a browser trusts a public CA) behind the cone NAT of alice's LAN;
* ``dave-mac``: npm ``rtpmidi`` as the AppleMIDI initiator, behind a cone NAT;
* ``bob`` and ``carol``: netgateway-oscgroups-client, each behind a symmetric
  NAT, so the two reach each other only through the relay.

Each plays its own note about once a second until everyone has heard everyone
(or the deadline passes); the door x NAT matrix is printed and must be full,
and the relay must have carried the one pair that needs it (bob-carol) and
no other. Namespaces and processes are removed even on failure.
"""

import base64
import contextlib
import hashlib
import itertools
import os
import queue
import re
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from tests.certificates import Authority
from tests.conftest import ADMIN_TOKEN, need_external
from tests.integration.rtpmidi_peers import NodePeer, node_available
from tests.integration.test_browser import (
    CHROMIUM, CHROMIUM_ARGS, JamPage, expect, sync_playwright,
)
from tests.integration.test_oscgroups_nat import (
    BRIDGE_PORT, CLIENTS, DEMO, GATEWAY, RELAY_PORTS, SERVER_PORT, Client, build,
)
from tests.integration import test_oscgroups_nat


pytestmark = pytest.mark.external

WEB_PORT = 8443
RTPMIDI_PORT = 5004
NODE_PORT = 5008
NOTES = {"ann": 60, "dave-mac": 62, "bob": 64, "carol": 65}
DOORS = {"ann": "websocket behind cone NAT", "dave-mac": "AppleMIDI behind cone NAT",
         "bob": "OSCgroups behind symmetric NAT", "carol": "OSCgroups behind symmetric NAT"}
DEADLINE = 90.0
OSC_NOTE = re.compile(r"/midi/note(?:on)? iii \d+ (\d+) [1-9]")
# What an OSCgroups player sent, verbatim: it reaches another player only peer to peer
# (direct or relayed); what the bridge forwards from the session is /midi/noteon.
OSC_VERBATIM = re.compile(r"/midi/note iii \d+ (\d+) [1-9]")


rig = test_oscgroups_nat.rig      # the NAT rig fixture, namespaces removed after the test


@pytest.fixture
def players_rig(rig):
    """The NAT rig, with the players' programs at hand."""
    need_external(node_available(), "node and tests/peers/node_modules/rtpmidi are needed")
    need_external(os.path.exists(CHROMIUM) and sync_playwright is not None,
                  "Chromium and playwright are needed")
    return rig


def start_gateway(rig, srv, workdir, chain, key):
    config = {
        "sessions": [{"name": DEMO[0], "passphrase": DEMO[1],
                      # The AppleMIDI player's router, as the gateway sees it.
                      "allow_addresses": ["198.18.4.1/32"]}],
        "network": {"bind": "0.0.0.0", "public_address": GATEWAY},
        "web": {"port": WEB_PORT, "tls": {"certificate": chain, "key": key}},
        "websocket": {"ping_interval": 1.0},
        "rtpmidi": {"sessions": [{"session": DEMO[0], "port": RTPMIDI_PORT}]},
        "oscgroups": {"port": SERVER_PORT, "bridge": {"port": BRIDGE_PORT, "groups": [DEMO[0]]},
                      "relay": {"policy": "auto", "port_min": RELAY_PORTS[0],
                                "port_max": RELAY_PORTS[1]}},
        "logging": {"level": "info"},
        "status": {"admin_token": ADMIN_TOKEN},
    }
    config_path = os.path.join(workdir, "config.yaml")
    with open(config_path, "w") as stream:
        yaml.safe_dump(config, stream)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    log_path = os.path.join(workdir, "twistd.log")
    with open(log_path, "w") as log:
        rig.spawn(srv, [twistd, "-n", "--pidfile=", "netgateway", "-c", config_path],
                  cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while "jam page at" not in open(log_path).read():
        assert time.monotonic() < deadline, open(log_path).read()
        time.sleep(0.2)
    return log_path


def relay_status(rig, srv):
    script = textwrap.dedent(f"""
        import json, ssl, urllib.request
        context = ssl._create_unverified_context()
        request = urllib.request.Request("https://{GATEWAY}:{WEB_PORT}/status",
                                         headers={{"Authorization": "Bearer {ADMIN_TOKEN}"}})
        status = json.load(urllib.request.urlopen(request, timeout=3, context=context))
        print(json.dumps(status["doors"]["oscgroups"]["relay"]))
    """)
    return yaml.safe_load(rig.ns(srv, sys.executable, "-c", script))


def chromium_in(namespace, directory):
    """An executable that starts Chromium inside ``namespace`` (playwright's pipe goes along)."""
    wrapper = os.path.join(directory, "chromium-in-namespace")
    with open(wrapper, "w") as stream:
        stream.write(f'#!/bin/sh\nexec ip netns exec {namespace} {CHROMIUM} "$@"\n')
    os.chmod(wrapper, os.stat(wrapper).st_mode | stat.S_IEXEC)
    return wrapper


def spki_pin(certificate):
    """Chromium's --ignore-certificate-errors-spki-list value that trusts ``certificate``."""
    spki = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class NodeListener:
    """What the AppleMIDI player heard, drained from its event queue."""

    def __init__(self, peer):
        self.peer = peer
        self.notes = set()

    def heard(self):
        while True:
            try:
                event = self.peer.events.get_nowait()
            except queue.Empty:
                return self.notes
            if event["event"] == "midi" and event["data"][0] & 0xF0 == 0x90:
                self.notes.add(event["data"][1])


def test_players_behind_nats_join_every_door_of_a_public_gateway_and_hear_each_other(
        players_rig, tmp_path):
    rig = players_rig
    srv, hosts = build(rig, "home")
    authority = Authority()
    leaf = authority.issue(tmp_path / "fullchain.pem", tmp_path / "privkey.pem",
                           common_name="jam.example.org", address=GATEWAY)
    log_path = start_gateway(rig, srv, str(tmp_path), str(tmp_path / "fullchain.pem"),
                             str(tmp_path / "privkey.pem"))

    osc = {name: Client(rig, hosts[name], name, CLIENTS[name][2], "netgateway")
           for name in ("bob", "carol")}
    node = NodePeer(NODE_PORT, "dave-mac", prefix=["ip", "netns", "exec", hosts["dave"]])
    listener = NodeListener(node)
    try:
        node.connect(RTPMIDI_PORT, host=GATEWAY)
        node.expect("synced", timeout=20)
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), headless=True,
                executable_path=chromium_in(hosts["alice"], str(tmp_path)),
                args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={spki_pin(leaf)}",
                      f"--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE {GATEWAY}"])
            context.set_default_timeout(15_000)
            page = JamPage(context, type("Site", (), {"web_url": f"https://{GATEWAY}:{WEB_PORT}"}))
            # Over https from another network the page is a secure context: Web MIDI is
            # offered, and asked for on the player's press.
            assert page.page.evaluate("window.isSecureContext") is True
            expect(page.page.locator("#midi-status")).to_contain_text('press "Use MIDI devices"')
            page.join("ann", DEMO[0], DEMO[1])
            # The press asks the browser; this machine has no MIDI system (shared/testing.md),
            # so the browser says no, and the page lets the player try again.
            page.page.click("#midi-enable")
            expect(page.page.locator("#midi-status")).to_contain_text(
                "Web MIDI was not allowed")
            expect(page.page.locator("#midi-enable")).to_be_enabled()

            def play_osc(velocity):
                for name, client in osc.items():
                    with contextlib.suppress(RuntimeError):
                        rig.ns(hosts[name], "oscsend", "127.0.0.1", str(client.tx_port),
                               "/midi/note", "iii", "1", str(NOTES[name]), str(velocity))

            def verbatim(name):
                return {int(match.group(1)) for line in osc[name].received.current()
                        for match in [OSC_VERBATIM.search(line)] if match}

            def heard_by():
                logged = page.page.eval_on_selector_all(
                    "#log li", "entries => entries.map(entry => Number(entry.dataset.note))")
                osc_heard = {name: {int(match.group(1)) for line in client.received.current()
                                    for match in [OSC_NOTE.search(line)] if match}
                             for name, client in osc.items()}
                return {"ann": set(logged), "dave-mac": set(listener.heard()), **osc_heard}

            pairs = list(itertools.permutations(NOTES, 2))
            started = time.monotonic()
            while True:
                heard = heard_by()
                matrix = {(a, b): NOTES[a] in heard[b] for a, b in pairs}
                relayed = {("bob", "carol"): NOTES["bob"] in verbatim("carol"),
                           ("carol", "bob"): NOTES["carol"] in verbatim("bob")}
                if all(matrix.values()) and all(relayed.values()) \
                        or time.monotonic() - started > DEADLINE:
                    break
                page.press(NOTES["ann"])
                node.send([0x90, NOTES["dave-mac"], 100])
                play_osc(100)
                time.sleep(0.3)
                page.release()
                node.send([0x80, NOTES["dave-mac"], 0])
                play_osc(0)
                time.sleep(0.7)
            seconds = time.monotonic() - started
            page.screenshot("public-host-ann.png")
            context.close()
        relay = relay_status(rig, srv)
    finally:
        node.close()

    lines = [f"door x NAT matrix: {sum(matrix.values())}/{len(matrix)} directed pairs heard"
             f" each other within {seconds:.0f} s"]
    for (sender, receiver), ok in sorted(matrix.items()):
        lines.append(f"  {sender:>8} ({DOORS[sender]}) -> {receiver:<8} {'ok' if ok else 'FAIL'}")
    lines += [f"  {sender:>8} -> {receiver:<8} peer to peer through the relay:"
              f" {'ok' if ok else 'FAIL'}" for (sender, receiver), ok in relayed.items()]
    lines.append(f"  relay forwarded {relay['forwarded']}, allocations"
                 f" {sorted(relay.get('allocations', {}))}")
    log = open(log_path).read()
    logged = log.splitlines()
    start = next(index for index, line in enumerate(logged) if "jam page at" in line)
    print("\n".join(logged[start:start + 6] + lines))
    assert all(matrix.values()) and all(relayed.values()), "\n".join(lines) + "\n" + log[-3000:]
    # Only the pair of symmetric NATs needed the relay.
    assert sorted(relay.get("allocations", {})) == ["bob", "carol"], relay
    assert relay["forwarded"]["packets"] > 0, relay
    assert "Traceback" not in log, log[-3000:]
