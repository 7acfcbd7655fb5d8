"""The sans-IO sfront session server, driven by an sfront double (no sockets, no reactor)."""

import random

import pytest
from hypothesis import given, strategies as st

from gateway.actions import Drop, PeerAlive, PeerLeft, Send
from gateway.bus.throttle import JoinThrottle
from gateway.bus.values import SESSION_FULL
from gateway.protocols.sip import sfront
from gateway.protocols.sip.message import Via, parse
from gateway.protocols.sip.server import (
    ADMIT_TIMEOUT, RTCP_TIMEOUT, REPORT_INTERVAL, Admit, DeclaredSession, Played, SessionServer,
)
from tests.sip.sfront_double import DEMO_KEYED_NAME, DEMO_PASSPHRASE, SfrontDouble

NOW = 1_800_000_000.0
SIP = ("127.0.0.1", 5060)
MEDIA_HOST = "127.0.0.5"
DEMO_MEDIA = 6000
NOTE_ON = (0, b"\x90\x3c\x64")


def make_server(**options):
    sessions = [DeclaredSession("demo", DEMO_PASSPHRASE, DEMO_MEDIA),
                DeclaredSession("jam", "another passphrase of twenty", DEMO_MEDIA + 2)]
    options.setdefault("throttle", JoinThrottle(3, 1.0, 300.0))
    return SessionServer(sessions, SIP[0], SIP[1], MEDIA_HOST, now=NOW,
                         rng=random.Random(5), **options)


def sends(actions, kind=Send):
    return [action for action in actions if type(action) is kind]


def reply_of(actions):
    [send] = sends(actions)
    return parse(send.data), send


def handshake(server, client, leg, now=NOW):
    """INVITE, 401, signed INVITE: the actions of the signed one."""
    port = SIP[1] + leg
    source = client.rtp_source if leg == 0 else client.rtcp_source
    [challenge] = server.receive(client.invite(leg, now), source, port, now)
    nonce = client.challenged(challenge.data, leg)
    return server.receive(client.invite(leg, now, nonce), source, port, now)


def join(server, client, now=NOW):
    """Both legs through, the bus admits: return the client record and the admission's actions."""
    [admit] = handshake(server, client, 0, now)
    assert type(admit) is Admit
    rtcp_reply, _ = reply_of(handshake(server, client, 1, now))
    assert rtcp_reply.status == 200
    actions = server.admitted(admit.client, now)
    return admit.client, actions


@pytest.fixture
def server():
    return make_server()


def test_the_keyed_name_of_demo_is_the_one_a_real_client_sent():
    assert DeclaredSession("demo", DEMO_PASSPHRASE, 6000).keyed_name == DEMO_KEYED_NAME


def test_a_declared_session_named_mirror_is_reached_by_sfronts_fixed_mirror_name():
    assert DeclaredSession("mirror", "x" * 20, 6000).keyed_name == "++MiqJvAulMcPwBQ45NfKA=="


def test_the_first_invite_is_challenged_with_a_fresh_nonce_resent_unchanged(server):
    client = SfrontDouble()
    invite = client.invite(0, NOW)
    [first] = server.receive(invite, client.rtp_source, 5060, NOW)
    [again] = server.receive(invite, client.rtp_source, 5060, NOW + 5)
    assert first.data == again.data and first.address == client.rtp_source and first.via == 5060
    response = parse(first.data)
    assert (response.status, response.call_id, response.cseq) == (401, str(client.call_id),
                                                                  (1, None))
    assert first.data.endswith(b"\0") and b"\r" not in first.data
    other = SfrontDouble(port=5006, call_id=11)
    [third] = server.receive(other.invite(0, NOW), other.rtp_source, 5060, NOW)
    assert client.challenged(first.data, 0) != other.challenged(third.data, 0)


def test_a_client_is_admitted_answered_and_introduced_to_the_gateways_member(server):
    client = SfrontDouble(source_host="127.0.0.1")
    record, actions = join(server, client)
    ok, member_invite = sends(actions)
    assert parse(ok.data).status == 200 and ok.address == client.rtp_source
    assert member_invite.via == 5060 and member_invite.address == client.rtp_source
    ssrc, media = client.member_invite(member_invite.data, SIP)
    assert media == (MEDIA_HOST, DEMO_MEDIA)
    assert ssrc == record.member_ssrc and ssrc != client.call_id & 0xFFFFFFFF
    assert record.name == "unknown@vm" and record.session.name == "demo"
    assert record.clock_rate == 44100 and record.payload_type == 96


def test_an_answered_signed_invite_resent_gets_the_same_answer_and_no_second_admission(server):
    client = SfrontDouble()
    [challenge] = server.receive(client.invite(0, NOW), client.rtp_source, 5060, NOW)
    signed = client.invite(0, NOW, client.challenged(challenge.data, 0))
    [admit] = server.receive(signed, client.rtp_source, 5060, NOW)
    [ok, _] = sends(server.admitted(admit.client, NOW))
    assert server.receive(signed, client.rtp_source, 5060, NOW + 5) == [Send(ok.data,
                                                                              client.rtp_source,
                                                                              5060)]


def test_a_resend_while_the_bus_decides_waits_for_its_answer(server):
    client = SfrontDouble()
    [challenge] = server.receive(client.invite(0, NOW), client.rtp_source, 5060, NOW)
    signed = client.invite(0, NOW, client.challenged(challenge.data, 0))
    [admit] = server.receive(signed, client.rtp_source, 5060, NOW)
    assert server.receive(signed, client.rtp_source, 5060, NOW + 5) == []
    assert server.refusals == {} and server.throttle.blocked_for("127.0.0.2", NOW + 5) == 0
    [ok, _] = sends(server.admitted(admit.client, NOW + 6))
    assert parse(ok.data).status == 200


def test_an_unknown_keyed_name_is_refused_with_403_before_any_challenge(server):
    client = SfrontDouble(passphrase="a wrong passphrase, long enough")
    actions = server.receive(client.invite(0, NOW), client.rtp_source, 5060, NOW)
    [drop] = sends(actions, Drop)
    response, _ = reply_of(actions)
    assert drop.reason == "unknown_session" and response.status == 403
    assert server.refusals == {"unknown_session": 1}


def test_guessing_is_throttled_then_answered_503_without_looking(server):
    guesser = SfrontDouble(passphrase="guess number one is wrong")
    statuses = []
    for attempt in range(6):
        actions = server.receive(guesser.invite(0, NOW), guesser.rtp_source, 5060,
                                 NOW + attempt * 0.1)
        statuses.append(reply_of(actions)[0].status)
    assert statuses[:4] == [403, 403, 403, 403] and statuses[4:] == [503, 503]
    # Even the right passphrase from that host waits out the back-off.
    honest = SfrontDouble(host="127.0.0.2", port=5010, call_id=99)
    actions = server.receive(honest.invite(0, NOW + 0.6), honest.rtp_source, 5060, NOW + 0.6)
    assert reply_of(actions)[0].status == 503
    actions = server.receive(honest.invite(0, NOW + 60), honest.rtp_source, 5060, NOW + 60)
    assert reply_of(actions)[0].status == 401


def test_a_signed_invite_with_the_wrong_key_is_refused_and_never_admitted(server):
    client = SfrontDouble()
    [challenge] = server.receive(client.invite(0, NOW), client.rtp_source, 5060, NOW)
    nonce = client.challenged(challenge.data, 0)
    forged = client.invite(0, NOW, nonce, key=sfront.session_key("not the passphrase at all"))
    actions = server.receive(forged, client.rtp_source, 5060, NOW)
    assert [drop.reason for drop in sends(actions, Drop)] == ["bad_digest"]
    assert reply_of(actions)[0].status == 403 and not sends(actions, Admit)


def test_a_nonce_is_good_for_one_signed_invite_only(server):
    client = SfrontDouble()
    [challenge] = server.receive(client.invite(0, NOW), client.rtp_source, 5060, NOW)
    nonce = client.challenged(challenge.data, 0)
    [admit] = server.receive(client.invite(0, NOW, nonce), client.rtp_source, 5060, NOW)
    server.admitted(admit.client, NOW)
    replayed = client.invite(0, NOW + 1, nonce)
    actions = server.receive(replayed, client.rtp_source, 5060, NOW + 1)
    assert [drop.reason for drop in sends(actions, Drop)] == ["stale_nonce"]


def test_a_nonce_issued_to_another_socket_does_not_count(server):
    client = SfrontDouble()
    [challenge] = server.receive(client.invite(0, NOW), client.rtp_source, 5060, NOW)
    nonce = client.challenged(challenge.data, 0)
    thief = SfrontDouble(host="127.0.0.9", port=7000)
    actions = server.receive(thief.invite(0, NOW, nonce), thief.rtp_source, 5060, NOW)
    assert [drop.reason for drop in sends(actions, Drop)] == ["stale_nonce"]


@pytest.mark.parametrize("age", [-5401, 21601])
def test_a_stale_or_future_t_is_refused(server, age):
    client = SfrontDouble()
    [challenge] = server.receive(client.invite(0, NOW), client.rtp_source, 5060, NOW)
    nonce = client.challenged(challenge.data, 0)
    actions = server.receive(client.invite(0, NOW - age, nonce), client.rtp_source, 5060, NOW)
    assert [drop.reason for drop in sends(actions, Drop)] == ["stale_time"]


def test_a_refused_client_hears_503_for_a_full_session_and_is_forgotten(server):
    client = SfrontDouble()
    [admit] = handshake(server, client, 0)
    response, send = reply_of(server.refused(admit.client, SESSION_FULL, NOW))
    assert response.status == 503 and send.address == client.rtp_source
    assert server.clients == {} and server.refusals == {SESSION_FULL: 1}
    assert server.admitted(admit.client, NOW) == []


def test_a_client_the_bus_never_answers_hears_503_and_its_member_is_let_go(server):
    client = SfrontDouble()
    [admit] = handshake(server, client, 0)
    assert server.timer(NOW + ADMIT_TIMEOUT) == []
    actions = server.timer(NOW + ADMIT_TIMEOUT + 0.1)
    response, _ = reply_of(actions)
    assert response.status == 503 and "did not answer" in response.reason
    assert sends(actions, PeerLeft) == [PeerLeft(admit.client, "join_timeout")]
    assert server.clients == {} and server.refusals == {"join_timeout": 1}
    assert server.admitted(admit.client, NOW + 20) == []     # a late answer is too late


def test_the_other_socket_of_a_refused_client_gets_the_same_answer_and_no_throttle_strike(server):
    client = SfrontDouble()
    [admit] = handshake(server, client, 0)
    server.refused(admit.client, SESSION_FULL, NOW)
    for _ in range(5):
        actions = server.receive(client.invite(1, NOW), client.rtcp_source, 5061, NOW)
        assert reply_of(actions)[0].status == 503 and not sends(actions, Drop)
    assert server.throttle.blocked_for(client.rtp_source[0], NOW) == 0
    server.timer(NOW + 61)
    assert server.refused_calls == {}


def test_a_flood_of_invites_from_many_sockets_keeps_a_bounded_number_of_nonces(server):
    from gateway.protocols.sip.server import MAX_PENDING_LEGS
    first = SfrontDouble(port=2000, call_id=1)
    [challenge] = server.receive(first.invite(0, NOW), first.rtp_source, 5060, NOW)
    nonce = first.challenged(challenge.data, 0)
    for number in range(MAX_PENDING_LEGS + 10):
        flooder = SfrontDouble(host="127.0.0.3", port=10000 + number, call_id=10 + number)
        server.receive(flooder.invite(0, NOW), flooder.rtp_source, 5060, NOW)
    assert len(server.legs) == MAX_PENDING_LEGS
    actions = server.receive(first.invite(0, NOW, nonce), first.rtp_source, 5060, NOW)
    assert [drop.reason for drop in sends(actions, Drop)] == ["stale_nonce"]   # evicted first


def test_a_client_whose_rtp_socket_never_completes_is_forgotten(server):
    client = SfrontDouble()
    handshake(server, client, 1)
    assert len(server.clients) == 1
    server.timer(NOW + 61)
    assert server.clients == {} and server.legs == {}


def test_the_gateway_full_refuses_with_503():
    server = make_server(max_clients=1)
    join(server, SfrontDouble())
    other = SfrontDouble(port=5006, call_id=4242)
    actions = handshake(server, other, 0)
    assert reply_of(actions)[0].status == 503
    assert [drop.reason for drop in sends(actions, Drop)] == ["gateway_full"]


# --- media ------------------------------------------------------------------------

def joined(server, **options):
    client = SfrontDouble(**options)
    record, actions = join(server, client)
    client.member_invite(sends(actions)[1].data, SIP)
    return client, record


def test_signed_rtp_from_the_client_is_played(server):
    client, record = joined(server)
    [played] = server.receive(client.rtp([NOTE_ON]), client.rtp_source, DEMO_MEDIA, NOW + 1)
    assert type(played) is Played and played.client is record
    assert [event.data for event in played.events] == [b"\x90\x3c\x64"]
    assert server.packets_verified == 1 and record.packets_verified == 1


def test_rtp_with_a_wrong_signature_is_dropped_and_counted_never_played(server):
    client, record = joined(server)
    forged = bytearray(client.rtp([NOTE_ON]))
    forged[-1] ^= 1
    [drop] = server.receive(bytes(forged), client.rtp_source, DEMO_MEDIA, NOW + 1)
    assert drop.reason == "bad_signature" and record.packets_refused == 1
    other_key = client.rtp([NOTE_ON], key=sfront.session_key("x" * 25))
    assert [a.reason for a in server.receive(other_key, client.rtp_source, DEMO_MEDIA, NOW)] == [
        "bad_signature"]


def test_rtp_from_an_unknown_address_is_dropped(server):
    client, _ = joined(server)
    actions = server.receive(client.rtp([NOTE_ON]), ("127.0.0.9", 5004), DEMO_MEDIA, NOW + 1)
    assert [drop.reason for drop in actions] == ["unknown_source"]


def test_rtp_on_another_sessions_media_port_is_dropped(server):
    client, _ = joined(server)
    actions = server.receive(client.rtp([NOTE_ON]), client.rtp_source, DEMO_MEDIA + 2, NOW + 1)
    assert [drop.reason for drop in actions] == ["unknown_source"]


def test_a_replayed_rtp_packet_is_dropped_not_played_twice(server):
    client, _ = joined(server)
    packet = client.rtp([NOTE_ON])
    assert type(server.receive(packet, client.rtp_source, DEMO_MEDIA, NOW)[0]) is Played
    actions = server.receive(packet, client.rtp_source, DEMO_MEDIA, NOW + 10)
    assert [drop.reason for drop in actions] == ["replayed_or_late"]


def test_media_behind_a_nat_that_changed_the_port_is_learnt_by_its_signature(server):
    client, record = joined(server)
    moved = ("127.0.0.2", 40000)
    [played] = server.receive(client.rtp([NOTE_ON]), moved, DEMO_MEDIA, NOW)
    assert played.client is record and record.rtp_to == moved
    forged = bytearray(client.rtp([NOTE_ON]))
    forged[-2] ^= 0x10
    assert [a.reason for a in server.receive(bytes(forged), ("127.0.0.2", 40002), DEMO_MEDIA,
                                             NOW)] == ["unknown_source"]


def test_outgoing_rtp_is_signed_marked_and_on_the_clients_payload_type(server):
    from gateway.protocols.rtpmidi.payload import RtpMidiPacket
    from gateway.protocols.rtpmidi.stream import prepare
    from gateway.midi import MidiEvent
    client, record = joined(server)
    [prepared], _ = prepare([MidiEvent(b"\x90\x40\x50", NOW)], 44100)
    data = record.rtp_packet(prepared, server.ticks(NOW, 44100), NOW)
    packet = sfront.verified(client.key, data)
    assert packet is not None
    rtp = RtpMidiPacket.parse(packet)
    assert (rtp.marker, rtp.payload_type, rtp.ssrc) == (True, 96, record.member_ssrc)
    assert [message for _, message in rtp.commands] == [b"\x90\x40\x50"]


def test_reports_go_out_every_interval_with_the_highest_sequence_received(server):
    client, record = joined(server)
    server.receive(client.rtp([NOTE_ON]), client.rtp_source, DEMO_MEDIA, NOW)
    actions = server.timer(NOW + REPORT_INTERVAL)
    [report] = [send for send in sends(actions) if send.via == DEMO_MEDIA + 1]
    packet = sfront.verified(client.key, report.data)
    assert report.address == (client.rtcp_source[0], client.rtcp_source[1])
    parsed = sfront.read_rtcp(packet)
    assert parsed.ssrc == record.member_ssrc and parsed.highest == client.sequence
    assert not [send for send in sends(server.timer(NOW + REPORT_INTERVAL + 1))
                if send.via == DEMO_MEDIA + 1]


def test_client_reports_keep_it_alive_and_its_silence_ends_it_with_note_offs_owed(server):
    client, record = joined(server)
    actions = server.receive(client.rtcp(), client.rtcp_source, DEMO_MEDIA + 1, NOW + 20)
    assert actions == [PeerAlive(record)] and record.accepted
    assert not sends(server.timer(NOW + 20 + RTCP_TIMEOUT - 1), PeerLeft)
    actions = server.timer(NOW + 20 + RTCP_TIMEOUT)
    assert sends(actions, PeerLeft) == [PeerLeft(record, "timeout")]
    [bye] = [send for send in sends(actions) if send.via == DEMO_MEDIA + 1]
    assert sfront.read_rtcp(sfront.verified(client.key, bye.data)).bye
    assert server.clients == {}


def test_a_client_report_trims_our_journal_and_a_report_going_backwards_is_a_replay(server):
    client, record = joined(server)
    server.receive(client.rtcp(highest=500), client.rtcp_source, DEMO_MEDIA + 1, NOW)
    actions = server.receive(client.rtcp(highest=400), client.rtcp_source, DEMO_MEDIA + 1, NOW)
    assert [drop.reason for drop in actions] == ["replayed_or_late"]


def test_rtcp_bye_and_sip_bye_end_the_client(server):
    client, record = joined(server)
    assert server.receive(client.rtcp(bye=True), client.rtcp_source, DEMO_MEDIA + 1,
                          NOW) == [PeerLeft(record, "bye")]
    other, other_record = joined(server, port=5006, call_id=777)
    actions = server.receive(other.request("BYE", 0), other.rtp_source, 5060, NOW)
    assert reply_of(actions)[0].status == 200 and sends(actions, PeerLeft) == [
        PeerLeft(other_record, "bye")]
    # The BYE from the other socket finds nobody, and is still answered.
    actions = server.receive(other.request("BYE", 1), other.rtcp_source, 5061, NOW)
    assert reply_of(actions)[0].status == 200 and not sends(actions, PeerLeft)


def test_a_bye_from_a_stranger_ends_nobody(server):
    client, _ = joined(server)
    actions = server.receive(client.request("BYE", 0), ("127.0.0.66", 5004), 5060, NOW)
    assert not sends(actions, PeerLeft) and len(server.clients) == 1


def test_info_is_answered_and_keeps_the_member_alive(server):
    client, record = joined(server)
    actions = server.receive(client.request("INFO", 1), client.rtcp_source, 5061, NOW)
    assert reply_of([a for a in actions if type(a) is Send])[0].status == 200
    assert PeerAlive(record) in actions


def test_our_member_invite_is_resent_until_the_clients_rtcp_shows_it_accepted(server):
    client, record = joined(server)
    resent = [send for send in sends(server.timer(NOW + 5)) if send.via == 5060]
    assert len(resent) == 1 and client.member_invite(resent[0].data, SIP)
    server.receive(client.rtcp(), client.rtcp_source, DEMO_MEDIA + 1, NOW + 6)
    assert not [send for send in sends(server.timer(NOW + 11)) if send.via == 5060]


def test_a_client_restarted_on_the_same_socket_replaces_the_old_one(server):
    first, first_record = joined(server)
    again = SfrontDouble(call_id=first.call_id + 1000)
    actions = handshake(server, again, 0)
    assert PeerLeft(first_record, "restarted") in actions
    assert [type(action) for action in actions if type(action) is Admit] == [Admit]


def test_kick_and_shutdown_say_rtcp_bye_from_our_member(server):
    client, record = joined(server)
    [bye] = server.remove(record, "kicked", NOW)
    report = sfront.read_rtcp(sfront.verified(client.key, bye.data))
    assert report.bye and report.ssrc == record.member_ssrc
    other, _ = joined(server, port=5006, call_id=5)
    [bye] = server.close(NOW)
    assert bye.address == other.rtcp_source


# --- NAT ----------------------------------------------------------------------------

def test_a_reply_carries_received_and_rport_when_the_source_is_not_the_via(server):
    client = SfrontDouble(host="10.0.0.2", source_host="198.18.0.7")
    client.rtp_source = ("198.18.0.7", 40123)
    [challenge] = server.receive(client.invite(0, NOW), client.rtp_source, 5060, NOW)
    via = Via.parse(parse(challenge.data).get("via"))
    assert (via.param("received"), via.param("rport")) == ("198.18.0.7", "40123")


def test_one_machines_loopback_addresses_are_not_a_nat(server):
    client = SfrontDouble(host="127.0.0.2", source_host="127.0.0.1")
    [challenge] = server.receive(client.invite(0, NOW), client.rtp_source, 5060, NOW)
    assert "received" not in parse(challenge.data).get("via")


def test_a_client_behind_nat_is_marked_and_media_goes_to_its_observed_source(server):
    client = SfrontDouble(host="10.0.0.2", source_host="198.18.0.7")
    record, actions = join(server, client)
    assert sends(actions)[1].address == client.rtp_source and record.rtp_to == client.rtp_source


# --- garbage ---------------------------------------------------------------------------

@given(data=st.binary(max_size=600), port=st.sampled_from([5060, 5061, DEMO_MEDIA,
                                                            DEMO_MEDIA + 1]))
def test_random_datagrams_on_every_port_never_raise(data, port):
    server = make_server()
    client, _ = joined(server)
    for actions in (server.receive(data, ("127.0.0.3", 9), port, NOW),
                    server.receive(data, client.rtp_source, port, NOW),
                    server.receive(data, client.rtcp_source, port, NOW)):
        assert all(type(action) in (Drop, Send) for action in actions)


@given(cut=st.integers(min_value=0, max_value=400), flip=st.integers(min_value=0, max_value=399))
def test_truncated_or_bit_flipped_invites_never_raise(cut, flip):
    server = make_server()
    client = SfrontDouble()
    invite = bytearray(client.invite(0, NOW))
    invite[flip % len(invite)] ^= 0x20
    server.receive(bytes(invite[:cut]), client.rtp_source, 5060, NOW)
    server.receive(bytes(invite), client.rtp_source, 5060, NOW)
