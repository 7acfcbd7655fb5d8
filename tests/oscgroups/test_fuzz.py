"""Arbitrary datagrams never raise out of wire, server, mapping or client."""

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.actions import Drop, Send
from gateway.protocols.oscgroups import client, mapping, server, wire

from .osc_bytes import osc_bundle, osc_string

SERVER = ("127.0.0.1", 22242)
PEER = ("127.0.0.1", 40000)

ADDRESSES = [wire.USER_ALIVE, wire.GET_GROUP_USERS_INFO, wire.USER_ALIVE_STATUS,
             wire.USER_GROUP_STATUS, wire.USER_INFO, wire.PING,
             "/midi", "/midi/note", "/midi/noteoff", "/midi/pitchbend", "/x"]


@st.composite
def osc_like(draw):
    """Mostly well-framed OSC with random tags and random (often wrong) argument bytes."""
    address = draw(st.sampled_from(ADDRESSES))
    tags = draw(st.text(alphabet="sSiIhfdbmtTFNr[]q", max_size=8))
    body = draw(st.lists(st.one_of(
        st.integers(-2**31, 2**31 - 1).map(lambda v: struct.pack(">i", v)),
        st.text(max_size=12).map(osc_string),
        st.binary(max_size=12)), max_size=8))
    message = osc_string(address) + osc_string("," + tags) + b"".join(body)
    if draw(st.booleans()):
        return osc_bundle(message, osc_bundle(message))
    return message


datagrams = st.one_of(st.binary(max_size=600), osc_like())
fuzz_settings = settings(max_examples=400, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])


@fuzz_settings
@given(datagrams)
def test_wire_raises_only_malformed_packet(data):
    try:
        messages = wire.parse_packet(data)
    except wire.MalformedPacket:
        return
    for message in messages:
        try:
            wire.decode_message(message)
        except wire.MalformedPacket:
            pass


@fuzz_settings
@given(st.lists(datagrams, max_size=5))
def test_server_never_raises_and_replies_fit(sequence):
    rendezvous = server.RendezvousServer(now=0)
    for step, data in enumerate(sequence):
        for action in rendezvous.receive(data, ("127.0.0.1", 5000 + step), step):
            assert type(action) in (Send, Drop, server.Purged)
            if type(action) is Send:
                assert len(action.data) <= wire.MAX_SERVER_DATAGRAM
    rendezvous.purge(1000)


@fuzz_settings
@given(datagrams)
def test_mapping_never_raises(data):
    events, _unmapped = mapping.OscMidiMapping().datagram_to_midi(data)
    for event in events:
        assert event[0] >= 0x80


@fuzz_settings
@given(st.lists(st.tuples(datagrams, st.booleans()), max_size=5))
def test_client_never_raises(sequence):
    core = client.GroupClient("alice", "a" * 32, "grp", "g" * 32, SERVER, ("127.0.0.1", 1))
    core.timer(0)
    for step, (data, from_server) in enumerate(sequence):
        core.receive(data, SERVER if from_server else PEER, step)
        core.timer(step)
    core.send_from_app(b"anything", 10)


endpoints = st.tuples(st.sampled_from(["127.0.0.1", "192.168.1.2", "198.18.2.1"]),
                      st.integers(0, 65535))
names = st.sampled_from(["alice", "bob", "carol"])
client_inputs = st.one_of(
    st.builds(lambda n, p, q, age, g: ("server", wire.encode_bundle(
        [wire.UserInfo(n, p, q, age, g).encode()])),
        names, endpoints, endpoints, st.integers(-2**31, 2**31 - 1),
        st.lists(st.sampled_from(["grp", "x"]), min_size=1, max_size=3).map(tuple)),
    st.builds(lambda n, source: (source, wire.encode_bundle([wire.Ping(n).encode()])),
              names, endpoints),
    st.builds(lambda step: ("tick", step), st.floats(0, 400)),
)


@fuzz_settings
@given(st.lists(client_inputs, max_size=30))
def test_client_only_sends_data_to_peers_that_pinged(inputs):
    core = client.GroupClient("alice", "a" * 32, "grp", "g" * 32, SERVER, ("127.0.0.1", 1))
    now = 0.0
    for source, payload in inputs:
        if source == "tick":
            now += payload
            core.timer(now)
        else:
            core.receive(payload, SERVER if source == "server" else source, now)
        sent = {action.address for action in core.send_from_app(b"data", now)}
        pinged = {peer.selected()[1].address for peer in core.peers.values() if peer.selected()}
        assert sent == pinged
