"""End to end: the RTMP door of a real ``twistd -n netgateway`` and real RTMP peers.

The clients are Debian ffmpeg, rtmpdump (plain and FP9 handshakes) and
python-librtmp (tests/rtmp_peer.py), WebSocket members (tests/wsclient.py),
and raw sockets of the test's own for what no real client does: malformed
handshakes and chunk streams, fuzzed connections, a player that stops
reading. One gateway serves the whole module; after every test its RTMP door
must be quiet again (no connection, live stream or web listener left) and
its log free of tracebacks. Everything runs on 127.0.0.1, every wait is
bounded, and every process is ended by its PID.

URLs: ``rtmp://HOST:PORT/jam/SESSION/STREAM``, the passphrase and player name
as connect arguments (``-rtmp_conn``, ``rtmpdump -C``) or, for ffmpeg, whose
``-rtmp_conn`` strings cannot hold spaces, as a query on the stream name.
"""

import asyncio
import os
import random
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.conftest import BASE_CONFIG, GatewayProcess, free_port, merge
from tests.rtmp_peer import (
    DATA_ONLY, FFMPEG, FLV_AUDIO, FLV_SCRIPT, FLV_VIDEO, LibrtmpClient, amf0_decode,
    amf0_encode_all, command, ffmpeg_play, ffmpeg_play_data, ffmpeg_publish_flv,
    ffmpeg_publish_sine, ffprobe, flv_tags, make_midi_flv, make_sine_flv, need_rtmp_tools,
    plain_handshake, rtmp_chunks, rtmpdump_play, run_bounded, stop_process,
)
from tests.wsclient import JamClient

pytestmark = pytest.mark.external

DEMO = "demo"
DEMO_PASSPHRASE = "play along with netgateway demo"
SMALL, SMALL_PASSPHRASE = "small", "a session for two players only"
FUZZ, FUZZ_PASSPHRASE = "fuzz", "fuzzing is a kind of jamming too"
WRONG_PASSPHRASE = "certainly-not-the-demo-passphrase"
HANDSHAKE_TIMEOUT = 2.0
SLOW_PLAYER_SECONDS = 1.5
AAC_FRAME_MS = 1024 / 44.1


# -- the gateway -------------------------------------------------------------------

class Gateway:
    """The module's gateway process and what the tests ask of it."""

    def __init__(self, process):
        self.process = process
        self.rtmp_port = process.config["rtmp"]["port"]
        self.web_port = process.config["web"]["port"]
        self.ws_url = process.ws_url

    def url(self, stream, session=DEMO, passphrase=DEMO_PASSPHRASE, name=None):
        """An ffmpeg URL: session in the path, passphrase and name as the stream's query."""
        query = {"passphrase": passphrase}
        if name:
            query["name"] = name
        return (f"rtmp://127.0.0.1:{self.rtmp_port}/jam/{session}/{stream}?"
                + urllib.parse.urlencode(query, quote_via=urllib.parse.quote))

    def plain_url(self, stream, session=DEMO):
        return f"rtmp://127.0.0.1:{self.rtmp_port}/jam/{session}/{stream}"

    def http_flv(self, stream, session=DEMO, passphrase=DEMO_PASSPHRASE, scheme="http"):
        return (f"{scheme}://127.0.0.1:{self.web_port}/live/{session}/{stream}.flv?passphrase="
                + urllib.parse.quote(passphrase))

    def status(self):
        return self.process.status()

    def rtmp(self):
        return self.status()["doors"]["rtmp"]

    def drops(self):
        return dict(self.status()["drops"].get("rtmp", {}))

    def refusals(self):
        return dict(self.status()["refusals"])

    def stream(self, name, session=DEMO):
        for stream in self.rtmp()["streams"]:
            if (stream["session"], stream["stream"]) == (session, name):
                return stream
        return None

    def wait_players(self, name, count, session=DEMO, timeout=15.0, peers=None):
        """Wait for ``count`` players; a timeout says what each of ``peers`` (Backgrounds) did."""
        try:
            wait_until(lambda: (self.stream(name, session) or {}).get("players", 0) >= count,
                       timeout, f"{count} players of {session}/{name}")
        except AssertionError as error:
            raise AssertionError(
                f"{error}; stream {self.stream(name, session)}, members "
                f"{[member['name'] for member in self.members(session)]}, drops {self.drops()}, "
                f"refusals {self.refusals()}, peers "
                f"{ {peer: background.state() for peer, background in (peers or {}).items()} }"
            ) from None

    def wait_publishing(self, name, session=DEMO, timeout=15.0):
        wait_until(lambda: (self.stream(name, session) or {}).get("publishing"), timeout,
                   f"a publisher of {session}/{name}")

    def members(self, session=DEMO):
        for entry in self.status()["sessions"]:
            if entry["name"] == session:
                return entry["members"]
        return []

    @property
    def log(self):
        return self.process.log


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def delta(after, before):
    return {key: after.get(key, 0) - before.get(key, 0)
            for key in set(after) | set(before) if after.get(key, 0) != before.get(key, 0)}


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory):
    need_rtmp_tools()
    config = merge(BASE_CONFIG, {
        "web": {"port": free_port()},
        "rtmp": {"port": free_port(), "handshake_timeout": HANDSHAKE_TIMEOUT,
                 "slow_player_seconds": SLOW_PLAYER_SECONDS},
        "limits": {"max_members_per_session": 64, "max_sessions": 1000,
                   "join_failures_before_throttle": 1000},
        "logging": {"level": "info"},
    })
    config["sessions"] = config["sessions"] + [
        {"name": SMALL, "passphrase": SMALL_PASSPHRASE, "max_members": 2},
        {"name": FUZZ, "passphrase": FUZZ_PASSPHRASE},
    ]
    process = GatewayProcess(config, str(tmp_path_factory.mktemp("gateway"))).start()
    try:
        yield Gateway(process)
    finally:
        process.stop()


@pytest.fixture
def gw(module_gateway):
    """The gateway; after the test its RTMP door is checked quiet and its log clean."""
    yield module_gateway

    def quiet():
        rtmp = module_gateway.rtmp()
        return rtmp["connections"] == 0 and not rtmp["streams"] and rtmp["web_listeners"] == 0

    wait_until(quiet, HANDSHAKE_TIMEOUT + 8, "the RTMP door to be quiet after the test")
    log = module_gateway.log
    assert "Traceback" not in log and "Unhandled" not in log, log[-5000:]


# -- threads and processes -----------------------------------------------------------

class Background:
    """``function(*args)`` in a daemon thread; :meth:`result` joins it (re-raising)."""

    def __init__(self, function, *args, **kwargs):
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(function, args, kwargs),
                                        daemon=True)
        self._thread.start()

    def _run(self, function, args, kwargs):
        try:
            self._value = function(*args, **kwargs)
        except BaseException as error:  # noqa: B036 -- handed to the test thread
            self._error = error

    def state(self):
        """'running', or what the peer returned or raised (for a failure message)."""
        if self._thread.is_alive():
            return "running"
        return repr(self._error if self._error is not None else self._value)[-600:]

    def result(self, timeout):
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"a background peer did not finish within {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value


def finished(process, timeout):
    """Wait for an ffmpeg publisher to end by itself; ``(returncode, stderr)``."""
    try:
        process.wait(timeout)
    finally:
        stop_process(process)
    return process.returncode, process.stderr.read().decode("utf-8", "replace")


def ffmpeg_publish_av(url, seconds, bitrate="3M"):
    """Popen: ffmpeg publishes ``seconds`` s of 640x360 25 fps H.264 at ``bitrate`` (CBR) + AAC."""
    command = [*FFMPEG, "-re", "-f", "lavfi",
               "-i", f"testsrc2=size=640x360:rate=25:duration={seconds}",
               "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}",
               "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25",
               "-b:v", bitrate, "-minrate", bitrate, "-maxrate", bitrate, "-bufsize", bitrate,
               "-x264-params", "nal-hrd=cbr", "-c:a", "aac", "-b:a", "128k", "-f", "flv", url]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def decode_errors(path):
    """ffmpeg's complaints while decoding every frame of ``path`` ('' when it decodes cleanly)."""
    returncode, stderr, timed_out = run_bounded(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"], 30,
        stdout=subprocess.DEVNULL)
    assert not timed_out
    return stderr.strip() if returncode == 0 else f"exit {returncode}: {stderr}"


def audio_timestamps(path):
    """Timestamps of the raw AAC frames (not the sequence header) recorded in ``path``."""
    return [ts for kind, ts, body in flv_tags(path)
            if kind == FLV_AUDIO and len(body) > 2 and body[1] == 1]


def assert_complete_audio(path, seconds):
    """``path`` holds every AAC frame of a ``seconds`` s stream it played from the start."""
    stamps = audio_timestamps(path)
    assert stamps, f"no audio in {path}"
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:])]
    assert stamps[0] <= 2 * AAC_FRAME_MS, stamps[:5]
    assert max(gaps) <= AAC_FRAME_MS + 2, f"a frame is missing: gaps {sorted(gaps)[-5:]}"
    assert stamps[-1] >= seconds * 1000 - 3 * AAC_FRAME_MS, stamps[-5:]
    assert decode_errors(path) == ""


# -- WebSocket members ----------------------------------------------------------------

def ws_listener(gw, name, count, timeout, joined, session=DEMO, passphrase=DEMO_PASSPHRASE,
                leave_after=None):
    """A WebSocket member that collects ``count`` MIDI messages (or what ``timeout`` allows).

    Sets ``joined`` once it is in the session. With ``leave_after`` it drops
    its connection (no close handshake) after that many messages.
    """
    async def scenario():
        client = await JamClient.connect(gw.ws_url)
        answer = await client.join(session, passphrase, name)
        assert answer["type"] == "joined", answer
        joined.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        heard = []
        while len(heard) < count:
            if leave_after is not None and len(heard) >= leave_after:
                client.abort()
                return heard
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                heard.append(await client.midi(timeout=remaining))
            except (TimeoutError, asyncio.TimeoutError):
                break
        client.close()
        return heard

    return asyncio.run(scenario())


def ws_player(gw, name, notes, interval, start, joined, linger=0.5):
    """A WebSocket member that plays ``notes`` once ``start`` is set, one per ``interval`` s."""
    async def scenario():
        client = await JamClient.connect(gw.ws_url)
        answer = await client.join(DEMO, DEMO_PASSPHRASE, name)
        assert answer["type"] == "joined", answer
        joined.set()
        while not start.is_set():
            await asyncio.sleep(0.02)
        for note in notes:
            client.send_midi(note)
            await asyncio.sleep(interval)
        await asyncio.sleep(linger)
        client.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def notes(count, first=48, channel=0):
    return [bytes((0x90 | channel, first + n % 48, 1 + n % 127)) for n in range(count)]


# -- raw RTMP, the test's own ----------------------------------------------------------

def connect_command(gw, session, passphrase, name):
    """connect to app ``jam/SESSION`` (``jam`` when ``session`` is None: the playpath names it)."""
    app = "jam" if session is None else f"jam/{session}"
    return command("connect", 1, {
        "app": app, "flashVer": "LNX 9,0,124,2", "fpad": False,
        "tcUrl": f"rtmp://127.0.0.1:{gw.rtmp_port}/{app}", "capabilities": 15.0,
        "audioCodecs": 3191.0, "videoCodecs": 252.0, "videoFunction": 1.0}, passphrase, name)


def player_bytes(gw, stream, rng, session=DEMO, passphrase=DEMO_PASSPHRASE, name="raw player"):
    """Everything a player sends, up to its play command, without waiting for answers."""
    return (plain_handshake(rng) + connect_command(gw, session, passphrase, name)
            + command("createStream", 2, None)
            + command("play", 3, None, stream, -2000.0, stream_id=1, csid=8))


def publisher_bytes(gw, stream, rng, session=FUZZ, passphrase=FUZZ_PASSPHRASE,
                    name="raw publisher"):
    """A publisher's whole conversation: publish, AAC frames, onMidi both ways, call('midi')."""
    data = [plain_handshake(rng), connect_command(gw, session, passphrase, name),
            command("releaseStream", 2, None, stream), command("FCPublish", 3, None, stream),
            command("createStream", 4, None),
            command("publish", 5, None, stream, "live", stream_id=1, csid=8),
            rtmp_chunks(4, 18, 1, amf0_encode_all(["@setDataFrame", "onMetaData",
                                                   {"audiocodecid": 10.0}])),
            rtmp_chunks(6, 8, 1, b"\xaf\x00\x12\x08")]
    for frame in range(4):
        data.append(rtmp_chunks(6, 8, 1, b"\xaf\x01" + rng.randbytes(300),
                                timestamp=23 * frame))
    data += [rtmp_chunks(4, 18, 1, amf0_encode_all(["onMidi", {"hex": "903c64"}])),
             rtmp_chunks(4, 18, 1, amf0_encode_all(["@setDataFrame", "onMidi",
                                                    {"bytes": [0x80, 60, 0]}])),
             command("midi", 6, None, "b04000")]
    return b"".join(data)


class RawPeer:
    """A TCP connection to the RTMP port that sends what the test says and reads on demand."""

    def __init__(self, gw, receive_buffer=None, timeout=5.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", gw.rtmp_port))
        self.received = bytearray()

    def send(self, data):
        """Send ``data``; False if the server had already closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def closed_by_server(self, within):
        """Read (into ``received``) until the server closes the connection: True, or False
        after ``within`` s with the connection still open."""
        deadline = time.monotonic() + within
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except OSError:
                return True         # reset
            if not data:
                return True
            if len(self.received) < 1 << 20:
                self.received += data

    def reset(self):
        """Vanish: close with a TCP reset, unread data and all."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def onmidi_values(raw):
    """The onMidi objects in back-to-back AMF0 data bodies (what ffmpeg -f data writes)."""
    values = amf0_decode(raw)
    return [item for name, item in zip(values, values[1:]) if name == "onMidi"]


# -- handshakes --------------------------------------------------------------------------

def test_handshake_matrix_every_client_connects_and_gets_media(gw, tmp_path):
    """ffmpeg publish and play (FP9 digest C1), rtmpdump plain and FP9 (-w/-x), python-librtmp
    play and publish (plain): each completes the handshake and connect, players get the sine."""
    seconds = 4
    stream = "matrix"

    def rtmpdump_conn(name):
        return ["-C", f"S:{DEMO_PASSPHRASE}", "-C", f"S:{name}"]

    players = {
        "ffmpeg_play": Background(ffmpeg_play, gw.url(stream, name="ffplayer"),
                                  tmp_path / "ffmpeg.flv", 3, timeout=seconds + 12),
        # rtmpdump's time runs from its own start, before the others connect and the
        # publisher starts: on a loaded machine 4 s of slack cut a recording short.
        "rtmpdump_plain": Background(rtmpdump_play, gw.plain_url(stream),
                                     tmp_path / "plain.flv", seconds + 12,
                                     extra=rtmpdump_conn("dump-plain")),
        "rtmpdump_fp9": Background(rtmpdump_play, gw.plain_url(stream), tmp_path / "fp9.flv",
                                   seconds + 12, fp9=True, extra=rtmpdump_conn("dump-fp9")),
    }

    def librtmp_player():
        with LibrtmpClient(gw.plain_url(stream), connect_data={
                "passphrase": DEMO_PASSPHRASE, "name": "librtmp player"}) as player:
            player.collect(seconds + 4, until=lambda p: p.media["audio"] >= 150)
            return player.media

    players["librtmp_play"] = Background(librtmp_player)
    gw.wait_players(stream, 4, peers=players)
    publisher = ffmpeg_publish_sine(gw.url(stream, name="ffpublisher"), seconds)
    gw.wait_publishing(stream)
    flash_versions = {member["name"]: member.get("flash_version") for member in gw.members()}

    with LibrtmpClient(gw.plain_url("librtmp-pub"), publish=True, connect_data=[
            DEMO_PASSPHRASE, "librtmp publisher"]) as librtmp_publisher:
        gw.wait_publishing("librtmp-pub")
        librtmp_publisher.send_data(["onMetaData", {"audiocodecid": 10.0}], 0, True)
        flash_versions.update({member["name"]: member.get("flash_version")
                               for member in gw.members()})

    assert finished(publisher, seconds + 10)[0] == 0
    results = {name: player.result(seconds + 25) for name, player in players.items()}
    for name, path in (("ffmpeg_play", "ffmpeg.flv"), ("rtmpdump_plain", "plain.flv"),
                       ("rtmpdump_fp9", "fp9.flv")):
        probe = ffprobe(tmp_path / path)
        assert probe["codec"] == "aac", (name, results[name])
        assert probe["duration"] >= 2.9, (name, probe["duration"], results[name])
    assert results["ffmpeg_play"][0] == 0, results["ffmpeg_play"]
    assert "Starting Live Stream" in results["rtmpdump_fp9"][1]
    assert results["librtmp_play"]["audio"] >= 150, results["librtmp_play"]
    # Who connected, as the door saw them (shared/protocols/rtmp-clients.md §1.3).
    assert flash_versions["ffpublisher"].startswith("FMLE/3.0"), flash_versions
    assert flash_versions["ffplayer"] == "LNX 9,0,124,2", flash_versions
    assert flash_versions["dump-plain"] == flash_versions["dump-fp9"] == "LNX 10,0,32,18", (
        flash_versions)
    # python-librtmp sends no flashVer unless told to.
    assert {"librtmp player", "librtmp publisher"} <= set(flash_versions), flash_versions


# -- MIDI ---------------------------------------------------------------------------------

def test_ffmpeg_published_onmidi_script_tags_reach_a_websocket_member_in_order(gw, tmp_path):
    sine = make_sine_flv(tmp_path / "sine.flv", 3)
    played = [(150 * n, bytes((0x90, 60 + n, 100))) for n in range(12)]
    make_midi_flv(sine, tmp_path / "midi.flv", played)
    joined = threading.Event()
    listener = Background(ws_listener, gw, "ws-listener", len(played), 15, joined)
    assert joined.wait(10)
    publisher = ffmpeg_publish_flv(tmp_path / "midi.flv", gw.url("fmidi", name="ffmidi"))
    returncode, stderr = finished(publisher, 15)
    assert returncode == 0, stderr
    heard = listener.result(20)
    assert [bytes(message["data"]) for message in heard] == [note for _, note in played]
    assert {(message["from"]["name"], message["from"]["door"]) for message in heard} == {
        ("ffmidi", "rtmp")}


def test_websocket_notes_reach_ffmpeg_and_librtmp_midi_players(gw):
    played = notes(16)
    joined, start = threading.Event(), threading.Event()
    ffmpeg_player = Background(ffmpeg_play_data, gw.url("midi", name="ffmpeg midi"), 4,
                               extra=DATA_ONLY)

    def librtmp_player():
        with LibrtmpClient(gw.plain_url("midi"), connect_data={
                "passphrase": DEMO_PASSPHRASE, "name": "librtmp midi"}) as player:
            player.collect(8, until=lambda p: len(p.data_named("onMidi")) >= len(played))
            return player.data

    librtmp = Background(librtmp_player)
    gw.wait_players("midi", 2, peers={"ffmpeg": ffmpeg_player, "librtmp": librtmp})
    player = Background(ws_player, gw, "ws-keys", played, 0.05, start, joined)
    assert joined.wait(10)
    start.set()
    player.result(15)
    raw, stderr = ffmpeg_player.result(15)
    from_ffmpeg = onmidi_values(raw)
    assert [bytes.fromhex(item["hex"]) for item in from_ffmpeg[:len(played)]] == played, stderr
    assert {item["from"] for item in from_ffmpeg[:len(played)]} == {"ws-keys"}
    data = librtmp.result(15)
    received = [(ts, values[1]) for ts, _, values in data if values[:1] == ["onMidi"]]
    assert [bytes(int(b) for b in item["bytes"]) for _, item in received[:len(played)]] == played
    assert [item["hex"] for _, item in received[:len(played)]] == [n.hex() for n in played]
    stamps = [ts for ts, _ in received]
    assert stamps == sorted(stamps)


def test_librtmp_onmidi_with_and_without_set_data_frame_and_midi_call(gw):
    joined = threading.Event()
    sent = [bytes((0x90, 60 + n, 90 + n)) for n in range(6)] + [bytes.fromhex("b04000")]
    listener = Background(ws_listener, gw, "ws-ears", len(sent), 10, joined)
    assert joined.wait(10)
    with LibrtmpClient(gw.plain_url("lmidi"), publish=True, connect_data={
            "passphrase": DEMO_PASSPHRASE, "name": "librtmp keys"}) as publisher:
        gw.wait_publishing("lmidi")
        for seq, note in enumerate(sent[:6]):
            if seq % 3 == 2:       # the bytes form, as a raw packet
                publisher.send_data(["onMidi", {"bytes": list(note)}])
            else:                  # hex, raw packet (even) or @setDataFrame-prefixed (odd)
                publisher.send_midi(seq, note, set_data_frame=seq % 2 == 1)
            publisher.advance(50)
            time.sleep(0.03)
        publisher.call("midi", sent[6].hex())
        heard = listener.result(15)
    assert [bytes(message["data"]) for message in heard] == sent
    assert {message["from"]["name"] for message in heard} == {"librtmp keys"}


# -- media ----------------------------------------------------------------------------------

def flv_over_websocket(url, seconds):
    """The bytes of an FLV-over-WebSocket stream, read for ``seconds`` s."""
    from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

    async def scenario():
        loop = asyncio.get_running_loop()
        chunks, opened = [], loop.create_future()

        class Reader(WebSocketClientProtocol):
            def onOpen(self):
                opened.set_result(self)

            def onMessage(self, payload, isBinary):
                chunks.append(payload)

        factory = WebSocketClientFactory(url)
        factory.protocol = Reader
        await loop.create_connection(factory, "127.0.0.1", int(url.split(":")[2].split("/")[0]))
        reader = await asyncio.wait_for(opened, 5)
        await asyncio.sleep(seconds)
        reader.sendClose(1000)
        await asyncio.sleep(0.2)
        return b"".join(chunks)

    return asyncio.run(scenario())


def test_sine_recorded_by_players_late_joiner_and_http_flv(gw, tmp_path):
    seconds = 6
    stream = "sine"
    early = {
        "ffmpeg": Background(ffmpeg_play, gw.url(stream, name="ffrec"), tmp_path / "ffmpeg.flv",
                             4, timeout=seconds + 12),
        "rtmpdump": Background(rtmpdump_play, gw.plain_url(stream), tmp_path / "rtmpdump.flv",
                               seconds + 5, extra=["-C", f"S:{DEMO_PASSPHRASE}", "-C", "S:rec"]),
    }
    gw.wait_players(stream, 2, peers=early)
    publisher = ffmpeg_publish_sine(gw.url(stream, name="sine publisher"), seconds)
    started = time.monotonic()
    gw.wait_publishing(stream)
    time.sleep(max(0.0, started + 1.0 - time.monotonic()))
    http = Background(run_bounded, [*FFMPEG, "-i", gw.http_flv(stream), "-t", "3", "-c", "copy",
                                    "-y", str(tmp_path / "http.flv")], seconds + 10,
                      stdout=subprocess.DEVNULL)
    websocket = Background(flv_over_websocket, gw.http_flv(stream, scheme="ws"), 2)
    time.sleep(max(0.0, started + 2.0 - time.monotonic()))
    late = Background(ffmpeg_play, gw.url(stream, name="late"), tmp_path / "late.flv", 2.5,
                      timeout=seconds + 10)
    late_dump = Background(rtmpdump_play, gw.plain_url(stream), tmp_path / "late_dump.flv",
                           seconds + 3, extra=["-C", f"S:{DEMO_PASSPHRASE}", "-C", "S:late dump"])
    assert finished(publisher, seconds + 10)[0] == 0

    results = {name: player.result(seconds + 20) for name, player in early.items()}
    results["late"] = late.result(seconds + 20)
    results["late_dump"] = late_dump.result(seconds + 20)
    results["http"] = http.result(seconds + 20)
    for name, wanted in (("ffmpeg", 4.0), ("rtmpdump", seconds), ("late", 2.5), ("http", 3.0)):
        path = tmp_path / f"{name}.flv"
        probe = ffprobe(path)
        start = float(probe["format"].get("start_time") or 0)
        assert probe["codec"] == "aac", (name, probe, results[name])
        assert abs(probe["duration"] - start - wanted) < 0.4, (name, probe["duration"], start)
        assert decode_errors(path) == "", name
    for name in ("ffmpeg", "late", "http"):
        assert results[name][0] == 0, (name, results[name])
    assert_complete_audio(tmp_path / "rtmpdump.flv", seconds)
    # The late joiners' recordings start with the cached sequence header, then audio;
    # rtmpdump keeps the stream's timestamps (ffmpeg starts its copy at 0).
    for name in ("late", "late_dump"):
        audio = [body for kind, _, body in flv_tags(tmp_path / f"{name}.flv")
                 if kind == FLV_AUDIO]
        assert audio[0][:2] == b"\xaf\x00" and audio[1][:2] == b"\xaf\x01", name
    late_stamps = audio_timestamps(tmp_path / "late_dump.flv")
    assert late_stamps[0] >= 1000 and late_stamps[-1] >= seconds * 1000 - 3 * AAC_FRAME_MS
    assert decode_errors(tmp_path / "late_dump.flv") == ""
    assert max(b - a for a, b in zip(late_stamps, late_stamps[1:])) <= AAC_FRAME_MS + 2

    flv = websocket.result(10)
    ws_path = tmp_path / "websocket.flv"
    ws_path.write_bytes(flv)
    tags = flv_tags(ws_path)
    assert flv[:5] == b"FLV\x01\x04"
    assert [kind for kind, _, _ in tags[:2]] == [FLV_SCRIPT, FLV_AUDIO]
    assert len(audio_timestamps(ws_path)) >= 60
    assert decode_errors(ws_path) == ""


# -- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["path", "playpath"])
def test_wrong_passphrase_is_refused_and_never_logged(gw, tmp_path, where):
    before = gw.refusals()
    if where == "path":        # session in the app: refused as the connect's _error
        url = gw.plain_url("live")
    else:                      # session as the playpath: refused on the stream, at publish
        url = f"rtmp://127.0.0.1:{gw.rtmp_port}/jam/{DEMO}"
    publisher = ffmpeg_publish_sine(url, 3, extra=["-rtmp_conn",
                                                   f"S:{WRONG_PASSPHRASE} S:mallory"])
    returncode, stderr = finished(publisher, 10)
    assert returncode != 0
    assert "Server error" in stderr and "passphrase" in stderr, stderr
    # What the door says, on the wire: the connect's _error, or onStatus on the stream.
    rng = random.Random(where)
    sent = plain_handshake(rng) + connect_command(
        gw, DEMO if where == "path" else None, WRONG_PASSPHRASE, "raw mallory")
    if where == "playpath":
        sent += (command("createStream", 2, None)
                 + command("publish", 3, None, DEMO, "live", stream_id=1, csid=8))
    with RawPeer(gw) as peer:
        assert peer.send(sent)
        assert peer.closed_by_server(3)
    answer = bytes(peer.received)
    assert b"NetConnection.Connect.Rejected" in answer
    wanted = b"\x02\x00\x06_error" if where == "path" else b"\x02\x00\x08onStatus"
    assert wanted in answer and b"wrong passphrase" in answer
    assert delta(gw.refusals(), before) == {"wrong_passphrase": 2}
    assert WRONG_PASSPHRASE not in gw.log


def test_full_session_refuses_the_next_member(gw):
    joined = [threading.Event(), threading.Event()]
    release = threading.Event()

    def member(name, event):
        async def scenario():
            client = await JamClient.connect(gw.ws_url)
            answer = await client.join(SMALL, SMALL_PASSPHRASE, name)
            assert answer["type"] == "joined", answer
            event.set()
            while not release.is_set():
                await asyncio.sleep(0.05)
            client.close()
        asyncio.run(asyncio.wait_for(scenario(), 20))

    members = [Background(member, f"seat{n}", event) for n, event in enumerate(joined)]
    assert all(event.wait(10) for event in joined)
    before = gw.refusals()
    try:
        publisher = ffmpeg_publish_sine(gw.url("live", SMALL, SMALL_PASSPHRASE, "third"), 3)
        returncode, stderr = finished(publisher, 10)
        rc, dump_stderr, _ = rtmpdump_play(gw.plain_url("live", SMALL), os.devnull, 6, extra=[
            "-C", f"S:{SMALL_PASSPHRASE}", "-C", "S:fourth"])
    finally:
        release.set()
    for background in members:
        background.result(10)
    assert returncode != 0 and "Server error" in stderr, stderr
    assert "rtmp server sent error" in dump_stderr, dump_stderr   # it shows no description
    assert delta(gw.refusals(), before) == {"session_full": 2}


def test_second_publisher_of_a_stream_gets_bad_name(gw, tmp_path):
    first = ffmpeg_publish_sine(gw.url("taken", name="first"), 5)
    player = Background(rtmpdump_play, gw.plain_url("taken"), tmp_path / "taken.flv", 9,
                        extra=["-C", f"S:{DEMO_PASSPHRASE}", "-C", "S:listener"])
    gw.wait_publishing("taken")
    gw.wait_players("taken", 1)
    before = gw.rtmp()["refused_publishers"]
    second = ffmpeg_publish_sine(gw.url("taken", name="second"), 3)
    returncode, stderr = finished(second, 10)
    assert returncode != 0 and "Server error" in stderr and "already has a publisher" in stderr, (
        stderr)
    with RawPeer(gw) as peer:            # the status code, on the wire
        assert peer.send(publisher_bytes(gw, "taken", random.Random(3), session=DEMO,
                                         passphrase=DEMO_PASSPHRASE, name="third"))
        peer.closed_by_server(1.0)
    assert b"NetStream.Publish.BadName" in peer.received
    assert gw.rtmp()["refused_publishers"] == before + 2
    assert finished(first, 15)[0] == 0
    player.result(15)
    assert_complete_audio(tmp_path / "taken.flv", 5)      # the first publisher, unharmed


def test_http_flv_wrong_passphrase_is_403_and_unknown_stream_404(gw):
    for passphrase, stream, wanted in ((WRONG_PASSPHRASE, "live", 403),
                                       (DEMO_PASSPHRASE, "nobody-publishes", 404)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(gw.http_flv(stream, passphrase=passphrase), timeout=5)
        assert refused.value.code == wanted
    assert WRONG_PASSPHRASE not in gw.log


# -- misbehaving peers ---------------------------------------------------------------------------

class Guarded:
    """A ``seconds`` s sine published on ``stream`` and an rtmpdump player recording it from
    its first frame; :meth:`check` says the recording is complete."""

    def __init__(self, gw, tmp_path, stream, seconds):
        self.gw, self.stream, self.seconds = gw, stream, seconds
        self.path = tmp_path / f"{stream}-guard.flv"
        self.player = Background(rtmpdump_play, gw.plain_url(stream), self.path, seconds + 6,
                                 extra=["-C", f"S:{DEMO_PASSPHRASE}", "-C", "S:guard"])
        gw.wait_players(stream, 1)
        self.publisher = ffmpeg_publish_sine(gw.url(stream, name="guarded publisher"), seconds)
        self.started = time.monotonic()
        gw.wait_publishing(stream)

    def check(self):
        """Wait for the stream's end; assert the guard recorded every frame of it."""
        elapsed = time.monotonic() - self.started
        assert elapsed < self.seconds - 0.5, f"the attack outlasted the stream ({elapsed:.1f}s)"
        returncode, stderr = finished(self.publisher, self.seconds + 10)
        assert returncode == 0, stderr
        self.player.result(self.seconds + 15)
        assert_complete_audio(self.path, self.seconds)


def attack(gw, data, within, pieces=1, receive_buffer=None):
    """Send ``data`` (in ``pieces`` writes) on a new connection; ``(closed by the server within
    ``within`` s, seconds it took)``. Our side closes with a reset afterwards."""
    started = time.monotonic()
    peer = RawPeer(gw, receive_buffer=receive_buffer)
    try:
        size = max(1, len(data) // pieces)
        for start in range(0, len(data), size):
            if not peer.send(data[start:start + size]):
                break
        closed = peer.closed_by_server(within)
        return closed, time.monotonic() - started
    finally:
        peer.reset()


def malformed(gw, rng):
    """Name -> (bytes, the drop reason the door must count)."""
    handshake = plain_handshake(rng)
    connect = connect_command(gw, DEMO, DEMO_PASSPHRASE, "malformed")
    huge = (b"\x03" + bytes(3) + b"\xff\xff\xff" + b"\x14" + bytes(4)) + rng.randbytes(128)
    unfinished = b"".join(                   # 70 chunk streams, each with half a message
        b"\x00" + bytes((csid - 64,)) + bytes(3) + (1000).to_bytes(3, "big") + b"\x09"
        + bytes((1, 0, 0, 0)) + rng.randbytes(128) for csid in range(64, 134))
    return {
        "garbage": (b"\x00" + rng.randbytes(3100), "bad_handshake"),
        "http": (b"GET /jam/demo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "bad_handshake"),
        "rtmpe": (b"\x06" + rng.randbytes(1536), "bad_handshake"),
        "truncated_handshake": (b"\x03" + rng.randbytes(700), "handshake_timeout"),
        "truncated_chunk": (handshake + connect[:40], "handshake_timeout"),
        "bad_amf_connect": (handshake + rtmp_chunks(3, 20, 0, amf0_encode_all(["connect", 1.0])
                                                    + b"\x03\x00\x03app\x02\xff\xff"),
                            "bad_amf"),
        "huge_message": (handshake + huge, "bad_chunk_stream"),
        "type_1_first": (handshake + b"\x45" + bytes(7) + rng.randbytes(64), "bad_chunk_stream"),
        "huge_chunk_size": (handshake + rtmp_chunks(2, 1, 0, struct.pack(">I", 0x7FFFFFFF)),
                            "bad_chunk_stream"),
        "too_many_chunk_streams": (handshake + unfinished, "bad_chunk_stream"),
        "chunk_size_then_garbage": (handshake + connect + rtmp_chunks(2, 1, 0, b"\x00\x00\x00\x10")
                                    + b"\x7f" * 64, "bad_chunk_stream"),
    }


def test_malformed_handshakes_and_chunk_streams_are_closed_counted_and_harmless(gw, tmp_path):
    rng = random.Random(20261202)
    cases = malformed(gw, rng)
    before = gw.drops()
    guard = Guarded(gw, tmp_path, "guarded", 6)
    attacks = {name: Background(attack, gw, data, HANDSHAKE_TIMEOUT + 2.5,
                                pieces=3 if name == "too_many_chunk_streams" else 1)
               for name, (data, _) in cases.items()}
    outcomes = {name: attacker.result(15) for name, attacker in attacks.items()}
    guard.check()
    for name, (closed, seconds) in outcomes.items():
        assert closed, f"{name}: the connection was left open"
        if cases[name][1] != "handshake_timeout":
            assert seconds < 1.5, (name, seconds)
    wanted = {}
    for _, reason in cases.values():
        wanted[reason] = wanted.get(reason, 0) + 1
    assert delta(gw.drops(), before) == wanted


def mutate(seed, rng):
    """``seed`` with one random mutation, mostly in its chunk stream (after the handshake)."""
    data = bytearray(seed)
    handshake_end = 1 + 2 * 1536

    def position():
        if rng.random() < 0.85:
            return rng.randrange(handshake_end, len(data))
        return rng.randrange(len(data))

    kind = rng.randrange(6)
    if kind == 0:                                   # flip a few octets
        for _ in range(rng.randint(1, 8)):
            data[position()] = rng.randrange(256)
    elif kind == 1:                                 # cut short
        del data[position():]
    elif kind == 2:                                 # insert junk
        at = position()
        data[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == 3:                                 # repeat a slice
        at = position()
        data[at:at] = data[at:at + rng.randint(1, 400)]
    elif kind == 4:                                 # drop a slice
        at = position()
        del data[at:at + rng.randint(1, 64)]
    else:                                           # a length or header field set to extremes
        at = position()
        data[at:at + 3] = rng.choice((b"\xff\xff\xff", b"\x00\x00\x00", b"\x7f\xff\xff"))
    return bytes(data)


def test_fuzzed_connections_are_closed_and_never_disturb_a_player(gw, tmp_path):
    import concurrent.futures

    rng = random.Random(4242)
    seeds = [player_bytes(gw, "live", rng, session=FUZZ, passphrase=FUZZ_PASSPHRASE),
             publisher_bytes(gw, "live", rng)]
    cases = [(mutate(seeds[n % 2], rng), rng.choice((1, 2, 7))) for n in range(200)]
    before_drops, before_refusals = gw.drops(), gw.refusals()
    guard = Guarded(gw, tmp_path, "fuzzguard", 8)
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(lambda case: attack(gw, case[0], 0.3, pieces=case[1]), cases))
    status = gw.status()                  # the gateway is alive and answers
    assert status["doors"]["rtmp"]["port"] == gw.rtmp_port
    guard.check()
    closed = sum(1 for was_closed, _ in outcomes if was_closed)
    drops = delta(gw.drops(), before_drops)
    refusals = delta(gw.refusals(), before_refusals)
    # Most mutations break the chunk stream; what the door closes it counts, as a drop
    # that closes or as a refusal (a mutated passphrase is the bus's to count).
    closing = sum(drops.get(reason, 0) for reason in (
        "bad_handshake", "bad_chunk_stream", "bad_command", "bad_amf", "too_many_messages",
        "unknown_app", "no_session", "no_passphrase"))
    assert closed >= 20 and drops.get("bad_chunk_stream", 0) > 0, (closed, drops)
    assert closing + sum(refusals.values()) >= 0.8 * closed, (closed, drops, refusals)


def test_player_that_stops_reading_is_dropped_while_others_get_every_frame(gw, tmp_path):
    """Publisher at ~4 Mbit/s; one raw player never reads (4 KiB receive buffer), one ffmpeg
    player is killed mid-stream, and rtmpdump must still get every frame.

    The kernel holds about 2 MB for the player that does not read (the gateway's
    send buffer grows to net.ipv4.tcp_wmem's maximum) before the door sees its
    socket full, about 4 s of this stream; then it waits SLOW_PLAYER_SECONDS.
    """
    seconds = 9
    stream = "fast"
    conn = ["-C", f"S:{DEMO_PASSPHRASE}", "-C", "S:good"]
    good = Background(rtmpdump_play, gw.plain_url(stream), tmp_path / "good.flv", seconds + 8,
                      extra=conn)
    quitter = subprocess.Popen([*FFMPEG, "-i", gw.url(stream, name="quitter"), "-c", "copy",
                                "-f", "flv", "-y", str(tmp_path / "quitter.flv")],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    slow = RawPeer(gw, receive_buffer=4096)
    try:
        assert slow.send(player_bytes(gw, stream, random.Random(7), name="slow reader"))
        gw.wait_players(stream, 3)
        before = gw.drops()
        publisher = ffmpeg_publish_av(gw.url(stream, name="fast publisher"), seconds, "4M")
        started = time.monotonic()
        wait_until(lambda: gw.drops().get("slow_player", 0) > before.get("slow_player", 0),
                   seconds, "the slow player to be dropped")
        dropped_after = time.monotonic() - started
        os.kill(quitter.pid, 9)                    # vanishes in the middle of the fan-out
        quitter.wait(5)
        assert slow.closed_by_server(5)
        returncode, stderr = finished(publisher, seconds + 15)
        assert returncode == 0, stderr
        good.result(seconds + 20)
    finally:
        slow.close()
        stop_process(quitter)
    drops = delta(gw.drops(), before)
    assert drops.pop("slow_player") == 1, drops
    assert set(drops) <= {"frame_dropped"}, drops
    assert SLOW_PLAYER_SECONDS < dropped_after < seconds, dropped_after
    tags = flv_tags(tmp_path / "good.flv")
    video = [ts for kind, ts, body in tags if kind == FLV_VIDEO and body[1:2] == b"\x01"]
    gaps = [later - earlier for earlier, later in zip(video, video[1:])]
    assert video[0] <= 40 and len(video) >= 25 * seconds - 1, (video[:3], len(video))
    assert max(gaps) <= 41, sorted(gaps)[-5:]
    size = sum(len(body) for kind, _, body in tags if kind == FLV_VIDEO)
    assert size * 8 / seconds > 3_000_000, size          # the publisher did send ~4 Mbit/s
    assert_complete_audio(tmp_path / "good.flv", seconds)


def test_members_leaving_mid_fan_out_do_not_break_the_others(gw):
    played = notes(80)
    ws_joined = {name: threading.Event() for name in ("steady", "quitter", "keys")}
    start = threading.Event()
    steady = Background(ws_listener, gw, "steady", len(played), 15, ws_joined["steady"])
    ws_quitter = Background(ws_listener, gw, "quitter", len(played), 15, ws_joined["quitter"],
                            leave_after=20)

    def librtmp_steady():
        with LibrtmpClient(gw.plain_url("midi"), connect_data={
                "passphrase": DEMO_PASSPHRASE, "name": "librtmp steady"}) as player:
            player.collect(15, until=lambda p: len(p.data_named("onMidi")) >= len(played))
            return [values[1]["hex"] for values in player.data_named("onMidi")]

    def raw_vanisher(name, notes_heard):
        peer = RawPeer(gw)
        assert peer.send(player_bytes(gw, "midi", random.Random(name), name=name))
        heard = 0
        while heard < notes_heard:
            data = peer.sock.recv(65536)
            assert data, "the gateway closed a MIDI player"
            heard += data.count(b"\x02\x00\x06onMidi")
        peer.reset()                                # in the middle of the burst
        return heard

    librtmp = Background(librtmp_steady)
    vanishers = [Background(raw_vanisher, f"vanisher{n}", 10 + 15 * n) for n in range(3)]
    gw.wait_players("midi", 4)
    assert all(event.wait(10) for name, event in ws_joined.items() if name != "keys")
    keys = Background(ws_player, gw, "keys", played, 0.01, start, ws_joined["keys"])
    assert ws_joined["keys"].wait(10)
    start.set()
    keys.result(20)
    assert [bytes(message["data"]) for message in steady.result(20)] == played
    assert len(ws_quitter.result(20)) == 20
    assert [bytes.fromhex(hexed) for hexed in librtmp.result(20)][:len(played)] == played
    for vanisher in vanishers:
        vanisher.result(20)


def test_the_log_never_holds_a_passphrase(gw):
    log = gw.log
    for secret in (DEMO_PASSPHRASE, SMALL_PASSPHRASE, FUZZ_PASSPHRASE, WRONG_PASSPHRASE):
        for form in (secret, urllib.parse.quote(secret), secret.replace(" ", "+")):
            assert form not in log, form
