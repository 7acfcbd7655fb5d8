"""End to end: a real twistd with the OSCgroups door, real client programs, liblo tools.

Everything runs on 127.0.0.1 (shared/protocols/oscgroups.md §2.1): two
``netgateway-oscgroups-client`` processes meet through the gateway's
rendezvous server, ``oscsend`` plays into a client's tx port, ``oscdump`` or
a plain socket listens on its rx port, and an autobahn WebSocket member
plays in the same session.
"""

import asyncio
import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from gateway.protocols.oscgroups import wire
from tests.conftest import REPO, free_port, need_external
from tests.wsclient import JamClient

LOOPBACK = "127.0.0.1"
DEMO = ("demo", "play along with netgateway demo")
# Two fresh clients exchange data 6-8 s after the second starts (§5.4).
CONNECT_DEADLINE = 25.0

pytestmark = pytest.mark.external


def client_command():
    installed = shutil.which("netgateway-oscgroups-client",
                             path=os.path.dirname(sys.executable))
    if installed:
        return [installed]
    return [sys.executable, "-m", "gateway.protocols.oscgroups.client_main"]


class OscClient:
    """One client program with its own three ports; output collected for asserts."""

    def __init__(self, server_port, name, group_password=DEMO[1], rx_port=None):
        self.name = name
        self.external_port = free_port(socket.SOCK_DGRAM)
        self.tx_port = free_port(socket.SOCK_DGRAM)
        self.rx_port = rx_port or free_port(socket.SOCK_DGRAM)
        command = client_command() + [
            LOOPBACK, str(server_port), str(self.external_port), str(self.tx_port),
            str(self.rx_port), name, name + " password", DEMO[0], group_password,
            "--bind", LOOPBACK]
        env = dict(os.environ, PYTHONPATH=REPO)
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)

    def send(self, address, types, *args):
        subprocess.run(["oscsend", LOOPBACK, str(self.tx_port), address, types,
                        *map(str, args)], check=True, timeout=5)

    def stop(self, sig=signal.SIGTERM):
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.communicate(timeout=10)[0]


@pytest.fixture
def osc_gateway(gateway_factory):
    """Start a gateway with the OSCgroups door; returns (gateway, server port, start_client)."""
    need_external(shutil.which("oscsend") and shutil.which("oscdump"),
                  "liblo-tools (oscsend, oscdump) is not installed")
    clients = []

    def start(timeout=60):
        server_port = free_port(socket.SOCK_DGRAM)
        gateway = gateway_factory({"oscgroups": {
            "host": LOOPBACK, "port": server_port, "timeout": timeout,
            "bridge": {"port": free_port(socket.SOCK_DGRAM), "groups": ["demo"]}}})

        def start_client(name, **kwargs):
            osc_client = OscClient(server_port, name, **kwargs)
            clients.append(osc_client)
            return osc_client

        return gateway, start_client

    yield start
    for osc_client in clients:
        with contextlib.suppress(subprocess.TimeoutExpired):
            osc_client.stop(signal.SIGKILL)


def receiving_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.setblocking(False)
    return sock


def osc_messages(sock):
    """Every OSC message waiting on ``sock`` (peer pings included, §7.4)."""
    messages = []
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return messages
        with contextlib.suppress(wire.MalformedPacket):
            messages.extend(wire.parse_packet(data))


async def until(condition, what, timeout=CONNECT_DEADLINE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def bridge_path(gateway, name):
    peer = gateway.status()["doors"]["oscgroups"]["bridge"]["peers"].get(name)
    return peer and peer["path"]


def demo_members(gateway):
    demo = next(s for s in gateway.status()["sessions"] if s["name"] == "demo")
    return {(member["door"], member["name"]) for member in demo["members"]}


def run(scenario, timeout=90):
    return asyncio.run(asyncio.wait_for(scenario, timeout))


def test_plain_oscgroups_traffic_flows_between_two_clients(osc_gateway):
    gateway, start_client = osc_gateway()
    bob_rx = free_port(socket.SOCK_DGRAM)
    dump = subprocess.Popen(["stdbuf", "-oL", "oscdump", str(bob_rx)],
                            stdout=subprocess.PIPE, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in dump.stdout],
                     daemon=True).start()
    try:
        alice = start_client("alice")
        bob = start_client("bob", rx_port=bob_rx)
        deadline = time.monotonic() + CONNECT_DEADLINE
        heard = None
        while heard is None and time.monotonic() < deadline:
            assert alice.process.poll() is None and bob.process.poll() is None
            alice.send("/test/hello", "sif", "hi", 42, 3.5)
            with contextlib.suppress(queue.Empty):
                while heard is None:
                    # oscdump writes "<time tag> <address> <types> <args...>".
                    words = lines.get(timeout=0.5).split()
                    heard = words[1:] if words[1:2] == ["/test/hello"] else None
        assert heard is not None, f"nothing reached bob's rx port; {gateway.status()['doors']}"
        assert heard[:4] == ["/test/hello", "sif", '"hi"', "42"] and float(heard[4]) == 3.5
    finally:
        dump.kill()
        dump.wait()
    alice_output = alice.stop()
    assert "ok: user 'alice' is a member of group 'demo'" in alice_output
    assert f"path to 'bob': private {LOOPBACK}:{bob.external_port}" in alice_output


def test_osc_client_and_websocket_member_play_together(osc_gateway):
    gateway, start_client = osc_gateway()
    alice_rx = receiving_socket()
    alice = start_client("alice", rx_port=alice_rx.getsockname()[1])

    async def scenario():
        await until(lambda: bridge_path(gateway, "alice"), "the bridge's path to alice")
        await until(lambda: ("oscgroups", "alice") in demo_members(gateway),
                    "alice in the demo session")
        web = await JamClient.connect(gateway.ws_url)
        assert (await web.join(*DEMO, "wendy"))["type"] == "joined"

        # Alice's client sends to the bridge only once the bridge has pinged it.
        async def heard_by_web():
            alice.send("/midi/note", "iii", 1, 60, 100)
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                return await web.midi(timeout=1.0)
        heard = await until_async(heard_by_web, "alice's note at the WebSocket member")
        assert heard["data"] == [0x90, 60, 100]
        assert heard["from"] == {**heard["from"], "name": "alice", "door": "oscgroups"}

        osc_messages(alice_rx)
        web.send_midi([0x90, 62, 90])
        received = await until(
            lambda: [m for m in osc_messages(alice_rx) if m.address.startswith("/midi")],
            "the WebSocket member's note at alice's rx port", timeout=5)
        assert received == [wire.Message("/midi/noteon", "iii", (1, 62, 90))]
        web.close()

    run(scenario())
    alice_rx.close()
    assert alice.process.poll() is None
    _status, _headers, metrics = gateway.get("/metrics")
    assert b"netgateway_oscgroups_users 2.0" in metrics          # alice and the bridge
    assert b"netgateway_oscgroups_bridge_peers 1.0" in metrics


async def until_async(attempt, what, timeout=CONNECT_DEADLINE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await attempt()
        if result:
            return result
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_wrong_group_password_is_refused_and_counted(osc_gateway):
    gateway, start_client = osc_gateway()
    mallory = start_client("mallory", group_password="not the demo passphrase")

    async def scenario():
        await until(lambda: gateway.status()["drops"].get("oscgroups", {})
                    .get("refused_wrong_group_password"), "the refusal to be counted", 10)

    run(scenario())
    output = mallory.stop()
    assert ("group membership error: server returned status of 'wrong password' for user"
            " 'mallory' membership of group 'demo'") in output
    status = gateway.status()
    assert "mallory" not in status["doors"]["oscgroups"]["server"]["groups"].get("demo", [])
    assert ("oscgroups", "mallory") not in demo_members(gateway)
    assert ("netgateway: refused join from 127.0.0.1 door=oscgroups session='demo'"
            " reason=wrong_passphrase") in gateway.log
    assert "not the demo passphrase" not in gateway.log
    assert DEMO[1] not in gateway.log


def test_an_empty_user_name_is_refused_at_registration_and_counted(osc_gateway):
    gateway, start_client = osc_gateway()
    nobody = start_client("")

    async def scenario():
        await until(lambda: gateway.status()["drops"].get("oscgroups", {})
                    .get("refused_bad_user_name"), "the refusal to be counted", 10)

    run(scenario())
    output = nobody.stop()
    assert ("user registration error: server returned status of 'bad user name' for user"
            " ''") in output
    assert "" not in gateway.status()["doors"]["oscgroups"]["server"]["groups"].get("demo", [])
    assert ("oscgroups", "") not in demo_members(gateway)


def test_killed_client_holding_a_note_is_released_after_the_timeout(osc_gateway):
    timeout = 8
    gateway, start_client = osc_gateway(timeout=timeout)
    alice = start_client("alice")

    async def scenario():
        await until(lambda: bridge_path(gateway, "alice"), "the bridge's path to alice")
        web = await JamClient.connect(gateway.ws_url)
        await web.join(*DEMO, "wendy")

        async def heard_by_web():
            alice.send("/midi/noteon", "iii", 1, 64, 110)
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                return await web.midi(timeout=1.0)
        assert (await until_async(heard_by_web, "alice's note"))["data"] == [0x90, 64, 110]

        alice.process.kill()
        killed_at = time.monotonic()
        # Purge after `timeout` s without alive (+10%), then two missed bridge replies.
        released = await web.midi(timeout=timeout * 1.1 + 20)
        assert released["data"] == [0x80, 64, 64]
        assert released["from"]["name"] == "alice"
        assert time.monotonic() - killed_at > timeout - 6
        await until(lambda: ("oscgroups", "alice") not in demo_members(gateway),
                    "alice to leave the session", 5)
        web.close()

    run(scenario())
    assert "alice" not in gateway.status()["doors"]["oscgroups"]["server"]["users"]
