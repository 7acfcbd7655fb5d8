"""The RTP-MIDI door's member adapter against a recording bus: what goes on its wire.

The door runs on the in-memory UDP network of tests/rtpmidi/test_door.py
(MemoryReactor, a task.Clock) with AppleMIDI peers built from the packet
classes (RemotePeer). AppleMIDI must answer an invitation at once, so the
door asks ``bus.check`` and ``bus.session_view`` on the control-port IN and
``bus.join`` only when the data port has joined too; the recording bus
answers each as the test says.
"""

import struct
import types

import pytest
from zope.interface.verify import verifyObject

from gateway.bus import values
from gateway.bus.local import DropCounters
from gateway.bus.values import AllowedAddress, JoinRequest, Refusal, RosterEntry, Verified
from gateway.config import parse
from gateway.interfaces import IMember
from gateway.midi import MidiEvent
from gateway.protocols.rtpmidi import applemidi, door as rtpdoor
from gateway.protocols.rtpmidi.applemidi import Sync
from gateway.protocols.rtpmidi.journal_receiver import JournalReceiver
from gateway.protocols.rtpmidi.payload import PAYLOAD_TYPE, RtpMidiPacket, section_of_list
from gateway.protocols.rtpmidi.session import CLOCK_RATE
from gateway.protocols.rtpmidi.stream import RTP_MIDI_LIST, prepare
from tests.bus.recording import RecordingBus
from tests.rtpmidi.test_door import GATEWAY_PORT, MemoryReactor, RemotePeer

ALICE = RosterEntry(7, "alice", "websocket")
# Two note-ons as a peer may send them: without running status (the gateway's
# own encoder would write 90 3c 64 00 3e 5a).
PLAIN_LIST = b"\x90\x3c\x64\x00\x90\x3e\x5a"


class Gateway:
    """An RtpMidiDoor serving session demo on GATEWAY_PORT, its bus a RecordingBus."""

    def __init__(self, rtpmidi=None):
        self.reactor = MemoryReactor()
        self.bus = RecordingBus()
        self.bus.set_view("demo", max_members=8)
        section = {"sessions": [{"session": "demo", "port": GATEWAY_PORT}]}
        section.update(rtpmidi or {})
        config = parse({"sessions": [{"name": "demo", "passphrase": "twenty characters or more",
                                      "allow_addresses": ["127.0.0.0/8"]}],
                        "web": {"enabled": False}, "rtpmidi": section})
        self.drops = DropCounters()
        context = types.SimpleNamespace(config=config, reactor=self.reactor, bus=self.bus,
                                        drops=self.drops, metrics=None)
        self.door = rtpdoor.make_service(config.doors["rtpmidi"], context)
        self.door.startService()
        [self.endpoint] = self.door.endpoints

    def peer(self, port=7000, ssrc=0x5151, name="remote", host="127.0.0.1"):
        return RemotePeer(self.reactor, host=host, port=port, ssrc=ssrc, name=name)

    def joined(self, peer):
        """``peer`` invites, the bus admits it; return its membership."""
        peer.join()
        [pending] = self.bus.pending(peer.name)
        return pending.accept()

    def wire(self):
        """Every datagram the door sent since the last call."""
        sent, self.reactor.sent = self.reactor.sent, []
        return sent


def commands(data):
    return [applemidi.parse_control(datagram).command for datagram in data]


def midi_packets(peer):
    return [RtpMidiPacket.parse(data) for data in peer.data_received() if data[:2] != b"\xff\xff"]


def rtp(peer, section):
    """An RTP-MIDI packet from ``peer`` with a ready command section."""
    peer.sequence += 1
    return struct.pack("!BBHII", 0x80, PAYLOAD_TYPE, peer.sequence, peer.ticks(),
                       peer.ssrc) + section


# --- joining ------------------------------------------------------------------

def test_invitation_is_checked_with_the_peers_address_and_name_then_joined_by_name(gateway):
    peer = gateway.peer(name="mac")
    control_ok, data_ok = peer.join()
    assert control_ok.command == data_ok.command == b"OK"
    # The name is checked before the OK, so a name the bus refuses is answered NO.
    assert gateway.bus.checks == [JoinRequest("demo", "mac", "rtpmidi",
                                              AllowedAddress(), "127.0.0.1")]
    # Asked once whether the session is full, once for the names taken in it.
    assert gateway.bus.view_requests == ["demo", "demo"]
    [pending] = gateway.bus.joins
    assert pending.request == JoinRequest("demo", "mac", "rtpmidi", AllowedAddress(),
                                          "127.0.0.1")
    verifyObject(IMember, pending.member)
    membership = pending.accept()
    assert pending.member.membership is membership


def test_a_nameless_peer_is_numbered_when_the_default_name_is_taken(gateway):
    default = rtpdoor.DEFAULT_PEER_NAME
    gateway.bus.set_view("demo", roster=[RosterEntry(3, default, "rtpmidi")])
    peer = gateway.peer(name="")
    control_ok, data_ok = peer.join()
    assert control_ok.command == data_ok.command == b"OK"
    [pending] = gateway.bus.joins
    assert pending.request.name == f"{default} 2"


def test_a_second_mac_with_the_same_session_name_is_numbered_not_refused(gateway):
    gateway.bus.set_view("demo", roster=[RosterEntry(3, "Session 1", "rtpmidi")])
    control_ok, data_ok = gateway.peer(name="Session 1").join()
    assert control_ok.command == data_ok.command == b"OK"
    [pending] = gateway.bus.joins
    assert pending.request.name == "Session 1 2"


@pytest.mark.parametrize("reason", values.REFUSAL_REASONS)
def test_a_refused_check_answers_the_invitation_no(gateway, reason):
    gateway.bus.answer_checks(Refusal(reason, f"no, because {reason}"))
    peer = gateway.peer(host="192.0.2.7")
    gateway.reactor.inject(GATEWAY_PORT, peer.exchange(b"IN"), peer.control)
    [answer] = peer.control_answers()
    assert (answer.command, answer.token) == (b"NO", peer.token)
    assert gateway.bus.checks[0].source == "192.0.2.7"
    assert gateway.bus.joins == [] and gateway.endpoint.members == {}
    assert gateway.drops.get("rtpmidi", "invitation_refused") == 1
    # The data-port IN that would follow finds no invitation to complete.
    gateway.reactor.inject(GATEWAY_PORT + 1, peer.exchange(b"IN"), peer.data)
    assert commands(peer.data_received()) == [b"NO"] and gateway.bus.joins == []


def test_a_full_session_answers_the_invitation_no(gateway):
    gateway.bus.set_view("demo", max_members=1, roster=[ALICE])
    peer = gateway.peer()
    gateway.reactor.inject(GATEWAY_PORT, peer.exchange(b"IN"), peer.control)
    assert [answer.command for answer in peer.control_answers()] == [b"NO"]
    assert gateway.bus.joins == []
    gateway.bus.set_view("demo", max_members=2, roster=[ALICE])
    peer.join()
    assert len(gateway.bus.joins) == 1


@pytest.mark.parametrize("reason", values.REFUSAL_REASONS)
def test_a_refused_join_ends_the_peer_with_bye_on_both_ports(gateway, reason):
    peer = gateway.peer()
    peer.join()
    assert gateway.wire() == []
    gateway.bus.joins[0].refuse(reason)
    sent = gateway.wire()
    assert [(commands([data]), addr) for _, data, addr in sent] == [
        ([b"BY"], peer.control), ([b"BY"], peer.data)]
    assert gateway.endpoint.members == {} and gateway.endpoint.session.peers == []


def test_a_membership_that_arrives_after_bye_is_left(gateway):
    peer = gateway.peer()
    peer.join()
    peer.bye()
    membership = gateway.bus.joins[0].accept()
    assert membership.left == ["left while joining"]
    assert gateway.wire() == []                  # the peer said BY: nothing more to say
    peer.send_midi([b"\x90\x3c\x64"])
    assert membership.published == []


def test_a_refusal_that_arrives_after_bye_sends_nothing(gateway):
    peer = gateway.peer()
    peer.join()
    peer.bye()
    gateway.bus.joins[0].refuse(values.SESSION_FULL)
    assert gateway.wire() == [] and gateway.endpoint.members == {}


def test_a_peer_the_gateway_invited_joins_as_verified():
    gateway = Gateway({"invite": [{"session": "demo", "host": "127.0.0.1", "port": 7100}]})
    peer = gateway.peer(port=7100, ssrc=0xAAAA, name="pymidi")
    [invitation] = peer.control_answers()
    peer.token = invitation.token
    gateway.reactor.inject(GATEWAY_PORT, peer.exchange(b"OK"), peer.control)
    assert commands(peer.data_received()) == [b"IN"]
    gateway.reactor.inject(GATEWAY_PORT + 1, peer.exchange(b"OK"), peer.data)
    assert gateway.bus.checks == []            # the config named this peer
    [pending] = gateway.bus.joins
    assert pending.request == JoinRequest("demo", "pymidi", "rtpmidi", Verified(), "127.0.0.1")
    gateway.door.stopService()


# --- what the bus sends --------------------------------------------------------

@pytest.mark.parametrize("change", [values.JOINED, values.LEFT, values.UPDATED])
def test_roster_notices_send_nothing(gateway, change):
    peer = gateway.peer()
    membership = gateway.joined(peer)
    gateway.wire()
    gateway.bus.announce(change, ALICE, [membership.entry, ALICE])
    assert gateway.wire() == []


def test_released_note_offs_go_on_the_wire(gateway):
    peer = gateway.peer()
    gateway.joined(peer)
    peer.data_received()
    now = gateway.reactor.seconds()
    offs = [MidiEvent(b"\x80\x3c\x40", now), MidiEvent(b"\x81\x40\x40", now),
            MidiEvent(b"\xb0\x40\x00", now)]
    gateway.bus.fan_out(offs, ALICE, released=True)
    [packet] = midi_packets(peer)
    assert [message for _, message in packet.commands] == [event.data for event in offs]


def test_the_session_clock_goes_on_the_wire_and_carries_the_journal_of_the_notes(gateway):
    peer = gateway.peer()
    gateway.joined(peer)
    peer.data_received()
    clock = RosterEntry(-1, "clock", "clock")
    now = gateway.reactor.seconds()
    gateway.bus.fan_out([MidiEvent(b"\x90\x3c\x64", now)], ALICE)
    gateway.bus.fan_out([MidiEvent(b"\x80\x3c\x40", now)], ALICE)       # lost below
    for _ in range(3):
        gateway.bus.fan_out([MidiEvent(b"\xf8", now)], clock)
    sent = [data for data in peer.data_received() if data[:2] != b"\xff\xff"]
    note_on, _lost_note_off, *clocks = sent
    # A lone clock: Z=1, a zero delta, F8 (node-rtpmidi loses one-octet lists); J=1.
    assert [data[12] & 0xBF for data in clocks] == [0x22] * 3
    assert all(data[13:15] == b"\x00\xf8" for data in clocks)
    receiver = JournalReceiver()
    receiver.receive(RtpMidiPacket.parse(note_on))
    # The note-off's packet was lost: the next clock's journal ends the note first.
    assert receiver.receive(RtpMidiPacket.parse(clocks[0])) == [(0, b"\x80\x3c\x00"),
                                                                 (0, b"\xf8")]
    assert receiver.receive(RtpMidiPacket.parse(clocks[1])) == [(0, b"\xf8")]


def test_peers_of_one_session_share_one_encoding(gateway, monkeypatch):
    peers = [gateway.peer(port=port, ssrc=port, name=f"peer{port}") for port in (7000, 7002)]
    for peer in peers:
        gateway.joined(peer)
        peer.data_received()
    prepared = []

    def counting(events, clock_rate, midi_list=None):
        prepared.append(events)
        return prepare(events, clock_rate, midi_list)

    monkeypatch.setattr(rtpdoor, "prepare", counting)
    gateway.bus.fan_out([MidiEvent(b"\x90\x3c\x64", gateway.reactor.seconds())], ALICE)
    assert len(prepared) == 1
    for peer in peers:
        [packet] = midi_packets(peer)
        assert packet.commands == [(0, b"\x90\x3c\x64")]


def test_a_delivered_midi_list_goes_on_the_wire_as_it_came(gateway):
    peer = gateway.peer()
    gateway.joined(peer)
    peer.data_received()
    now = gateway.reactor.seconds()
    events = [MidiEvent(b"\x90\x3c\x64", now), MidiEvent(b"\x90\x3e\x5a", now)]
    reencoded = RtpMidiPacket.parse(rtp(peer, prepare(events, CLOCK_RATE)[0][0].section)
                                    ).midi_list
    assert reencoded != PLAIN_LIST
    gateway.bus.fan_out(events, ALICE, encodings={RTP_MIDI_LIST: PLAIN_LIST})
    [packet] = midi_packets(peer)
    assert packet.midi_list == PLAIN_LIST
    gateway.bus.fan_out(events, ALICE)              # no list: the door encodes the events
    [packet] = midi_packets(peer)
    assert packet.midi_list == reencoded


# --- what the peer does ----------------------------------------------------------

def test_a_received_midi_list_is_published_with_the_events_when_forwardable(gateway):
    peer = gateway.peer()
    membership = gateway.joined(peer)
    gateway.reactor.inject(GATEWAY_PORT + 1, rtp(peer, section_of_list(PLAIN_LIST)), peer.data)
    [(events, encodings)] = membership.published
    assert [event.data for event in events] == [b"\x90\x3c\x64", b"\x90\x3e\x5a"]
    assert encodings == {RTP_MIDI_LIST: PLAIN_LIST}
    # A system message makes the list unforwardable: the events go alone.
    peer.send_midi([b"\xf0\x7d\x01\xf7", b"\x80\x3c\x40"])
    events, encodings = membership.published[1]
    assert [event.data for event in events] == [b"\xf0\x7d\x01\xf7", b"\x80\x3c\x40"]
    assert encodings is None


def test_a_list_published_by_one_peer_reaches_another_unchanged(gateway):
    sender, listener = gateway.peer(port=7000, ssrc=1), gateway.peer(port=7002, ssrc=2)
    published = gateway.joined(sender)
    receiving = gateway.joined(listener)
    listener.data_received()
    gateway.reactor.inject(GATEWAY_PORT + 1, rtp(sender, section_of_list(PLAIN_LIST)),
                           sender.data)
    [(events, encodings)] = published.published
    gateway.bus.fan_out(events, published.entry, encodings=encodings, to=[receiving.member])
    [packet] = midi_packets(listener)
    assert packet.midi_list == PLAIN_LIST


def test_clock_sync_reports_latency_and_touches(gateway):
    peer = gateway.peer()
    membership = gateway.joined(peer)
    ts1 = peer.ticks()
    gateway.reactor.inject(GATEWAY_PORT + 1, bytes(Sync(peer.ssrc, 0, ts1)), peer.data)
    [ck1] = [applemidi.parse_control(data) for data in peer.data_received()]
    assert ck1.count == 1 and membership.latencies == []
    gateway.reactor.advance(0.004)
    gateway.reactor.inject(GATEWAY_PORT + 1,
                           bytes(Sync(peer.ssrc, 2, ts1, ck1.ts2, peer.ticks())), peer.data)
    assert membership.latencies == [4.0]
    assert membership.touches == 1


@pytest.mark.parametrize("reason", ["kicked", "idle", "error", "shutdown"])
def test_disconnect_ends_the_peer_with_bye_on_both_ports(gateway, reason):
    peer = gateway.peer()
    membership = gateway.joined(peer)
    gateway.wire()
    gateway.bus.kick(membership, reason)
    assert [(commands([data]), addr) for _, data, addr in gateway.wire()] == [
        ([b"BY"], peer.control), ([b"BY"], peer.data)]
    assert gateway.endpoint.members == {}
    peer.send_midi([b"\x90\x3c\x64"])
    assert membership.published == []
