"""The browser jam page against a real gateway, in Debian's headless Chromium (playwright).

Each test opens its pages in a fresh Chromium profile and fails on any console error the
page logs. Screenshots land in test-artifacts/ for a human to look at.
"""

import os
import re

import pytest

from tests.conftest import REPO, need_external

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = None

CHROMIUM = "/usr/bin/chromium"
# Per shared/testing.md: without the resolver rule Chromium looks up Google hosts at start.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
ARTIFACTS = os.path.join(REPO, "test-artifacts")
DEMO_PASSPHRASE = "play along with netgateway demo"
MIRROR_PASSPHRASE = "mirror mirror on the wall"
WAIT_MS = 10_000
HELD_HERE = re.compile(r"\bkey--local\b")
SOUNDING_FROM_OTHERS = re.compile(r"\bkey--remote\b")

# A stand-in for Web MIDI (Chromium here has no ALSA sequencer): one input that plays a
# note-on as soon as the page listens to it, one output that records what it is sent.
FAKE_WEB_MIDI = """
(() => {
  const sent = [];
  const input = {
    id: 'fake-in', name: 'Fake Keyboard', type: 'input', state: 'connected',
    listener: null,
    get onmidimessage() { return this.listener; },
    set onmidimessage(listener) {
      this.listener = listener;
      if (listener) setTimeout(() => window.fakeMidiPlay([0x90, 62, 90]), 50);
    },
  };
  const output = {
    id: 'fake-out', name: 'Fake Synth', type: 'output', state: 'connected',
    send(data) { sent.push(Array.from(data)); },
  };
  const access = {
    inputs: new Map([[input.id, input]]),
    outputs: new Map([[output.id, output]]),
    sysexEnabled: false,
    addEventListener() {},
    removeEventListener() {},
  };
  window.fakeMidiSent = sent;
  window.fakeMidiPlay = (bytes) => input.listener && input.listener({ data: new Uint8Array(bytes) });
  Object.defineProperty(navigator, 'requestMIDIAccess', {
    configurable: true,
    value: (options) => { window.fakeMidiOptions = options; return Promise.resolve(access); },
  });
})();
"""


@pytest.fixture
def browser_context(tmp_path):
    need_external(os.path.exists(CHROMIUM),
                  f"{CHROMIUM} is missing (apt-get install -y chromium)")
    need_external(sync_playwright is not None, "the Python package playwright is missing")
    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1200, "height": 860})
        context.set_default_timeout(WAIT_MS)
        yield context
        context.close()


class JamPage:
    """One player's tab, with the console errors it logged."""

    def __init__(self, context, gateway, query=""):
        self.page = context.new_page()
        self.console_errors = []
        self.page.on("console", lambda message: message.type == "error"
                     and self.console_errors.append(message.text))
        self.page.on("pageerror", lambda error: self.console_errors.append(str(error)))
        self.page.goto(gateway.web_url + "/" + query)

    def fill_form(self, name, session, passphrase):
        self.page.fill("#session", session)
        self.page.fill("#passphrase", passphrase)
        self.page.fill("#name", name)
        self.page.click("#join")

    def join(self, name, session="demo", passphrase=DEMO_PASSPHRASE):
        self.fill_form(name, session, passphrase)
        expect(self.page.locator("#status")).to_contain_text("Joined", timeout=WAIT_MS)
        return self

    def key(self, note):
        return self.page.locator(f'#keyboard [data-note="{note}"]')

    def press(self, note):
        # A player scrolls to the keyboard first: on a short window it sits below the fold.
        self.key(note).scroll_into_view_if_needed()
        box = self.key(note).bounding_box()
        # Low on the key, where a white key is never covered by its black neighbours.
        self.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.85)
        self.page.mouse.down()

    def release(self):
        self.page.mouse.up()

    def member(self, name, door):
        return self.page.locator(f'#members li[data-name="{name}"][data-door="{door}"]')

    def screenshot(self, name):
        self.page.screenshot(path=os.path.join(ARTIFACTS, name), full_page=True)


@pytest.fixture
def open_jam(browser_context, gateway):
    pages = []

    def open_page():
        jam = JamPage(browser_context, gateway)
        pages.append(jam)
        return jam

    yield open_page
    for jam in pages:
        assert jam.console_errors == []


def test_page_defaults_to_its_own_gateway(open_jam, gateway):
    jam = open_jam()
    expect(jam.page.locator("#server")).to_have_value(gateway.ws_url)
    expect(jam.page.locator("#session")).to_have_value("demo")
    expect(jam.page.locator("#leave")).to_be_disabled()
    jam.screenshot("browser-join-form.png")


def test_two_players_see_and_hear_each_other(open_jam):
    alice = open_jam().join("alice")
    bob = open_jam().join("bob")
    for jam in (alice, bob):
        expect(jam.member("alice", "websocket")).to_be_visible()
        expect(jam.member("bob", "websocket")).to_be_visible()

    alice.press(60)
    expect(alice.key(60)).to_have_class(HELD_HERE)
    expect(bob.key(60)).to_have_class(SOUNDING_FROM_OTHERS)
    expect(bob.page.locator('#log li[data-from="alice"][data-note="60"]')).to_have_count(1)
    alice.release()
    expect(bob.key(60)).not_to_have_class(SOUNDING_FROM_OTHERS)
    expect(alice.key(60)).not_to_have_class(HELD_HERE)

    bob.press(64)
    expect(alice.key(64)).to_have_class(SOUNDING_FROM_OTHERS)
    bob.page.keyboard.down("KeyT")  # F sharp 3 on the computer keyboard
    expect(alice.key(54)).to_have_class(SOUNDING_FROM_OTHERS)
    alice.screenshot("browser-alice-hears-bob.png")
    bob.screenshot("browser-bob-plays.png")
    bob.page.keyboard.up("KeyT")
    bob.release()
    expect(alice.key(54)).not_to_have_class(SOUNDING_FROM_OTHERS)
    expect(alice.key(64)).not_to_have_class(SOUNDING_FROM_OTHERS)

    bob.page.click("#leave")
    expect(bob.page.locator("#status")).to_have_text("Left the session.")
    expect(alice.member("bob", "websocket")).to_have_count(0)


def test_wrong_passphrase_is_explained_and_retry_works(open_jam):
    jam = open_jam()
    jam.fill_form("carol", "demo", "not the passphrase at all")
    # Said once, in the page's words (not followed by the gateway's own message).
    expect(jam.page.locator("#error")).to_have_text("Wrong passphrase for this session.")
    expect(jam.page.locator("#join")).to_be_enabled()
    # The refused join left the socket open, but there is no session to leave.
    expect(jam.page.locator("#leave")).to_be_disabled()
    jam.screenshot("browser-wrong-passphrase.png")

    jam.join("carol")
    expect(jam.page.locator("#error")).to_have_text("")
    expect(jam.member("carol", "websocket")).to_be_visible()


def test_mirror_session_plays_a_fifth_higher(open_jam):
    jam = open_jam().join("dave", "mirror", MIRROR_PASSPHRASE)
    expect(jam.member("mirror", "mirror")).to_be_visible()
    jam.press(60)
    expect(jam.key(67)).to_have_class(SOUNDING_FROM_OTHERS)
    expect(jam.key(60)).to_have_class(HELD_HERE)
    jam.screenshot("browser-mirror.png")
    jam.release()
    expect(jam.key(67)).not_to_have_class(SOUNDING_FROM_OTHERS)


def test_web_midi_devices_carry_notes_both_ways(browser_context, open_jam):
    browser_context.add_init_script(FAKE_WEB_MIDI)
    erin = open_jam().join("erin")
    frank = open_jam().join("frank")
    # Permission is asked on the player's press, not at load (so a refusal can be retried).
    assert erin.page.evaluate("window.fakeMidiOptions") is None
    erin.page.click("#midi-enable")
    expect(erin.page.locator("#midi-status")).to_contain_text("Web MIDI ready")
    assert erin.page.evaluate("window.fakeMidiOptions") == {"sysex": False}

    erin.page.select_option("#midi-out", "fake-out")
    erin.page.select_option("#midi-in", "fake-in")  # the fake then plays D4 (62)
    expect(frank.key(62)).to_have_class(SOUNDING_FROM_OTHERS)
    expect(erin.key(62)).to_have_class(HELD_HERE)
    erin.page.evaluate("window.fakeMidiPlay([0x80, 62, 0])")
    expect(frank.key(62)).not_to_have_class(SOUNDING_FROM_OTHERS)

    frank.press(65)
    erin.page.wait_for_function(
        "window.fakeMidiSent.some(m => m[0] === 0x90 && m[1] === 65 && m[2] > 0)")
    frank.release()
    erin.page.wait_for_function(
        "window.fakeMidiSent.some(m => (m[0] & 0xf0) === 0x80 && m[1] === 65)")
    erin.screenshot("browser-web-midi.png")


# Records, from before the outage, every text the status region reads out and whether
# the keyboard was ever hidden.
WATCH_THE_OUTAGE = """
(() => {
  window.statusTexts = [];
  window.keyboardHidden = 0;
  const status = document.querySelector('#status');
  new MutationObserver(() => window.statusTexts.push(status.textContent))
    .observe(status, { childList: true, characterData: true, subtree: true });
  const jam = document.querySelector('#jam');
  new MutationObserver(() => { if (jam.hidden) window.keyboardHidden += 1; })
    .observe(jam, { attributes: true, attributeFilter: ['hidden'] });
})()
"""
LOST = "Connection lost (the gateway is stopping). Reconnecting…"


def test_page_rejoins_after_the_gateway_restarts(open_jam, gateway):
    gina = open_jam().join("gina")
    gina.page.evaluate(WATCH_THE_OUTAGE)
    gateway.stop()
    status = gina.page.locator("#status")
    expect(status).to_have_text(LOST)
    expect(gina.page.locator("#status-detail")).to_contain_text("next attempt in")
    expect(gina.page.locator("#leave")).to_be_enabled()
    # Failed attempts (nobody listens now) keep the keyboard and the first reason.
    gina.page.wait_for_function("window.netgateway.state.retryAttempt >= 3", timeout=20_000)
    expect(gina.page.locator("#keyboard")).to_be_visible()
    expect(status).to_have_text(LOST)
    # Notes played meanwhile are heard here only, and the page says so.
    for note in (60, 62):
        gina.press(note)
        expect(gina.key(note)).to_have_class(HELD_HERE)
        gina.release()
    expect(gina.page.locator("#unsent")).to_have_text(
        "Not connected: the others do not hear you. 2 notes not sent.")
    gina.screenshot("browser-connection-lost.png")

    gateway.start()
    expect(status).to_contain_text("Joined", timeout=30_000)
    expect(status).to_contain_text("2 notes you played while disconnected were not sent.")
    expect(gina.page.locator("#unsent")).to_be_hidden()
    expect(gina.member("gina", "websocket")).to_be_visible()
    assert gina.page.evaluate("window.keyboardHidden") == 0
    # The countdown ticks outside the live region: it read out the loss once, then the rejoin.
    texts = gina.page.evaluate("window.statusTexts")
    assert [text for text in texts if not text.startswith("Joined")] == [LOST], texts
    # Chromium reports each refused reconnect attempt on the console; those are expected here.
    gina.console_errors = [text for text in gina.console_errors
                           if "WebSocket connection to" not in text]


def test_over_plain_http_from_another_host_the_page_says_web_midi_needs_https(gateway,
                                                                               tmp_path):
    """jam.test resolves to the gateway but is not this machine: not a secure context."""
    need_external(os.path.exists(CHROMIUM),
                  f"{CHROMIUM} is missing (apt-get install -y chromium)")
    need_external(sync_playwright is not None, "the Python package playwright is missing")
    args = [arg for arg in CHROMIUM_ARGS if not arg.startswith("--host-resolver-rules")]
    args.append("--host-resolver-rules=MAP jam.test 127.0.0.1 , MAP * ~NOTFOUND")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=args,
            headless=True)
        try:
            page = context.new_page()
            page.goto(gateway.web_url.replace("127.0.0.1", "jam.test") + "/")
            assert page.evaluate("window.isSecureContext") is False
            expect(page.locator("#midi-status")).to_contain_text(
                "Web MIDI needs a secure page", timeout=WAIT_MS)
            expect(page.locator("#midi-enable")).to_be_disabled()
        finally:
            context.close()
