"""Registry: fan-out, no echo, limits, note-off flush, expiry, mirror."""

import pytest
from twisted.internet import task
from zope.interface.verify import verifyObject

from gateway.config import parse
from gateway.interfaces import IMember
from tests.members import RecordingMember
from gateway.midi import MidiEvent
from gateway.registry import FanOutCache, JoinRefused, Passphrase, Registry, TrustedPeer

DEMO_PASS = "twenty characters or more"


def make_registry(**overrides):
    data = {"sessions": [{"name": "demo", "passphrase": DEMO_PASS,
                          "allow_addresses": ["127.0.0.0/8"]},
                         {"name": "mirror", "passphrase": DEMO_PASS,
                          "mirror": {"interval": 7, "delay": 0.5}}]}
    data.update(overrides)
    clock = task.Clock()
    return Registry(parse(data), clock), clock


def join(registry, name, session="demo", passphrase=DEMO_PASS):
    member = RecordingMember(name)
    return member, registry.join(session, member, Passphrase(passphrase))


def events(*messages):
    return [MidiEvent(bytes(message)) for message in messages]


def test_recording_member_satisfies_the_interface():
    verifyObject(IMember, RecordingMember("x"))


def test_fan_out_reaches_everyone_but_the_sender():
    registry, _ = make_registry()
    alice, alice_in = join(registry, "alice")
    bob, _ = join(registry, "bob")
    carol, _ = join(registry, "carol")
    alice_in.publish(events([0x90, 60, 100]))
    assert bob.received == [(bytes([0x90, 60, 100]), "alice")]
    assert carol.received == [(bytes([0x90, 60, 100]), "alice")]
    assert alice.received == []


def test_join_and_leave_are_announced_to_the_others():
    registry, _ = make_registry()
    alice, _ = join(registry, "alice")
    bob, bob_in = join(registry, "bob")
    bob_in.leave()
    assert alice.changes == [("join", "bob"), ("leave", "bob")]
    assert bob.changes == []


def test_wrong_passphrase_is_refused_and_counted():
    registry, _ = make_registry()
    with pytest.raises(JoinRefused) as refused:
        join(registry, "mallory", passphrase="wrong but long enough to pass")
    assert refused.value.reason == JoinRefused.WRONG_PASSPHRASE
    assert registry.refusals[JoinRefused.WRONG_PASSPHRASE] == 1
    assert registry.session("demo").members == []


def test_full_session_is_busy():
    registry, _ = make_registry(limits={"max_members_per_session": 2})
    join(registry, "a")
    join(registry, "b")
    with pytest.raises(JoinRefused) as refused:
        join(registry, "c")
    assert refused.value.reason == JoinRefused.SESSION_FULL


def test_first_joiner_creates_a_session_and_later_joiners_need_its_passphrase():
    registry, _ = make_registry()
    join(registry, "a", session="jam", passphrase="a brand new passphrase")
    with pytest.raises(JoinRefused):
        join(registry, "b", session="jam", passphrase="not the same passphrase")
    join(registry, "c", session="jam", passphrase="a brand new passphrase")
    assert [m.name for m in registry.session("jam").members] == ["a", "c"]


def test_created_session_needs_a_long_passphrase():
    registry, _ = make_registry()
    with pytest.raises(JoinRefused) as refused:
        join(registry, "a", session="jam", passphrase="short")
    assert refused.value.reason == JoinRefused.PASSPHRASE_TOO_SHORT


def test_created_session_disappears_when_empty_but_declared_ones_stay():
    registry, _ = make_registry()
    _, membership = join(registry, "a", session="jam", passphrase="a brand new passphrase")
    _, demo = join(registry, "b")
    membership.leave()
    demo.leave()
    assert registry.session("jam") is None and registry.session("demo") is not None


def test_gateway_full():
    registry, _ = make_registry(limits={"max_sessions": 2})
    with pytest.raises(JoinRefused) as refused:
        join(registry, "a", session="jam", passphrase="a brand new passphrase")
    assert refused.value.reason == JoinRefused.GATEWAY_FULL


def test_session_creation_can_be_switched_off():
    registry, _ = make_registry(limits={"allow_session_creation": False})
    with pytest.raises(JoinRefused) as refused:
        join(registry, "a", session="jam", passphrase="a brand new passphrase")
    assert refused.value.reason == JoinRefused.UNKNOWN_SESSION


def test_trusted_peers_join_declared_sessions_only():
    registry, _ = make_registry()
    registry.join("demo", RecordingMember("mac"), TrustedPeer())
    with pytest.raises(JoinRefused):
        registry.join("nowhere", RecordingMember("mac"), TrustedPeer())


def test_allow_list():
    registry, _ = make_registry()
    assert registry.session("demo").allows_address("127.0.0.5")
    assert not registry.session("demo").allows_address("192.0.2.1")
    assert not registry.session("mirror").allows_address("127.0.0.1")   # empty: nobody


def test_departure_releases_notes_and_pedals():
    registry, _ = make_registry()
    alice, alice_in = join(registry, "alice")
    bob, _ = join(registry, "bob")
    alice_in.publish(events([0x90, 60, 100], [0x91, 64, 90], [0x90, 67, 80],
                            [0x80, 67, 0], [0xB1, 64, 127]))
    bob.received.clear()
    alice_in.leave("connection lost")
    assert bob.received == [(bytes([0x80, 60, 64]), "alice"), (bytes([0x81, 64, 64]), "alice"),
                            (bytes([0xB1, 64, 0]), "alice")]


def test_idle_members_expire_with_their_notes_released():
    registry, clock = make_registry(limits={"idle_timeout": 30})
    alice, alice_in = join(registry, "alice")
    bob, bob_in = join(registry, "bob")
    alice_in.publish(events([0x90, 60, 100]))
    clock.advance(20)
    bob_in.touch()
    clock.advance(15)
    assert registry.expire_idle() == 1
    assert alice.disconnected == "idle" and bob.disconnected is None
    assert bob.received[-1] == (bytes([0x80, 60, 64]), "alice")
    assert registry.drops.get("test", "idle_timeout") == 1


def test_rate_limit_drops_excess_but_never_note_offs():
    registry, clock = make_registry(limits={"events_per_second": 10})
    _, alice_in = join(registry, "alice")
    bob, _ = join(registry, "bob")
    alice_in.publish(events(*[[0x90, 60 + i, 100] for i in range(15)]))
    assert len(bob.received) == 10
    assert registry.drops.get("test", "rate_limited") == 5
    alice_in.publish(events(*[[0x80, 60 + i, 0] for i in range(15)]))
    assert len(bob.received) == 25
    clock.advance(1.0)
    alice_in.publish(events([0x90, 80, 100]))
    assert len(bob.received) == 26


def test_velocity_cap():
    registry, _ = make_registry(limits={"velocity_cap": 90})
    _, alice_in = join(registry, "alice")
    bob, _ = join(registry, "bob")
    alice_in.publish(events([0x90, 60, 127], [0x90, 61, 50]))
    assert [data for data, _ in bob.received] == [bytes([0x90, 60, 90]), bytes([0x90, 61, 50])]


def test_a_fan_out_passes_the_publisher_list_on_only_when_nothing_changed():
    # Doors may hang their wire encoding on the list they publish (RTP-MIDI does).
    registry, _ = make_registry(limits={"velocity_cap": 90, "events_per_second": 3})
    _, alice_in = join(registry, "alice")
    lists = []
    bob = RecordingMember("bob")
    bob.deliver = lambda events, source: lists.append(events)
    registry.join("demo", bob, Passphrase(DEMO_PASS))
    quiet, loud = events([0x90, 60, 80]), events([0x90, 61, 127])
    too_many = events([0x90, 62, 1], [0x90, 63, 1])
    for published in (quiet, loud, too_many):
        alice_in.publish(published)
    assert lists[0] is quiet
    assert lists[1] is not loud and [event.data for event in lists[1]] == [bytes([0x90, 61, 90])]
    assert lists[2] is not too_many and [event.data for event in lists[2]] == [too_many[0].data]


def test_mirror_echoes_a_fifth_up_after_the_delay_to_the_player_only():
    registry, clock = make_registry()
    solo, solo_in = join(registry, "solo", session="mirror")
    other, _ = join(registry, "other", session="mirror")
    solo_in.publish(events([0x90, 60, 100], [0xB0, 7, 100], [0x90, 125, 100]))
    assert solo.received == []
    clock.advance(0.5)
    assert solo.received == [(bytes([0x90, 67, 100]), "mirror")]
    assert other.received == []
    assert registry.drops.get("mirror", "out_of_range") == 1


def test_mirror_echo_is_cancelled_when_the_player_leaves():
    registry, clock = make_registry()
    solo, solo_in = join(registry, "solo", session="mirror")
    solo_in.publish(events([0x90, 60, 100]))
    solo_in.leave()
    clock.advance(1)
    assert solo.received == [] and clock.getDelayedCalls() == []


def test_roster_lists_the_mirror_first():
    registry, _ = make_registry()
    join(registry, "solo", session="mirror")
    doors = [entry["door"] for entry in registry.session("mirror").roster()]
    assert doors == ["mirror", "test"]


def test_close_all_kicks_everyone():
    registry, _ = make_registry()
    alice, _ = join(registry, "alice")
    bob, _ = join(registry, "bob")
    registry.close_all()
    assert (alice.disconnected, bob.disconnected) == ("shutdown", "shutdown")
    assert registry.member_count() == 0


def test_leave_twice_is_harmless_and_publish_after_leave_is_ignored():
    registry, _ = make_registry()
    _, alice_in = join(registry, "alice")
    bob, _ = join(registry, "bob")
    alice_in.leave()
    alice_in.leave()
    alice_in.publish(events([0x90, 60, 100]))
    assert bob.received == []


def test_fan_out_cache_computes_once_per_events_list():
    cache = FanOutCache()
    calls = []
    first, second = events([0x90, 60, 100]), events([0x90, 60, 100])
    for batch in (first, first, second, second, first):
        cache.get(batch, lambda: calls.append(1) or len(calls))
    assert len(calls) == 3
