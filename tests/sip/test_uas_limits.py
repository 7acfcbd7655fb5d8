"""Limits and bad input: stream framing, 513 for floods, bounded tables, fuzz."""

from hypothesis import given, settings, strategies as st

from gateway.actions import Drop, Send
from gateway.protocols.sip.framing import PING, Broken, StreamFramer
from gateway.protocols.sip.message import parse
from gateway.protocols.sip.uas import CloseConnection, Limits
from tests.sip.uas_agents import NOW, PCMU_OFFER, Agent, Baresip, Sipsak, make_core, verify

OPTIONS = Agent().request("OPTIONS", "sip:demo@127.0.0.1")


def test_the_framer_splits_on_content_length_and_answers_pings():
    framer = StreamFramer()
    invite = Baresip(transport="TCP").request("INVITE", "sip:demo@127.0.0.1", body=PCMU_OFFER)
    stream = b"\r\n" + OPTIONS + b"\r\n\r\n" + invite + OPTIONS
    frames = []
    for index in range(0, len(stream), 7):                  # any chunking
        frames += framer.feed(stream[index:index + 7])
    assert frames == [OPTIONS, PING, invite, OPTIONS]
    assert parse(frames[2]).body == PCMU_OFFER


def test_the_framer_breaks_on_oversized_headers_bodies_and_bad_lengths():
    framer = StreamFramer(max_header_octets=1024)
    [broken] = framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 300)
    assert isinstance(broken, Broken) and broken.reason == "too_large"
    assert framer.broken and framer.feed(OPTIONS) == []
    [broken] = StreamFramer(max_body_octets=10).feed(
        OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 11"))
    assert broken.reason == "too_large"
    [broken] = StreamFramer().feed(OPTIONS.replace(b"Content-Length: 0", b"l: 1x"))
    assert broken.reason == "malformed"


def test_a_header_flood_over_tcp_gets_513_and_the_connection_is_closed():
    core = make_core()
    agent = Sipsak(transport="TCP")
    flood = agent.request("OPTIONS", "sip:demo@127.0.0.1", [("X-Flood", "a" * 60)] * 300)
    actions = core.receive_stream(StreamFramer(), flood, "TCP", agent.address, NOW)
    [drop, reply, close] = actions
    assert type(drop) is Drop and drop.reason == "too_large"
    assert parse(reply.data).status == 513 and reply.via == "TCP"
    assert parse(reply.data).call_id == agent.call_id
    assert close == CloseConnection("TCP", agent.address, "too_large")


def test_a_header_flood_in_a_datagram_gets_513_without_a_transaction():
    core = make_core()
    agent = Sipsak()
    flood = agent.request("OPTIONS", "sip:demo@127.0.0.1", [("X", "y")] * 100)
    [drop, reply] = core.receive(flood, "UDP", agent.address, NOW)
    assert drop.reason == "header_flood" and parse(reply.data).status == 513
    assert len(core.transactions) == 0
    huge_body = Agent().request("MESSAGE", "sip:demo@h", body=b"x" * 70000)
    [drop, reply] = core.receive(huge_body, "UDP", agent.address, NOW)
    assert drop.reason == "too_large" and parse(reply.data).status == 513


def test_tcp_messages_reach_the_core_through_the_framer():
    core = make_core()
    agent = Sipsak(transport="TCP")
    framer = StreamFramer()
    data = agent.request("OPTIONS", "sip:demo@127.0.0.1") + b"\r\n\r\n"
    actions = core.receive_stream(framer, data[:20], "TCP", agent.address, NOW)
    actions += core.receive_stream(framer, data[20:], "TCP", agent.address, NOW)
    [reply, pong] = actions
    assert parse(reply.data).status == 200 and reply.via == "TCP"
    assert pong == Send(b"\r\n", agent.address, "TCP")


def test_live_transactions_are_bounded_with_503():
    core = make_core(limits=Limits(max_transactions=2))
    for number in range(2):
        agent = Agent(address=("127.0.0.1", 6000 + number))
        uri = "sip:127.0.0.1"
        challenge = core.receive(agent.request("REGISTER", uri), "UDP", agent.address, NOW)
        core.receive(agent.request("REGISTER", uri, [agent.authorization(
            parse(challenge[0].data), "REGISTER", uri)]), "UDP", agent.address, NOW)
    agent = Agent(address=("127.0.0.1", 7000))
    actions = core.receive(agent.request("OPTIONS", "sip:x@y"), "UDP", agent.address, NOW)
    assert [a.reason for a in actions if type(a) is Drop] == ["transactions_full"]
    assert parse(actions[-1].data).status == 503


# Fuzz -------------------------------------------------------------------------------------------

def _no_internal_errors(actions):
    assert not [a for a in actions if type(a) is Drop and a.reason == "internal_error"], actions


@given(st.binary(max_size=2000))
def test_arbitrary_datagrams_never_raise(data):
    core = make_core()
    _no_internal_errors(core.receive(data, "UDP", ("127.0.0.1", 5070), NOW))
    _no_internal_errors(core.timer(NOW + 40))


@given(st.lists(st.binary(max_size=400), max_size=8))
def test_arbitrary_streams_never_raise(chunks):
    core = make_core()
    framer = StreamFramer(max_header_octets=2048, max_body_octets=2048)
    for chunk in chunks:
        _no_internal_errors(core.receive_stream(framer, chunk, "TCP", ("127.0.0.1", 5070), NOW))


_GOLDEN = [
    Sipsak().request("OPTIONS", "sip:jam@127.0.0.1"),
    Baresip().request("INVITE", "sip:demo@127.0.0.1", body=PCMU_OFFER),
    Agent().request("REGISTER", "sip:127.0.0.1", [("Authorization",
                    'Digest username="a", nonce="1.2.3", uri="sip:x", response="00",'
                    ' qop=auth, nc=00000001, cnonce="c"')]),
    Agent().request("BYE", "sip:demo@127.0.0.1", to_tag="abc"),
    Agent().request("CANCEL", "sip:demo@127.0.0.1"),
    Agent().request("ACK", "sip:demo@127.0.0.1", to_tag="abc"),
]


@settings(max_examples=300)
@given(st.sampled_from(_GOLDEN), st.lists(st.tuples(st.integers(0, 4000), st.binary(max_size=6)),
                                          max_size=6))
def test_mutated_client_messages_never_raise(message, edits):
    core = make_core()
    data = bytearray(message)
    for position, replacement in edits:
        position %= max(1, len(data))
        data[position:position + len(replacement)] = replacement
    actions = core.receive(bytes(data), "UDP", ("127.0.0.1", 5070), NOW)
    _no_internal_errors(actions)
    _no_internal_errors(verify(core, actions))
    _no_internal_errors(core.timer(NOW + 33))


@settings(max_examples=100)
@given(st.lists(st.sampled_from(_GOLDEN), min_size=1, max_size=12),
       st.lists(st.floats(0, 40), min_size=1, max_size=12))
def test_any_sequence_of_client_messages_and_times_never_raises(messages, times):
    core = make_core()
    now = NOW
    for message, step in zip(messages, times):
        now += step
        actions = verify(core, core.receive(message, "UDP", ("127.0.0.1", 5070), now), now)
        _no_internal_errors(actions)
        for action in actions:
            if type(action).__name__ == "CallOffered":
                _no_internal_errors(core.answer(action.call, b"v=0\r\n", now))
        _no_internal_errors(core.timer(now))
    for call in list(core.calls.values()):
        _no_internal_errors(core.hang_up(call, now))
    _no_internal_errors(core.timer(now + 100))
