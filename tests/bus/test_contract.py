"""The session bus contract, stated once and run against every bus implementation.

In the spirit of Twisted's reactor builder tests: each test takes the
``bus`` fixture, parameterized over :data:`BUS_BUILDERS`. A second
implementation (a Redis-backed bus) adds one builder there and runs every
test here unchanged.

Members are :class:`tests.members.RecordingMember` or small subclasses that
misbehave in the middle of a fan-out: they leave, join, publish, raise or
flood from inside ``deliver``.
"""

import json

import pytest
from twisted.internet import task
from zope.interface.verify import verifyObject

from gateway.bus import values
from gateway.bus.local import DropCounters, LocalBus
from gateway.bus.values import AllowedAddress, JoinRefused, JoinRequest, Passphrase, Verified
from gateway.config import parse
from gateway.interfaces import IMember, IMembership, ISessionBus
from gateway.midi import MidiEvent
from tests.members import RecordingMember, result_of

DEMO_PASS = "twenty characters or more"
NEW_PASS = "a brand new passphrase"
PEER = "198.51.100.7"


class RecordingLog:
    """A logger that keeps what it was asked to write."""

    def __init__(self):
        self.lines = []

    def _record(self, level, text, **fields):
        self.lines.append((level, text.format(**fields) if "{" in text else text))

    def info(self, text, **fields):
        self._record("info", text, **fields)

    def warn(self, text, **fields):
        self._record("warn", text, **fields)

    def failure(self, text, failure=None, **fields):
        self._record("failure", text, **fields)


def local_bus(config, clock, drops, log):
    return LocalBus(config, clock, drops, log=log)


BUS_BUILDERS = {"local": local_bus}


class Harness:
    """A bus built from a config, with its clock, drop sink and log."""

    def __init__(self, builder, **overrides):
        data = {"sessions": [{"name": "demo", "passphrase": DEMO_PASS,
                              "allow_addresses": ["127.0.0.0/8"]},
                             {"name": "mirror", "passphrase": DEMO_PASS,
                              "mirror": {"interval": 7, "delay": 0.5}}],
                "logging": {"drop_log_interval": 10}}
        data.update(overrides)
        self.clock = task.Clock()
        self.drops = DropCounters()
        self.log = RecordingLog()
        self.bus = builder(parse(data), self.clock, self.drops, self.log)

    def request(self, name, session="demo", passphrase=DEMO_PASS, door="test", source=PEER,
                credential=None):
        return JoinRequest(session, name, door,
                           credential if credential is not None else Passphrase(passphrase),
                           source)

    def join(self, member_or_name, **request):
        member = (RecordingMember(member_or_name) if isinstance(member_or_name, str)
                  else member_or_name)
        request.setdefault("door", member.door)
        membership = result_of(self.bus.join(self.request(member.name, **request), member))
        return member, membership

    def refusal(self, name="mallory", **request):
        with pytest.raises(JoinRefused) as refused:
            self.join(name, **request)
        return refused.value.refusal

    def names(self, session="demo"):
        return [entry.name for entry in self.bus.session_view(session).roster]


@pytest.fixture(params=sorted(BUS_BUILDERS))
def make(request):
    builder = BUS_BUILDERS[request.param]
    return lambda **overrides: Harness(builder, **overrides)


@pytest.fixture
def harness(make):
    return make()


def note_on(note=60, velocity=100, channel=0):
    return MidiEvent(bytes([0x90 | channel, note, velocity]))


def note_off(note=60, channel=0):
    return MidiEvent(bytes([0x80 | channel, note, 0]))


# --- the shape of the contract ---------------------------------------------

def test_bus_membership_and_member_provide_their_interfaces(harness):
    verifyObject(ISessionBus, harness.bus)
    member, membership = harness.join("alice")
    verifyObject(IMembership, membership)
    verifyObject(IMember, member)


def test_join_is_a_deferred_and_refusals_are_failures_carrying_a_value(harness):
    joining = harness.bus.join(harness.request("alice"), RecordingMember("alice"))
    assert hasattr(joining, "addCallbacks")
    refused = harness.bus.join(harness.request("eve", passphrase="wrong but long enough"),
                               RecordingMember("eve"))
    failure = []
    refused.addErrback(failure.append)
    assert failure[0].check(JoinRefused)
    assert failure[0].value.refusal == values.Refusal(
        values.WRONG_PASSPHRASE, "wrong passphrase for session 'demo'")


def test_values_that_cross_the_bus_serialize_and_carry_no_address(harness):
    alice, alice_in = harness.join("alice", source="203.0.113.9")
    bob, bob_in = harness.join("bob", source="203.0.113.10")
    bob_in.report_latency(12.5)
    alice_in.publish([note_on()])
    crossing = [alice_in.welcome, bob_in.welcome, harness.bus.session_view("demo"),
                *alice.notices, *[delivery.source for delivery in bob.deliveries]]
    text = json.dumps(crossing)       # named tuples of plain values: JSON can carry them
    assert "203.0.113" not in text
    for value in crossing:
        assert isinstance(value, tuple)
    assert bob_in.welcome.roster[-1] == values.RosterEntry(bob_in.entry.member_id, "bob", "test")


# --- a session tempo ------------------------------------------------------------

TEMPO_SESSION = {"name": "band", "passphrase": DEMO_PASS,
                 "tempo": {"bpm": 120, "control_passphrase": "the conductor's own secret"}}


def test_a_tempo_session_clocks_its_members_and_says_so_in_values(make):
    harness = make(sessions=[TEMPO_SESSION])
    alice, alice_in = harness.join("alice", session="band")
    bob, bob_in = harness.join("bob", session="band")
    assert alice_in.welcome.tempo.bpm == 120.0 and alice_in.welcome.tempo.running
    assert harness.bus.session_view("band").tempo.bpm == 120.0
    for _ in range(24):
        harness.clock.advance(0.5 / 24 - 1e-7)      # just short of beat 1's clock, 24
    for member in (alice, bob):
        heard = member.heard
        assert heard[0] == b"\xfa" and heard[1:].count(b"\xf8") == 24
        assert {source for _, source in member.received} == {"clock"}
    json.dumps([alice_in.welcome, harness.bus.session_view("band")])
    alice_in.publish([MidiEvent(b"\xf8"), note_on()])
    assert bob.received[-1] == (bytes([0x90, 60, 100]), "alice")
    assert harness.drops.get("test", "clock_from_player") == 1
    refusal = bob_in.change_tempo(values.TempoChange(DEMO_PASS, bpm=90))
    assert refusal.reason == values.WRONG_PASSPHRASE
    assert bob_in.change_tempo(values.TempoChange("the conductor's own secret", bpm=90)) is None
    assert harness.bus.session_view("band").tempo.bpm == 90.0
    assert alice.deliveries[-1].tempo.bpm == 90.0


def test_a_session_without_a_tempo_has_none_and_refuses_changes(harness):
    _, alice_in = harness.join("alice")
    assert alice_in.welcome.tempo is None and harness.bus.session_view("demo").tempo is None
    refusal = alice_in.change_tempo(values.TempoChange("anything at all", bpm=90))
    assert refusal.reason == values.NO_TEMPO


# --- fan-out ------------------------------------------------------------------

def test_fan_out_reaches_everyone_but_the_sender(harness):
    alice, alice_in = harness.join("alice")
    bob, _ = harness.join("bob")
    carol, _ = harness.join("carol")
    alice_in.publish([note_on()])
    assert bob.received == [(bytes([0x90, 60, 100]), "alice")]
    assert carol.received == [(bytes([0x90, 60, 100]), "alice")]
    assert alice.received == []


def test_a_delivery_is_immutable_events_and_the_sender_entry(harness):
    _, alice_in = harness.join("alice")
    bob, _ = harness.join("bob")
    alice_in.publish([note_on()])
    delivery = bob.deliveries[0]
    assert type(delivery.events) is tuple
    assert delivery.source == alice_in.entry and not delivery.released


def test_memo_computes_once_per_fan_out_for_every_member(harness):
    _, alice_in = harness.join("alice")
    computed = []

    class Encoding(RecordingMember):
        def deliver(self, delivery):
            super().deliver(delivery)
            self.encoded = delivery.memo(("test",), lambda: computed.append(1) or len(computed))

    members = [harness.join(Encoding(name))[0] for name in ("b", "c", "d")]
    alice_in.publish([note_on()])
    alice_in.publish([note_off()])
    assert computed == [1, 1]
    assert [member.encoded for member in members] == [2, 2, 2]


def test_encodings_pass_on_only_when_the_bus_changed_nothing(make):
    harness = make(limits={"velocity_cap": 90, "events_per_second": 3})
    _, alice_in = harness.join("alice")
    bob, _ = harness.join("bob")
    for events in ([note_on(60, 80)], [note_on(61, 127)], [note_on(62, 1), note_on(63, 1)]):
        alice_in.publish(events, {"wire": b"as it came"})
    assert [delivery.encodings for delivery in bob.deliveries] == [{"wire": b"as it came"}, {},
                                                                    {}]
    assert bob.heard == [bytes([0x90, 60, 80]), bytes([0x90, 61, 90]), bytes([0x90, 62, 1])]


def test_rate_limit_drops_excess_but_never_note_offs(make):
    harness = make(limits={"events_per_second": 10})
    _, alice_in = harness.join("alice")
    bob, _ = harness.join("bob")
    alice_in.publish([note_on(60 + i) for i in range(15)])
    assert len(bob.received) == 10
    assert harness.drops.get("test", "rate_limited") == 5
    alice_in.publish([note_off(60 + i) for i in range(15)])
    assert len(bob.received) == 25
    harness.clock.advance(1.0)
    alice_in.publish([note_on(80)])
    assert len(bob.received) == 26


# --- joining: limits and refusals -------------------------------------------

def test_join_and_leave_are_announced_to_the_others_as_values(harness):
    alice, _ = harness.join("alice")
    bob, bob_in = harness.join("bob")
    bob_in.leave()
    assert alice.changes == [("join", "bob"), ("leave", "bob")]
    assert alice.notices[-1].roster == (alice.notices[0].roster[0],)
    assert bob.changes == []


def test_latency_reports_update_everyone_including_the_member(harness):
    alice, _ = harness.join("alice")
    bob, bob_in = harness.join("bob")
    bob_in.report_latency(8.25)
    for member in (alice, bob):
        notice = member.notices[-1]
        assert (notice.change, notice.entry.name, notice.entry.latency_ms) == ("update", "bob",
                                                                               8.25)
    assert harness.bus.session_view("demo").roster[1].latency_ms == 8.25


@pytest.mark.parametrize("reason, overrides, request_fields", [
    (values.WRONG_PASSPHRASE, {}, {"passphrase": "wrong but long enough"}),
    (values.UNKNOWN_SESSION, {"limits": {"allow_session_creation": False}},
     {"session": "jam", "passphrase": NEW_PASS}),
    (values.PASSPHRASE_TOO_SHORT, {}, {"session": "jam", "passphrase": "short"}),
    (values.GATEWAY_FULL, {"limits": {"max_sessions": 2}},
     {"session": "jam", "passphrase": NEW_PASS}),
    (values.ADDRESS_NOT_ALLOWED, {}, {"credential": AllowedAddress(), "source": "192.0.2.1"}),
    (values.UNKNOWN_SESSION, {}, {"session": "jam", "credential": Verified()}),
])
def test_each_refusal_reason_is_a_value_counted_by_reason(make, reason, overrides,
                                                          request_fields):
    harness = make(**overrides)
    refusal = harness.refusal(**request_fields)
    assert refusal.reason == reason and refusal.message
    assert harness.bus.refusals[reason] == 1
    assert harness.drops.get("test", f"join_{reason}") == 1
    assert harness.names() == []


BAD_NAMES = ["", "   ", "\t", "alice\nnetgateway: forged line", "nul\x00", "esc\x1b[2J",
             "\u202eecila", "zero\u200bwidth", "line\u2028break", "x" * 65]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_an_empty_blank_control_character_or_long_name_is_refused_on_join_and_check(harness,
                                                                                      name):
    refusal = harness.refusal(name)
    assert refusal.reason == values.BAD_NAME and refusal.message
    assert harness.bus.check(harness.request(name)).reason == values.BAD_NAME
    assert harness.bus.refusals[values.BAD_NAME] == 2
    assert harness.drops.get("test", "join_bad_name") == 2
    assert harness.names() == []


def test_a_bad_name_is_refused_before_the_credential_and_is_no_guess(harness):
    for _ in range(10):
        assert harness.refusal(" ", passphrase="wrong but long enough").reason == values.BAD_NAME
    # A refused name tells nothing about the passphrase and never starts a back-off.
    harness.join("alice")
    assert harness.bus.refusals[values.THROTTLED] == 0


@pytest.mark.parametrize("taken", ["alice", "Alice", " alice ", "ＡＬＩＣＥ"])
def test_a_name_already_in_the_session_is_refused_as_taken(harness, taken):
    alice, _ = harness.join("alice")
    refusal = harness.refusal(taken)
    assert refusal.reason == values.NAME_TAKEN and repr(taken) in refusal.message
    assert harness.bus.refusals[values.NAME_TAKEN] == 1
    assert harness.drops.get("test", "join_name_taken") == 1
    assert harness.names() == ["alice"] and alice.notices == []


def test_a_taken_name_is_free_again_once_its_member_left_and_in_another_session(harness):
    _, alice_in = harness.join("alice")
    harness.join("alice", session="mirror")          # another session: not taken there
    alice_in.leave()
    harness.join("alice")
    assert harness.names() == ["alice"]
    # A mirror session's echo is a member too: nobody may pass for it.
    assert harness.refusal("Mirror", session="mirror").reason == values.NAME_TAKEN


def test_a_taken_name_is_told_only_to_who_brings_the_passphrase(harness):
    harness.join("alice")
    wrong = harness.refusal("alice", passphrase="wrong but long enough")
    assert wrong.reason == values.WRONG_PASSPHRASE
    # check() answers before the door admits, with names doors make up: no roster there.
    assert harness.bus.check(harness.request("alice")) is None


def test_unused_name_numbers_the_names_doors_make_up(harness):
    harness.join("rtmp player")
    harness.join("RTMP player 2")
    demo = harness.bus.session_view("demo")
    assert values.unused_name("guest", demo) == "guest"
    assert values.unused_name("rtmp player", demo) == "rtmp player 3"
    assert values.unused_name("rtmp player", harness.bus.session_view("nowhere")) \
        == "rtmp player"
    long_name = "x" * values.MAX_NAME_LENGTH
    harness.join(long_name)
    numbered = values.unused_name(long_name, harness.bus.session_view("demo"))
    assert numbered == "x" * (values.MAX_NAME_LENGTH - 2) + " 2"
    harness.join(numbered)


@pytest.mark.parametrize("name", [" alice ", "Zoë", "佐藤", "🎹 keys", "a" * 64, "O'Brien"])
def test_names_of_visible_characters_in_any_script_join_as_given(harness, name):
    harness.join(name)
    assert harness.names() == [name]


def test_full_session_is_busy_and_says_so_before_a_join(make):
    harness = make(limits={"max_members_per_session": 2})
    harness.join("a")
    assert not harness.bus.session_view("demo").full
    harness.join("b")
    assert harness.bus.session_view("demo").full
    assert harness.refusal("c").reason == values.SESSION_FULL


def test_check_answers_for_the_credential_without_joining(harness):
    assert harness.bus.check(harness.request("probe")) is None
    assert harness.bus.check(harness.request("probe", passphrase="wrong but long enough")
                             ).reason == values.WRONG_PASSPHRASE
    assert harness.names() == []


def test_allow_listed_addresses_join_declared_sessions_without_a_secret(harness):
    harness.join(RecordingMember("mac"), credential=AllowedAddress(), source="127.0.0.5")
    assert harness.refusal("pc", session="mirror", credential=AllowedAddress(),
                           source="127.0.0.1").reason == values.ADDRESS_NOT_ALLOWED
    assert harness.names() == ["mac"]


def test_an_ipv4_peer_of_a_dual_stack_door_is_allowed_by_its_ipv4_address(harness):
    # A door listening on "::" sees IPv4 peers as IPv4-mapped IPv6 addresses.
    harness.join(RecordingMember("mac"), credential=AllowedAddress(),
                 source="::ffff:127.0.0.5")
    assert harness.refusal("pc", credential=AllowedAddress(),
                           source="::ffff:192.0.2.1").reason == values.ADDRESS_NOT_ALLOWED
    assert harness.names() == ["mac"]


def test_first_joiner_creates_a_session_that_goes_when_empty(harness):
    _, first = harness.join("a", session="jam", passphrase=NEW_PASS)
    assert harness.refusal("b", session="jam", passphrase="not the same passphrase"
                           ).reason == values.WRONG_PASSPHRASE
    _, second = harness.join("c", session="jam", passphrase=NEW_PASS)
    assert harness.names("jam") == ["a", "c"]
    _, demo = harness.join("d")
    first.leave()
    second.leave()
    demo.leave()
    assert harness.bus.session_view("jam") is None
    assert harness.bus.session_view("demo") is not None


# --- throttling ---------------------------------------------------------------

def test_failed_joins_back_off_exponentially_per_source_and_session(harness):
    wrong = {"passphrase": "wrong but long enough"}
    for _ in range(3):
        assert harness.refusal(**wrong).reason == values.WRONG_PASSPHRASE
    # Failures beyond the free ones start a back-off: 1 s, then 2 s, then 4 s.
    assert harness.refusal(**wrong).reason == values.WRONG_PASSPHRASE
    assert harness.refusal().reason == values.THROTTLED       # even with the right passphrase
    harness.clock.advance(1.01)
    assert harness.refusal(**wrong).reason == values.WRONG_PASSPHRASE
    harness.clock.advance(1.5)
    assert harness.refusal().reason == values.THROTTLED
    harness.clock.advance(0.6)
    harness.join("alice")                                     # success clears the record
    assert harness.refusal(**wrong).reason == values.WRONG_PASSPHRASE
    assert harness.bus.refusals[values.THROTTLED] == 2


def test_throttling_one_source_leaves_other_sources_and_sessions_alone(harness):
    for _ in range(5):
        harness.refusal(passphrase="wrong but long enough")
    assert harness.refusal().reason == values.THROTTLED
    harness.join("other source", source="198.51.100.8")
    harness.join("other session", session="mirror")


def test_check_counts_towards_throttling_like_a_join(harness):
    wrong = harness.request("probe", passphrase="wrong but long enough")
    for _ in range(4):
        harness.bus.check(wrong)
    assert harness.bus.check(harness.request("probe")).reason == values.THROTTLED


def test_a_guessing_flood_is_logged_once_per_interval_and_never_the_passphrase(harness):
    secret = "my wrong guess number"
    for attempt in range(2000):
        harness.bus.check(harness.request("mallory", passphrase=f"{secret} {attempt}"))
        harness.clock.advance(0.001)
    warnings = [text for level, text in harness.log.lines if level == "warn"]
    assert 1 <= len(warnings) <= 4, warnings
    assert all(PEER in text and secret not in text for text in warnings)
    assert harness.bus.refusals[values.THROTTLED] > 1900


# --- leaving: nothing sticks --------------------------------------------------

def test_departure_releases_notes_and_pedals(harness):
    alice, alice_in = harness.join("alice")
    bob, _ = harness.join("bob")
    alice_in.publish([note_on(60), MidiEvent(bytes([0x91, 64, 90])), note_on(67),
                      note_off(67), MidiEvent(bytes([0xB1, 64, 127])),
                      MidiEvent(bytes([0xB2, 66, 100]))])
    bob.received.clear()
    alice_in.leave("connection lost")
    assert bob.heard == [bytes([0x80, 60, 64]), bytes([0x81, 64, 64]), bytes([0xB1, 64, 0]),
                         bytes([0xB2, 66, 0])]
    assert bob.deliveries[-1].released


def test_idle_members_expire_with_their_notes_released(make):
    harness = make(limits={"idle_timeout": 30})
    alice, alice_in = harness.join("alice")
    bob, bob_in = harness.join("bob")
    alice_in.publish([note_on()])
    harness.clock.advance(20)
    bob_in.touch()
    harness.clock.advance(15)
    assert harness.bus.expire_idle() == 1
    assert alice.disconnected == "idle" and bob.disconnected is None
    assert bob.received[-1] == (bytes([0x80, 60, 64]), "alice")
    assert harness.drops.get("test", "idle_timeout") == 1


def test_kick_and_shutdown_tell_every_member_once(harness):
    alice, alice_in = harness.join("alice")
    bob, _ = harness.join("bob")
    carol, _ = harness.join("carol")
    alice_in.publish([note_on()])
    harness.bus.kick(alice_in, "kicked")
    assert alice.disconnected == "kicked" and bob.heard[-1] == bytes([0x80, 60, 64])
    harness.bus.close_all()
    assert (bob.disconnected, carol.disconnected) == ("shutdown", "shutdown")
    assert harness.bus.member_count() == 0


def test_leave_twice_is_harmless_and_publish_after_leave_is_ignored(harness):
    _, alice_in = harness.join("alice")
    bob, _ = harness.join("bob")
    alice_in.leave()
    alice_in.leave()
    alice_in.publish([note_on()])
    assert bob.received == [] and not alice_in.active


# --- misbehaving members in the middle of a fan-out ---------------------------

class LeavesOnDelivery(RecordingMember):
    """Leaves from inside deliver, as the WebSocket door's slow-reader kick does."""

    membership = None

    def deliver(self, delivery):
        super().deliver(delivery)
        self.membership.leave("too slow")


def test_a_member_leaving_inside_deliver_does_not_make_the_next_one_miss_the_event(harness):
    """Regression: the fan-out walked the live member list, so C was skipped."""
    alice, alice_in = harness.join("alice")
    bob = LeavesOnDelivery("bob")
    _, bob.membership = harness.join(bob)
    carol, _ = harness.join("carol")
    alice_in.publish([note_off()])
    assert carol.heard == [bytes([0x80, 60, 0])]
    assert bob.heard == [bytes([0x80, 60, 0])]
    assert harness.names() == ["alice", "carol"]


class Raises(RecordingMember):
    def deliver(self, delivery):
        raise RuntimeError("a door bug")


def test_a_member_that_raises_is_counted_removed_and_released_and_nobody_else_notices(harness):
    """Regression: one door's exception stopped the fan-out and reached the publisher."""
    alice, alice_in = harness.join("alice")
    bob = Raises("bob")
    _, bob_in = harness.join(bob)
    carol, _ = harness.join("carol")
    bob_in.publish([note_on(64)])             # bob holds a note when he fails
    alice_in.publish([note_on(60)])           # raises inside bob; must not reach alice
    assert carol.heard == [bytes([0x90, 64, 100]), bytes([0x90, 60, 100]),
                           bytes([0x80, 64, 64])]
    assert alice.heard == [bytes([0x90, 64, 100]), bytes([0x80, 64, 64])]
    assert harness.drops.get("test", "deliver_error") == 1
    assert bob.disconnected == "error" and not bob_in.active
    assert harness.names() == ["alice", "carol"]
    assert any(level == "failure" for level, _ in harness.log.lines)
    alice_in.publish([note_off(60)])
    assert carol.heard[-1] == bytes([0x80, 60, 0])


class RaisesOnNotice(RecordingMember):
    def roster_changed(self, notice):
        raise RuntimeError("a door bug")


def test_a_member_that_raises_on_a_roster_notice_is_removed_too(harness):
    alice, _ = harness.join("alice")
    broken, _ = harness.join(RaisesOnNotice("broken"))
    harness.join("carol")
    assert broken.disconnected == "error"
    assert alice.changes == [("join", "broken"), ("join", "carol"), ("leave", "broken")]


def test_joining_from_inside_deliver_sees_only_later_events(harness):
    _, alice_in = harness.join("alice")
    late = RecordingMember("late")

    class Invites(RecordingMember):
        def deliver(self, delivery):
            super().deliver(delivery)
            if not late.deliveries and "late" not in harness.names():
                harness.join(late)

    harness.join(Invites("bob"))
    alice_in.publish([note_on(60)])
    alice_in.publish([note_on(62)])
    assert late.heard == [bytes([0x90, 62, 100])]


def test_leaving_another_member_from_inside_deliver_spares_it_the_event(harness):
    _, alice_in = harness.join("alice")
    ended = {}

    class Ends(RecordingMember):
        def deliver(self, delivery):
            super().deliver(delivery)
            ended["dave"].leave("ended by bob")

    bob, _ = harness.join(Ends("bob"))
    dave, ended["dave"] = harness.join("dave")
    alice_in.publish([note_on()])
    assert bob.heard == [bytes([0x90, 60, 100])]
    assert dave.received == [] and harness.names() == ["alice", "bob"]


def test_publishing_from_inside_deliver_fans_out_after_the_current_fan_out(harness):
    alice, alice_in = harness.join("alice")

    class Echoes(RecordingMember):
        membership = None

        def deliver(self, delivery):
            super().deliver(delivery)
            if delivery.source.name == "alice":
                self.membership.publish([MidiEvent(bytes([0x90, 72, 1]))])

    bob = Echoes("bob")
    _, bob.membership = harness.join(bob)
    carol, _ = harness.join("carol")
    alice_in.publish([note_on(60)])
    # Carol gets alice's note before bob's echo of it, and nothing nests.
    assert carol.received == [(bytes([0x90, 60, 100]), "alice"), (bytes([0x90, 72, 1]), "bob")]
    assert alice.received == [(bytes([0x90, 72, 1]), "bob")]


def test_two_members_echoing_each_other_flood_into_the_rate_limit_and_stop(make):
    harness = make(limits={"events_per_second": 50})

    class Echoes(RecordingMember):
        membership = None

        def deliver(self, delivery):
            super().deliver(delivery)
            self.membership.publish([note_on(delivery.events[0].data[1] % 100 + 1)])

    first, second = Echoes("first"), Echoes("second")
    _, first.membership = harness.join(first)
    _, second.membership = harness.join(second)
    first.membership.publish([note_on(1)])
    assert 45 <= len(first.received) <= 51 and 45 <= len(second.received) <= 51
    assert harness.drops.get("test", "rate_limited") >= 1


# --- the mirror -------------------------------------------------------------------

def test_mirror_echoes_a_fifth_up_after_the_delay_to_the_player_only(harness):
    solo, solo_in = harness.join("solo", session="mirror")
    other, _ = harness.join("other", session="mirror")
    solo_in.publish([note_on(60), MidiEvent(bytes([0xB0, 7, 100])), note_on(125)])
    assert solo.received == []
    harness.clock.advance(0.5)
    assert solo.received == [(bytes([0x90, 67, 100]), "mirror")]
    assert other.received == []
    assert harness.drops.get("mirror", "out_of_range") == 1


def test_mirror_echo_is_cancelled_when_the_player_leaves(harness):
    solo, solo_in = harness.join("solo", session="mirror")
    solo_in.publish([note_on()])
    solo_in.leave()
    harness.clock.advance(1)
    assert solo.received == [] and harness.clock.getDelayedCalls() == []


def test_roster_lists_the_mirror_first(harness):
    _, solo_in = harness.join("solo", session="mirror")
    assert [entry.door for entry in solo_in.welcome.roster] == ["mirror", "test"]
    assert solo_in.welcome.mirror


# --- credentials that prove the passphrase without carrying it ------------------

def digest_proof(session_passphrase, player="ann", realm="netgateway"):
    """A SIP digest response made with ``session_passphrase`` (what a softphone sends)."""
    from gateway.protocols.sip import digest
    nonce = "5f0.000000000001.abc"
    response = digest.response_digest("MD5", player, realm, session_passphrase, "REGISTER",
                                      "sip:127.0.0.1", nonce)
    credentials = digest.parse_credentials(
        f'Digest username="{player}", realm="{realm}", nonce="{nonce}",'
        f' uri="sip:127.0.0.1", response="{response}"')
    return digest.DigestProof(player, realm, "REGISTER", credentials)


def test_a_digest_proof_joins_a_session_created_at_run_time_but_never_creates_one(harness):
    _, creator = harness.join("creator", session="jam", passphrase=NEW_PASS)
    proof = digest_proof(NEW_PASS)
    assert proof.passphrase is None and proof.proves_passphrase
    assert harness.bus.check(harness.request("ann", session="jam", credential=proof)) is None
    harness.join(RecordingMember("ann"), session="jam", credential=proof)
    assert harness.names("jam") == ["creator", "ann"]
    assert harness.refusal("eve", session="jam", credential=digest_proof("wrong but long enough")
                           ).reason == values.WRONG_PASSPHRASE
    assert harness.refusal("bob", session="nowhere", credential=digest_proof(NEW_PASS)
                           ).reason == values.UNKNOWN_SESSION
    assert harness.bus.session_view("nowhere") is None


def test_credentials_that_prove_nothing_still_reach_declared_sessions_only(harness):
    harness.join("creator", session="jam", passphrase=NEW_PASS)
    assert harness.refusal("mac", session="jam", credential=AllowedAddress(),
                           source="127.0.0.5").reason == values.UNKNOWN_SESSION
    assert harness.refusal("bridge", session="jam", credential=Verified()
                           ).reason == values.UNKNOWN_SESSION
    harness.join(RecordingMember("digest"), credential=digest_proof(DEMO_PASS))
    assert harness.names() == ["digest"]
