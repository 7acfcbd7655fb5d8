"""The gateway as a session's beat clock (gateway.bus.tempo) on a LocalBus driven by task.Clock."""

import pytest
from twisted.internet import task

from gateway.bus import values
from gateway.bus.local import DropCounters, LocalBus
from gateway.bus.values import TempoChange
from gateway.config import parse
from gateway.midi import MidiEvent
from tests.members import RecordingMember, join_now

PASS = "twenty characters or more"
CONTROL = "the conductor's own secret"
CLOCK, START, CONTINUE, STOP = b"\xf8", b"\xfa", b"\xfb", b"\xfc"
T0 = 5000.0


def build(tempo, mirror=None, start_at=T0):
    session = {"name": "band", "passphrase": PASS, "tempo": tempo}
    if mirror:
        session["mirror"] = mirror
    config = parse({"sessions": [session, {"name": "plain", "passphrase": PASS}]})
    clock = task.Clock()
    clock.advance(start_at)
    drops = DropCounters()
    return LocalBus(config, clock, drops), clock, drops


def clocks_with_times(member):
    return [(event.time, event.data) for delivery in member.deliveries
            for event in delivery.events]


def play(clock, seconds, step):
    """Advance ``clock`` by ``seconds`` in steps of ``step`` (the reactor's wake-ups)."""
    end = clock.seconds() + seconds
    while clock.seconds() < end - 1e-12:
        clock.advance(min(step, end - clock.seconds()))


def test_first_member_hears_start_then_24_clocks_per_beat_on_the_grid():
    bus, clock, _ = build({"bpm": 120})
    player = RecordingMember("player", "websocket")
    membership = join_now(bus, player, "band", PASS)
    assert membership.welcome.tempo.running and membership.welcome.tempo.bpm == 120.0
    assert membership.welcome.tempo.beat_time == T0
    assert player.deliveries == []      # heard on the next turn, after the door took the join
    play(clock, 2.0 - 1e-6, 0.001)
    heard = clocks_with_times(player)
    assert heard[0] == (T0, START)
    ticks = [time for time, data in heard[1:] if data == CLOCK]
    assert len(ticks) == 4 * 24 and len(heard) == 1 + 4 * 24
    assert ticks == pytest.approx([T0 + n * 0.5 / 24 for n in range(96)], abs=1e-9)
    assert player.deliveries[0].tempo.running
    assert all(delivery.source.name == "clock" for delivery in player.deliveries)


def test_late_wake_ups_never_add_up():
    bus, clock, _ = build({"bpm": 97})
    player = RecordingMember()
    join_now(bus, player, "band", PASS)
    interval = 60 / (97 * 24)
    # Wake-ups a third of an interval late every time: a scheduler that slept
    # "interval" from each wake-up would be a third slower.
    for _ in range(3000):
        clock.advance(interval * 4 / 3)
    ticks = [time for time, data in clocks_with_times(player) if data == CLOCK]
    elapsed = 3000 * interval * 4 / 3
    assert len(ticks) == int(elapsed / interval) + 1
    assert ticks[-1] == pytest.approx(T0 + (len(ticks) - 1) * interval, abs=1e-6)


def test_bus_times_stay_on_the_bus_clock_while_the_grid_runs_on_the_monotonic_one():
    bus, clock, _ = build({"bpm": 120})
    bus.monotonic = lambda: clock.seconds() - 4000.0     # another epoch, same rate
    player = RecordingMember()
    membership = join_now(bus, player, "band", PASS)
    assert membership.welcome.tempo.beat_time == pytest.approx(T0)
    play(clock, 0.5, 0.004)
    ticks = [time for time, data in clocks_with_times(player) if data == CLOCK]
    assert ticks[:3] == pytest.approx([T0, T0 + 0.5 / 24, T0 + 1 / 24])


def test_a_session_without_tempo_has_no_clock_and_no_timer():
    bus, clock, _ = build({"bpm": 120})
    player = RecordingMember()
    membership = join_now(bus, player, "plain", PASS)
    assert membership.welcome.tempo is None and bus.session_view("plain").tempo is None
    assert clock.getDelayedCalls() == []
    play(clock, 1.0, 0.01)
    assert player.deliveries == []


def test_clock_sleeps_when_the_session_empties_and_starts_anew():
    bus, clock, _ = build({"bpm": 120})
    player = RecordingMember()
    membership = join_now(bus, player, "band", PASS)
    play(clock, 1.0, 0.005)
    membership.leave()
    assert clock.getDelayedCalls() == []
    again = RecordingMember("again")
    join_now(bus, again, "band", PASS)
    clock.advance(0)
    assert clocks_with_times(again)[0][1] == START


def test_stopped_tempo_waits_for_someone_with_the_right():
    bus, clock, _ = build({"bpm": 90, "running": False, "control_passphrase": CONTROL})
    player = RecordingMember()
    membership = join_now(bus, player, "band", PASS)
    assert membership.welcome.tempo.running is False and membership.welcome.tempo.beat_time is None
    play(clock, 1.0, 0.01)
    assert player.deliveries == []
    assert membership.change_tempo(TempoChange(CONTROL, transport=values.START)) is None
    assert [data for _, data in clocks_with_times(player)] == [START, CLOCK]
    assert player.deliveries[0].tempo.changed_by.name == "recorder"


def test_only_the_control_passphrase_changes_the_tempo_and_guessing_is_throttled():
    bus, clock, drops = build({"bpm": 120, "control_passphrase": CONTROL})
    player = RecordingMember("player", "websocket")
    membership = join_now(bus, player, "band", PASS)
    clock.advance(0)
    for _ in range(3):
        refusal = membership.change_tempo(TempoChange(PASS, bpm=60, source="203.0.113.9"))
        assert refusal.reason == values.WRONG_PASSPHRASE
    refusal = membership.change_tempo(TempoChange(PASS, bpm=60, source="203.0.113.9"))
    assert refusal.reason == values.WRONG_PASSPHRASE
    # Past the free failures even the right secret waits out the back-off.
    refusal = membership.change_tempo(TempoChange(CONTROL, bpm=60, source="203.0.113.9"))
    assert refusal.reason == values.THROTTLED
    assert drops.get("websocket", "tempo_wrong_passphrase") == 4
    assert bus.session_view("band").tempo.bpm == 120.0
    clock.advance(2.0)
    assert membership.change_tempo(TempoChange(CONTROL, bpm=60, source="203.0.113.9")) is None
    assert bus.session_view("band").tempo.bpm == 60.0
    assert player.deliveries[-1].tempo.bpm == 60.0


def test_a_session_without_a_control_passphrase_refuses_every_change():
    bus, clock, _ = build({"bpm": 120})
    membership = join_now(bus, RecordingMember(), "band", PASS)
    refusal = membership.change_tempo(TempoChange(PASS, bpm=100))
    assert refusal.reason == values.WRONG_PASSPHRASE
    other = join_now(bus, RecordingMember("x"), "plain", PASS)
    assert other.change_tempo(TempoChange(CONTROL, bpm=100)).reason == values.NO_TEMPO


@pytest.mark.parametrize("change, why", [
    (TempoChange(CONTROL, bpm=500), "bpm must be"),
    (TempoChange(CONTROL, transport="rewind"), "transport must be"),
])
def test_bad_changes_are_refused_and_change_nothing(change, why):
    bus, clock, _ = build({"bpm": 120, "control_passphrase": CONTROL})
    membership = join_now(bus, RecordingMember(), "band", PASS)
    refusal = membership.change_tempo(change)
    assert refusal.reason == values.BAD_TEMPO and why in refusal.message
    assert bus.session_view("band").tempo.bpm == 120.0


def test_stop_and_continue_reach_every_member():
    bus, clock, _ = build({"bpm": 120, "control_passphrase": CONTROL})
    first, second = RecordingMember("first"), RecordingMember("second")
    conductor = join_now(bus, first, "band", PASS)
    join_now(bus, second, "band", PASS)
    play(clock, 0.5, 0.005)
    conductor.change_tempo(TempoChange(CONTROL, transport=values.STOP))
    play(clock, 0.5, 0.005)
    conductor.change_tempo(TempoChange(CONTROL, transport=values.CONTINUE))
    for member in (first, second):
        heard = [data for _, data in clocks_with_times(member)]
        stop_at = heard.index(STOP)
        # Continue comes with the song position, where the stop left it.
        assert heard[stop_at + 1][0] == 0xF2 and heard[stop_at + 2:stop_at + 4] == [CONTINUE,
                                                                                    CLOCK]
        assert heard.count(STOP) == 1 and heard.count(START) == 1
    # Both joined before the first turn: both heard the Start.
    assert [d.tempo.running for d in second.deliveries if d.tempo] == [True, False, True]


def test_stop_locate_and_continue_move_every_follower_to_the_position():
    bus, clock, _ = build({"bpm": 120, "control_passphrase": CONTROL})
    player = RecordingMember()
    conductor = join_now(bus, player, "band", PASS)
    play(clock, 0.3, 0.005)
    assert conductor.change_tempo(TempoChange(CONTROL, position=3)).reason == values.BAD_TEMPO
    assert conductor.change_tempo(TempoChange(CONTROL, transport=values.START,
                                              position=3)).reason == values.BAD_TEMPO
    assert conductor.change_tempo(TempoChange(CONTROL, bpm=90, position=-1)).reason == \
        values.BAD_TEMPO
    assert bus.session_view("band").tempo.bpm == 120.0       # nothing of a refusal is done
    before = len(clocks_with_times(player))
    assert conductor.change_tempo(TempoChange(CONTROL, transport=values.STOP, position=16)) \
        is None
    assert bus.session_view("band").tempo.beat == 4
    assert conductor.change_tempo(TempoChange(CONTROL, transport=values.CONTINUE)) is None
    heard = [data for _, data in clocks_with_times(player)][before:]
    # Located while stopped, and said again with Continue.
    assert heard == [STOP, bytes((0xF2, 16, 0)), bytes((0xF2, 16, 0)), CONTINUE, CLOCK]
    assert bus.session_view("band").tempo.beat == 5        # clock 96 sent: beat 4 begun


def test_a_member_joining_a_running_song_is_relocated_at_the_next_sixteenth():
    bus, clock, _ = build({"bpm": 120})
    first = RecordingMember("first")
    join_now(bus, first, "band", PASS)
    interval = 0.5 / 24
    play(clock, 8.5 * interval, interval / 4)    # clocks 0..8 sent
    late = RecordingMember("late")
    join_now(bus, late, "band", PASS)
    play(clock, 6 * interval, interval / 4)
    heard = [data for _, data in clocks_with_times(late)]
    # Clocks 9..11 (a stopped follower ignores them), then sixteenth 2 = clock 12.
    assert heard[:6] == [CLOCK, CLOCK, CLOCK, bytes((0xF2, 2, 0)), CONTINUE, CLOCK]
    assert bytes((0xF2, 2, 0)) not in [data for _, data in clocks_with_times(first)]


def test_players_beat_clock_is_dropped_in_a_tempo_session_and_passed_elsewhere():
    bus, clock, drops = build({"bpm": 120})
    drummer, listener = RecordingMember("drummer", "rtpmidi"), RecordingMember("listener")
    drumming = join_now(bus, drummer, "band", PASS)
    join_now(bus, listener, "band", PASS)
    clock.advance(0)
    before = len(listener.deliveries)
    drumming.publish([MidiEvent(CLOCK, 1.0), MidiEvent(b"\x90\x24\x64", 1.0),
                      MidiEvent(START, 1.0)], encodings={"rtp-midi-list": b"\xf8\x00\x90$d"})
    assert drops.get("rtpmidi", "clock_from_player") == 2
    [played] = listener.deliveries[before:]
    assert [event.data for event in played.events] == [b"\x90\x24\x64"]
    assert played.encodings == {}
    a, b = RecordingMember("a", "rtpmidi"), RecordingMember("b")
    join_now(bus, b, "plain", PASS)
    join_now(bus, a, "plain", PASS).publish([MidiEvent(CLOCK, 1.0)])
    assert b.heard == [CLOCK]


def test_clock_reaches_the_player_of_a_mirror_session():
    bus, clock, _ = build({"bpm": 120}, mirror={"interval": 7})
    player = RecordingMember()
    join_now(bus, player, "band", PASS)
    play(clock, 0.25, 0.005)
    assert [data for _, data in clocks_with_times(player)][:2] == [START, CLOCK]


def test_status_and_view_show_the_tempo():
    bus, clock, _ = build({"bpm": 132, "beats_per_bar": 3})
    join_now(bus, RecordingMember(), "band", PASS)
    play(clock, 1.0, 0.01)
    view = bus.session_view("band")
    assert view.tempo.bpm == 132.0 and view.tempo.beats_per_bar == 3
    assert view.tempo.beat == 3 and view.tempo.beat_time == pytest.approx(T0 + 3 * 60 / 132)
    band = next(s for s in bus.snapshot()["sessions"] if s["name"] == "band")
    assert band["tempo"]["bpm"] == 132.0 and band["tempo"]["clocks_sent"] == 53
    assert band["tempo"]["controllable"] is False
    assert "control_passphrase" not in str(band)


@pytest.mark.parametrize("running", [True, False])
def test_an_empty_sessions_view_says_whether_the_song_will_play(running):
    bus, clock, _ = build({"bpm": 120, "running": running})
    view = bus.session_view("band")
    assert view.tempo.running is running and view.tempo.beat_time is None
    assert clock.getDelayedCalls() == []


def test_the_wall_clock_offset_is_kept_until_the_wall_clock_steps():
    bus, clock, _ = build({"bpm": 120})
    epoch = [4000.0]
    bus.monotonic = lambda: clock.seconds() - epoch[0]
    player = RecordingMember()
    join_now(bus, player, "band", PASS)
    play(clock, 0.25, 0.005)
    epoch[0] = 4000.0002        # two reads a busy machine pulled apart: not a step
    play(clock, 0.25, 0.005)
    ticks = [time for time, data in clocks_with_times(player) if data == CLOCK]
    assert ticks == pytest.approx([T0 + n * 0.5 / 24 for n in range(len(ticks))], abs=1e-9)
    # The wall clock steps 10 s ahead; the monotonic one goes on as it was.
    epoch[0] += 10.0
    clock.advance(10.0)
    play(clock, 0.1, 0.005)
    last = [time for time, data in clocks_with_times(player) if data == CLOCK][-1]
    assert last == pytest.approx(clock.seconds(), abs=0.05)
