"""The jam page's live stream listener in Debian's headless Chromium.

A real gateway serves the page. Until the gateway's own ``/live/SESSION/STREAM.flv``
lands, the audio comes from node-media-server (the reference RTMP server,
tests/rtmp_peer.py) with ffmpeg publishing a 440 Hz AAC sine: the page's ``?live_url=``
debug parameter points the listener at NMS's HTTP-FLV (or, with
``?live_transport=websocket``, its FLV over WebSocket). The URL the page builds for the
gateway itself, and what it says for the gateway's 403 and 404 answers, are checked
with the request answered by playwright in the gateway's place.

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

try:
    from playwright.sync_api import expect
except ImportError:  # browser_context then skips, or fails under CI=true
    expect = None

from tests.conftest import need_external
from tests.integration.test_browser import (  # noqa: F401 (browser_context is a fixture)
    ARTIFACTS, DEMO_PASSPHRASE, WAIT_MS, JamPage, browser_context,
)
from tests.rtmp_peer import ffmpeg_publish_sine, need_nms, run_nms, stop_process

pytestmark = pytest.mark.external

PUBLISH_SECONDS = 40  # longer than a test needs; ended by PID
STARTUP_MS = 15_000
# ffmpeg's lavfi sine has amplitude 1/8: RMS 0.088 as published; AAC keeps it close.
SINE_RMS = 0.125 / 2 ** 0.5
FLV_CLOSE = re.compile(r"FLV session \S+ close")
# Chromium reports each refused request on the console itself; these are expected.
EXPECTED_CONSOLE = ("Failed to load resource", "WebSocket connection to")


@pytest.fixture
def open_live(browser_context, gateway):  # noqa: F811 (browser_context is a fixture)
    pages = []

    def open_page(query=""):
        jam = JamPage(browser_context, gateway, query)
        pages.append(jam)
        return jam

    yield open_page
    for jam in pages:
        assert [text for text in jam.console_errors
                if not text.startswith(EXPECTED_CONSOLE)] == []


@pytest.fixture
def nms(tmp_path):
    need_nms()
    need_external(shutil.which("ffmpeg") is not None,
                  "ffmpeg is missing (scripts/test installs Debian ffmpeg)")
    with run_nms(tmp_path / "nms") as server:
        yield server


@pytest.fixture
def publisher(nms):
    """ffmpeg publishes a 440 Hz AAC sine to NMS as live/sine; yields the stream name."""
    process = ffmpeg_publish_sine(nms.url("sine"), PUBLISH_SECONDS)
    try:
        nms.wait_log("start push /live/sine")
        yield "sine"
    finally:
        stop_process(process)


def wait_until(condition, what, timeout=WAIT_MS / 1000):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
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


def start_listening(jam, stream):
    jam.page.fill("#live-stream", stream)
    jam.page.click("#live-toggle")
    expect(jam.page.locator("#live-toggle")).to_have_text("Stop")
    jam.page.wait_for_function("window.netgatewayLive.mediaTime() > 0.2", timeout=STARTUP_MS)
    expect(jam.page.locator("#live-status")).to_have_text(f"Playing “{stream}”.")


@pytest.mark.parametrize("transport", ["http", "websocket"])
def test_page_plays_a_published_stream_and_stops(open_live, nms, publisher, transport):
    scheme = "ws" if transport == "websocket" else "http"
    query = "?live_url=" + quote(f"{scheme}://127.0.0.1:{nms.http_port}/live/{{stream}}.flv",
                                 safe="")
    if transport == "websocket":
        query += "&live_transport=websocket"
    jam = open_live(query).join("listener")
    expect(jam.page.locator("#live-stream")).to_have_value("live")
    plays_before = nms.log.count("start play /live/sine")

    start_listening(jam, publisher)
    assert live(jam, "url") == f"{scheme}://127.0.0.1:{nms.http_port}/live/sine.flv"
    nms.wait_log("start play /live/sine", count=plays_before + 1)
    timings = live(jam, "timings")

    # Media time follows the wall clock, and the analyser hears the sine.
    started, media_started = time.monotonic(), live(jam, "mediaTime()")
    levels = []
    while time.monotonic() - started < 4.0:
        levels.append(live(jam, "level()"))
        time.sleep(0.1)
    advanced = live(jam, "mediaTime()") - media_started
    wall = time.monotonic() - started
    timings = live(jam, "timings")
    behind = live(jam, "behind()")
    assert advanced > 2.0, (advanced, wall, live(jam, "log"))
    # Most samples, not all: a loaded CI machine may underrun for a moment.
    assert sum(level > SINE_RMS / 2 for level in levels) >= 0.8 * len(levels), levels
    assert max(levels) < SINE_RMS * 2, levels
    expect(jam.page.locator("#live-time")).to_contain_text("behind live")
    jam.screenshot(f"browser-live-{transport}.png")

    # The volume acts after the analyser that level() reads: silence out, signal in.
    assert live(jam, "outputLevel()") > SINE_RMS * 0.64 / 2  # 80 %, squared
    jam.page.fill("#live-volume", "0")
    jam.page.wait_for_function("window.netgatewayLive.outputLevel() < 0.001")
    assert live(jam, "level()") > SINE_RMS / 2
    jam.page.fill("#live-volume", "80")

    record_timings(transport, {
        "first_playing_ms": round(timings["playing"] - timings["listen"]),
        "first_signal_ms": round(timings["signal"] - timings["listen"]),
        "media_advance_s": round(advanced, 3),
        "wall_s": round(wall, 3),
        "behind_live_s": round(behind, 3),
    })

    closes_before = len(FLV_CLOSE.findall(nms.log))
    jam.page.click("#live-toggle")
    expect(jam.page.locator("#live-toggle")).to_have_text("Listen")
    expect(jam.page.locator("#live-status")).to_have_text("Stopped.")
    assert live(jam, "mediaTime()") == 0 and live(jam, "level()") == 0
    wait_until(lambda: len(FLV_CLOSE.findall(nms.log)) > closes_before,
               "NMS saw the page hang up")
    expect(jam.page.locator("#live-time")).to_have_text("–")

    # Listening again after a stop works (the element keeps its one Web Audio source).
    start_listening(jam, publisher)
    jam.page.click("#leave")
    expect(jam.page.locator("#live-toggle")).to_have_text("Listen")
    assert live(jam, "phase") == "idle"


def test_page_asks_the_gateway_and_explains_its_refusals(open_live, gateway):
    jam = open_live().join("listener")
    asked = []
    answers = [(404, "no such stream"), (403, "wrong passphrase")]

    def answer(route):
        asked.append(route.request.url)
        status, body = answers[min(len(asked), len(answers)) - 1]
        route.fulfill(status=status, body=body, content_type="text/plain",
                      headers={"access-control-allow-origin": "*"})

    jam.page.route("**/live/**", answer)
    jam.page.click("#live-toggle")
    status = jam.page.locator("#live-status")
    expect(status).to_contain_text("No one is publishing “live” in this session yet."
                                   " Trying again in 3 s")
    jam.screenshot("browser-live-waiting.png")
    expect(status).to_have_text("Wrong passphrase for this session’s stream.", timeout=WAIT_MS)
    expect(jam.page.locator("#live-toggle")).to_have_text("Listen")
    assert live(jam, "phase") == "failed"
    wanted = (f"{gateway.web_url}/live/demo/live.flv?passphrase="
              + quote(DEMO_PASSPHRASE, safe=""))
    assert asked == [wanted, wanted]
    jam.screenshot("browser-live-refused.png")

    # The one URL builder: WebSocket transport, other names, and a debug URL elsewhere
    # never gets the passphrase.
    build = "liveStreamUrl({server: %r, session: %r, stream: %r, passphrase: 'p w', %s})"
    assert live(jam, build % ("wss://gw.test:8443/ws", "a b", "x/y", "transport: 'websocket'")) \
        == "wss://gw.test:8443/live/a%20b/x%2Fy.flv?passphrase=p%20w"
    assert live(jam, build % (gateway.ws_url, "demo", "live",
                              "template: 'http://127.0.0.9:1/{session}/{stream}.flv'")) \
        == "http://127.0.0.9:1/demo/live.flv"
