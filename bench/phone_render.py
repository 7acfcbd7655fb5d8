"""CPU per phone call: the session's MIDI rendered to 20 ms G.711 frames, 50 a second.

Issue 11's goal: at most 1% of one core per call, at least 100 calls on one
core (siprtmp's published anchor: about 3.1% of a 2.13 GHz core per Speex
call). What a call costs the gateway per frame is :meth:`PhoneCall.tick
<gateway.protocols.sip.phone.PhoneCall.tick>`: the frame clock, the
synthesizer, G.711 and the RTP header; this measures it in one process on a
fake clock, for calls playing 0, 1, 4 and 16 notes at once (held, every
voice sounding), and next to it, in the same run, a trivial baseline: a
sender that only G.711-encodes a silent frame and puts an RTP header on it.

Printed per case: the median over ``--runs`` runs of CPU microseconds per
frame, the percentage of one core a call takes at 50 frames/s, and the
number of such calls one core could carry (all of its time on frames).

``--compare`` also measures the same synthesizer and G.711 written in pure
Python (the alternative to numpy, see gateway/protocols/sip/phone_audio.py),
per frame rendered and encoded, 0, 4 and 16 voices.

``--realtime CALLS`` then runs CALLS calls of ``--voices`` notes for
``--seconds`` on the real clock, one process, ticking every call each 20 ms
as the SIP door's LoopingCall would, and reports late and skipped frames
(FrameClock's counters) and the CPU the process used.

Run: .venv/bin/python bench/phone_render.py [--compare] [--realtime 100]
"""

import argparse
import math
import os
import statistics
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy  # noqa: E402

from gateway.midi import MidiEvent, note_on  # noqa: E402
from gateway.protocols.sip import phone_audio  # noqa: E402
from gateway.protocols.sip.phone import PhoneCall  # noqa: E402
from gateway.protocols.sip.phone_audio import (  # noqa: E402
    FRAME_SAMPLES, FRAME_SECONDS, PCMU, Synthesizer,
)

FRAMES_PER_SECOND = round(1 / FRAME_SECONDS)
START = 1_800_000_000.0
# A chord that spreads over the keyboard: bass to treble, every voice sounding.
NOTES = [36 + 5 * index for index in range(16)]


def chord(voices):
    return [MidiEvent(note_on(0, note, 100)) for note in NOTES[:voices]]


def time_call(voices, frames):
    """CPU seconds per frame of one PhoneCall holding ``voices`` notes."""
    call = PhoneCall(START, ssrc=0x1234, sequence=1, timestamp=0)
    call.play(chord(voices))
    for frame in range(5):
        call.tick(START + frame * FRAME_SECONDS)
    tick = call.tick
    times = [START + (frame + 5) * FRAME_SECONDS for frame in range(frames)]
    begin = time.process_time()
    for now in times:
        tick(now)
    elapsed = time.process_time() - begin
    if call.clock.late or call.clock.skipped:
        raise RuntimeError("the fake clock made frames late")
    return elapsed / frames


def time_baseline(frames):
    """CPU seconds per frame of the least a G.711 sender does: encode silence, add a header."""
    header = struct.Struct("!BBHII")
    samples = numpy.zeros(FRAME_SAMPLES, dtype=numpy.int16)
    encode = phone_audio.encode
    begin = time.process_time()
    for frame in range(frames):
        header.pack(0x80, PCMU, frame & 0xFFFF, frame * FRAME_SAMPLES, 0x1234) + encode(
            samples, PCMU)
    return (time.process_time() - begin) / frames


def report(label, seconds_per_frame, baseline=None):
    per_frame = seconds_per_frame * 1e6
    core = seconds_per_frame * FRAMES_PER_SECOND * 100
    calls = 1 / (seconds_per_frame * FRAMES_PER_SECOND) if seconds_per_frame else math.inf
    ratio = f"  {seconds_per_frame / baseline:6.1f}x baseline" if baseline else ""
    print(f"{label:<28} {per_frame:9.1f} µs/frame  {core:6.2f}% of a core per call"
          f"  {calls:9,.0f} calls per core{ratio}", flush=True)


def median_of(runs, measure):
    return statistics.median(measure() for _ in range(runs))


# Pure Python, for --compare: the same algorithm without numpy ------------------
_WAVES = phone_audio._WAVES.tolist()
_ULAW = bytes(phone_audio._ULAW_ENCODE.tolist())
_SHIFT = phone_audio._PHASE_SHIFT
_KNEE = phone_audio._KNEE
_HEADROOM = 1 - _KNEE
_FULL_SCALE = phone_audio._FULL_SCALE


class PurePythonSynthesizer(Synthesizer):
    """Synthesizer.render in lists and floats: what the module would be without numpy."""

    def render(self):
        self.frames += 1
        self.voices = voices = [voice for voice in self.voices if voice.advance()]
        mix = [0.0] * FRAME_SAMPLES
        waves = _WAVES
        for voice in voices:
            fundamental = voice.last_fundamental
            overtones = voice.last_overtones
            target = voice.level * voice.gain
            voice.last_fundamental = target
            voice.last_overtones = target * voice.brightness
            fundamental_step = (target - fundamental) / FRAME_SAMPLES
            overtone_step = (voice.last_overtones - overtones) / FRAME_SAMPLES
            phase = voice.phase
            increment = voice.increment
            row = voice.overtone_row
            for sample in range(FRAME_SAMPLES):
                position = phase >> _SHIFT
                phase = (phase + increment) & 0xFFFFFFFF
                fundamental += fundamental_step
                overtones += overtone_step
                mix[sample] += fundamental * waves[position] + overtones * waves[row + position]
            voice.phase = phase
        out = []
        for value in mix:
            magnitude = abs(value)
            if magnitude > _KNEE:
                value = math.copysign(
                    _KNEE + _HEADROOM * math.tanh((magnitude - _KNEE) / _HEADROOM), value)
            out.append(int(value * _FULL_SCALE))
        return out

    def render_payload(self, payload_type):
        if not self.voices:
            return super().render_payload(payload_type)
        table = _ULAW
        return bytes([table[sample & 0xFFFF] for sample in self.render()])


def time_synthesizer(factory, voices, frames):
    synthesizer = factory()
    for note in NOTES[:voices]:
        synthesizer.note_on(0, note, 100)
    for _ in range(5):
        synthesizer.render_payload(PCMU)
    render = synthesizer.render_payload
    begin = time.process_time()
    for _ in range(frames):
        render(PCMU)
    return (time.process_time() - begin) / frames


def compare(runs):
    print("\nper frame rendered and μ-law encoded (medians):")
    for voices in (0, 4, 16):
        with_numpy = median_of(runs, lambda: time_synthesizer(Synthesizer, voices, 1000))
        pure = median_of(runs, lambda: time_synthesizer(PurePythonSynthesizer, voices, 100))
        print(f"  {voices:2} voices: numpy {with_numpy * 1e6:8.1f} µs, pure Python"
              f" {pure * 1e6:8.1f} µs ({pure / with_numpy if with_numpy else math.nan:5.1f}x)",
              flush=True)


# --realtime -------------------------------------------------------------------
def realtime(calls, voices, seconds):
    start = time.monotonic() + 0.1
    phones = [PhoneCall(start, ssrc=index, sequence=index, timestamp=0) for index in range(calls)]
    for phone in phones:
        phone.play(chord(voices))
    cpu_before = time.process_time()
    wall_before = time.monotonic()
    deadline = start + seconds
    sent = 0
    wake_ups = []                        # how late the loop woke, s: the host's share
    rounds = []                          # how long ticking every call took, s: ours
    while True:
        due = phones[0].clock.next_due()
        if due > deadline:
            break
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        now = time.monotonic()
        for phone in phones:
            sent += len(phone.tick(now).packets)
        wake_ups.append(now - due)
        rounds.append(time.monotonic() - now)
    cpu = time.process_time() - cpu_before
    wall = time.monotonic() - wall_before
    late = sum(phone.clock.late for phone in phones)
    skipped = sum(phone.clock.skipped for phone in phones)
    wake_ups.sort()
    rounds.sort()

    def spread(values):
        return (f"p50 {values[len(values) // 2] * 1e3:.2f} ms, p99"
                f" {values[int(len(values) * 0.99)] * 1e3:.2f} ms, max {values[-1] * 1e3:.2f} ms")

    print(f"\nrealtime: {calls} calls x {voices} voices for {wall:.1f} s: {sent:,} frames sent,"
          f" {late} late, {skipped} skipped; the process used {cpu / wall * 100:.1f}% of a core"
          f" ({cpu / wall * 100 / calls:.3f}% per call)\n"
          f"  ticking all calls took {spread(rounds)} of each 20 ms;"
          f" the loop woke after the due time by {spread(wake_ups)}"
          f" (load average {os.getloadavg()[0]:.1f}: other processes share these cores)",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="medians over this many runs")
    parser.add_argument("--frames", type=int, default=1500,
                        help="frames per run (1500 = 30 s of a call)")
    parser.add_argument("--compare", action="store_true",
                        help="also measure the synthesizer in pure Python")
    parser.add_argument("--realtime", type=int, metavar="CALLS",
                        help="then run this many calls on the real clock")
    parser.add_argument("--voices", type=int, default=16, help="notes per call for --realtime")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of --realtime")
    parser.add_argument("--cpu", type=int, default=0,
                        help="the one core to run on (the servers' core in the other benchmarks)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})       # one core, as the goal says
    print(f"Python {sys.version.split()[0]}, numpy {numpy.__version__}; medians of {args.runs}"
          f" runs of {args.frames} frames (50 frames/s per call)")
    baseline = median_of(args.runs, lambda: time_baseline(args.frames))
    report("baseline (encode silence)", baseline)
    for voices in (0, 1, 4, 16):
        report(f"PhoneCall.tick, {voices:2} voices",
               median_of(args.runs, lambda: time_call(voices, args.frames)), baseline)
    if args.compare:
        compare(max(3, args.runs // 2))
    if args.realtime:
        realtime(args.realtime, args.voices, args.seconds)


if __name__ == "__main__":
    main()
