"""The lines the bus writes about refusals, throttling and dropped events.

They are what an operator and fail2ban read (deploy/fail2ban), so their
format is tested as twisted.logger renders it, through a real Logger.
"""

import pytest
from twisted.internet import task
from twisted.logger import Logger, formatEvent

from gateway.bus.local import DropCounters, LocalBus
from gateway.bus import values
from gateway.bus.values import JoinRefused, JoinRequest, Passphrase, Refusal, Verified
from gateway.config import parse
from gateway.midi import MidiEvent
from tests.members import RecordingMember, result_of

DEMO_PASS = "twenty characters or more"
WRONG_PASS = "a wrong guess that is long"
INTERVAL = 10.0


class Gateway:
    """A LocalBus on ``task.Clock`` whose log lines are kept as rendered text."""

    def __init__(self, **limits):
        config = parse({"sessions": [{"name": "demo", "passphrase": DEMO_PASS}],
                        "limits": limits, "logging": {"drop_log_interval": INTERVAL}})
        self.clock = task.Clock()
        self.events = []
        self.bus = LocalBus(config, self.clock, DropCounters(),
                            log=Logger(namespace="netgateway", observer=self.events.append))

    def lines(self, containing=""):
        return [formatEvent(event) for event in self.events
                if containing in formatEvent(event)]

    def join(self, name, passphrase=DEMO_PASS, source="203.0.113.5", session="demo"):
        request = JoinRequest(session, name, "websocket", Passphrase(passphrase), source)
        member = RecordingMember(name)
        joining = self.bus.join(request, member)
        failures = []
        joining.addErrback(lambda failure: failures.append(failure.trap(JoinRefused)))
        return member, (None if failures else result_of(joining))


@pytest.mark.parametrize("source", ["203.0.113.5", "2001:db8::5"])
def test_a_refusal_line_names_the_peer_door_session_and_reason_never_the_passphrase(source):
    gateway = Gateway()
    gateway.join("mallory", WRONG_PASS, source)
    assert gateway.lines("refused") == [
        f"netgateway: refused join from {source} door=websocket session='demo'"
        " reason=wrong_passphrase name='mallory'"]
    assert not gateway.lines(WRONG_PASS) and not gateway.lines(DEMO_PASS)


def test_an_ipv4_peer_of_a_dual_stack_door_is_one_peer_with_its_plain_address():
    gateway = Gateway(join_failures_before_throttle=1)
    gateway.join("mallory", WRONG_PASS, "::ffff:203.0.113.5")    # a websocket door on "::"
    gateway.join("mallory", WRONG_PASS, "203.0.113.5")           # a UDP door on 0.0.0.0
    assert [line.split(" door=")[0] for line in gateway.lines("join from")] == [
        "netgateway: refused join from 203.0.113.5", "netgateway: throttled join from 203.0.113.5"]
    gateway.join("alice", source="::ffff:203.0.113.5")
    assert gateway.bus.refusals["throttled"] == 1


def test_a_peer_cannot_forge_a_line_or_an_address_with_its_session_or_name():
    gateway = Gateway(allow_session_creation=False)
    gateway.join("x\nnetgateway: refused join from 198.51.100.1", WRONG_PASS,
                 session="demo' reason=wrong_passphrase\n")
    [line] = gateway.lines("refused")
    assert "\n" not in line
    # The name breaks the name rule, which is looked at first.
    assert line.startswith("netgateway: refused join from 203.0.113.5 door=websocket"
                           " session=\"demo' reason=wrong_passphrase\\n\" reason=bad_name"
                           " name='x\\nnetgateway: refused join from 198.51.100.1'")


def test_the_line_that_starts_a_back_off_says_how_long():
    gateway = Gateway(join_failures_before_throttle=2, join_throttle_seconds=4.0)
    for _ in range(3):
        gateway.join("mallory", WRONG_PASS)
    assert gateway.lines("throttled") == [
        "netgateway: throttled join from 203.0.113.5 door=websocket session='demo' for 4s"]
    gateway.join("mallory", WRONG_PASS)        # inside the back-off: refused as throttled
    assert gateway.lines("reason=throttled")


def test_refusals_log_once_per_peer_and_reason_per_interval_whatever_the_session_name():
    gateway = Gateway(join_failures_before_throttle=1000, allow_session_creation=False)
    for attempt in range(50):
        gateway.join("mallory", WRONG_PASS, session=f"guess {attempt}")
        gateway.join("mallory", WRONG_PASS)
        gateway.clock.advance(0.1)
    assert [line.split(" name=")[0].rsplit(" ", 1)[1] for line in gateway.lines("refused")] \
        == ["reason=unknown_session", "reason=wrong_passphrase"]
    gateway.join("trudy", WRONG_PASS, source="203.0.113.6")       # another peer: its own line
    assert len(gateway.lines("refused join from 203.0.113.6")) == 1
    # When the interval ends, even with no drop after it, a summary says what was left out.
    gateway.clock.advance(INTERVAL)
    summaries = gateway.lines("more like this not logged")
    assert [line.split(" (")[-1] for line in summaries] == [
        "49 more like this not logged)", "49 more like this not logged)"], summaries
    assert "session='guess 49'" in summaries[0]          # the last one's text
    gateway.clock.advance(INTERVAL)                       # nothing more left out: quiet
    assert len(gateway.lines("more like this")) == 2
    gateway.join("mallory", WRONG_PASS)
    assert gateway.lines("refused")[-1].endswith("name='mallory'")


def test_a_correct_join_writes_no_refusal_line():
    gateway = Gateway()
    _, membership = gateway.join("alice")
    assert membership is not None
    assert not gateway.lines("refused") and not gateway.lines("throttled")


def test_rate_limited_events_are_logged_once_per_member_per_interval():
    gateway = Gateway(events_per_second=5)
    _, alice = gateway.join("alice")
    _, bob = gateway.join("bob", source="203.0.113.6")
    notes = [MidiEvent(bytes([0x90, 60 + index, 100])) for index in range(8)]
    alice.publish(notes)                       # 5 pass, 3 dropped
    bob.publish(notes)
    gateway.clock.advance(1.0)
    alice.publish(notes)
    assert gateway.lines("dropped") == [
        "netgateway: dropped 3 events from websocket member 'alice' in session 'demo':"
        " rate_limited (limits.events_per_second is 5)",
        "netgateway: dropped 3 events from websocket member 'bob' in session 'demo':"
        " rate_limited (limits.events_per_second is 5)"]
    assert gateway.bus.drops.get("websocket", "rate_limited") == 9
    gateway.clock.advance(INTERVAL)
    assert gateway.lines("dropped")[-1] == (
        "netgateway: dropped 3 events from websocket member 'alice' in session 'demo':"
        " rate_limited (limits.events_per_second is 5) (1 more like this not logged)")


def test_a_refusal_a_door_decided_itself_is_counted_throttled_and_logged_the_same_way():
    gateway = Gateway(join_failures_before_throttle=1)
    request = JoinRequest("demo", "sfront client", "sip", Verified(), "203.0.113.5")
    for _ in range(2):
        gateway.bus.refused(request, Refusal(values.WRONG_PASSPHRASE, "bad digest"))
    assert gateway.lines("refused")[0] == (
        "netgateway: refused join from 203.0.113.5 door=sip session='demo'"
        " reason=wrong_passphrase name='sfront client'")
    assert gateway.lines("throttled join from 203.0.113.5 door=sip")
    assert gateway.bus.refusals[values.WRONG_PASSPHRASE] == 2
    _, websocket = gateway.join("alice")              # the back-off holds in every door
    assert websocket is None and gateway.bus.refusals[values.THROTTLED] == 1
