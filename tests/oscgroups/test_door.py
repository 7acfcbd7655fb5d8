"""The OSCgroups door's Twisted adapters on an in-memory UDP network and task.Clock.

No global reactor, no sockets: :class:`FakeNetwork` is a clock that hands out
fake UDP ports and delivers every write to the port bound at the destination.
Client peers are the real :class:`GroupClient` core driven the way
``client_main`` drives it.
"""

import pytest
from twisted.internet import protocol, task

from gateway.actions import Send
from gateway.config import ConfigError, parse
from tests.members import RecordingMember, join_now, roster_names
from gateway.midi import MidiEvent
from gateway.protocols.oscgroups import client, wire
from gateway.protocols.oscgroups.door import make_service
from gateway.service import GatewayContext
from tests.oscgroups.osc_bytes import osc_message

HOST = "127.0.0.1"
SERVER_PORT, BRIDGE_PORT = 22242, 22241
DEMO_PASSPHRASE = "play along with netgateway demo"
TIMEOUT = 10


class FakeSocket:
    def __init__(self, port):
        self.port = port

    def setsockopt(self, *args):
        pass

    def sendto(self, data, address):
        self.port.write(data, address)


class FakePort:
    """A bound UDP port: writes go through the network, ``sent`` keeps them all."""

    def __init__(self, network, address, datagram_protocol):
        self.network = network
        self.address = address
        self.protocol = datagram_protocol
        self.socket = FakeSocket(self)
        self.sent = []

    def write(self, data, address):
        self.sent.append((data, address))
        self.network.deliver(data, self.address, address)

    def stopListening(self):
        self.network.ports.pop(self.address, None)


class FakeNetwork(task.Clock):
    """task.Clock plus listenUDP; datagrams arrive on the next clock turn."""

    def __init__(self):
        super().__init__()
        self.ports = {}

    def listenUDP(self, port_number, datagram_protocol, interface=""):
        port = FakePort(self, (interface, port_number), datagram_protocol)
        self.ports[port.address] = port
        datagram_protocol.makeConnection(port)
        return port

    def deliver(self, data, source, destination):
        def arrive():
            port = self.ports.get(tuple(destination))
            if port is not None:
                port.protocol.datagramReceived(data, source)
        self.callLater(0, arrive)

    def run(self, seconds, step=0.1):
        for _ in range(round(seconds / step)):
            self.advance(step)


class _Callback(protocol.DatagramProtocol):
    def __init__(self, callback):
        self.callback = callback

    def datagramReceived(self, data, addr):
        self.callback(data, addr)


class FakeClientProgram:
    """An OSCgroups client program: the real core, a fake socket, an app inbox."""

    def __init__(self, network, name, port, group_password=DEMO_PASSPHRASE):
        self.network = network
        self.core = client.GroupClient(
            name, wire.password_hash(name), "demo", wire.password_hash(group_password),
            (HOST, SERVER_PORT), (HOST, port))
        self.app_inbox = []
        self.port = network.listenUDP(port, _Callback(self._from_network), interface=HOST)
        self.timer = task.LoopingCall(lambda: self._perform(self.core.timer(network.seconds())))
        self.timer.clock = network
        self.timer.start(client.TICK_INTERVAL, now=True)

    def _from_network(self, data, addr):
        self._perform(self.core.receive(data, addr, self.network.seconds()))

    def app_sends(self, data):
        self._perform(self.core.send_from_app(data, self.network.seconds()))

    def _perform(self, actions):
        for action in actions:
            if isinstance(action, Send):
                self.port.write(action.data, action.address)
            else:
                self.app_inbox.append(action.data)

    def app_messages(self, prefix="/midi"):
        return [message for data in self.app_inbox for message in wire.parse_packet(data)
                if message.address.startswith(prefix)]

    def crash(self):
        self.timer.stop()
        self.port.stopListening()


def make_door(oscgroups=None, max_members=None):
    network = FakeNetwork()
    section = {"host": HOST, "port": SERVER_PORT, "timeout": TIMEOUT,
               "bridge": {"port": BRIDGE_PORT, "groups": ["demo"]}}
    section.update(oscgroups or {})
    config = parse({"sessions": [{"name": "demo", "passphrase": DEMO_PASSPHRASE,
                                  "max_members": max_members}],
                    "web": {"enabled": False}, "oscgroups": section})
    context = GatewayContext(config, network)
    door = make_service(config.doors["oscgroups"], context)
    door.startService()
    return door, context, network


def alive_bundle(user, group_password, group="demo"):
    return wire.encode_bundle([
        wire.UserAlive(user, wire.password_hash(user), (HOST, 5000),
                       ((group, wire.password_hash(group_password)),)).encode(),
        wire.GroupUsersQuery(group, wire.password_hash(group_password)).encode()])


def statuses(data):
    return [message.args[-1] for message in wire.parse_packet(data)
            if message.address in (wire.USER_ALIVE_STATUS, wire.USER_GROUP_STATUS)]


def test_server_replies_to_the_source_address():
    door, _context, network = make_door({"bridge": {"enabled": False}})
    port = network.ports[(HOST, SERVER_PORT)]
    port.protocol.datagramReceived(alive_bundle("alice", DEMO_PASSPHRASE), (HOST, 5000))
    ((reply, destination),) = port.sent
    assert destination == (HOST, 5000)
    assert statuses(reply) == ["ok", "ok"]


def test_group_password_is_the_session_passphrase_md5():
    door, context, network = make_door({"bridge": {"enabled": False}})
    port = network.ports[(HOST, SERVER_PORT)]
    port.protocol.datagramReceived(alive_bundle("alice", DEMO_PASSPHRASE), (HOST, 5000))
    assert statuses(port.sent[-1][0]) == ["ok", "ok"]
    port.protocol.datagramReceived(alive_bundle("mallory", "guess"), (HOST, 5001))
    assert statuses(port.sent[-1][0]) == ["ok", "wrong password"]
    assert context.drops.get("oscgroups", "refused_wrong_group_password") == 1
    assert context.drops.get("oscgroups", "wrong_group_password") == 1   # its query
    # A group that is no gateway session is plain OSCgroups: the first joiner sets it.
    port.protocol.datagramReceived(alive_bundle("carol", "anything", "jam"), (HOST, 5002))
    assert statuses(port.sent[-1][0]) == ["ok", "ok"]


def test_malformed_datagrams_are_counted_and_logged_once_per_interval():
    door, context, network = make_door({"bridge": {"enabled": False}})
    logged = []
    door.drop_log.log = type("Log", (), {"warn": lambda self, text, **kw: logged.append(kw)})()
    port = network.ports[(HOST, SERVER_PORT)]
    for data in (b"hello world", b"#bundle\x00" + b"\x00" * 7 + b"\x01\xff\xff\xff\xfc", b""):
        port.protocol.datagramReceived(data, (HOST, 5003))
    assert port.sent == []
    assert context.drops.get("oscgroups", "malformed") == 2
    assert context.drops.get("oscgroups", "empty") == 1
    assert len(logged) == 1 and logged[0]["peer"] == (HOST, 5003)


def test_purge_runs_without_traffic():
    door, _context, network = make_door({"bridge": {"enabled": False}})
    port = network.ports[(HOST, SERVER_PORT)]
    port.protocol.datagramReceived(alive_bundle("alice", DEMO_PASSPHRASE), (HOST, 5000))
    network.run(TIMEOUT * 1.1 + 0.2, step=0.5)
    assert door.server.users == {}


@pytest.mark.parametrize("section, fragment", [
    ({"host": "0.0.0.0"}, "oscgroups.relay.host: the relay listens on every address (0.0.0.0),"
                          " so clients must be told one: set network.public_address"),
    ({"host": "::1"}, "oscgroups.host: OSCgroups is IPv4 only"),
    ({"bridge": {"groups": ["jam"]}}, "oscgroups.bridge.groups[0]: group 'jam' is not a declared"),
    ({"groups": {"jam": "nope"}}, "oscgroups.groups.jam: session 'nope' is not declared"),
    ({"bridge": {"prefix": "midi/"}}, "oscgroups.bridge.prefix: OSC prefix must start"),
    ({"bridge": {"port": SERVER_PORT}}, "oscgroups.bridge.port: udp port 22242 is already used"),
    ({"relay": {"host": "::1"}}, "oscgroups.relay.host: expected an IPv4 address"),
    ({"relay": {"port_min": 30010, "port_max": 30000}},
     "oscgroups.relay.port_max: expected at least port_min (30010)"),
    ({"relay": {"port_min": 22240, "port_max": 22250}},
     "oscgroups.relay.port_min-port_max: udp port 22241 is already used by oscgroups.bridge"),
    ({"relay": {"policy": "sometimes"}}, "oscgroups.relay.policy"),
])
def test_config_problems_name_the_key(section, fragment):
    with pytest.raises(ConfigError) as raised:
        parse({"sessions": [{"name": "demo", "passphrase": DEMO_PASSPHRASE}],
               "oscgroups": section})
    assert any(problem.startswith(fragment) for problem in raised.value.problems), \
        raised.value.problems


def test_mapped_group_bridges_into_its_session():
    config = parse({"sessions": [{"name": "demo", "passphrase": DEMO_PASSPHRASE}],
                    "oscgroups": {"groups": {"band": "demo"}, "bridge": {"groups": ["band"]}}})
    assert config.doors["oscgroups"].session_name("band") == "demo"


def joined_bridge(door, context, network):
    """alice (an OSC client) and wendy (a recorder) in demo, with the bridge between."""
    alice = FakeClientProgram(network, "alice", 7000)
    wendy = RecordingMember("wendy", door="websocket")
    wendy_membership = join_now(context.bus, wendy, passphrase=DEMO_PASSPHRASE)
    network.run(10)
    assert door.bridge.path("alice") == f"private {HOST}:7000"
    assert roster_names(context.bus) == ["wendy", "alice"]
    return alice, wendy, wendy_membership


def test_bridge_moves_midi_both_ways():
    door, context, network = make_door()
    alice, wendy, wendy_membership = joined_bridge(door, context, network)

    alice.app_sends(osc_message("/midi/note", "iii", 1, 60, 100))
    alice.app_sends(osc_message("/not/midi", "i", 1))
    network.run(0.2)
    assert wendy.received == [(bytes([0x90, 60, 100]), "alice")]
    assert context.drops.get("oscgroups", "unmapped") == 1

    wendy_membership.publish([MidiEvent(bytes([0x90, 62, 90])), MidiEvent(bytes([0x80, 62, 0]))])
    network.run(0.2)
    assert alice.app_messages() == [wire.Message("/midi/noteon", "iii", (1, 62, 90)),
                                    wire.Message("/midi/noteoff", "iii", (1, 62, 0))]
    status = door.status()
    assert status["bridge"]["peers"]["alice"] == {"groups": ["demo"],
                                                  "path": f"private {HOST}:7000"}
    assert sorted(status["server"]["groups"]["demo"]) == ["alice", "netgateway"]


def test_osc_peers_do_not_get_each_others_midi_twice():
    door, context, network = make_door()
    alice, wendy, _ = joined_bridge(door, context, network)
    bob = FakeClientProgram(network, "bob", 7001)
    network.run(12)
    assert set(roster_names(context.bus)) == {"wendy", "alice", "bob"}
    alice.app_sends(osc_message("/midi/note", "iii", 1, 60, 100))
    network.run(0.2)
    # bob hears alice directly, as OscGroupClient sends to every peer; not again via the bridge.
    assert bob.app_messages() == [wire.Message("/midi/note", "iii", (1, 60, 100))]
    assert wendy.received == [(bytes([0x90, 60, 100]), "alice")]


def test_purged_peer_leaves_and_its_notes_are_released():
    door, context, network = make_door()
    alice, wendy, _ = joined_bridge(door, context, network)
    alice.app_sends(osc_message("/midi/noteon", "iii", 2, 64, 110))
    network.run(0.2)
    alice.crash()
    network.run(TIMEOUT * 1.1 + 15, step=0.3)
    assert wendy.received == [(bytes([0x91, 64, 110]), "alice"), (bytes([0x81, 64, 64]), "alice")]
    assert roster_names(context.bus) == ["wendy"]
    assert "alice" not in door.bridge.client.peers and door.members == {}


def test_stop_releases_members_and_closes_ports():
    door, context, network = make_door()
    alice, wendy, _ = joined_bridge(door, context, network)
    alice.app_sends(osc_message("/midi/noteon", "iii", 1, 60, 100))
    network.run(0.2)
    alice.crash()
    door.stopService()
    assert wendy.received[-1] == (bytes([0x80, 60, 64]), "alice")
    assert (HOST, SERVER_PORT) not in network.ports and (HOST, BRIDGE_PORT) not in network.ports
    network.run(0.2)
    assert network.getDelayedCalls() == []       # purge and bridge timers stopped
