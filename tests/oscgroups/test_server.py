"""Rendezvous server state machine, per shared/protocols/oscgroups.md §4.2, §5.1, §6, §7."""

import pytest

from gateway.actions import Drop, Send
from gateway.protocols.oscgroups import server, wire

from .osc_bytes import osc_bundle, osc_message, osc_string

LOOPBACK = "127.0.0.1"
LOOPBACK_INVERTED = -2130706434   # 0x80fffffe
T0 = 1_000_000.0


def md5(text):
    return wire.password_hash(text)


def alive_request(name, port, groups=(("grp", "gpw"),), password=None, private_ip=LOOPBACK,
                  query=("grp", "gpw")):
    """The bundle the C++ client sends: user_alive (+ get_group_users_info)."""
    user_password = md5(password if password is not None else name + "-pw")
    elements = [wire.UserAlive(name, user_password, (private_ip, port),
                               tuple((g, md5(p)) for g, p in groups)).encode()]
    if query is not None:
        elements.append(wire.GroupUsersQuery(query[0], md5(query[1])).encode())
    return wire.encode_bundle(elements)


def send(rendezvous, data, port, now, host=LOOPBACK):
    """(datagram, destination) of each Send the server answers with."""
    return [(action.data, action.address)
            for action in rendezvous.receive(data, (host, port), now) if type(action) is Send]


def messages_of(replies):
    return [wire.decode_message(m) for reply, _ in replies for m in wire.parse_packet(reply)]


def join(rendezvous, name, port, now, **kwargs):
    return messages_of(send(rendezvous, alive_request(name, port, **kwargs), port, now))


@pytest.fixture
def rendezvous():
    return server.RendezvousServer(now=T0)


def test_bob_joining_alice_and_carol_gets_the_exact_444_byte_reply(rendezvous):
    join(rendezvous, "alice", 22243, T0)
    join(rendezvous, "carol", 22263, T0)
    replies = send(rendezvous, alive_request("bob", 22253), 22253, T0 + 6)

    bob_pw, gpw = md5("bob-pw"), md5("gpw")
    expected = osc_bundle(
        osc_message("/groupclient/user_alive_status", "sss", "bob", bob_pw, "ok"),
        osc_message("/groupclient/user_group_status", "sssss", "bob", bob_pw, "grp", gpw, "ok"),
        osc_message("/groupclient/user_info", "siiiiis",
                    "alice", LOOPBACK_INVERTED, 22243, LOOPBACK_INVERTED, 22243, 6, "grp"),
        osc_message("/groupclient/user_info", "siiiiis",
                    "carol", LOOPBACK_INVERTED, 22263, LOOPBACK_INVERTED, 22263, 6, "grp"),
        osc_message("/groupclient/user_info", "siiiiis",
                    "bob", LOOPBACK_INVERTED, 22253, LOOPBACK_INVERTED, 22253, 0, "grp"))
    assert replies == [(expected, (LOOPBACK, 22253))]
    assert len(expected) == 444


def test_private_and_public_endpoints_come_from_payload_and_source(rendezvous):
    replies = send(rendezvous, alive_request("amy", 22253, private_ip="192.168.1.3"),
                   36174, T0, host="198.18.1.1")
    assert replies[0][1] == ("198.18.1.1", 36174)
    info = messages_of(replies)[-1]
    assert info == wire.UserInfo("amy", ("192.168.1.3", 22253), ("198.18.1.1", 36174), 0, ("grp",))


def test_wrong_user_password_gets_status_only_and_keeps_the_owner(rendezvous):
    join(rendezvous, "alice", 22243, T0)
    replies = join(rendezvous, "alice", 30000, T0 + 30, password="guess")
    # Only the status: unlike the original (§5.1), not the list its query asked for.
    assert replies == [wire.UserAliveStatus("alice", md5("guess"), "wrong password")]
    assert rendezvous.users["alice"].public_endpoint == (LOOPBACK, 22243)
    assert rendezvous.counters["refused_wrong_user_password"] == 1
    assert rendezvous.counters["dropped_refused_source"] == 1


def test_user_limit_reached():
    small = server.RendezvousServer(max_users=1, now=T0)
    join(small, "alice", 22243, T0)
    replies = join(small, "bob", 22253, T0)
    assert replies == [wire.UserAliveStatus("bob", md5("bob-pw"), "user limit reached")]
    assert list(small.users) == ["alice"]


@pytest.mark.parametrize("name", ["", "   ", "bob\n", "\x1b[31mbob", "\u202ebob", "bo\tb"])
def test_an_empty_blank_or_control_character_user_name_is_refused_and_counted(rendezvous,
                                                                               name):
    join(rendezvous, "alice", 22243, T0)
    actions = rendezvous.receive(alive_request(name, 22253), (LOOPBACK, 22253), T0)
    replies = messages_of([(action.data, action.address) for action in actions
                           if type(action) is Send])
    # Only the status, as for every refused registration: no group status, no list.
    assert replies == [wire.UserAliveStatus(name, md5(name + "-pw"), "bad user name")]
    assert Drop("refused_bad_user_name", (LOOPBACK, 22253)) in actions
    assert rendezvous.counters["refused_bad_user_name"] == 1
    assert list(rendezvous.users) == ["alice"] and list(rendezvous.groups["grp"].members) == [
        "alice"]


def test_a_user_name_with_spaces_and_letters_of_any_script_registers(rendezvous):
    replies = join(rendezvous, " Zoë 佐藤 ", 22253, T0)
    assert replies[0] == wire.UserAliveStatus(" Zoë 佐藤 ", md5(" Zoë 佐藤 -pw"), "ok")
    assert rendezvous.counters["refused_bad_user_name"] == 0


def query(group="grp", password="gpw"):
    return wire.encode_bundle([wire.GroupUsersQuery(group, md5(password)).encode()])


def test_a_refused_source_gets_no_list_until_it_registers_or_the_timeout_passes(rendezvous):
    join(rendezvous, "alice", 22243, T0)
    join(rendezvous, "alice", 30000, T0 + 1, password="guess")
    assert rendezvous.refused == {(LOOPBACK, 30000): ("alice", T0 + 1 + server.DEFAULT_TIMEOUT)}
    # A query on its own, from the refused source, gets nothing either...
    assert send(rendezvous, query(), 30000, T0 + 2) == []
    # ...while another source holding the group password still reads the list (§6.8).
    assert [m.user_name for m in messages_of(send(rendezvous, query(), 30001, T0 + 2))] == \
        ["alice"]
    # Registering from that source under a name of its own lifts it.
    assert [type(m) for m in join(rendezvous, "mallory", 30000, T0 + 3)] == [
        wire.UserAliveStatus, wire.UserGroupStatus, wire.UserInfo, wire.UserInfo]
    assert rendezvous.refused == {}


def test_refusals_are_forgotten_after_the_timeout_and_bounded(rendezvous):
    join(rendezvous, "alice", 22243, T0)
    join(rendezvous, "alice", 30000, T0 + 1, password="guess")
    rendezvous.purge(T0 + server.DEFAULT_TIMEOUT)
    assert (LOOPBACK, 30000) in rendezvous.refused
    join(rendezvous, "alice", 22243, T0 + server.DEFAULT_TIMEOUT)       # alice stays
    rendezvous.purge(T0 + 1 + server.DEFAULT_TIMEOUT)
    assert rendezvous.refused == {}
    for port in range(server.MAX_REFUSED_SOURCES + 5):
        join(rendezvous, "alice", 40000 + port, T0 + 70, password="guess")
    assert len(rendezvous.refused) == server.MAX_REFUSED_SOURCES
    assert (LOOPBACK, 40000) not in rendezvous.refused
    assert (LOOPBACK, 40000 + server.MAX_REFUSED_SOURCES + 4) in rendezvous.refused


def test_group_limit_uses_the_user_limit_string():
    small = server.RendezvousServer(max_groups=1, now=T0)
    join(small, "alice", 22243, T0)
    replies = join(small, "bob", 22253, T0, groups=(("other", "x"),), query=None)
    assert [m.status for m in replies] == ["ok", "user limit reached"]
    assert "bob" in small.users   # created even though its join failed


def test_wrong_group_password_and_silent_query(rendezvous):
    join(rendezvous, "alice", 22243, T0)
    replies = join(rendezvous, "bob", 22253, T0, groups=(("grp", "nope"),), query=("grp", "nope"))
    assert [m.status for m in replies] == ["ok", "wrong password"]
    assert "bob" not in rendezvous.groups["grp"].members
    assert send(rendezvous, wire.encode_bundle([wire.GroupUsersQuery("grp", md5("nope")).encode()]),
                22253, T0) == []
    assert send(rendezvous, wire.encode_bundle([wire.GroupUsersQuery("none", md5("x")).encode()]),
                22253, T0) == []


def test_member_password_is_not_rechecked(rendezvous):
    join(rendezvous, "alice", 22243, T0)
    replies = join(rendezvous, "alice", 22243, T0 + 6, groups=(("grp", "changed"),), query=None)
    assert [m.status for m in replies] == ["ok", "ok"]


def test_takeover_from_another_address_moves_the_public_endpoint(rendezvous):
    join(rendezvous, "alice", 22243, T0)
    replies = send(rendezvous, alive_request("alice", 22243), 40001, T0 + 3, host="198.18.9.9")
    assert messages_of(replies)[0].status == "ok"
    assert rendezvous.users["alice"].public_endpoint == ("198.18.9.9", 40001)


def test_leaving_groups_and_deleting_empty_ones(rendezvous):
    join(rendezvous, "alice", 22243, T0, groups=(("grp", "gpw"), ("b", "bpw")))
    assert list(rendezvous.users["alice"].groups) == ["grp", "b"]
    join(rendezvous, "alice", 22243, T0 + 6, groups=(("grp", "gpw"),))
    assert "b" not in rendezvous.groups
    join(rendezvous, "alice", 22243, T0 + 12, groups=(), query=None)
    assert rendezvous.groups == {} and rendezvous.users["alice"].groups == {}
    # The name is free again: the next joiner sets a new password.
    replies = join(rendezvous, "bob", 22253, T0 + 13, groups=(("grp", "new"),), query=("grp", "new"))
    assert [m.status for m in replies[:2]] == ["ok", "ok"]


def test_same_group_twice_gives_two_statuses(rendezvous):
    replies = join(rendezvous, "alice", 22243, T0, groups=(("grp", "gpw"), ("grp", "gpw")),
                   query=None)
    assert [m.status for m in replies] == ["ok", "ok", "ok"]


def test_purge_at_60_seconds(rendezvous):
    join(rendezvous, "alice", 22243, T0)
    join(rendezvous, "bob", 22253, T0 + 30)
    assert rendezvous.purge(T0 + 59.9) == []
    assert rendezvous.purge(T0 + 60) == [server.Purged(["alice"])]
    assert list(rendezvous.groups["grp"].members) == ["bob"]
    assert rendezvous.purge(T0 + 90) == [server.Purged(["bob"])]
    assert rendezvous.groups == {}
    assert rendezvous.purge_interval == 6


def test_purge_also_runs_when_due_before_a_request(rendezvous):
    join(rendezvous, "alice", 22243, T0)
    replies = join(rendezvous, "bob", 22253, T0 + 61)
    assert [m.user_name for m in replies if isinstance(m, wire.UserInfo)] == ["bob"]


def test_a_failed_attempt_does_not_keep_the_owner_alive(rendezvous):
    join(rendezvous, "alice", 22243, T0)
    join(rendezvous, "alice", 22243, T0 + 50, password="guess")
    assert rendezvous.purge(T0 + 60) == [server.Purged(["alice"])]


def test_hundred_member_group_is_split_into_parseable_datagrams(rendezvous):
    for i in range(99):
        join(rendezvous, f"member{i:02d}-with-a-longish-name", 20000 + i, T0, query=None)
    replies = send(rendezvous, alive_request("last", 30000), 30000, T0)
    assert len(replies) > 1
    names = []
    for reply, destination in replies:
        assert len(reply) <= 1536 and destination == (LOOPBACK, 30000)
        names += [m.user_name for m in messages_of([(reply, destination)])
                  if isinstance(m, wire.UserInfo)]
    assert len(names) == 100 and names[-1] == "last"
    statuses = messages_of(replies[:1])[:2]
    assert [type(m) for m in statuses] == [wire.UserAliveStatus, wire.UserGroupStatus]


def test_two_alives_in_one_request_give_statuses_then_infos(rendezvous):
    alice = wire.UserAlive("alice", md5("a"), (LOOPBACK, 1), (("grp", md5("g")),)).encode()
    bob = wire.UserAlive("bob", md5("b"), (LOOPBACK, 2), (("grp", md5("g")),)).encode()
    query = wire.GroupUsersQuery("grp", md5("g")).encode()
    data = osc_bundle(alice, osc_bundle(bob), query)
    kinds = [type(m).__name__ for m in messages_of(send(rendezvous, data, 1, T0))]
    assert kinds == ["UserAliveStatus", "UserGroupStatus", "UserAliveStatus", "UserGroupStatus",
                     "UserInfo", "UserInfo"]


@pytest.mark.parametrize("data, reason", [
    (b"", "dropped_empty"),
    (b"hello world", "dropped_malformed"),
    (alive_request("alice", 1)[:-3], "dropped_malformed"),
    (b"/" + b"x" * 5000, "dropped_oversized"),
    (osc_message("/groupserver/get_group_users_info", "sss", "grp", "x", "extra"),
     "dropped_bad_arguments"),
    (osc_string("/groupserver/user_alive") + osc_string(",SSii") + b"\0" * 16,
     "dropped_bad_arguments"),
    (osc_message("/groupserver/user_alive", "ssiis", "u", "p", 0, 1, "odd"),
     "dropped_bad_arguments"),
    (osc_message("/groupserver/user_alive", "ssii", "u" * 65, "p", 0, 1),
     "dropped_string_too_long"),
    (osc_message("/groupserver/whatever", "s", "x"), "dropped_unknown_address"),
    (b"#bundle\0" + bytes(8), "dropped_no_messages"),       # found by bench/wire_fuzz.py
])
def test_bad_input_is_dropped_and_counted(rendezvous, data, reason):
    assert rendezvous.receive(data, (LOOPBACK, 1), T0) == [
        Drop(reason.removeprefix("dropped_"), (LOOPBACK, 1))]
    assert rendezvous.counters[reason] == 1
    assert rendezvous.users == {}


def test_too_many_groups_per_user_is_refused(rendezvous):
    groups = tuple((f"g{i}", "x") for i in range(server.MAX_GROUPS_PER_USER + 1))
    assert join(rendezvous, "alice", 1, T0, groups=groups, query=None) == []
    assert rendezvous.counters["dropped_too_many_groups"] == 1


def test_non_ipv4_source_is_dropped(rendezvous):
    assert send(rendezvous, alive_request("alice", 1), 1, T0, host="::1") == []
    assert rendezvous.counters["dropped_not_ipv4_source"] == 1


def test_authorize_group_hook_overrides_or_defers():
    verdicts = {"session": True, "closed": False}
    calls = []

    def authorize(group_name, password_md5, addr):
        calls.append((group_name, password_md5))
        return verdicts.get(group_name)

    rendezvous = server.RendezvousServer(authorize_group=authorize, now=T0)
    join(rendezvous, "alice", 1, T0, groups=(("session", "s1"),), query=None)
    replies = join(rendezvous, "bob", 2, T0, groups=(("session", "other"), ("closed", "c"),
                                                     ("plain", "p")), query=("session", "any"))
    assert [m.status for m in replies[:4]] == ["ok", "ok", "wrong password", "ok"]
    assert [m.user_name for m in replies[4:]] == ["alice", "bob"]
    assert ("session", md5("other")) in calls
    # None falls back to OSCgroups' own rule.
    replies = join(rendezvous, "carol", 3, T0, groups=(("plain", "wrong"),), query=None)
    assert replies[1].status == "wrong password"


def test_listed_endpoints_hook_replaces_both_endpoints():
    relay, direct = ("203.0.113.7", 40000), ("198.18.2.1", 2)
    rendezvous = server.RendezvousServer(
        listed_endpoints=lambda user, viewer, actions: (
            (direct, relay) if user.name == "bob" else None),
        now=T0)
    join(rendezvous, "alice", 1, T0)
    infos = {m.user_name: m for m in join(rendezvous, "bob", 2, T0)
             if isinstance(m, wire.UserInfo)}
    assert (infos["bob"].private_endpoint, infos["bob"].public_endpoint) == (direct, relay)
    assert infos["alice"].private_endpoint == infos["alice"].public_endpoint == (LOOPBACK, 1)


def test_listed_endpoints_hook_is_told_whose_query_it_answers():
    seen = []
    rendezvous = server.RendezvousServer(
        listed_endpoints=lambda user, viewer, actions: seen.append(
            (user.name, viewer and viewer.name)), now=T0)
    join(rendezvous, "alice", 1, T0)
    join(rendezvous, "bob", 2, T0)
    # A query from an address no member registered from has no viewer.
    send(rendezvous, wire.encode_bundle([wire.GroupUsersQuery("grp", md5("gpw")).encode()]),
         3, T0)
    assert seen == [("alice", "alice"),
                    ("alice", "bob"), ("bob", "bob"),
                    ("alice", None), ("bob", None)]


def test_full_session_answers_user_limit_reached_to_newcomers_only():
    full = {"grp": False}
    rendezvous = server.RendezvousServer(
        group_full=lambda group, user: full[group], now=T0)
    assert [m.status for m in join(rendezvous, "alice", 1, T0)[:2]] == ["ok", "ok"]
    full["grp"] = True
    replies = join(rendezvous, "bob", 2, T0)
    assert [m.status for m in replies[:2]] == ["ok", "user limit reached"]
    assert [m.user_name for m in replies[2:]] == ["alice"]       # bob is not listed
    assert rendezvous.counters["refused_session_full"] == 1
    # alice is a member already: her alive keeps her in.
    assert [m.status for m in join(rendezvous, "alice", 1, T0 + 6)[:2]] == ["ok", "ok"]


def test_a_request_due_for_the_purge_reports_it_first(rendezvous):
    join(rendezvous, "alice", 1, T0)
    assert rendezvous.purge(T0 + 30) == []
    assert rendezvous.receive(b"", (LOOPBACK, 9), T0 + server.DEFAULT_TIMEOUT) == [
        server.Purged(["alice"]), Drop("empty", (LOOPBACK, 9))]


def test_refusals_come_out_as_dropped_actions_before_the_reply(rendezvous):
    join(rendezvous, "alice", 1, T0)
    actions = rendezvous.receive(alive_request("bob", 2, groups=(("grp", "nope"),), query=None),
                                 (LOOPBACK, 2), T0)
    assert [type(action) for action in actions] == [Drop, Send]
    assert actions[0] == Drop("refused_wrong_group_password", (LOOPBACK, 2))


def test_listed_endpoints_hook_can_add_actions():
    opened = []

    def listed_endpoints(user, viewer, actions):
        actions.append(("open", user.name))
        opened.append(user.name)
        return None
    rendezvous = server.RendezvousServer(listed_endpoints=listed_endpoints, now=T0)
    actions = rendezvous.receive(alive_request("alice", 1), (LOOPBACK, 1), T0)
    assert actions[0] == ("open", "alice") and type(actions[1]) is Send
    assert opened == ["alice"]


def test_largest_allowed_user_info_fits_one_datagram(rendezvous):
    name = "n" * server.MAX_STRING_BYTES
    groups = tuple((f"{i:02d}" + "g" * (server.MAX_STRING_BYTES - 2), "x")
                   for i in range(server.MAX_GROUPS_PER_USER))
    replies = send(rendezvous, alive_request(name, 1, groups=groups, query=(groups[0][0], "x")),
                   1, T0)
    assert all(len(reply) <= 1536 for reply, _ in replies)
    info = messages_of(replies)[-1]
    assert info.user_name == name and len(info.groups) == server.MAX_GROUPS_PER_USER
