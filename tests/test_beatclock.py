"""The beat clock core (gateway.beatclock) with explicit times: no reactor, no sleeping."""

import pytest

from gateway import beatclock
from gateway.beatclock import BeatClock

CLOCK, START, CONTINUE, STOP = b"\xf8", b"\xfa", b"\xfb", b"\xfc"
T0 = 1000.0


def started(bpm=120.0, at=T0):
    clock = BeatClock(bpm)
    assert clock.start(at) == [(at, START)]
    return clock


def clock_times(messages):
    assert all(data == CLOCK for _, data in messages), messages
    return [time for time, _ in messages]


def test_120_bpm_is_24_clocks_per_half_second_on_the_grid():
    clock = started(120.0)
    assert clock.interval == pytest.approx(0.5 / 24)
    sent = clock_times(clock.advance(T0 + 0.5 - 1e-6))
    assert len(sent) == 24
    assert sent == pytest.approx([T0 + n * 0.5 / 24 for n in range(24)], abs=1e-9)
    assert clock.next_due() == pytest.approx(T0 + 0.5)
    assert clock.next_beat() == (1, pytest.approx(T0 + 0.5))


def test_each_clock_once_when_woken_on_time_or_late_within_a_beat():
    clock = started(100.0)
    interval = clock.interval
    times = []
    for n in range(2400):
        # Wake a little late, by a varying amount below one interval (a busy reactor).
        times += clock_times(clock.advance(T0 + n * interval + (n % 7) * interval / 8))
    assert len(times) == len(set(times))
    assert times[:5] == pytest.approx([T0 + n * interval for n in range(5)])
    # Drift-free: clock 2000 is due exactly where the grid says, however the
    # wake-ups fell (accumulating sleeps would be off by the sum of the delays).
    assert times[2000] == pytest.approx(T0 + 2000 * interval, abs=1e-9)
    assert clock.position == len(times)


def test_nothing_due_before_the_next_clock():
    clock = started()
    clock.advance(T0)
    assert clock.advance(T0 + clock.interval * 0.99) == []
    assert len(clock.advance(T0 + clock.interval)) == 1


def test_a_late_wake_sends_the_clocks_owed_with_their_own_times():
    clock = started(120.0)
    clock.advance(T0)
    interval = clock.interval
    # 10 clocks late: they all go now, each stamped with when it was due.
    late = clock.advance(T0 + 10.5 * interval)
    assert clock_times(late) == pytest.approx([T0 + n * interval for n in range(1, 11)])
    assert clock.next_due() == pytest.approx(T0 + 11 * interval)
    assert clock.relocations == 0


def test_a_stall_longer_than_a_beat_relocates_followers_to_the_next_sixteenth():
    clock = started(120.0)
    clock.advance(T0)
    interval = clock.interval
    now = T0 + 40.5 * interval          # clocks 1..40 owed: more than a beat
    assert clock.advance(now) == [(now, STOP), (now, bytes((0xF2, 7, 0))), (now, CONTINUE)]
    # Sixteenth 7 is clock 42: the grid has not moved.
    assert clock.position == 42
    assert clock.next_due() == pytest.approx(T0 + 42 * interval)
    assert clock.relocations == 1 and clock.clocks_skipped == 41
    assert clock_times(clock.advance(T0 + 42 * interval)) == pytest.approx([T0 + 42 * interval])


def test_tempo_change_keeps_the_phase_from_the_last_clock_sent():
    clock = started(120.0)
    old = clock.interval
    clock.advance(T0 + 5 * old)           # clocks 0..5 sent
    clock.set_bpm(60.0, T0 + 5.5 * old)
    new = clock.interval
    assert new == pytest.approx(2 * old)
    assert clock.next_due() == pytest.approx(T0 + 5 * old + new)
    sent = clock_times(clock.advance(T0 + 5 * old + 3 * new))
    assert sent == pytest.approx([T0 + 5 * old + k * new for k in (1, 2, 3)])


def test_tempo_change_before_the_first_clock_keeps_the_start_time():
    clock = started(120.0)
    clock.set_bpm(60.0, T0)
    assert clock_times(clock.advance(T0 + 0.5)) == pytest.approx(
        [T0 + n / 24 for n in range(13)])


def test_stop_and_continue_keep_the_song_position():
    clock = started(120.0)
    interval = clock.interval
    clock.advance(T0 + 29 * interval)     # 30 clocks
    assert clock.stop(T0 + 29.5 * interval) == [(T0 + 29.5 * interval, STOP)]
    assert clock.stop(T0 + 30 * interval) == []
    assert clock.advance(T0 + 100) == [] and clock.next_due() is None
    assert clock.next_beat() == (2, None)
    assert clock.resume(T0 + 200) == [(T0 + 200, bytes((0xF2, 5, 0))), (T0 + 200, CONTINUE)]
    assert clock_times(clock.advance(T0 + 200)) == [T0 + 200]
    assert clock.position == 31


def test_continue_inside_a_sixteenth_goes_on_from_the_next():
    clock = started(120.0)
    clock.advance(T0 + 7 * clock.interval)          # clocks 0..7: inside sixteenth 1
    clock.stop(T0 + 1.0)
    assert clock.resume(T0 + 2.0) == [(T0 + 2.0, bytes((0xF2, 2, 0))), (T0 + 2.0, CONTINUE)]
    assert clock.position == 12


def test_start_after_stop_begins_the_song_again():
    clock = started(120.0)
    clock.advance(T0 + 1.0)
    clock.stop(T0 + 1.0)
    assert clock.start(T0 + 5.0) == [(T0 + 5.0, START)]
    assert clock.position == 0
    assert clock_times(clock.advance(T0 + 5.0)) == [T0 + 5.0]


def test_song_position_pointer_counts_sixteenths_in_14_bits():
    clock = BeatClock(120.0)
    assert clock.locate(300, T0) == [(T0, bytes((0xF2, 300 & 0x7F, 300 >> 7)))]
    assert clock.position == 300 * 6
    assert beatclock.song_position_pointer(16384 + 5) == bytes((0xF2, 5, 0))
    clock.resume(T0)
    with pytest.raises(ValueError):
        clock.locate(0, T0)


@pytest.mark.parametrize("bpm", [19.9, 300.5, "120", True, None])
def test_bpm_out_of_bounds_is_refused(bpm):
    with pytest.raises(ValueError, match="bpm must be a number from 20 to 300"):
        BeatClock(bpm)
