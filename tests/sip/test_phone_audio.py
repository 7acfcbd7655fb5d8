"""G.711 against the standard's tables, and what the phone synthesizer sounds like."""

import numpy
import pytest

from gateway.protocols.sip import phone_audio
from gateway.protocols.sip.phone_audio import (
    FRAME_SAMPLES, PCMA, PCMU, SAMPLE_RATE, Synthesizer, decode_alaw, decode_ulaw,
    encode_alaw, encode_ulaw, note_frequency,
)

ALL_SAMPLES = numpy.arange(-32768, 32768, dtype=numpy.int64)
ALL_OCTETS = bytes(range(256))


# G.711 ---------------------------------------------------------------------------
def test_ulaw_table_points():
    # G.711 Table 2: 0 is the octet 0xFF (all ones: μ-law inverts every bit),
    # the largest magnitude 8031 (14-bit units, x4 here) is 0x80 positive, 0x00 negative.
    assert encode_ulaw([0, -1, 32767, -32768, 32124, -32124]) == bytes(
        [0xFF, 0x7F, 0x80, 0x00, 0x80, 0x00])
    assert decode_ulaw(b"\x80\x00\xff\x7f\xfe").tolist() == [32124, -32124, 0, 0, 8]


def test_alaw_table_points():
    # G.711 Table 1: even bits inverted (XOR 0x55), the sign bit 1 for positive;
    # the largest magnitude 4032 (13-bit units... x8 here) is 0xAA, its negative 0x2A.
    assert encode_alaw([0, -1, 32767, -32768, 8, -8]) == bytes(
        [0xD5, 0x55, 0xAA, 0x2A, 0xD5, 0x55])
    assert decode_alaw(b"\xaa\x2a\xd5\x55").tolist() == [32256, -32256, 8, -8]


def test_ulaw_decoder_levels_are_g711s():
    """G.711 Table 2: segment e, step j decodes to (2j + 33) * 2**e - 33 (14-bit)."""
    for exponent in range(8):
        for step in range(16):
            magnitude = 4 * ((2 * step + 33) * 2 ** exponent - 33)
            octet = 0xFF ^ (exponent << 4 | step)         # positive: sign bit 1 after inversion
            assert decode_ulaw(bytes([octet, octet & 0x7F])).tolist() == [magnitude, -magnitude]


def test_alaw_decoder_levels_are_g711s():
    """G.711 Table 1: segment 0 step j is 2j + 1, segment e > 0 is (2j + 33) * 2**(e-1)."""
    for exponent in range(8):
        for step in range(16):
            level = 2 * step + 1 if exponent == 0 else (2 * step + 33) * 2 ** (exponent - 1)
            octet = (0x80 | exponent << 4 | step) ^ 0x55
            assert decode_alaw(bytes([octet, octet & 0x7F ^ 0x00])).tolist()[0] == 8 * level
            assert decode_alaw(bytes([octet & 0x7F])).tolist() == [-8 * level]


@pytest.mark.parametrize("encode, decode", [(encode_ulaw, decode_ulaw), (encode_alaw, decode_alaw)])
def test_every_octet_round_trips(encode, decode):
    decoded = decode(ALL_OCTETS)
    again = encode(decoded)
    if encode is encode_ulaw:
        # 0x7F is μ-law's negative zero: it decodes to 0, which encodes as 0xFF.
        assert again == ALL_OCTETS[:0x7F] + b"\xff" + ALL_OCTETS[0x80:]
    else:
        assert again == ALL_OCTETS


@pytest.mark.parametrize("encode, decode", [(encode_ulaw, decode_ulaw), (encode_alaw, decode_alaw)])
def test_every_sample_quantizes_within_half_a_step(encode, decode):
    decoded = decode(encode(ALL_SAMPLES)).astype(numpy.int64)
    error = numpy.abs(decoded - ALL_SAMPLES)
    # Steps double with each segment: half a step stays below |x| / 16 (plus the
    # finest step near zero, and the clipping above the largest level).
    inside = numpy.abs(ALL_SAMPLES) <= 32124
    assert (error[inside] <= numpy.abs(ALL_SAMPLES[inside]) / 16 + 16).all()
    assert (numpy.diff(decoded) >= 0).all()               # monotonic


def test_silence_frames():
    assert phone_audio.silence(PCMU) == b"\xff" * 160
    assert phone_audio.silence(PCMA) == b"\xd5" * 160


# The synthesizer -----------------------------------------------------------------
def render(synthesizer, seconds):
    frames = round(seconds * SAMPLE_RATE / FRAME_SAMPLES)
    return numpy.concatenate([synthesizer.render() for _ in range(frames)]).astype(numpy.float64)


def peak_frequency(samples):
    """The strongest frequency, interpolated between FFT bins (Hann window)."""
    spectrum = numpy.abs(numpy.fft.rfft(samples * numpy.hanning(len(samples))))
    spectrum[0] = 0
    peak = int(spectrum.argmax())
    left, centre, right = numpy.log(spectrum[peak - 1:peak + 2] + 1e-12)
    offset = 0.5 * (left - right) / (left - 2 * centre + right)
    return (peak + offset) * SAMPLE_RATE / len(samples)


@pytest.mark.parametrize("note, frequency", [
    (69, 440.0), (60, 261.63), (57, 220.0), (76, 659.26), (84, 1046.5), (96, 2093.0)])
def test_a_note_sounds_at_its_pitch(note, frequency):
    synthesizer = Synthesizer()
    synthesizer.note_on(0, note, 100)
    render(synthesizer, 0.2)                              # past the attack
    found = peak_frequency(render(synthesizer, 1.0))
    assert abs(found - frequency) < 2.0, found
    assert note_frequency(note) == pytest.approx(frequency, abs=0.01)


def test_a_note_above_the_band_is_played_an_octave_or_more_down():
    synthesizer = Synthesizer()
    synthesizer.note_on(0, 110, 100)                      # D8, 4699 Hz: above Nyquist
    render(synthesizer, 0.1)
    assert abs(peak_frequency(render(synthesizer, 1.0)) - note_frequency(110) / 2) < 2.0


def test_no_partial_above_3600_hz():
    synthesizer = Synthesizer()
    synthesizer.note_on(0, 93, 127)                       # A6, 1760 Hz: only its 2nd fits
    samples = render(synthesizer, 0.5)
    spectrum = numpy.abs(numpy.fft.rfft(samples * numpy.hanning(len(samples))))
    frequencies = numpy.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE)
    assert spectrum[frequencies > 3700].max() < spectrum.max() * 1e-2


def test_silence_before_and_after_a_note():
    synthesizer = Synthesizer()
    assert not render(synthesizer, 0.1).any()
    assert synthesizer.render_payload(PCMU) == b"\xff" * 160
    synthesizer.note_on(0, 64, 100)
    assert render(synthesizer, 0.3).any()
    synthesizer.note_off(0, 64)
    tail = render(synthesizer, 0.6)
    assert tail[:80].any()                                # a release, not a cut
    assert not tail[-1600:].any()                         # inaudible by 0.4 s: then nothing
    assert synthesizer.voices == []
    assert synthesizer.render_payload(PCMA) == b"\xd5" * 160


def test_a_note_ended_before_its_first_frame_still_sounds():
    synthesizer = Synthesizer()
    synthesizer.note_on(0, 72, 100)
    synthesizer.note_off(0, 72)                           # a DTMF press of which only E came
    sound = render(synthesizer, 0.5)
    assert numpy.abs(sound[:320]).max() > 3000
    assert not sound[-800:].any()
    assert largest_step(sound) <= steady_step(72, 100) + 2


def largest_step(samples):
    return numpy.abs(numpy.diff(samples)).max()


def steady_step(note, velocity=127):
    """The largest sample-to-sample step of the held note alone: its own slope."""
    synthesizer = Synthesizer()
    synthesizer.note_on(0, note, velocity)
    return largest_step(render(synthesizer, 0.4))


@pytest.mark.parametrize("note", [48, 69, 96])
def test_no_click_at_note_on_and_note_off(note):
    synthesizer = Synthesizer()
    before = render(synthesizer, 0.06)
    synthesizer.note_on(0, note, 127)
    onset = numpy.concatenate([before, render(synthesizer, 0.06)])
    bound = steady_step(note) + 2
    assert abs(onset[len(before)]) < 0.02 * numpy.abs(onset).max()     # it starts from nothing
    assert largest_step(onset) <= bound
    render(synthesizer, 0.3)
    synthesizer.note_off(0, note)
    assert largest_step(render(synthesizer, 0.2)) <= bound


def test_no_click_when_a_note_is_struck_again_or_silenced():
    synthesizer = Synthesizer()
    synthesizer.note_on(0, 69, 40)
    render(synthesizer, 0.3)
    synthesizer.note_on(0, 69, 127)                       # louder, same voice
    assert len(synthesizer.voices) == 1
    assert largest_step(render(synthesizer, 0.1)) <= steady_step(69) + 2
    synthesizer.all_sound_off()
    sound = render(synthesizer, 0.06)
    assert largest_step(sound) <= steady_step(69) + 2
    assert not sound[-320:].any()


def test_polyphony_is_bounded_and_a_stolen_voice_fades():
    synthesizer = Synthesizer(max_voices=16)
    for note in range(40, 56):
        synthesizer.note_on(0, note, 30)
    old_voices = render(synthesizer, 0.2)[-800:]
    for note in range(60, 84):                            # 24 more
        synthesizer.note_on(0, note, 30)
    assert synthesizer.sounding == 16
    assert synthesizer.stolen == 24
    steal = render(synthesizer, 0.04)
    # The 16 that sounded fade over one frame while the new ones swell.
    assert synthesizer.peak_voices == 32
    assert synthesizer.rendered_voices == 16
    # Below the limiter the mix is a sum: without the new notes' onset (the same
    # notes from silence) what is left is the stolen voices. They fade over one
    # frame from where they were, with the steps of their own waves, no jump.
    alone = Synthesizer()
    for note in range(68, 84):
        alone.note_on(0, note, 30)
    stolen = steal - render(alone, 0.04)
    assert largest_step(numpy.concatenate([old_voices[-1:], stolen])) <= (
        largest_step(old_voices) + 3)
    assert numpy.abs(stolen[:20]).max() > 0.2 * numpy.abs(old_voices).max()   # a fade, not a cut
    assert numpy.abs(stolen[160:]).max() <= 1                                  # gone after it


def test_steals_a_releasing_voice_before_a_held_one():
    synthesizer = Synthesizer(max_voices=2)
    synthesizer.note_on(0, 60, 100)
    synthesizer.note_on(0, 64, 100)
    render(synthesizer, 0.1)
    synthesizer.note_off(0, 60)
    render(synthesizer, 0.02)
    synthesizer.note_on(0, 67, 100)
    keys = {voice.key[1]: voice.stage for voice in synthesizer.voices}
    assert keys[64] == phone_audio._HOLD and keys[60] == phone_audio._FADING


def test_sustain_pedal_holds_notes_until_it_is_released():
    synthesizer = Synthesizer()
    synthesizer.play(b"\xb0\x40\x7f")                     # pedal down
    synthesizer.play(b"\x90\x3c\x64")
    render(synthesizer, 0.1)
    synthesizer.play(b"\x80\x3c\x40")
    synthesizer.play(b"\xb0\x7b\x00")                     # All Notes Off: the pedal holds
    assert numpy.abs(render(synthesizer, 1.0)[-800:]).max() > 1000
    synthesizer.play(b"\xb0\x40\x00")                     # pedal up
    assert not render(synthesizer, 0.5)[-800:].any()


def test_the_pedal_is_per_channel_and_reset_controllers_lifts_it():
    synthesizer = Synthesizer()
    synthesizer.play(b"\xb1\x40\x7f")
    synthesizer.play(b"\x90\x3c\x64")
    synthesizer.play(b"\x91\x40\x64")
    render(synthesizer, 0.1)
    synthesizer.play(b"\x80\x3c\x00")
    synthesizer.play(b"\x81\x40\x00")
    render(synthesizer, 0.5)
    assert [voice.key for voice in synthesizer.voices] == [(1, 0x40)]
    synthesizer.play(b"\xb1\x79\x00")                     # Reset All Controllers
    render(synthesizer, 0.5)
    assert synthesizer.voices == []


def test_note_on_with_velocity_zero_is_a_note_off_and_drums_are_not_played():
    synthesizer = Synthesizer()
    synthesizer.play(b"\x99\x24\x64")                     # channel 10: percussion
    assert synthesizer.voices == []
    synthesizer.play(b"\x90\x3c\x64")
    synthesizer.play(b"\x90\x3c\x00")
    render(synthesizer, 0.5)
    assert synthesizer.voices == []


def test_ignored_and_odd_messages_do_not_disturb_it():
    synthesizer = Synthesizer()
    for data in (b"\xe0\x00\x40", b"\xc0\x05", b"\xf8", b"\xf0\x7e\xf7", b"\xb0\x07\x64",
                 b"\x90\x3c", b"\xb0\x40"):
        synthesizer.play(data)
    assert synthesizer.voices == []
    synthesizer.play(b"\x90\x3c\x64")
    synthesizer.play(b"\xff")                             # System Reset: silence
    render(synthesizer, 0.1)
    assert synthesizer.voices == []


def test_level_one_voice_and_a_full_chord():
    synthesizer = Synthesizer()
    synthesizer.note_on(0, 69, 127)
    peak = numpy.abs(render(synthesizer, 0.3)).max() / 32767
    assert 0.25 < peak < 0.4                              # about -10 dBFS
    for note in range(50, 82, 2):
        synthesizer.note_on(0, note, 127)
    chord = render(synthesizer, 0.5)
    assert numpy.abs(chord).max() <= 32767
    # The limiter turns the chord down rather than clipping it: its peaks stay
    # near 70% of full scale; the soft clip above 80% bends a few overshoots.
    assert (numpy.abs(chord) > 0.8 * 32767).mean() < 0.01
    assert numpy.abs(chord[-1600:]).max() > 0.6 * 32767


def test_render_payload_is_the_encoded_render():
    first, second = Synthesizer(), Synthesizer()
    for synthesizer in (first, second):
        synthesizer.note_on(0, 72, 100)
    for _ in range(5):
        assert first.render_payload(PCMA) == encode_alaw(second.render())


def test_skipped_frames_move_the_voices_on_and_come_back_without_a_click():
    synthesizer = Synthesizer()
    synthesizer.note_on(0, 69, 127)
    render(synthesizer, 0.1)
    synthesizer.note_off(0, 69)
    synthesizer.skip(100)                                  # two seconds: the release is over
    assert synthesizer.voices == []
    synthesizer.note_on(0, 69, 127)
    render(synthesizer, 0.1)
    synthesizer.skip(3)
    assert abs(synthesizer.render()[0]) < 500              # back in from the silence sent


def test_max_voices_must_be_positive():
    with pytest.raises(ValueError):
        Synthesizer(max_voices=0)


# --- many synthesizers at once (the SIP door's pacer) ------------------------------------

def test_render_many_gives_each_synthesizer_its_own_frame():
    from gateway.protocols.sip.phone_audio import encode_many, render_many
    chords = [[], [60], [48, 52, 55, 60, 64], list(range(40, 100, 4)), [72, 76]]

    def band():
        synthesizers = [phone_audio.Synthesizer() for _ in chords]
        for synthesizer, chord in zip(synthesizers, chords):
            for note in chord:
                synthesizer.play(bytes((0x90, note, 120)))
        return synthesizers
    alone, together = band(), band()
    for frame in range(60):
        if frame == 20:                     # keys let go, a re-strike, a new note
            for pair in (alone, together):
                pair[2].play(b"\x80\x30\x00")
                pair[3].play(b"\x90\x28\x64")
                pair[0].play(b"\x90\x45\x64")
                pair[4].play(b"\xb0\x7b\x00")
        expected = [synthesizer.render() for synthesizer in alone]
        rows = render_many(together)
        for want, got in zip(expected, rows):
            assert numpy.abs(want.astype(int) - got.astype(int)).max() <= 1, frame
    assert [s.rendered_voices for s in alone] == [s.rendered_voices for s in together]
    payloads = encode_many(rows, [phone_audio.PCMU, phone_audio.PCMA] * 2 + [phone_audio.PCMU])
    assert payloads[1] == phone_audio.encode(rows[1], phone_audio.PCMA)
    assert payloads[4] == phone_audio.encode(rows[4], phone_audio.PCMU)
