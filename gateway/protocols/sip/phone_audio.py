"""What a phone caller hears: the session's MIDI played by a small synthesizer, in G.711.

# implements ITU-T G.711 μ-law and A-law (the algorithm of the ITU-T G.191
#   reference code: 14-bit μ-law and 13-bit A-law magnitudes from 16-bit
#   samples, one's complement for negative input), as table lookups
# implements RFC 3551 §4.5.14 (PCMU/PCMA: one octet per sample at 8000 Hz;
#   §4.1: 20 ms frames, 160 samples)

The synthesizer (:class:`Synthesizer`) plays MIDI note on/off, the sustain
pedal and the channel mode messages (All Sound Off, All Notes Off, Reset All
Controllers) in 8 kHz mono, rendered in 20 ms frames. Each voice is a
fundamental plus three harmonics (0.4, 0.2, 0.1 of it) whose brightness
fades within about a second, like an electric piano, sustaining at 40% of
the attack while the key is held. A harmonic is left out where it would be
above 3600 Hz, so nothing aliases at 8 kHz or falls outside the telephone
band, and a note whose fundamental would (above A#7) is played in the highest
octave that fits. Pitch bend, programs and other controllers are ignored.

No clicks: every change of a voice's amplitude, its start, its release, a
re-struck note or a stolen voice, ramps linearly over the whole frame from
the level the previous frame ended on. A released voice decays with a 40 ms
time constant and stops once it is inaudible. Polyphony is bounded
(``max_voices``, 16 by default): a note-on beyond it steals the quietest
releasing voice, or else the oldest one, which fades out over the next frame
(so for that one frame up to twice ``max_voices`` voices render). Events
take effect at the next frame boundary; 20 ms is below what a phone's jitter
buffer adds anyway.

Level: one voice at velocity 127 peaks near -10 dBFS. A limiter keeps what
many voices add up to under full scale: its gain follows the peaks (a frame
of look-ahead, 150 ms recovery), and a soft clip bends whatever still goes
over 80% smoothly towards full scale, so a 16-voice chord gets quieter
rather than distorted, and nothing ever wraps around or clips hard.

numpy does the sample work, because it is what meets issue 11's goal (at
most 1% of a core per call). Measured with bench/phone_render.py --compare
(Python 3.11, numpy 2.4, one core of these 2-core machines while other
benchmarks ran: figures move by a third between runs), CPU per 20 ms frame
rendered and μ-law encoded, medians:

=========  ==========  ============================  =============================
voices     numpy       pure Python (same algorithm)  a call, 50 frames/s: np / py
=========  ==========  ============================  =============================
0          0.1 µs      0.2 µs (a constant frame)     0.0% / 0.0%
4          30-41 µs    151-185 µs                    0.2% / 0.8-0.9% of a core
16         55-74 µs    758-859 µs                    0.3-0.4% / 3.8-4.3% of a core
=========  ==========  ============================  =============================

Pure Python is 5x slower at 4 voices and 10-16x at 16, past the goal from
about 5 voices on; with numpy a call takes 0.4% of a core or less with all
16 voices sounding, so numpy is a dependency (setup.cfg). A silent call
costs neither anything.
Python's ``audioop`` is not used: it is deprecated and gone in Python 3.13.

:func:`render_many` renders one frame of many synthesizers with one set of
numpy operations (float32 samples until the limiter), as the SIP door's pacer
does for every phone call on each 20 ms tick: measured for 100 calls of 1 and
5 voices, 9 and 20 µs per call-frame against 36 and 57 µs one call at a time,
because each numpy call's fixed cost is paid once per tick.

Sans-IO: no Twisted, sockets or clocks; the caller says when a frame is due.
"""

import math

import numpy

from gateway.midi import CC_SUSTAIN, CONTROL_CHANGE, NOTE_OFF, NOTE_ON

__all__ = [
    "SAMPLE_RATE", "FRAME_SAMPLES", "FRAME_SECONDS", "PCMU", "PCMA",
    "Synthesizer", "encode", "decode", "encode_ulaw", "decode_ulaw",
    "encode_alaw", "decode_alaw", "silence", "render_many", "encode_many",
]

SAMPLE_RATE = 8000
FRAME_SAMPLES = 160                      # 20 ms (RFC 3551 §4.1 default packetization)
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE

PCMU = 0                                 # RFC 3551 static payload types
PCMA = 8


# G.711 ------------------------------------------------------------------
def _ulaw_compress(samples):
    """μ-law octets of int64 16-bit samples (ITU-T G.191 ``ulaw_compress``)."""
    negative = samples < 0
    magnitude = numpy.where(negative, ~samples, samples) >> 2     # 14 bits, 0 ... 8191
    magnitude = numpy.minimum(magnitude + 33, 0x1FFF)             # + bias
    segment = numpy.ones_like(magnitude)                          # 1 ... 8
    shifted = magnitude >> 6
    while shifted.any():
        segment += shifted != 0
        shifted >>= 1
    low_nibble = 0x0F - ((magnitude >> segment) & 0x0F)
    octets = ((0x08 - segment) << 4) | low_nibble
    return numpy.where(negative, octets, octets | 0x80).astype(numpy.uint8)


def _ulaw_expand(octets):
    """16-bit samples of μ-law octets (ITU-T G.191 ``ulaw_expand``)."""
    sign = numpy.where(octets < 0x80, -1, 1)
    inverted = ~octets & 0xFF
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    step = 4 << (exponent + 1)
    return (sign * ((0x80 << exponent) + step * mantissa + step // 2 - 4 * 33)).astype(numpy.int16)


def _alaw_compress(samples):
    """A-law octets of int64 16-bit samples (ITU-T G.191 ``alaw_compress``)."""
    negative = samples < 0
    magnitude = numpy.where(negative, ~samples, samples) >> 4     # 12 bits, 0 ... 2047
    exponent = numpy.zeros_like(magnitude)
    mantissa = magnitude.copy()
    for segment in range(1, 8):
        # Segment s (1-7) holds 16 << (s - 1) ... (32 << (s - 1)) - 1.
        inside = magnitude >= (16 << (segment - 1))
        exponent[inside] = segment
        mantissa[inside] = (magnitude[inside] >> (segment - 1)) - 16
    octets = (exponent << 4) | mantissa
    octets = numpy.where(negative, octets, octets | 0x80)
    return (octets ^ 0x55).astype(numpy.uint8)


def _alaw_expand(octets):
    """16-bit samples of A-law octets (ITU-T G.191 ``alaw_expand``)."""
    toggled = (octets ^ 0x55) & 0x7F
    exponent = toggled >> 4
    mantissa = toggled & 0x0F
    mantissa = numpy.where(exponent > 0, mantissa + 16, mantissa)
    mantissa = (mantissa << 4) + 0x08
    mantissa = numpy.where(exponent > 1, mantissa << numpy.maximum(exponent - 1, 0), mantissa)
    return numpy.where(octets > 0x7F, mantissa, -mantissa).astype(numpy.int16)


# Every 16-bit sample's octet, indexed by the sample's bits as uint16: encoding
# a frame is one lookup (numpy.take) rather than the segment search per sample.
_ALL_SAMPLES = numpy.arange(65536, dtype=numpy.uint16).view(numpy.int16).astype(numpy.int64)
_ULAW_ENCODE = _ulaw_compress(_ALL_SAMPLES)
_ALAW_ENCODE = _alaw_compress(_ALL_SAMPLES)
_ALL_OCTETS = numpy.arange(256, dtype=numpy.int64)
_ULAW_DECODE = _ulaw_expand(_ALL_OCTETS)
_ALAW_DECODE = _alaw_expand(_ALL_OCTETS)
del _ALL_SAMPLES, _ALL_OCTETS

_ENCODE_TABLES = {PCMU: _ULAW_ENCODE, PCMA: _ALAW_ENCODE}
_DECODE_TABLES = {PCMU: _ULAW_DECODE, PCMA: _ALAW_DECODE}


def encode(samples, payload_type):
    """G.711 octets (bytes) of int16 ``samples``; ``payload_type`` is PCMU or PCMA."""
    samples = numpy.asarray(samples, dtype=numpy.int16)
    return _ENCODE_TABLES[payload_type].take(samples.view(numpy.uint16)).tobytes()


def decode(octets, payload_type):
    """int16 samples (a numpy array) of G.711 ``octets``."""
    return _DECODE_TABLES[payload_type].take(numpy.frombuffer(octets, dtype=numpy.uint8))


def encode_ulaw(samples):
    return encode(samples, PCMU)


def decode_ulaw(octets):
    return decode(octets, PCMU)


def encode_alaw(samples):
    return encode(samples, PCMA)


def decode_alaw(octets):
    return decode(octets, PCMA)


def silence(payload_type, samples=FRAME_SAMPLES):
    """One frame of digital silence: μ-law 0xFF, A-law 0xD5 (both decode to 0 ... 8)."""
    return encode(numpy.zeros(samples, dtype=numpy.int16), payload_type)


# The synthesizer -------------------------------------------------------------
_TABLE_BITS = 11
_TABLE_SIZE = 1 << _TABLE_BITS           # one period; its error (-50 dB) is below G.711's (-38)
_PHASE_SHIFT = 32 - _TABLE_BITS          # phases are 32-bit fixed point, wrapping for free
_HARMONICS = (1.0, 0.4, 0.2, 0.1)        # fundamental, 2nd, 3rd, 4th
HIGHEST_PARTIAL = 3600.0                 # Hz: below Nyquist (4000) and the phone band's top

_period = numpy.arange(_TABLE_SIZE) / _TABLE_SIZE
_FUNDAMENTAL = numpy.sin(2 * math.pi * _period)
# Row k: the overtones 2 ... k+1 (row 0: none), for notes whose higher ones would alias.
_OVERTONES = numpy.array([
    sum((weight * numpy.sin(2 * math.pi * harmonic * _period)
         for harmonic, weight in enumerate(_HARMONICS[1:count + 1], start=2)),
        numpy.zeros(_TABLE_SIZE))
    for count in range(len(_HARMONICS))])
# One table for both lookups: the fundamental is row 0, overtone row k is row k + 1.
_WAVES = numpy.concatenate([_FUNDAMENTAL, _OVERTONES.ravel()])
del _period

_SAMPLE_OFFSETS = numpy.arange(FRAME_SAMPLES, dtype=numpy.uint32)
_RAMP = numpy.arange(1, FRAME_SAMPLES + 1) / FRAME_SAMPLES     # 1/160 ... 1: ends on the target


def _per_frame(seconds):
    """The factor that decays a level with time constant ``seconds`` over one frame."""
    return math.exp(-FRAME_SECONDS / seconds)


SUSTAIN_LEVEL = 0.4
_DECAY = _per_frame(0.8)                 # towards SUSTAIN_LEVEL while held
_BRIGHTNESS_DECAY = _per_frame(0.35)     # the overtones fade faster than the note
_BRIGHTNESS_FLOOR = 0.25
_RELEASE = _per_frame(0.04)
_INAUDIBLE = 1e-3                        # a released voice below this stops (-60 dB)

_MASTER = 0.26                           # one voice at velocity 127 peaks near -10 dBFS
_LIMIT = 0.7                             # the limiter's gain keeps peaks to this
_GAIN_RECOVERY = _per_frame(0.15)
_KNEE = 0.8                              # and its soft clip is linear below this
_FULL_SCALE = 32767

_ATTACK, _HOLD, _RELEASING, _FADING = range(4)

_CC_ALL_SOUND_OFF = 120
_CC_RESET_CONTROLLERS = 121
_CC_ALL_NOTES_OFF = 123                  # 124-127 (omni and mono/poly modes) imply it too


def note_frequency(note):
    """Equal temperament, A4 (note 69) = 440 Hz."""
    return 440.0 * 2.0 ** ((note - 69) / 12)


class _Voice:
    __slots__ = ("key", "increment", "phase", "overtone_row", "gain", "level", "brightness",
                 "stage", "held", "sustained", "started", "last_fundamental", "last_overtones")

    def __init__(self, key, frequency, gain, started):
        self.key = key                   # (channel, note)
        self.increment = round(frequency / SAMPLE_RATE * 2 ** 32) & 0xFFFFFFFF
        self.phase = 0
        overtones = 0
        while (overtones + 1 < len(_HARMONICS)
               and (overtones + 2) * frequency <= HIGHEST_PARTIAL):
            overtones += 1
        self.overtone_row = (overtones + 1) * _TABLE_SIZE
        self.gain = gain
        self.level = 0.0
        self.brightness = 1.0
        self.stage = _ATTACK
        self.held = True
        self.sustained = False
        self.started = started           # frame number: the oldest voice is stolen first
        # Amplitudes the previous frame ended on: every ramp starts from them.
        self.last_fundamental = 0.0
        self.last_overtones = 0.0

    def advance(self):
        """Move the envelope on by one frame; False once the voice has finished."""
        stage = self.stage
        if stage == _ATTACK:
            self.level = 1.0
            # A key let go before its first frame still sounds: attack, then release.
            self.stage = _HOLD if self.held or self.sustained else _RELEASING
        elif stage == _HOLD:
            self.level = SUSTAIN_LEVEL + (self.level - SUSTAIN_LEVEL) * _DECAY
            self.brightness = (_BRIGHTNESS_FLOOR
                               + (self.brightness - _BRIGHTNESS_FLOOR) * _BRIGHTNESS_DECAY)
        elif stage == _RELEASING:
            if self.level < _INAUDIBLE:
                if self.level == 0.0:
                    return False
                self.level = 0.0
            else:
                self.level *= _RELEASE
        else:                            # _FADING: silent by the end of this frame
            if self.level == 0.0 and self.last_fundamental == 0.0:
                return False
            self.level = 0.0
        return True


class Synthesizer:
    """Session MIDI in, 20 ms frames of 8 kHz audio out.

    :meth:`play` takes MIDI messages (bytes); :meth:`render` gives the next
    frame as int16 samples, :meth:`render_payload` as G.711 octets.
    ``percussion_channel`` (0-based, 9 = MIDI channel 10 by default; None
    plays it) is not played: drum notes would be random pitches.
    """

    def __init__(self, max_voices=16, percussion_channel=9):
        if max_voices < 1:
            raise ValueError(f"max_voices must be at least 1, got {max_voices}")
        self.max_voices = max_voices
        self.percussion_channel = percussion_channel
        self.voices = []                 # sounding, releasing and fading, oldest first
        self.pedal_down = [False] * 16
        self.frames = 0
        self.stolen = 0                  # voices taken for a new note (counted)
        self.rendered_voices = 0         # voices in the last frame rendered
        self.peak_voices = 0
        self._limit = _Limiter()
        self._silent = {}

    # MIDI -------------------------------------------------------------------
    def play(self, data):
        """Apply one MIDI message; it sounds from the next frame on."""
        status = data[0]
        if status >= 0xF0:
            if status == 0xFF:           # System Reset
                self.all_sound_off()
            return
        kind = status & 0xF0
        channel = status & 0x0F
        if kind == NOTE_ON and len(data) >= 3:
            if data[2]:
                self.note_on(channel, data[1], data[2])
            else:
                self.note_off(channel, data[1])
        elif kind == NOTE_OFF and len(data) >= 3:
            self.note_off(channel, data[1])
        elif kind == CONTROL_CHANGE and len(data) >= 3:
            controller, value = data[1], data[2]
            if controller == CC_SUSTAIN:
                self.sustain(channel, value >= 64)
            elif controller == _CC_ALL_SOUND_OFF:
                self.all_sound_off(channel)
            elif controller == _CC_RESET_CONTROLLERS:
                self.sustain(channel, False)
            elif controller >= _CC_ALL_NOTES_OFF:
                self.all_notes_off(channel)

    def note_on(self, channel, note, velocity):
        if channel == self.percussion_channel:
            return
        key = (channel, note)
        gain = _MASTER * (velocity / 127) ** 2
        for voice in self.voices:
            if voice.key == key and voice.stage != _FADING:
                # Struck again: the same voice swells back from where it is, no new voice.
                voice.gain = gain
                voice.brightness = 1.0
                voice.stage = _ATTACK
                voice.held = True
                voice.sustained = False
                voice.started = self.frames
                return
        if sum(voice.stage != _FADING for voice in self.voices) >= self.max_voices:
            self._steal()
        frequency = note_frequency(note)
        while frequency > HIGHEST_PARTIAL:
            frequency /= 2
        self.voices.append(_Voice(key, frequency, gain, self.frames))

    def _steal(self):
        candidates = [voice for voice in self.voices if voice.stage != _FADING]
        releasing = [voice for voice in candidates if voice.stage == _RELEASING]
        if releasing:
            victim = min(releasing, key=lambda voice: voice.level)
        else:
            victim = min(candidates, key=lambda voice: voice.started)
        self.stolen += 1
        if victim.last_fundamental == 0.0:
            self.voices.remove(victim)   # never sounded: nothing to fade
        else:
            victim.stage = _FADING

    def note_off(self, channel, note):
        key = (channel, note)
        for voice in self.voices:
            if voice.key == key and voice.held:
                voice.held = False
                if self.pedal_down[channel]:
                    voice.sustained = True
                elif voice.stage == _HOLD:
                    voice.stage = _RELEASING

    def sustain(self, channel, down):
        self.pedal_down[channel] = down
        if down:
            return
        for voice in self.voices:
            if voice.key[0] == channel and voice.sustained:
                voice.sustained = False
                if voice.stage == _HOLD:
                    voice.stage = _RELEASING

    def all_notes_off(self, channel):
        """Every key on ``channel`` let go (the sustain pedal still holds them)."""
        for voice in self.voices:
            if voice.key[0] == channel and voice.held:
                self.note_off(channel, voice.key[1])

    def all_sound_off(self, channel=None):
        """Silence ``channel`` (None: all) within one frame, pedal or not."""
        for voice in self.voices:
            if channel is None or voice.key[0] == channel:
                voice.held = voice.sustained = False
                voice.stage = _FADING

    @property
    def sounding(self):
        """Voices that are neither releasing nor fading (held or sustained keys)."""
        return sum(voice.stage in (_ATTACK, _HOLD) for voice in self.voices)

    # Audio ------------------------------------------------------------------
    def next_voices(self):
        """Start a frame: the voices that sound in it (finished ones are let go), counted."""
        self.frames += 1
        voices = self.voices
        finished = [voice for voice in voices if not voice.advance()]
        for voice in finished:
            voices.remove(voice)
        count = len(voices)
        self.rendered_voices = count
        if count > self.peak_voices:
            self.peak_voices = count
        return voices

    def render(self):
        """The next frame: FRAME_SAMPLES int16 samples (a numpy array)."""
        voices = self.next_voices()
        count = len(voices)
        if not count:
            return numpy.zeros(FRAME_SAMPLES, dtype=numpy.int16)
        # Rows 0 ... count-1 are the fundamentals, count ... 2*count-1 the overtones.
        # Plain lists, then one array each: cheaper than numpy's item assignment.
        starts = [voice.last_fundamental for voice in voices]
        starts += [voice.last_overtones for voice in voices]
        ends = []
        overtone_ends = []
        phases = []
        for voice in voices:
            fundamental = voice.level * voice.gain
            overtones = fundamental * voice.brightness
            ends.append(fundamental)
            overtone_ends.append(overtones)
            voice.last_fundamental = fundamental
            voice.last_overtones = overtones
            phase = voice.phase
            phases.append(phase)
            voice.phase = (phase + voice.increment * FRAME_SAMPLES) & 0xFFFFFFFF
        starts = numpy.array(starts)
        ends = numpy.array(ends + overtone_ends)
        phases = numpy.array(phases, dtype=numpy.uint32)
        increments = numpy.array([voice.increment for voice in voices], dtype=numpy.uint32)
        rows = numpy.array([voice.overtone_row for voice in voices], dtype=numpy.uint32)
        # uint32 arithmetic wraps like the phase itself.
        positions = (phases[:, None] + increments[:, None] * _SAMPLE_OFFSETS) >> _PHASE_SHIFT
        indices = numpy.concatenate((positions, positions + rows[:, None]))
        envelopes = starts[:, None] + (ends - starts)[:, None] * _RAMP
        mix = numpy.einsum("ij,ij->j", envelopes, _WAVES.take(indices))
        return self._limit(mix)

    def render_payload(self, payload_type):
        """The next frame as G.711 octets; a silent frame costs a lookup."""
        if not self.voices:
            self.frames += 1
            self.rendered_voices = 0
            silent = self._silent.get(payload_type)
            if silent is None:
                silent = self._silent[payload_type] = silence(payload_type)
            return silent
        return _ENCODE_TABLES[payload_type].take(self.render().view(numpy.uint16)).tobytes()

    def skip(self, frames):
        """Let ``frames`` frames pass unrendered (the sender fell behind and dropped them)."""
        # After a second every release has ended and every decay has settled.
        for _ in range(min(frames, 50)):
            self.frames += 1
            self.voices = [voice for voice in self.voices if voice.advance()]
            for voice in self.voices:
                voice.last_fundamental = voice.level * voice.gain
                voice.last_overtones = voice.last_fundamental * voice.brightness
        self.frames += max(frames - 50, 0)
        # Silence went out for these frames: the voices come back in from it.
        for voice in self.voices:
            voice.last_fundamental = voice.last_overtones = 0.0


_WAVES32 = _WAVES.astype(numpy.float32)
_RAMP32 = _RAMP.astype(numpy.float32)


def render_many(synthesizers):
    """The next frame of each of ``synthesizers`` as the rows of one int16 array.

    What :meth:`Synthesizer.render` gives for each, but with numpy's work done once
    for every voice of every synthesizer: a frame's array operations cost the same
    few microseconds for 2 voices as for 200, so a gateway that renders all its
    phone calls' frames on one tick (the SIP door's pacer) pays them once per tick
    rather than once per call. Sums may differ from :meth:`Synthesizer.render`'s in
    their last bit (a sample by one step, rarely).
    """
    starts = []
    ends = []
    phases = []
    increments = []
    rows = []
    segments = []                    # first row of each synthesizer that sounds
    sounding = []                    # their indices in ``synthesizers``
    row = 0
    for index, synthesizer in enumerate(synthesizers):
        voices = synthesizer.next_voices()
        count = len(voices)
        if not count:
            continue
        segments.append(row)
        sounding.append(index)
        row += 2 * count
        for voice in voices:
            fundamental = voice.level * voice.gain
            overtones = fundamental * voice.brightness
            starts.append(voice.last_fundamental)
            starts.append(voice.last_overtones)
            ends.append(fundamental)
            ends.append(overtones)
            voice.last_fundamental = fundamental
            voice.last_overtones = overtones
            phase = voice.phase
            phases.append(phase)
            increments.append(voice.increment)
            rows.append(voice.overtone_row)
            voice.phase = (phase + voice.increment * FRAME_SAMPLES) & 0xFFFFFFFF
    frames = numpy.zeros((len(synthesizers), FRAME_SAMPLES), dtype=numpy.int16)
    if not sounding:
        return frames
    phases = numpy.array(phases, dtype=numpy.uint32)
    increments = numpy.array(increments, dtype=numpy.uint32)
    positions = (phases[:, None] + increments[:, None] * _SAMPLE_OFFSETS) >> _PHASE_SHIFT
    indices = numpy.empty((2 * len(positions), FRAME_SAMPLES), dtype=numpy.uint32)
    indices[0::2] = positions                                  # fundamentals
    indices[1::2] = positions + numpy.array(rows, dtype=numpy.uint32)[:, None]
    # float32: half the memory traffic of float64, and its 24 bits are far finer
    # than G.711's 14.
    starts = numpy.array(starts, dtype=numpy.float32)
    envelopes = (numpy.array(ends, dtype=numpy.float32) - starts)[:, None] * _RAMP32
    envelopes += starts[:, None]
    envelopes *= _WAVES32.take(indices)
    mix = numpy.add.reduceat(envelopes, segments, axis=0, dtype=numpy.float64)
    limiters = [synthesizers[index]._limit for index in sounding]
    frames[sounding] = _limit_many(mix, limiters)
    return frames


def _limit_many(mix, limiters):
    """:class:`_Limiter` for each row of ``mix`` with its own limiter; int16 rows."""
    gains = numpy.array([limiter.gain for limiter in limiters])
    peaks = numpy.abs(mix).max(axis=1)
    wanted = numpy.where(peaks > _LIMIT, _LIMIT / numpy.maximum(peaks, _LIMIT), 1.0)
    recovered = numpy.minimum(wanted, 1.0 - (1.0 - gains) * _GAIN_RECOVERY)
    targets = numpy.where(wanted < gains, wanted, recovered)
    for limiter, target in zip(limiters, targets.tolist()):
        limiter.gain = target
    mix *= gains[:, None] + (targets - gains)[:, None] * _RAMP
    magnitude = numpy.abs(mix)
    over = magnitude > _KNEE
    if over.any():
        headroom = 1.0 - _KNEE
        bent = _KNEE + headroom * numpy.tanh((magnitude[over] - _KNEE) / headroom)
        mix[over] = numpy.copysign(bent, mix[over])
    return (mix * _FULL_SCALE).astype(numpy.int16)


def encode_many(frames, payload_types):
    """G.711 octets (bytes) of each int16 row of ``frames``, each in its payload type."""
    if all(payload_type == PCMU for payload_type in payload_types):
        data = _ULAW_ENCODE.take(frames.view(numpy.uint16)).tobytes()
    else:
        encoded = _ULAW_ENCODE.take(frames.view(numpy.uint16))
        for index, payload_type in enumerate(payload_types):
            if payload_type != PCMU:
                encoded[index] = _ENCODE_TABLES[payload_type].take(frames[index].view(
                    numpy.uint16))
        data = encoded.tobytes()
    return [data[start:start + FRAME_SAMPLES]
            for start in range(0, len(data), FRAME_SAMPLES)]


class _Limiter:
    """Keeps the mix under full scale: a gain that follows its peaks, then a soft clip.

    The gain needed to bring a frame's peak down to _LIMIT is reached by the
    end of that frame (the whole frame is known before it is sent: a frame of
    look-ahead) and recovers towards 1 with a 150 ms time constant, so a dense
    chord is made quieter rather than distorted. What the ramp from the
    previous gain still lets over _KNEE is bent smoothly towards full scale
    (tanh), never wrapped or clipped hard.
    """

    __slots__ = ("gain",)

    def __init__(self):
        self.gain = 1.0

    def __call__(self, mix):
        """int16 samples of ``mix`` (full scale 1.0); changes ``mix``."""
        gain = self.gain
        peak = float(numpy.abs(mix).max())
        wanted = _LIMIT / peak if peak > _LIMIT else 1.0
        if wanted < gain:
            target = wanted
        else:
            target = min(wanted, 1.0 - (1.0 - gain) * _GAIN_RECOVERY)
        self.gain = target
        if gain != 1.0 or target != 1.0:
            mix *= gain + (target - gain) * _RAMP
        magnitude = numpy.abs(mix)
        over = magnitude > _KNEE
        if over.any():
            headroom = 1.0 - _KNEE
            bent = _KNEE + headroom * numpy.tanh((magnitude[over] - _KNEE) / headroom)
            mix[over] = numpy.copysign(bent, mix[over])
        return (mix * _FULL_SCALE).astype(numpy.int16)
