"""The WebSocket door's member adapter against a recording bus: what goes on its wire.

No reactor and no socket: each connection is a :class:`JamServerProtocol`
built by the door's own factory on a StringTransport; the test speaks raw
WebSocket to it (the opening handshake, masked client frames) and reads the
server's frames back from the transport. Time is a task.Clock, also given to
txaio so that autobahn's own timers run on it.

autobahn's txaio serves one framework per process, and the integration tests
use autobahn's asyncio client in this one: the ``server`` fixture switches
txaio to Twisted for this module only and switches it back afterwards.
"""

import io
import json
import types

import mido
import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from gateway.bus import values
from gateway.bus.local import DropCounters
from gateway.bus.values import JoinRequest, Passphrase, RosterEntry
from gateway.config import parse
from gateway.interfaces import IMember
from gateway.midi import MidiEvent
from gateway.recording import RecordingStore
from tests.bus.recording import RecordingBus
from tests.doors.conftest import import_on_twisted

PASSPHRASE = "twenty characters or more"
PEER_HOST = "203.0.113.5"
BOB = RosterEntry(7, "bob", "rtpmidi", 3.5)
HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")
TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8
MASK = b"\x37\xfa\x21\x3d"


@pytest.fixture(scope="module")
def server():
    """gateway.protocols.websocket.server, with txaio on Twisted while this module runs."""
    yield from import_on_twisted("gateway.protocols.websocket.server")


class RecordingLog:
    def __init__(self):
        self.failures = []

    def failure(self, text, failure=None, **fields):
        self.failures.append((text, failure))

    def info(self, text, **fields):
        pass

    warn = debug = info


class WireTransport(StringTransport):
    """A TCP transport as JamServerProtocol.onOpen finds it (the HTTP channel its producer)."""

    def __init__(self, host):
        super().__init__(peerAddress=IPv4Address("TCP", host, 40000))
        self.no_delay = None
        self.lost = False
        self.registerProducer(object(), True)

    def setTcpNoDelay(self, enabled):
        self.no_delay = enabled


def client_frame(opcode, payload):
    """One masked, final client frame."""
    length = len(payload)
    if length < 126:
        header = bytes([0x80 | opcode, 0x80 | length])
    else:
        header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    return header + MASK + bytes(octet ^ MASK[index % 4] for index, octet in enumerate(payload))


def server_frames(data):
    """``[(opcode, payload), ...]`` of unmasked server frames."""
    frames = []
    while data:
        opcode, length, position = data[0] & 0x0F, data[1] & 0x7F, 2
        assert data[0] & 0x80 and not data[1] & 0x80, "a final, unmasked frame"
        if length == 126:
            length, position = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, position = int.from_bytes(data[2:10], "big"), 10
        frames.append((opcode, data[position:position + length]))
        data = data[position + length:]
    return frames


class Client:
    """A browser on the other end of one connection, speaking raw WebSocket."""

    def __init__(self, gateway, host):
        self.gateway = gateway
        self.transport = WireTransport(host)
        self.protocol = gateway.door.factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(HANDSHAKE)
        response, _, rest = self.transport.value().partition(b"\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 101 "), response
        self.transport.clear()
        assert rest == b""

    # sending ------------------------------------------------------------
    def send(self, message):
        self.protocol.dataReceived(client_frame(TEXT, json.dumps(message).encode()))

    def send_binary(self, payload):
        self.protocol.dataReceived(client_frame(BINARY, payload))

    def send_close(self, code=1000):
        self.protocol.dataReceived(client_frame(CLOSE, code.to_bytes(2, "big")))

    def join(self, name="alice", session="demo", passphrase=PASSPHRASE, midi="json"):
        """Send a join; return the bus's record of it (not answered yet)."""
        self.send({"type": "join", "session": session, "passphrase": passphrase,
                   "name": name, "midi": midi})
        return self.gateway.bus.joins[-1]

    def joined(self, name="alice", midi="json"):
        """Join and be admitted; return the membership (the 'joined' frame is read)."""
        membership = self.join(name, midi=midi).accept()
        [joined] = self.messages()
        assert joined["type"] == "joined"
        return membership

    def lose_connection(self, clean=True):
        self.protocol.connectionLost(Failure(ConnectionDone() if clean else ConnectionLost()))

    # receiving ----------------------------------------------------------
    def frames(self):
        """Frames the server wrote since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return server_frames(data)

    def messages(self):
        """Text frames as dicts, binary as ("binary", bytes), close as ("close", code, reason)."""
        decoded = []
        for opcode, payload in self.frames():
            if opcode == TEXT:
                decoded.append(json.loads(payload))
            elif opcode == BINARY:
                decoded.append(("binary", payload))
            else:
                assert opcode == CLOSE
                decoded.append(("close", int.from_bytes(payload[:2], "big"),
                                payload[2:].decode("utf-8")))
        return decoded


class Gateway:
    """A WebSocketDoor on a task.Clock, its session bus a RecordingBus."""

    def __init__(self, server):
        self.clock = task.Clock()
        self.bus = RecordingBus()
        config = parse({"sessions": [{"name": "demo", "passphrase": PASSPHRASE}],
                        "websocket": {"ping_interval": 1.0}})
        context = types.SimpleNamespace(config=config, reactor=self.clock, bus=self.bus,
                                        drops=DropCounters(), web_root=Resource(),
                                        metrics=None, recordings=RecordingStore())
        self.door = server.WebSocketDoor(config.doors["websocket"], context)
        self.door.log = RecordingLog()
        self.door.startService()

    def connect(self, host=PEER_HOST):
        return Client(self, host)


@pytest.fixture
def gateway(server):
    import txaio
    gateway = Gateway(server)
    loop, txaio.config.loop = txaio.config.loop, gateway.clock    # autobahn's own timers
    yield gateway
    if gateway.door.running:
        gateway.door.stopService()
    txaio.config.loop = loop


def note(status, number=60, velocity=100):
    return MidiEvent(bytes([status, number, velocity]), 12.5)


def address_fields(value):
    """Every key, at any depth, that would carry a network address."""
    if isinstance(value, dict):
        return [key for key, item in value.items()
                if key in ("address", "addr", "host", "peer", "source", "ip", "port")
                ] + [key for item in value.values() for key in address_fields(item)]
    if isinstance(value, list):
        return [key for item in value for key in address_fields(item)]
    return []


# --- joining ------------------------------------------------------------------

def test_the_welcome_carries_the_sessions_tempo_on_the_server_clock(gateway):
    client = gateway.connect()
    gateway.clock.advance(100.0)
    tempo = values.TempoState(96.0, True, 3, 4, 102.5)
    client.join().accept(tempo=tempo)
    [joined] = client.messages()
    assert joined["tempo"] == {"bpm": 96.0, "running": True, "beats_per_bar": 3, "beat": 4,
                               "beat_time": 102.5, "changed_by": None, "server_time": 100.0}


# --- the session tempo ----------------------------------------------------------

CLOCK_ENTRY = RosterEntry(-1, "clock", "clock")
CONTROL = "the conductor's own secret"


def test_a_tempo_delivery_is_one_tempo_frame_before_the_clock(gateway):
    first, second = gateway.connect(), gateway.connect("203.0.113.6")
    first.joined("alice")
    second.joined("bob", midi="binary")
    gateway.clock.advance(50.0)
    first.messages(), second.messages()           # the pings
    tempo = values.TempoState(120.0, True, 4, 0, 50.0, RosterEntry(3, "carol", "websocket"))
    delivery = gateway.bus.fan_out([MidiEvent(b"\xfa", 50.0), MidiEvent(b"\xf8", 50.0)],
                                   CLOCK_ENTRY, tempo=tempo)
    expected = {"type": "tempo", "bpm": 120.0, "running": True, "beats_per_bar": 4, "beat": 0,
                "beat_time": 50.0, "server_time": 50.0,
                "changed_by": {"id": 3, "name": "carol", "door": "websocket", "rtt_ms": None}}
    heard = first.messages()
    assert heard[0] == expected
    assert [(m["data"], m["time"], m["from"]["name"]) for m in heard[1:]] == [
        ([0xFA], 50.0, "clock"), ([0xF8], 50.0, "clock")]
    assert second.messages() == [expected, ("binary", b"\xfa\xf8")]
    assert ("websocket", "tempo") in delivery._memo     # prepared once for both
    gateway.bus.fan_out([MidiEvent(b"\xf8", 50.02)], CLOCK_ENTRY)
    assert [m["type"] for m in first.messages()] == ["midi"]
    assert second.messages() == [("binary", b"\xf8")]
    # A new bpm alone is the tempo frame alone, in either MIDI mode.
    gateway.bus.fan_out([], CLOCK_ENTRY, tempo=tempo._replace(bpm=90.0))
    assert [m["bpm"] for m in first.messages()] == [90.0]
    assert [m["bpm"] for m in second.messages()] == [90.0]


def test_a_tempo_request_goes_to_the_bus_with_the_control_passphrase(gateway):
    client = gateway.connect()
    membership = client.joined()
    client.send({"type": "tempo", "control_passphrase": CONTROL, "bpm": 90,
                 "transport": "start"})
    assert membership.tempo_changes == [values.TempoChange(CONTROL, 90, "start", PEER_HOST)]
    client.send({"type": "tempo", "control_passphrase": CONTROL, "transport": "continue",
                 "position": 64})
    assert membership.tempo_changes[-1] == values.TempoChange(CONTROL, None, "continue",
                                                              PEER_HOST, 64)
    assert client.messages() == []
    membership.tempo_answer = values.Refusal(values.WRONG_PASSPHRASE, "wrong control passphrase")
    client.send({"type": "tempo", "control_passphrase": "guess", "transport": "stop"})
    assert client.messages() == [{"type": "error", "code": "wrong_passphrase",
                                  "message": "wrong control passphrase"}]


@pytest.mark.parametrize("request_, problem", [
    ({"bpm": 90}, "tempo: control_passphrase must be a string of 1 to 1024 characters"),
    ({"control_passphrase": CONTROL}, "tempo: give a bpm, a transport or a position"),
    ({"control_passphrase": CONTROL, "position": 1.5},
     "tempo: position must be a whole number of sixteenths"),
    ({"control_passphrase": CONTROL, "bpm": "fast"}, "tempo: bpm must be a number"),
    ({"control_passphrase": CONTROL, "transport": "rewind"},
     "tempo: transport must be one of start, stop, continue"),
])
def test_a_malformed_tempo_request_is_a_bad_request(gateway, request_, problem):
    client = gateway.connect()
    membership = client.joined()
    client.send({"type": "tempo", **request_})
    assert membership.tempo_changes == []
    assert client.messages() == [{"type": "error", "code": "bad_request", "message": problem}]


def test_a_tempo_request_before_joining_is_refused(gateway):
    client = gateway.connect()
    client.send({"type": "tempo", "control_passphrase": CONTROL, "bpm": 90})
    assert client.messages() == [{"type": "error", "code": "not_joined",
                                  "message": "join a session before changing its tempo"}]

def test_join_asks_the_bus_with_the_passphrase_and_the_peers_host(gateway):
    client = gateway.connect()
    verifyObject(IMember, client.protocol)
    pending = client.join("alice", midi="binary")
    assert pending.request == JoinRequest("demo", "alice", "websocket", Passphrase(PASSPHRASE),
                                          PEER_HOST)
    assert pending.member is client.protocol
    assert client.frames() == []                 # nothing until the bus answers
    membership = pending.accept(roster=[BOB])
    [joined] = client.messages()
    me = {"id": membership.entry.member_id, "name": "alice", "door": "websocket",
          "rtt_ms": None}
    assert joined == {"type": "joined", "session": "demo", "member": me, "mirror": False,
                      "tempo": None,
                      "members": [{"id": 7, "name": "bob", "door": "rtpmidi", "rtt_ms": 3.5},
                                  me]}


@pytest.mark.parametrize("reason", values.REFUSAL_REASONS)
def test_refused_join_is_an_error_frame_with_the_reason_and_message(gateway, reason):
    client = gateway.connect()
    client.join().refuse(reason, f"no, because {reason}")
    assert client.messages() == [{"type": "error", "code": reason,
                                  "message": f"no, because {reason}"}]
    # The connection stays open and the peer may try again.
    assert client.protocol.state == client.protocol.STATE_OPEN
    assert client.join(passphrase="another try, long enough") is not gateway.bus.joins[0]
    assert len(gateway.bus.joins) == 2 and client.frames() == []
    assert gateway.door.log.failures == []


@pytest.mark.parametrize("name", ["", "   ", "alice\nnetgateway: forged", "\u202eecila",
                                  "x" * 200])
def test_a_name_goes_to_the_bus_as_sent_for_its_name_rule(gateway, name):
    client = gateway.connect()
    # Not repaired to "guest", not refused as a bad request: the bus decides.
    assert client.join(name=name).request.name == name


def test_a_join_without_a_name_is_a_guest_and_a_name_that_is_no_string_a_bad_request(gateway):
    client = gateway.connect()
    client.send({"type": "join", "session": "demo", "passphrase": PASSPHRASE})
    assert gateway.bus.joins[-1].request.name == "guest"
    gateway.bus.joins[-1].refuse(values.WRONG_PASSPHRASE)
    client.messages()
    client.join(name=["alice"])
    assert len(gateway.bus.joins) == 1
    assert client.messages() == [{"type": "error", "code": "bad_request",
                                  "message": "join: name must be a string"}]


def test_a_second_guest_is_numbered_and_a_chosen_name_goes_as_sent(gateway):
    gateway.bus.set_view("demo", roster=[RosterEntry(3, "guest", "websocket")])
    client = gateway.connect()
    client.send({"type": "join", "session": "demo", "passphrase": PASSPHRASE})
    assert gateway.bus.joins[-1].request.name == "guest 2"
    gateway.bus.joins[-1].refuse(values.WRONG_PASSPHRASE)
    # The bus, not the door, refuses a chosen name that is taken.
    gateway.bus.set_view("demo", roster=[RosterEntry(4, "alice", "websocket")])
    assert client.join(name="alice").request.name == "alice"


def test_a_second_join_while_one_is_pending_is_refused_by_the_door(gateway):
    client = gateway.connect()
    client.join()
    client.join()
    assert len(gateway.bus.joins) == 1
    assert client.messages() == [{"type": "error", "code": "already_joined",
                                  "message": "leave the current session first"}]


@pytest.mark.parametrize("goes", ["connection lost", "closing handshake"])
def test_a_membership_that_arrives_after_the_peer_went_away_is_left(gateway, goes):
    client = gateway.connect()
    pending = client.join()
    if goes == "connection lost":
        client.lose_connection(clean=False)
    else:
        client.send_close()
    membership = pending.accept()
    assert membership.left == ["disconnected while joining"]
    assert [message for message in client.messages()
            if not (isinstance(message, tuple) and message[0] == "close")] == []
    assert gateway.door.log.failures == []


def test_a_refusal_that_arrives_after_the_peer_went_away_writes_nothing(gateway):
    client = gateway.connect()
    pending = client.join()
    client.lose_connection()
    client.transport.clear()
    pending.refuse(values.SESSION_FULL, "full")
    assert client.transport.value() == b"" and gateway.door.log.failures == []


# --- what the bus sends --------------------------------------------------------

@pytest.mark.parametrize("change", [values.JOINED, values.LEFT, values.UPDATED])
def test_roster_notice_is_a_members_frame_without_any_address(gateway, change):
    client = gateway.connect()
    membership = client.joined()
    gateway.bus.announce(change, BOB, [membership.entry, BOB], to=[client.protocol])
    [frame] = client.frames()
    members = json.loads(frame[1])
    bob = {"id": 7, "name": "bob", "door": "rtpmidi", "rtt_ms": 3.5}
    alice = {"id": membership.entry.member_id, "name": "alice", "door": "websocket",
             "rtt_ms": None}
    assert members == {"type": "members", "change": change, "member": bob,
                       "members": [alice, bob]}
    assert address_fields(members) == [] and PEER_HOST.encode() not in frame[1]


@pytest.mark.parametrize("midi", ["json", "binary"])
def test_released_note_offs_go_on_the_wire(gateway, midi):
    client = gateway.connect()
    client.joined(midi=midi)
    offs = [note(0x80, 60, 0), note(0x81, 64, 0), MidiEvent(b"\xb0\x40\x00", 12.5)]
    gateway.bus.fan_out(offs, BOB, released=True, to=[client.protocol])
    origin = {"id": 7, "name": "bob", "door": "rtpmidi"}
    if midi == "json":
        assert client.messages() == [
            {"type": "midi", "from": origin, "data": list(event.data), "time": 12.5}
            for event in offs]
    else:
        assert client.messages() == [("binary", b"\x80\x3c\x00\x81\x40\x00\xb0\x40\x00")]


def test_members_with_the_same_midi_mode_share_one_encoding(gateway, server, monkeypatch):
    computed = []
    frames = server._frames

    def counting(factory, events, source, mode):
        computed.append(mode)
        return frames(factory, events, source, mode)

    monkeypatch.setattr(server, "_frames", counting)
    clients = [gateway.connect(f"203.0.113.{number}") for number in (1, 2, 3)]
    for client, (name, midi) in zip(clients, [("a", "json"), ("b", "json"), ("c", "binary")]):
        client.joined(name, midi)
    gateway.bus.fan_out([note(0x90)], BOB)
    assert sorted(computed) == ["binary", "json"]
    first, second, third = (client.frames() for client in clients)
    assert first == second and len(first) == 1 and first[0][0] == TEXT
    assert third == [(BINARY, b"\x90\x3c\x64")]


# --- what the peer does ----------------------------------------------------------

def test_what_the_peer_plays_is_published_and_touches_the_membership(gateway):
    client = gateway.connect()
    client.send({"type": "midi", "data": [144, 60, 100]})
    assert client.messages() == [{"type": "error", "code": "not_joined",
                                  "message": "join a session before sending MIDI"}]
    membership = client.joined()
    gateway.clock.advance(2.5)
    client.send({"type": "midi", "data": [144, 60, 100, 62, 90]})
    client.send_binary(b"\x80\x3c\x00")
    assert [([bytes(event.data) for event in events], [event.time for event in events],
             encodings) for events, encodings in membership.published] == [
        ([b"\x90\x3c\x64", b"\x90\x3e\x5a"], [2.5, 2.5], None),
        ([b"\x80\x3c\x00"], [2.5], None)]
    assert membership.touches == 2


def test_pong_reports_the_round_trip_as_latency(gateway):
    client = gateway.connect()
    membership = client.joined()
    gateway.clock.advance(1.0)
    [ping] = client.messages()
    assert ping == {"type": "ping", "id": 1, "server_time": 1.0}
    gateway.clock.advance(0.025)
    client.send({"type": "pong", "id": 99})           # no such ping: nothing measured
    client.send({"type": "pong", "id": 1})
    assert membership.latencies == [25.0]


@pytest.mark.parametrize("reason, code", [("idle", 4001), ("kicked", 4002), ("error", 4002),
                                          ("shutdown", 1001)])
def test_disconnect_closes_with_the_reasons_code(gateway, reason, code):
    client = gateway.connect()
    membership = client.joined()
    gateway.bus.kick(membership, reason)
    assert client.messages() == [("close", code, reason)]
    client.send({"type": "midi", "data": [144, 60, 100]})    # still in flight
    client.send_close(code)
    client.lose_connection()
    assert membership.published == []
    assert not gateway.door.connections


def test_stopping_the_door_leaves_and_closes_with_1001(gateway):
    client = gateway.connect()
    membership = client.joined()
    gateway.door.stopService()
    assert membership.left == ["gateway stopping"]
    assert client.messages() == [("close", 1001, "gateway stopping")]


@pytest.fixture
def log_events():
    """Every twisted.logger event emitted while the test runs."""
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_a_connection_autobahn_fails_is_counted_once_by_its_close_code(gateway, log_events):
    client = gateway.connect()
    client.protocol.dataReceived(client_frame(TEXT, b"\xff\xfe"))     # not UTF-8
    assert client.messages()[0][:2] == ("close", 1007)
    client.protocol.dataReceived(client_frame(TEXT, b"\xff"))          # failed again, closing
    client.lose_connection(clean=False)
    assert gateway.door.drops.get("websocket", "protocol_error_1007") == 1
    [line] = [event for event in log_events if event["log_level"] >= LogLevel.info]
    assert line["log_namespace"] == "netgateway.websocket" and line["peer"] == PEER_HOST


def test_autobahns_per_connection_warnings_are_silent_but_its_errors_show(gateway, log_events):
    protocol = gateway.connect().protocol
    protocol.log.warn("dropping connection to peer {peer}", peer=protocol.peer)
    protocol.log.info("failing WebSocket opening handshake")
    protocol.log.error("Firing signal 'message' failed: {fail}", fail="boom")
    assert [(event["log_level"], event["fail"]) for event in log_events] == [
        (LogLevel.error, "boom")]


# --- recording -------------------------------------------------------------------

def recording_messages(client):
    return [message for message in client.messages() if message["type"] == "recording"]


def test_a_member_records_what_it_hears_and_plays_and_gets_a_link_for_it_alone(gateway):
    client = gateway.connect()
    client.send({"type": "record", "action": "start"})
    assert client.messages()[0]["code"] == "not_joined"
    client.joined()
    gateway.clock.advance(10.0)
    client.send({"type": "record", "action": "start"})
    [started] = recording_messages(client)
    assert started == {"type": "recording", "state": "on", "started_at": 10.0, "events": 0,
                       "players": []}
    gateway.clock.advance(0.5)
    gateway.bus.fan_out([note(0x90, 64)], BOB)
    gateway.clock.advance(0.5)
    client.send({"type": "midi", "data": [0x90, 60, 100]})
    gateway.clock.advance(1.0)
    gateway.bus.fan_out([note(0x80, 64, 0), MidiEvent(b"\xf8", 12.0)], BOB)
    client.messages()
    client.send({"type": "record", "action": "stop"})
    [stopped] = recording_messages(client)
    assert (stopped["state"], stopped["events"], stopped["players"]) == ("off", 3, ["bob", "alice"])
    path, _, token = stopped["url"].partition("?token=")
    assert path == "/sessions/demo/recording.mid"
    song = mido.MidiFile(file=io.BytesIO(gateway.door.recordings.fetch("demo", token, 12.0)))
    _, bob, alice = song.tracks
    assert (bob.name, alice.name) == ("bob", "alice")
    # 120 bpm, 480 ticks a beat: 960 ticks a second.
    assert [(m.type, m.note, m.time) for m in bob if not m.is_meta] == [
        ("note_on", 64, 480), ("note_off", 64, 1440)]
    assert [(m.type, m.note, m.time) for m in alice if not m.is_meta] == [("note_on", 60, 960)]
    client.send({"type": "record", "action": "stop"})
    assert [message["code"] for message in client.messages()
            if message["type"] == "error"] == ["not_recording"]
