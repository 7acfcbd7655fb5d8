"""The AppleMIDI session state machine, driven in memory with a fake clock."""

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocols.rtpmidi.applemidi import (
    END_SESSION,
    INVITATION,
    INVITATION_ACCEPTED,
    INVITATION_REJECTED,
    BitrateLimit,
    ReceiverFeedback,
    SessionExchange,
    Sync,
    is_applemidi,
    parse_control,
)
from gateway.actions import ClockSynced, Drop, Feedback, PeerJoined, PeerLeft, Send
from gateway.protocols.rtpmidi.session import (
    CONTROL,
    DATA,
    INITIATOR,
    INVITATION_ATTEMPTS,
    RESPONDER,
    SYNC_TIMEOUT,
    AppleMidiSession,
    InvitationFailed,
    RtpReceived,
)

A_HOST, B_HOST, C_HOST = "10.0.0.1", "10.0.0.2", "10.0.0.3"


def rtp(seq, ssrc, payload=b"\x03\x90\x3c\x64"):
    return struct.pack(">BBHII", 0x80, 0x61, seq, 1234, ssrc) + payload


def command_of(data):
    if not is_applemidi(data):
        return "RTP"
    packet = parse_control(data)
    if isinstance(packet, Sync):
        return f"CK{packet.count}"
    if isinstance(packet, SessionExchange):
        return packet.command.decode()
    return "RS" if isinstance(packet, ReceiverFeedback) else "RL"


class Wire:
    """Delivers Send actions between sessions instantly; ``lose`` drops chosen datagrams."""

    def __init__(self):
        self.now = 0.0
        self.sessions = {}
        self.endpoints = {}
        self.events = {}
        self.log = []
        self.lose = lambda source, destination, data: False

    def add(self, name, host, control_port, **options):
        session = AppleMidiSession(name, random.Random(name).getrandbits(32), self.now,
                                   rng=random.Random(f"tokens {name}"), **options)
        self.sessions[session] = (host, control_port)
        self.endpoints[(host, control_port)] = (session, CONTROL)
        self.endpoints[(host, control_port + 1)] = (session, DATA)
        self.events[session] = []
        return session

    def address(self, session, port=CONTROL):
        host, control_port = self.sessions[session]
        return (host, control_port if port == CONTROL else control_port + 1)

    def run(self, session, actions):
        pending = [(session, action) for action in actions]
        while pending:
            origin, action = pending.pop(0)
            if not isinstance(action, Send):
                self.events[origin].append(action)
                continue
            source = self.address(origin, action.via)
            self.log.append((self.now, source, action.address, command_of(action.data),
                             action.data))
            if (self.lose(source, action.address, action.data)
                    or action.address not in self.endpoints):
                continue
            target, port = self.endpoints[action.address]
            pending += [(target, reply)
                        for reply in target.receive(action.data, source, self.now, port)]

    def invite(self, session, addr):
        """``session`` invites ``addr``; returns the Peer the invitation created."""
        peer, actions = session.invite(addr, self.now)
        self.run(session, actions)
        return peer

    def advance(self, seconds, step=0.1):
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = round(self.now + step, 6)
            for session in list(self.sessions):
                self.run(session, session.timer(self.now))

    def of_type(self, session, kind):
        return [event for event in self.events[session] if isinstance(event, kind)]

    def sent(self, command, source=None):
        return [entry for entry in self.log
                if entry[3] == command and (source is None or entry[1][0] == source)]


@pytest.fixture
def wire():
    return Wire()


def connect(wire, **responder_options):
    a = wire.add("A", A_HOST, 5004)
    b = wire.add("B", B_HOST, 5006, **responder_options)
    wire.invite(a, wire.address(b))
    return a, b


def test_initiator_and_responder_join(wire):
    a, b = connect(wire)
    assert [entry[3] for entry in wire.log] == ["IN", "OK", "IN", "OK", "CK0", "CK1", "CK2"]
    assert [(entry[1], entry[2]) for entry in wire.log[:4]] == [
        ((A_HOST, 5004), (B_HOST, 5006)), ((B_HOST, 5006), (A_HOST, 5004)),
        ((A_HOST, 5005), (B_HOST, 5007)), ((B_HOST, 5007), (A_HOST, 5005))]

    [joined_at_a] = wire.of_type(a, PeerJoined)
    peer_b = joined_at_a.peer
    assert (peer_b.name, peer_b.ssrc, peer_b.local_role) == ("B", b.ssrc, INITIATOR)
    assert (peer_b.control_addr, peer_b.data_addr) == ((B_HOST, 5006), (B_HOST, 5007))
    [joined_at_b] = wire.of_type(b, PeerJoined)
    peer_a = joined_at_b.peer
    assert (peer_a.name, peer_a.ssrc, peer_a.local_role) == ("A", a.ssrc, RESPONDER)
    assert (peer_a.control_addr, peer_a.data_addr) == ((A_HOST, 5004), (A_HOST, 5005))
    assert a.peers == [peer_b] and b.peers == [peer_a]

    assert len(wire.of_type(a, ClockSynced)) == 1
    assert len(wire.of_type(b, ClockSynced)) == 1
    assert peer_b.rtt == 0 and peer_b.clock_offset == 0


def test_one_ssrc_everywhere(wire):
    a, b = connect(wire)
    wire.run(a, a.send_rtp(rtp(1, a.ssrc)))
    wire.advance(2)
    wire.run(a, a.close())
    ssrcs = {A_HOST: set(), B_HOST: set()}
    for _, source, _, _, data in wire.log:
        if is_applemidi(data):
            ssrcs[source[0]].add(parse_control(data).ssrc)
    assert ssrcs == {A_HOST: {a.ssrc}, B_HOST: {b.ssrc}}
    assert {entry[3] for entry in wire.log} == {
        "IN", "OK", "CK0", "CK1", "CK2", "RTP", "RS", "BY"}


def test_rtp_flows_both_ways(wire):
    a, b = connect(wire)
    wire.run(a, a.send_rtp(rtp(10, a.ssrc)))
    wire.run(b, b.send_rtp(rtp(20, b.ssrc)))
    [at_b] = wire.of_type(b, RtpReceived)
    [at_a] = wire.of_type(a, RtpReceived)
    assert at_b.data == rtp(10, a.ssrc) and at_b.peer.ssrc == a.ssrc
    assert at_a.data == rtp(20, b.ssrc) and at_a.peer.ssrc == b.ssrc
    assert at_b.peer.highest_rtp_seq == 10


def test_send_rtp_to_chosen_peers(wire):
    b = wire.add("B", B_HOST, 5006)
    a = wire.add("A", A_HOST, 5004)
    c = wire.add("C", C_HOST, 5008)
    wire.invite(a, wire.address(b))
    wire.invite(c, wire.address(b))
    assert len(b.peers) == 2
    peer_c = next(peer for peer in b.peers if peer.ssrc == c.ssrc)
    assert b.send_rtp(b"x") == [Send(b"x", (A_HOST, 5005), DATA), Send(b"x", (C_HOST, 5009), DATA)]
    assert b.send_rtp(b"x", [peer_c]) == [Send(b"x", (C_HOST, 5009), DATA)]


def test_invitation_is_retried(wire):
    lost = []

    def lose_first_two_invitations(source, destination, data):
        if command_of(data) == "IN" and len(lost) < 2:
            lost.append(data)
            return True
        return False

    wire.lose = lose_first_two_invitations
    a, b = connect(wire)
    assert not wire.of_type(a, PeerJoined)
    wire.advance(2.05)
    assert [entry[0] for entry in wire.sent("IN", A_HOST)] == [0.0, 1.0, 2.0, 2.0]
    assert len(wire.of_type(a, PeerJoined)) == 1
    assert len(wire.of_type(b, PeerJoined)) == 1


def test_invitation_gives_up(wire):
    a = wire.add("A", A_HOST, 5004)
    wire.invite(a, ("10.9.9.9", 5004))
    wire.advance(INVITATION_ATTEMPTS + 1)
    assert len(wire.sent("IN")) == INVITATION_ATTEMPTS
    [failed] = wire.of_type(a, InvitationFailed)
    assert failed.reason == "no answer"
    assert not wire.of_type(a, PeerLeft)
    wire.advance(5)
    assert len(wire.sent("IN")) == INVITATION_ATTEMPTS


@pytest.mark.parametrize("lost_port", [5006, 5007])
def test_lost_ok_is_answered_again(wire, lost_port):
    lost = []

    def lose_first_ok(source, destination, data):
        if source[1] == lost_port and command_of(data) == "OK" and not lost:
            lost.append(data)
            return True
        return False

    wire.lose = lose_first_ok
    a, b = connect(wire)
    wire.advance(1.5)
    assert len(wire.sent("OK", B_HOST)) == 3
    assert len(wire.of_type(a, PeerJoined)) == 1
    assert len(wire.of_type(b, PeerJoined)) == 1
    assert len(b.peers) == 1
    assert not wire.of_type(b, Drop)


def test_refused_invitation_gets_no(wire):
    a, b = connect(wire, accept=lambda addr, name: "not on the allow-list")
    assert [entry[3] for entry in wire.log] == ["IN", "NO"]
    [failed] = wire.of_type(a, InvitationFailed)
    assert failed.reason == "refused"
    [dropped] = wire.of_type(b, Drop)
    assert dropped == Drop("invitation refused", (A_HOST, 5004), "not on the allow-list")
    assert b.counters["invitation refused"] == 1
    assert b.peers == [] and a.peers == []
    wire.advance(3)
    assert len(wire.sent("IN")) == 1


def test_invitation_with_our_own_ssrc_is_refused(wire):
    a = wire.add("A", A_HOST, 5004)
    wire.invite(a, wire.address(a))
    assert [entry[3] for entry in wire.log] == ["IN", "NO"]
    assert a.counters["invitation with our own SSRC"] == 1
    assert [event.reason for event in wire.of_type(a, InvitationFailed)] == ["refused"]


def test_accept_sees_the_inviting_address(wire):
    seen = []
    connect(wire, accept=lambda addr, name: seen.append(addr) or True)
    assert seen == [(A_HOST, 5004)]


def test_data_invitation_without_control_invitation_is_refused(wire):
    b = wire.add("B", B_HOST, 5006)
    invitation = bytes(SessionExchange(INVITATION, 5, 6, "sneaky"))
    actions = b.receive(invitation, (A_HOST, 5005), 0.0, DATA)
    assert actions[0] == Send(bytes(SessionExchange(INVITATION_REJECTED, 5, b.ssrc, "B")),
                              (A_HOST, 5005), DATA)
    assert b.counters["data invitation without control invitation"] == 1



# A pymidi-style initiator: one SSRC per port, so its data-port IN names another
# SSRC than its control-port IN; the initiator token ties the two together.
PY_CONTROL_SSRC, PY_DATA_SSRC, PY_TOKEN = 0x1111, 0x2222, 0xCBAD7F85


def exchange(command, ssrc, token=PY_TOKEN, name="pyI"):
    return bytes(SessionExchange(command, token, ssrc, name))


def invited_by_pymidi_style_peer(b, now=0.0, data_from=(A_HOST, 5005)):
    """Control IN from (A_HOST, 5004), then a data IN with its own SSRC; the data-port actions."""
    [ok] = b.receive(exchange(INVITATION, PY_CONTROL_SSRC), (A_HOST, 5004), now, CONTROL)
    assert command_of(ok.data) == "OK"
    return b.receive(exchange(INVITATION, PY_DATA_SSRC), data_from, now, DATA)


def test_data_invitation_with_its_own_ssrc_joins_when_token_and_host_match(wire):
    b = wire.add("B", B_HOST, 5006)
    [ok, joined] = invited_by_pymidi_style_peer(b)
    assert ok == Send(exchange(INVITATION_ACCEPTED, b.ssrc, name="B"), (A_HOST, 5005), DATA)
    peer = joined.peer
    assert joined == PeerJoined(peer) and b.peers == [peer]
    assert (peer.ssrc, peer.data_port_ssrc, peer.local_role) == (
        PY_CONTROL_SSRC, PY_DATA_SSRC, RESPONDER)
    assert (peer.control_addr, peer.data_addr) == ((A_HOST, 5004), (A_HOST, 5005))
    assert not b.counters

    # RTP, CK and RS from the data port's SSRC are the peer's.
    [received] = b.receive(rtp(1, PY_DATA_SSRC), (A_HOST, 5005), 0.1, DATA)
    assert received == RtpReceived(peer, rtp(1, PY_DATA_SSRC))
    assert b.rtp_source(PY_DATA_SSRC, 2, (A_HOST, 5005)) is peer
    assert peer.highest_rtp_seq == 2
    [ck1] = b.receive(bytes(Sync(PY_DATA_SSRC, 0, 1234)), (A_HOST, 5005), 0.2, DATA)
    assert parse_control(ck1.data) == Sync(b.ssrc, 1, 1234, b.ticks(0.2))
    assert ck1.address == (A_HOST, 5005) and peer.last_sync_time == 0.2
    [feedback] = b.receive(bytes(ReceiverFeedback(PY_DATA_SSRC, 7)), (A_HOST, 5004), 0.3, CONTROL)
    assert feedback == Feedback(peer, 7)
    # A repeated data IN (our OK was lost) is answered again, without a second join.
    [again] = b.receive(exchange(INVITATION, PY_DATA_SSRC), (A_HOST, 5005), 0.4, DATA)
    assert again == ok and b.peers == [peer]
    # Our RTP goes to the address its data-port IN came from.
    assert b.send_rtp(b"rtp") == [Send(b"rtp", (A_HOST, 5005), DATA)]
    assert not b.counters


@pytest.mark.parametrize("port", [CONTROL, DATA])
@pytest.mark.parametrize("ssrc", [PY_CONTROL_SSRC, PY_DATA_SSRC],
                         ids=["control_ssrc", "data_ssrc"])
def test_bye_from_either_ssrc_ends_a_peer_with_a_data_port_ssrc(wire, ssrc, port):
    b = wire.add("B", B_HOST, 5006)
    [_, joined] = invited_by_pymidi_style_peer(b)
    bye = bytes(SessionExchange(END_SESSION, 0, ssrc))
    from_addr = (A_HOST, 5004) if port == CONTROL else (A_HOST, 5005)
    assert b.receive(bye, from_addr, 1.0, port) == [PeerLeft(joined.peer, "bye")]
    assert b.peers == []
    for gone in (PY_CONTROL_SSRC, PY_DATA_SSRC):
        [dropped] = b.receive(rtp(3, gone), (A_HOST, 5005), 1.1, DATA)
        assert dropped.reason == "RTP from non-member"
    # The data-port SSRC is free again: the peer can come back with both.
    [_, rejoined] = invited_by_pymidi_style_peer(b, now=2.0)
    assert isinstance(rejoined, PeerJoined) and b.peers == [rejoined.peer]


@pytest.mark.parametrize("token, data_from", [
    (PY_TOKEN ^ 1, (A_HOST, 5005)),     # a token no control-port IN carried
    (PY_TOKEN, (C_HOST, 5005)),         # the right token from another host
], ids=["unknown_token", "other_host"])
def test_data_invitation_with_its_own_ssrc_needs_token_and_host(wire, token, data_from):
    b = wire.add("B", B_HOST, 5006)
    b.receive(exchange(INVITATION, PY_CONTROL_SSRC), (A_HOST, 5004), 0.0, CONTROL)
    actions = b.receive(exchange(INVITATION, PY_DATA_SSRC, token), data_from, 0.0, DATA)
    assert actions == [Send(exchange(INVITATION_REJECTED, b.ssrc, token, "B"), data_from, DATA),
                       Drop("data invitation without control invitation", data_from)]
    assert b.counters == {"data invitation without control invitation": 1}
    assert b.peers == []
    [dropped] = b.receive(rtp(1, PY_DATA_SSRC), data_from, 0.1, DATA)
    assert dropped.reason == "RTP from non-member"
    # The invitation it did not match still completes from the right host.
    [ok, joined] = b.receive(exchange(INVITATION, PY_DATA_SSRC), (A_HOST, 5005), 0.2, DATA)
    assert command_of(ok.data) == "OK" and joined.peer.data_port_ssrc == PY_DATA_SSRC


def test_joined_peer_cannot_add_a_data_port_ssrc_later(wire):
    a, b = connect(wire)
    [peer_a] = b.peers
    invitation = bytes(SessionExchange(INVITATION, peer_a.token, 0x3333, "A"))
    [no, dropped] = b.receive(invitation, wire.address(a, DATA), wire.now, DATA)
    assert command_of(no.data) == "NO"
    assert dropped.reason == "data invitation without control invitation"
    assert peer_a.data_port_ssrc is None and b.peers == [peer_a]


def test_data_invitation_with_the_ssrc_of_another_peer_is_refused(wire):
    a, b = connect(wire)
    [peer_a] = b.peers
    b.receive(exchange(INVITATION, PY_CONTROL_SSRC), (C_HOST, 5010), wire.now, CONTROL)
    actions = b.receive(exchange(INVITATION, a.ssrc), (C_HOST, 5011), wire.now, DATA)
    assert [command_of(actions[0].data), actions[1].reason] == [
        "NO", "data-port SSRC belongs to another peer"]
    assert b.peers == [peer_a]
    [received] = b.receive(rtp(1, a.ssrc), wire.address(a, DATA), wire.now, DATA)
    assert received.peer is peer_a

def test_other_protocol_version_is_refused(wire):
    b = wire.add("B", B_HOST, 5006)
    invitation = bytes(SessionExchange(INVITATION, 5, 6, "v3", version=3))
    [answer, dropped] = b.receive(invitation, (A_HOST, 5004), 0.0, CONTROL)
    assert command_of(answer.data) == "NO"
    assert dropped.reason == "unsupported protocol version"


def test_responder_gives_up_on_missing_data_invitation(wire):
    b = wire.add("B", B_HOST, 5006)
    invitation = bytes(SessionExchange(INVITATION, 5, 6, "half"))
    wire.run(b, b.receive(invitation, (A_HOST, 5004), 0.0, CONTROL))
    wire.advance(11)
    [failed] = wire.of_type(b, InvitationFailed)
    assert failed.reason == "timeout"
    assert [entry[3] for entry in wire.log] == ["OK", "BY"]


def test_reinvitation_with_new_token_replaces_the_peer(wire):
    a, b = connect(wire)
    wire.run(a, a.close())
    wire.events[b].clear()
    second = wire.add("A again", C_HOST, 5010)
    second.ssrc = a.ssrc
    wire.invite(second, wire.address(b))
    assert len(b.peers) == 1 and b.peers[0].control_addr == (C_HOST, 5010)

    third = wire.add("A third", C_HOST, 5012)
    third.ssrc = a.ssrc
    wire.invite(third, wire.address(b))
    [left] = wire.of_type(b, PeerLeft)
    assert left.reason == "rejoined" and left.peer.control_addr == (C_HOST, 5010)
    assert [peer.control_addr for peer in b.peers] == [(C_HOST, 5012)]


def accepted_by_b(session, now, name, control_ssrc, data_ssrc):
    """Invite B at (B_HOST, 5006) and let it accept on both ports; return the peer and
    the session's actions on the data-port OK."""
    peer, [invitation] = session.invite((B_HOST, 5006), now)
    token = parse_control(invitation.data).token
    session.receive(bytes(SessionExchange(INVITATION_ACCEPTED, token, control_ssrc, name)),
                    (B_HOST, 5006), now, CONTROL)
    return peer, session.receive(
        bytes(SessionExchange(INVITATION_ACCEPTED, token, data_ssrc, name)), (B_HOST, 5007),
        now, DATA)


def test_clock_offset_and_rtt_as_initiator():
    session = AppleMidiSession("A", 1, now=0.0, rng=random.Random(1))
    _, actions = accepted_by_b(session, 10.0, "B", 2, 2)
    ck0 = parse_control(actions[-1].data)
    assert ck0 == Sync(1, 0, ts1=100_000)

    # The responder's clock reads 5_000_000 ticks when ours reads 100_020.
    ck1 = Sync(2, 1, ck0.ts1, 5_000_000)
    [send, completed] = session.receive(bytes(ck1), (B_HOST, 5007), 10.004, DATA)
    assert parse_control(send.data) == Sync(1, 2, 100_000, 5_000_000, 100_040)
    assert send.address == (B_HOST, 5007)
    assert completed.rtt == pytest.approx(0.004)
    assert completed.offset == pytest.approx((5_000_000 - 100_020) / 10_000)
    assert completed.peer.clock_offset == completed.offset


def test_invite_returns_the_peer_its_events_name(wire):
    a = wire.add("A", A_HOST, 5004)
    b = wire.add("B", B_HOST, 5006)
    peer = wire.invite(a, wire.address(b))
    assert [joined.peer for joined in wire.of_type(a, PeerJoined)] == [peer]
    unanswered = wire.invite(a, ("10.9.9.9", 5004))
    wire.advance(INVITATION_ATTEMPTS + 1)
    assert [failed.peer for failed in wire.of_type(a, InvitationFailed)] == [unanswered]


def test_data_port_answering_with_a_second_ssrc_is_the_same_peer():
    # pymidi picks one SSRC per port: control OK with 2, data OK, CK and BY with 3.
    session = AppleMidiSession("A", 1, now=0.0, rng=random.Random(3))
    peer, actions = accepted_by_b(session, 0.0, "p", 2, 3)
    assert [type(action) for action in actions] == [PeerJoined, Send]
    assert session.peers == [peer] and (peer.ssrc, peer.data_port_ssrc) == (2, 3)
    ck0 = parse_control(actions[-1].data)
    actions = session.receive(bytes(Sync(3, 1, ck0.ts1, 500)), (B_HOST, 5007), 0.001, DATA)
    assert isinstance(actions[-1], ClockSynced) and actions[-1].peer is peer
    [feedback] = session.receive(bytes(ReceiverFeedback(3, 9)), (B_HOST, 5006), 0.002, CONTROL)
    assert feedback == Feedback(peer, 9)
    [received] = session.receive(rtp(1, 3), (B_HOST, 5007), 0.003, DATA)
    assert received.peer is peer
    [left] = session.receive(bytes(SessionExchange(END_SESSION, peer.token, 3)), (B_HOST, 5006),
                             0.004, CONTROL)
    assert left == PeerLeft(peer, "bye") and session.peers == []
    [dropped] = session.receive(rtp(2, 3), (B_HOST, 5007), 0.005, DATA)
    assert dropped.reason == "RTP from non-member"


def test_data_port_ssrc_of_another_peer_is_refused(wire):
    a, b = connect(wire)
    peer, [invitation] = a.invite((C_HOST, 5010), wire.now)
    token = parse_control(invitation.data).token
    a.receive(bytes(SessionExchange(INVITATION_ACCEPTED, token, 7, "C")), (C_HOST, 5010),
              wire.now, CONTROL)
    actions = a.receive(bytes(SessionExchange(INVITATION_ACCEPTED, token, b.ssrc, "C")),
                        (C_HOST, 5011), wire.now, DATA)
    assert [action.reason for action in actions] == ["data-port SSRC belongs to another peer"]
    assert not peer.joined


def test_clock_offset_and_rtt_as_responder_from_captured_ck2(wire):
    b = wire.add("B", B_HOST, 5006)
    invitation = bytes(SessionExchange(INVITATION, 5, 0x664B3F39, "pyI"))
    b.receive(invitation, (A_HOST, 5008), 0.0, CONTROL)
    b.receive(invitation, (A_HOST, 5009), 0.0, DATA)
    ck2 = Sync(0x664B3F39, 2, 0x00001053EF9C6204, 0x218E, 0x00001053EF9C6211)
    [completed] = b.receive(bytes(ck2), (A_HOST, 5009), 1.0, DATA)
    assert completed.rtt == pytest.approx(13 / 10_000)
    assert completed.offset == pytest.approx(
        ((0x00001053EF9C6204 + 0x00001053EF9C6211) / 2 - 0x218E) / 10_000)


def test_ck1_that_answers_nothing_is_dropped(wire):
    a, b = connect(wire)
    stray = Sync(a.ssrc, 1, 12345, 678)
    actions = b.receive(bytes(stray), wire.address(a, DATA), wire.now, DATA)
    assert [action.reason for action in actions] == ["CK1 answers no CK0 of ours"]


def test_ck1_with_only_low_32_bits_echoed_is_accepted():
    session = AppleMidiSession("A", 1, now=0.0, clock_base=-1_000_000.0, rng=random.Random(2))
    _, actions = accepted_by_b(session, 0.0, "node", 2, 2)
    ck0 = parse_control(actions[-1].data)
    assert ck0.ts1 > 0xFFFFFFFF
    truncated = Sync(2, 1, ck0.ts1 & 0xFFFFFFFF, 77, 99)
    actions = session.receive(bytes(truncated), (B_HOST, 5007), 0.01, DATA)
    assert isinstance(actions[-1], ClockSynced)
    assert actions[-1].rtt == pytest.approx(0.01)


def test_ck0_from_the_peer_we_invited_is_answered(wire):
    a, b = connect(wire)
    wire.now = 3.0
    ck0 = Sync(b.ssrc, 0, 42)
    [answer] = a.receive(bytes(ck0), wire.address(b, DATA), wire.now, DATA)
    assert answer.via == DATA and answer.address == wire.address(b, DATA)
    assert parse_control(answer.data) == Sync(a.ssrc, 1, 42, a.ticks(3.0))


def test_ck2_is_never_answered(wire):
    a, b = connect(wire)
    for session, other in ((a, b), (b, a)):
        ck2 = Sync(other.ssrc, 2, 1, 2, 3)
        actions = session.receive(bytes(ck2), wire.address(other, DATA), 1.0, DATA)
        assert not [action for action in actions if isinstance(action, Send)]


def test_no_ck_storm_in_a_minute(wire):
    connect(wire)
    wire.advance(60)
    syncs = [entry for entry in wire.log if entry[3].startswith("CK")]
    # A burst of six exchanges, then one every 10 s: 6 + 5 exchanges of 3 packets.
    assert len(syncs) == 33
    assert len(wire.sent("CK0", A_HOST)) == 11
    assert not wire.sent("CK0", B_HOST)


class NodeLikeResponder:
    """Answers like node-rtpmidi: after every CK2 it starts its own CK0."""

    def __init__(self, wire, session):
        self.wire = wire
        self.session = session

    def __call__(self, source, destination, data):
        if destination[0] == B_HOST and command_of(data) == "CK2":
            ck0 = Sync(self.session.ssrc, 0, 7)
            self.wire.run(self.session, [Send(bytes(ck0), source, DATA)])
        return False


def test_node_style_peer_does_not_cause_a_storm(wire):
    a, b = connect(wire)
    wire.lose = NodeLikeResponder(wire, b)
    wire.advance(60)
    node_ck0 = wire.sent("CK0", B_HOST)
    our_answers = wire.sent("CK1", A_HOST)
    assert len(node_ck0) == len(our_answers) == 10
    assert len(wire.sent("CK2", B_HOST)) == 0
    assert len([entry for entry in wire.log if entry[3].startswith("CK")]) < 70


def test_responder_times_out_silent_initiator(wire):
    a, b = connect(wire)
    wire.lose = lambda source, destination, data: source[0] == A_HOST
    wire.advance(SYNC_TIMEOUT + 1)
    [left_b] = wire.of_type(b, PeerLeft)
    assert left_b.reason == "timeout"
    [left_a] = wire.of_type(a, PeerLeft)
    assert left_a.reason == "timeout"
    assert a.peers == [] and b.peers == []
    byes = [(entry[1], entry[2]) for entry in wire.sent("BY", B_HOST)]
    assert byes == [((B_HOST, 5006), (A_HOST, 5004)), ((B_HOST, 5007), (A_HOST, 5005))]


def test_syncing_peers_stay_joined(wire):
    a, b = connect(wire)
    wire.advance(5 * SYNC_TIMEOUT)
    assert not wire.of_type(a, PeerLeft) and not wire.of_type(b, PeerLeft)


@pytest.mark.parametrize("port", [CONTROL, DATA])
def test_bye_on_either_port_ends_the_peer(wire, port):
    a, b = connect(wire)
    bye = bytes(SessionExchange(END_SESSION, 0, a.ssrc))
    actions = b.receive(bye, wire.address(a, port), wire.now, port)
    [left] = actions
    assert isinstance(left, PeerLeft) and left.reason == "bye"
    assert b.peers == []


def test_close_says_bye_on_both_ports(wire):
    a, b = connect(wire)
    wire.run(a, a.close())
    byes = [(entry[1], entry[2]) for entry in wire.sent("BY", A_HOST)]
    assert byes == [((A_HOST, 5004), (B_HOST, 5006)), ((A_HOST, 5005), (B_HOST, 5007))]
    assert [event.reason for event in wire.of_type(a, PeerLeft)] == ["closed"]
    assert [event.reason for event in wire.of_type(b, PeerLeft)] == ["bye"]
    assert b.counters["bye from unknown peer"] == 1
    assert a.receive(rtp(1, b.ssrc), wire.address(b, DATA), 1.0, DATA)[0].reason \
        == "session closed"


def test_bye_from_a_stranger_is_ignored(wire):
    a, b = connect(wire)
    bye = bytes(SessionExchange(END_SESSION, 0, a.ssrc))
    [dropped] = b.receive(bye, ("6.6.6.6", 5004), wire.now, CONTROL)
    assert dropped.reason == "bye from unknown peer"
    assert len(b.peers) == 1


def test_kick(wire):
    a, b = connect(wire)
    [peer_a] = b.peers
    wire.run(b, b.kick(peer_a))
    assert [event.reason for event in wire.of_type(b, PeerLeft)] == ["kicked"]
    assert [event.reason for event in wire.of_type(a, PeerLeft)] == ["bye"]
    assert b.kick(peer_a) == []


def test_receiver_feedback(wire):
    a, b = connect(wire)
    wire.advance(3)
    assert not wire.sent("RS")
    for seq in (0xFFFE, 0xFFFF, 0, 1, 0xFFFD):
        wire.run(a, a.send_rtp(rtp(seq, a.ssrc)))
    wire.advance(0.1)
    [report] = wire.sent("RS")
    assert report[1:3] == ((B_HOST, 5006), (A_HOST, 5004))
    [feedback] = wire.of_type(a, Feedback)
    assert feedback.sequence == 1 and feedback.peer.ssrc == b.ssrc

    wire.run(a, a.send_rtp(rtp(2, a.ssrc)))
    wire.advance(0.5)
    assert len(wire.sent("RS")) == 1
    wire.advance(0.6)
    assert len(wire.sent("RS")) == 2
    wire.advance(5)
    assert len(wire.sent("RS")) == 2


def test_feedback_accepted_on_data_port(wire):
    a, b = connect(wire)
    feedback = bytes(ReceiverFeedback(b.ssrc, 49357))
    [event] = a.receive(feedback, wire.address(b, DATA), wire.now, DATA)
    assert isinstance(event, Feedback) and event.sequence == 49357


def test_rtp_from_non_members_is_dropped(wire):
    a, b = connect(wire)
    [dropped] = b.receive(rtp(1, 0xDEAD), (C_HOST, 5009), 0.0, DATA)
    assert dropped.reason == "RTP from non-member"
    [dropped] = b.receive(rtp(1, a.ssrc), (C_HOST, 5009), 0.0, DATA)
    assert dropped.reason == "RTP from unexpected address"
    [dropped] = b.receive(b"\x00" * 20, wire.address(a, DATA), 0.0, DATA)
    assert dropped.reason == "not RTP"
    assert b.counters == {"RTP from non-member": 1, "RTP from unexpected address": 1,
                          "not RTP": 1}


def test_control_port_garbage_and_rl_are_counted(wire):
    b = wire.add("B", B_HOST, 5006)
    [dropped] = b.receive(rtp(1, 5), (A_HOST, 5004), 0.0, CONTROL)
    assert dropped.reason == "malformed"
    [dropped] = b.receive(bytes(BitrateLimit(5, 1000)), (A_HOST, 5004), 0.0, CONTROL)
    assert dropped.reason == "bitrate limit not supported"


# -- fuzzing ---------------------------------------------------------------

# Names travel as UTF-8, which cannot carry lone surrogates.
names = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=8)
ADDRESSES = [(A_HOST, 5004), (A_HOST, 5005), (B_HOST, 5006), (B_HOST, 5007), (C_HOST, 7)]


@st.composite
def datagrams(draw, ssrcs, tokens):
    ssrc = draw(st.sampled_from(ssrcs) | st.integers(0, 0xFFFFFFFF))
    token = draw(st.sampled_from(tokens) | st.integers(0, 0xFFFFFFFF))
    u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
    packet = draw(st.one_of(
        st.builds(SessionExchange,
                  st.sampled_from([INVITATION, INVITATION_ACCEPTED, INVITATION_REJECTED,
                                   END_SESSION]),
                  st.just(token), st.just(ssrc), st.none() | names,
                  st.sampled_from([2, 2, 3])),
        st.builds(Sync, st.just(ssrc), st.integers(0, 2), u64, u64, u64),
        st.builds(ReceiverFeedback, st.just(ssrc), st.integers(0, 0xFFFF)),
        st.builds(BitrateLimit, st.just(ssrc), st.integers(0, 0xFFFFFFFF)),
    ))
    data = draw(st.one_of(
        st.just(bytes(packet)),
        st.binary(max_size=60),
        st.builds(rtp, st.integers(0, 0xFFFF), st.just(ssrc), st.binary(max_size=10)),
        st.binary(min_size=1, max_size=40).map(lambda noise: bytes(packet)[:len(noise)] + noise),
    ))
    return (draw(st.sampled_from([CONTROL, DATA])), data,
            draw(st.sampled_from(ADDRESSES)), draw(st.floats(0, 5)))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_arbitrary_datagrams_never_raise(data):
    wire = Wire()
    a, b = connect(wire)
    tokens = [peer.token for peer in a.peers + b.peers]
    inputs = data.draw(st.lists(datagrams([a.ssrc, b.ssrc], tokens), max_size=30))
    for port, datagram, addr, pause in inputs:
        session = data.draw(st.sampled_from([a, b]))
        wire.now += pause
        wire.run(session, session.receive(datagram, addr, wire.now, port))
        wire.run(session, session.timer(wire.now))
        if data.draw(st.booleans()):
            wire.run(session, session.send_rtp(rtp(1, session.ssrc)))
    for session in (a, b):
        for event in wire.events[session]:
            assert not isinstance(event, Send)
        wire.run(session, session.close())
        assert session.peers == []
