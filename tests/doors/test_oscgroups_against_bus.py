"""The OSCgroups door's member adapter against a recording bus: what goes on its wire.

The door runs on the in-memory UDP network of tests/oscgroups/test_door.py
(FakeNetwork, a task.Clock) with client programs built on the real
GroupClient core (FakeClientProgram). The rendezvous server asks
``bus.check`` for a bridged group's password and ``bus.session_view`` for
its limit when a user registers; the bridge asks ``bus.join`` when the server
lists a peer. The recording bus answers each as the test says.
"""

import types

import pytest
from zope.interface.verify import verifyObject

from gateway.bus import values
from gateway.bus.local import DropCounters
from gateway.bus.values import JoinRequest, Refusal, RosterEntry, Verified
from gateway.config import parse
from gateway.interfaces import IMember
from gateway.midi import MidiEvent
from gateway.protocols.oscgroups import wire
from gateway.protocols.oscgroups.door import GroupPassword, make_service
from tests.bus.recording import RecordingBus
from tests.oscgroups.osc_bytes import osc_message
from tests.oscgroups.test_door import (
    BRIDGE_PORT, DEMO_PASSPHRASE, HOST, SERVER_PORT, TIMEOUT, FakeClientProgram, FakeNetwork,
    alive_bundle, statuses,
)

WENDY = RosterEntry(7, "wendy", "websocket")
BOB = RosterEntry(8, "bob", "oscgroups")        # another OSCgroups peer of the group
STRANGER = ("198.51.100.9", 5000)


class Gateway:
    """An OscGroupsDoor bridging group demo into session demo, its bus a RecordingBus."""

    def __init__(self):
        self.network = FakeNetwork()
        self.bus = RecordingBus()
        self.bus.set_view("demo", max_members=8)
        config = parse({"sessions": [{"name": "demo", "passphrase": DEMO_PASSPHRASE}],
                        "web": {"enabled": False},
                        "oscgroups": {"host": HOST, "port": SERVER_PORT, "timeout": TIMEOUT,
                                      "relay": {"policy": "never"},
                                      "bridge": {"port": BRIDGE_PORT, "groups": ["demo"]}}})
        self.drops = DropCounters()
        context = types.SimpleNamespace(config=config, reactor=self.network, bus=self.bus,
                                        drops=self.drops, metrics=None)
        self.door = make_service(config.doors["oscgroups"], context)
        self.door.startService()
        self.server_port = self.network.ports[(HOST, SERVER_PORT)]
        self.bridge_port = self.network.ports[(HOST, BRIDGE_PORT)]
        self.run_until(lambda: "demo" in self.door.server.groups)    # the bridge registered

    def run_until(self, condition, seconds=15.0, step=0.1):
        for _ in range(round(seconds / step)):
            if condition():
                return
            self.network.advance(step)
        assert condition(), f"not within {seconds} s"

    def listed(self, name, port):
        """Start client program ``name``; return it and its join, once the bridge asks."""
        client = FakeClientProgram(self.network, name, port)
        self.run_until(lambda: self.bus.pending(name))
        [pending] = self.bus.pending(name)
        return client, pending

    def joined(self, name, port):
        """A client program the bus admitted, with a path from the bridge to it."""
        client, pending = self.listed(name, port)
        membership = pending.accept()
        self.run_until(lambda: self.door.bridge.path(name) is not None)
        return client, membership

    def register(self, user, group_password, source=STRANGER):
        """A user_alive + group query from ``source`` straight to the server: its statuses."""
        self.server_port.protocol.datagramReceived(alive_bundle(user, group_password), source)
        reply, destination = self.server_port.sent[-1]
        assert destination == source
        return statuses(reply)

    def door_sent(self):
        return list(self.server_port.sent) + list(self.bridge_port.sent)


def refusing(source, refusal):
    return lambda request: refusal if request.source == source[0] else None


# --- registering and joining ----------------------------------------------------

def test_the_group_password_is_checked_with_the_bus_by_the_askers_address(gateway):
    assert gateway.register("mallory", DEMO_PASSPHRASE) == ["ok", "ok"]
    asked = [request for request in gateway.bus.checks if request.source == STRANGER[0]]
    expected = JoinRequest("demo", "oscgroups peer", "oscgroups",
                           GroupPassword(wire.password_hash(DEMO_PASSPHRASE)), STRANGER[0])
    assert asked == [expected, expected]             # its user_alive, then its group query
    assert "mallory" in gateway.door.server.groups["demo"].members


@pytest.mark.parametrize("user", ["", " ", "mallory\nnetgateway: forged", "\u202eyrollam"])
def test_a_bad_user_name_is_refused_at_registration_and_never_reaches_the_bus(gateway, user):
    checks = len(gateway.bus.checks)
    assert gateway.register(user, DEMO_PASSPHRASE) == ["bad user name"]
    assert gateway.drops.get("oscgroups", "refused_bad_user_name") == 1
    assert user not in gateway.door.server.users
    assert len(gateway.bus.checks) == checks and gateway.bus.pending(user) == []
    # The bundle's group query gets no list either: the source was refused.
    assert gateway.drops.get("oscgroups", "refused_source") == 1


@pytest.mark.parametrize("reason", values.REFUSAL_REASONS)
def test_a_refused_check_answers_wrong_password(gateway, reason):
    gateway.bus.answer_checks(refusing(STRANGER, Refusal(reason, "no")))
    assert gateway.register("mallory", DEMO_PASSPHRASE) == ["ok", "wrong password"]
    assert "mallory" not in gateway.door.server.groups["demo"].members
    assert gateway.drops.get("oscgroups", "refused_wrong_group_password") == 1


def test_a_full_session_answers_user_limit_reached(gateway):
    gateway.bus.set_view("demo", max_members=1, roster=[WENDY])
    assert gateway.register("mallory", DEMO_PASSPHRASE) == ["ok", "user limit reached"]
    assert gateway.drops.get("oscgroups", "refused_session_full") == 1
    gateway.bus.set_view("demo", max_members=2, roster=[WENDY])
    assert gateway.register("mallory", DEMO_PASSPHRASE) == ["ok", "ok"]


def test_a_listed_peer_whose_join_is_pending_counts_towards_the_limit(gateway):
    gateway.bus.set_view("demo", max_members=2, roster=[WENDY])
    gateway.listed("alice", 7000)                   # the bus has not answered yet
    assert gateway.register("mallory", DEMO_PASSPHRASE) == ["ok", "user limit reached"]


def test_a_listed_peer_joins_as_verified_from_its_host(gateway):
    _, pending = gateway.listed("alice", 7000)
    assert pending.request == JoinRequest("demo", "alice", "oscgroups", Verified(), HOST)
    verifyObject(IMember, pending.member)
    membership = pending.accept()
    assert pending.member.membership is membership


@pytest.mark.parametrize("reason", values.REFUSAL_REASONS)
def test_a_refused_join_is_forgotten_and_tried_again_at_the_next_listing(gateway, reason):
    _, first = gateway.listed("alice", 7000)
    first.refuse(reason)
    assert ("alice", "demo") not in gateway.door.members
    gateway.run_until(lambda: gateway.bus.pending("alice"), seconds=8.0)
    [again] = gateway.bus.pending("alice")
    assert again.request == first.request and again.member is not first.member


def test_a_membership_that_arrives_after_the_peer_is_gone_is_left(gateway):
    alice, pending = gateway.listed("alice", 7000)
    alice.crash()
    gateway.run_until(lambda: not gateway.door.members, seconds=TIMEOUT * 1.1 + 15, step=0.3)
    membership = pending.accept()
    assert membership.left == ["no longer listed while joining"]
    assert gateway.door.members == {}


# --- what the bus sends --------------------------------------------------------

@pytest.mark.parametrize("change", [values.JOINED, values.LEFT, values.UPDATED])
def test_roster_notices_send_nothing(gateway, change):
    _, membership = gateway.joined("alice", 7000)
    before = gateway.door_sent()
    gateway.bus.announce(change, WENDY, [WENDY, membership.entry])
    assert gateway.door_sent() == before


@pytest.mark.parametrize("source, released, sent", [
    (WENDY, False, True), (WENDY, True, True),
    (BOB, True, True),              # note-offs for an OSC peer that left reach the others
    (BOB, False, False),            # OSC peers of a group hear each other directly
])
def test_which_deliveries_go_to_an_osc_peer(gateway, source, released, sent):
    alice, membership = gateway.joined("alice", 7000)
    now = gateway.network.seconds()
    gateway.bus.fan_out([MidiEvent(b"\x80\x3c\x40", now), MidiEvent(b"\x81\x40\x40", now)],
                        source, released=released)
    gateway.network.run(0.2)
    expected = [wire.Message("/midi/noteoff", "iii", (1, 60, 64)),
                wire.Message("/midi/noteoff", "iii", (2, 64, 64))]
    assert alice.app_messages() == (expected if sent else [])


def test_osc_peers_share_one_encoding(gateway):
    alice, _ = gateway.joined("alice", 7000)
    bob, _ = gateway.joined("bob", 7001)
    encode_midi = gateway.door.bridge.encode_midi
    encoded = []
    gateway.door.bridge.encode_midi = lambda messages, tempo: encoded.append(messages) or \
        encode_midi(messages, tempo)
    gateway.bus.fan_out([MidiEvent(b"\x90\x3c\x64", gateway.network.seconds())], WENDY)
    gateway.network.run(0.2)
    assert encoded == [[b"\x90\x3c\x64"]]
    for client in (alice, bob):
        assert client.app_messages() == [wire.Message("/midi/noteon", "iii", (1, 60, 100))]


def test_osc_peers_hear_the_session_clock_and_its_tempo(gateway):
    alice, _ = gateway.joined("alice", 7000)
    clock = RosterEntry(-1, "clock", "clock")
    now = gateway.network.seconds()
    tempo = values.TempoState(132.0, True, 4, 0, now)
    gateway.bus.fan_out([MidiEvent(b"\xfa", now), MidiEvent(b"\xf8", now)], clock, tempo=tempo)
    gateway.bus.fan_out([MidiEvent(b"\xf8", now)], clock)
    gateway.bus.fan_out([MidiEvent(b"\xfc", now)], clock, tempo=tempo._replace(running=False))
    gateway.network.run(0.2)
    heard = [message for message in alice.app_messages(prefix="/")
             if not message.address.startswith("/groupclient")]
    assert heard == [
        wire.Message("/tempo", "f", (132.0,)), wire.Message("/midi/start", "", ()),
        wire.Message("/midi/clock", "", ()), wire.Message("/midi/clock", "", ()),
        wire.Message("/tempo", "f", (132.0,)), wire.Message("/midi/stop", "", ())]


# --- what the peer does ----------------------------------------------------------

def test_what_the_peer_plays_is_published_and_its_traffic_touches(gateway):
    alice, membership = gateway.joined("alice", 7000)
    alice.app_sends(osc_message("/midi/note", "iii", 1, 60, 100))
    gateway.network.run(0.2)
    [(events, encodings)] = membership.published
    assert [event.data for event in events] == [b"\x90\x3c\x64"] and encodings is None
    touches = membership.touches
    gateway.network.run(7)                     # a listing and pings at least
    assert membership.touches > touches


@pytest.mark.parametrize("reason", ["kicked", "idle", "error"])
def test_disconnect_forgets_the_member(gateway, reason):
    alice, membership = gateway.joined("alice", 7000)
    gateway.bus.kick(membership, reason)
    assert ("alice", "demo") not in gateway.door.members
    alice.app_sends(osc_message("/midi/note", "iii", 1, 60, 100))
    gateway.network.run(0.2)
    assert membership.published == []
    assert gateway.drops.get("oscgroups", "not_a_member") == 1
    # Forgotten, not banned: while the server lists it, the next listing joins it afresh.
    gateway.run_until(lambda: gateway.bus.pending("alice"), seconds=8.0)


def test_stopping_the_door_leaves_every_member(gateway):
    _, membership = gateway.joined("alice", 7000)
    gateway.door.stopService()
    assert membership.left == ["gateway stopping"] and gateway.door.members == {}
