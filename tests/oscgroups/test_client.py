"""Client core: registration, peer learning, path choice and ping schedule (§5.3–§5.5)."""

import pytest

from gateway.protocols.oscgroups import client, wire
from gateway.actions import Send
from gateway.protocols.oscgroups.client import DeliverToApp

SERVER = ("198.18.0.1", 22242)
ALICE_PRIVATE = ("192.168.1.2", 22243)
BOB_PRIVATE = ("192.168.2.2", 22243)
BOB_PUBLIC = ("198.18.2.1", 27273)
BOB_PING = ("198.18.2.1", 18146)
RELAY = ("198.18.0.1", 22300)
USER_PW, GROUP_PW = wire.password_hash("apw"), wire.password_hash("gpw")
PING_FROM_BOB = wire.encode_bundle([wire.Ping("bob").encode()])
PING_FROM_ALICE = wire.encode_bundle([wire.Ping("alice").encode()])


def make_client(relay=None):
    return client.GroupClient("alice", USER_PW, "grp", GROUP_PW, SERVER, ALICE_PRIVATE, relay=relay)


def user_info(name="bob", private=BOB_PRIVATE, public=BOB_PUBLIC, age=0, groups=("grp",)):
    return wire.encode_bundle([wire.UserInfo(name, private, public, age, groups).encode()])


def learn_bob(core, now=0, **kwargs):
    return core.receive(user_info(**kwargs), SERVER, now)


def destinations(actions):
    return [a.address for a in actions if isinstance(a, Send)]


def run(core, start, end):
    """Tick every 0.6 s in [start, end); return [(whole second, destination)] of every ping."""
    pings = []
    steps = round((end - start) / client.TICK_INTERVAL)
    for step in range(steps):
        now = round(start + step * client.TICK_INTERVAL, 6)
        pings += [(int(now), a.address) for a in core.timer(now)
                  if isinstance(a, Send) and a.data == PING_FROM_ALICE]
    return pings


def test_alive_bundle_every_six_seconds_same_bytes():
    core = make_client()
    first = core.timer(0)
    assert len(first) == 1 and first[0].address == SERVER and len(first[0].data) == 228
    (alive, query) = wire.parse_packet(first[0].data)
    assert wire.decode_message(alive) == wire.UserAlive(
        "alice", USER_PW, ALICE_PRIVATE, (("grp", GROUP_PW),))
    assert wire.decode_message(query) == wire.GroupUsersQuery("grp", GROUP_PW)
    assert core.timer(0.6) == [] and core.timer(5.9) == []
    assert core.timer(6.0) == first


def test_status_replies_are_printed_like_the_c_client():
    core = make_client()
    reply = wire.encode_bundle([
        wire.UserAliveStatus("alice", USER_PW, "ok").encode(),
        wire.UserGroupStatus("alice", USER_PW, "grp", GROUP_PW, "wrong password").encode(),
        wire.UserAliveStatus("mallory", USER_PW, "ok").encode(),
    ])
    assert core.receive(reply, SERVER, 0) == []
    assert core.take_events() == [
        "ok: user 'alice' is registered with server",
        "group membership error: server returned status of 'wrong password' for user "
        "'alice' membership of group 'grp'"]


def test_peers_come_only_from_server_user_info_naming_our_group():
    core = make_client()
    assert learn_bob(core, name="alice") == []
    assert learn_bob(core, groups=("other",)) == []
    stranger = core.receive(user_info(), ("198.18.0.9", 22242), 0)
    assert stranger == [DeliverToApp(user_info())]
    assert core.peers == {}
    assert "user info received for 'alice', private: 192.168.2.2:22243 " \
           "public: 198.18.2.1:27273" in core.take_events()


def test_new_peer_gets_an_immediate_round_but_no_data_until_it_pings():
    core = make_client()
    assert destinations(learn_bob(core)) == [BOB_PRIVATE, BOB_PUBLIC]
    assert core.send_from_app(b"/x\0\0,\0\0\0", 1) == []
    assert core.paths() == {"bob": None}


@pytest.mark.parametrize("source, path", [
    (BOB_PRIVATE, ("private", BOB_PRIVATE)),
    (BOB_PUBLIC, ("public", BOB_PUBLIC)),
    (BOB_PING, ("ping", BOB_PING)),
])
def test_path_follows_where_pings_come_from(source, path):
    core = make_client()
    learn_bob(core)
    actions = core.receive(PING_FROM_BOB, source, 1)
    assert actions[0] == DeliverToApp(PING_FROM_BOB)   # pings reach the app too (§7.4)
    expected_round = [BOB_PRIVATE, BOB_PUBLIC] + ([BOB_PING] if source == BOB_PING else [])
    assert destinations(actions) == expected_round     # re-ping at once
    assert core.paths() == {"bob": path}
    assert f"path to 'bob': {path[0]} {path[1][0]}:{path[1][1]}" in core.take_events()
    assert core.send_from_app(b"data", 2) == [Send(b"data", path[1])]


def test_private_beats_public_beats_ping_endpoint():
    core = make_client()
    learn_bob(core)
    for source, kind in [(BOB_PING, "ping"), (BOB_PUBLIC, "public"), (BOB_PRIVATE, "private"),
                         (BOB_PUBLIC, "private")]:
        core.receive(PING_FROM_BOB, source, 1)
        assert core.paths()["bob"][0] == kind


def test_establishment_rounds_then_every_six_seconds_when_nobody_answers():
    core = make_client()
    core.timer(0)
    learn_bob(core, now=0)
    round_times = sorted({t for t, _ in run(core, 0.6, 40)})
    assert round_times == [2, 5, 9, 15, 21, 27, 33, 39]


def test_phase_ends_after_five_rounds_then_only_the_selected_endpoint_is_pinged():
    core = make_client()
    core.timer(0)
    learn_bob(core, now=0)
    core.receive(PING_FROM_BOB, BOB_PUBLIC, 0.5)   # restarts: round 1 at t=0
    pings = run(core, 0.6, 40)
    establishment = [p for p in pings if p[0] <= 15]
    assert sorted({t for t, _ in establishment}) == [2, 5, 9, 15]
    assert {d for _, d in establishment} == {BOB_PRIVATE, BOB_PUBLIC}
    steady = [p for p in pings if p[0] > 15]
    assert steady and {d for _, d in steady} == {BOB_PUBLIC}
    assert [t for t, _ in steady] == [21, 27, 33, 39]


def test_ping_from_private_ends_the_phase_at_once():
    core = make_client()
    core.timer(0)
    learn_bob(core, now=0)
    core.receive(PING_FROM_BOB, BOB_PRIVATE, 0.5)
    pings = run(core, 0.6, 14)
    assert pings == [(6, BOB_PRIVATE), (12, BOB_PRIVATE)]


def test_recent_data_stretches_steady_pings_to_thirty_seconds():
    core = make_client()
    core.timer(0)
    learn_bob(core, now=0)
    core.receive(PING_FROM_BOB, BOB_PRIVATE, 0.5)
    pings = []
    for step in range(1, round(50 / client.TICK_INTERVAL)):
        now = round(step * client.TICK_INTERVAL, 6)
        core.send_from_app(b"note", now)
        if step % 20 == 0:                           # bob keeps pinging too
            core.receive(PING_FROM_BOB, BOB_PRIVATE, now)
        pings += [int(now) for a in core.timer(now) if a.data == PING_FROM_ALICE]
    assert pings == [30]


def test_retry_on_every_tick_after_sixty_seconds_of_silence():
    core = make_client()
    core.timer(0)
    learn_bob(core, now=0)
    core.receive(PING_FROM_BOB, BOB_PRIVATE, 0.5)
    for now in range(6, 60, 6):                      # server keeps listing bob
        learn_bob(core, now=now)
    pings = run(core, 60.6, 64.2)      # "more than 60 s" starts at second 61
    assert [t for t, _ in pings] == [61, 61, 62, 63, 63]
    assert {d for _, d in pings} == {BOB_PRIVATE}


def test_retry_sends_full_rounds_when_private_never_answered():
    core = make_client()
    core.timer(0)
    learn_bob(core, now=0)
    core.receive(PING_FROM_BOB, BOB_PUBLIC, 0.5)
    run(core, 0.6, 61.2)
    pings = run(core, 61.2, 62.4)
    assert [d for _, d in pings] == [BOB_PRIVATE, BOB_PUBLIC, BOB_PRIVATE, BOB_PUBLIC]


def test_peer_is_purged_after_180_seconds_without_alive_or_ping():
    core = make_client()
    learn_bob(core, now=100, age=5)                  # last alive at 95
    core.timer(275)
    assert "bob" in core.peers
    core.timer(276)
    assert core.peers == {}


def test_changed_endpoint_resets_the_path():
    core = make_client()
    learn_bob(core)
    core.receive(PING_FROM_BOB, BOB_PUBLIC, 1)
    moved = ("198.18.2.1", 30000)
    assert destinations(learn_bob(core, now=6, public=moved)) == [BOB_PRIVATE, moved]
    assert core.paths() == {"bob": None}
    assert destinations(learn_bob(core, now=12, public=moved)) == []


def test_server_datagrams_are_never_forwarded_and_junk_is_counted():
    core = make_client()
    assert core.receive(b"junk", SERVER, 0) == []
    assert core.counters["malformed_server_datagrams"] == 1
    assert core.receive(b"junk", BOB_PUBLIC, 0) == [DeliverToApp(b"junk")]


def test_unknown_user_ping_triggers_an_early_registration_at_most_once_a_second():
    core = make_client()
    core.timer(0)
    assert core.receive(PING_FROM_BOB, BOB_PUBLIC, 0.5) == [DeliverToApp(PING_FROM_BOB)]
    actions = core.receive(PING_FROM_BOB, BOB_PUBLIC, 1.2)
    assert destinations(actions) == [SERVER]
    assert destinations(core.receive(PING_FROM_BOB, BOB_PUBLIC, 1.9)) == []
    own = core.receive(PING_FROM_ALICE, ALICE_PRIVATE, 5)
    assert destinations(own) == []


def test_relay_endpoint_is_reported_as_relay():
    core = make_client(relay=(RELAY[0], RELAY[1] - 10, RELAY[1]))
    learn_bob(core, public=RELAY)
    core.receive(PING_FROM_BOB, RELAY, 1)
    assert core.paths() == {"bob": ("relay", RELAY)}


def test_direct_candidate_of_a_relay_listing_is_reported_as_direct():
    # The server lists bob's public endpoint first and the relay second (relay.py).
    core = make_client(relay=(RELAY[0], RELAY[1] - 10, RELAY[1]))
    learn_bob(core, private=BOB_PUBLIC, public=RELAY)
    core.receive(PING_FROM_BOB, RELAY, 1)
    assert core.paths() == {"bob": ("relay", RELAY)}
    core.receive(PING_FROM_BOB, BOB_PUBLIC, 2)
    assert core.paths() == {"bob": ("direct", BOB_PUBLIC)}
    assert "path to 'bob': direct 198.18.2.1:27273" in core.take_events()
