"""The SIP client core (the gateway calling out) on a fake clock.

Requests are checked byte for byte (a counting random source makes tags and
branches readable); responses are written the way real servers write them
(Asterisk's 401 without qop, Kamailio's 407 with ``qop="auth,auth-int"`` and
Record-Route, pjsip's 100/180/200, FreeSWITCH's 183). Then retransmissions and
timers, challenges, failures, CANCEL, forks, BYE both ways, the callee's
requests, and a whole call against the gateway's own UAS core.
"""

import random

import pytest
from hypothesis import given, strategies as st

from gateway.actions import Drop, Send
from gateway.protocols.sip import digest, midi_sdp
from gateway.protocols.sip.message import RFC3261, Request, Response, parse
from gateway.protocols.sip.transactions import T1, header_param
from gateway.protocols.sip.uac import (
    Answered, Ended, Failed, Ringing, Target, UserAgentClient, parse_target,
)
from gateway.protocols.sip.uas import (
    Authenticate, CallConfirmed, CallEnded, CallOffered, UserAgentServer,
)

NOW = 1000.0
US = "192.0.2.10"
CALLEE = ("192.0.2.20", 5070)
URI = "sip:demo@192.0.2.20:5070"
PASSWORD = "open sesame"
OFFER = midi_sdp.offer(US, 6200, 42)
ANSWER = (b"v=0\r\no=pjsua 3 3 IN IP4 192.0.2.20\r\ns=pjmedia\r\nc=IN IP4 192.0.2.20\r\n"
          b"t=0 0\r\nm=audio 40000 RTP/AVP 96\r\na=rtpmap:96 rtp-midi/44100\r\n"
          b"a=sendrecv\r\n")


class CountingRng:
    """Tags, branches and Call-IDs that count 1, 2, 3...; CSeqs start at 1."""

    def __init__(self):
        self.count = 0

    def getrandbits(self, bits):
        self.count += 1
        return self.count

    def randrange(self, start, stop=None):
        return start


def make_core(**options):
    options.setdefault("rng", CountingRng())
    return UserAgentClient(US, {"UDP": 5060, "TCP": 5060, "TLS": 5061}, now=NOW, **options)


def target(transport="UDP", password=PASSWORD, uri=URI, address=CALLEE):
    return Target(uri, transport, address, "gw", password)


def sends(actions):
    return [action for action in actions if type(action) is Send]


def sent(actions):
    return [parse(action.data) for action in sends(actions)]


def events(actions, kind):
    return [action for action in actions if type(action) is kind]


def respond(request, status, phrase, headers=(), body=b"", tag="as5e4f"):
    """A response as pjsip, Asterisk and Kamailio write them: Via, From, To (tag), Call-ID,
    CSeq copied, then their own headers."""
    copied = []
    for name, value in request.headers:
        if name.lower() == "to" and tag and status > 100 and "tag=" not in value:
            value = f"{value};tag={tag}"
        if name.lower() in ("via", "from", "to", "call-id", "cseq", "record-route"):
            copied.append((name, value))
    return Response(status, phrase, copied + list(headers), body).to_bytes(RFC3261)


def feed(core, data, now=NOW, source=CALLEE, transport="UDP"):
    return core.receive(data, transport, source, now)


def start(core=None, **options):
    core = core or make_core()
    call, actions = core.invite(target(**options), OFFER, NOW)
    [invite] = sent(actions)
    return core, call, invite


GOLDEN_INVITE = (
    "INVITE sip:demo@192.0.2.20:5070 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK0000000000000003;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:gw@192.0.2.10>;tag=000000000002\r\n"
    "To: <sip:demo@192.0.2.20:5070>\r\n"
    "Call-ID: 000000000000000000000001@192.0.2.10\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:gw@192.0.2.10:5060>\r\n"
    "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n"
    "User-Agent: netgateway\r\n"
    "Content-Type: application/sdp\r\n"
    f"Content-Length: {len(OFFER)}\r\n\r\n").encode() + OFFER

ASTERISK_401 = (
    "SIP/2.0 401 Unauthorized\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK0000000000000003;received=192.0.2.10;"
    "rport=5060\r\n"
    "From: <sip:gw@192.0.2.10>;tag=000000000002\r\n"
    "To: <sip:demo@192.0.2.20:5070>;tag=as0b1c2d3e\r\n"
    "Call-ID: 000000000000000000000001@192.0.2.10\r\n"
    "CSeq: 1 INVITE\r\n"
    "Server: Asterisk PBX 18.10.0\r\n"
    "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, SUBSCRIBE, NOTIFY, INFO, PUBLISH\r\n"
    "Supported: replaces, timer\r\n"
    'WWW-Authenticate: Digest algorithm=MD5, realm="asterisk", nonce="5e4f3a2b"\r\n'
    "Content-Length: 0\r\n\r\n").encode()

GOLDEN_ACK_401 = (
    "ACK sip:demo@192.0.2.20:5070 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK0000000000000003;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:gw@192.0.2.10>;tag=000000000002\r\n"
    "Call-ID: 000000000000000000000001@192.0.2.10\r\n"
    "To: <sip:demo@192.0.2.20:5070>;tag=as0b1c2d3e\r\n"
    "CSeq: 1 ACK\r\n"
    "Content-Length: 0\r\n\r\n").encode()


# --- the wire, byte for byte -------------------------------------------------------------------

def test_the_invite_is_golden():
    core, call, invite = start()
    assert invite.to_bytes(RFC3261) == GOLDEN_INVITE
    assert call.state == "calling" and core.owns(call.call_id)


def test_asterisks_401_without_qop_is_acked_golden_and_answered_rfc_2069_style():
    core, call, invite = start()
    actions = feed(core, ASTERISK_401)
    ack, again = sends(actions)
    assert ack.data == GOLDEN_ACK_401 and ack.address == CALLEE
    request = parse(again.data)
    response = digest.response_digest("MD5", "gw", "asterisk", PASSWORD, "INVITE", URI,
                                      "5e4f3a2b")
    assert request.get("authorization") == (
        f'Digest username="gw", realm="asterisk", nonce="5e4f3a2b", uri="{URI}",'
        f' response="{response}", algorithm=MD5')
    assert request.cseq == (2, "INVITE") and request.call_id == invite.call_id
    assert request.get("from") == invite.get("from") and request.get("to") == invite.get("to")
    assert header_param(request.get("via"), "branch") == "z9hG4bK0000000000000005"
    assert request.body == OFFER and events(actions, Failed) == []


def test_kamailios_407_with_auth_int_and_record_route_then_pjsips_answer():
    core, call, invite = start()
    challenge = respond(invite, 407, "Proxy Authentication Required", [
        ("Proxy-Authenticate", 'Digest realm="proxy.example", nonce="Xk3r", qop="auth,auth-int",'
                               ' algorithm=SHA-256, opaque="op1"')], tag="kam1")
    _, again = sent(feed(core, challenge))
    value = again.get("proxy-authorization")
    params = dict(part.strip().split("=", 1) for part in value[7:].split(","))
    assert params["qop"] == "auth" and params["nc"] == "00000001"
    assert params["algorithm"] == "SHA-256" and params["opaque"] == '"op1"'
    expected = digest.response_digest("SHA-256", "gw", "proxy.example", PASSWORD, "INVITE",
                                      URI, "Xk3r", "00000001", params["cnonce"].strip('"'),
                                      "auth")
    assert params["response"] == f'"{expected}"'
    # Through the proxy: 100 from it, 180 and 200 from pjsip with two Record-Routes.
    routed = [("Record-Route", "<sip:192.0.2.30;lr>"), ("Record-Route", "<sip:192.0.2.31;lr>")]
    assert feed(core, respond(again, 100, "Trying", tag=None)) == []
    ringing = feed(core, respond(again, 180, "Ringing", routed, tag="pj77"))
    assert [(e.status, e.reason) for e in events(ringing, Ringing)] == [(180, "Ringing")]
    ok = feed(core, respond(again, 200, "OK", routed + [
        ("Contact", "<sip:192.0.2.20:5070;ob>"), ("Content-Type", "application/sdp")],
        ANSWER, tag="pj77"))
    [ack] = sends(ok)
    [answered] = events(ok, Answered)
    assert answered.sdp == ANSWER and call.state == "confirmed"
    request = parse(ack.data)
    # §12.1.2: the route set is the Record-Route reversed; loose routing: the Request-URI
    # is the remote target, and the ACK goes to the first route.
    assert request.uri == "sip:192.0.2.20:5070;ob"
    assert request.values("route") == ["<sip:192.0.2.31;lr>", "<sip:192.0.2.30;lr>"]
    assert ack.address == ("192.0.2.31", 5060)
    assert request.get("proxy-authorization") == value and request.cseq == (2, "ACK")
    assert header_param(request.get("to"), "tag") == "pj77"
    assert request.body == b""


def test_freeswitchs_183_reports_progress_once_per_response():
    core, call, invite = start()
    progress = respond(invite, 183, "Session Progress", tag="fs1")
    assert [e.status for e in events(feed(core, progress), Ringing)] == [183]
    assert call.state == "ringing"


def test_a_tcp_invite_names_tcp_and_is_never_retransmitted():
    core, call, invite = start(transport="TCP")
    assert invite.get("via").startswith("SIP/2.0/TCP 192.0.2.10:5060;")
    assert invite.get("contact") == "<sip:gw@192.0.2.10:5060;transport=tcp>"
    assert sends(core.timer(NOW + 20)) == []
    assert [e.reason for e in events(core.timer(NOW + 32.1), Failed)] == ["no response"]


def test_a_sips_uri_is_called_with_sips_uris():
    core, call, invite = start(transport="TLS", uri="sips:demo@192.0.2.20")
    assert invite.get("from").startswith("<sips:gw@192.0.2.10>")
    assert invite.get("contact") == "<sips:gw@192.0.2.10:5061;transport=tls>"


# --- retransmissions and timers ----------------------------------------------------------------

def test_timer_a_doubles_and_timer_b_gives_up_after_64_t1():
    core, call, invite = start()
    times = []
    now = NOW
    while now < NOW + 40:
        now += 0.01
        for action in core.timer(now):
            if type(action) is Send:
                assert action.data == GOLDEN_INVITE
                times.append(round(now - NOW, 2))
            else:
                assert type(action) is Failed and action.status is None
                assert action.reason == "no response" and abs(now - NOW - 32.0) < 0.011
    assert all(abs(time - due) < 0.011 for time, due in zip(times, [0.5, 1.5, 3.5, 7.5, 15.5,
                                                                     31.5])) and len(times) == 6
    assert not core.owns(call.call_id) or call.state == "ended"


def test_a_provisional_stops_the_retransmissions():
    core, call, invite = start()
    feed(core, respond(invite, 100, "Trying", tag=None))
    assert sends(core.timer(NOW + 10)) == []


def test_timer_d_absorbs_a_retransmitted_final_with_the_same_ack():
    core, call, invite = start()
    busy = respond(invite, 486, "Busy Here", [("Retry-After", "30 (in a call)")])
    actions = feed(core, busy)
    [failed] = events(actions, Failed)
    assert (failed.status, failed.reason, failed.retry_after) == (486, "Busy Here", 30.0)
    [ack] = sends(actions)
    assert sends(feed(core, busy, NOW + 1)) == [ack]
    core.timer(NOW + 33)
    assert [type(a) for a in feed(core, busy, NOW + 34)] == [Drop]      # Timer D is over


@pytest.mark.parametrize("status, phrase", [(404, "Not Found"), (403, "Forbidden"),
                                            (488, "Not Acceptable Here"), (603, "Decline"),
                                            (302, "Moved Temporarily")])
def test_final_refusals_fail_the_call(status, phrase):
    core, call, invite = start()
    [failed] = events(feed(core, respond(invite, status, phrase)), Failed)
    assert (failed.status, failed.reason, failed.retry_after) == (status, phrase, None)
    assert call.state == "ended"


def test_the_2xx_retransmitted_after_timer_m_is_acked_while_the_call_lasts():
    core, call, invite = start()
    ok = respond(invite, 200, "OK", [("Contact", f"<sip:demo@{CALLEE[0]}:{CALLEE[1]}>")],
                 ANSWER)
    [ack] = sends(feed(core, ok))
    assert sends(feed(core, ok, NOW + 1)) == [ack]
    core.timer(NOW + 40)
    assert sends(feed(core, ok, NOW + 41)) == [ack]
    assert core.counts["2xx_retransmissions"] == 2


# --- challenges ----------------------------------------------------------------------------------

def challenge_of(request, nonce="n1", stale=False, status=401, qop='qop="auth", '):
    header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    stale_text = ", stale=true" if stale else ""
    return respond(request, status, "Unauthorized", [
        (header, f'Digest realm="netgateway", nonce="{nonce}", {qop}algorithm=MD5'
                 f'{stale_text}')])


def test_a_stale_nonce_is_answered_again_and_a_second_plain_challenge_fails():
    core, call, invite = start()
    _, second = sent(feed(core, challenge_of(invite, "n1")))
    assert 'nonce="n1"' in second.get("authorization")
    _, third = sent(feed(core, challenge_of(second, "n2", stale=True)))
    assert 'nonce="n2"' in third.get("authorization") and "nc=00000001" in third.get(
        "authorization")
    assert third.cseq[0] == 3
    actions = feed(core, challenge_of(third, "n3"))
    [failed] = events(actions, Failed)
    assert failed.status == 401 and failed.reason == "our credentials were refused"
    assert [r.method for r in sent(actions)] == ["ACK"]


def test_challenges_are_bounded_even_when_stale():
    core, call, invite = start()
    request = invite
    for index in range(3):
        actions = feed(core, challenge_of(request, f"n{index}", stale=index > 0))
        request = sent(actions)[-1]
        assert request.method == "INVITE"
    assert events(feed(core, challenge_of(request, "n9", stale=True)), Failed)


def test_a_challenge_without_auth_qop_or_with_an_unknown_algorithm_cannot_be_answered():
    for header in ('Digest realm="r", nonce="x", qop="auth-int"',
                   'Digest realm="r", nonce="x", algorithm=SHA-512-256',
                   'Basic realm="r"'):
        core, call, invite = start()
        [failed] = events(feed(core, respond(invite, 401, "Unauthorized", [
            ("WWW-Authenticate", header)])), Failed)
        assert "no digest challenge we can answer" in failed.reason


def test_the_topmost_supported_challenge_is_answered_rfc_8760():
    core, call, invite = start()
    _, again = sent(feed(core, respond(invite, 401, "Unauthorized", [
        ("WWW-Authenticate", 'Digest realm="r", nonce="x", algorithm=SHA-512-256, qop="auth"'),
        ("WWW-Authenticate", 'Digest realm="r", nonce="x", algorithm=SHA-256, qop="auth"'),
        ("WWW-Authenticate", 'Digest realm="r", nonce="x", algorithm=MD5, qop="auth"')])))
    assert "algorithm=SHA-256" in again.get("authorization")


def test_without_a_password_a_challenge_fails():
    core, call, invite = start(password=None)
    [failed] = events(feed(core, challenge_of(invite)), Failed)
    assert failed.reason == "challenged, and no password is configured"


# --- hanging up, CANCEL, forks, BYE --------------------------------------------------------------

def established(core=None, **options):
    core, call, invite = start(core, **options)
    ok = respond(invite, 200, "OK", [("Contact", f"<sip:demo@{CALLEE[0]}:{CALLEE[1]}>"),
                                      ("Content-Type", "application/sdp")], ANSWER, "cal1")
    actions = feed(core, ok)
    assert events(actions, Answered)
    return core, call, invite


def callee_request(call, method, cseq, body=b"", from_tag="cal1", branch=None):
    headers = [("Via", f"SIP/2.0/UDP {CALLEE[0]}:{CALLEE[1]};branch={branch or f'z9hG4bKc{cseq}'}"),
               ("From", f"<{URI}>;tag={from_tag}"),
               ("To", f"<sip:gw@{US}>;tag={call.local_tag}"),
               ("Call-ID", call.call_id), ("CSeq", f"{cseq} {method}"), ("Max-Forwards", "70")]
    if body:
        headers.append(("Content-Type", "application/sdp"))
    return Request(method, f"sip:gw@{US}:5060", headers, body).to_bytes(RFC3261)


def test_hanging_up_an_established_call_sends_bye_resent_on_timer_e():
    core, call, invite = established()
    actions = core.hang_up(call, NOW + 1, "shutdown")
    [bye] = sent(actions)
    assert [e.reason for e in events(actions, Ended)] == ["shutdown"]
    assert bye.method == "BYE" and bye.uri == f"sip:demo@{CALLEE[0]}:{CALLEE[1]}"
    assert bye.cseq == (invite.cseq[0] + 1, "BYE")
    assert header_param(bye.get("to"), "tag") == "cal1"
    again = sends(core.timer(NOW + 1.6))
    assert [parse(a.data).method for a in again] == ["BYE"]
    assert feed(core, respond(bye, 200, "OK", tag=None), NOW + 2) == []
    assert sends(core.timer(NOW + 10)) == []
    assert core.hang_up(call, NOW + 11) == []


def test_a_bye_that_is_challenged_is_sent_again_once_with_credentials():
    core, call, invite = established()
    [bye] = sent(core.hang_up(call, NOW + 1))
    [again] = sent(feed(core, challenge_of(bye, "nb"), NOW + 1.1))
    assert again.method == "BYE" and again.cseq[0] == bye.cseq[0] + 1
    assert 'uri="sip:demo@192.0.2.20:5070"' in again.get("authorization")
    assert sent(feed(core, challenge_of(again, "nb2"), NOW + 1.2)) == []


def test_the_callees_bye_is_answered_and_ends_the_call_and_its_retransmission_absorbed():
    core, call, invite = established()
    bye = callee_request(call, "BYE", 7)
    actions = feed(core, bye, NOW + 5)
    [ok] = sent(actions)
    assert ok.status == 200 and header_param(ok.get("to"), "tag") == call.local_tag
    assert "received=192.0.2.20" in ok.get("via") or "rport" not in ok.get("via")
    assert [e.reason for e in events(actions, Ended)] == ["bye"]
    assert [a.data for a in sends(feed(core, bye, NOW + 5.5))] == [sends(actions)[0].data]
    assert core.owns(call.call_id)                  # remembered for late messages
    core.timer(NOW + 5 + 64 * T1 + 1)
    assert not core.owns(call.call_id)


def test_a_bye_with_the_wrong_tag_is_481():
    core, call, invite = established()
    [refused] = sent(feed(core, callee_request(call, "BYE", 7, from_tag="other")))
    assert refused.status == 481 and call.state == "confirmed"


def test_options_info_and_reinvites_from_the_callee():
    core, call, invite = established()
    [ok] = sent(feed(core, callee_request(call, "OPTIONS", 8)))
    assert ok.status == 200 and "INVITE" in ok.get("allow")
    [ok] = sent(feed(core, callee_request(call, "INFO", 9)))
    assert ok.status == 200
    # A session refresh (its answer again) gets our offer; new media 488; the ACK is taken.
    [ok] = sent(feed(core, callee_request(call, "INVITE", 10, ANSWER)))
    assert ok.status == 200 and ok.body == OFFER
    assert sends(core.timer(NOW + 0.6))               # resent until the ACK
    assert feed(core, callee_request(call, "ACK", 10), NOW + 0.7) == []
    assert sends(core.timer(NOW + 3)) == []
    changed = ANSWER.replace(b"40000", b"40010")
    [refused] = sent(feed(core, callee_request(call, "INVITE", 11, changed)))
    assert refused.status == 488 and "304" in refused.get("warning")
    [refused] = sent(feed(core, callee_request(call, "SUBSCRIBE", 12)))
    assert refused.status == 501


def test_hanging_up_before_any_response_cancels_as_soon_as_one_comes():
    core, call, invite = start()
    actions = core.hang_up(call, NOW + 0.1, "shutdown")
    assert sends(actions) == [] and [e.reason for e in events(actions, Failed)] == ["shutdown"]
    [cancel] = sent(feed(core, respond(invite, 180, "Ringing", tag="t1"), NOW + 0.2))
    assert cancel.method == "CANCEL" and cancel.cseq == (invite.cseq[0], "CANCEL")
    assert cancel.get("via") == invite.get("via") and cancel.uri == invite.uri
    assert header_param(cancel.get("to"), "tag") is None       # the INVITE's To
    assert feed(core, respond(cancel, 200, "OK", tag="t1"), NOW + 0.3) == []
    actions = feed(core, respond(invite, 487, "Request Terminated", tag="t1"), NOW + 0.4)
    [ack] = sent(actions)
    assert ack.method == "ACK" and events(actions, Failed) == []    # reported once
    assert call.state == "ended"


def test_a_2xx_that_crosses_our_cancel_is_acked_and_byed():
    core, call, invite = start()
    feed(core, respond(invite, 180, "Ringing", tag="t1"))
    [cancel] = sent(core.hang_up(call, NOW + 1))
    actions = feed(core, respond(invite, 200, "OK", [("Contact", "<sip:192.0.2.20:5070>")],
                                 ANSWER, tag="t1"), NOW + 1.01)
    assert [r.method for r in sent(actions)] == ["ACK", "BYE"]
    assert events(actions, Answered) == [] and events(actions, Ended) == []


def test_a_2xx_of_another_fork_is_acked_and_byed_and_ours_stays():
    core, call, invite = established()
    fork = respond(invite, 200, "OK", [("Contact", "<sip:192.0.2.21:5070>")], ANSWER, "fork2")
    actions = feed(core, fork, NOW + 0.2, source=("192.0.2.21", 5070))
    ack, bye = sends(actions)
    assert parse(ack.data).method == "ACK" and ack.address == ("192.0.2.21", 5070)
    assert header_param(parse(bye.data).get("to"), "tag") == "fork2"
    assert call.state == "confirmed" and call.remote_tag == "cal1"


def test_a_lost_connection_ends_the_calls_on_it():
    core, call, invite = established(transport="TCP")
    actions = core.connection_lost("TCP", CALLEE, NOW + 3)
    assert [e.reason for e in events(actions, Ended)] == ["closed"] and sends(actions) == []
    core2, call2, _ = start(transport="TCP")
    assert [e.reason for e in events(core2.connection_lost("TCP", CALLEE, NOW), Failed)] == [
        "connection lost"]


def test_a_ringing_call_is_cancelled_after_its_ring_timeout():
    core = make_core()
    call, actions = core.invite(target(), OFFER, NOW, ring_timeout=10)
    [invite] = sent(actions)
    feed(core, respond(invite, 180, "Ringing"))
    assert core.timer(NOW + 9) == []
    actions = core.timer(NOW + 10.01)
    assert [r.method for r in sent(actions)] == ["CANCEL"]
    assert [e.reason for e in events(actions, Failed)] == ["no answer"]


def test_calls_are_bounded():
    from gateway.protocols.sip.uac import UacLimits
    core = make_core(limits=UacLimits(max_calls=1))
    start(core)
    call, actions = core.invite(target(), OFFER, NOW)
    assert call is None and [a.reason for a in actions] == ["calls_full"]


# --- targets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("uri, transport, expected", [
    ("sip:demo@127.0.0.1", None, ("sip", "demo", "127.0.0.1", 5060, "UDP")),
    ("sip:demo@127.0.0.1:5070;transport=tcp", None, ("sip", "demo", "127.0.0.1", 5070, "TCP")),
    ("sips:demo@127.0.0.1", None, ("sips", "demo", "127.0.0.1", 5061, "TLS")),
    ("sip:demo@127.0.0.1", "tls", ("sip", "demo", "127.0.0.1", 5061, "TLS")),
    ("sip:[::1]:5080", None, ("sip", "", "::1", 5080, "UDP")),
    ("sip:a%20b:secret@10.0.0.1", "udp", ("sip", "a b", "10.0.0.1", 5060, "UDP"))])
def test_targets_are_read_from_uris(uri, transport, expected):
    assert parse_target(uri, transport) == expected


@pytest.mark.parametrize("uri, transport", [
    ("tel:+123", None), ("sip:demo@example.org", None), ("sips:demo@127.0.0.1", "tcp"),
    ("sip:demo@127.0.0.1?subject=x", None), ("sip:demo@127.0.0.1:99999", None),
    ("sip:demo@127.0.0.1;transport=sctp", None), ("", None)])
def test_unusable_targets_are_refused(uri, transport):
    with pytest.raises(ValueError):
        parse_target(uri, transport)


def test_the_target_never_shows_its_password():
    assert PASSWORD not in repr(target()) and PASSWORD not in repr(start()[1])


# --- against the gateway's own UAS core ---------------------------------------------------------

def test_a_whole_call_against_the_uas_core_with_its_challenge_and_both_byes():
    uac = UserAgentClient("127.0.0.1", {"UDP": 5060}, now=NOW, rng=random.Random(1))
    uas = UserAgentServer("netgateway", "127.0.0.2", {"UDP": 5070}, now=NOW,
                          rng=random.Random(2))
    a, b = ("127.0.0.1", 5060), ("127.0.0.2", 5070)
    seen = []

    def run(actions, now):
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            if type(action) is Send:
                if action.address == b:
                    queue += uas.receive(action.data, "UDP", a, now)
                else:
                    queue += uac.receive(action.data, "UDP", b, now)
            elif type(action) is Authenticate:
                assert action.player == "gw" and action.session == "demo"
                queue += uas.authenticated(action.ticket, now) \
                    if action.proof.matches(PASSWORD) else uas.refused(action.ticket,
                                                                       "wrong_passphrase", now)
            elif type(action) is CallOffered:
                offer = midi_sdp.read_offer(action.offer)
                queue += uas.answer(action.call, midi_sdp.answer(offer, "127.0.0.2", 6300, 5),
                                    now)
            else:
                seen.append(action)

    call, actions = uac.invite(Target("sip:demo@127.0.0.2:5070", "UDP", b, "gw", PASSWORD),
                               OFFER, NOW)
    run(actions, NOW)
    [answered] = [e for e in seen if type(e) is Answered]
    stream = midi_sdp.read_answer(answered.sdp)
    assert stream.address == ("127.0.0.2", 6300) and stream.rtcp_address == ("127.0.0.2", 6301)
    [confirmed] = [e for e in seen if type(e) is CallConfirmed]
    assert uas.counts["challenges"] == 1 and uac.counts["challenges_answered"] == 1
    run(uas.hang_up(confirmed.call, NOW + 1), NOW + 1)
    assert [e.reason for e in seen if type(e) is Ended] == ["bye"]
    assert uas.counts["bye_answered_2xx"] == 1
    # And the other way: a new call, our BYE.
    seen.clear()
    call, actions = uac.invite(Target("sip:demo@127.0.0.2:5070", "UDP", b, "gw", PASSWORD),
                               OFFER, NOW + 2)
    run(actions, NOW + 2)
    run(uac.hang_up(call, NOW + 3), NOW + 3)
    assert [e.reason for e in seen if type(e) is CallEnded] == ["bye"]
    assert uac.counts["bye_answered_2xx"] == 1
    # A wrong password: 403 after the challenge.
    seen.clear()
    call, actions = uac.invite(Target("sip:demo@127.0.0.2:5070", "UDP", b, "gw", "wrong"),
                               OFFER, NOW + 4)
    run(actions, NOW + 4)
    [failed] = [e for e in seen if type(e) is Failed]
    assert failed.status == 403


# --- fuzz ------------------------------------------------------------------------------------------

@given(st.binary(max_size=600))
def test_arbitrary_datagrams_never_raise(data):
    core, call, invite = start()
    for action in feed(core, data):
        assert type(action) is Drop and action.reason != "internal_error"


@given(st.lists(st.integers(0, 255), min_size=1, max_size=12), st.integers(0, 10_000))
def test_corrupted_responses_never_raise(positions, seed):
    core, call, invite = start()
    data = bytearray(respond(invite, 200, "OK", [("Contact", "<sip:x@192.0.2.20>")], ANSWER))
    rng = random.Random(seed)
    for position in positions:
        data[position % len(data)] = rng.randrange(256)
    for action in feed(core, bytes(data)) + core.timer(NOW + 1):
        assert not (type(action) is Drop and action.reason == "internal_error"), action


# --- the digest client against the digest server ----------------------------------------------

@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
@pytest.mark.parametrize("qop", [True, False])
def test_our_authorization_proves_the_password_to_the_server_side(algorithm, qop):
    value = f'Digest realm="netgateway", nonce="abc.def", algorithm={algorithm}' + (
        ', qop="auth"' if qop else "")
    challenge = digest.parse_challenge(value)
    name, answer = digest.authorization(challenge, "gw", PASSWORD, "INVITE", URI, 3, "cafe")
    assert name == "Authorization"
    credentials = digest.parse_credentials(answer)
    proof = digest.DigestProof("gw", "netgateway", "INVITE", credentials)
    assert proof.matches(PASSWORD) and not proof.matches("something else")
    assert (credentials["nc"] == "00000003") == qop


def test_challenge_parameters_with_escapes_and_commas_in_quotes():
    challenge = digest.parse_challenge(
        'Digest realm="a, \\"b\\"", nonce="x,y", qop="auth-int, auth", stale=TRUE')
    assert (challenge.realm, challenge.nonce, challenge.qop, challenge.stale) == (
        'a, "b"', "x,y", ("auth-int", "auth"), True)
    name, value = digest.authorization(challenge, 'q"uote', "pw", "BYE", "sip:x@y")
    assert 'username="q\\"uote"' in value and 'realm="a, \\"b\\""' in value
    assert digest.parse_credentials(value)["username"] == 'q"uote'
