"""The SIP door's member adapter against a recording bus: what goes on its wire.

The door runs on the in-memory UDP network of tests/rtpmidi/test_door.py
(MemoryReactor, a task.Clock) with sfront doubles (tests/sip/sfront_double.py)
as clients. A client that proved it knows the passphrase is joined with
``bus.join`` as Verified; the recording bus answers as the test says.
"""

import types

import pytest
from zope.interface.verify import verifyObject

from gateway.bus import values
from gateway.bus.local import DropCounters
from gateway.bus.values import JoinRequest, RosterEntry, Verified
from gateway.config import parse
from gateway.interfaces import IMember
from gateway.midi import MidiEvent
from gateway.protocols.rtpmidi.payload import RtpMidiPacket
from gateway.protocols.rtpmidi.stream import RTP_MIDI_LIST
from gateway.protocols.sip import door as sipdoor, metrics, sfront
from gateway.protocols.sip.message import parse as parse_sip
from tests.bus.recording import RecordingBus
from tests.rtpmidi.test_door import MemoryReactor
from tests.sip.sfront_double import DEMO_PASSPHRASE, SfrontDouble

NOW = 1_800_000_000.0
SIP = ("127.0.0.1", 5060)
MEDIA = 6000
ALICE = RosterEntry(7, "alice", "websocket")
BOB = RosterEntry(8, "bob", "rtpmidi")


class Gateway:
    """A SipDoor serving the declared session demo, its bus a RecordingBus."""

    def __init__(self, sip=None):
        self.reactor = MemoryReactor()
        self.reactor.advance(NOW)
        self.bus = RecordingBus()
        section = {"media": {"host": "127.0.0.5", "port_min": MEDIA, "port_max": MEDIA + 1}}
        section.update(sip or {})
        config = parse({"sessions": [{"name": "demo", "passphrase": DEMO_PASSPHRASE}],
                        "web": {"enabled": False}, "sip": section})
        self.drops = DropCounters()
        context = types.SimpleNamespace(config=config, reactor=self.reactor, bus=self.bus,
                                        drops=self.drops, metrics=None)
        self.door = sipdoor.make_service(config.doors["sip"], context)
        self.door.startService()

    def client(self, port=5004, call_id=6869619084028907834, **options):
        return SfrontDouble(port=port, call_id=call_id, **options)

    def inject(self, local, data, source):
        self.reactor.inject(local, data, source)

    def handshake(self, client):
        for leg, source in ((0, client.rtp_source), (1, client.rtcp_source)):
            self.inject(5060 + leg, client.invite(leg, NOW), source)
            [challenge] = self.reactor.take(source)
            self.inject(5060 + leg, client.invite(leg, NOW, client.challenged(challenge, leg)),
                        source)

    def joined(self, client):
        """``client`` joins and the bus admits it; return its membership."""
        self.handshake(client)
        self.reactor.take(client.rtcp_source)
        [pending] = self.bus.pending(client.login + "@vm")
        membership = pending.accept()
        ok, invite = self.reactor.take(client.rtp_source)
        assert parse_sip(ok).status == 200
        client.member_invite(invite, SIP)
        return membership

    def midi_to(self, client):
        """The MIDI messages of every signed RTP packet sent to ``client`` since the last call."""
        messages = []
        for data in self.reactor.take(client.rtp_source):
            packet = RtpMidiPacket.parse(sfront.verified(client.key, data))
            assert packet.marker and packet.payload_type == 96
            messages += [message for _, message in packet.commands]
        return messages


def test_a_verified_client_joins_as_verified_with_its_login_at_host(gateway):
    client = gateway.client(login="ann")
    gateway.handshake(client)
    [pending] = gateway.bus.joins
    assert pending.request == JoinRequest("demo", "ann@vm", "sip", Verified(), "127.0.0.2")
    verifyObject(IMember, pending.member)
    assert gateway.reactor.take(client.rtp_source) == []    # no answer before the bus's
    membership = pending.accept()
    assert pending.member.membership is membership
    assert [parse_sip(data).status if data.startswith(b"SIP") else "INVITE"
            for data in gateway.reactor.take(client.rtp_source)] == [200, "INVITE"]


def test_a_second_client_of_the_same_login_and_host_is_numbered_not_refused(gateway):
    gateway.bus.set_view("demo", roster=[RosterEntry(3, "ann@vm", "sip")])
    gateway.handshake(gateway.client(login="ann"))
    [pending] = gateway.bus.joins
    # login@host is no name its player chose; the second of them is "ann@vm 2".
    assert pending.request.name == "ann@vm 2"
    assert pending.member.client.name == "ann@vm 2"


@pytest.mark.parametrize("reason, status", [(values.SESSION_FULL, 503), (values.THROTTLED, 503),
                                            (values.WRONG_PASSPHRASE, 403)])
def test_a_refused_join_is_answered_the_way_sfront_understands(gateway, reason, status):
    client = gateway.client()
    gateway.handshake(client)
    gateway.bus.joins[0].refuse(reason)
    [answer] = gateway.reactor.take(client.rtp_source)
    assert parse_sip(answer).status == status
    assert gateway.door.members == {} and gateway.door.server.clients == {}


def test_refusals_of_sfront_s_own_check_are_reported_to_the_bus_without_the_keyed_name(
        gateway):
    stranger = gateway.client(port=5010, call_id=1, passphrase="wrong wrong wrong wrong")
    gateway.inject(5060, stranger.invite(0, NOW), stranger.rtp_source)
    forger = gateway.client(host="127.0.0.3", call_id=2)
    gateway.inject(5060, forger.invite(0, NOW), forger.rtp_source)
    [challenge] = gateway.reactor.take(forger.rtp_source)
    forged = forger.invite(0, NOW, forger.challenged(challenge, 0),
                           key=sfront.session_key("not the passphrase at all"))
    for _ in range(5):           # the server's own throttle answers the fifth unlooked
        gateway.inject(5060, forged, forger.rtp_source)
    assert [(request, refusal.reason) for request, refusal in gateway.bus.refusals] == [
        (JoinRequest("", "sfront client", "sip", Verified(), "127.0.0.2"),
         values.UNKNOWN_SESSION)] + [
        (JoinRequest("demo", "sfront client", "sip", Verified(), "127.0.0.3"),
         values.WRONG_PASSPHRASE)] * 4 + [
        (JoinRequest("demo", "sfront client", "sip", Verified(), "127.0.0.3"),
         values.THROTTLED)]


def test_a_membership_that_arrives_after_the_client_left_is_left(gateway):
    client = gateway.client()
    gateway.handshake(client)
    gateway.inject(5060, client.request("BYE", 0), client.rtp_source)
    membership = gateway.bus.joins[0].accept()
    assert membership.left == ["left while joining"]


def test_what_a_client_plays_is_published_with_its_midi_list(gateway):
    client = gateway.client()
    membership = gateway.joined(client)
    gateway.inject(MEDIA, client.rtp([(0, b"\x90\x3c\x64")]), client.rtp_source)
    [(events, encodings)] = membership.published
    assert [event.data for event in events] == [b"\x90\x3c\x64"]
    assert encodings == {RTP_MIDI_LIST: b"\x90\x3c\x64"}


def test_a_forged_packet_is_counted_and_never_published(gateway):
    client = gateway.client()
    membership = gateway.joined(client)
    forged = client.rtp([(0, b"\x90\x3c\x64")], key=sfront.session_key("x" * 30))
    gateway.inject(MEDIA, forged, client.rtp_source)
    assert membership.published == [] and gateway.drops.get("sip", "bad_signature") == 1


def test_one_fan_out_reaches_every_client_signed_on_its_own_stream(gateway):
    first, second = gateway.client(), gateway.client(port=5006, call_id=4242)
    gateway.joined(first), gateway.joined(second)
    gateway.bus.fan_out([MidiEvent(b"\x90\x40\x50", NOW)], ALICE)
    assert gateway.midi_to(first) == gateway.midi_to(second) == [b"\x90\x40\x50"]


def test_a_client_that_cannot_be_written_to_does_not_stop_the_fan_out(gateway):
    first, second = gateway.client(), gateway.client(port=5006, call_id=4242)
    gateway.joined(first), gateway.joined(second)
    media = gateway.door.media_listeners["demo"].socket
    sendto = media.sendto

    def refuse_first(data, address):
        if address == first.rtp_source:
            raise OSError(101, "Network is unreachable")
        sendto(data, address)
    for member in gateway.door.members.values():
        member._sendto = refuse_first
    gateway.bus.fan_out([MidiEvent(b"\x90\x40\x50", NOW)], ALICE)
    assert gateway.midi_to(second) == [b"\x90\x40\x50"]
    assert gateway.drops.get("sip", "send_failed") == 1


def test_beat_clock_never_reaches_sfront_clients(gateway):
    client = gateway.client()
    gateway.joined(client)
    clock = RosterEntry(-1, "clock", "clock")
    for _ in range(48):
        gateway.bus.fan_out([MidiEvent(b"\xf8", NOW)], clock)
    gateway.bus.fan_out([MidiEvent(b"\xfa", NOW), MidiEvent(b"\xf2\x00\x00", NOW)], clock)
    assert gateway.midi_to(client) == []
    gateway.bus.fan_out([MidiEvent(b"\xf8", NOW), MidiEvent(b"\x90\x40\x50", NOW)], ALICE)
    assert gateway.midi_to(client) == [b"\x90\x40\x50"]


def test_released_note_offs_reach_the_client(gateway):
    client = gateway.client()
    gateway.joined(client)
    gateway.bus.fan_out([MidiEvent(b"\x80\x3c\x40", NOW)], ALICE, released=True)
    assert gateway.midi_to(client) == [b"\x80\x3c\x40"]


def test_per_player_channels_keep_two_players_on_channel_1_apart():
    gateway = Gateway({"channels": "per_player"})
    client = gateway.client()
    gateway.joined(client)
    note = [MidiEvent(b"\x90\x3c\x64", NOW)]
    gateway.bus.fan_out(note, ALICE)
    gateway.bus.fan_out(note, BOB)
    gateway.bus.fan_out([MidiEvent(b"\x80\x3c\x40", NOW)], ALICE, released=True)
    assert gateway.midi_to(client) == [b"\x90\x3c\x64", b"\x91\x3c\x64", b"\x80\x3c\x40"]
    # Alice left: the next player gets her channel.
    gateway.bus.announce(values.LEFT, ALICE, [BOB])
    gateway.bus.fan_out(note, RosterEntry(9, "carol", "websocket"))
    assert gateway.midi_to(client) == [b"\x90\x3c\x64"]


def test_kick_says_rtcp_bye_from_our_member(gateway):
    client = gateway.client()
    membership = gateway.joined(client)
    gateway.bus.kick(membership, "kicked")
    [bye] = gateway.reactor.take(client.rtcp_source)
    assert sfront.read_rtcp(sfront.verified(client.key, bye)).bye
    assert gateway.door.members == {}


def test_silence_ends_the_membership(gateway):
    client = gateway.client()
    membership = gateway.joined(client)
    gateway.reactor.advance(30)
    assert membership.left == ["timeout"]


def test_stopping_says_bye_to_every_client_and_leaves(gateway):
    client = gateway.client()
    membership = gateway.joined(client)
    gateway.reactor.take(client.rtcp_source)
    gateway.door.stopService()
    [bye] = gateway.reactor.take(client.rtcp_source)
    assert sfront.read_rtcp(sfront.verified(client.key, bye)).bye
    assert membership.left == ["shutdown"]


def one_packet_played_and_one_stranger_refused(gateway):
    client = gateway.client()
    gateway.joined(client)
    gateway.inject(MEDIA, client.rtp([(0, b"\x90\x3c\x64")]), client.rtp_source)
    stranger = gateway.client(port=5010, call_id=1, passphrase="wrong wrong wrong wrong")
    gateway.inject(5060, stranger.invite(0, NOW), stranger.rtp_source)


def test_status_shows_clients_packets_and_refusals(gateway):
    one_packet_played_and_one_stranger_refused(gateway)
    status = gateway.door.status()
    assert status["clients"] == 1 and status["packets_verified"] == 1
    assert status["refused"] == {"unknown_session": 1}
    assert status["sessions"] == [{"session": "demo", "media_port": MEDIA}]


def test_metrics_show_members_packets_verified_and_refusals(gateway):
    one_packet_played_and_one_stranger_refused(gateway)
    samples = {(family.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in metrics.SipCollector(gateway.door).collect()
               for sample in family.samples}
    assert samples[("netgateway_sip_members", (("session", "demo"),))] == 1
    assert samples[("netgateway_sip_packets_verified", ())] == 1
    assert samples[("netgateway_sip_refused", (("reason", "unknown_session"),))] == 1
