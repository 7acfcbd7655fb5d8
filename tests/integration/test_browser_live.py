"""The jam page's live stream listener in Debian's headless Chromium, against a real gateway.

ffmpeg publishes a 440 Hz AAC sine to the gateway's RTMP door as stream ``live`` of
session ``demo``; the page joins ``demo`` and listens to the gateway's own
``/live/demo/live.flv`` (HTTP-FLV, or FLV over WebSocket with ``?live_transport=``).
The checks: the media time follows the wall clock, the analyser hears the sine, the
volume acts after it, Stop hangs up, the page waits for a performer and follows a
restart, and it explains the gateway's 403 and 429 answers.

One more test plays node-media-server's HTTP-FLV (the reference server,
tests/rtmp_peer.py) through the page's ``?live_url=`` debug parameter: an FLV
producer other than ours, so the page is not tuned to the gateway's tag layout alone.

No autoplay flag: the Listen click is the user gesture that lets the audio play.
Timings go to test-artifacts/browser-live-timings.json.
"""

import json
import os
import re
import shutil
import time
from urllib.parse import quote

import pytest

from tests.conftest import free_port, need_external
from tests.integration.test_browser import (  # noqa: F401 (browser_context is a fixture)
    ARTIFACTS, DEMO_PASSPHRASE, WAIT_MS, JamPage, browser_context,
)
from tests.rtmp_peer import ffmpeg_publish_sine, need_nms, run_nms, stop_process

try:
    from playwright.sync_api import expect
except ImportError:  # browser_context then skips, or fails under CI=true
    expect = None

pytestmark = pytest.mark.external

PUBLISH_SECONDS = 60  # longer than a test needs; ended by PID
STARTUP_MS = 15_000
# ffmpeg's lavfi sine has amplitude 1/8: RMS 0.088 as published; AAC keeps it close.
SINE_RMS = 0.125 / 2 ** 0.5
# Chromium reports each refused request on the console itself; these are expected.
EXPECTED_CONSOLE = ("Failed to load resource", "WebSocket connection to")
FLV_CLOSE = re.compile(r"FLV session \S+ close")


def need_ffmpeg():
    need_external(shutil.which("ffmpeg") is not None,
                  "ffmpeg is missing (scripts/test installs Debian ffmpeg)")


@pytest.fixture
def rtmp_gateway(gateway_factory):
    """A gateway on the base config with its RTMP door on a free port."""
    need_ffmpeg()
    gateway = gateway_factory({"rtmp": {"host": "127.0.0.1", "port": free_port()}})
    gateway.rtmp_port = gateway.config["rtmp"]["port"]
    return gateway


@pytest.fixture
def open_live(browser_context, rtmp_gateway):  # noqa: F811 (browser_context is a fixture)
    pages = []

    def open_page(query=""):
        jam = JamPage(browser_context, rtmp_gateway, query)
        pages.append(jam)
        return jam

    yield open_page
    for jam in pages:
        assert [text for text in jam.console_errors
                if not text.startswith(EXPECTED_CONSOLE)] == []


class Performer:
    """ffmpeg publishing the sine to the gateway as ``performer``, stream ``live`` of demo."""

    def __init__(self, gateway, stream="live"):
        self.gateway = gateway
        self.url = (f"rtmp://127.0.0.1:{gateway.rtmp_port}/jam/demo/{stream}"
                    f"?passphrase={quote(DEMO_PASSPHRASE)}&name=performer")
        self.stream = stream
        self.process = None

    def start(self):
        self.process = ffmpeg_publish_sine(self.url, PUBLISH_SECONDS)
        wait_until(lambda: self.described().get("publishing"), "ffmpeg publishes",
                   on_timeout=self.stderr)
        return self

    def stop(self):
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def described(self):
        for stream in rtmp_status(self.gateway)["streams"]:
            if (stream["session"], stream["stream"]) == ("demo", self.stream):
                return stream
        return {}

    def stderr(self):
        if self.process is None or self.process.poll() is None:
            return ""
        return self.process.stderr.read().decode("utf-8", "replace")


@pytest.fixture
def performer(rtmp_gateway):
    started = Performer(rtmp_gateway)
    yield started
    started.stop()


def rtmp_status(gateway):
    return gateway.status()["doors"]["rtmp"]


def wait_until(condition, what, timeout=WAIT_MS / 1000, on_timeout=lambda: ""):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what} {on_timeout()}"
        time.sleep(0.05)


def live(jam, expression):
    return jam.page.evaluate(f"window.netgatewayLive.{expression}")


def record_timings(name, timings):
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, "browser-live-timings.json")
    try:
        with open(path) as stream:
            recorded = json.load(stream)
    except (OSError, ValueError):
        recorded = {}
    recorded[name] = timings
    with open(path, "w") as stream:
        json.dump(recorded, stream, indent=1, sort_keys=True)


def click_listen(jam, stream="live", refused=False):
    jam.page.fill("#live-stream", stream)
    jam.page.click("#live-toggle")
    if not refused:  # a refusal can turn it back into Listen before anyone looks
        expect(jam.page.locator("#live-toggle")).to_have_text("Stop")


def wait_playing(jam, stream="live"):
    jam.page.wait_for_function("window.netgatewayLive.mediaTime() > 0.2", timeout=STARTUP_MS)
    expect(jam.page.locator("#live-status")).to_have_text(f"Playing “{stream}”.")


def hears_the_sine(jam, seconds=4.0):
    """Samples for ``seconds``; returns (media time advance, wall time) after the checks."""
    started, media_started = time.monotonic(), live(jam, "mediaTime()")
    levels = []
    while time.monotonic() - started < seconds:
        levels.append(live(jam, "level()"))
        time.sleep(0.1)
    advanced = live(jam, "mediaTime()") - media_started
    wall = time.monotonic() - started
    assert advanced > 2.0, (advanced, wall, live(jam, "log"))
    # Most samples, not all: a loaded CI machine may underrun for a moment.
    assert sum(level > SINE_RMS / 2 for level in levels) >= 0.8 * len(levels), levels
    assert max(levels) < SINE_RMS * 2, levels
    return advanced, wall


def startup_timings(jam, advanced, wall):
    timings = live(jam, "timings")
    return {
        "listen_to_playing_ms": round(timings["playing"] - timings["listen"]),
        "listen_to_signal_ms": round(timings["signal"] - timings["listen"]),
        "media_advance_s": round(advanced, 3),
        "wall_s": round(wall, 3),
        "buffered_ahead_s": round(live(jam, "behind()"), 3),
    }


@pytest.mark.parametrize("transport", ["http", "websocket"])
def test_page_plays_the_gateways_stream_and_stops(open_live, rtmp_gateway, performer,
                                                   transport):
    performer.start()
    query = "?live_transport=websocket" if transport == "websocket" else ""
    jam = open_live(query).join("listener")
    expect(jam.member("performer", "rtmp")).to_be_visible()
    expect(jam.page.locator("#live-stream")).to_have_value("live")

    click_listen(jam)
    wait_playing(jam)
    scheme = "ws" if transport == "websocket" else "http"
    assert live(jam, "url") == (f"{scheme}://127.0.0.1:{rtmp_gateway.config['web']['port']}"
                                f"/live/demo/live.flv?passphrase={quote(DEMO_PASSPHRASE)}")
    assert performer.described()["players"] == 1
    assert rtmp_status(rtmp_gateway)["web_listeners"] == 1

    advanced, wall = hears_the_sine(jam)
    expect(jam.page.locator("#live-time")).to_contain_text("behind live")
    jam.screenshot(f"browser-live-{transport}.png")
    record_timings(f"gateway-{transport}", startup_timings(jam, advanced, wall))

    # The volume acts after the analyser that level() reads: silence out, signal in.
    assert live(jam, "outputLevel()") > SINE_RMS * 0.64 / 2  # 80 %, squared
    jam.page.fill("#live-volume", "0")
    jam.page.wait_for_function("window.netgatewayLive.outputLevel() < 0.001")
    assert live(jam, "level()") > SINE_RMS / 2
    jam.page.fill("#live-volume", "80")

    jam.page.click("#live-toggle")
    expect(jam.page.locator("#live-toggle")).to_have_text("Listen")
    expect(jam.page.locator("#live-status")).to_have_text("Stopped.")
    assert live(jam, "mediaTime()") == 0 and live(jam, "level()") == 0
    expect(jam.page.locator("#live-time")).to_have_text("–")
    wait_until(lambda: rtmp_status(rtmp_gateway)["web_listeners"] == 0,
               "the gateway saw the page hang up")

    # Listening again works (the element keeps its one Web Audio source), and leaving
    # the session stops it.
    if performer.process.poll() is not None:
        # Over WebSocket, the door can drop the performer when the page hangs up: see
        # test_a_websocket_listener_hanging_up_leaves_the_performer_publishing.
        assert transport == "websocket", performer.stderr()
        performer.start()
    click_listen(jam)
    wait_playing(jam)
    jam.page.click("#leave")
    expect(jam.page.locator("#live-toggle")).to_have_text("Listen")
    assert live(jam, "phase") == "idle"
    wait_until(lambda: rtmp_status(rtmp_gateway)["web_listeners"] == 0,
               "the gateway saw the page hang up after leave")


def test_a_websocket_listener_hanging_up_leaves_the_performer_publishing(
        open_live, rtmp_gateway, performer):
    performer.start()
    jam = open_live("?live_transport=websocket").join("listener")
    for attempt in range(16):
        click_listen(jam)
        wait_playing(jam)
        jam.page.click("#live-toggle")
        wait_until(lambda: rtmp_status(rtmp_gateway)["web_listeners"] == 0,
                   "the gateway saw the page hang up")
        time.sleep(0.2)
        assert performer.process.poll() is None, (attempt, performer.stderr())
        assert performer.described().get("publishing"), attempt
    assert "Unhandled Error" not in rtmp_gateway.log


# Over WebSocket the gateway can only refuse the upgrade, which the page sees as a failure.
NO_ONE_PUBLISHING = {
    "http": "No one is publishing “live” in this session yet.",
    "websocket": "Cannot reach the stream (or the gateway refused it: no one publishing yet?).",
}


@pytest.mark.parametrize("transport", ["http", "websocket"])
def test_page_waits_for_the_performer_and_follows_a_restart(open_live, performer, transport):
    jam = open_live("?live_transport=websocket" if transport == "websocket" else "")
    jam.join("listener")
    status = jam.page.locator("#live-status")
    click_listen(jam)
    expect(status).to_contain_text(NO_ONE_PUBLISHING[transport] + " Trying again in 3 s")
    jam.screenshot(f"browser-live-waiting-{transport}.png")

    performer.start()
    published = time.monotonic()
    wait_playing(jam)
    waited = time.monotonic() - published
    hears_the_sine(jam, seconds=3.0)

    performer.stop()
    expect(status).to_contain_text("“live” ended: the performer stopped publishing.")
    expect(status).to_contain_text(NO_ONE_PUBLISHING[transport], timeout=WAIT_MS)
    performer.start()
    restarted = time.monotonic()
    wait_playing(jam)
    replayed = time.monotonic() - restarted
    hears_the_sine(jam, seconds=3.0)
    # Both include the page's retry delay (3 s, then 3 or 5 s): it polls while no one publishes.
    record_timings(f"gateway-restart-{transport}", {
        "publish_to_playing_s": round(waited, 3),
        "republish_to_playing_s": round(replayed, 3),
    })
    jam.page.click("#live-toggle")
    expect(status).to_have_text("Stopped.")


def test_page_explains_the_gateways_refusals(open_live, rtmp_gateway, performer):
    performer.start()
    jam = open_live().join("listener")
    asked = []

    def wrong_passphrase(route):
        # The page only ever sends the passphrase it joined with: change it on the way.
        asked.append(route.request.url)
        route.continue_(url=re.sub(r"passphrase=[^&]*", "passphrase=not%20it",
                                   route.request.url))

    jam.page.route("**/live/**", wrong_passphrase)
    status = jam.page.locator("#live-status")
    for _ in range(3):  # limits.join_failures_before_throttle
        click_listen(jam, refused=True)
        expect(status).to_have_text("Wrong passphrase for this session’s stream.")
        expect(jam.page.locator("#live-toggle")).to_have_text("Listen")
        assert live(jam, "phase") == "failed"
    jam.screenshot("browser-live-refused.png")
    # Then a back-off of 1 s, doubled by each further failure: the next tries meet it.
    for _ in range(6):
        click_listen(jam, refused=True)
        expect(status).not_to_have_text(re.compile("Connecting|Loading"))
        if "refuses this address" in status.text_content():
            break
        expect(status).to_have_text("Wrong passphrase for this session’s stream.")
    else:
        pytest.fail("the gateway never answered 429")
    expect(status).to_have_text("The gateway refuses this address for a while after wrong"
                                " passphrases. Try again later.")
    assert all("passphrase=play%20along" in url for url in asked)

    # The one URL builder: WebSocket transport, other names, and a debug URL elsewhere
    # never gets the passphrase.
    build = "liveStreamUrl({server: %r, session: %r, stream: %r, passphrase: 'p w', %s})"
    assert live(jam, build % ("wss://gw.test:8443/ws", "a b", "x/y", "transport: 'websocket'")) \
        == "wss://gw.test:8443/live/a%20b/x%2Fy.flv?passphrase=p%20w"
    assert live(jam, build % (rtmp_gateway.ws_url, "demo", "live",
                              "template: 'http://127.0.0.9:1/{session}/{stream}.flv'")) \
        == "http://127.0.0.9:1/demo/live.flv"


@pytest.fixture
def nms(tmp_path):
    need_nms()
    need_ffmpeg()
    with run_nms(tmp_path / "nms") as server:
        yield server


def test_page_plays_node_media_servers_stream_through_live_url(open_live, nms):
    publisher = ffmpeg_publish_sine(nms.url("sine"), PUBLISH_SECONDS)
    try:
        nms.wait_log("start push /live/sine")
        template = f"http://127.0.0.1:{nms.http_port}/live/{{stream}}.flv"
        jam = open_live("?live_url=" + quote(template, safe="")).join("listener")
        expect(jam.page.locator("#live-hint")).to_contain_text(template)
        click_listen(jam, "sine")
        wait_playing(jam, "sine")
        # NMS is another host: the passphrase stays home.
        assert live(jam, "url") == f"http://127.0.0.1:{nms.http_port}/live/sine.flv"
        advanced, wall = hears_the_sine(jam)
        record_timings("nms-http", startup_timings(jam, advanced, wall))
        closes = len(FLV_CLOSE.findall(nms.log))
        jam.page.click("#live-toggle")
        expect(jam.page.locator("#live-status")).to_have_text("Stopped.")
        wait_until(lambda: len(FLV_CLOSE.findall(nms.log)) > closes, "NMS saw the page hang up")
    finally:
        stop_process(publisher)
