"""WebSocket door limits and TLS, against the real twistd process."""

import asyncio
import json
import os
import re
import socket
import ssl
import struct
import time

from tests.certificates import self_signed
from tests.wsclient import JamClient

DEMO = ("demo", "play along with netgateway demo")
UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")
NO_UPGRADE = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def client_frame(opcode, payload, masked=True, length=None):
    """One final client frame; ``length`` claims a payload length other than the real one."""
    length = len(payload) if length is None else length
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head = bytes([0x80 | opcode, mask_bit | length])
    elif length < 1 << 16:
        head = bytes([0x80 | opcode, mask_bit | 126]) + struct.pack("!H", length)
    else:
        head = bytes([0x80 | opcode, mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


def garbage_connection(port, upgrade, garbage):
    """Open a connection, send ``upgrade`` and, once answered, ``garbage``; hang up
    as a flood does, without a closing handshake; return the server's answer to the
    last (its close frame or HTTP error)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(upgrade)
        answer = connection.recv(4096)
        if garbage:
            assert answer.startswith(b"HTTP/1.1 101"), answer
            connection.sendall(garbage)
            answer = connection.recv(4096)
        connection.shutdown(socket.SHUT_WR)
        try:
            while connection.recv(4096):     # until the server has closed its side too
                pass
        except ConnectionResetError:
            pass
        return answer


def close_code(frame):
    assert frame[0] == 0x88, frame
    return struct.unpack("!H", frame[2:4])[0]


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
    """400 wrong guesses, ten a connection (limits.pre_join_message_burst), each
    connection closed with 1008 at its eleventh: a few checked, the rest throttled
    unchecked, one log line."""
    connections, per_connection = 40, 10

    async def scenario():
        codes, closes = [], []
        for connection in range(connections):
            guesser = await JamClient.connect(gateway.ws_url)
            for attempt in range(per_connection):
                reply = await guesser.join("demo", f"guess {connection}.{attempt} is long",
                                           "mallory")
                codes.append(reply["code"])
            guesser.send({"type": "join", "session": "demo", "passphrase": "one too many!",
                          "name": "mallory"})
            closes.append((await guesser.closed())[0])
        player = await JamClient.connect(gateway.ws_url)
        joined = await player.join(*DEMO, "player")    # the same address waits, right passphrase or not
        return codes, closes, joined

    codes, closes, joined = asyncio.run(asyncio.wait_for(scenario(), 120))
    guesses = connections * per_connection
    assert codes[:4] == ["wrong_passphrase"] * 4
    assert codes.count("throttled") >= guesses - 10
    assert closes == [1008] * connections
    status = gateway.status()
    assert status["refusals"]["throttled"] + status["refusals"]["wrong_passphrase"] == guesses + 1
    assert status["drops"]["websocket"]["pre_join_messages"] == connections
    refused_lines = [line for line in gateway.log.splitlines()
                     if "refused join from 127.0.0.1 door=websocket" in line]
    assert 1 <= len(refused_lines) <= 3, refused_lines
    assert not any("guess " in line for line in gateway.log.splitlines())
    assert joined["type"] == "error" and joined["code"] == "throttled"


def test_garbage_connections_are_each_counted_and_logged_in_a_few_lines(gateway_factory):
    """300 broken connections from one address: all counted by kind, a few log lines
    that say how many they left out."""
    gateway = gateway_factory({"logging": {"drop_log_interval": 2.0}})
    port = gateway.config["web"]["port"]
    kinds = {
        "protocol_error_1007": (UPGRADE, client_frame(0x1, b"\xff\xfe not UTF-8")),
        "protocol_error_1002": (UPGRADE, client_frame(0x1, b"unmasked", masked=False)),
        "protocol_error_1009": (UPGRADE, client_frame(0x2, b"", length=10_000_000)),
        "handshake_failed": (NO_UPGRADE, None),
    }
    log_before = os.path.getsize(gateway.log_path)
    started = time.monotonic()
    for attempt in range(300):
        kind = sorted(kinds)[attempt % len(kinds)]
        answer = garbage_connection(port, *kinds[kind])
        if kind == "handshake_failed":
            assert answer.startswith(b"HTTP/1.1 426 "), answer
        else:
            assert close_code(answer) == int(kind.rsplit("_", 1)[1])

    async def still_playing():
        alice = await JamClient.connect(gateway.ws_url)
        bob = await JamClient.connect(gateway.ws_url)
        await alice.join(*DEMO, "alice")
        await bob.join(*DEMO, "bob")
        alice.send_midi([0x90, 60, 100])
        assert (await bob.midi())["data"] == [0x90, 60, 100]

    asyncio.run(asyncio.wait_for(still_playing(), 30))
    intervals = (time.monotonic() - started) // 2.0
    drops = gateway.status()["drops"]["websocket"]
    assert {kind: drops.get(kind) for kind in kinds} == {kind: 75 for kind in kinds}
    _, _, metrics = gateway.get("/metrics")
    for kind in kinds:
        assert re.search(rf'netgateway_dropped_total{{door="websocket",reason="{kind}"}} 75\.0',
                         metrics.decode()), kind
    with open(gateway.log_path, "rb") as log:
        log.seek(log_before)
        written = log.read()
    # autobahn alone wrote three lines for each: some 130 KB for these 300.
    assert len(written) < 5000, written.decode()
    lines = written.decode().splitlines()
    assert not any("autobahn" in line for line in lines), lines
    # Once the flood's interval ends, a summary line reports what was left out.
    time.sleep(2.3)
    with open(gateway.log_path, "rb") as log:
        log.seek(log_before)
        lines = log.read().decode().splitlines()
    dropped = [line for line in lines if "websocket: dropped input from 127.0.0.1" in line]
    summaries = [line for line in dropped if "more like this not logged" in line]
    assert 1 <= len(dropped) - len(summaries) <= 1 + intervals, dropped   # one per interval
    assert summaries, dropped
    left_out = sum(int(count) for line in summaries
                   for count in re.findall(r"\((\d+) more like this not logged\)", line))
    assert len(dropped) - len(summaries) + left_out == 300, dropped


def server_frames(data):
    """(opcode, payload) of each unmasked server frame in ``data``."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if length == 126:
            length, at = struct.unpack("!H", data[at:at + 2])[0], at + 2
        elif length == 127:
            length, at = struct.unpack("!Q", data[at:at + 8])[0], at + 8
        frames.append((opcode, data[at:at + length]))
        at += length
    return frames


def test_a_connection_sending_too_much_before_joining_is_closed_and_counted(gateway):
    """limits.pre_join_message_burst (10): a stream of guesses on one connection ends in a
    1008 close after ten; each guess it got to make was answered, the rest never read."""
    port = int(gateway.web_url.rsplit(":", 1)[1])
    guess = json.dumps({"type": "join", "session": "demo", "passphrase": "not it at all, no",
                        "name": "guesser"}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(UPGRADE)
        assert connection.recv(4096).startswith(b"HTTP/1.1 101")
        connection.sendall(b"".join(client_frame(0x1, guess) for _ in range(25)))
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    frames = server_frames(received)
    answers = [json.loads(payload)["code"] for opcode, payload in frames if opcode == 0x1]
    # Three free failures, a fourth that starts the back-off, then throttled unchecked.
    assert answers == ["wrong_passphrase"] * 4 + ["throttled"] * 6
    assert frames[-1][0] == 0x8 and struct.unpack("!H", frames[-1][1][:2])[0] == 1008
    drops = gateway.wait_for_status(
        lambda status: "pre_join_messages" in status["drops"].get("websocket", {}))
    assert drops["drops"]["websocket"]["pre_join_messages"] == 1
