"""Bridge core (sans-IO) and the client-core extensions it relies on."""

from gateway.protocols.oscgroups import bridge, client, mapping, server, wire
from gateway.actions import Drop, PeerAlive, PeerLeft, PeerMidi, Send
from tests.oscgroups.osc_bytes import osc_message

SERVER = ("127.0.0.1", 22242)
BRIDGE = ("127.0.0.1", 22241)
ALICE = ("127.0.0.1", 7000)
GROUPS = (("demo", wire.password_hash("demo pw")), ("band", wire.password_hash("band pw")))
PING_FROM_ALICE = wire.encode_bundle([wire.Ping("alice").encode()])


def make_bridge():
    return bridge.Bridge("netgateway", wire.password_hash("x"), GROUPS, SERVER, BRIDGE,
                         mapping.OscMidiMapping())


def listing(*users):
    return wire.encode_bundle([wire.UserInfo(name, endpoint, endpoint, 0, groups).encode()
                               for name, endpoint, groups in users])


def with_alice(now=0):
    core = make_bridge()
    core.timer(now)
    listed = core.receive(listing(("alice", ALICE, ("demo",))), SERVER, now)
    core.receive(PING_FROM_ALICE, ALICE, now)
    return core, listed


def test_one_user_in_every_bridged_group():
    core = make_bridge()
    (alive,) = core.timer(0)
    assert alive.address == SERVER
    messages = [wire.decode_message(m) for m in wire.parse_packet(alive.data)]
    assert messages == [wire.UserAlive("netgateway", wire.password_hash("x"), BRIDGE, GROUPS),
                        wire.GroupUsersQuery(*GROUPS[0]), wire.GroupUsersQuery(*GROUPS[1])]
    # The real server accepts it and answers every group.
    rendezvous = server.RendezvousServer()
    replies = rendezvous.receive(alive.data, BRIDGE, 0)
    assert sorted(rendezvous.users["netgateway"].groups) == ["band", "demo"]
    core.receive(replies[0].data, SERVER, 0)
    assert "ok: user 'netgateway' is a member of group 'band'" in core.client.take_events()


def test_listed_peers_are_reported_with_their_bridged_groups_and_pinged():
    core, listed = with_alice()
    assert listed[-1] == bridge.PeerListed("alice", frozenset({"demo"}))
    assert Send(wire.encode_bundle([wire.Ping("netgateway").encode()]), ALICE) in listed
    # A user in no bridged group is not a peer.
    assert core.receive(listing(("carol", ("127.0.0.1", 7002), ("jam",))),
                                  SERVER, 1) == [bridge.PeerListed("alice", frozenset({"demo"}))]


def test_peer_osc_becomes_midi_and_pings_only_say_alive():
    core, _ = with_alice()
    assert core.receive(PING_FROM_ALICE, ALICE, 1) == [PeerAlive("alice")]
    data = wire.encode_bundle([osc_message("/midi/note", "iii", 1, 60, 100),
                               osc_message("/other", "i", 3),
                               osc_message("/midi/cc", "iii", 1, 64, 127)])
    assert core.receive(data, ALICE, 1) == [
        Drop("unmapped", ALICE, count=1),
        PeerMidi("alice", [bytes([0x90, 60, 100]), bytes([0xB0, 64, 127])])]
    assert core.receive(osc_message("/other", "i", 3), ALICE, 1) == [
        Drop("unmapped", ALICE, count=1), PeerAlive("alice")]


def test_strangers_and_garbage_are_dropped():
    core, _ = with_alice()
    stranger = ("127.0.0.1", 9999)
    assert core.receive(osc_message("/midi/note", "iii", 1, 60, 100), stranger, 1) \
        == [Drop("unknown_peer", stranger)]
    # A ping from a user not learnt yet is how peers meet: no drop, an early alive.
    (early_alive,) = core.receive(
        wire.encode_bundle([wire.Ping("bob").encode()]), stranger, 2)
    assert early_alive.address == SERVER
    assert core.receive(b"not osc", ALICE, 1) == [
        PeerAlive("alice"), Drop("malformed", ALICE)]
    # The ping marker alone is no ping (bench/wire_fuzz.py sent this one).
    near_ping = wire.encode_bundle([osc_message(wire.PING + "\x01", "s", "bob")])
    assert core.receive(near_ping, stranger, 3) == [Drop("unknown_peer", stranger)]


def test_midi_to_peers_one_message_plain_several_bundled_oversized_dropped():
    core, _ = with_alice()
    (single,), too_large = core.encode_midi([bytes([0x90, 60, 100])])
    assert (single, too_large) == (osc_message("/midi/noteon", "iii", 1, 60, 100), 0)
    sysex = bytes([0xF0]) + bytes(2000) + bytes([0xF7])
    (bundle,), too_large = core.encode_midi([bytes([0x90, 60, 100]), sysex, bytes([0x80, 60, 0])])
    assert too_large == 1
    assert [m.address for m in wire.parse_packet(bundle)] == ["/midi/noteon", "/midi/noteoff"]
    assert core.send_to_peer("alice", [single], 1) == [Send(single, ALICE)]
    assert core.send_to_peer("bob", [single], 1) == [Drop("no_path_to_peer", None, count=1)]


def test_peer_the_server_stops_listing_is_gone():
    core, _ = with_alice()
    now = 0.0
    gone = []
    while now < bridge.FORGET_UNLISTED_AFTER + 2:
        now += client.TICK_INTERVAL
        gone += [a for a in core.timer(now) if isinstance(a, PeerLeft)]
        core.receive(PING_FROM_ALICE, ALICE, now)      # alive, but no longer listed
    assert gone == [PeerLeft("alice", "no longer listed")]
    assert core.status()["peers"] == {}


def test_listed_peer_stays():
    core, _ = with_alice()
    for step in range(1, 60):
        now = step * client.TICK_INTERVAL
        assert not [a for a in core.timer(now) if isinstance(a, PeerLeft)]
        if step % 10 == 0:
            core.receive(listing(("alice", ALICE, ("demo",))), SERVER, now)
    assert core.status()["peers"]["alice"] == {"groups": ["demo"], "path": "private 127.0.0.1:7000"}


def test_server_drop_actions_name_counter_and_source():
    rendezvous = server.RendezvousServer()
    seen = rendezvous.receive(b"junk", ALICE, 0)
    alive = wire.encode_bundle([wire.UserAlive("a", "p", ALICE, (("g", "1"),)).encode()])
    seen += rendezvous.receive(alive, ALICE, 0)
    wrong = wire.encode_bundle([wire.UserAlive("b", "p", ALICE, (("g", "2"),)).encode()])
    seen += rendezvous.receive(wrong, BRIDGE, 0)
    assert [action for action in seen if type(action) is Drop] == [
        Drop("malformed", ALICE),
        Drop("refused_wrong_group_password", BRIDGE)]
