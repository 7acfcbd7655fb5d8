"""The RTP-MIDI door's Twisted adapter on an in-memory UDP network and task.Clock."""

import socket

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet import defer, task
from twisted.logger import Logger

from gateway import config as gatewayconfig
from tests.members import RecordingMember, join_now
from gateway.midi import MidiEvent
from gateway.protocols.rtpmidi import applemidi, door as rtpdoor, mdns
from gateway.protocols.rtpmidi.applemidi import ReceiverFeedback, SessionExchange, Sync
from gateway.protocols.rtpmidi.journal_sender import JournalSender
from gateway.protocols.rtpmidi.payload import RtpMidiPacket
from gateway.protocols.rtpmidi.stream import prepare
from gateway.service import GatewayContext

PASSPHRASE = "play along with netgateway demo"
GATEWAY_PORT = 5004
GATEWAY_CONTROL = ("127.0.0.1", GATEWAY_PORT)
GATEWAY_DATA = ("127.0.0.1", GATEWAY_PORT + 1)


class FakeSocket:
    def __init__(self, network, local):
        self.network = network
        self.local = local
        self.options = {}

    def setsockopt(self, level, option, value):
        self.options[(level, option)] = value

    def sendto(self, data, addr):
        self.network.sent.append((self.local, bytes(data), addr))


class FakePort:
    def __init__(self, network, number, proto):
        self.network = network
        self.number = number
        self.protocol = proto
        self.socket = FakeSocket(network, number)
        self.listening = True

    def write(self, data, addr):
        self.socket.sendto(data, addr)

    def stopListening(self):
        self.listening = False


class FakeStreamPort:
    """A TCP (or TLS) listening port whose connections the test opens with ``connect``."""

    def __init__(self, number, factory):
        self.number = number
        self.factory = factory
        self.listening = True

    def connect(self, source):
        """A new connection from ``source``: ``(protocol, StringTransport)``."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport
        proto = self.factory.buildProtocol(IPv4Address("TCP", *source))
        transport = StringTransport(peerAddress=IPv4Address("TCP", *source))
        proto.makeConnection(transport)
        return proto, transport

    def stopListening(self):
        self.listening = False


class MemoryReactor(task.Clock):
    """task.Clock plus listenUDP on an in-memory network that records what is sent,
    and listenTCP/listenSSL whose connections a test opens itself."""

    def __init__(self):
        super().__init__()
        self.ports = {}
        self.stream_ports = {}
        self.sent = []

    def listenTCP(self, number, factory, backlog=50, interface=""):
        port = self.stream_ports[number] = FakeStreamPort(number, factory)
        return port

    def listenSSL(self, number, factory, contextFactory, backlog=50, interface=""):
        return self.listenTCP(number, factory, backlog, interface)

    def listenUDP(self, number, proto, interface="", maxPacketSize=8192):
        port = FakePort(self, number, proto)
        self.ports[number] = port
        proto.makeConnection(port)
        return port

    def inject(self, local_port, data, source):
        self.ports[local_port].protocol.datagramReceived(bytes(data), source)

    def take(self, destination):
        """Datagrams sent to ``destination`` since the last take, oldest first."""
        taken = [data for _, data, addr in self.sent if addr == destination]
        self.sent = [item for item in self.sent if item[2] != destination]
        return taken


class RemotePeer:
    """An AppleMIDI peer on the memory network, built from the applemidi packet classes."""

    def __init__(self, reactor, host="127.0.0.1", port=7000, ssrc=0x5151, name="remote"):
        self.reactor = reactor
        self.control = (host, port)
        self.data = (host, port + 1)
        self.ssrc = ssrc
        self.name = name
        self.token = 0x7070
        self.sequence = 100

    def exchange(self, command):
        return bytes(SessionExchange(command, self.token, self.ssrc, self.name))

    def control_answers(self):
        return [applemidi.parse_control(data) for data in self.reactor.take(self.control)]

    def data_received(self):
        return self.reactor.take(self.data)

    def join(self):
        self.reactor.inject(GATEWAY_PORT, self.exchange(b"IN"), self.control)
        [control_ok] = self.control_answers()
        self.reactor.inject(GATEWAY_PORT + 1, self.exchange(b"IN"), self.data)
        [data_ok] = [applemidi.parse_control(data) for data in self.data_received()]
        return control_ok, data_ok

    def ticks(self):
        return int(self.reactor.seconds() * 10000)

    def sync(self):
        ts1 = self.ticks()
        self.reactor.inject(GATEWAY_PORT + 1, bytes(Sync(self.ssrc, 0, ts1)), self.data)
        [ck1] = [applemidi.parse_control(data) for data in self.data_received()]
        self.reactor.inject(GATEWAY_PORT + 1,
                            bytes(Sync(self.ssrc, 2, ts1, ck1.ts2, self.ticks())), self.data)

    def send_midi(self, messages, timestamp=None):
        self.sequence += 1
        packet = RtpMidiPacket(self.sequence, self.ticks() if timestamp is None else timestamp,
                               self.ssrc, [(0, message) for message in messages])
        self.reactor.inject(GATEWAY_PORT + 1, bytes(packet), self.data)

    def midi_received(self):
        return [message for data in self.data_received() if data[:2] != b"\xff\xff"
                for _, message in RtpMidiPacket.parse(data).commands]

    def bye(self):
        self.reactor.inject(GATEWAY_PORT, bytes(SessionExchange(b"BY", self.token, self.ssrc)),
                            self.control)


def make_config(rtpmidi=None, allow=("127.0.0.0/8",)):
    section = {"sessions": [{"session": "demo", "port": GATEWAY_PORT}]}
    section.update(rtpmidi or {})
    return gatewayconfig.parse({
        "sessions": [{"name": "demo", "passphrase": PASSPHRASE,
                      "allow_addresses": list(allow)}],
        "web": {"enabled": False},
        "rtpmidi": section,
    })


@pytest.fixture
def reactor():
    return MemoryReactor()


@pytest.fixture
def build(reactor):
    started = []

    def build(rtpmidi=None, allow=("127.0.0.0/8",)):
        config = make_config(rtpmidi, allow)
        context = GatewayContext(config, reactor)
        context.metrics = CollectorRegistry(auto_describe=True)
        service = rtpdoor.make_service(config.doors["rtpmidi"], context)
        service.startService()
        started.append(service)
        recorder = RecordingMember()
        membership = join_now(context.bus, recorder, passphrase=PASSPHRASE)
        return service, context, recorder, membership

    yield build
    for service in started:
        if service.running:
            service.stopService()


def rtpmidi_members(context):
    """The AppleMIDI members of demo as the operator's /status shows them."""
    [demo] = [session for session in context.bus.snapshot()["sessions"]
              if session["name"] == "demo"]
    return [member for member in demo["members"] if member["door"] == "rtpmidi"]


def test_join_with_in_ok_on_both_ports(reactor, build):
    door, context, _, _ = build()
    control_ok, data_ok = RemotePeer(reactor, name="mac").join()
    assert control_ok.command == data_ok.command == b"OK"
    assert control_ok.ssrc == data_ok.ssrc and control_ok.name == "netgateway demo"
    [member] = rtpmidi_members(context)
    assert member["name"] == "mac"
    assert member["peer"] == "127.0.0.1:7000"
    receive_buffer = reactor.ports[GATEWAY_PORT + 1].socket.options
    assert receive_buffer[(socket.SOL_SOCKET, socket.SO_RCVBUF)] == 4 * 1024 * 1024


def test_address_outside_the_allow_list_gets_no(reactor, build):
    _, context, _, _ = build()
    stranger = RemotePeer(reactor, host="192.0.2.7")
    reactor.inject(GATEWAY_PORT, stranger.exchange(b"IN"), stranger.control)
    [answer] = stranger.control_answers()
    assert answer.command == b"NO"
    assert rtpmidi_members(context) == []
    assert context.drops.get("rtpmidi", "invitation_refused") == 1


@pytest.mark.parametrize("name", ["   ", "mac\nnetgateway: forged", "\u202ecam"])
def test_an_invitation_whose_name_breaks_the_name_rule_gets_no(reactor, build, name):
    _, context, _, _ = build()
    peer = RemotePeer(reactor, name=name)          # from an allowed address
    reactor.inject(GATEWAY_PORT, peer.exchange(b"IN"), peer.control)
    [answer] = peer.control_answers()
    assert answer.command == b"NO"
    assert rtpmidi_members(context) == []
    assert context.bus.refusals["bad_name"] == 1


def test_notes_both_ways(reactor, build):
    _, context, recorder, membership = build()
    peer = RemotePeer(reactor)
    peer.join()
    peer.send_midi([bytes((0x90, 60, 100)), bytes((0x90, 64, 90))])
    assert recorder.heard == [bytes((0x90, 60, 100)), bytes((0x90, 64, 90))]

    membership.publish([MidiEvent(bytes((0x91, 67, 80)), reactor.seconds())])
    membership.publish([MidiEvent(bytes((0x81, 67, 0)), reactor.seconds())])
    packets = [RtpMidiPacket.parse(data) for data in peer.data_received()]
    assert [p.commands for p in packets] == [[(0, bytes((0x91, 67, 80)))],
                                             [(0, bytes((0x81, 67, 0)))]]
    assert packets[1].sequence == (packets[0].sequence + 1) & 0xFFFF
    assert packets[0].journal is None            # nothing to journal yet
    assert packets[1].journal.channels[0].channel == 1


def test_fan_out_is_encoded_once_for_every_peer(reactor, build, monkeypatch):
    _, _, _, membership = build()
    peers = [RemotePeer(reactor, port=port, ssrc=port) for port in (7000, 7002, 7004)]
    for peer in peers:
        peer.join()
    encoded = []
    monkeypatch.setattr(rtpdoor, "prepare",
                        lambda events, rate, midi_list: encoded.append(events) or prepare(events, rate))
    membership.publish([MidiEvent(bytes((0x90, 60, 100)), reactor.seconds())])
    assert len(encoded) == 1
    for peer in peers:
        [packet] = [RtpMidiPacket.parse(data) for data in peer.data_received()]
        assert packet.commands == [(0, bytes((0x90, 60, 100)))]


def test_guard_packets_follow_the_last_midi(reactor, build):
    _, _, _, membership = build()
    peer = RemotePeer(reactor)
    peer.join()
    peer.data_received()
    membership.publish([MidiEvent(bytes((0x90, 60, 100)), reactor.seconds())])
    membership.publish([MidiEvent(bytes((0x80, 60, 0)), reactor.seconds())])
    reactor.pump([rtpdoor.TIMER_INTERVAL] * 20)
    packets = [RtpMidiPacket.parse(data) for data in peer.data_received()
               if data[:2] != b"\xff\xff"]
    assert [len(packet.commands) for packet in packets] == [1, 1, 0, 0]
    assert [packet.journal.channels[0].notes.off_notes for packet in packets[2:]] == [[60], [60]]
    assert all(packet.sequence == (packets[0].sequence + index) & 0xFFFF
               for index, packet in enumerate(packets))


def test_receiver_feedback_moves_the_journal_checkpoint(reactor, build):
    _, context, _, membership = build()
    peer = RemotePeer(reactor)
    peer.join()
    for note in (60, 62, 64):
        membership.publish([MidiEvent(bytes((0x90, note, 100)), reactor.seconds())])
    sequences = [RtpMidiPacket.parse(data).sequence for data in peer.data_received()]
    reactor.inject(GATEWAY_PORT, bytes(ReceiverFeedback(peer.ssrc, sequences[-1])), peer.control)
    membership.publish([MidiEvent(bytes((0x80, 60, 0)), reactor.seconds())])
    [last] = [RtpMidiPacket.parse(data) for data in peer.data_received()]
    assert last.journal.checkpoint == sequences[-1]       # was sequences[0] before the RS


def test_bye_releases_the_notes_it_left_sounding(reactor, build):
    _, context, recorder, _ = build()
    peer = RemotePeer(reactor)
    peer.join()
    peer.send_midi([bytes((0x90, 60, 100))])
    peer.bye()
    assert rtpmidi_members(context) == []
    assert recorder.heard[-1] == bytes((0x80, 60, 64))


def test_late_note_on_is_dropped_and_note_off_kept(reactor, build):
    _, context, recorder, _ = build({"latetime": 0.5})
    reactor.advance(100)
    peer = RemotePeer(reactor)
    peer.join()
    peer.sync()
    two_seconds_ago = peer.ticks() - 20000
    peer.send_midi([bytes((0x90, 60, 100)), bytes((0x80, 62, 0))], timestamp=two_seconds_ago)
    assert recorder.heard == [bytes((0x80, 62, 0))]
    assert context.drops.get("rtpmidi", "late") == 1
    peer.send_midi([bytes((0x90, 61, 100))], timestamp=peer.ticks() - 1000)
    assert recorder.heard[-1] == bytes((0x90, 61, 100))
    [member] = rtpmidi_members(context)
    assert member["late_dropped"] == 1


def test_malformed_packets_are_counted(reactor, build):
    _, context, recorder, _ = build()
    peer = RemotePeer(reactor)
    peer.join()
    header = bytes((0x80, 0x61, 0, 1, 0, 0, 0, 0)) + peer.ssrc.to_bytes(4, "big")
    reactor.inject(GATEWAY_PORT + 1, header + bytes((0x05, 0x90, 60)), peer.data)
    reactor.inject(GATEWAY_PORT, b"\xff\xffZZ garbage", peer.control)
    reactor.inject(GATEWAY_PORT + 1, b"\x00", ("127.0.0.1", 9999))
    drops = context.drops
    # The data port parses a packet once, before it knows who sent it.
    assert drops.get("rtpmidi", "malformed") == 3
    assert recorder.heard == []
    assert len(rtpmidi_members(context)) == 1


def test_stop_says_bye_on_both_ports_and_members_leave(reactor, build):
    door, context, recorder, _ = build()
    peer = RemotePeer(reactor)
    peer.join()
    peer.send_midi([bytes((0x90, 60, 100))])
    door.stopService()
    assert [p.command for p in peer.control_answers()] == [b"BY"]
    assert [applemidi.parse_control(d).command for d in peer.data_received()] == [b"BY"]
    assert rtpmidi_members(context) == []
    assert recorder.heard[-1] == bytes((0x80, 60, 64))
    assert not reactor.ports[GATEWAY_PORT].listening


def test_gateway_invites_a_pymidi_style_peer(reactor, build):
    target = ("127.0.0.1", 7100)
    _, context, _, _ = build({"invite": [{"session": "demo", "host": target[0],
                                          "port": target[1]}]})
    peer = RemotePeer(reactor, port=target[1], ssrc=0xAAAA)
    [invitation] = peer.control_answers()
    assert invitation.command == b"IN"
    peer.token = invitation.token
    reactor.inject(GATEWAY_PORT, peer.exchange(b"OK"), peer.control)
    [data_invitation] = peer.data_received()
    # Like pymidi, answer the data port with a second SSRC.
    other = RemotePeer(reactor, port=target[1], ssrc=0xBBBB)
    other.token = invitation.token
    reactor.inject(GATEWAY_PORT + 1, other.exchange(b"OK"), peer.data)
    [ck0] = [applemidi.parse_control(data) for data in peer.data_received()]
    assert ck0.count == 0
    reactor.advance(0.002)
    reactor.inject(GATEWAY_PORT + 1, bytes(Sync(other.ssrc, 1, ck0.ts1, 123456)), peer.data)
    [member] = rtpmidi_members(context)
    assert member["rtt_ms"] == pytest.approx(2.0)
    assert member["role"] == "initiator"


def test_invitation_without_answer_is_retried_later(reactor, build):
    target = ("127.0.0.1", 7200)
    build({"invite": [{"session": "demo", "host": target[0], "port": target[1]}]})
    ticks_per_second = round(1 / rtpdoor.TIMER_INTERVAL)
    reactor.pump([rtpdoor.TIMER_INTERVAL] * 20 * ticks_per_second)   # attempts run out
    first_round = len(reactor.take(target))
    reactor.pump([rtpdoor.TIMER_INTERVAL] * 6 * ticks_per_second)
    assert first_round >= 12 and len(reactor.take(target)) >= 1


def test_collector_reports_every_peer(reactor, build):
    _, context, _, _ = build()
    peer = RemotePeer(reactor)
    peer.join()
    peer.send_midi([bytes((0x90, 60, 100))])
    value = context.metrics.get_sample_value(
        "netgateway_rtpmidi_packets_received_total", {"session": "demo", "peer": "127.0.0.1:7000"})
    assert value == 1


def test_config_problems_are_named():
    with pytest.raises(gatewayconfig.ConfigError) as refused:
        gatewayconfig.parse({
            "sessions": [{"name": "demo", "passphrase": PASSPHRASE}],
            "rtpmidi": {"sessions": [{"session": "demo", "port": 5005},
                                     {"session": "elsewhere", "port": 5010}],
                        "invite": [{"session": "jam", "host": "127.0.0.1", "port": 5004}]}})
    problems = "\n".join(refused.value.problems)
    assert "rtpmidi.sessions[0].port: expected an even control port" in problems
    assert "rtpmidi.sessions[1].session: expected a session declared" in problems
    assert "rtpmidi.invite[0].session: expected a session listed in rtpmidi.sessions" in problems


def test_listening_ports_cover_control_and_data():
    section = make_config().doors["rtpmidi"]
    assert [number for _, _, number in section.listening_ports("rtpmidi")] == [5004, 5005]


class FakeZeroconfModule:
    """Stands in for python-zeroconf: records registrations."""

    InterfaceChoice = type("InterfaceChoice", (), {"All": "all"})

    def __init__(self):
        self.registered = []
        self.closed = False
        module = self

        class Zeroconf:
            def __init__(self, interfaces):
                module.interfaces = interfaces

            def register_service(self, info):
                module.registered.append(info)

            def unregister_service(self, info):
                module.registered.remove(info)

            def close(self):
                module.closed = True

        self.Zeroconf = Zeroconf
        self.ServiceInfo = lambda kind, name, **fields: (kind, name, fields)

    @staticmethod
    def get_all_addresses():
        return ["127.0.0.1"]


def test_mdns_registers_each_session_and_unregisters_on_stop(reactor):
    zeroconf = FakeZeroconfModule()
    entries = make_config().doors["rtpmidi"].sessions
    advertiser = mdns.MdnsAdvertiser(defer.maybeDeferred, reactor, "127.0.0.1", entries,
                                     Logger(), zeroconf_module=zeroconf)
    advertiser.start()
    [(kind, name, fields)] = zeroconf.registered
    assert kind == "_apple-midi._udp.local."
    assert name == "netgateway demo._apple-midi._udp.local."
    assert fields["port"] == 5004 and fields["parsed_addresses"] == ["127.0.0.1"]
    assert zeroconf.interfaces == ["127.0.0.1"]
    advertiser.stop()
    assert zeroconf.registered == [] and zeroconf.closed


def test_mdns_on_every_address_advertises_the_public_address_when_one_is_set(reactor):
    zeroconf = FakeZeroconfModule()
    entries = make_config().doors["rtpmidi"].sessions
    advertiser = mdns.MdnsAdvertiser(defer.maybeDeferred, reactor, "0.0.0.0", entries,
                                     Logger(), zeroconf_module=zeroconf,
                                     advertised="198.51.100.7")
    advertiser.start()
    [(_, _, fields)] = zeroconf.registered
    assert fields["parsed_addresses"] == ["198.51.100.7"]
    assert zeroconf.interfaces == "all"
    advertiser.stop()


def test_journal_can_be_switched_off(reactor, build):
    _, _, _, membership = build({"journal": False})
    peer = RemotePeer(reactor)
    peer.join()
    for note in (60, 62):
        membership.publish([MidiEvent(bytes((0x90, note, 100)), reactor.seconds())])
    assert [RtpMidiPacket.parse(data).journal for data in peer.data_received()] == [None, None]


def test_sysex_too_large_for_one_packet_is_dropped_without_a_gap(reactor, build):
    _, context, _, membership = build()
    peer = RemotePeer(reactor)
    peer.join()
    membership.publish([MidiEvent(bytes((0x90, 60, 100)), reactor.seconds())])
    membership.publish([MidiEvent(b"\xf0" + bytes(5000) + b"\xf7", reactor.seconds())])
    membership.publish([MidiEvent(bytes((0x80, 60, 0)), reactor.seconds())])
    first, last = [RtpMidiPacket.parse(data) for data in peer.data_received()]
    assert last.sequence == (first.sequence + 1) & 0xFFFF
    assert context.drops.get("rtpmidi", "too_large") == 1


def test_sysex_segments_are_joined(reactor, build):
    _, _, recorder, _ = build()
    peer = RemotePeer(reactor)
    peer.join()
    peer.send_midi([b"\xf0\x7e\x7f\xf0"])
    peer.send_midi([b"\xf7\x06\x01\xf7"])
    assert recorder.heard == [b"\xf0\x7e\x7f\x06\x01\xf7"]


def test_lost_packet_is_repaired_from_the_journal(reactor, build):
    _, context, recorder, _ = build()
    peer = RemotePeer(reactor)
    peer.join()
    peer.send_midi([bytes((0x90, 60, 100))])
    # The packet with the note-off is lost; the next one's journal says 60 is off.
    sender = JournalSender()
    sender.record(peer.sequence, 0, [bytes((0x90, 60, 100))])
    sender.record(peer.sequence + 1, 0, [bytes((0x80, 60, 0))])
    journal = sender.journal_for(peer.sequence + 2, 0)
    packet = RtpMidiPacket(peer.sequence + 2, peer.ticks(), peer.ssrc,
                           [(0, bytes((0x90, 64, 90)))], journal)
    reactor.inject(GATEWAY_PORT + 1, bytes(packet), peer.data)
    assert recorder.heard[1:] == [bytes((0x80, 60, 0)), bytes((0x90, 64, 90))]
    [member] = rtpmidi_members(context)
    assert member["packets_lost"] == 1
    assert member["gaps_repaired"] == 1
