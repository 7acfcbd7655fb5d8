"""MIDI beat clock for a session tempo (sans-IO).

# implements MIDI 1.0 Detailed Specification 4.2, "System Real Time Messages": Timing Clock
#   (F8, 24 per quarter note), Start (FA), Continue (FB), Stop (FC)
# implements MIDI 1.0 Detailed Specification 4.2, "System Common Messages": Song Position
#   Pointer (F2, 14 bits, in MIDI beats of 6 clocks = sixteenth notes)

:class:`BeatClock` says which clock messages are due at a given time; it never
reads a clock and never waits. The Twisted side (:mod:`gateway.bus.tempo`) asks
it :meth:`~BeatClock.next_due`, sleeps until then and calls
:meth:`~BeatClock.advance` with the time it woke.

Drift-free: clock ``n`` is due at ``anchor_time + (n - anchor_position) *
interval``, computed from the anchor every time, never by adding intervals or
the delays the caller actually slept. A tempo change re-anchors at the clock
last sent, so the next clock comes one new interval after it: the phase is
continuous, no clock is doubled or lost.

Late callers: up to :data:`MAX_CATCH_UP` clocks owed are sent at once, each
with its own due time (a receiver that honours times, such as RTP-MIDI's delta
times, spaces them again). Followers count clocks to know where the song is,
so a clock left out would put them behind for good. Owing more than that
(the process stalled for a beat or more) a burst would flood every door and
still land late; instead followers are relocated to the grid: Stop, Song
Position Pointer at the next sixteenth not yet due, Continue, and the clock
resumes at that sixteenth on the unchanged grid.

Song position: the number of clocks since Start is :attr:`BeatClock.position`.
The Song Position Pointer counts sixteenths in 14 bits (1024 bars of 4/4); a
longer jam sends it modulo 16384, which still lands on the same beat of the bar.
"""

import math

TIMING_CLOCK = 0xF8
START = 0xFA
CONTINUE = 0xFB
STOP = 0xFC
SONG_POSITION = 0xF2
BEAT_CLOCK_STATUSES = frozenset((TIMING_CLOCK, START, CONTINUE, STOP, SONG_POSITION))

CLOCKS_PER_QUARTER = 24
CLOCKS_PER_SIXTEENTH = 6           # one "MIDI beat", the unit of the Song Position Pointer
SONG_POSITION_MODULUS = 1 << 14
MIN_BPM = 20.0
MAX_BPM = 300.0
MAX_CATCH_UP = CLOCKS_PER_QUARTER

_CLOCK = bytes((TIMING_CLOCK,))
_START = bytes((START,))
_CONTINUE = bytes((CONTINUE,))
_STOP = bytes((STOP,))
# A time that lands on a clock's due time up to float rounding counts as due.
_EPSILON = 1e-9


def song_position_pointer(sixteenths):
    """The F2 message for a position in sixteenths (kept modulo 16384)."""
    sixteenths %= SONG_POSITION_MODULUS
    return bytes((SONG_POSITION, sixteenths & 0x7F, sixteenths >> 7))


def check_bpm(bpm):
    """``bpm`` as a float, or ValueError naming the bounds."""
    if type(bpm) not in (int, float) or not (MIN_BPM <= bpm <= MAX_BPM):
        raise ValueError(f"bpm must be a number from {MIN_BPM:g} to {MAX_BPM:g}")
    return float(bpm)


class BeatClock:
    """The clock of one session: tempo, running or not, and where the song is.

    Every method that sends returns a list of ``(time, message bytes)`` in
    order; times are on the caller's (monotonic) clock.
    """

    def __init__(self, bpm, beats_per_bar=4):
        self.bpm = check_bpm(bpm)
        self.beats_per_bar = beats_per_bar
        self.running = False
        self.position = 0              # the index of the next clock to send, counted from Start
        self.relocations = 0           # times a stall made it relocate followers
        self.clocks_skipped = 0        # clocks those relocations left out
        self._anchor_time = None       # the due time of clock _anchor_position
        self._anchor_position = 0

    @property
    def interval(self):
        """Seconds between two clocks."""
        return 60.0 / (self.bpm * CLOCKS_PER_QUARTER)

    def time_of(self, position):
        """When clock ``position`` is (or was) due on the current grid; None when stopped."""
        if not self.running:
            return None
        return self._anchor_time + (position - self._anchor_position) * self.interval

    def next_due(self):
        """When the next clock is due, None while stopped."""
        return self.time_of(self.position)

    def next_beat(self):
        """``(beat, time)``: the next quarter note not yet clocked and when it is due;
        ``(beat, None)`` while stopped (the beat the song stands at or just past)."""
        beat = -(-self.position // CLOCKS_PER_QUARTER)
        return beat, self.time_of(beat * CLOCKS_PER_QUARTER)

    def start(self, now):
        """Start the song from its beginning: FA now, and clock 0 due now."""
        self.position = 0
        self._run_from(now)
        return [(now, _START)]

    def stop(self, now):
        """Stop where the song is (the clocks sent so far)."""
        if not self.running:
            return []
        self.running = False
        return [(now, _STOP)]

    def resume(self, now):
        """Continue from where the song stopped: Song Position Pointer and FB now, the
        next clock due now.

        The pointer makes Continue whole for a follower that joined while the song
        was stopped (it never counted the clocks before). It counts sixteenths, so a
        song stopped inside one continues from the next.
        """
        if self.running:
            return []
        sixteenth = -(-self.position // CLOCKS_PER_SIXTEENTH)
        self.position = sixteenth * CLOCKS_PER_SIXTEENTH
        self._run_from(now)
        return [(now, song_position_pointer(sixteenth)), (now, _CONTINUE)]

    def locate(self, sixteenths, now):
        """Move a stopped song to ``sixteenths`` (Song Position Pointer); ValueError if running."""
        if self.running:
            raise ValueError("the song position can move only while stopped")
        if not 0 <= sixteenths < SONG_POSITION_MODULUS:
            raise ValueError(f"a song position is 0 to {SONG_POSITION_MODULUS - 1} sixteenths")
        self.position = sixteenths * CLOCKS_PER_SIXTEENTH
        return [(now, song_position_pointer(sixteenths))]

    def set_bpm(self, bpm, now):
        """Change the tempo; the next clock comes one new interval after the last one sent."""
        bpm = check_bpm(bpm)
        if self.running and self.position > self._anchor_position:
            last = self.position - 1
            self._anchor_time = self.time_of(last)
            self._anchor_position = last
        self.bpm = bpm
        return []

    def advance(self, now):
        """The messages due by ``now``: the clocks owed, or a relocation after a stall."""
        if not self.running:
            return []
        interval = self.interval
        anchor_time, anchor_position = self._anchor_time, self._anchor_position
        due_until = anchor_position + math.floor((now - anchor_time) / interval + _EPSILON)
        owed = due_until - self.position + 1
        if owed <= 0:
            return []
        if owed <= MAX_CATCH_UP:
            first = self.position
            self.position = due_until + 1
            return [(anchor_time + (index - anchor_position) * interval, _CLOCK)
                    for index in range(first, due_until + 1)]
        resume_at = -(-(due_until + 1) // CLOCKS_PER_SIXTEENTH) * CLOCKS_PER_SIXTEENTH
        self.relocations += 1
        self.clocks_skipped += resume_at - self.position
        self.position = resume_at
        return [(now, _STOP),
                (now, song_position_pointer(resume_at // CLOCKS_PER_SIXTEENTH)),
                (now, _CONTINUE)]

    def _run_from(self, now):
        self.running = True
        self._anchor_time = now
        self._anchor_position = self.position
