"""Standard SIP user agents against a real ``twistd``: the SIP door's second part end to end.

Clients nobody on this project wrote: Debian's sipsak (OPTIONS, REGISTER with
digest qop=auth, a wrong passphrase, INVITE with an rtp-midi SDP file and BYE,
over UDP and TCP), PyPI's pyVoIP (REGISTER, 401 without qop) and pjsua2
(REGISTER over UDP and TLS, a call over TLS whose offer it rewrites to
rtp-midi), and the test's own RFC 6295 endpoint (the gateway's codec: an
RtpMidiStream each way) negotiated by a sipsak INVITE, exchanging notes with a
WebSocket member, with every tenth packet lost and repaired. Then fuzzing:
random datagrams and streams at the real process, counted, never a crash.

UDP is shared with the sfront server (``sip.port``); the sfront door's own end
to end tests are tests/integration/test_sfront_e2e.py.
"""

import asyncio
import json
import random
import shutil
import socket
import ssl
import subprocess
import sys
import time

import pytest

from gateway.midi import MidiEvent
from gateway.protocols.rtpmidi.media import RtpMidiStream
from gateway.protocols.rtpmidi.payload import RtpMidiPacket
from gateway.protocols.rtpmidi.stream import prepare
from gateway.protocols.sip import rtcp
from gateway.protocols.sip.digest import response_digest
from gateway.protocols.sip.framing import StreamFramer
from gateway.protocols.sip.message import parse as parse_sip
from tests.certificates import self_signed
from tests.conftest import REPO, free_port, need_external
from tests.wsclient import JamClient

pytestmark = pytest.mark.external

PASSPHRASE = "play along with netgateway demo"
RATE = 44100


def free_udp_block(count, tcp_too=False):
    """The first port of ``count`` consecutive free UDP ports (even; TCP too if asked)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000, 2)
        sockets = []
        try:
            for number in range(base, base + count):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(probe)
                probe.bind(("127.0.0.1", number))
            if tcp_too:
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("127.0.0.1", base))
            return base
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
    raise RuntimeError("no free block of ports")


@pytest.fixture
def sip_gateway(gateway_factory, tmp_path):
    need_external(shutil.which("sipsak") is not None, "sipsak is needed (Debian package sipsak)")
    cert, key = self_signed(tmp_path)
    port = free_udp_block(2, tcp_too=True)
    override = {"sip": {
        "host": "127.0.0.1", "port": port,
        "media": {"host": "127.0.0.5", "port_min": free_udp_block(4), "port_max": 0},
        "uas": {"tcp_port": port, "tls_port": free_port(), "realm": "netgateway",
                "tls": {"certificate": cert, "key": key},
                "media": {"port_min": free_udp_block(8), "port_max": 0}}}}
    sip = override["sip"]
    sip["media"]["port_max"] = sip["media"]["port_min"] + 3
    sip["uas"]["media"]["port_max"] = sip["uas"]["media"]["port_min"] + 7
    gateway = gateway_factory(override)
    gateway.sip_port = port
    gateway.tls_port = sip["uas"]["tls_port"]
    gateway.cert = cert
    return gateway


def sipsak(*arguments, timeout=30):
    result = subprocess.run(["sipsak", *arguments], capture_output=True, text=True,
                            timeout=timeout)
    return result.returncode, result.stdout + result.stderr


def sip_members(gateway):
    return [member for session in gateway.status()["sessions"] if session["name"] == "demo"
            for member in session["members"] if member["door"] == "sip"]


def user_agents(gateway):
    return gateway.status()["doors"]["sip"]["user_agents"]


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


INVITE = ("INVITE sip:demo@127.0.0.1:{port} SIP/2.0\r\n"
          "Via: SIP/2.0/{transport} 127.0.0.1:{local};branch=z9hG4bK{tag}inv;rport\r\n"
          "From: <sip:alice@127.0.0.1:{local}>;tag=sipsak{tag}\r\n"
          "To: <sip:demo@127.0.0.1:{port}>\r\n"
          "Call-ID: {tag}@127.0.0.1\r\n"
          "CSeq: 1 INVITE\r\n"
          "Contact: <sip:alice@127.0.0.1:{local}>\r\n"
          "Max-Forwards: 70\r\n"
          "Content-Type: application/sdp\r\n"
          "Content-Length: {length}\r\n\r\n{body}")
BYE = ("BYE sip:demo@127.0.0.1:{port} SIP/2.0\r\n"
       "Via: SIP/2.0/{transport} 127.0.0.1:{local};branch=z9hG4bK{tag}bye;rport\r\n"
       "From: <sip:alice@127.0.0.1:{local}>;tag=sipsak{tag}\r\n"
       "To: <sip:demo@127.0.0.1:{port}>\r\n"
       "Call-ID: {tag}@127.0.0.1\r\n"
       "CSeq: 3 BYE\r\n"
       "Max-Forwards: 70\r\n"
       "Content-Length: 0\r\n\r\n")


def midi_sdp(rtp_port):
    return ("v=0\r\no=sipsak 1 1 IN IP4 127.0.0.1\r\ns=midi\r\nc=IN IP4 127.0.0.1\r\n"
            f"t=0 0\r\nm=audio {rtp_port} RTP/AVP 96\r\na=rtpmap:96 rtp-midi/44100\r\n"
            "a=fmtp:96 j_sec=recj; j_update=closed-loop; tsmode=comex\r\n")


def call_files(tmp_path, port, transport, rtp_port, tag):
    local = free_port(kind=socket.SOCK_DGRAM)
    body = midi_sdp(rtp_port)
    fields = {"port": port, "local": local, "transport": transport, "tag": tag}
    invite, bye = tmp_path / f"invite-{tag}.txt", tmp_path / f"bye-{tag}.txt"
    invite.write_text(INVITE.format(length=len(body), body=body, **fields))
    bye.write_text(BYE.format(**fields))
    return local, str(invite), str(bye)


def transport_option(transport):
    return ["-E", "tcp"] if transport == "TCP" else []


# --- sipsak -------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_sipsak_options(sip_gateway, transport):
    code, output = sipsak("-vv", *transport_option(transport), "-s",
                          f"sip:demo@127.0.0.1:{sip_gateway.sip_port}", "-H", "127.0.0.1")
    assert code == 0 and "200 OK" in output, output


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_sipsak_registers_with_digest_and_a_wrong_passphrase_is_refused(sip_gateway,
                                                                       transport):
    local = free_port(kind=socket.SOCK_DGRAM)
    register = ["-U", *transport_option(transport), "-C", f"sip:alice@127.0.0.1:{local}",
                "-s", f"sip:demo@127.0.0.1:{sip_gateway.sip_port}", "-u", "alice",
                "-a", PASSPHRASE, "-x", "300", "-vv", "-H", "127.0.0.1"]
    code, output = sipsak(*register)
    assert code == 0 and "completed successful" in output, output
    wrong = list(register)
    wrong[wrong.index(PASSPHRASE)] = "not the passphrase at all"
    code, output = sipsak(*wrong)
    assert code != 0 and "403" in output, output
    agents = user_agents(sip_gateway)
    assert agents["core"]["digest_failures"] >= 1 and agents["core"]["registrations"] >= 1
    assert PASSPHRASE not in sip_gateway.log and "not the passphrase" not in sip_gateway.log
    assert ("netgateway: refused join from 127.0.0.1 door=sip session='demo'"
            " reason=wrong_passphrase name='alice'") in sip_gateway.log


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_sipsak_invites_with_an_rtp_midi_sdp_file_and_says_bye(sip_gateway, tmp_path,
                                                                transport):
    port = sip_gateway.sip_port
    local, invite, bye = call_files(tmp_path, port, transport, 42000, f"t{transport.lower()}")
    # Over TCP sipsak picks its own port: a second run could not bind the first's (TIME_WAIT).
    bind = ["-l", str(local)] if transport == "UDP" else []
    code, output = sipsak("-vv", *transport_option(transport), "-f", invite, "-s",
                          f"sip:demo@127.0.0.1:{port}", *bind, "-u", "alice",
                          "-a", PASSPHRASE, "-i")
    assert code == 0 and "200 OK" in output and "rtp-midi/44100" in output, output
    if transport == "UDP":
        [member] = wait_for(lambda: sip_members(sip_gateway))
        assert member["name"] == "alice" and member["transport"] == "UDP"
    code, output = sipsak("-vv", *transport_option(transport), "-f", bye, "-s",
                          f"sip:demo@127.0.0.1:{port}", *bind, "-i")
    assert code == 0 and "200 OK" in output, output
    assert wait_for(lambda: not sip_members(sip_gateway))
    agents = user_agents(sip_gateway)
    assert agents[f"calls_answered_{transport.lower()}"] == 1


# --- pyVoIP and pjsua2 ------------------------------------------------------------------

def run_client(*arguments, timeout=40):
    result = subprocess.run([sys.executable, "-m", "tests.integration.sip_ua_clients",
                             *arguments], capture_output=True, text=True, timeout=timeout,
                            cwd=REPO)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"rc {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return json.loads(lines[-1]), result.stdout + result.stderr


def test_pyvoip_registers_with_a_401_and_no_qop(sip_gateway):
    try:
        import pyVoIP  # noqa: F401
    except ImportError:
        need_external(False, "pyVoIP is needed (setup.cfg test extra)")
    seen, output = run_client("pyvoip", "register", str(sip_gateway.sip_port), "demo",
                              PASSPHRASE, str(free_udp_block(42)))
    assert seen["status"] == "PhoneStatus.REGISTERED", output
    assert user_agents(sip_gateway)["core"]["registrations"] >= 1


def need_pjsua2():
    try:
        import pjsua2  # noqa: F401
    except ImportError:
        need_external(False, "pjsua2 is needed (pjsua2-python, setup.cfg test extra)")


@pytest.mark.parametrize("transport", ["udp", "tls"])
def test_pjsua2_registers(sip_gateway, transport):
    need_pjsua2()
    port = sip_gateway.tls_port if transport == "tls" else sip_gateway.sip_port
    seen, output = run_client("pjsua2", "register", transport, str(port), "alice", PASSPHRASE,
                              sip_gateway.cert)
    assert 200 in seen["reg_codes"], output


def test_pjsua2_calls_over_tls_with_an_rtp_midi_offer(sip_gateway):
    need_pjsua2()
    seen, output = run_client("pjsua2", "call", "tls", str(sip_gateway.tls_port), "pj",
                              PASSPHRASE, sip_gateway.cert)
    # pjsua2 takes the rtp-midi answer (CONFIRMED), then hangs up: it has no codec for it.
    assert "CONFIRMED" in seen["states"] and "DISCONNECTED" in seen["states"], output
    agents = user_agents(sip_gateway)
    assert agents["calls_answered_tls"] == 1
    assert wait_for(lambda: not sip_members(sip_gateway))


# --- TLS with a raw client --------------------------------------------------------------------

def test_a_tls_client_registers_and_calls_with_digest(sip_gateway):
    context = ssl.create_default_context(cafile=sip_gateway.cert)
    raw = socket.create_connection(("127.0.0.1", sip_gateway.tls_port), timeout=5)
    stream = context.wrap_socket(raw, server_hostname="127.0.0.1")
    framer = StreamFramer()
    local = stream.getsockname()

    def exchange(data, statuses):
        stream.sendall(data)
        seen = []
        while not seen or seen[-1].status not in statuses:
            seen += [parse_sip(frame) for frame in framer.feed(stream.recv(65536))
                     if frame != "ping"]
        return seen[-1]

    def request(method, uri, cseq, extra="", body="", to_tag=""):
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: SIP/2.0/TLS 127.0.0.1:{local[1]};branch=z9hG4bK{method}{cseq};rport",
                 "Max-Forwards: 70", "From: <sips:tess@127.0.0.1>;tag=tess1",
                 f"To: <sips:demo@127.0.0.1>{to_tag}", "Call-ID: tls-call@127.0.0.1",
                 f"CSeq: {cseq} {method}", f"Contact: <sips:tess@127.0.0.1:{local[1]}>"]
        if body:
            lines.append("Content-Type: application/sdp")
        lines += [line for line in extra.split("\r\n") if line]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    def authorization(challenge, method, uri):
        value = challenge.get("www-authenticate")
        nonce = value.split('nonce="')[1].split('"')[0]
        realm = value.split('realm="')[1].split('"')[0]
        response = response_digest("MD5", "tess", realm, PASSPHRASE, method, uri, nonce,
                                   "00000001", "c0ffee", "auth")
        return (f'Authorization: Digest username="tess", realm="{realm}", nonce="{nonce}",'
                f' uri="{uri}", response="{response}", algorithm=MD5, qop=auth,'
                f' nc=00000001, cnonce="c0ffee"')

    register_uri = "sips:127.0.0.1"
    challenge = exchange(request("REGISTER", register_uri, 1), {401})
    ok = exchange(request("REGISTER", register_uri, 2,
                          authorization(challenge, "REGISTER", register_uri)), {200, 403})
    assert ok.status == 200
    invite_uri = "sips:demo@127.0.0.1"
    body = midi_sdp(43000)
    challenge = exchange(request("INVITE", invite_uri, 3, body=body), {401})
    stream.sendall(request("ACK", invite_uri, 3))
    ok = exchange(request("INVITE", invite_uri, 4, authorization(challenge, "INVITE",
                                                                 invite_uri), body=body),
                  {200, 403, 488})
    assert ok.status == 200 and b"rtp-midi/44100" in ok.body
    assert "transport=tls" in ok.get("contact")
    to_tag = ";tag=" + ok.get("to").split("tag=")[1]
    stream.sendall(request("ACK", invite_uri, 4, to_tag=to_tag))
    [member] = wait_for(lambda: sip_members(sip_gateway))
    assert member["transport"] == "TLS" and member["name"] == "tess"
    assert exchange(request("BYE", invite_uri, 5, to_tag=to_tag), {200}).status == 200
    assert wait_for(lambda: not sip_members(sip_gateway))
    stream.close()


# --- an RTP-MIDI endpoint negotiated by SDP -----------------------------------------------------

class Endpoint(asyncio.DatagramProtocol):
    """The test's RFC 6295 endpoint: the gateway's own codec, one RtpMidiStream each way.

    Drops every ``lose_every``-th packet the gateway sends (journal repairs it).
    """

    def __init__(self, lose_every=10):
        self.stream = RtpMidiStream(0x7E57, 100, RATE, time.time(), 1.0, journal=True,
                                    payload_type=96, marker=True)
        self.heard = []
        self.lose_every = lose_every
        self.arrived = 0
        self.lost = 0
        self.transport = None
        self.gateway_media = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if rtcp.is_rtcp(data):
            return
        self.arrived += 1
        if self.lose_every and self.arrived % self.lose_every == 0:
            self.lost += 1
            return
        received = self.stream.receive(RtpMidiPacket.parse(data), time.time())
        self.heard += [bytes(event.data) for event in received.events]

    def play(self, *messages):
        now = time.time()
        packets, _ = prepare([MidiEvent(bytes(message), now) for message in messages], RATE)
        for packet in packets:
            self.transport.sendto(self.stream.packet(packet, self.stream.ticks(now), now),
                                  self.gateway_media)


def test_an_rtp_midi_endpoint_plays_with_a_websocket_member_through_loss(sip_gateway,
                                                                         tmp_path):
    port = sip_gateway.sip_port
    rtp_port = free_udp_block(2)
    local, invite, bye = call_files(tmp_path, port, "UDP", rtp_port, "media")

    async def scenario():
        loop = asyncio.get_running_loop()
        browser = await JamClient.connect(sip_gateway.ws_url)
        assert (await browser.join("demo", PASSPHRASE, "browser"))["type"] == "joined"
        transport, endpoint = await loop.create_datagram_endpoint(
            Endpoint, local_addr=("127.0.0.1", rtp_port))
        process = await asyncio.create_subprocess_exec(
            "sipsak", "-vv", "-f", invite, "-s", f"sip:demo@127.0.0.1:{port}", "-l",
            str(local), "-u", "midi-endpoint", "-a", PASSPHRASE, "-i",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await process.communicate()
        assert process.returncode == 0, output.decode(errors="replace")
        [member] = sip_members(sip_gateway)
        endpoint.gateway_media = ("127.0.0.1", member["media_port"])
        # The endpoint plays: the browser hears it.
        endpoint.play([0x90, 60, 100])
        assert (await browser.midi())["data"] == [0x90, 60, 100]
        endpoint.play([0x80, 60, 0])
        assert (await browser.midi())["data"][:2] == [0x80, 60]
        # The browser plays twenty notes; every tenth packet to the endpoint is lost.
        for note in range(62, 82):
            browser.send_midi([0x90, note, 90])
            await asyncio.sleep(0.03)
            browser.send_midi([0x80, note, 0])
            await asyncio.sleep(0.03)
        await asyncio.sleep(0.6)                # guard packets repair the last losses
        ons = {data[1] for data in endpoint.heard if data[0] == 0x90 and data[2]}
        offs = {data[1] for data in endpoint.heard
                if data[0] == 0x80 or (data[0] == 0x90 and not data[2])}
        assert endpoint.lost >= 3
        assert offs >= set(range(62, 82)), endpoint.heard      # nothing stuck
        assert len(ons) >= 16, endpoint.heard   # a repaired note-on may come too late
        # A note left sounding is released when the call ends.
        endpoint.play([0x90, 67, 100])
        assert (await browser.midi())["data"] == [0x90, 67, 100]
        process = await asyncio.create_subprocess_exec(
            "sipsak", "-vv", "-f", bye, "-s", f"sip:demo@127.0.0.1:{port}", "-l", str(local),
            "-i", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await process.communicate()
        assert process.returncode == 0, output.decode(errors="replace")
        released = await browser.midi()
        assert released["data"][:2] in ([0x80, 67], [0x90, 67]), released
        browser.close()
        transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    media = user_agents(sip_gateway)["media_packets"]
    assert media["rtp_in"] >= 3 and media["rtp_out"] >= 40


# --- fuzzing -------------------------------------------------------------------------------------

def test_fuzzed_datagrams_and_streams_are_counted_and_never_crash_the_gateway(sip_gateway):
    rng = random.Random(6295)
    port = sip_gateway.sip_port
    seed = (b"INVITE sip:demo@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKx"
            b"\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:demo@c>\r\nCall-ID: f\r\nCSeq: 1 INVITE\r\n"
            b"Content-Length: 0\r\n\r\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for index in range(600):
            if index % 2:
                data = bytearray(seed)
                for _ in range(rng.randrange(1, 12)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                data = bytes(data)
            else:
                data = rng.randbytes(rng.randrange(1, 1500))
            udp.sendto(data, ("127.0.0.1", port))
        udp.sendto(b"OPTIONS sip:demo@127.0.0.1 SIP/2.0\r\n" + b"X-Flood: 1\r\n" * 200 + b"\r\n",
                   ("127.0.0.1", port))
    for index in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as tcp:
            tcp.sendall(rng.randbytes(rng.randrange(1, 20000)) if index % 2 else
                        seed.replace(b"Content-Length: 0", b"Content-Length: 99999999"))
    drops = wait_for(lambda: sip_gateway.status()["drops"].get("sip", {}))
    assert sum(drops.values()) >= 300, drops
    code, output = sipsak("-vv", "-s", f"sip:demo@127.0.0.1:{port}", "-H", "127.0.0.1")
    assert code == 0 and "200 OK" in output, output
    assert sip_gateway.process.poll() is None
    assert "Traceback" not in sip_gateway.log
