"""The SIP door calling out (``sip.invite``) and offering (INVITEs without an offer),
against a recording bus: what goes on the wire.

The door runs on the in-memory network of tests/rtpmidi/test_door.py (UDP
datagrams recorded; TCP connections the door opens are StringTransports the
test reads). The callee is the test: it reads the gateway's INVITE and answers
the way a user agent writes its responses. The called peer joins with a
``Verified`` credential; the recording bus answers as each test says.
"""

import types

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from gateway.bus import values
from gateway.bus.local import DropCounters
from gateway.bus.values import RosterEntry, Verified
from gateway.config import parse
from gateway.midi import MidiEvent
from gateway.protocols.rtpmidi.payload import RtpMidiPacket, command_section, rtp_header
from gateway.protocols.sip import door as sipdoor, metrics, rtcp
from gateway.protocols.sip.digest import response_digest
from gateway.protocols.sip.framing import StreamFramer
from gateway.protocols.sip.message import RFC3261, Request, Response, parse as parse_sip
from gateway.protocols.sip.sdp import Sdp
from gateway.protocols.sip.transactions import header_param
from tests.bus.recording import RecordingBus
from tests.rtpmidi.test_door import MemoryReactor
from tests.sip.sfront_double import DEMO_PASSPHRASE
from tests.sip.uas_agents import Agent

NOW = 1_800_000_000.0
SIP_PORT = 5060
CALLEE = ("127.0.0.9", 5080)
CALLEE_RTP = ("127.0.0.9", 42000)
CALLEE_RTCP = ("127.0.0.9", 42001)
CALLER = ("127.0.0.1", 5070)            # a standard agent calling us (offerless tests)
CALLER_RTP = ("127.0.0.1", 43000)
MEDIA_MIN = 6200
ALICE = RosterEntry(7, "alice-ws", "websocket")
PASSWORD = "the callee's passphrase"
URI = f"sip:demo@{CALLEE[0]}:{CALLEE[1]}"


class StreamReactor(MemoryReactor):
    """MemoryReactor whose connectTCP/connectSSL are recorded for the test to complete."""

    def __init__(self):
        super().__init__()
        self.connecting = []            # (host, port, factory, tls)

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        self.connecting.append((host, port, factory, False))
        return types.SimpleNamespace(disconnect=lambda: None)

    def connectSSL(self, host, port, factory, contextFactory, timeout=30, bindAddress=None):
        self.connecting.append((host, port, factory, True))
        return types.SimpleNamespace(disconnect=lambda: None)


def answer_sdp(port=42000, extra="", encoding="rtp-midi/44100", media_port=None):
    return ("v=0\r\no=callee 9 9 IN IP4 127.0.0.9\r\ns=-\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\n"
            f"m=audio {port if media_port is None else media_port} RTP/AVP 96\r\n"
            f"a=rtpmap:96 {encoding}\r\n{extra}").encode()


class Gateway:
    """A SipDoor with one sip.invite entry (or none); its bus a RecordingBus."""

    def __init__(self, invite=None, uas=None):
        self.reactor = StreamReactor()
        self.reactor.advance(NOW)
        self.bus = RecordingBus()
        entry = dict({"session": "demo", "uri": URI, "name": "studio b",
                      "username": "gw", "password": PASSWORD}, **(invite or {}))
        section = {"media": {"host": "127.0.0.5", "port_min": 6000, "port_max": 6001},
                   "uas": dict({"media": {"port_min": MEDIA_MIN, "port_max": MEDIA_MIN + 3},
                                "media_timeout": 30}, **(uas or {})),
                   "invite": [] if invite is False else [entry]}
        config = parse({"sessions": [{"name": "demo", "passphrase": DEMO_PASSPHRASE}],
                        "web": {"enabled": False}, "sip": section})
        self.drops = DropCounters()
        context = types.SimpleNamespace(config=config, reactor=self.reactor, bus=self.bus,
                                        drops=self.drops, metrics=None)
        self.door = sipdoor.make_service(config.doors["sip"], context)
        self.door.startService()
        self.tag = "callee7"

    @property
    def outbound(self):
        return self.door.outbound

    def invitation(self):
        [state] = self.door.status()["invite"]["invitations"]
        return state

    def pump(self, seconds, step=0.05):
        for _ in range(int(round(seconds / step))):
            self.reactor.advance(step)

    # The callee's side ----------------------------------------------------------------

    def requests(self, destination=CALLEE):
        return [parse_sip(data) for data in self.reactor.take(destination)]

    def respond(self, request, status, phrase, headers=(), body=b"", tag=True,
                source=CALLEE):
        """What a user agent answers ``request`` with: its Via, From, To (with our tag),
        Call-ID, CSeq, then ``headers`` (pjsip's order)."""
        self.reactor.inject(SIP_PORT, response_to(request, status, phrase, headers, body,
                                                  self.tag if tag else None), source)

    def challenge(self, request, status=401, algorithm="MD5", qop=True, stale=False):
        header = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
        value = (f'Digest realm="callee", nonce="n0nce{len(self.reactor.sent)}",'
                 f' algorithm={algorithm}' + (', qop="auth"' if qop else "")
                 + (", stale=true" if stale else "") + ', opaque="0paque"')
        self.respond(request, status, "Unauthorized" if status == 401 else
                     "Proxy Authentication Required", [(header, value)], tag=True)
        return value

    def answer(self, invite, body=None, contact=f"<sip:callee@{CALLEE[0]}:{CALLEE[1]}>"):
        self.respond(invite, 200, "OK", [("Contact", contact),
                                          ("Content-Type", "application/sdp")],
                     answer_sdp() if body is None else body)

    def connected_call(self):
        """INVITE, 401, INVITE with credentials, 180, 200, ACK; the join accepted.
        Returns ``(membership, the INVITE answered, the ACK)``."""
        [invite] = self.requests()
        self.challenge(invite)
        ack, again = self.requests()
        self.respond(again, 180, "Ringing")
        self.answer(again)
        [ack2] = self.requests()
        [pending] = self.bus.pending()
        return pending.accept(), again, ack2


def response_to(request, status, phrase, headers=(), body=b"", tag=None):
    copied = []
    for name, value in request.headers:
        lowered = name.lower()
        if lowered == "to" and tag and header_param(value, "tag") is None:
            value = f"{value};tag={tag}"
        if lowered in ("via", "from", "to", "call-id", "cseq"):
            copied.append((name, value))
    copied += list(headers)
    return wire(Response(status, phrase, copied, body))


def wire(message):
    return message.to_bytes(RFC3261)


def callee_request(method, call, cseq, body=b"", to_tag=None):
    """A request of the callee inside the dialog ``call`` set up (its From is our To)."""
    headers = [("Via", f"SIP/2.0/UDP {CALLEE[0]}:{CALLEE[1]};branch=z9hG4bKcallee{cseq};rport"),
               ("Max-Forwards", "70"),
               ("From", f"<{URI}>;tag=callee7"),
               ("To", f"<sip:gw@127.0.0.1>;tag={to_tag or call.local_tag}"),
               ("Call-ID", call.call_id), ("CSeq", f"{cseq} {method}")]
    if body:
        headers.append(("Content-Type", "application/sdp"))
    return wire(Request(method, "sip:gw@127.0.0.1:5060", headers, body))


def callee_rtp(messages, sequence=1, ssrc=0xCA11):
    return (rtp_header(sequence, 1000, ssrc, True, 96)
            + command_section([(0, message) for message in messages], journal_follows=False))


@pytest.fixture
def gateway():
    gateway = Gateway()
    yield gateway
    if gateway.door.running:
        gateway.door.stopService()


def offer_of(invite):
    sdp = Sdp.parse(invite.body)
    return sdp, sdp.media()


# --- calling out --------------------------------------------------------------------------

def test_the_gateway_calls_at_start_with_an_rtp_midi_offer(gateway):
    [invite] = gateway.requests()
    assert invite.method == "INVITE" and invite.uri == URI
    assert invite.get("via").startswith("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK")
    assert "rport" in invite.get("via")
    assert invite.get("from").startswith("<sip:gw@127.0.0.1>;tag=")
    assert invite.get("to") == f"<{URI}>" and invite.get("contact") == "<sip:gw@127.0.0.1:5060>"
    assert invite.get("content-type") == "application/sdp"
    sdp, media = offer_of(invite)
    assert (media.kind, media.protocol, media.formats) == ("audio", "RTP/AVP", ("96",))
    assert MEDIA_MIN <= media.port <= MEDIA_MIN + 2 and media.port % 2 == 0
    assert sdp.rtpmap() == (96, "rtp-midi", 44100) and sdp.connection() == "127.0.0.1"
    assert sdp.attribute("rtcp") == str(media.port + 1) and sdp.attribute("sendrecv") == ""
    assert gateway.invitation()["state"] == "calling"


def test_a_challenge_is_acked_and_answered_with_digest_then_the_peer_joins_verified(gateway):
    [invite] = gateway.requests()
    gateway.challenge(invite)
    ack, again = gateway.requests()
    # The ACK of the 401 is the transaction's: its branch, CSeq number, the 401's To tag.
    assert ack.method == "ACK" and ack.uri == URI
    assert ack.get("via") == invite.get("via") and ack.cseq == (invite.cseq[0], "ACK")
    assert header_param(ack.get("to"), "tag") == "callee7"
    assert again.method == "INVITE" and again.cseq[0] == invite.cseq[0] + 1
    assert again.call_id == invite.call_id and again.get("from") == invite.get("from")
    assert header_param(again.get("via"), "branch") != header_param(invite.get("via"), "branch")
    authorization = again.get("authorization")
    params = dict(part.strip().split("=", 1) for part in authorization[7:].split(","))
    assert params["username"] == '"gw"' and params["realm"] == '"callee"'
    assert params["qop"] == "auth" and params["nc"] == "00000001"
    assert params["opaque"] == '"0paque"' and params["uri"] == f'"{URI}"'
    expected = response_digest("MD5", "gw", "callee", PASSWORD, "INVITE", URI,
                               params["nonce"].strip('"'), "00000001",
                               params["cnonce"].strip('"'), "auth")
    assert params["response"] == f'"{expected}"'
    gateway.respond(again, 180, "Ringing")
    assert gateway.invitation()["state"] == "ringing"
    gateway.answer(again)
    [ack2xx] = gateway.requests()
    # §13.2.2.4: the 2xx's ACK goes to its Contact on a new branch, with the credentials.
    assert ack2xx.method == "ACK" and ack2xx.uri == f"sip:callee@{CALLEE[0]}:{CALLEE[1]}"
    assert ack2xx.cseq == (again.cseq[0], "ACK")
    assert header_param(ack2xx.get("via"), "branch") != header_param(again.get("via"),
                                                                     "branch")
    assert ack2xx.get("authorization") == authorization
    [pending] = gateway.bus.pending()
    request = pending.request
    assert (request.session, request.name, request.door, request.source) == (
        "demo", "studio b", "sip", CALLEE[0])
    assert isinstance(request.credential, Verified)
    pending.accept()
    state = gateway.invitation()
    assert state["state"] == "connected" and state["answered"] == 1
    assert state["member"]["media_to"] == "127.0.0.9:42000"


def test_a_retransmitted_2xx_gets_the_same_ack_again(gateway):
    _, invite, ack = gateway.connected_call()
    gateway.answer(invite)
    assert [wire(r) for r in gateway.requests()] == [wire(ack)]


def test_midi_flows_both_ways_with_the_journal(gateway):
    membership, _, _ = gateway.connected_call()
    port = gateway.outbound.invitations[0].ports.rtp_port
    gateway.reactor.inject(port, callee_rtp([b"\x90\x3c\x64"]), CALLEE_RTP)
    [(events, _)] = membership.published
    assert [event.data for event in events] == [b"\x90\x3c\x64"]
    gateway.bus.fan_out([MidiEvent(b"\x90\x40\x50", NOW)], ALICE)
    gateway.bus.fan_out([MidiEvent(b"\x80\x40\x00", NOW)], ALICE)
    first, second = [RtpMidiPacket.parse(data) for data in gateway.reactor.take(CALLEE_RTP)]
    assert [m for _, m in first.commands] == [b"\x90\x40\x50"] and first.payload_type == 96
    assert second.journal is not None
    gateway.pump(5.2)
    reports = gateway.reactor.take(CALLEE_RTCP)
    assert reports and rtcp.read(reports[-1], 0).ssrc == first.ssrc


def test_the_callees_bye_ends_the_membership_and_the_gateway_calls_again(gateway):
    membership, invite, ack = gateway.connected_call()
    call = gateway.outbound.invitations[0].call
    gateway.reactor.inject(SIP_PORT, callee_request("BYE", call, 1), CALLEE)
    [ok] = gateway.requests()
    assert ok.status == 200 and ok.cseq == (1, "BYE")
    assert membership.left == ["bye"]
    state = gateway.invitation()
    assert state["state"] == "waiting" and state["last_reason"] == "bye"
    assert state["failures_in_a_row"] == 0 and 4.9 <= state["retry_in"] <= 5.0
    assert rtcp.read(gateway.reactor.take(CALLEE_RTCP)[-1], 0).bye
    gateway.pump(5.1)
    [invite2] = gateway.requests()
    assert invite2.method == "INVITE" and invite2.call_id != invite.call_id
    assert gateway.invitation()["attempts"] == 2


def test_failures_are_acked_in_the_transaction_and_retried_with_back_off(gateway):
    [invite] = gateway.requests()
    gateway.respond(invite, 486, "Busy Here", [("Retry-After", "7")])
    [ack] = gateway.requests()
    assert ack.method == "ACK" and ack.get("via") == invite.get("via")
    gateway.respond(invite, 486, "Busy Here", [("Retry-After", "7")])    # retransmitted
    [ack_again] = gateway.requests()
    assert wire(ack_again) == wire(ack)
    state = gateway.invitation()
    assert state["state"] == "waiting" and state["last_status"] == 486
    assert state["last_reason"] == "486 Busy Here" and 6.9 <= state["retry_in"] <= 7.0
    gateway.pump(7.1)
    [second] = gateway.requests()
    gateway.respond(second, 503, "Service Unavailable")
    gateway.requests()
    assert 9.9 <= gateway.invitation()["retry_in"] <= 10.0     # 5 s doubled
    assert gateway.invitation()["failures_in_a_row"] == 2
    assert gateway.bus.joins == []


def test_no_response_is_retransmitted_on_timer_a_and_given_up_on_timer_b(gateway):
    [invite] = gateway.requests()
    sent_at = []
    for step in range(int(33 / 0.05)):
        gateway.reactor.advance(0.05)
        for data in gateway.reactor.take(CALLEE):
            assert wire(parse_sip(data)) == wire(invite)
            sent_at.append(gateway.reactor.seconds() - NOW)
    # Timer A: T1, doubling (no T2 cap for INVITE), each within a tick of its time.
    assert len(sent_at) == 6
    assert all(0 <= sent - due < 0.06 for sent, due in zip(sent_at, [0.5, 1.5, 3.5, 7.5,
                                                                     15.5, 31.5]))
    assert gateway.invitation()["last_reason"] == "no response"
    assert gateway.invitation()["state"] == "waiting"


def test_wrong_credentials_fail_without_a_loop(gateway):
    [invite] = gateway.requests()
    gateway.challenge(invite)
    _, again = gateway.requests()
    gateway.challenge(again)                    # not stale: the password was wrong
    [ack] = gateway.requests()
    assert ack.method == "ACK"
    state = gateway.invitation()
    assert state["state"] == "waiting" and state["last_status"] == 401
    assert "credentials were refused" in state["last_reason"]


def test_a_407_is_answered_with_proxy_authorization_and_sha256():
    gateway = Gateway()
    [invite] = gateway.requests()
    gateway.challenge(invite, status=407, algorithm="SHA-256", qop=False)
    _, again = gateway.requests()
    value = again.get("proxy-authorization")
    assert value.startswith('Digest username="gw"') and "algorithm=SHA-256" in value
    assert "qop" not in value and again.get("authorization") is None
    nonce = value.split('nonce="')[1].split('"')[0]
    expected = response_digest("SHA-256", "gw", "callee", PASSWORD, "INVITE", URI, nonce)
    assert f'response="{expected}"' in value


def test_without_a_password_a_challenge_fails_the_call():
    gateway = Gateway(invite={"password": None})
    [invite] = gateway.requests()
    gateway.challenge(invite)
    [ack] = gateway.requests()
    assert ack.method == "ACK"
    assert "no password" in gateway.invitation()["last_reason"]


def test_an_answer_without_rtp_midi_is_acked_then_ended_with_a_bye(gateway):
    [invite] = gateway.requests()
    pcmu = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.9\r\ns=-\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\n"
            b"m=audio 42000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    gateway.answer(invite, pcmu)
    ack, bye = gateway.requests()
    assert ack.method == "ACK" and bye.method == "BYE" and bye.cseq[0] > invite.cseq[0]
    assert bye.uri == f"sip:callee@{CALLEE[0]}:{CALLEE[1]}"
    assert gateway.bus.joins == []
    state = gateway.invitation()
    assert state["state"] == "waiting" and "answer refused" in state["last_reason"]
    assert gateway.outbound.counts["answers_refused"] == 1


def test_a_full_session_hangs_up_the_answered_call(gateway):
    [invite] = gateway.requests()
    gateway.answer(invite)
    gateway.requests()
    gateway.bus.pending()[0].refuse(values.SESSION_FULL)
    [bye] = gateway.requests()
    assert bye.method == "BYE"
    assert "session refused" in gateway.invitation()["last_reason"]


def test_a_ringing_call_is_cancelled_after_ring_timeout_and_the_487_acked():
    gateway = Gateway(invite={"ring_timeout": 5})
    [invite] = gateway.requests()
    gateway.respond(invite, 180, "Ringing")
    gateway.pump(5.1)
    [cancel] = gateway.requests()
    assert cancel.method == "CANCEL" and cancel.cseq == (invite.cseq[0], "CANCEL")
    assert cancel.get("via") == invite.get("via") and cancel.uri == invite.uri
    gateway.respond(cancel, 200, "OK")
    gateway.respond(invite, 487, "Request Terminated")
    [ack] = gateway.requests()
    assert ack.method == "ACK" and ack.cseq == (invite.cseq[0], "ACK")
    assert gateway.invitation()["last_reason"] == "no answer"


def test_the_bus_kicking_the_peer_sends_our_bye(gateway):
    membership, _, _ = gateway.connected_call()
    gateway.bus.kick(membership, "kicked")
    [bye] = gateway.requests()
    assert bye.method == "BYE" and bye.uri == f"sip:callee@{CALLEE[0]}:{CALLEE[1]}"
    assert bye.get("to").endswith(";tag=callee7")
    gateway.respond(bye, 200, "OK")
    assert gateway.invitation()["state"] == "waiting"


def test_a_reinvite_with_the_same_media_gets_our_offer_and_other_media_488(gateway):
    _, invite, _ = gateway.connected_call()
    call = gateway.outbound.invitations[0].call
    gateway.reactor.inject(SIP_PORT, callee_request("INVITE", call, 2, answer_sdp()), CALLEE)
    [ok] = gateway.requests()
    assert ok.status == 200 and ok.body == invite.body
    gateway.reactor.inject(SIP_PORT, callee_request("INVITE", call, 3,
                                                   answer_sdp(media_port=44000)), CALLEE)
    [refused] = gateway.requests()
    assert refused.status == 488


def test_stopping_says_bye_and_calls_no_more(gateway):
    membership, _, _ = gateway.connected_call()
    gateway.door.stopService()
    [bye] = gateway.requests()
    assert bye.method == "BYE" and membership.left == ["shutdown"]
    assert gateway.invitation()["state"] == "stopped"
    gateway.pump(10)
    assert [r for r in gateway.requests() if r.method == "INVITE"] == []


def test_stopping_while_ringing_cancels(gateway):
    [invite] = gateway.requests()
    gateway.respond(invite, 180, "Ringing")
    gateway.door.stopService()
    [cancel] = gateway.requests()
    assert cancel.method == "CANCEL"


def test_over_tcp_the_gateway_connects_and_the_call_ends_with_its_connection():
    gateway = Gateway(invite={"uri": f"sip:demo@{CALLEE[0]}:{CALLEE[1]};transport=tcp"})
    [(host, port, factory, tls)] = gateway.reactor.connecting
    assert (host, port, tls) == (CALLEE[0], CALLEE[1], False)
    assert gateway.invitation()["state"] == "connecting"
    stream = factory.buildProtocol(IPv4Address("TCP", *CALLEE))
    transport = StringTransport(peerAddress=IPv4Address("TCP", *CALLEE))
    stream.makeConnection(transport)
    framer = StreamFramer()

    def requests():
        data, _ = transport.value(), transport.clear()
        return [parse_sip(frame) for frame in framer.feed(data)]
    [invite] = requests()
    assert invite.get("via").startswith("SIP/2.0/TCP 127.0.0.1:5060;")
    assert invite.get("contact") == "<sip:gw@127.0.0.1:5060;transport=tcp>"
    stream.dataReceived(response_to(invite, 200, "OK", [
        ("Contact", "<sip:callee@10.1.1.1:5080;transport=tcp>"),
        ("Content-Type", "application/sdp")], answer_sdp(), "tcptag"))
    [ack] = requests()                         # down the same connection
    assert ack.method == "ACK" and ack.uri == "sip:callee@10.1.1.1:5080;transport=tcp"
    membership = gateway.bus.pending()[0].accept()
    assert gateway.invitation()["state"] == "connected"
    stream.connectionLost(None)
    assert membership.left == ["closed"]
    assert gateway.invitation()["state"] == "waiting"
    gateway.pump(5.1)
    assert len(gateway.reactor.connecting) == 2


def test_status_and_metrics_show_each_invitation(gateway):
    gateway.connected_call()
    status = gateway.door.status()["invite"]
    assert status["connected"] == 1 and status["answered"] == 1
    [state] = status["invitations"]
    assert (state["session"], state["uri"], state["transport"], state["name"]) == (
        "demo", URI, "UDP", "studio b")
    assert PASSWORD not in repr(status)
    samples = {(family.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in metrics.SipCollector(gateway.door).collect()
               for sample in family.samples}
    assert samples[("netgateway_sip_invite_connected", ())] == 1
    assert samples[("netgateway_sip_invite_attempts", ())] == 1
    assert samples[("netgateway_sip_invite_outcomes", (("outcome", "answered"),))] == 1


def problems(invite):
    with pytest.raises(Exception) as error:
        parse({"sessions": [{"name": "demo", "passphrase": DEMO_PASSPHRASE}],
               "web": {"enabled": False}, "sip": {"invite": invite}})
    return str(error.value)


def test_sip_invite_is_validated():
    text = problems([{"session": "nowhere", "uri": "sip:demo@example.org"},
                     {"session": "demo", "uri": "sips:demo@127.0.0.1", "transport": "udp"},
                     {"session": "demo", "uri": "sip:x@127.0.0.1", "retry": 10,
                      "retry_max": 5}])
    assert "sip.invite[0].session" in text and "sip.invite[0].uri" in text
    assert "IP address" in text and "sip.invite[1].uri" in text and "tls" in text
    assert "sip.invite[2].retry_max" in text
    assert "sip.invite[0].transport" in problems([{"session": "demo", "uri": "sip:x@127.0.0.1",
                                                   "transport": "sctp"}])
    assert "sip.invite[0].tls_ca: expected a readable PEM file" in problems([{
        "session": "demo", "uri": "sips:x@127.0.0.1", "tls_ca": "/nonexistent/ca.pem"}])
    twice = {"session": "demo", "uri": "sip:x@127.0.0.1", "transport": "tcp"}
    assert "one tcp or tls call per peer address" in problems([twice, twice])


# --- INVITEs without an offer (the gateway offers in its 200) ------------------------------------

@pytest.fixture
def plain():
    gateway = Gateway(invite=False)
    yield gateway
    if gateway.door.running:
        gateway.door.stopService()


def offerless_call(gateway, agent):
    uri = "sip:demo@127.0.0.1"
    gateway.reactor.inject(SIP_PORT, agent.request("INVITE", uri), agent.address)
    [challenge] = gateway.requests(agent.address)
    gateway.reactor.inject(SIP_PORT, agent.ack(uri, agent.cseq, header_param(
        challenge.get("to"), "tag"), agent.last_branch), agent.address)
    gateway.reactor.inject(SIP_PORT, agent.request("INVITE", uri, [agent.authorization(
        challenge, "INVITE", uri)]), agent.address)
    assert gateway.requests(agent.address) == []        # waiting for the bus
    membership = gateway.bus.pending()[0].accept()
    [ok] = gateway.requests(agent.address)
    return membership, ok


def caller_answer(offer_port, rtp_port=CALLER_RTP[1]):
    return ("v=0\r\no=caller 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {rtp_port} RTP/AVP 96\r\na=rtpmap:96 rtp-midi/44100\r\n").encode()


def test_an_invite_without_an_offer_gets_ours_and_the_ack_brings_the_answer(plain):
    agent = Agent(user="ann", address=CALLER)
    membership, ok = offerless_call(plain, agent)
    assert ok.status == 200 and ok.get("content-type") == "application/sdp"
    sdp = Sdp.parse(ok.body)
    media = sdp.media()
    assert sdp.rtpmap() == (96, "rtp-midi", 44100) and sdp.attribute("sendrecv") == ""
    assert MEDIA_MIN <= media.port <= MEDIA_MIN + 2
    assert plain.door.agents.counts["offers_made"] == 1
    # Nothing is sent to the caller before the answer.
    plain.bus.fan_out([MidiEvent(b"\x90\x40\x50", NOW)], ALICE)
    assert plain.reactor.take(CALLER_RTP) == []
    plain.reactor.inject(SIP_PORT, agent.ack("sip:demo@127.0.0.1", agent.cseq, header_param(
        ok.get("to"), "tag"), body=caller_answer(media.port)), agent.address)
    plain.bus.fan_out([MidiEvent(b"\x90\x41\x50", NOW)], ALICE)
    [packet] = [RtpMidiPacket.parse(data) for data in plain.reactor.take(CALLER_RTP)]
    assert [m for _, m in packet.commands] == [b"\x90\x41\x50"]
    plain.reactor.inject(media.port, callee_rtp([b"\x90\x3c\x64"]), CALLER_RTP)
    assert [event.data for events, _ in membership.published for event in events] == [
        b"\x90\x3c\x64"]
    [member] = plain.door.agents.members.values()
    assert member.describe()["media_to"] == f"{CALLER_RTP[0]}:{CALLER_RTP[1]}"


def test_an_ack_without_the_answer_is_hung_up(plain):
    agent = Agent(user="ann", address=CALLER)
    membership, ok = offerless_call(plain, agent)
    plain.reactor.inject(SIP_PORT, agent.ack("sip:demo@127.0.0.1", agent.cseq, header_param(
        ok.get("to"), "tag")), agent.address)
    [bye] = plain.requests(agent.address)
    assert bye.method == "BYE" and membership.left == ["answer_refused"]
    assert plain.door.agents.core.counts["acks_without_answer"] == 1
    assert plain.door.agents.counts["answers_refused"] == 1
    assert plain.door.agents.members == {}


def test_over_tls_the_gateway_verifies_the_callee_against_tls_ca(tmp_path):
    from tests.certificates import self_signed
    cert, _ = self_signed(tmp_path)
    gateway = Gateway(invite={"uri": f"sips:demo@{CALLEE[0]}:5061", "tls_ca": cert})
    [(host, port, factory, tls)] = gateway.reactor.connecting
    assert (host, port, tls) == (CALLEE[0], 5061, True)
    assert gateway.invitation()["transport"] == "TLS"
    factory.clientConnectionFailed(None, types.SimpleNamespace(
        getErrorMessage=lambda: "certificate verify failed"))
    state = gateway.invitation()
    assert state["state"] == "waiting" and "certificate verify failed" in state["last_reason"]
