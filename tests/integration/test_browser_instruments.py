"""Each player's instrument on the jam page, in Debian's headless Chromium against a real gateway.

What a page sounds is read back from the page: the SoundFont synthesizer's own state
(``window.netgateway.instrumentOf(name).synth``, reported by spessasynth's AudioWorklet
thread) and each player's strip analyser, which hears exactly what that player adds to the
mix. The General MIDI bank is the vendored public-domain one (gateway/web/static/vendor).

- A Program Change chosen on one page changes the instrument the other pages render,
  late joiners included; a listener's override per mixer row wins, for that listener only.
- The sustain pedal (CC 64) holds a released note until the pedal goes up.
- Pitch bend reaches the synthesizer and moves the pitch heard (analyser spectrum).
- When the bank cannot be had (404) the page plays its own synth, and says so.
- A Web MIDI input is sounded once by its own page; others' notes sent to a MIDI output are
  not also sounded by the page.

Screenshots go to test-artifacts/jam-page/.
"""

import math

import pytest

from tests.integration.test_browser import FAKE_WEB_MIDI, SOUNDING_FROM_OTHERS
from tests.integration.test_browser_jam import (  # noqa: F401 (fixtures)
    SILENT_RMS, SOUNDING_RMS, browser_context, level, mixer_row, open_jam, screenshot,
    wait_for_level,
)

try:
    from playwright.sync_api import expect
except ImportError:  # browser_context then skips, or fails under CI=true
    expect = None

pytestmark = pytest.mark.external

CHURCH_ORGAN = 19     # GM program 20: a tone that holds while the key (or the pedal) does
VIOLIN = 40
OCARINA = 79          # close to a sine: its spectrum has one clear peak
BANK_404 = "the server responded with a status of 404"


def instrument(jam, name):
    return jam.page.evaluate("(name) => window.netgateway.instrumentOf(name)", name)


def wait_for_instrument(jam, name, condition):
    """Waits until ``condition`` (JS, over ``i`` = instrumentOf(name)) holds."""
    jam.page.wait_for_function(
        f"(name) => {{ const i = window.netgateway.instrumentOf(name); return i && ({condition}); }}",
        arg=name)


def wait_for_soundfont(jam, *names):
    jam.page.wait_for_function("window.netgateway.mixer.renderer === 'soundfont'", timeout=20_000)
    for name in names:
        wait_for_instrument(jam, name, "i.renderer === 'soundfont'")


def choose_instrument(jam, program):
    jam.page.select_option("#instrument", str(program))


def peak_frequency(jam, name):
    """The strongest frequency in what ``name``'s strip plays now, from its analyser."""
    return jam.page.evaluate("""(name) => {
        const { analyser } = window.netgateway.mixer.strips.get(name).nodes;
        const bins = new Float32Array(analyser.frequencyBinCount);
        analyser.getFloatFrequencyData(bins);
        let best = 1;
        for (let i = 2; i < bins.length - 1; i += 1) if (bins[i] > bins[best]) best = i;
        // Parabolic interpolation between the peak bin and its neighbours.
        const [a, b, c] = [bins[best - 1], bins[best], bins[best + 1]];
        const shift = (a - 2 * b + c) === 0 ? 0 : 0.5 * (a - c) / (a - 2 * b + c);
        return (best + shift) * analyser.context.sampleRate / analyser.fftSize;
    }""", name)


# --- the player's Program Change, the listener's override ---------------------------------

def test_a_program_change_from_one_page_changes_the_instrument_the_other_renders(open_jam):
    alice = open_jam().join("alice")
    bob = open_jam().join("bob")
    wait_for_soundfont(bob, "alice", "bob")
    expect(bob.page.locator("#instrument-status")).to_have_text(
        "Instruments: General MIDI SoundFont.")
    assert instrument(bob, "alice")["synth"]["program"] == 0

    choose_instrument(alice, CHURCH_ORGAN)
    wait_for_instrument(bob, "alice", f"i.program === {CHURCH_ORGAN}")
    # The synthesizer's own thread reports the program it now plays for alice.
    wait_for_instrument(bob, "alice", f"i.synth.program === {CHURCH_ORGAN}")
    row = mixer_row(bob, "alice")
    expect(row).to_have_attribute("data-program", str(CHURCH_ORGAN))
    expect(row.locator(".mixer__instrument option").first).to_have_text("As played: 20 Church Organ")
    assert instrument(bob, "bob")["program"] == 0          # bob's own strip is untouched
    assert instrument(alice, "alice")["program"] == CHURCH_ORGAN

    alice.press(60)
    expect(bob.key(60)).to_have_class(SOUNDING_FROM_OTHERS)
    wait_for_level(bob, "alice", f"> {SOUNDING_RMS}")
    wait_for_instrument(bob, "alice", "i.synth.voices > 0")
    screenshot(bob, "instrument-church-organ.png")
    alice.release()

    # Someone who joins later hears alice's organ too: the page sends its program again.
    carol = open_jam().join("carol")
    wait_for_soundfont(carol, "alice")
    wait_for_instrument(carol, "alice", f"i.synth.program === {CHURCH_ORGAN}")


def test_a_listener_overrides_one_players_instrument_for_themselves_only(open_jam):
    alice = open_jam().join("alice")
    bob = open_jam().join("bob")
    carol = open_jam().join("carol")
    for jam in (bob, carol):
        wait_for_soundfont(jam, "alice")
    choose_instrument(alice, CHURCH_ORGAN)
    wait_for_instrument(carol, "alice", f"i.synth.program === {CHURCH_ORGAN}")

    mixer_row(bob, "alice").locator(".mixer__instrument").select_option(str(VIOLIN))
    wait_for_instrument(bob, "alice", f"i.override === {VIOLIN} && i.synth.program === {VIOLIN}")
    expect(mixer_row(bob, "alice")).to_have_attribute("data-program", str(VIOLIN))
    alice.press(62)
    wait_for_level(bob, "alice", f"> {SOUNDING_RMS}")
    alice.release()
    screenshot(bob, "instrument-override.png")
    # Alice changes her instrument: bob's override still wins for bob, carol hears the change.
    choose_instrument(alice, OCARINA)
    wait_for_instrument(carol, "alice", f"i.synth.program === {OCARINA}")
    wait_for_instrument(bob, "alice", f"i.playerProgram === {OCARINA}")
    assert instrument(bob, "alice")["synth"]["program"] == VIOLIN
    expect(mixer_row(bob, "alice").locator(".mixer__instrument option").first).to_have_text(
        "As played: 80 Ocarina")
    # Back to the player's choice.
    mixer_row(bob, "alice").locator(".mixer__instrument").select_option("")
    wait_for_instrument(bob, "alice", f"i.override === null && i.synth.program === {OCARINA}")


# --- the sustain pedal and pitch bend -------------------------------------------------------

def alice_plays_to_bob(open_jam, program):
    """Two players, alice on ``program`` as bob's SoundFont synthesizer renders her."""
    alice = open_jam().join("alice")
    bob = open_jam().join("bob")
    wait_for_soundfont(bob, "alice")
    choose_instrument(alice, program)
    wait_for_instrument(bob, "alice", f"i.synth.program === {program}")
    return alice, bob


def test_the_sustain_pedal_holds_a_released_note_until_it_goes_up(open_jam):
    alice, bob = alice_plays_to_bob(open_jam, CHURCH_ORGAN)

    # Without the pedal a released organ note stops.
    alice.press(60)
    wait_for_level(bob, "alice", f"> {SOUNDING_RMS}")
    alice.release()
    expect(bob.key(60)).not_to_have_class(SOUNDING_FROM_OTHERS)
    wait_for_level(bob, "alice", f"< {SILENT_RMS}")

    alice.page.click("#sustain")
    expect(alice.page.locator("#sustain")).to_have_attribute("aria-pressed", "true")
    alice.press(64)
    wait_for_level(bob, "alice", f"> {SOUNDING_RMS}")
    alice.release()
    expect(bob.key(64)).not_to_have_class(SOUNDING_FROM_OTHERS)
    wait_for_instrument(bob, "alice", "i.held === 0 && i.sustained === 1")
    bob.page.wait_for_timeout(1500)
    # Still heard, still a voice in the synthesizer, a second and a half after the note-off.
    assert level(bob, "alice") > SOUNDING_RMS
    assert instrument(bob, "alice")["synth"]["voices"] > 0
    alice.page.click("#sustain")
    expect(alice.page.locator("#sustain")).to_have_attribute("aria-pressed", "false")
    wait_for_level(bob, "alice", f"< {SILENT_RMS}")
    wait_for_instrument(bob, "alice", "i.sustained === 0")


def test_pitch_bend_reaches_the_synthesizer_and_moves_the_pitch(open_jam):
    alice, bob = alice_plays_to_bob(open_jam, OCARINA)

    alice.press(69)                                   # A4, 440 Hz
    wait_for_level(bob, "alice", f"> {SOUNDING_RMS}")
    bob.page.wait_for_timeout(300)
    straight = peak_frequency(bob, "alice")
    assert abs(straight - 440) < 20, straight
    alice.page.locator("#bend").fill("16383")         # all the way up: two semitones
    wait_for_instrument(bob, "alice", "i.synth.pitchWheel === 16383")
    bob.page.wait_for_timeout(300)
    bent = peak_frequency(bob, "alice")
    assert math.isclose(bent / straight, 2 ** (2 / 12), rel_tol=0.03), (straight, bent)
    alice.release()


# --- without the sound bank ----------------------------------------------------------------

def test_the_page_plays_its_own_synth_when_the_sound_bank_is_missing(open_jam, browser_context):  # noqa: F811
    browser_context.route("**/vendor/sf_GMbank.sf2", lambda route: route.fulfill(status=404))
    alice = open_jam().join("alice")
    bob = open_jam().join("bob")
    for jam in (alice, bob):
        jam.page.wait_for_function("window.netgateway.mixer.renderer === 'synth'")
        expect(jam.page.locator("#instrument-status")).to_have_text(
            "Instruments: the page's simple synth (the sound bank did not load: HTTP 404).")
    assert instrument(bob, "alice")["renderer"] == "synth"
    # Programs, the pedal and notes still work, on the synth.
    choose_instrument(alice, CHURCH_ORGAN)
    wait_for_instrument(bob, "alice", f"i.program === {CHURCH_ORGAN}")
    expect(mixer_row(bob, "alice")).to_have_attribute("data-renderer", "synth")
    alice.page.click("#sustain")
    alice.press(60)
    wait_for_level(bob, "alice", f"> {SOUNDING_RMS}")
    alice.release()
    wait_for_instrument(bob, "alice", "i.sustained === 1 && i.voices === 1")
    assert level(bob, "alice") > SOUNDING_RMS
    alice.page.click("#sustain")
    wait_for_level(bob, "alice", f"< {SILENT_RMS}")
    screenshot(bob, "instrument-fallback.png")
    for jam in (alice, bob):
        # The 404 itself is the one console error expected here.
        assert any(BANK_404 in text for text in jam.console_errors), jam.console_errors
        jam.console_errors = [text for text in jam.console_errors if BANK_404 not in text]


# --- Web MIDI: each note sounded once --------------------------------------------------------

def test_a_web_midi_input_sounds_once_and_notes_sent_to_a_midi_output_are_not_sounded_here(
        open_jam, browser_context):  # noqa: F811
    browser_context.add_init_script(FAKE_WEB_MIDI)
    erin = open_jam().join("erin")
    frank = open_jam().join("frank")
    wait_for_soundfont(erin, "erin", "frank")
    erin.page.click("#midi-enable")
    expect(erin.page.locator("#midi-status")).to_contain_text("Web MIDI ready")

    erin.page.select_option("#midi-in", "fake-in")     # the fake then plays D4 (62)
    expect(frank.key(62)).to_have_class(SOUNDING_FROM_OTHERS)
    wait_for_level(erin, "erin", f"> {SOUNDING_RMS}")   # heard on erin's own page
    erin.page.wait_for_timeout(300)
    assert instrument(erin, "erin")["notesStarted"] == 1  # once, not twice
    assert instrument(erin, "erin")["synth"]["voices"] >= 1
    # The device's pedal and bend are heard here too.
    erin.page.evaluate("window.fakeMidiPlay([0xE0, 0, 96])")
    wait_for_instrument(erin, "erin", "i.synth.pitchWheel === 96 << 7")
    erin.page.evaluate("window.fakeMidiPlay([0x80, 62, 0])")
    expect(frank.key(62)).not_to_have_class(SOUNDING_FROM_OTHERS)
    wait_for_instrument(erin, "erin", "i.held === 0")

    # No MIDI output: frank's notes are sounded by erin's page.
    frank.press(65)
    wait_for_level(erin, "frank", f"> {SOUNDING_RMS}")
    frank.release()
    assert instrument(erin, "frank")["notesStarted"] == 1
    wait_for_level(erin, "frank", f"< {SILENT_RMS}")

    # With a MIDI output, frank's notes go there, and the page does not sound them as well.
    erin.page.select_option("#midi-out", "fake-out")
    frank.press(67)
    expect(erin.key(67)).to_have_class(SOUNDING_FROM_OTHERS)   # still shown
    erin.page.wait_for_function(
        "window.fakeMidiSent.some(m => m[0] === 0x90 && m[1] === 67 && m[2] > 0)")
    erin.page.wait_for_timeout(500)
    assert level(erin, "frank") < SILENT_RMS
    assert instrument(erin, "frank")["notesStarted"] == 1
    frank.release()
    erin.page.wait_for_function(
        "window.fakeMidiSent.some(m => (m[0] & 0xf0) === 0x80 && m[1] === 67)")
