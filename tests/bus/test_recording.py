"""The recording bus the door suites (tests/doors) run against keeps the contract's shape."""

import pytest
from twisted.internet import defer
from zope.interface.verify import verifyObject

from gateway.bus import values
from gateway.bus.values import JoinRefused, JoinRequest, Passphrase, Refusal, RosterEntry
from gateway.interfaces import IMembership, ISessionBus
from gateway.midi import MidiEvent
from tests.bus.recording import RecordingBus
from tests.members import RecordingMember, result_of

REQUEST = JoinRequest("demo", "alice", "test", Passphrase("twenty characters or more"),
                      "198.51.100.7")


def test_bus_and_membership_provide_their_interfaces():
    bus = RecordingBus()
    verifyObject(ISessionBus, bus)
    bus.join(REQUEST, RecordingMember("alice"))
    membership = bus.joins[0].accept()
    verifyObject(IMembership, membership)
    assert membership.welcome.entry == membership.entry == RosterEntry(1, "alice", "test")


def test_join_fires_only_when_the_test_says():
    bus = RecordingBus()
    joining = bus.join(REQUEST, RecordingMember("alice"))
    assert not joining.called and bus.joins[0].request == REQUEST
    membership = bus.joins[0].accept(roster=[RosterEntry(9, "bob", "rtpmidi")])
    assert result_of(joining) is membership
    assert [entry.name for entry in membership.welcome.roster] == ["bob", "alice"]


@pytest.mark.parametrize("reason", values.REFUSAL_REASONS)
def test_refusal_is_a_join_refused_failure(reason):
    bus = RecordingBus()
    joining = bus.join(REQUEST, RecordingMember("alice"))
    bus.joins[0].refuse(reason, "no")
    with pytest.raises(JoinRefused) as refused:
        result_of(joining)
    assert refused.value.refusal == Refusal(reason, "no")


def test_a_cancelled_join_still_makes_a_membership_nobody_hears_of():
    bus = RecordingBus()
    joining = bus.join(REQUEST, RecordingMember("alice"))
    joining.cancel()
    with pytest.raises(defer.CancelledError):
        result_of(joining)
    membership = bus.joins[0].accept()
    assert bus.joins[0].cancelled and membership.active and bus.active() == [membership]


def test_check_and_session_view_answer_as_set_and_record_the_question():
    bus = RecordingBus()
    assert bus.check(REQUEST) is None and bus.session_view("demo") is None
    refusal = Refusal(values.THROTTLED, "wait")
    bus.answer_checks(lambda request: refusal if request.source == "198.51.100.7" else None)
    view = bus.set_view("demo", max_members=1, roster=[RosterEntry(2, "bob", "test")])
    assert bus.check(REQUEST) == refusal
    assert bus.check(REQUEST._replace(source="192.0.2.1")) is None
    assert bus.session_view("demo") is view and view.full
    assert bus.checks == [REQUEST, REQUEST, REQUEST._replace(source="192.0.2.1")]
    assert bus.view_requests == ["demo", "demo"]


def test_fan_out_gives_every_member_the_same_delivery_and_kick_removes_first():
    bus = RecordingBus()
    alice, bob = RecordingMember("alice"), RecordingMember("bob")
    bus.join(REQUEST, alice)
    bus.join(REQUEST._replace(name="bob"), bob)
    alice_in, bob_in = bus.accept_all()
    delivery = bus.fan_out([MidiEvent(b"\x80\x3c\x00")], bob_in.entry, released=True)
    assert alice.deliveries == bob.deliveries == [delivery] and delivery.released
    bus.kick(alice_in, "idle")
    assert alice.disconnected == "idle" and bus.active() == [bob_in]
    assert alice_in.left == []          # the bus took it out; the door did not leave
