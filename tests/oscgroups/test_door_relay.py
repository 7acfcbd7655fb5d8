"""The door's relay and busy reply on the in-memory UDP network, with in-memory NATs.

:class:`FakeNat` maps a LAN client's flows to its public address the way the
rig of shared/protocols/oscgroups.md §2.4 does: a cone NAT keeps the port, a
symmetric one picks a new port per destination, and both drop what nobody
inside asked for. A ``plain`` one (a Linux router with MASQUERADE and no
INPUT drop, shared/testing.md) also remembers what it turned away, and gives
a flow towards that sender another port, as conntrack does. Clients are the
real :class:`GroupClient` core.
"""

import itertools

from twisted.internet import error, task

from gateway.midi import MidiEvent
from gateway.protocols.oscgroups import client, wire
from gateway.protocols.oscgroups.metrics import OscGroupsCollector
from tests.members import RecordingMember, join_now, roster_names

from .osc_bytes import osc_message
from .test_door import BRIDGE_PORT, DEMO_PASSPHRASE, SERVER_PORT, FakeClientProgram, \
    make_door, statuses

GATEWAY = "198.18.0.1"
RELAY_PORTS = (22300, 22309)


class FakeNat:
    """Address-and-port-restricted NAT; ``symmetric`` maps each destination anew."""

    def __init__(self, network, public_ip, symmetric, plain=False):
        self.network = network
        self.public_ip = public_ip
        self.symmetric = symmetric
        self.plain = plain
        self.unanswered = set()       # (public port, remote address) turned away
        self.flows = {}               # (inside address, destination) -> public port
        self.allowed = set()          # (public port, remote address)
        self.inside = {}              # public port -> inside port object
        self._random_ports = itertools.count(31000)
        self.dropped = 0

    def send(self, inside, data, destination):
        key = (inside.address, tuple(destination))
        public_port = self.flows.get(key)
        if public_port is None:
            public_port = inside.address[1]
            if self.symmetric or (public_port, tuple(destination)) in self.unanswered:
                public_port = next(self._random_ports)
            self.flows[key] = public_port
            self.inside[public_port] = inside
            self.network.ports[(self.public_ip, public_port)] = _Inbound(self, public_port)
        self.allowed.add((public_port, tuple(destination)))
        self.network.deliver(data, (self.public_ip, public_port), destination)

    def receive(self, public_port, data, source):
        if (public_port, tuple(source)) not in self.allowed:
            self.dropped += 1
            if self.plain:
                self.unanswered.add((public_port, tuple(source)))
            return
        self.inside[public_port].protocol.datagramReceived(data, source)


class _Inbound:
    def __init__(self, nat, public_port):
        self.protocol = self
        self.nat = nat
        self.public_port = public_port

    def datagramReceived(self, data, source):
        self.nat.receive(self.public_port, data, source)


class _LanPort:
    def __init__(self, nat, address, datagram_protocol):
        self.nat = nat
        self.address = address
        self.protocol = datagram_protocol

    def write(self, data, address):
        self.nat.send(self, data, address)


class NattedClient(FakeClientProgram):
    """A client program on a LAN behind ``nat`` (the core is the real one)."""

    def __init__(self, network, nat, name, lan_ip, port=22243, password=None):
        self.network = network
        self.core = client.GroupClient(
            name, wire.password_hash(password or name), "demo", wire.password_hash(DEMO_PASSPHRASE),
            (GATEWAY, SERVER_PORT), (lan_ip, port), relay=(GATEWAY, *RELAY_PORTS))
        self.app_inbox = []
        self.port = _LanPort(nat, (lan_ip, port), _Receiver(self._from_network))
        self.timer = task.LoopingCall(lambda: self._perform(self.core.timer(network.seconds())))
        self.timer.clock = network
        self.timer.start(client.TICK_INTERVAL, now=True)

    def crash(self):
        self.timer.stop()


class _Receiver:
    def __init__(self, callback):
        self.datagramReceived = callback


def relay_door(policy="auto", **bridge):
    return make_door({"host": GATEWAY, "bridge": dict({"enabled": False}, **bridge),
                      "relay": {"policy": policy, "port_min": RELAY_PORTS[0],
                                "port_max": RELAY_PORTS[1]}})


def playing(sender, receiver):
    sender.app_sends(osc_message("/jam/note", "i", 60))
    sender.network.run(0.2)
    return receiver.app_messages("/jam") == [wire.Message("/jam/note", "i", (60,))]


def test_symmetric_and_cone_nat_play_through_the_relay():
    door, context, network = relay_door()
    cone_nat = FakeNat(network, "198.18.1.1", symmetric=False)
    symmetric_nat = FakeNat(network, "198.18.2.1", symmetric=True)
    alice = NattedClient(network, cone_nat, "alice", "192.168.1.2")
    bob = NattedClient(network, symmetric_nat, "bob", "192.168.2.2")
    network.run(20)

    alice_port, bob_port = (door.relay.allocations[name].port for name in ("alice", "bob"))
    assert alice.core.paths() == {"bob": ("relay", (GATEWAY, bob_port))}
    assert bob.core.paths() == {"alice": ("relay", (GATEWAY, alice_port))}
    assert playing(alice, bob) and playing(bob, alice)
    relay_status = door.status()["relay"]
    assert relay_status["forwarded"]["packets"] == 2
    assert relay_status["flagged"] == {"bob": "its NAT changed the port"}

    # Purging a user frees its port at once.
    bob.crash()
    network.run(13, step=0.5)
    assert "bob" not in door.relay.allocations
    assert (GATEWAY, bob_port) not in network.ports


def test_a_relay_port_that_cannot_be_opened_is_skipped():
    door, _registry, network = relay_door()
    listen = network.listenUDP

    def listen_udp(number, datagram_protocol, interface=""):
        if number == RELAY_PORTS[0]:
            raise error.CannotListenError(interface, number, OSError("in use"))
        return listen(number, datagram_protocol, interface)
    network.listenUDP = listen_udp
    alice = NattedClient(network, FakeNat(network, "198.18.1.1", False), "alice", "192.168.1.2")
    bob = NattedClient(network, FakeNat(network, "198.18.2.1", True), "bob", "192.168.2.2")
    network.run(25)
    ports = {name: allocation.port for name, allocation in door.relay.allocations.items()}
    assert RELAY_PORTS[0] not in ports.values() and len(ports) == 2
    assert door.relay.counters["ports_unavailable"] == 1
    assert bob.core.paths() == {"alice": ("relay", (GATEWAY, ports["alice"]))}
    assert playing(alice, bob) and playing(bob, alice)


def test_two_cone_nats_meet_directly_and_the_relay_carries_no_data():
    door, _context, network = relay_door()
    alice = NattedClient(network, FakeNat(network, "198.18.1.1", False), "alice", "192.168.1.2")
    carol = NattedClient(network, FakeNat(network, "198.18.3.1", False), "carol", "192.168.3.2")
    network.run(40, step=0.5)
    # Listed direct first, the relay as a fallback: the direct path wins.
    assert alice.core.paths() == {"carol": ("direct", ("198.18.3.1", 22243))}
    assert carol.core.paths() == {"alice": ("direct", ("198.18.1.1", 22243))}
    assert playing(alice, carol) and playing(carol, alice)
    assert door.relay.totals() == {"packets": 0, "bytes": 0, "pings": 0}
    assert door.relay.counters["pings_held"] > 0


def test_cone_nats_that_turn_symmetric_while_punching_meet_through_the_relay():
    door, _context, network = relay_door()
    alice_nat = FakeNat(network, "198.18.1.1", False, plain=True)
    carol_nat = FakeNat(network, "198.18.3.1", False, plain=True)
    alice = NattedClient(network, alice_nat, "alice", "192.168.1.2")
    network.run(3)
    carol = NattedClient(network, carol_nat, "carol", "192.168.3.2")
    network.run(20, step=0.5)
    # The server still sees both ports kept, so auto flags nobody...
    assert door.relay.flagged == {}
    assert alice.core.paths() == {"carol": None} and carol.core.paths() == {"alice": None}
    assert alice_nat.unanswered or carol_nat.unanswered
    # ...and the relay passes their pings once they outlast establishment.
    network.run(30, step=0.5)
    alice_port, carol_port = (door.relay.allocations[name].port for name in ("alice", "carol"))
    assert alice.core.paths() == {"carol": ("relay", (GATEWAY, carol_port))}
    assert carol.core.paths() == {"alice": ("relay", (GATEWAY, alice_port))}
    assert playing(alice, carol) and playing(carol, alice)
    assert door.relay.totals()["packets"] == 2


def test_a_refused_impostor_learns_nobody_and_steers_no_relay_decision():
    door, _context, network = relay_door(enabled=True, port=BRIDGE_PORT)
    alice_nat = FakeNat(network, "198.18.1.1", False)
    alice = NattedClient(network, alice_nat, "alice", "192.168.1.2")
    dave = NattedClient(network, FakeNat(network, "198.18.4.1", False), "dave", "192.168.4.2")
    network.run(10)
    # mallory, on alice's LAN, tries alice's name with another password.
    mallory = NattedClient(network, alice_nat, "alice", "192.168.1.9", port=22253,
                           password="guess")
    network.run(13)
    assert mallory.core.peers == {}
    assert "user registration error: server returned status of 'wrong password' for user" \
        " 'alice'" in mallory.core.take_events()
    # Pinging as alice anyway, to the bridge and to the relay ports, changes nothing.
    for port in range(*RELAY_PORTS):
        mallory.port.write(wire.encode_bundle([wire.Ping("alice").encode()]), (GATEWAY, port))
    mallory.port.write(wire.encode_bundle([wire.Ping("alice").encode()]),
                       (GATEWAY, BRIDGE_PORT))
    network.run(7)
    assert door.relay.flagged == {}
    assert door.relay.counters["pings_from_refused_sources"] >= 1
    assert alice.core.paths() == {"dave": ("direct", ("198.18.4.1", 22243)),
                                  "netgateway": ("private", (GATEWAY, BRIDGE_PORT))}
    assert playing(dave, alice)


def test_policy_never_leaves_symmetric_nat_stuck_as_the_original():
    door, _context, network = relay_door("never")
    cone_nat = FakeNat(network, "198.18.1.1", symmetric=False)
    symmetric_nat = FakeNat(network, "198.18.2.1", symmetric=True)
    alice = NattedClient(network, cone_nat, "alice", "192.168.1.2")
    bob = NattedClient(network, symmetric_nat, "bob", "192.168.2.2")
    network.run(20)
    assert door.relay is None and door.status()["relay"] is None
    assert not playing(alice, bob)
    # Each NAT turned the other's pings away (§7.6).
    assert cone_nat.dropped > 0 and symmetric_nat.dropped > 0


def test_bridge_hears_a_symmetric_nat_directly_and_the_relay_metrics_are_exported():
    door, context, network = relay_door(enabled=True)
    wendy = RecordingMember("wendy", door="websocket")
    wendy_membership = join_now(context.bus, wendy, passphrase=DEMO_PASSPHRASE)
    bob = NattedClient(network, FakeNat(network, "198.18.2.1", True), "bob", "192.168.2.2")
    network.run(20)
    # The gateway has no NAT: bob reaches it on his ping endpoint (§2.4 bob <-> pete).
    assert door.bridge.path("bob").startswith("ping 198.18.2.1:")
    wendy_membership.publish([MidiEvent(bytes([0x90, 60, 100]))])
    network.run(0.2)
    assert bob.app_messages() == [wire.Message("/midi/noteon", "iii", (1, 60, 100))]
    assert door.relay.allocations == {}
    names = {metric.name for metric in OscGroupsCollector(door).collect()}
    assert {"netgateway_oscgroups_relay_allocations",
            "netgateway_oscgroups_relay_forwarded_packets"} <= names


def test_full_session_answers_user_limit_reached():
    door, context, network = make_door(
        {"bridge": {"enabled": True, "groups": ["demo"]}}, max_members=2)
    join_now(context.bus, RecordingMember("wendy", door="websocket"), passphrase=DEMO_PASSPHRASE)
    alice = FakeClientProgram(network, "alice", 7000)
    network.run(10)
    assert roster_names(context.bus) == ["wendy", "alice"]
    bob = FakeClientProgram(network, "bob", 7001)
    network.run(10)
    replies = [data for data, _ in network.ports[("127.0.0.1", SERVER_PORT)].sent
               if wire.parse_packet(data)[0].args[0] == "bob"]
    assert statuses(replies[-1]) == ["ok", "user limit reached"]
    assert "bob" not in door.server.groups["demo"].members
    assert context.drops.get("oscgroups", "refused_session_full") >= 1
    # Registered but refused from the group: like the original he may still read
    # the list (§5.1), but nobody lists him.
    assert "alice" in bob.core.peers and "bob" not in alice.core.peers
    assert roster_names(context.bus) == ["wendy", "alice"]
