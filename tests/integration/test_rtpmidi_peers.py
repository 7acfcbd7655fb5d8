"""The RTP-MIDI door against real peers: pymidi 0.5.0 and npm rtpmidi 1.0.0, in a real twistd.

Both gateway roles are covered: responder (the peer invites the gateway's
session) and initiator (``rtpmidi.invite`` makes the gateway invite the peer).
"""

import asyncio
import random
import socket
import time

import pytest

from tests.conftest import free_port, need_external
from tests.integration.rtpmidi_peers import (
    NodePeer, PymidiInitiator, PymidiResponder, node_available, pymidi_available,
)
from tests.wsclient import JamClient

pytestmark = pytest.mark.external

DEMO = ("demo", "play along with netgateway demo")
NOTE_ON = bytes((0x90, 60, 100))
NOTE_OFF = bytes((0x80, 60, 0))


def need_node():
    need_external(node_available(), "node and tests/peers/node_modules/rtpmidi are needed"
                                    " (cd tests/peers && npm ci)")


def need_pymidi():
    need_external(pymidi_available(), "pymidi 0.5.0 is needed (scripts/setup-python test)")


def rtpmidi_gateway(gateway_factory, invite=()):
    port = free_port(socket.SOCK_DGRAM, even=True)
    gateway = gateway_factory({"rtpmidi": {
        "sessions": [{"session": "demo", "port": port, "name": "gw demo"}],
        "invite": [{"session": "demo", "host": "127.0.0.1", "port": target}
                   for target in invite]}})
    return gateway, port


def rtpmidi_members(gateway):
    demo = next(s for s in gateway.status()["sessions"] if s["name"] == "demo")
    return [member for member in demo["members"] if member["door"] == "rtpmidi"]


def wait_for(condition, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value is not None:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what} not met within {timeout}s")


def wait_members(gateway, count, **expected):
    def ready():
        members = rtpmidi_members(gateway)
        if len(members) == count and all(
                all(expect(member.get(key)) for key, expect in expected.items())
                for member in members):
            return members
        return None
    return wait_for(ready, what=f"{count} rtpmidi members with {list(expected)}")


def run(scenario, timeout=60):
    return asyncio.run(asyncio.wait_for(scenario, timeout))


# -- pymidi 0.5.0 -------------------------------------------------------------------

def test_pymidi_responder_hears_the_gateway_as_initiator(gateway_factory):
    need_pymidi()
    pymidi_port = free_port(socket.SOCK_DGRAM, even=True)
    pymidi = PymidiResponder(pymidi_port)
    try:
        gateway, _ = rtpmidi_gateway(gateway_factory, invite=[pymidi_port])
        pymidi.expect("connected")
        # pymidi answers CK from a second SSRC; the sync still completes.
        [member] = wait_members(gateway, 1, rtt_ms=lambda rtt: rtt is not None)
        assert member["role"] == "initiator" and member["name"] == "pymidi"

        async def scenario():
            player = await JamClient.connect(gateway.ws_url)
            await player.join(*DEMO, "player")
            player.send_midi(NOTE_ON)
            player.send_midi(NOTE_OFF)
            assert await asyncio.to_thread(pymidi.expect, "midi") == NOTE_ON
            assert await asyncio.to_thread(pymidi.expect, "midi") == NOTE_OFF

        run(scenario())
        _, _, metrics = gateway.get("/metrics")
        assert b"netgateway_rtpmidi_rtt_seconds{" in metrics
        assert b'netgateway_dropped_total{door="rtpmidi"' not in metrics
    finally:
        pymidi.close()


def test_pymidi_struct_initiator_notes_both_ways(gateway_factory):
    need_pymidi()
    gateway, port = rtpmidi_gateway(gateway_factory)
    driver = PymidiInitiator(free_port(socket.SOCK_DGRAM, even=True))
    try:
        control_ok, data_ok = driver.invite(port)
        assert (control_ok.command, data_ok.command) == (b"OK", b"OK")
        assert control_ok.ssrc == data_ok.ssrc and control_ok.name == "gw demo"
        assert driver.sync() >= 0
        wait_members(gateway, 1, rtt_ms=lambda rtt: rtt is not None)

        async def scenario():
            player = await JamClient.connect(gateway.ws_url)
            await player.join(*DEMO, "player")
            driver.send_notes([NOTE_ON, bytes((0x90, 64, 90))])
            assert (await player.midi())["data"] == list(NOTE_ON)
            assert (await player.midi())["data"] == [0x90, 64, 90]
            player.send_midi([0x91, 67, 80])
            assert await asyncio.to_thread(driver.midi) == bytes((0x91, 67, 80))
            driver.bye()
            # The driver left two notes sounding: the gateway releases them.
            released = {tuple((await player.midi())["data"]) for _ in range(2)}
            assert released == {(0x80, 60, 64), (0x80, 64, 64)}

        run(scenario())
        wait_members(gateway, 0)
    finally:
        driver.close()



def test_pymidi_style_initiator_with_a_data_port_ssrc_of_its_own(gateway_factory):
    # pymidi's protocol objects pick one SSRC per port: the data-port IN names a
    # second SSRC, tied to the control-port IN by its token; RTP, CK and BY use it.
    need_pymidi()
    gateway, port = rtpmidi_gateway(gateway_factory)
    driver = PymidiInitiator(free_port(socket.SOCK_DGRAM, even=True), name="pymidi ports",
                             data_ssrc=random.getrandbits(32))
    try:
        control_ok, data_ok = driver.invite(port)
        assert (control_ok.command, data_ok.command) == (b"OK", b"OK")
        assert driver.sync() >= 0
        [member] = wait_members(gateway, 1, rtt_ms=lambda rtt: rtt is not None)
        assert member["role"] == "responder" and member["name"] == "pymidi ports"

        async def scenario():
            player = await JamClient.connect(gateway.ws_url)
            await player.join(*DEMO, "player")
            driver.send_notes([NOTE_ON])
            heard = await player.midi()
            assert heard["data"] == list(NOTE_ON) and heard["from"]["name"] == "pymidi ports"
            player.send_midi([0x91, 67, 80])
            assert await asyncio.to_thread(driver.midi) == bytes((0x91, 67, 80))
            driver.bye(driver.data_ssrc)
            # The note the driver left sounding is released when it says BY.
            assert (await player.midi())["data"] == [0x80, 60, 64]

        run(scenario())
        wait_members(gateway, 0)
        _, _, metrics = gateway.get("/metrics")
        assert b'netgateway_dropped_total{door="rtpmidi"' not in metrics
    finally:
        driver.close()

def test_address_outside_the_allow_list_gets_no(gateway_factory):
    need_pymidi()
    port = free_port(socket.SOCK_DGRAM, even=True)
    gateway = gateway_factory({
        "sessions": [{"name": "demo", "passphrase": DEMO[1], "allow_addresses": ["10.0.0.0/8"]}],
        "rtpmidi": {"sessions": [{"session": "demo", "port": port}]}})
    driver = PymidiInitiator(free_port(socket.SOCK_DGRAM, even=True))
    try:
        [answer] = driver.invite(port)
        assert answer.command == b"NO"
        assert gateway.status()["drops"]["rtpmidi"]["invitation_refused"] >= 1
        assert "allow_addresses" in gateway.log
    finally:
        driver.close()


# -- node rtpmidi 1.0.0 -------------------------------------------------------------

def test_node_initiator_notes_both_ways_and_bye_releases(gateway_factory):
    need_node()
    gateway, port = rtpmidi_gateway(gateway_factory)
    node = NodePeer(free_port(socket.SOCK_DGRAM, even=True), "nodeI")
    try:
        node.connect(port)
        node.expect("joined")
        node.expect("synced")
        wait_members(gateway, 1, rtt_ms=lambda rtt: rtt is not None)

        async def scenario():
            player = await JamClient.connect(gateway.ws_url)
            await player.join(*DEMO, "player")
            node.send(NOTE_ON)
            heard = await player.midi()
            assert heard["data"] == list(NOTE_ON) and heard["from"]["name"] == "nodeI"
            player.send_midi([0x90, 62, 70])
            assert await asyncio.to_thread(node.midi) == bytes((0x90, 62, 70))
            await asyncio.to_thread(node.end)
            assert (await player.midi())["data"] == [0x80, 60, 64]

        run(scenario())
        wait_members(gateway, 0)
        assert "left session 'demo' (bye; 1 notes/pedals released)" in gateway.log
    finally:
        node.close()


def test_node_responder_invited_by_the_gateway(gateway_factory):
    need_node()
    node_port = free_port(socket.SOCK_DGRAM, even=True)
    node = NodePeer(node_port, "nodeR")
    try:
        gateway, _ = rtpmidi_gateway(gateway_factory, invite=[node_port])
        node.expect("joined")
        # node sends only after a CK exchange it started itself, which it
        # does after the gateway's CK2; the gateway must answer that CK0.
        node.expect("synced")
        [member] = wait_members(gateway, 1, rtt_ms=lambda rtt: rtt is not None)
        assert member["role"] == "initiator"

        async def scenario():
            player = await JamClient.connect(gateway.ws_url)
            await player.join(*DEMO, "player")
            player.send_midi(NOTE_ON)
            assert await asyncio.to_thread(node.midi) == NOTE_ON
            node.send([0x92, 48, 60])
            assert (await player.midi())["data"] == [0x92, 48, 60]
            await asyncio.to_thread(node.end)
            assert (await player.midi())["data"] == [0x82, 48, 64]

        run(scenario())
        wait_members(gateway, 0)
    finally:
        node.close()


# -- everyone together --------------------------------------------------------------

def test_node_pymidi_and_websocket_hear_each_other(gateway_factory):
    need_node()
    need_pymidi()
    gateway, port = rtpmidi_gateway(gateway_factory)
    node = NodePeer(free_port(socket.SOCK_DGRAM, even=True), "node")
    driver = PymidiInitiator(free_port(socket.SOCK_DGRAM, even=True))
    try:
        node.connect(port)
        node.expect("synced")
        driver.invite(port)
        driver.sync()
        wait_members(gateway, 2)

        async def scenario():
            player = await JamClient.connect(gateway.ws_url)
            await player.join(*DEMO, "browser")

            player.send_midi([0x90, 72, 100])
            assert await asyncio.to_thread(node.midi) == bytes((0x90, 72, 100))
            assert await asyncio.to_thread(driver.midi) == bytes((0x90, 72, 100))

            node.send([0x90, 74, 101])
            assert (await player.midi())["data"] == [0x90, 74, 101]
            assert await asyncio.to_thread(driver.midi) == bytes((0x90, 74, 101))

            driver.send_notes([bytes((0x90, 76, 102))])
            assert (await player.midi())["data"] == [0x90, 76, 102]
            assert await asyncio.to_thread(node.midi) == bytes((0x90, 76, 102))

        run(scenario())
        members = {member["name"]: member for member in rtpmidi_members(gateway)}
        assert set(members) == {"node", "pymidi driver"}
        assert all(member["packets_received"] >= 1 for member in members.values())
    finally:
        node.close()
        driver.close()


# -- mDNS -----------------------------------------------------------------------------

def test_sessions_are_advertised_over_mdns_until_stop(gateway_factory):
    import zeroconf

    port = free_port(socket.SOCK_DGRAM, even=True)
    name = f"gw mdns {port}"
    service_name = f"{name}._apple-midi._udp.local."
    gateway = gateway_factory({"rtpmidi": {
        "mdns": True, "sessions": [{"session": "demo", "port": port, "name": name}]}})
    browser = zeroconf.Zeroconf(interfaces=["127.0.0.1"])
    try:
        info = wait_for(lambda: browser.get_service_info("_apple-midi._udp.local.",
                                                         service_name, timeout=1000),
                        what="mDNS record")
        assert info.port == port and info.parsed_addresses() == ["127.0.0.1"]
        gateway.stop()
        assert "mDNS registration failed" not in gateway.log
        # Unregistering sends goodbye records: the name disappears.
        wait_for(lambda: True if browser.get_service_info(
            "_apple-midi._udp.local.", service_name, timeout=500) is None else None,
            what="mDNS goodbye")
    finally:
        browser.close()
