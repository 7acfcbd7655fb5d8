"""Real sipsak (Debian) against the sans-IO UAS core, through a tiny asyncio UDP/TCP wrapper.

The wrapper is test-only and does what the door adapter will: carry out the
core's actions, verify Authenticate against a table of passphrases (the bus's
job), answer every offered call with a canned SDP, and run the core's timer.
It proves the core with a client nobody on this project wrote before the door exists.
"""

import asyncio
import shutil
import socket
import time

from gateway.actions import Send
from gateway.protocols.sip.framing import StreamFramer
from gateway.protocols.sip.uas import Authenticate, CallOffered, CloseConnection
from tests.conftest import free_port, need_external
from tests.sip.uas_agents import ANSWER, PASSPHRASES, make_core

SIPSAK_INVITE = (
    "INVITE sip:demo@127.0.0.1:{port} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{branch};rport\r\n"
    "From: <sip:alice@127.0.0.1:{local}>;tag=sipsak{branch}\r\n"
    "To: <sip:demo@127.0.0.1:{port}>\r\n"
    "Call-ID: {branch}@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:alice@127.0.0.1:{local}>\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{body}")
MIDI_SDP = ("v=0\r\no=sipsak 1 1 IN IP4 127.0.0.1\r\ns=midi\r\nc=IN IP4 127.0.0.1\r\n"
            "t=0 0\r\nm=audio 42000 RTP/AVP 96\r\na=rtpmap:96 rtp-midi/44100\r\n")


class Wrapper:
    """The door in miniature: sockets <-> core, Authenticate -> passphrase table."""

    def __init__(self, core):
        self.core = core
        self.udp = None
        self.streams = {}
        self.actions_seen = []

    def now(self):
        return time.time()

    def carry_out(self, actions):
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            self.actions_seen.append(action)
            kind = type(action)
            if kind is Send:
                if action.via == "UDP":
                    self.udp.sendto(action.data, action.address)
                elif action.address in self.streams:
                    self.streams[action.address][0].write(action.data)
            elif kind is Authenticate:
                secret = PASSPHRASES.get(action.session)
                if secret is None:
                    pending += self.core.refused(action.ticket, "unknown_session", self.now())
                elif action.proof.matches(secret):
                    pending += self.core.authenticated(action.ticket, self.now())
                else:
                    pending += self.core.refused(action.ticket, "wrong_passphrase", self.now())
            elif kind is CallOffered:
                pending += self.core.answer(action.call, ANSWER, self.now())
            elif kind is CloseConnection and action.address in self.streams:
                self.streams[action.address][0].close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, wrapper):
        self.wrapper = wrapper

    def connection_made(self, transport):
        self.wrapper.udp = transport

    def datagram_received(self, data, addr):
        wrapper = self.wrapper
        wrapper.carry_out(wrapper.core.receive(data, "UDP", addr, wrapper.now()))


class _Tcp(asyncio.Protocol):
    def __init__(self, wrapper):
        self.wrapper = wrapper
        self.framer = StreamFramer()

    def connection_made(self, transport):
        self.peer = transport.get_extra_info("peername")[:2]
        self.wrapper.streams[self.peer] = (transport, self.framer)

    def data_received(self, data):
        wrapper = self.wrapper
        wrapper.carry_out(wrapper.core.receive_stream(self.framer, data, "TCP", self.peer,
                                                      wrapper.now()))

    def connection_lost(self, exc):
        wrapper = self.wrapper
        wrapper.streams.pop(self.peer, None)
        wrapper.carry_out(wrapper.core.connection_lost("TCP", self.peer, wrapper.now()))


async def _serve(port, commands):
    core = make_core(now=time.time())
    core.ports = {"UDP": port, "TCP": port}
    wrapper = Wrapper(core)
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(wrapper),
                                                 local_addr=("127.0.0.1", port))
    tcp = await loop.create_server(lambda: _Tcp(wrapper), "127.0.0.1", port)

    async def tick():
        while True:
            wrapper.carry_out(core.timer(wrapper.now()))
            await asyncio.sleep(0.05)

    ticking = asyncio.ensure_future(tick())
    results = []
    try:
        for command in commands:
            process = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                output, _ = await asyncio.wait_for(process.communicate(), 30)
            except asyncio.TimeoutError:
                process.kill()
                output, _ = await process.communicate()
                output += b"\n(killed after 30 s)"
            results.append((process.returncode, output.decode(errors="replace")))
    finally:
        ticking.cancel()
        udp.close()
        tcp.close()
    return results, wrapper


def run(commands):
    need_external(shutil.which("sipsak") is not None,
                  "sipsak is needed (Debian package sipsak)")
    for _ in range(20):
        port = free_port(kind=socket.SOCK_DGRAM)
        try:                            # the TCP port of the same number must be free too
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        break
    commands = [[part.format(port=port) for part in command] for command in commands]
    return asyncio.run(_serve(port, commands))


def test_sipsak_options_over_udp_and_tcp():
    (udp, tcp), _ = run([["sipsak", "-vv", "-s", "sip:demo@127.0.0.1:{port}", "-H", "127.0.0.1"],
                         ["sipsak", "-vv", "-E", "tcp", "-s", "sip:demo@127.0.0.1:{port}",
                          "-H", "127.0.0.1"]])
    assert udp[0] == 0 and "200 OK" in udp[1], udp[1]
    assert tcp[0] == 0 and "200 OK" in tcp[1], tcp[1]


def test_sipsak_registers_with_digest_and_a_wrong_passphrase_is_refused():
    local = free_port(kind=socket.SOCK_DGRAM)
    register = ["sipsak", "-U", "-C", f"sip:alice@127.0.0.1:{local}", "-s",
                "sip:demo@127.0.0.1:{port}", "-u", "alice", "-a", PASSPHRASES["demo"],
                "-x", "300", "-vv", "-H", "127.0.0.1"]
    wrong = list(register)
    wrong[wrong.index(PASSPHRASES["demo"])] = "not the passphrase"
    (good, bad), wrapper = run([register, wrong])
    assert good[0] == 0 and "completed successful" in good[1], good[1]
    assert bad[0] != 0, bad[1]
    counts = wrapper.core.counts
    assert counts["challenges"] >= 2 and counts["registrations"] >= 1
    assert counts["digest_failures"] >= 1


def test_sipsak_invites_with_an_rtp_midi_offer_and_digest(tmp_path):
    local = free_port(kind=socket.SOCK_DGRAM)
    body = MIDI_SDP
    invite = SIPSAK_INVITE.format(port="{port}", local=local, branch="a1b2c3",
                                  length=len(body), body=body)
    path = tmp_path / "invite.txt"
    path.write_text(invite.replace("{port}", "PORT"))
    (result,), wrapper = run([["sh", "-c", f"sed s/PORT/{{port}}/g {path} > {path}.sent &&"
                               f" sipsak -vv -f {path}.sent -s sip:demo@127.0.0.1:{{port}}"
                               f" -l {local} -u alice -a '{PASSPHRASES['demo']}' -i"]])
    assert result[0] == 0, result[1]
    assert "200 OK" in result[1], result[1]
    offered = [a for a in wrapper.actions_seen if type(a) is CallOffered]
    assert len(offered) == 1 and b"rtp-midi/44100" in offered[0].offer
    assert offered[0].call.player == "alice" and offered[0].call.session == "demo"
