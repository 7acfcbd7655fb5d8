"""The UAS core with the requests real clients send (shared/protocols/sip-clients.md)."""

import pytest

from gateway.actions import Drop, Send
from gateway.protocols.sip.message import Via, parse
from gateway.protocols.sip.transactions import T1, header_param
from gateway.protocols.sip.uas import (
    ALLOW, Authenticate, CallConfirmed, CallEnded, CallInfo, CallOffered, Limits,
)
from tests.sip.uas_agents import (
    ANSWER, GATEWAY, MIDI_OFFER, NOW, PCMU_OFFER, Agent, Baresip, Pjsua2, PyVoip, Sipsak,
    make_core, only, responses, sends, verify,
)

INVITE_URI = f"sip:demo@{GATEWAY[0]}"


def send(core, agent, data, now=NOW):
    return core.receive(data, agent.transport, agent.address, now)


def final(actions):
    """The one final response among ``actions`` (a 100 may come before it)."""
    [response] = [r for r in responses(actions) if r.status >= 200]
    return response


def register(core, agent, now=NOW, headers=(("Expires", "300"),), uri=f"sip:{GATEWAY[0]}"):
    challenge = final(send(core, agent, agent.request("REGISTER", uri, headers), now))
    assert challenge.status == 401
    authorization = agent.authorization(challenge, "REGISTER", uri)
    return verify(core, send(core, agent, agent.request("REGISTER", uri, list(headers)
                                                        + [authorization]), now), now)


def invite(core, agent, offer=PCMU_OFFER, now=NOW, uri=INVITE_URI, password=None):
    """INVITE, 401, ACK, INVITE with credentials: the actions after the bus's verdict."""
    first = send(core, agent, agent.request("INVITE", uri, body=offer), now)
    assert [r.status for r in responses(first)] == [401]      # no 100 before an answer
    challenge = final(first)
    assert not send(core, agent, agent.ack(uri, agent.cseq, header_param(
        challenge.get("to"), "tag"), branch=agent.last_branch), now)
    authorization = agent.authorization(challenge, "INVITE", uri, password=password)
    second = send(core, agent, agent.request("INVITE", uri, [authorization], body=offer), now)
    assert responses(second) == []      # waiting for the bus; a 100 after 200 ms
    return verify(core, second, now)


def established(core, agent, offer=PCMU_OFFER, now=NOW):
    """A call answered and ACKed: ``(call, our 200)``."""
    offered = only(invite(core, agent, offer, now), CallOffered)
    assert offered.offer == offer
    ok = final(core.answer(offered.call, ANSWER, now))
    confirmed = send(core, agent, agent.ack(INVITE_URI, agent.cseq, header_param(
        ok.get("to"), "tag")), now)
    assert only(confirmed, CallConfirmed).call is offered.call
    return offered.call, ok


# OPTIONS and responses in general ------------------------------------------------------------

def test_sipsak_options_gets_200_with_capabilities_and_its_via_back_with_received_and_rport():
    core = make_core()
    sipsak = Sipsak(address=("127.0.1.1", 34567))
    [reply] = send(core, sipsak, sipsak.request("OPTIONS", "sip:jam@127.0.0.1",
                                                [("Accept", "text/plain")]))
    assert reply.address == ("127.0.1.1", 34567) and reply.via == "UDP"
    response = parse(reply.data)
    assert response.status == 200
    assert response.get("allow") == ALLOW
    assert response.get("accept") == "application/sdp"
    assert response.get("supported") == ""
    via = Via.parse(response.get("via"))
    assert via.params[0][0] == "branch"               # pyVoIP reads the first parameter
    assert via.param("rport") == "34567" and via.param("received") == "127.0.1.1"
    assert via.has("alias")
    assert header_param(response.get("to"), "tag")
    assert response.call_id == sipsak.call_id and response.cseq == (1, "OPTIONS")
    assert response.get("content-length") == "0"


def test_received_without_rport_only_when_the_address_differs():
    core = make_core()
    agent = Agent(address=("10.0.0.9", 5070))
    agent.rport = False
    data = agent.request("OPTIONS", "sip:demo@127.0.0.1").replace(
        b"10.0.0.9:5070;branch", b"192.168.1.4:5070;branch")
    via = Via.parse(final(send(core, agent, data)).get("via"))
    assert via.param("received") == "10.0.0.9" and not via.has("rport")
    via = Via.parse(final(send(core, agent, agent.request("OPTIONS", "sip:demo@h"))).get("via"))
    assert not via.has("received") and not via.has("rport")


def test_unknown_and_refused_methods_and_requests_outside_a_dialog():
    core = make_core()
    agent = Agent()
    for method, status in [("FOO", 501), ("SUBSCRIBE", 405), ("MESSAGE", 405), ("BYE", 481),
                           ("INFO", 481), ("UPDATE", 481), ("PRACK", 481)]:
        response = final(send(core, agent, agent.request(method, "sip:demo@127.0.0.1")))
        assert response.status == status, method
        if status in (405, 501):
            assert response.get("allow")


def test_bad_requests_are_answered_400_and_garbage_is_dropped():
    core = make_core()
    agent = Agent()
    data = agent.request("OPTIONS", "sip:demo@h").replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    assert final(send(core, agent, data)).status == 400
    data = agent.request("OPTIONS", "sip:demo@h").replace(b"Call-ID", b"X-Call-ID")
    assert final(send(core, agent, data)).status == 400
    [drop] = send(core, agent, b"hello")
    assert type(drop) is Drop and drop.reason == "malformed"
    [drop] = send(core, agent, agent.request("OPTIONS", "sip:h").replace(b"Via: ", b"X-Via: "))
    assert drop.reason == "malformed"
    assert send(core, agent, b"\r\n\r\n") == [] and send(core, agent, b"\r\n") == []
    assert final(send(core, agent, agent.request("OPTIONS", "tel:+123"))).status == 416
    response = final(send(core, agent, agent.request("OPTIONS", "sip:h", [("Require", "foo")])))
    assert response.status == 420 and response.get("unsupported") == "foo"


def test_a_retransmitted_request_gets_the_same_response_bytes():
    core = make_core()
    agent = Agent()
    data = agent.request("OPTIONS", "sip:demo@h")
    [first] = send(core, agent, data)
    [again] = send(core, agent, data, NOW + 0.5)
    assert again.data == first.data
    assert core.counts["retransmissions"] == 1


# REGISTER ---------------------------------------------------------------------------------------

def test_sipsak_registers_with_digest_qop_auth():
    core = make_core()
    sipsak = Sipsak(user="alice")
    actions = register(core, sipsak)
    response = final(actions)
    assert response.status == 200
    assert response.values("contact") == ["<sip:alice@127.0.0.1:5070>;expires=300"]
    assert core.registrar.contacts(("demo", "alice"), NOW)[0].source == sipsak.address


def test_the_challenge_offers_md5_then_sha256_and_never_407():
    core = make_core()
    agent = Agent()
    challenge = final(send(core, agent, agent.request("REGISTER", "sip:127.0.0.1")))
    assert challenge.status == 401 and challenge.get("proxy-authenticate") is None
    md5, sha256 = challenge.values("www-authenticate")
    assert "algorithm=MD5," in md5 and "algorithm=SHA-256," in sha256
    assert 'realm="jam"' in md5 and 'qop="auth"' in md5


def test_pyvoip_registers_without_qop_with_its_own_digest_uri():
    core = make_core()
    pyvoip = PyVoip(user="demo", session="demo")
    assert final(register(core, pyvoip, headers=(("Expires", "120"),))).status == 200
    assert core.registrar.contacts(("demo", "demo"), NOW)


def test_pjsua2_registers_with_sha256():
    core = make_core()
    assert final(register(core, Pjsua2(user="bob"))).status == 200


def test_a_wrong_passphrase_is_403_after_the_challenge_and_unknown_sessions_404():
    core = make_core()
    assert final(register(core, Agent(password="wrong guess"))).status == 403
    assert core.counts["digest_failures"] == 1
    nobody = Agent(session="demo")
    nobody.session = "nosuch"
    assert final(register(core, nobody)).status == 404
    agent = Agent()
    data = agent.request("REGISTER", "sip:127.0.0.1").replace(
        b"To: <sip:demo@127.0.0.1>", b"To: <sip:127.0.0.1>")
    assert final(send(core, agent, data)).status == 404


@pytest.mark.parametrize("reason, status, retry_after", [
    ("session_full", 486, None), ("gateway_full", 503, "30"), ("throttled", 503, "17"),
    ("address_not_allowed", 403, None), ("unknown_session", 404, None),
    ("name_taken", 403, None),
])
def test_bus_refusals_map_to_sip_statuses(reason, status, retry_after):
    core = make_core()
    agent = Agent()
    uri = "sip:127.0.0.1"
    challenge = final(send(core, agent, agent.request("REGISTER", uri)))
    actions = send(core, agent, agent.request("REGISTER", uri, [agent.authorization(
        challenge, "REGISTER", uri)]))
    ticket = only(actions, Authenticate).ticket
    response = final(core.refused(ticket, reason, NOW, retry_after=17 if reason == "throttled"
                                  else None))
    assert response.status == status and response.get("retry-after") == retry_after
    if reason == "name_taken":
        assert response.reason == "Forbidden (name already in the session)"
    assert core.refused(ticket, reason, NOW) == [] and core.authenticated(ticket, NOW) == []


def test_stale_nonces_and_replayed_nonce_counts_are_challenged_again_with_stale_true():
    core = make_core()
    agent = Sipsak()
    uri = "sip:127.0.0.1"
    challenge = final(send(core, agent, agent.request("REGISTER", uri)))
    late = NOW + 301
    response = final(send(core, agent, agent.request("REGISTER", uri, [agent.authorization(
        challenge, "REGISTER", uri)]), late))
    assert response.status == 401 and "stale=true" in response.get("www-authenticate")
    # A fresh nonce: nc 1 verifies, then the same nc again is a replay.
    agent.nc = 0
    authorization = agent.authorization(challenge, "REGISTER", uri)
    assert final(verify(core, send(core, agent, agent.request("REGISTER", uri, [
        authorization])))).status == 200
    actions = send(core, agent, agent.request("REGISTER", uri, [authorization]))
    assert any(type(a) is Drop and a.reason == "nonce_count_replayed" for a in actions)
    assert "stale=true" in final(actions).get("www-authenticate")
    forged = authorization[1].replace('nonce="', 'nonce="1')
    actions = send(core, agent, agent.request("REGISTER", uri, [("Authorization", forged)]))
    assert final(actions).status == 401 and "stale" not in final(actions).get("www-authenticate")


def test_registrar_expires_min_expires_unregister_and_only_own_bindings():
    core = make_core()
    alice, bob = Sipsak(user="alice"), Sipsak(user="bob", address=("127.0.0.1", 5080))
    assert final(register(core, alice, headers=(("Expires", "30"),))).status == 423
    response = final(register(core, alice, headers=(("Expires", "30"),)))
    assert response.status == 423 and response.get("min-expires") == "60"
    response = final(register(core, alice, headers=(("Expires", "99999"),)))
    assert response.values("contact") == ["<sip:alice@127.0.0.1:5070>;expires=3600"]
    response = final(register(core, bob, headers=()))
    assert response.values("contact") == ["<sip:bob@127.0.0.1:5080>;expires=3600"]
    assert core.registrar.count == 2
    response = final(register(core, alice, headers=(("Expires", "0"), ("Contact", "*"))))
    assert response.status == 200 and response.values("contact") == []
    assert core.registrar.count == 1
    core.timer(NOW + 3601)
    assert core.registrar.count == 0


def test_a_retransmitted_register_is_absorbed_not_verified_twice():
    core = make_core()
    agent = Sipsak()
    uri = "sip:127.0.0.1"
    challenge = final(send(core, agent, agent.request("REGISTER", uri)))
    data = agent.request("REGISTER", uri, [agent.authorization(challenge, "REGISTER", uri)])
    actions = send(core, agent, data)
    assert send(core, agent, data, NOW + 0.5) == []             # still being verified
    first = verify(core, actions)
    assert send(core, agent, data, NOW + 1)[0].data == first[0].data


# Calls ----------------------------------------------------------------------------------------

def test_baresip_calls_and_hangs_up():
    core = make_core()
    baresip = Baresip()
    call, ok = established(core, baresip)
    assert ok.status == 200 and ok.body == ANSWER
    assert ok.get("content-type") == "application/sdp"
    assert ok.get("contact") == "<sip:demo@127.0.0.1:5060>"
    assert call.session == "demo" and call.player == "alice" and call.state == "confirmed"
    assert core.counts["calls_udp"] == 1
    bye = baresip.request("BYE", "sip:demo@127.0.0.1:5060", to_tag=call.local_tag)
    actions = send(core, baresip, bye)
    assert final(actions).status == 200
    assert only(actions, CallEnded).reason == "bye" and not core.calls


def test_a_wrong_passphrase_on_invite_is_403():
    core = make_core()
    actions = invite(core, Baresip(), password="not the passphrase")
    assert final(actions).status == 403 and not core.calls


def test_pyvoip_acks_with_a_to_tag_of_its_own_and_byes_with_cseq_1():
    core = make_core()
    pyvoip = PyVoip(user="demo", session="demo")
    offered = only(invite(core, pyvoip), CallOffered)
    final(core.answer(offered.call, ANSWER, NOW))
    actions = send(core, pyvoip, pyvoip.ack(INVITE_URI, pyvoip.cseq, "3a2f6e6b"), NOW + 0.75)
    assert only(actions, CallConfirmed).call is offered.call
    assert core.counts["ack_to_tag_mismatch"] == 1
    assert core.timer(NOW + 5) == []                            # no 2xx resent after the ACK
    bye = pyvoip.request("BYE", "sip:demo@127.0.0.1:5060", cseq=1, to_tag="3a2f6e6b")
    actions = send(core, pyvoip, bye, NOW + 6)
    assert final(actions).status == 200 and only(actions, CallEnded).reason == "bye"


def test_pjsua2_byes_before_its_ack():
    core = make_core()
    pjsua = Pjsua2()
    offered = only(invite(core, pjsua), CallOffered)
    ok = final(core.answer(offered.call, ANSWER, NOW))
    tag = header_param(ok.get("to"), "tag")
    ack = pjsua.ack(INVITE_URI, pjsua.cseq, tag)
    actions = send(core, pjsua, pjsua.request("BYE", "sip:demo@127.0.0.1:5060", to_tag=tag),
                   NOW + 0.1)
    assert final(actions).status == 200 and only(actions, CallEnded).call is offered.call
    assert send(core, pjsua, ack, NOW + 0.101) == []            # late ACK: no drop, no action
    assert sends(core.timer(NOW + 10)) == []                    # the 200 is no longer resent


def test_the_200_is_resent_until_the_ack_and_a_call_never_acked_ends_with_our_bye():
    core = make_core()
    agent = Baresip()
    offered = only(invite(core, agent), CallOffered)
    ok = core.answer(offered.call, ANSWER, NOW)
    resent = [action for step in range(1, 80) for action in core.timer(NOW + step * 0.5)]
    copies = [a for a in resent if type(a) is Send and a.data == ok[0].data]
    assert len(copies) >= 8
    byes = [a.data for a in resent if type(a) is Send and a.data.startswith(b"BYE")]
    assert len(set(byes)) == 1 and len(byes) > 1               # one BYE, resent on Timer E
    bye = parse(byes[0])
    assert bye.uri == "sip:alice@127.0.0.1:5070"               # the caller's Contact
    assert header_param(bye.get("from"), "tag") == offered.call.local_tag
    assert header_param(bye.get("to"), "tag") == agent.tag
    assert only(resent, CallEnded).reason == "no_ack"


def test_cancel_before_the_answer_is_200_and_487():
    core = make_core()
    agent = Baresip()
    offered = only(invite(core, agent), CallOffered)
    cancel = agent.request("CANCEL", INVITE_URI, cseq=agent.cseq, branch=agent.last_branch)
    actions = send(core, agent, cancel)
    statuses = sorted(r.status for r in responses(actions))
    assert statuses == [200, 487]
    assert only(actions, CallEnded).reason == "cancelled"
    assert core.answer(offered.call, ANSWER, NOW) == []
    unknown = agent.request("CANCEL", INVITE_URI, branch="z9hG4bKnothing")
    assert final(send(core, agent, unknown)).status == 481


def test_cancel_while_the_credentials_are_checked():
    core = make_core()
    agent = Baresip()
    first = send(core, agent, agent.request("INVITE", INVITE_URI, body=PCMU_OFFER))
    authorization = agent.authorization(final(first), "INVITE", INVITE_URI)
    actions = send(core, agent, agent.request("INVITE", INVITE_URI, [authorization],
                                              body=PCMU_OFFER))
    ticket = only(actions, Authenticate).ticket
    cancel = agent.request("CANCEL", INVITE_URI, cseq=agent.cseq, branch=agent.last_branch)
    assert sorted(r.status for r in responses(send(core, agent, cancel))) == [200, 487]
    assert core.authenticated(ticket, NOW) == [] and not core.calls


def test_reinvite_with_the_same_media_gets_the_same_answer_and_other_media_488():
    core = make_core()
    agent = Baresip()
    call, _ = established(core, agent)
    refresh = PCMU_OFFER.replace(b"o=- 1234 1234", b"o=- 1234 1235")
    actions = send(core, agent, agent.request("INVITE", INVITE_URI, body=refresh,
                                              to_tag=call.local_tag))
    ok = final(actions)
    assert ok.status == 200 and ok.body == ANSWER and ok.cseq[1] == "INVITE"
    assert not send(core, agent, agent.ack(INVITE_URI, agent.cseq, call.local_tag))
    hold = PCMU_OFFER.replace(b"a=sendrecv", b"a=sendonly")
    response = final(send(core, agent, agent.request("INVITE", INVITE_URI, body=hold,
                                                     to_tag=call.local_tag)))
    assert response.status == 488
    assert final(send(core, agent, agent.request("UPDATE", INVITE_URI, body=refresh,
                                                 to_tag=call.local_tag))).body == ANSWER
    assert final(send(core, agent, agent.request("UPDATE", INVITE_URI,
                                                 to_tag=call.local_tag))).status == 200
    assert call.state == "confirmed"


def test_info_and_message_in_a_dialog_reach_the_adapter():
    core = make_core()
    agent = Baresip()
    call, _ = established(core, agent)
    data = agent.request("INFO", INVITE_URI, [("Content-Type", "application/dtmf-relay")],
                         to_tag=call.local_tag)
    data = data.replace(b"Content-Length: 0\r\n\r\n",
                        b"Content-Length: 24\r\n\r\nSignal=5\r\nDuration=160\r\n")
    actions = send(core, agent, data)
    assert final(actions).status == 200
    info = only(actions, CallInfo)
    assert info.method == "INFO" and info.body == b"Signal=5\r\nDuration=160\r\n"
    assert info.content_type == "application/dtmf-relay"


def test_the_gateway_hangs_up_with_a_bye_resent_until_answered():
    core = make_core()
    agent = Baresip()
    call, _ = established(core, agent)
    actions = core.hang_up(call, NOW + 1, "kicked")
    assert only(actions, CallEnded).reason == "kicked"
    [bye_send] = sends(actions)
    assert bye_send.address == agent.address and bye_send.via == "UDP"
    bye = parse(bye_send.data)
    assert bye.method == "BYE" and bye.cseq[1] == "BYE" and bye.get("max-forwards") == "70"
    assert Via.parse(bye.get("via")).param("branch").startswith("z9hG4bK")
    again = sends(core.timer(NOW + 1 + T1))
    assert [a.data for a in again] == [bye_send.data]
    ok = (f"SIP/2.0 200 OK\r\nVia: {bye.get('via')}\r\nFrom: {bye.get('from')}\r\n"
          f"To: {bye.get('to')}\r\nCall-ID: {bye.call_id}\r\nCSeq: {bye.get('cseq')}\r\n"
          f"Content-Length: 0\r\n\r\n").encode()
    assert send(core, agent, ok, NOW + 1.6) == []
    assert sends(core.timer(NOW + 10)) == []
    assert core.counts["bye_answered_2xx"] == 1
    [drop] = send(core, agent, ok.replace(b"z9hG4bK", b"z9hG4bKx"), NOW + 11)
    assert drop.reason == "unexpected_response"


def test_hanging_up_before_the_ack_waits_for_it():
    core = make_core()
    agent = Baresip()
    offered = only(invite(core, agent), CallOffered)
    ok = final(core.answer(offered.call, ANSWER, NOW))
    assert only(core.hang_up(offered.call, NOW, "shutdown"), CallEnded).reason == "shutdown"
    actions = send(core, agent, agent.ack(INVITE_URI, agent.cseq,
                                          header_param(ok.get("to"), "tag")))
    [bye] = responses(actions) or [parse(a.data) for a in sends(actions)]
    assert parse(sends(actions)[0].data).method == "BYE"
    assert not [a for a in actions if type(a) in (CallConfirmed, CallEnded)]


def test_the_adapter_rejects_an_offer_it_cannot_answer():
    core = make_core()
    offered = only(invite(core, Sipsak(), MIDI_OFFER), CallOffered)
    assert offered.offer == MIDI_OFFER
    response = final(core.reject(offered.call, 488, NOW))
    assert response.status == 488 and header_param(response.get("to"), "tag")
    assert not core.calls


def test_an_offer_that_is_not_sdp_is_415_and_no_session_in_the_uri_is_404():
    core = make_core()
    agent = Agent()
    data = agent.request("INVITE", INVITE_URI, body=b"hello").replace(
        b"application/sdp", b"text/plain")
    response = final(send(core, agent, data))
    assert response.status == 415 and response.get("accept") == "application/sdp"
    assert final(send(core, agent, agent.request("INVITE", "sip:127.0.0.1"))).status == 404


def test_calls_are_bounded_and_a_silent_adapter_gets_480():
    core = make_core(limits=Limits(max_dialogs=1))
    only(invite(core, Baresip()), CallOffered)
    other = Baresip(address=("127.0.0.1", 5090))
    actions = send(core, other, other.request("INVITE", INVITE_URI, body=PCMU_OFFER))
    response = final(actions)
    assert response.status == 503 and response.get("retry-after") == "30"
    actions = [a for step in range(1, 70) for a in core.timer(NOW + step * 0.5)]
    assert 480 in [parse(a.data).status for a in sends(actions)
                   if a.data.startswith(b"SIP/2.0")]
    assert only(actions, CallEnded).reason == "unanswered"


def test_a_lost_tcp_connection_ends_its_calls():
    core = make_core()
    agent = Baresip(transport="TCP")
    call, ok = established(core, agent)
    assert ok.get("contact") == "<sip:demo@127.0.0.1:5060;transport=tcp>"
    assert core.timer(NOW + 30) == []                           # nothing resent over TCP
    assert only(core.connection_lost("TCP", agent.address, NOW + 31), CallEnded).reason == "closed"


def test_a_new_cseq_on_a_reused_branch_is_a_new_request():
    # sipsak -i -f FILE sends the file's Via as written, so its INVITE after the 401
    # has the first one's branch (measured against this core).
    core = make_core()
    agent = Sipsak()
    data = agent.request("INVITE", INVITE_URI, body=MIDI_OFFER, branch="z9hG4bKfile")
    challenge = final(send(core, agent, data))
    send(core, agent, agent.ack(INVITE_URI, agent.cseq, header_param(challenge.get("to"), "tag"),
                                branch="z9hG4bKfile"))
    again = agent.request("INVITE", INVITE_URI, [agent.authorization(
        challenge, "INVITE", INVITE_URI)], body=MIDI_OFFER, branch="z9hG4bKfile")
    assert only(verify(core, send(core, agent, again)), CallOffered).offer == MIDI_OFFER
    assert core.counts["branch_reused"] == 1


def test_an_invite_without_offer_gets_ours_and_the_answer_comes_in_the_ack():
    core = make_core()
    agent = Baresip()
    offered = only(invite(core, agent, offer=b""), CallOffered)
    assert offered.offer is None
    assert [r.status for r in responses(core.ringing(offered.call, NOW))] == [180]
    ok = final(core.answer(offered.call, ANSWER, NOW))
    actions = send(core, agent, agent.ack(INVITE_URI, agent.cseq, header_param(
        ok.get("to"), "tag"), body=PCMU_OFFER))
    assert only(actions, CallConfirmed).sdp == PCMU_OFFER


def test_the_core_makes_framers_with_its_limits():
    core = make_core(limits=Limits(max_stream_header_octets=1000, max_body_octets=10))
    framer = core.new_framer()
    assert (framer.max_header_octets, framer.max_body_octets) == (1000, 10)


def test_an_invite_unanswered_for_200_ms_gets_100_trying_and_a_resend_gets_it_at_once():
    core, agent = make_core(), Agent()
    first = send(core, agent, agent.request("INVITE", INVITE_URI, body=PCMU_OFFER))
    challenge = final(first)
    send(core, agent, agent.ack(INVITE_URI, agent.cseq, header_param(
        challenge.get("to"), "tag"), branch=agent.last_branch))
    authorization = agent.authorization(challenge, "INVITE", INVITE_URI)
    request = agent.request("INVITE", INVITE_URI, [authorization], body=PCMU_OFFER)
    assert only(send(core, agent, request), Authenticate)      # the bus is slow to answer
    assert responses(core.timer(NOW + 0.1)) == []
    assert [r.status for r in responses(core.timer(NOW + 0.25))] == [100]
    assert [r.status for r in responses(send(core, agent, request, NOW + 0.3))] == [100]
