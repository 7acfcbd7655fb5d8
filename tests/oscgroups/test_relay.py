"""Relay core: pair policy, listings, allocations, forwarding learnt from pings, limits, fuzz."""

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.actions import Drop, Send
from gateway.protocols.oscgroups import relay, server, wire

from .osc_bytes import osc_message
from .test_fuzz import datagrams, fuzz_settings

GATEWAY = "198.18.0.1"
T0 = 1000.0


def user(name, private, public, groups=("grp",)):
    entry = server.User(name, "pw")
    entry.private_endpoint, entry.public_endpoint = private, public
    entry.groups = {group: None for group in groups}
    return entry


def cone(name, lan_ip, public_ip, port=22243, **kwargs):
    return user(name, (lan_ip, port), (public_ip, port), **kwargs)


def symmetric(name, lan_ip, public_ip, public_port, port=22243, **kwargs):
    return user(name, (lan_ip, port), (public_ip, public_port), **kwargs)


def open_host(name, ip, port=22243):
    return user(name, (ip, port), (ip, port))


ALICE = cone("alice", "192.168.1.2", "198.18.1.1")
AMY = cone("amy", "192.168.1.3", "198.18.1.1", port=22253)
BOB = symmetric("bob", "192.168.2.2", "198.18.2.1", 27273)
PETE = open_host("pete", "198.18.3.1")


def make_relay(*users, policy=relay.AUTO, ports=(40000, 40009), **kwargs):
    core = relay.Relay({u.name: u for u in users}, host=GATEWAY, port_min=ports[0],
                       port_max=ports[1], policy=policy, **kwargs)
    core.opened = []          # ports the listings asked to open, in order
    return core


def listed(core, subject, viewer, now=T0, unavailable=()):
    """core.listed_endpoints, opening its ports (those in ``unavailable`` fail)."""
    actions = []
    endpoints = core.listed_endpoints(subject, viewer, now, actions)
    for action in actions:
        assert type(action) is relay.OpenPort
        core.opened.append(action.port)
        if action.port in unavailable:
            core.port_unavailable(action.port)
    return endpoints


def ping(name):
    return wire.encode_bundle([wire.Ping(name).encode()])


def relay_port(core, subject, viewer, now=T0):
    """The relay port ``viewer`` is shown as ``subject``'s public endpoint."""
    _private, (host, port) = listed(core, subject, viewer, now)
    assert host == GATEWAY
    return port


def meet(core, first, second, first_source, second_source, now=T0):
    """Both listed through the relay, each pings the other's relay port."""
    port_of_second = relay_port(core, second, first, now)
    port_of_first = relay_port(core, first, second, now)
    core.receive(ping(first.name), first_source, now, port_of_second)
    core.receive(ping(second.name), second_source, now, port_of_first)
    return port_of_first, port_of_second


DAVE = cone("dave", "192.168.4.2", "198.18.4.1")


def test_auto_relays_pairs_of_nated_users_only():
    core = make_relay(ALICE, AMY, BOB, PETE, DAVE)
    assert core.relays_between(ALICE, BOB) and core.relays_between(BOB, ALICE)
    assert core.relays_between(ALICE, DAVE)          # as a fallback: see the listings
    assert core.relays_between(ALICE, AMY)
    assert not core.relays_between(BOB, PETE)        # no NAT: bob's ping endpoint works
    assert not core.relays_between(BOB, BOB)


def test_cone_pairs_are_listed_direct_first_and_the_relay_second():
    core = make_relay(ALICE, AMY, DAVE)
    assert listed(core, DAVE, ALICE, T0) == (DAVE.public_endpoint, (GATEWAY, 40000))
    assert listed(core, ALICE, DAVE, T0) == (ALICE.public_endpoint, (GATEWAY, 40001))
    # Behind the same NAT address the LAN endpoint is the direct candidate.
    assert listed(core, AMY, ALICE, T0) == (AMY.private_endpoint, (GATEWAY, 40002))
    assert core.flagged == {}


def test_flagged_pairs_are_listed_with_the_relay_as_their_public_endpoint():
    core = make_relay(ALICE, BOB)
    assert listed(core, BOB, ALICE, T0) == (BOB.private_endpoint, (GATEWAY, 40000))
    assert listed(core, ALICE, BOB, T0) == (ALICE.private_endpoint, (GATEWAY, 40001))
    assert core.flagged == {"bob": "its NAT changed the port"}


def test_always_lists_only_the_relay():
    core = make_relay(ALICE, PETE, policy=relay.ALWAYS)
    assert listed(core, PETE, ALICE, T0) == ((GATEWAY, 40000), (GATEWAY, 40000))


def test_policies_always_never_and_exempt_users():
    always = make_relay(ALICE, PETE, policy=relay.ALWAYS, exempt=["pete"])
    assert always.relays_between(ALICE, AMY)
    assert not always.relays_between(ALICE, PETE)
    never = make_relay(ALICE, BOB, policy=relay.NEVER)
    assert not never.relays_between(ALICE, BOB)


def test_gateway_seeing_another_port_than_the_server_flags_the_user():
    carol = cone("carol", "192.168.3.2", "198.18.4.1")
    core = make_relay(ALICE, carol)
    assert listed(core, ALICE, carol, T0)[0] == ALICE.public_endpoint
    core.saw_mapping("carol", ("198.18.4.1", 22243))       # same mapping: fine
    core.saw_mapping("carol", ("192.168.3.2", 9999))       # not her NAT: ignored
    assert core.flagged == {}
    core.saw_mapping("carol", ("198.18.4.1", 31000))
    assert listed(core, ALICE, carol, T0)[0] == ALICE.private_endpoint
    assert core.flagged == {"carol": "its NAT maps each destination to another port"}


def test_both_of_a_relayed_pair_get_a_port_and_see_each_other_there():
    core = make_relay(ALICE, BOB)
    assert relay_port(core, BOB, ALICE) == 40000
    assert relay_port(core, ALICE, BOB) == 40001
    assert listed(core, BOB, BOB, T0) is None          # her own entry: real
    assert listed(core, BOB, None, T0) is None         # a non-member's query
    assert core.opened == [40000, 40001]


def test_datagrams_leave_from_the_senders_port_to_where_the_receivers_pings_came_from():
    core = make_relay(ALICE, BOB)
    alice_at, bob_at = ("198.18.1.1", 22243), ("198.18.2.1", 18146)
    # alice pings bob's port first: bob has not pinged alice's port, nothing to do yet.
    bob_port = relay_port(core, BOB, ALICE)
    alice_port = relay_port(core, ALICE, BOB)
    assert core.receive(ping("alice"), alice_at, T0, bob_port) is None
    assert core.counters["pings_before_receiver"] == 1
    # bob's ping to alice's port goes out of bob's port to alice's source.
    assert core.receive(ping("bob"), bob_at, T0, alice_port) == Send(ping("bob"), alice_at,
                                                                     bob_port)
    data = osc_message("/midi/note", "iii", 1, 60, 100)
    assert core.receive(data, alice_at, T0, bob_port) == Send(data, bob_at, alice_port)
    assert core.receive(data, bob_at, T0, alice_port) == Send(data, alice_at, bob_port)
    assert core.totals() == {"packets": 2, "bytes": 2 * len(data), "pings": 1}
    assert core.status()["allocations"]["alice"]["peers"] == ["bob"]


def test_a_new_source_in_a_ping_replaces_the_old_one():
    core = make_relay(ALICE, BOB)
    alice_port, bob_port = meet(core, ALICE, BOB, ("198.18.1.1", 22243), ("198.18.2.1", 1111))
    core.receive(ping("bob"), ("198.18.2.1", 2222), T0, alice_port)
    data = b"x" * 8
    assert core.receive(data, ("198.18.1.1", 22243), T0, bob_port) == \
        Send(data, ("198.18.2.1", 2222), alice_port)
    assert type(core.receive(data, ("198.18.2.1", 1111), T0, alice_port)) \
        is Drop


def test_strangers_impostors_and_non_members_are_not_relayed():
    mallory = symmetric("mallory", "192.168.9.2", "198.18.9.1", 5555, groups=("other",))
    core = make_relay(ALICE, BOB, mallory, policy=relay.ALWAYS)
    alice_port, bob_port = meet(core, ALICE, BOB, ("198.18.1.1", 22243), ("198.18.2.1", 1111))
    listed(core, mallory, mallory, T0)
    stranger = ("203.0.113.5", 1)
    unknown = Drop("relay_unknown_source", stranger)
    # A ping naming alice from another IP teaches nothing.
    assert core.receive(ping("alice"), stranger, T0, bob_port) == unknown
    assert core.receive(b"data", stranger, T0, bob_port) == unknown
    # mallory shares no group with bob.
    listed(core, ALICE, mallory, T0)
    assert core.receive(ping("mallory"), ("198.18.9.1", 5555), T0, bob_port) == \
        Drop("relay_unknown_source", ("198.18.9.1", 5555))
    assert core.counters["relay_unknown_source"] == 3
    # A relayed datagram whose receiver never pinged the sender's port is dropped.
    core.allocations["bob"].forget("alice")
    assert core.receive(b"data", ("198.18.2.1", 1111), T0, alice_port) == \
        Drop("relay_receiver_unknown", ("198.18.2.1", 1111))
    # Nothing at all for a port that is no relay port.
    assert core.receive(b"data", stranger, T0, 40009) is None


def refused_impostor(name, source):
    """A server that refused ``name``'s registration from ``source``; its ``refused``."""
    rendezvous = server.RendezvousServer(now=T0)
    alive = wire.encode_bundle([wire.UserAlive(name, "guess", source, ()).encode()])
    rendezvous.users[name] = server.User(name, "pw")
    refusal, reply = rendezvous.receive(alive, source, T0)
    assert refusal == Drop("refused_wrong_user_password", source)
    assert wire.parse_packet(reply.data)[0].args[2] == "wrong password"
    return rendezvous.refused


def test_pings_from_a_refused_source_teach_nothing_and_flag_nobody():
    # mallory, behind alice's NAT, was refused as "alice" and now pings as alice.
    mallory_at = ("198.18.1.1", 40000)
    core = make_relay(ALICE, DAVE, refused=refused_impostor("alice", mallory_at))
    core.saw_mapping("alice", mallory_at)
    assert core.flagged == {}
    assert listed(core, ALICE, DAVE, T0)[0] == ALICE.public_endpoint
    dave_port = relay_port(core, DAVE, ALICE)
    unknown = Drop("relay_unknown_source", mallory_at)
    assert core.receive(ping("alice"), mallory_at, T0, dave_port) == unknown
    assert core.receive(b"data", mallory_at, T0, dave_port) == unknown
    assert core.allocations["dave"].peer_at == {}
    assert core.counters["pings_from_refused_sources"] == 1
    # alice herself, from her own mapping, is learnt as before.
    core.receive(ping("alice"), ALICE.public_endpoint, T0, dave_port)
    assert core.allocations["dave"].peer_at == {"alice": ALICE.public_endpoint}


def test_each_user_is_rate_limited():
    core = make_relay(ALICE, BOB, packets_per_second=10)
    alice_at = ("198.18.1.1", 22243)
    _alice_port, bob_port = meet(core, ALICE, BOB, alice_at, ("198.18.2.1", 1111))
    forwarded = [core.receive(b"data", alice_at, T0, bob_port) for _ in range(15)]
    assert sum(type(route) is Send for route in forwarded) == 10   # 1 s of burst
    assert forwarded[10:] == [Drop("relay_rate_limited", alice_at)] * 5
    assert type(core.receive(b"data", alice_at, T0 + 0.2, bob_port)) is Send


def test_allocations_are_bounded_and_live_as_long_as_the_registration():
    carol = cone("carol", "192.168.3.2", "198.18.4.1")
    core = make_relay(ALICE, BOB, carol, max_allocations=2)
    alice_port, bob_port = meet(core, ALICE, BOB, ("198.18.1.1", 22243), ("198.18.2.1", 1111))
    core.receive(b"data", ("198.18.1.1", 22243), T0, bob_port)
    assert listed(core, carol, BOB, T0) is None
    assert core.counters["allocations_refused"] == 1
    assert core.release("bob") == [relay.ClosePort(bob_port)]
    assert "bob" not in core.flagged and core.release("bob") == []
    assert core.allocations["alice"].peer_at == {}
    assert core.receive(b"data", ("198.18.1.1", 22243), T0, bob_port) is None
    assert core.totals()["packets"] == 1                 # counted after the release too
    assert listed(core, carol, BOB, T0) is None      # alice still holds one
    assert core.release("alice") == [relay.ClosePort(alice_port)]
    assert relay_port(core, carol, BOB) == min(alice_port, bob_port)


def test_ports_that_cannot_be_opened_are_skipped_from_then_on():
    core = make_relay(ALICE, BOB)
    # The listing that allocated 40000 went out; the adapter then failed to open it.
    assert listed(core, BOB, ALICE, unavailable={40000}) == \
        (BOB.private_endpoint, (GATEWAY, 40000))
    assert "bob" not in core.allocations and core.counters["ports_unavailable"] == 1
    # The next listing gives bob another port; 40000 is never tried again.
    assert relay_port(core, BOB, ALICE) == 40002
    assert relay_port(core, ALICE, BOB) == 40001
    core.release("bob")
    assert relay_port(core, BOB, ALICE) == 40002
    assert core.opened == [40000, 40001, 40002, 40002]


def test_a_fallback_pair_gets_pings_only_once_its_pings_outlast_establishment():
    core = make_relay(ALICE, DAVE)
    alice_at, dave_at = ("198.18.1.1", 22243), ("198.18.4.1", 22243)
    alice_port, dave_port = meet(core, ALICE, DAVE, alice_at, dave_at)
    # Each still pings the other's relay port as establishment goes on (§5.4):
    # the relay keeps the pings back, either may hear the other directly.
    for t in (2, 5, 9, 15, 21):
        assert core.receive(ping("alice"), alice_at, T0 + t, dave_port) is None
        assert core.receive(ping("dave"), dave_at, T0 + t, alice_port) is None
    assert core.counters["pings_held"] == 11
    # Pinging on past relay.PROBATION: the direct path failed, the relay passes pings.
    assert core.receive(ping("alice"), alice_at, T0 + 27, dave_port) is None
    assert core.receive(ping("dave"), dave_at, T0 + 27, alice_port) == \
        Send(ping("dave"), alice_at, dave_port)
    assert core.receive(ping("alice"), alice_at, T0 + 28, dave_port) == \
        Send(ping("alice"), dave_at, alice_port)
    assert core.status()["allocations"]["alice"]["relying"] == ["dave"]


def test_a_fallback_pair_that_stopped_pinging_the_relay_starts_a_new_run():
    core = make_relay(ALICE, DAVE)
    alice_at, dave_at = ("198.18.1.1", 22243), ("198.18.4.1", 22243)
    alice_port, dave_port = meet(core, ALICE, DAVE, alice_at, dave_at)
    for t in (2, 5, 9, 15):
        core.receive(ping("alice"), alice_at, T0 + t, dave_port)
    # Establishment ended on the direct path; a restart much later pings again.
    for t in (80, 82, 85, 89, 95):
        core.receive(ping("alice"), alice_at, T0 + t, dave_port)
        assert core.receive(ping("dave"), dave_at, T0 + t, alice_port) is None
    assert core.allocations["dave"].relying == set()


def test_data_through_the_relay_makes_it_pass_pings_to_the_sender():
    core = make_relay(ALICE, DAVE)
    alice_at, dave_at = ("198.18.1.1", 22243), ("198.18.4.1", 22243)
    alice_port, dave_port = meet(core, ALICE, DAVE, alice_at, dave_at)
    assert core.receive(b"data", alice_at, T0 + 1, dave_port) == Send(b"data", dave_at, alice_port)
    assert core.receive(ping("dave"), dave_at, T0 + 2, alice_port) == \
        Send(ping("dave"), alice_at, dave_port)
    assert core.receive(ping("alice"), alice_at, T0 + 2, dave_port) is None


def test_a_flagged_pair_gets_pings_at_once():
    core = make_relay(ALICE, BOB)
    alice_at, bob_at = ("198.18.1.1", 22243), ("198.18.2.1", 18146)
    alice_port, bob_port = meet(core, ALICE, BOB, alice_at, bob_at)
    assert core.receive(ping("alice"), alice_at, T0 + 1, bob_port) == \
        Send(ping("alice"), bob_at, alice_port)
    assert core.counters["pings_held"] == 0


@fuzz_settings
@given(st.lists(st.tuples(st.sampled_from([40000, 40001, 40005]), datagrams,
                          st.sampled_from([("198.18.1.1", 22243), ("198.18.2.1", 1111),
                                           ("203.0.113.5", 7)])), max_size=12))
def test_arbitrary_datagrams_never_raise(sequence):
    core = make_relay(ALICE, BOB)
    meet(core, ALICE, BOB, ("198.18.1.1", 22243), ("198.18.2.1", 1111))
    for step, (port, data, source) in enumerate(sequence):
        route = core.receive(data, source, T0 + step / 10, port)
        assert route is None or type(route) is Drop or route.via in (40000, 40001)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["alice", "bob"]), max_size=6),
       st.lists(st.binary(max_size=64), max_size=6))
def test_pings_with_arbitrary_names_and_tails_never_raise(names, tails):
    core = make_relay(ALICE, BOB)
    for name, tail in zip(names, tails):
        core.receive(ping(name) + tail, ("198.18.1.1", 22243), T0, 40000)
        core.receive(ping(name)[:-1] + tail, ("198.18.2.1", 1), T0, 40001)
