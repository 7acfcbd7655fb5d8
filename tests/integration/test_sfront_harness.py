"""The sfront test harness (tests/sfront_peer.py) works, without the SIP door.

Real sfront 0.98 clients in network namespaces this test creates: one with
no server resends its INVITE, one that only listens writes a silent WAV, a
test-side socket sees a client's INVITEs and checks them with the harness's
copy of sfront's crypto. The gateway runs inside a namespace and a WebSocket
client reaches it there; the loss proxy is repeatable; the NAT rig
masquerades. Everything stays on 127.0.0.0/8 or inside the namespaces.
"""

import asyncio
import os
import re
import socket
import struct
import subprocess
import time
import wave

import pytest

from tests import sfront_peer as peer
from tests.wsclient import JamClient

DEMO = ("demo", "play along with netgateway demo")
SIP = ("127.0.0.1", 5060)

external = pytest.mark.external


def stream_client():
    return peer.build_client("stream", *DEMO, *SIP)


def namespaces():
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            timeout=10).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def sip_message(data):
    text = data.rstrip(b"\0").decode()
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


@external
def test_a_client_without_a_server_resends_its_invite(tmp_path):
    program = stream_client()
    with peer.namespace("nosrv") as ns:
        name = ns.name
        with peer.run_client(ns, program, tmp_path) as client:
            started = time.monotonic()
            client.wait_for_line(r"^Network status: SIP server not responding, resending$",
                                 timeout=9)
            assert 4 <= time.monotonic() - started <= 9     # the resend is every 5 s
            assert ("status", "SIP server not responding, resending") in client.network
            assert client.advisories() == []
    assert name not in namespaces()
    assert not os.path.exists(f"/etc/netns/{name}")
    assert client.process.poll() is not None


@external
def test_a_listen_client_alone_hears_silence(tmp_path):
    program = peer.build_client("listen", *DEMO, *SIP, seconds=3)
    with peer.namespace("alone") as ns:
        client = peer.run_client(ns, program, tmp_path)
        with client:
            assert client.wait(timeout=20) == 0
    peaks = peer.wav_peaks(client.wav)
    assert 5 <= len(peaks) <= 8, peaks                 # about 3 s in 0.5 s windows
    assert peer.is_silent(peaks), peaks
    assert "Network status: Shutdown completed" in client.lines


@external
def test_a_duplex_client_renders_only_what_the_network_plays(tmp_path):
    """Its notes come back as a member's for 2 s, then the member falls silent while the
    client streams on for 5 s more: its WAV sounds only while the echo ran (and for the
    notes' ring-out, under 2 s)."""
    from tests import sfront_capture
    program = peer.build_client("duplex", *DEMO, *SIP, seconds=7)
    with peer.namespace("duplex") as ns:
        started = []

        def launch():
            started.append(peer.run_client(ns, program, tmp_path))
            return started[0]
        try:
            state, client = sfront_capture.serve(ns, sfront_capture.Recorder(), launch,
                                                 seconds=15, reflect=2.0)
            assert client.wait(timeout=15) == 0
        finally:
            for client in started:
                client.stop(graceful=False)
    assert "Network status: SIP INVITE accepted from netgateway@gateway:6000" in client.lines
    peer.assert_sound_between(peer.wav_peaks(client.wav), 0.5, 2.0, margin=2.0)


@external
def test_a_test_side_socket_checks_a_clients_invites(tmp_path):
    """The harness's crypto oracle matches a real client: s=, the SignSDP digest."""
    key = peer.session_key(DEMO[1])
    nonce = peer.digest(key, "a fixed nonce")
    with peer.namespace("invite") as ns:
        server = ns.socket(bind=SIP)
        server.settimeout(5)
        with server, peer.run_client(ns, stream_client(), tmp_path) as client:
            data, source = server.recvfrom(65535)
            first, headers, body = sip_message(data)
            assert first == f"INVITE sip:{peer.session_name(*DEMO)}@127.0.0.1:5060 SIP/2.0"
            assert f"s={peer.session_name(*DEMO)}" in body.split("\n")
            assert headers["v"].startswith("SIP/2.0/UDP 127.0.0.2:")   # the hosts file
            assert "authorization" not in headers
            echoed = "".join(f"{name}: {headers[name.lower()]}\n"
                             for name in ("i", "v", "f", "t", "CSeq"))
            server.sendto(f"SIP/2.0 401 Unauthorized\n{echoed}WWW-Authenticate: SignSDP"
                          f' nonce="{nonce}"\n\n'.encode(), source)
            while True:                                  # the ACK, then the signed resend
                data, _ = server.recvfrom(65535)
                first, headers, body = sip_message(data)
                if first.startswith("INVITE"):
                    break
            assert headers["cseq"] == "2"
            assert f'a=nonce:"{nonce}"' in body.split("\n")
            match = re.fullmatch(r'SignSDP nonce="(.*)", digest="(.*)"',
                                 headers["authorization"])
            assert match.groups() == (nonce, peer.digest(key, body))
            assert client.advisories() == []


@external
def test_the_gateway_runs_inside_a_namespace_and_a_websocket_client_reaches_it(tmp_path):
    with peer.namespace("gw") as ns:
        gateway = peer.start_gateway(ns, tmp_path / "gateway")
        try:
            assert gateway.status()
            inside = os.readlink(f"/proc/{gateway.process.pid}/ns/net")
            assert inside != os.readlink("/proc/self/ns/net")

            async def scenario():
                client = await JamClient.connect(gateway.ws_url)
                joined = await client.join(*DEMO, "harness")
                client.close()
                return joined
            with ns.entered():
                joined = asyncio.run(asyncio.wait_for(scenario(), 20))
            assert joined["type"] == "joined"
            assert os.readlink("/proc/thread-self/ns/net") == os.readlink("/proc/self/ns/net")
        finally:
            gateway.stop()


def relay_through(proxy, ns, count, reply=True):
    """Sends ``count`` datagrams through ``proxy`` to an echo socket; what came back."""
    echo = ns.socket(bind=proxy.target)
    sender = ns.socket(bind=("127.0.0.1", 0))
    echoed, got = [], []
    with echo, sender:
        echo.settimeout(0.05)
        sender.settimeout(0.05)
        for number in range(count):
            sender.sendto(struct.pack(">I", number), proxy.listen_address)
            try:
                data, source = echo.recvfrom(100)
                echoed.append(struct.unpack(">I", data)[0])
                if reply:
                    echo.sendto(data, source)
                    got.append(struct.unpack(">I", sender.recvfrom(100)[0])[0])
            except socket.timeout:
                pass
    return echoed, got


@external
def test_the_loss_proxy_is_seeded_and_bidirectional():
    with peer.namespace("loss") as ns:
        runs = []
        for _ in range(2):
            with peer.LossProxy(("127.0.0.1", 7000), ("127.0.0.6", 7002), loss=0.1, seed=42,
                                ns=ns, lossy=("to_target",)) as proxy:
                echoed, got = relay_through(proxy, ns, 300)
            runs.append((echoed, proxy.counts()))
        (first, counts), (second, _) = runs
        assert first == second                                  # the same packets lost
        assert counts["forwarded"]["to_target"] + counts["dropped"]["to_target"] == 300
        assert 15 <= counts["dropped"]["to_target"] <= 45, counts
        assert counts["forwarded"]["to_source"] == len(first)   # replies went back
        assert got == first
        with peer.LossProxy(("127.0.0.1", 7000), ("127.0.0.6", 7002), loss=0.1, seed=43,
                            ns=ns) as other:
            differently, _ = relay_through(other, ns, 300, reply=False)
        assert differently != first


@external
@pytest.mark.parametrize("rig_kind, symmetric", [("home", False), ("plain", True)])
def test_the_nat_rig_masquerades_and_maps_the_hostname(rig_kind, symmetric):
    with peer.nat_rig(clients=2, rig=rig_kind, symmetric=symmetric) as rig:
        server = rig.server.socket(bind=(rig.public_ip, 7100))
        with server:
            server.settimeout(3)
            for index, space in enumerate(rig.clients):
                hosts = space.run("getent", "hosts", socket.gethostname()).split()
                assert hosts[0] == rig.private_ips[index] == f"192.168.1.{2 + index}"
                client = space.socket(bind=("0.0.0.0", 7200))
                with client:
                    client.settimeout(3)
                    client.sendto(b"hello", (rig.public_ip, 7100))
                    data, source = server.recvfrom(100)
                    assert (data, source[0]) == (b"hello", rig.wan_ip)
                    server.sendto(b"back", source)
                    assert client.recvfrom(100)[0] == b"back"
        drops = rig.router.run("iptables", "-S", "FORWARD").count("-j DROP")
        assert drops == (1 if rig_kind == "home" else 0)
        assert ("--random-fully" in rig.router.run("iptables", "-t", "nat", "-S")) == symmetric
        names = [space.name for space in (rig.server, rig.router, *rig.clients)]
    assert not set(names) & namespaces()


def write_wav(path, seconds_and_levels, rate=8000):
    frames = bytearray()
    for seconds, level in seconds_and_levels:
        for index in range(int(seconds * rate)):
            frames += struct.pack("<h", level if index % 2 else -level)
    with wave.open(str(path), "wb") as stream:
        stream.setnchannels(1)
        stream.setsampwidth(2)
        stream.setframerate(rate)
        stream.writeframes(bytes(frames))


def test_wav_peaks_and_the_sound_checks(tmp_path):
    path = tmp_path / "heard.wav"
    write_wav(path, [(1.0, 0), (2.0, 3000), (1.0, 0)])
    peaks = peer.wav_peaks(path)
    assert peaks == [0, 0, 3000, 3000, 3000, 3000, 0, 0]
    assert peer.sound_problems(peaks, 1.0, 3.0) == []
    peer.assert_sound_between(peaks, 1.0, 3.0)
    assert peer.sound_problems(peaks, 0.0, 1.0)              # silent where sound was wanted
    assert any("outside" in problem for problem in peer.sound_problems(peaks, 1.0, 1.5))
    assert peer.is_silent(peer.wav_peaks(path, window=1.0)[:1])
    with pytest.raises(AssertionError, match="peaks per window"):
        peer.assert_sound_between(peaks, 0.0, 4.0)


def test_the_crypto_oracle_matches_sfront_md():
    assert peer.session_name(*DEMO) == "yYyUa/wTDUBMVnpUgiGNEw=="
    assert peer.session_name("mirror", "anything") == "++MiqJvAulMcPwBQ45NfKA=="
    key = peer.session_key(DEMO[1])
    packet = peer.signed(key, b"\x80\xe0\x00\x01" + bytes(8) + b"\x03\x90\x3c\x64")
    assert peer.signature_ok(key, packet)
    assert not peer.signature_ok(key, packet[:-1] + bytes([packet[-1] ^ 1]))


GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sip",
                      "golden")


def golden(name):
    with open(os.path.join(GOLDEN, name), "rb") as stream:
        return stream.read()


def test_the_golden_captures_check_out_with_the_crypto_oracle():
    """tests/sip/golden (tests/sfront_capture.py) agrees with sfront.md and the oracle."""
    import json
    with open(os.path.join(GOLDEN, "golden.json")) as stream:
        manifest = json.load(stream)
    assert set(manifest["files"]) == {name for name in os.listdir(GOLDEN)
                                      if name.endswith(".bin")}
    plain = manifest["runs"]["plain"]
    key = peer.session_key(plain["passphrase"])
    s64 = peer.session_name(plain["session"], plain["passphrase"])
    callid = plain["client_callids"]["5060"]
    for name, entry in manifest["files"].items():
        data = golden(name)
        assert len(data) == entry["length"], name
        if "signature_valid" in entry:
            assert peer.signature_ok(key, data), name
        elif name != "member_invite_sent.bin":
            assert data.endswith(b"\0") and b"\r" not in data, name
            assert b"User-Agent: sfront/0.98 07/21/10\n" in data or name.endswith(
                "reply.bin"), name
    for name in ("invite_signed_rtp.bin", "invite_signed_rtcp.bin",
                 "nat_invite_signed_rtp.bin", "nat_invite_signed_rtcp.bin"):
        first, headers, body = sip_message(golden(name))
        lines = body.split("\n")
        assert f"s={s64}" in lines and f'a=nonce:"{plain["nonce"]}"' in lines, name
        assert headers["authorization"] == (f'SignSDP nonce="{plain["nonce"]}",'
                                            f' digest="{peer.digest(key, body)}"'), name
        assert any(line.startswith("a=nat:127.0.0.1 500") for line in lines) == \
            name.startswith("nat_"), name
    first, headers, _ = sip_message(golden("member_invite_reply.bin"))
    assert first == "SIP/2.0 200" and headers["in-reply-to"] == str(callid)
    _, sent, _ = sip_message(golden("member_invite_sent.bin"))
    member = plain["member"]
    nonce = peer.member_nonce(key, member["callid"], callid, "127.0.0.1", 5060)
    assert sent["authorization"].startswith(f'SignSDP nonce="{nonce}"')
    assert "Network status: SIP INVITE accepted from netgateway@gateway:6000" in \
        plain["client_stderr"]
    rtp = golden("rtp_note_journal.bin")
    assert rtp[1] == 0x80 | 96 and rtp[8:12] == bytes(4) and rtp[12] & 0x40   # M, SSRC 0, J
    assert golden("rtp_guard.bin")[12] & 0x0F == 0
    block = golden("rtcp_sr_report_block.bin")
    assert block[0] & 0x1F == 1 and block[1] == 200
    assert struct.unpack(">I", block[28:32])[0] == member["ssrc"]
    assert block[52:56] == bytes(4)                        # the zeroed SDES header
    bye = golden("rtcp_bye.bin")
    assert bye[1] == 201 and b"\x81\xcb\x00\x01" + bye[4:8] in bye
