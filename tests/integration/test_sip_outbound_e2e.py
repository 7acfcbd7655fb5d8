"""The SIP door calling out (``sip.invite``) and offering (INVITEs without an offer),
end to end against real ``twistd`` processes.

* Gateway A calls gateway B (a second real twistd netgateway, whose standard
  user agent door answers rtp-midi offers) over UDP, TCP and TLS: A answers B's
  401 with digest, the called peer joins A's session and A joins B's; a
  WebSocket member on A plays and one on B hears it, and back. B stopping is a
  BYE to A, which calls again once B is back; A stopping is a BYE to B.
* pjsua2 (PyPI pjsua2-python) as the callee: it refuses A's rtp-midi offer
  with 488 before its application can rewrite an answer (it has no rtp-midi
  codec); A ACKs each 488 in the transaction and calls again with back-off.
* INVITEs without an offer: sipsak sends one from a file and gets our rtp-midi
  offer in the 200 (its ACK has no answer, so the gateway hangs up); the test's
  own RFC 6295 endpoint sends one, answers in its ACK and plays with a
  WebSocket member.
"""

import asyncio
import json
import random
import shutil
import socket
import subprocess
import sys
import time

import pytest

from gateway.protocols.sip.digest import response_digest
from gateway.protocols.sip.message import parse as parse_sip
from gateway.protocols.sip.sdp import Sdp
from tests.certificates import self_signed
from tests.conftest import REPO, free_port, need_external
from tests.integration.test_sip_ua_e2e import Endpoint, free_udp_block, sipsak
from tests.wsclient import JamClient

pytestmark = pytest.mark.external

PASSPHRASE = "play along with netgateway demo"
QUIET = {"oscgroups": {"enabled": False}, "rtmp": {"enabled": False}}


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def sip_section(port, tls_port=None, cert=None, invite=()):
    section = {"host": "127.0.0.1", "port": port,
               "media": {"host": "127.0.0.5", "port_min": free_udp_block(4), "port_max": 0},
               "uas": {"tcp_port": port, "tls_port": tls_port,
                       "media": {"port_min": free_udp_block(8), "port_max": 0}},
               "invite": list(invite)}
    section["media"]["port_max"] = section["media"]["port_min"] + 3
    section["uas"]["media"]["port_max"] = section["uas"]["media"]["port_min"] + 7
    if cert is not None:
        section["uas"]["tls"] = {"certificate": cert[0], "key": cert[1]}
    return section


def members(gateway, door="sip"):
    return [member for session in gateway.status()["sessions"] if session["name"] == "demo"
            for member in session["members"] if member["door"] == door]


def invitation(gateway):
    [state] = gateway.status()["doors"]["sip"]["invite"]["invitations"]
    return state


def user_agents(gateway):
    return gateway.status()["doors"]["sip"]["user_agents"]


# --- gateway A calls gateway B ----------------------------------------------------------------

@pytest.fixture
def pair(gateway_factory, tmp_path):
    """``start(transport)``: gateway B, then gateway A with sip.invite to B's session."""

    def start(transport):
        port_b = free_udp_block(2, tcp_too=True)
        tls_b = free_port() if transport == "tls" else None
        cert = self_signed(tmp_path) if transport == "tls" else None
        config_b = dict(QUIET, sip=sip_section(port_b, tls_b, cert))
        gateway_b = gateway_factory(config_b)
        if transport == "tls":
            uri = f"sips:demo@127.0.0.1:{tls_b}"
        else:
            uri = f"sip:demo@127.0.0.1:{port_b}" + (";transport=tcp" if transport == "tcp"
                                                    else "")
        entry = {"session": "demo", "uri": uri, "name": "gateway-b", "username": "gateway-a",
                 "password": PASSPHRASE, "retry": 1.0, "retry_max": 4.0}
        if cert is not None:
            entry["tls_ca"] = cert[0]
        gateway_a = gateway_factory(dict(QUIET, sip=sip_section(
            free_udp_block(2, tcp_too=True), invite=[entry])))
        return gateway_a, gateway_b, config_b

    return start


async def play_both_ways(gateway_a, gateway_b):
    alice = await JamClient.connect(gateway_a.ws_url)
    assert (await alice.join("demo", PASSPHRASE, "alice"))["type"] == "joined"
    bob = await JamClient.connect(gateway_b.ws_url)
    assert (await bob.join("demo", PASSPHRASE, "bob"))["type"] == "joined"
    alice.send_midi([0x90, 60, 100])
    heard = await bob.midi()
    assert heard["data"] == [0x90, 60, 100] and heard["from"]["name"] == "gateway-a", heard
    alice.send_midi([0x80, 60, 0])
    assert (await bob.midi())["data"][:2] == [0x80, 60]
    bob.send_midi([0x90, 64, 90])
    heard = await alice.midi()
    assert heard["data"] == [0x90, 64, 90] and heard["from"]["name"] == "gateway-b", heard
    bob.send_midi([0x80, 64, 0])
    assert (await alice.midi())["data"][:2] == [0x80, 64]
    # A burst of notes, each way: every one arrives, in order.
    for note in range(70, 80):
        alice.send_midi([0x90, note, 80])
        alice.send_midi([0x80, note, 0])
    ons = [(await bob.midi())["data"] for _ in range(20)]
    assert [data[1] for data in ons if data[0] == 0x90] == list(range(70, 80))
    alice.close()
    bob.close()


def connected(gateway_a, gateway_b, answered=1):
    state = wait_for(lambda: invitation(gateway_a)["state"] == "connected"
                     and invitation(gateway_a)["answered"] >= answered
                     and invitation(gateway_a), timeout=20)
    assert state, invitation(gateway_a)
    [called] = wait_for(lambda: members(gateway_a))
    [caller] = wait_for(lambda: members(gateway_b))
    assert called["name"] == "gateway-b" and caller["name"] == "gateway-a"
    return state, called, caller


def test_gateway_a_calls_gateway_b_over_udp_and_they_jam_bye_both_ways_and_a_redial(
        pair, gateway_factory):
    gateway_a, gateway_b, config_b = pair("udp")
    state, called, caller = connected(gateway_a, gateway_b)
    assert state["transport"] == "UDP" and called["transport"] == "UDP"
    assert caller["transport"] == "UDP" and caller["player"] == "gateway-a"
    assert user_agents(gateway_b)["core"]["challenges"] >= 1       # A answered B's 401
    core_a = gateway_a.status()["doors"]["sip"]["invite"]["core"]
    assert core_a["challenges_answered"] >= 1 and core_a["invite_answered_2xx"] >= 1
    asyncio.run(asyncio.wait_for(play_both_ways(gateway_a, gateway_b), 40))
    media = gateway_a.status()["doors"]["sip"]["invite"]["media_packets"]
    assert media["rtp_in"] >= 2 and media["rtp_out"] >= 2
    # B stops: its BYE ends A's call, and A calls again until B is back.
    gateway_b.stop()
    state = wait_for(lambda: invitation(gateway_a)["state"] != "connected"
                     and invitation(gateway_a))
    assert state["last_reason"] == "bye", state
    assert wait_for(lambda: not members(gateway_a))
    gateway_b = gateway_factory(config_b)
    state, _, _ = connected(gateway_a, gateway_b, answered=2)
    assert state["attempts"] >= 2
    # A stops: its BYE ends B's member.
    gateway_a.stop()
    assert wait_for(lambda: not members(gateway_b)), members(gateway_b)
    assert user_agents(gateway_b)["core"]["calls_ended_bye"] >= 1
    assert PASSPHRASE not in gateway_a.log


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_gateway_a_calls_gateway_b_over_a_stream(pair, transport):
    gateway_a, gateway_b, _ = pair(transport)
    state, called, caller = connected(gateway_a, gateway_b)
    assert state["transport"] == transport.upper() and caller["transport"] == transport.upper()
    asyncio.run(asyncio.wait_for(play_both_ways(gateway_a, gateway_b), 40))
    gateway_a.stop()
    assert wait_for(lambda: not members(gateway_b)), members(gateway_b)
    assert user_agents(gateway_b)["core"]["calls_ended_bye"] >= 1


# --- pjsua2 as the callee ------------------------------------------------------------------------

def test_pjsua2_refuses_the_rtp_midi_offer_and_the_gateway_acks_and_backs_off(gateway_factory):
    """pjsua2 cannot be made to answer rtp-midi as a callee: it checks the offer against
    its codecs before the application hears of the call (sip_outbound_callee.py). What
    it shows is the failure path against a real agent: INVITE, 488 with a Warning, the
    transaction's ACK (pjsua2 never resends its 488), and calls again with back-off."""
    try:
        import pjsua2  # noqa: F401
    except ImportError:
        need_external(False, "pjsua2 is needed (pjsua2-python, setup.cfg test extra)")
    callee_port = free_port(kind=socket.SOCK_DGRAM)
    callee = subprocess.Popen([sys.executable, "-m", "tests.integration.sip_outbound_callee",
                               str(callee_port), "9"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)                     # its transport is up
        entry = {"session": "demo", "uri": f"sip:callee@127.0.0.1:{callee_port}",
                 "name": "pjsua2", "retry": 1.0, "retry_max": 4.0}
        gateway = gateway_factory(dict(QUIET, sip=sip_section(
            free_udp_block(2, tcp_too=True), invite=[entry])))
        # The gateway's view while the callee still answers: once it has gone, a redial
        # meets a closed port and would end on another status.
        deadline = time.monotonic() + 7.0
        state = invitation(gateway)
        while state["failures_in_a_row"] < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
            state = invitation(gateway)
        output, _ = callee.communicate(timeout=30)
    finally:
        if callee.poll() is None:
            callee.kill()
            callee.wait()
    lines = [line for line in output.splitlines() if line.startswith("{")]
    assert lines, output[-3000:]
    seen = json.loads(lines[-1])
    invites = [item for item in seen["received"] if item.startswith("INVITE ")]
    acks = [item for item in seen["received"] if item.startswith("ACK ")]
    refusals = [item for item in seen["sent"] if item.startswith("488/INVITE ")]
    assert len(invites) >= 3 and seen["calls"] == 0, seen
    assert sorted(item.split()[1] for item in acks) == sorted(
        item.split()[1] for item in invites), seen          # each 488 ACKed, same CSeq
    assert len(refusals) == len(invites), seen               # so never resent
    assert any("No suitable codec" in warning for warning in seen["warnings"]), seen
    assert state["last_status"] == 488 and "Not Acceptable Here" in state["last_reason"]
    assert state["failures_in_a_row"] >= 3 and state["attempts"] <= len(invites), state
    assert gateway.status()["doors"]["sip"]["invite"]["core"]["invite_answered_4xx"] >= 3
    assert not members(gateway)


# --- INVITEs without an offer ------------------------------------------------------------------------

@pytest.fixture
def offering(gateway_factory):
    need_external(shutil.which("sipsak") is not None, "sipsak is needed (Debian package sipsak)")
    port = free_udp_block(2, tcp_too=True)
    gateway = gateway_factory(dict(QUIET, sip=sip_section(port)))
    gateway.sip_port = port
    return gateway


OFFERLESS_INVITE = ("INVITE sip:demo@127.0.0.1:{port} SIP/2.0\r\n"
                    "Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{tag};rport\r\n"
                    "From: <sip:alice@127.0.0.1:{local}>;tag=sipsak{tag}\r\n"
                    "To: <sip:demo@127.0.0.1:{port}>\r\n"
                    "Call-ID: {tag}@127.0.0.1\r\n"
                    "CSeq: 1 INVITE\r\n"
                    "Contact: <sip:alice@127.0.0.1:{local}>\r\n"
                    "Max-Forwards: 70\r\n"
                    "Content-Length: 0\r\n\r\n")


def test_sipsak_invites_without_an_offer_and_gets_ours_in_the_200(offering, tmp_path):
    port = offering.sip_port
    local = free_port(kind=socket.SOCK_DGRAM)
    invite = tmp_path / "invite-nobody.txt"
    invite.write_text(OFFERLESS_INVITE.format(port=port, local=local, tag="offerless"))
    code, output = sipsak("-vv", "-f", str(invite), "-s", f"sip:demo@127.0.0.1:{port}",
                          "-l", str(local), "-u", "alice", "-a", PASSPHRASE, "-i")
    assert code == 0 and "200 OK" in output, output
    body = output.split("200 OK", 1)[1]
    assert "m=audio " in body and "a=rtpmap:96 rtp-midi/44100" in body, output
    assert "a=sendrecv" in body and "c=IN IP4 127.0.0.1" in body, output
    agents = wait_for(lambda: user_agents(offering)["core"].get("acks_without_answer")
                      and user_agents(offering))
    # sipsak's ACK carries no answer: the gateway hangs up (its BYE), the member leaves.
    assert agents["offers_made"] == 1 and agents["answers_refused"] == 1, agents
    assert wait_for(lambda: not members(offering))


class RawAgent:
    """A UDP SIP caller of the test's own, for an offerless call answered in its ACK."""

    def __init__(self, gateway_port):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(5)
        self.local = self.socket.getsockname()[1]
        self.gateway = ("127.0.0.1", gateway_port)
        self.uri = f"sip:demo@127.0.0.1:{gateway_port}"
        self.tag = f"raw{random.randrange(1 << 30)}"
        self.call_id = f"{self.tag}@127.0.0.1"

    def send(self, method, cseq, headers=(), body="", to_tag=None, branch=None):
        lines = [f"{method} {self.uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:{self.local};branch={branch or f'z9hG4bK{self.tag}{cseq}{method}'};rport",
                 "Max-Forwards: 70", f"From: <sip:raw@127.0.0.1:{self.local}>;tag={self.tag}",
                 f"To: <{self.uri}>" + (f";tag={to_tag}" if to_tag else ""),
                 f"Call-ID: {self.call_id}", f"CSeq: {cseq} {method}",
                 f"Contact: <sip:raw@127.0.0.1:{self.local}>", *headers]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        self.socket.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(), self.gateway)

    def final(self):
        for _ in range(20):
            response = parse_sip(self.socket.recv(65536))
            if response.status >= 200:
                return response
        raise AssertionError("no final response")

    def authorization(self, challenge, method):
        value = challenge.get("www-authenticate")
        nonce = value.split('nonce="')[1].split('"')[0]
        realm = value.split('realm="')[1].split('"')[0]
        response = response_digest("MD5", "raw", realm, PASSPHRASE, method, self.uri, nonce,
                                   "00000001", "c0ffee", "auth")
        return (f'Authorization: Digest username="raw", realm="{realm}", nonce="{nonce}",'
                f' uri="{self.uri}", response="{response}", algorithm=MD5, qop=auth,'
                f' nc=00000001, cnonce="c0ffee"')


def test_an_offerless_caller_answers_in_its_ack_and_plays_with_a_websocket_member(offering):
    rtp_port = free_udp_block(2)
    agent = RawAgent(offering.sip_port)

    async def scenario():
        loop = asyncio.get_running_loop()
        browser = await JamClient.connect(offering.ws_url)
        assert (await browser.join("demo", PASSPHRASE, "browser"))["type"] == "joined"
        transport, endpoint = await loop.create_datagram_endpoint(
            lambda: Endpoint(lose_every=0), local_addr=("127.0.0.1", rtp_port))
        agent.send("INVITE", 1)
        challenge = await loop.run_in_executor(None, agent.final)
        assert challenge.status == 401
        to_tag = challenge.get("to").split("tag=")[1]
        agent.send("ACK", 1, to_tag=to_tag, branch=f"z9hG4bK{agent.tag}1INVITE")
        agent.send("INVITE", 2, [agent.authorization(challenge, "INVITE")])
        ok = await loop.run_in_executor(None, agent.final)
        assert ok.status == 200, ok
        offer = Sdp.parse(ok.body)
        assert offer.rtpmap() == (96, "rtp-midi", 44100)
        answer = ("v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                  f"m=audio {rtp_port} RTP/AVP 96\r\na=rtpmap:96 rtp-midi/44100\r\n")
        agent.send("ACK", 2, to_tag=ok.get("to").split("tag=")[1], body=answer)
        endpoint.gateway_media = (offer.connection(), offer.media().port)
        await asyncio.sleep(0.3)
        endpoint.play([0x90, 62, 100])
        assert (await browser.midi())["data"] == [0x90, 62, 100]
        browser.send_midi([0x90, 65, 90])
        for _ in range(100):
            if endpoint.heard:
                break
            await asyncio.sleep(0.02)
        assert endpoint.heard[:1] == [bytes([0x90, 65, 90])], endpoint.heard
        [member] = members(offering)
        assert member["name"] == "raw" and member["media_to"] == f"127.0.0.1:{rtp_port}"
        agent.send("BYE", 3, to_tag=ok.get("to").split("tag=")[1])
        assert (await loop.run_in_executor(None, agent.final)).status == 200
        browser.close()
        transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 40))
    assert wait_for(lambda: not members(offering))
    assert user_agents(offering)["offers_made"] == 1
    agent.socket.close()
