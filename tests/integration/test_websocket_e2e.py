"""End to end: real twistd process, real autobahn WebSocket clients."""

import asyncio
import signal

from tests.wsclient import JamClient

DEMO = ("demo", "play along with netgateway demo")
MIRROR = ("mirror", "mirror mirror on the wall")


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario, 30))


def test_two_members_exchange_notes_both_ways(gateway):
    async def scenario():
        alice = await JamClient.connect(gateway.ws_url)
        bob = await JamClient.connect(gateway.ws_url)
        assert (await alice.join(*DEMO, "alice"))["type"] == "joined"
        joined = await bob.join(*DEMO, "bob", midi="binary")
        assert joined["type"] == "joined"
        assert sorted(m["name"] for m in joined["members"]) == ["alice", "bob"]
        change = await alice.expect(lambda m: m["type"] == "members")
        assert (change["change"], change["member"]["name"]) == ("join", "bob")

        alice.send_midi([0x90, 60, 100])
        heard = await bob.midi()
        assert heard == {"type": "binary", "data": bytes([0x90, 60, 100])}

        bob.send_binary([0x91, 64, 90, 65, 80])          # running status: two notes
        first, second = await alice.midi(), await alice.midi()
        assert first["data"] == [0x91, 64, 90] and second["data"] == [0x91, 65, 80]
        assert first["from"]["name"] == "bob" and first["from"]["door"] == "websocket"
        alice.close(), bob.close()

    run(scenario())


def test_bad_names_are_refused_and_counted_and_the_connection_may_try_again(gateway):
    async def scenario():
        client = await JamClient.connect(gateway.ws_url)
        for name in ("", "   ", "mallory\nnetgateway: forged", "\u202eyrollam", "nul\x00"):
            answer = await client.join(*DEMO, name)
            assert (answer["type"], answer["code"]) == ("error", "bad_name"), name
        assert (await client.join(*DEMO, "Zoë"))["member"]["name"] == "Zoë"

    run(scenario())
    status = gateway.status()
    assert status["refusals"]["bad_name"] == 5
    assert status["drops"]["websocket"]["join_bad_name"] == 5
    assert not any(line.startswith("netgateway: forged") for line in gateway.log.splitlines())


def test_sender_does_not_hear_itself(gateway):
    async def scenario():
        alice = await JamClient.connect(gateway.ws_url)
        bob = await JamClient.connect(gateway.ws_url)
        await alice.join(*DEMO, "alice")
        await bob.join(*DEMO, "bob")
        alice.send_midi([0x90, 60, 100])
        assert (await bob.midi())["data"] == [0x90, 60, 100]
        bob.send_midi([0x90, 62, 100])
        # The first MIDI alice gets is bob's note, not an echo of her own.
        assert (await alice.midi())["data"] == [0x90, 62, 100]

    run(scenario())


def test_wrong_passphrase_is_refused_and_counted(gateway):
    async def scenario():
        client = await JamClient.connect(gateway.ws_url)
        answer = await client.join("demo", "not the passphrase at all", "mallory")
        assert answer["type"] == "error" and answer["code"] == "wrong_passphrase"
        client.send_midi([0x90, 60, 100])
        refused = await client.expect(lambda m: m["type"] == "error")
        assert refused["code"] == "not_joined"

    run(scenario())
    status = gateway.status()
    assert status["refusals"]["wrong_passphrase"] == 1
    assert "not the passphrase at all" not in gateway.log


def test_departure_releases_held_notes(gateway):
    async def scenario():
        alice = await JamClient.connect(gateway.ws_url)
        bob = await JamClient.connect(gateway.ws_url)
        await alice.join(*DEMO, "alice")
        await bob.join(*DEMO, "bob")
        alice.send_midi([0x90, 60, 100, 0x90, 64, 100, 0xB0, 64, 127])
        for _ in range(3):
            await bob.midi()
        alice.abort()                                   # vanishes mid-chord
        released = [tuple((await bob.midi())["data"]) for _ in range(3)]
        assert sorted(released) == [(0x80, 60, 64), (0x80, 64, 64), (0xB0, 64, 0)]
        left = await bob.expect(lambda m: m["type"] == "members" and m["change"] == "leave")
        assert left["member"]["name"] == "alice"

    run(scenario())


def test_mirror_session_answers_a_fifth_up(gateway):
    async def scenario():
        solo = await JamClient.connect(gateway.ws_url)
        joined = await solo.join(*MIRROR, "solo")
        assert joined["mirror"] is True
        assert [m["door"] for m in joined["members"]] == ["mirror", "websocket"]
        solo.send_midi([0x90, 60, 100])
        echo = await solo.midi()
        assert echo["data"] == [0x90, 67, 100] and echo["from"]["name"] == "mirror"
        solo.send_midi([0x80, 60, 0])
        assert (await solo.midi())["data"] == [0x80, 67, 0]

    run(scenario())


def test_oversized_message_closes_with_1009(gateway_factory):
    gateway = gateway_factory({"websocket": {"max_message_bytes": 1024}})

    async def scenario():
        client = await JamClient.connect(gateway.ws_url)
        client.send({"type": "join", "session": "demo", "passphrase": "x" * 4096})
        code, _ = await client.closed()
        assert code == 1009

    run(scenario())


def test_status_and_metrics_pages(gateway):
    async def scenario():
        alice = await JamClient.connect(gateway.ws_url)
        await alice.join(*DEMO, "alice")
        status = gateway.status()
        demo = next(s for s in status["sessions"] if s["name"] == "demo")
        assert [m["name"] for m in demo["members"]] == ["alice"]
        code, headers, body = gateway.get("/metrics")
        assert code == 200 and b'netgateway_members{door="websocket"} 1.0' in body
        code, headers, body = gateway.get("/")
        assert code == 200 and b"<html" in body.lower()

    run(scenario())


def test_sigterm_tells_members_and_exits_cleanly(gateway):
    async def scenario():
        client = await JamClient.connect(gateway.ws_url)
        await client.join(*DEMO, "alice")
        gateway.process.terminate()
        code, _ = await client.closed(timeout=10)
        assert code == 1001

    run(scenario())
    # twistd re-raises the stopping signal after a clean shutdown.
    assert gateway.process.wait(15) == -signal.SIGTERM
    assert "Server Shut Down" in gateway.log
    assert "Traceback" not in gateway.log
