"""WebSocket door limits and TLS, against the real twistd process."""

import asyncio
import ssl

from tests.certificates import self_signed
from tests.wsclient import JamClient

DEMO = ("demo", "play along with netgateway demo")


def test_wss_with_configured_certificate(gateway_factory, tmp_path):
    cert, key = self_signed(tmp_path)
    gateway = gateway_factory({"web": {"tls": {"certificate": cert, "key": key}}})
    context = ssl.create_default_context(cafile=cert)
    port = gateway.config["web"]["port"]

    async def scenario():
        alice = await JamClient.connect(f"wss://127.0.0.1:{port}/ws", ssl=context)
        bob = await JamClient.connect(f"wss://127.0.0.1:{port}/ws", ssl=context)
        await alice.join(*DEMO, "alice")
        await bob.join(*DEMO, "bob")
        alice.send_midi([0x90, 60, 100])
        assert (await bob.midi())["data"] == [0x90, 60, 100]

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_slow_reader_is_disconnected_and_counted(gateway_factory):
    gateway = gateway_factory({"websocket": {"send_buffer_bytes": 65536},
                               "limits": {"events_per_second": 100000}})
    sysex = [0xF0] + [0x11] * 60000 + [0xF7]

    async def scenario():
        player = await JamClient.connect(gateway.ws_url)
        sleeper = await JamClient.connect(gateway.ws_url)
        listener = await JamClient.connect(gateway.ws_url)
        await player.join(*DEMO, "player")
        await sleeper.join(*DEMO, "sleeper")
        await listener.join(*DEMO, "listener", midi="binary")   # after the sleeper in the fan-out
        sleeper.protocol.transport.pause_reading()     # reads nothing from now on
        sent = 0
        for _ in range(400):          # ~100 MB of JSON towards the sleeper if all were queued
            player.send_binary(sysex)
            sent += 1
            await asyncio.sleep(0.005)
            if gateway.status()["drops"].get("websocket", {}).get("slow_reader"):
                break
        left = await player.expect(lambda m: m["type"] == "members" and m["change"] == "leave",
                                   timeout=20)
        assert left["member"]["name"] == "sleeper"
        # The sleeper is kicked from inside a fan-out; the member after it misses nothing.
        for _ in range(sent):
            assert (await listener.midi(timeout=20))["data"] == bytes(sysex)

    asyncio.run(asyncio.wait_for(scenario(), 120))
    assert gateway.status()["drops"]["websocket"]["slow_reader"] == 1


def test_passphrase_guessing_is_throttled_and_logged_once(gateway):
    """2,000 wrong guesses on one connection: a few checked, the rest throttled, one log line."""
    guesses = 2000

    async def scenario():
        guesser = await JamClient.connect(gateway.ws_url)
        codes = []
        for attempt in range(guesses):
            reply = await guesser.join("demo", f"guess number {attempt} is long", "mallory")
            codes.append(reply["code"])
        player = await JamClient.connect(gateway.ws_url)
        joined = await player.join(*DEMO, "player")    # the same address waits, right passphrase or not
        return codes, joined

    codes, joined = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert codes[:4] == ["wrong_passphrase"] * 4
    assert codes.count("throttled") >= guesses - 10
    refusals = gateway.status()["refusals"]
    assert refusals["throttled"] + refusals["wrong_passphrase"] == guesses + 1   # + the player
    refused_lines = [line for line in gateway.log.splitlines()
                     if "refused join from 127.0.0.1 door=websocket" in line]
    assert 1 <= len(refused_lines) <= 3, refused_lines
    assert not any("guess number" in line for line in gateway.log.splitlines())
    assert joined["type"] == "error" and joined["code"] == "throttled"
