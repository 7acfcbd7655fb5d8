"""The RTMP door's adapter against a recording bus: fan-outs with members that misbehave.

Connections are the door's own protocol objects on Twisted's StringTransport
(which keeps what is written and lets the test pause a producer), the clock
a MemoryReactorClock; the bus is tests/bus/recording.py's, answering as the
test says. Real clients against a real twistd are in
tests/integration/test_rtmp_e2e.py.
"""

import types

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from gateway.bus.local import DropCounters
from gateway.bus.values import RosterEntry, TempoState
from gateway.config import parse
from gateway.interfaces import IMember
from gateway.midi import MidiEvent
from gateway.protocols.rtmp import amf0
from gateway.protocols.rtmp.chunks import (
    AUDIO, COMMAND_AMF0, DATA_AMF0, VIDEO, ChunkReader, ChunkWriter, Message)
from gateway.protocols.rtmp.handshake import PACKET_SIZE
from gateway.protocols.rtmp.metrics import RtmpCollector
from tests.bus.recording import RecordingBus
from tests.doors.conftest import import_on_twisted

PASSPHRASE = "play along with netgateway demo"
rtmpdoor = None         # gateway.protocols.rtmp.door, imported by the fixture below


@pytest.fixture(scope="module", autouse=True)
def door_module():
    """The RTMP door (its FLV over WebSocket is autobahn's), with txaio on Twisted."""
    global rtmpdoor
    for module in import_on_twisted("gateway.protocols.rtmp.door"):
        rtmpdoor = module
        yield module
ALICE = RosterEntry(7, "alice", "websocket")
CLOCK = RosterEntry(-1, "clock", "clock")
AAC_HEADER = b"\xaf\x00\x12\x10"


class TcpTransport(StringTransport):
    """A StringTransport with the TCP option the door sets."""

    def setTcpNoDelay(self, enabled):
        self.no_delay = enabled


class Gateway:
    def __init__(self, rtmp=None):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_800_000_000.0)
        self.bus = RecordingBus()
        config = parse({"sessions": [{"name": "demo", "passphrase": PASSPHRASE}],
                        "rtmp": {"player_queue_bytes": 32 * 1024, "slow_player_seconds": 2.0,
                                 **(rtmp or {})}})
        self.drops = DropCounters()
        context = types.SimpleNamespace(config=config, reactor=self.reactor, bus=self.bus,
                                        drops=self.drops, metrics=None, web_root=Resource())
        self.door = rtmpdoor.make_service(config.doors["rtmp"], context)
        self.door.startService()

    def client(self, name, path="demo"):
        client = Client(self, name)
        client.connect(path)
        return client


class Client:
    """One connection of the door, driven with the test's bytes."""

    def __init__(self, gateway, name):
        self.gateway = gateway
        self.name = name
        self.protocol = rtmpdoor.RtmpFactory(gateway.door).buildProtocol(None)
        self.transport = TcpTransport(peerAddress=types.SimpleNamespace(
            host="127.0.0.1", port=40000 + len(gateway.door.connections)))
        self.protocol.makeConnection(self.transport)
        self.writer = ChunkWriter()
        self.reader = ChunkReader()
        self.protocol.dataReceived(b"\x03" + bytes(PACKET_SIZE) + bytes(PACKET_SIZE))
        gateway.reactor.advance(0)  # the end of the reactor turn: S0 S1 S2 are sent
        self.transport.clear()
        self.membership = None

    def send(self, message):
        self.protocol.dataReceived(self.writer.write(message))

    def command(self, name, transaction, *values, stream_id=0):
        self.send(Message(COMMAND_AMF0, stream_id, 0,
                          amf0.encode(name, float(transaction), *values)))

    def connect(self, path):
        self.command("connect", 1, {"app": f"jam/{path}"}, PASSPHRASE, self.name)
        (pending,) = self.gateway.bus.pending(self.name)
        self.membership = pending.accept()
        self.command("createStream", 2, None)

    def received(self):
        """Messages written to this client since the last call (at the end of the turn)."""
        self.gateway.reactor.advance(0)
        data = self.transport.value()
        self.transport.clear()
        return [event for event in self.reader.receive(data) if isinstance(event, Message)]


def publisher(gateway, name="pub"):
    client = gateway.client(name)
    client.command("publish", 3, None, "live", "live", stream_id=1)
    client.send(Message(AUDIO, 1, 0, AAC_HEADER))
    return client


def player(gateway, name, stream="live"):
    client = gateway.client(name)
    client.command("play", 3, None, stream, stream_id=1)
    client.received()
    return client


def audio(timestamp, size=400):
    return Message(AUDIO, 1, timestamp, b"\xaf\x01" + bytes(size))


def test_an_rtmp_connection_is_a_bus_member():
    gateway = Gateway()
    client = gateway.client("alice")
    assert verifyObject(IMember, client.protocol)
    (request,) = [join.request for join in gateway.bus.joins]
    assert (request.session, request.name, request.door, request.source) == (
        "demo", "alice", "rtmp", "127.0.0.1")
    assert request.credential.passphrase == PASSPHRASE


def test_a_nameless_connection_is_numbered_when_its_default_name_is_taken():
    gateway = Gateway()
    default = rtmpdoor.netconnection.DEFAULT_PLAYER_NAME
    gateway.bus.set_view("demo", roster=[RosterEntry(3, default, "rtmp")])
    nameless = Client(gateway, None)
    nameless.command("connect", 1, {"app": "jam/demo"}, PASSPHRASE)
    named = Client(gateway, "carol")
    named.command("connect", 1, {"app": "jam/demo"}, PASSPHRASE, "carol")
    # ffmpeg sends no name: its second player joins as "rtmp player 2" instead of being
    # refused as taken; a chosen name goes to the bus as it is.
    assert [join.request.name for join in gateway.bus.joins] == [f"{default} 2", "carol"]


def test_a_late_player_gets_the_sequence_header_first_then_every_frame():
    gateway = Gateway()
    source = publisher(gateway)
    source.send(audio(23))
    late = player(gateway, "late")
    assert late.protocol.playing      # registered; its first messages were the headers
    source.send(audio(46))
    (frame,) = late.received()
    assert (frame.type_id, frame.timestamp) == (AUDIO, 46)


def test_a_player_that_disconnects_inside_the_fan_out_does_not_make_others_miss_the_frame():
    gateway = Gateway()
    source = publisher(gateway)
    players = [player(gateway, f"p{index}") for index in range(3)]
    first, second, third = players
    original = first.transport.write

    def write_and_kill_second(data):
        original(data)
        second.protocol.connectionLost(None)
    first.transport.write = write_and_kill_second
    source.send(audio(23))
    assert [message.timestamp for message in first.received()] == [23]
    assert [message.timestamp for message in third.received()] == [23]
    assert second.received() == []
    assert second.membership.left == ["disconnected"]
    source.send(audio(46))
    assert [message.timestamp for message in third.received()] == [46]


def test_a_stalled_player_queues_drops_video_first_and_is_disconnected_others_get_all():
    gateway = Gateway()
    source = publisher(gateway)
    source.send(Message(VIDEO, 1, 0, b"\x17\x00" + bytes(20)))
    stalled, healthy = player(gateway, "stalled"), player(gateway, "healthy")
    stalled.protocol.pauseProducing()
    timestamps = []
    for step in range(40):
        timestamp = 40 * step
        video = b"\x17\x01" if step % 10 == 0 else b"\x27\x01"
        source.send(Message(VIDEO, 1, timestamp, video + bytes(3000)))
        source.send(audio(timestamp + 1))
        timestamps += [timestamp, timestamp + 1]
    assert [message.timestamp for message in healthy.received()] == timestamps
    assert stalled.transport.value() == b""
    assert gateway.drops.get("rtmp", "frame_dropped") > 0
    queue = stalled.protocol.queue
    assert queue.dropped["video"] > 0 and queue.dropped["audio"] == 0
    assert queue.queued_bytes <= 32 * 1024
    gateway.reactor.advance(2.5)
    source.send(audio(2000))
    source.send(audio(2023))                # disconnecting: not counted again
    assert gateway.drops.get("rtmp", "slow_player") == 1
    assert stalled.transport.disconnecting and stalled.membership.left == ["too slow"]
    assert [message.timestamp for message in healthy.received()] == [2000, 2023]


def test_a_paused_player_that_resumes_gets_what_was_queued_in_order():
    gateway = Gateway()
    source = publisher(gateway)
    listener = player(gateway, "listener")
    listener.protocol.pauseProducing()
    for timestamp in (23, 46, 69):
        source.send(audio(timestamp))
    assert listener.received() == []
    listener.protocol.resumeProducing()
    assert [message.timestamp for message in listener.received()] == [23, 46, 69]


def test_session_midi_reaches_midi_stream_players_as_on_midi_once_encoded():
    gateway = Gateway()
    listeners = [player(gateway, f"m{index}", stream="midi") for index in range(2)]
    audio_only = player(gateway, "audio")
    delivery = gateway.bus.fan_out([MidiEvent(b"\x90\x3c\x64", gateway.reactor.seconds())],
                                   ALICE)
    for client in listeners:
        (message,) = client.received()
        assert message.type_id == DATA_AMF0
        assert amf0.decode_all(message.payload) == ["onMidi", {
            "bytes": [144.0, 60.0, 100.0], "hex": "903c64", "from": "alice", "member": 7.0}]
    assert audio_only.received() == []
    assert [key for key in delivery._memo if key[0] == "rtmp"] == [("rtmp", "onMidi")]


def test_beat_clock_never_floods_rtmp_players():
    gateway = Gateway()
    listener = player(gateway, "m", stream="midi")
    now = gateway.reactor.seconds()
    for _ in range(48):
        gateway.bus.fan_out([MidiEvent(b"\xf8", now)], CLOCK)
    gateway.bus.fan_out([], CLOCK, tempo=TempoState(90.0, True, 4, 3, now))
    assert listener.received() == []
    gateway.bus.fan_out([MidiEvent(b"\xfa", now), MidiEvent(b"\x90\x3c\x64", now),
                         MidiEvent(b"\xf8", now)], ALICE)
    (message,) = listener.received()
    assert amf0.decode_all(message.payload)[1]["hex"] == "903c64"


def test_onmidi_from_a_publisher_is_published_to_the_bus():
    gateway = Gateway()
    source = publisher(gateway)
    source.send(Message(DATA_AMF0, 1, 10, amf0.encode("onMidi", {"hex": "903c64"})))
    source.command("midi", 9, None, [128, 60, 0])
    assert source.membership.published_data == [b"\x90\x3c\x64", b"\x80\x3c\x00"]


def test_second_publisher_is_refused_and_counted_and_the_first_keeps_publishing():
    gateway = Gateway()
    first = publisher(gateway, "first")
    second = gateway.client("second")
    second.command("publish", 3, None, "live", "live", stream_id=1)
    codes = [amf0.decode_all(m.payload)[3]["code"] for m in second.received()
             if m.type_id == COMMAND_AMF0 and amf0.decode_all(m.payload)[0] == "onStatus"]
    assert codes == ["NetStream.Publish.BadName"]
    assert gateway.door.status()["refused_publishers"] == 1
    listener = player(gateway, "listener")
    first.send(audio(23))
    assert [message.timestamp for message in listener.received()] == [23]


def test_publisher_leaving_tells_players_and_the_next_publisher_is_heard():
    gateway = Gateway()
    source = publisher(gateway)
    listener = player(gateway, "listener")
    source.protocol.connectionLost(None)
    codes = [amf0.decode_all(m.payload)[3]["code"] for m in listener.received()
             if m.type_id == COMMAND_AMF0]
    assert codes == ["NetStream.Play.UnpublishNotify"]
    again = publisher(gateway, "again")
    again.send(audio(5))
    kinds = [(m.type_id, m.timestamp) for m in listener.received()]
    assert kinds[-2:] == [(AUDIO, 0), (AUDIO, 5)]     # its sequence header, then its audio


def test_the_bus_kicking_a_member_says_play_stop_and_closes():
    gateway = Gateway()
    listener = player(gateway, "listener")
    gateway.bus.kick(listener.membership, "idle")
    (stop,) = listener.received()
    assert amf0.decode_all(stop.payload)[3]["code"] == "NetStream.Play.Stop"
    assert listener.transport.disconnecting


@pytest.mark.parametrize("garbage", [b"\x06" + bytes(100), b"\x03" + bytes(3072) + b"\xff" * 64])
def test_garbage_closes_that_connection_only_and_is_counted(garbage):
    gateway = Gateway()
    source = publisher(gateway)
    listener = player(gateway, "listener")
    bad = rtmpdoor.RtmpConnection(gateway.door)
    transport = TcpTransport()
    bad.makeConnection(transport)
    bad.dataReceived(garbage)
    assert transport.disconnecting
    assert sum(count for (door, _), count in gateway.drops.items() if door == "rtmp") >= 1
    source.send(audio(23))
    assert [message.timestamp for message in listener.received()] == [23]


def test_status_and_metrics_show_connections_streams_players_and_refusals():
    gateway = Gateway()
    first = publisher(gateway, "first")
    player(gateway, "listener")
    gateway.client("second").command("publish", 3, None, "live", "live", stream_id=1)
    first.send(audio(23))
    status = gateway.door.status()
    assert status["connections"] == 3 and status["frames_relayed"] == 2
    (stream,) = status["streams"]
    assert stream == {"session": "demo", "stream": "live", "publishing": True, "players": 1,
                      "frames_in": 2, "bytes_in": 4 + 402, "audio_header": True,
                      "video_header": False, "metadata": False}
    registry = CollectorRegistry()
    registry.register(RtmpCollector(gateway.door))
    text = generate_latest(registry).decode()
    assert "netgateway_rtmp_connections 3.0" in text
    assert 'netgateway_rtmp_stream_players{session="demo",stream="live"} 1.0' in text
    assert "netgateway_rtmp_publish_refused_total 1.0" in text
    assert "netgateway_rtmp_frames_relayed_total 2.0" in text


def test_a_player_that_raises_in_the_fan_out_is_removed_and_counted_and_nobody_else_notices():
    gateway = Gateway()
    source = publisher(gateway)
    first, broken, last = (player(gateway, name) for name in ("first", "broken", "last"))

    def raising(data):
        raise RuntimeError("a transport that fails")
    broken.transport.write = raising
    source.send(audio(23))
    assert [message.timestamp for message in first.received()] == [23]
    assert [message.timestamp for message in last.received()] == [23]
    assert gateway.drops.get("rtmp", "player_error") == 1
    assert broken.transport.disconnecting and broken.membership.left == ["error"]
    assert source.transport.disconnecting is False
    source.send(audio(46))
    assert [message.timestamp for message in last.received()] == [46]
    (stream,) = gateway.door.status()["streams"]
    assert stream["players"] == 2


def test_session_midi_to_a_player_that_stops_reading_is_bounded_then_it_is_disconnected():
    gateway = Gateway()
    stalled, reading = (player(gateway, name, stream="midi") for name in ("stalled", "reading"))
    stalled.protocol.pauseProducing()
    for sequence in range(2000):
        gateway.bus.fan_out([MidiEvent(bytes((0xE0, sequence & 0x7F, 0x40)),
                                       gateway.reactor.seconds())], ALICE)
    assert len(reading.received()) == 2000
    queue = stalled.protocol.queue
    assert queue.queued_bytes <= 32 * 1024 and queue.dropped["data"] > 0
    gateway.reactor.advance(2.5)
    gateway.bus.fan_out([MidiEvent(b"\x90\x3c\x64", gateway.reactor.seconds())], ALICE)
    assert gateway.drops.get("rtmp", "slow_player") == 1
    assert stalled.transport.disconnecting and stalled.membership.left == ["too slow"]
