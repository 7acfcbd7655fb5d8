"""The jam page's players, invites, phones and accessibility, in Debian's headless Chromium.

Against a real gateway: each player's colour and mixer strip (muting one player silences
only that player in the page's own audio graph, read from each strip's analyser), the
public sessions of ``GET /sessions`` and invite links that fill the join form, a name
already in the session refused with one clear message, a phone-sized page played with
several fingers at once (Chrome DevTools touch events), and the piano played from the
computer keyboard alone (Tab, arrows, Space) with an axe-core scan finding nothing serious,
and a recording of two players downloaded and read back with mido.

Screenshots go to test-artifacts/jam-page/.
"""

import io
import json
import os
import re
import urllib.error
import urllib.request

import mido
import pytest

from tests.conftest import REPO, need_external
from tests.integration.test_browser import (  # noqa: F401 (browser_context is a fixture)
    DEMO_PASSPHRASE, HELD_HERE, LOST, MIRROR_PASSPHRASE,
    SOUNDING_FROM_OTHERS, WAIT_MS, JamPage, browser_context,
)

try:
    from playwright.sync_api import expect
except ImportError:  # browser_context then skips, or fails under CI=true
    expect = None

pytestmark = pytest.mark.external

ARTIFACTS = os.path.join(REPO, "test-artifacts", "jam-page")
AXE = os.path.join(REPO, "tests", "peers", "node_modules", "axe-core", "axe.min.js")
BACKSTAGE_PASSPHRASE = "only the band knows this one"
# demo and mirror public, as in the default config; backstage declared but unlisted.
LISTED_AND_UNLISTED = {"sessions": [
    {"name": "demo", "passphrase": DEMO_PASSPHRASE, "public": True},
    {"name": "mirror", "passphrase": MIRROR_PASSPHRASE, "public": True,
     "mirror": {"interval": 7, "delay": 0.0}},
    {"name": "backstage", "passphrase": BACKSTAGE_PASSPHRASE}],
    # A back-off long enough that the join after it is refused, however slow the machine.
    "limits": {"join_throttle_seconds": 60}}
# An RMS a held note is far above (the SoundFont's organ and the fallback's triangle voice
# give about 0.05) and silence far below.
SOUNDING_RMS = 0.005
SILENT_RMS = 0.0001


def screenshot(jam, name, full_page=True):
    os.makedirs(ARTIFACTS, exist_ok=True)
    jam.page.screenshot(path=os.path.join(ARTIFACTS, name), full_page=full_page)


@pytest.fixture
def open_jam(browser_context, gateway_factory):  # noqa: F811 (browser_context is a fixture)
    gateway = gateway_factory(LISTED_AND_UNLISTED)
    pages = []

    def open_page(query=""):
        jam = JamPage(browser_context, gateway, query)
        pages.append(jam)
        return jam

    open_page.gateway = gateway
    yield open_page
    for jam in pages:
        assert jam.console_errors == []


def slot_of(jam, name):
    return jam.page.evaluate("(name) => window.netgateway.colourOf(name)", name)


def mixer_row(jam, name):
    return jam.page.locator(f'#mixer li[data-name="{name}"]')


def level(jam, name):
    return jam.page.evaluate("(name) => window.netgateway.mixer.level(name)", name)


def wait_for_level(jam, name, comparison):
    jam.page.wait_for_function(
        f"(name) => window.netgateway.mixer.level(name) {comparison}", arg=name)


# --- each player heard and seen on their own ------------------------------------------

def test_each_player_has_a_colour_with_a_pattern_on_keys_list_and_log(open_jam):
    alice = open_jam().join("alice")
    bob = open_jam().join("bob")
    carol = open_jam().join("carol")
    slots = {name: slot_of(carol, name) for name in ("alice", "bob", "carol")}
    assert sorted(set(slots.values())) == sorted(slots.values()), slots
    patterns = carol.page.evaluate("""() => [...document.querySelectorAll('#members .swatch')]
        .map((patch) => getComputedStyle(patch).backgroundImage + ' ' + getComputedStyle(patch).backgroundColor)""")
    assert len(set(patterns)) == 3, patterns
    for name in ("alice", "bob"):
        expect(carol.page.locator(f'#members li[data-name="{name}"] .swatch')).to_have_attribute(
            "data-slot", str(slots[name]))

    alice.press(60)
    expect(carol.key(60)).to_have_class(SOUNDING_FROM_OTHERS)
    # The key takes alice's colour and says who plays it: not colour alone.
    expect(carol.key(60)).to_have_attribute("data-slot", str(slots["alice"]))
    expect(carol.key(60).locator(".key__players")).to_have_text("Al")
    bob.press(64)
    expect(carol.key(64)).to_have_attribute("data-slot", str(slots["bob"]))
    expect(carol.key(64).locator(".key__players")).to_have_text("Bo")
    entry = carol.page.locator('#log li[data-from="alice"][data-note="60"]')
    expect(entry).to_contain_text("alice")
    expect(entry.locator(".swatch")).to_have_attribute("data-slot", str(slots["alice"]))
    screenshot(carol, "colours-three-players.png")
    alice.release()
    bob.release()
    expect(carol.key(60)).not_to_have_attribute("data-slot", str(slots["alice"]))


def test_muting_one_player_silences_only_that_player_in_the_pages_sound(open_jam):
    alice = open_jam().join("alice")
    bob = open_jam().join("bob")
    carol = open_jam().join("carol")
    for name in ("alice", "bob", "carol"):
        expect(mixer_row(carol, name)).to_be_visible()
    assert carol.page.evaluate("window.netgateway.mixer.context.state") == "running"
    # Instruments that hold their tone while the key is down (a piano's would fade under the
    # thresholds before the test is done): Church Organ and Drawbar Organ.
    alice.page.select_option("#instrument", "19")
    bob.page.select_option("#instrument", "16")
    carol.page.wait_for_function("window.netgateway.instrumentOf('alice').program === 19"
                                 " && window.netgateway.instrumentOf('bob').program === 16")

    alice.press(60)
    expect(carol.key(60)).to_have_class(SOUNDING_FROM_OTHERS)
    wait_for_level(carol, "alice", f"> {SOUNDING_RMS}")      # heard before the mute
    mixer_row(carol, "alice").locator(".mixer__mute").click()
    expect(mixer_row(carol, "alice").locator(".mixer__mute")).to_have_attribute(
        "aria-pressed", "true")
    bob.press(64)
    expect(carol.key(64)).to_have_class(SOUNDING_FROM_OTHERS)
    wait_for_level(carol, "bob", f"> {SOUNDING_RMS}")
    wait_for_level(carol, "alice", f"< {SILENT_RMS}")
    assert carol.page.evaluate("window.netgateway.mixer.gain('alice')") == 0
    assert carol.page.evaluate("window.netgateway.mixer.gain('bob')") == 1
    # The mute is carol's own: alice still plays for bob.
    expect(bob.key(60)).to_have_class(SOUNDING_FROM_OTHERS)
    assert bob.page.evaluate("window.netgateway.mixer.gain('alice')") == 1
    screenshot(carol, "mixer-alice-muted.png")

    # Solo bob with alice unmuted: only bob is heard; unsolo: both again.
    mixer_row(carol, "alice").locator(".mixer__mute").click()
    wait_for_level(carol, "alice", f"> {SOUNDING_RMS}")
    mixer_row(carol, "bob").locator(".mixer__solo").click()
    wait_for_level(carol, "alice", f"< {SILENT_RMS}")
    assert level(carol, "bob") > SOUNDING_RMS
    mixer_row(carol, "bob").locator(".mixer__solo").click()
    wait_for_level(carol, "alice", f"> {SOUNDING_RMS}")

    # Volume and pan reach the strip's nodes.
    mixer_row(carol, "bob").locator(".mixer__volume").fill("25")
    mixer_row(carol, "bob").locator(".mixer__pan").fill("-100")
    assert carol.page.evaluate("window.netgateway.mixer.gain('bob')") == 0.25
    carol.page.wait_for_function(
        "window.netgateway.mixer.strips.get('bob').nodes.pan.pan.value < -0.9")
    alice.release()
    bob.release()


# --- finding a session and inviting to it -----------------------------------------------

def test_sessions_lists_only_public_sessions_and_the_page_offers_them(open_jam):
    gateway = open_jam.gateway
    status, headers, body = gateway.get("/sessions")
    listed = json.loads(body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert [session["name"] for session in listed["sessions"]] == ["demo", "mirror"]
    assert listed["sessions"][0] == {"name": "demo", "players": 0, "max_players": 8,
                                     "mirror": False, "tempo": None}
    for secret in (DEMO_PASSPHRASE, MIRROR_PASSPHRASE, BACKSTAGE_PASSPHRASE, "backstage"):
        assert secret not in body.decode()

    open_jam().join("ann")
    jam = open_jam()
    offered = jam.page.locator("#public-list button")
    expect(offered).to_have_count(2)
    expect(offered.nth(0)).to_contain_text("demo")
    expect(offered.nth(0)).to_contain_text("1 player")
    expect(jam.page.locator("#session-suggestions option")).to_have_count(2)
    expect(jam.page.locator("#session")).to_have_value("demo")
    expect(jam.page.locator("#mirror-hint")).to_be_visible()
    offered.nth(1).click()
    expect(jam.page.locator("#session")).to_have_value("mirror")
    expect(jam.page.locator("#passphrase")).to_be_focused()
    screenshot(jam, "public-sessions.png")
    # Unlisted is not closed: backstage is joined by its name.
    jam.join("ben", "backstage", BACKSTAGE_PASSPHRASE)


def test_an_invite_link_fills_the_form_and_carries_the_passphrase_only_when_ticked(
        open_jam, browser_context):  # noqa: F811 (browser_context is a fixture)
    browser_context.grant_permissions(["clipboard-read", "clipboard-write"])
    host = open_jam().join("host")
    link = host.page.locator("#invite-link")
    host.page.click("#invite-copy")
    expect(host.page.locator("#invite-status")).to_contain_text("copied (without the passphrase)")
    without = link.input_value()
    assert without.endswith("/#session=demo"), without
    assert host.page.evaluate("navigator.clipboard.readText()") == without

    host.page.check("#invite-passphrase")
    host.page.click("#invite-copy")
    expect(host.page.locator("#invite-status")).to_contain_text("copied, with the passphrase")
    with_passphrase = link.input_value()
    assert "#" in with_passphrase and "passphrase=" in with_passphrase.split("#", 1)[1]
    assert "?" not in with_passphrase         # never in the query, which the server gets
    screenshot(host, "invite.png")

    guest = open_jam("#" + with_passphrase.split("#", 1)[1])
    expect(guest.page.locator("#session")).to_have_value("demo")
    expect(guest.page.locator("#passphrase")).to_have_value(DEMO_PASSPHRASE)
    expect(guest.page.locator("#name")).to_be_focused()
    expect(guest.page.locator("#status")).to_contain_text("Invited to “demo”")
    # Read, then taken out of the address bar and its history.
    assert "passphrase" not in guest.page.evaluate("location.href")
    guest.page.fill("#name", "guest")
    guest.page.click("#join")
    expect(guest.page.locator("#status")).to_contain_text("Joined “demo” as guest")

    nameless = open_jam("#" + without.split("#", 1)[1])
    expect(nameless.page.locator("#session")).to_have_value("demo")
    expect(nameless.page.locator("#passphrase")).to_have_value("")


def test_a_name_already_in_the_session_is_refused_with_one_clear_message(open_jam):
    open_jam().join("alice")
    second = open_jam()
    second.fill_form("Alice", "demo", DEMO_PASSPHRASE)
    expect(second.page.locator("#error")).to_have_text(
        "Someone in “demo” is already called “Alice”. Choose another name.")
    expect(second.page.locator("#join")).to_be_enabled()
    expect(second.page.locator("#leave")).to_be_disabled()
    expect(second.page.locator("#jam")).to_be_hidden()
    screenshot(second, "name-taken.png")
    second.join("alice two")
    expect(second.page.locator("#error")).to_have_text("")
    expect(second.member("alice", "websocket")).to_be_visible()


def test_a_throttled_join_says_once_how_long_to_wait(open_jam):
    jam = open_jam()
    # limits.join_failures_before_throttle (3) free failures; the fourth starts a back-off.
    for attempt in range(4):
        jam.fill_form("eve", "demo", f"not the passphrase at all, take {attempt}")
        expect(jam.page.locator("#error")).to_have_text("Wrong passphrase for this session.")
        expect(jam.page.locator("#join")).to_be_enabled()
    jam.fill_form("eve", "demo", DEMO_PASSPHRASE)
    expect(jam.page.locator("#error")).to_have_text(
        re.compile(r"^Too many failed joins; try again in \d+ s\.$"))


def test_a_rejoin_that_finds_its_name_taken_keeps_trying_until_the_name_is_free(open_jam):
    gateway = open_jam.gateway
    gina = open_jam().join("gina")
    gateway.stop()
    status = gina.page.locator("#status")
    expect(status).to_have_text(LOST)
    # The fifth attempt waits 10 s: time for someone else to take the name first.
    gina.page.wait_for_function("window.netgateway.state.retryAttempt >= 5", timeout=30_000)
    attempts = gina.page.evaluate("window.netgateway.state.retryAttempt")
    gateway.start()
    impostor = open_jam().join("Gina")
    gina.page.wait_for_function(f"window.netgateway.state.retryAttempt > {attempts}",
                                timeout=20_000)
    # Refused as taken while rejoining: still reconnecting, keyboard on, no error to fix.
    expect(status).to_have_text(LOST)
    expect(gina.page.locator("#jam")).to_be_visible()
    expect(gina.page.locator("#error")).to_have_text("")
    assert gina.page.evaluate("window.netgateway.state.wantJoined") is True
    impostor.page.click("#leave")
    expect(status).to_contain_text("Joined “demo” as gina", timeout=20_000)
    # Chromium reports each refused reconnect attempt on the console; those are expected here.
    gina.console_errors = [text for text in gina.console_errors
                           if "WebSocket connection to" not in text]


# --- phones and tablets -----------------------------------------------------------------

@pytest.fixture
def phone(browser_context):  # noqa: F811 (browser_context is a fixture)
    """Opens the page as a touch phone of ``width`` x ``height`` CSS pixels.

    A page of the shared browser with the phone's viewport and touch emulated through
    Chrome DevTools: playwright's own phone contexts need a browser of their own, and a
    test gets one sync playwright.
    """
    opened = []

    def open_phone(gateway, width, height):
        jam = JamPage(browser_context, gateway)
        jam.page.set_viewport_size({"width": width, "height": height})
        jam.devtools = browser_context.new_cdp_session(jam.page)
        jam.devtools.send("Emulation.setTouchEmulationEnabled", {"enabled": True,
                                                                 "maxTouchPoints": 5})
        jam.page.reload()
        assert jam.page.evaluate("[innerWidth, innerHeight, navigator.maxTouchPoints]") \
            == [width, height, 5]
        opened.append(jam)
        return jam

    yield open_phone
    for jam in opened:
        assert jam.console_errors == []


def touch(jam, kind, points):
    """Chrome DevTools touch events: several fingers at once, as no playwright call makes."""
    jam.devtools.send("Input.dispatchTouchEvent", {
        "type": kind,
        "touchPoints": [{"x": x, "y": y, "id": finger} for finger, (x, y) in enumerate(points)]})


def tap(jam, point):
    touch(jam, "touchStart", [point])
    touch(jam, "touchEnd", [])


def middle(locator, height_fraction=0.5):
    box = locator.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] * height_fraction


def on_key(jam, note):
    # Low on the key, where a white key is never covered by its black neighbours.
    return middle(jam.key(note), 0.85)


@pytest.mark.parametrize("orientation, width, height",
                         [("portrait", 390, 844), ("landscape", 844, 390)])
def test_a_phone_plays_one_octave_of_big_keys_with_chords_and_never_scrolls(
        open_jam, phone, orientation, width, height):
    desk = open_jam().join("desk")
    mobile = phone(open_jam.gateway, width, height).join("phone")
    keys = mobile.page.locator("#keyboard .key")
    expect(keys).to_have_count(12)
    for box in [keys.nth(index).bounding_box() for index in range(12)]:
        assert box["width"] >= 20           # black keys; white ones below
    whites = mobile.page.locator("#keyboard .key--white")
    widths = [whites.nth(index).bounding_box()["width"] for index in range(whites.count())]
    assert min(widths) >= 40, widths
    expect(mobile.page.locator("#octave-up")).to_be_visible()
    keyboard = mobile.page.locator("#keyboard").bounding_box()
    # What the phone's screen shows, as it shows it: not the whole page.
    screenshot(mobile, f"phone-{orientation}-joined.png", full_page=False)
    if orientation == "landscape":
        # The whole piano on screen at once, without scrolling to it.
        assert keyboard["y"] >= 0 and keyboard["y"] + keyboard["height"] <= height, keyboard

    scrolled = mobile.page.evaluate("window.scrollY")
    lowest = int(keys.first.get_attribute("data-note"))
    chord = [lowest, lowest + 4, lowest + 7]
    touch(mobile, "touchStart", [on_key(mobile, note) for note in chord])
    for note in chord:
        expect(mobile.key(note)).to_have_class(HELD_HERE)
        expect(desk.key(note)).to_have_class(SOUNDING_FROM_OTHERS)
    screenshot(mobile, f"phone-{orientation}-chord.png")
    # A finger sliding up off the piano neither scrolls the page nor leaves a note on.
    (x, y) = on_key(mobile, chord[0])
    for step in range(1, 6):
        touch(mobile, "touchMove", [(x, y - 40 * step)] + [on_key(mobile, note)
                                                             for note in chord[1:]])
    touch(mobile, "touchEnd", [])
    for note in chord:
        expect(desk.key(note)).not_to_have_class(SOUNDING_FROM_OTHERS)
        expect(mobile.key(note)).not_to_have_class(HELD_HERE)
    assert mobile.page.evaluate("window.scrollY") == scrolled

    tap(mobile, middle(mobile.page.locator("#octave-up")))
    expect(keys.first).to_have_attribute("data-note", str(lowest + 12))
    tap(mobile, on_key(mobile, lowest + 12))
    expect(desk.page.locator(f'#log li[data-from="phone"][data-note="{lowest + 12}"]')) \
        .to_have_count(1)


# --- keyboard only, and what a screen reader is told ---------------------------------------

def axe_violations(jam):
    need_external(os.path.exists(AXE),
                  f"{AXE} is missing (cd tests/peers && npm install --omit=optional)")
    jam.page.add_script_tag(path=AXE)
    results = jam.page.evaluate("""async () => {
        const results = await axe.run(document, { resultTypes: ['violations'] });
        return results.violations.map((violation) => ({
            id: violation.id, impact: violation.impact,
            nodes: violation.nodes.map((node) => node.target.join(' ')) }));
    }""")
    return [violation for violation in results if violation["impact"] in ("serious", "critical")]


def test_the_piano_is_reached_with_tab_and_played_with_space_and_arrows(open_jam):
    listener = open_jam().join("listener")
    player = open_jam().join("player")
    page = player.page
    page.locator("body").focus()
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('key')"):
            break
    else:
        pytest.fail("Tab never reached a piano key")
    # One tab stop for the whole piano, not one per key.
    expect(page.locator('#keyboard .key[tabindex="0"]')).to_have_count(1)
    note = int(page.evaluate("document.activeElement.dataset.note"))
    page.keyboard.down("Space")
    expect(player.key(note)).to_have_class(HELD_HERE)
    expect(player.key(note)).to_have_attribute("aria-pressed", "true")
    expect(listener.key(note)).to_have_class(SOUNDING_FROM_OTHERS)
    page.keyboard.up("Space")
    expect(listener.key(note)).not_to_have_class(SOUNDING_FROM_OTHERS)
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.note") == str(note + 1)
    page.keyboard.down("Enter")
    expect(listener.key(note + 1)).to_have_class(SOUNDING_FROM_OTHERS)
    page.keyboard.up("Enter")
    expect(listener.key(note + 1)).not_to_have_class(SOUNDING_FROM_OTHERS)
    # Tab goes on out of the piano.
    page.keyboard.press("Tab")
    assert not page.evaluate("document.activeElement.classList.contains('key')")


def test_axe_finds_nothing_serious_on_the_form_or_the_jam(open_jam):
    form = open_jam()
    expect(form.page.locator("#public-list button")).to_have_count(2)
    assert axe_violations(form) == []
    form.fill_form("ann", "demo", "not the passphrase at all")
    expect(form.page.locator("#error")).not_to_have_text("")
    assert axe_violations(form) == []

    other = open_jam().join("ben")
    jam = open_jam().join("cy")
    other.press(60)
    expect(jam.key(60)).to_have_class(SOUNDING_FROM_OTHERS)
    mixer_row(jam, "ben").locator(".mixer__mute").click()
    assert axe_violations(jam) == []
    # The dark scheme's colours too (playwright pages prefer light unless told).
    jam.page.emulate_media(color_scheme="dark")
    assert jam.page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    assert axe_violations(jam) == []
    screenshot(jam, "jam-dark.png")
    other.release()


# --- keeping what you played ------------------------------------------------------------

def test_a_recording_of_two_players_downloads_as_a_midi_file_with_a_track_each(open_jam):
    alice = open_jam().join("alice")
    bob = open_jam().join("bob")
    alice.page.click("#record-toggle")
    expect(alice.page.locator("#record-toggle")).to_have_attribute("aria-pressed", "true")
    for player, note in ((alice, 60), (bob, 64), (alice, 67)):
        player.key(note).scroll_into_view_if_needed()      # Record is further down the page
        player.press(note)
        expect(alice.key(note)).to_have_class(HELD_HERE if player is alice else SOUNDING_FROM_OTHERS)
        player.release()
        expect(alice.key(note)).not_to_have_class(
            HELD_HERE if player is alice else SOUNDING_FROM_OTHERS)
    alice.page.click("#record-toggle")
    link = alice.page.locator("#record-download")
    expect(link).to_be_visible()
    expect(alice.page.locator("#record-status")).to_contain_text("6 MIDI messages from alice, bob")
    screenshot(alice, "recording.png")
    with alice.page.expect_download() as download:
        link.click()
    song = mido.MidiFile(file=io.BytesIO(open(download.value.path(), "rb").read()))
    conductor, alice_track, bob_track = song.tracks
    assert [m.tempo for m in conductor if m.type == "set_tempo"] == [mido.bpm2tempo(120)]
    assert (alice_track.name, bob_track.name) == ("alice", "bob")

    def notes(track):
        return [(m.type, m.note) for m in track if m.type in ("note_on", "note_off")]
    # The page sends a release as note-on with velocity 0 or as note-off: both end the note.
    assert [note for kind, note in notes(alice_track)] == [60, 60, 67, 67]
    assert [note for kind, note in notes(bob_track)] == [64, 64]
    # In time order across the tracks: alice's 60, then bob's 64, then alice's 67.
    starts = {}
    for track in (alice_track, bob_track):
        tick = 0
        for message in track:
            tick += message.time
            if message.type == "note_on" and message.velocity > 0:
                starts[message.note] = tick
    assert starts[60] < starts[64] < starts[67]
    # Nobody else gets the file: another token is 404.
    guessed = re.sub(r"token=[^&]+", "token=guessed", link.get_attribute("href"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(guessed, timeout=5)
    assert refused.value.code == 404
