"""SIP door fan-out (sfront clients, everything signed) vs the RTP-MIDI door, in one run.

For each shape (sessions x members, one sender per session, every other member
receives) and each door -- ``twistd netgateway`` with only the SIP door, and
with only the RTP-MIDI door, both with the recovery journal on -- pinned to
CPU 0 while this load generator runs on CPU 1:

- maximum: the highest forwarded packets/s with < 0.1% loss, a packet
  arriving more than 50 ms after the step's end counting as lost (offered
  rate raised by 1.5x steps from 4,000/s, then bisected twice; 1 s per
  step), the same search as bench/rtpmidi_fanout.py (benchlib.max_forwarded).
  For the SIP door every packet forwarded is a client's packet the gateway
  verified (HMAC-MD5) and re-signed for each receiver. Printed with that
  step's CPU per forwarded packet and "busy", the share of one CPU the
  gateway used in it: far below 100% at the maximum means the gateway lost
  packets while it had CPU time to spare, i.e. other load on CPU 0 (tests
  of other work) kept it waiting;
- CPU per forwarded packet at ``--cpu-rate`` (5,000/s, 2 s): the gateway
  process's CPU time (all threads, /proc) over the packets that reached the
  receivers. This is the figure to compare on a shared machine.

Medians of ``--runs`` runs, the doors' runs interleaved, and the SIP/RTP-MIDI
ratios of the medians: a noisy shared machine moves both doors alike, so the
ratios are the steadier figures.

The real sfront client cannot be driven at load (it is a timed synthesizer),
so each SIP member here is a Python program playing one: the messages are
written and checked by tests/sip/sfront_double.py (the unit tests' sfront
double, built on gateway.protocols.sip.sfront, message and sdp), as
shared/protocols/sfront.md §2-§3 describes the client, and sent on real
sockets: an RTP/RTCP socket pair on the client's own 127.0.0.x address; an INVITE from the RTP socket to the SIP
port and one from the RTCP socket to the port above, LF lines, compact
headers, a final NUL, ``s=`` the session name keyed with the passphrase;
after the 401, the resend with ``Authorization: SignSDP nonce, digest`` and
``a=nonce`` in the SDP; ACKs; then the gateway's member INVITE, checked as
sfront checks it (In-Reply-To, the nonce computed from both Call-IDs and the
server's address, the SDP digest, ``s=``, ``pre1-mpeg4-generic``) and
answered ``SIP/2.0 200`` with its headers echoed. Senders send one MIDI
command per packet (NoteOn/NoteOff 60 in turn) with the recovery journal,
marker set, PT 96, SSRC 0 as a 64-bit sfront does, 44.1 kHz timestamps, the
first 4 octets of HMAC-MD5 appended; every client sends a signed RTCP RR
(with a report block about the gateway's member once it has heard from it,
so the gateway trims its journal; no SDES, which the gateway does not read)
between steps, well within the 25 s the gateway waits. Receivers count the signed RTP-MIDI that reaches them and
check its signature: every ``--verify-every``-th packet, all by default.

The RTP-MIDI door is driven by bench/rtpmidi_fanout.py's AppleMIDI members,
sending the same one command per packet (no pitch bend), so the ratio is
the cost of the SIP door's signatures and per-client streams over the
RTP-MIDI door's relay, not of different MIDI. Packets are built before each
step, so the timed loop only calls ``sendto``/``recv_into``.

While it runs, a SCHED_IDLE busy loop keeps CPU 0's vCPU from halting
between datagrams (benchlib.cpu0_kept_awake; ``--let-cpu0-idle`` turns it
off). ``--python`` given more than once measures each build's two doors.

Run: .venv/bin/python bench/sip_fanout.py [--shapes 1x1,1x4] [--runs 3] [--quick]
         [--source | --python A/bin/python ...]
"""

import os
import random
import select
import socket
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from gateway.protocols.sip import sfront  # noqa: E402
from gateway.protocols.sip.message import MalformedMessage, Response, parse  # noqa: E402
from benchlib import (fanout_figures, gateway_pythons, interleaved_runs,  # noqa: E402
                      max_forwarded, paced_exchange, ratio, rtp_midi_packets, start_gateway,
                      udp_benchmark_main)
import rtpmidi_fanout  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.sip.sfront_double import SfrontDouble  # noqa: E402

SHAPES = rtpmidi_fanout.SHAPES
DOORS = ("rtpmidi", "sip")
CPU_RATE = 5_000
CPU_SECONDS = 2.0
START_RATE = 4_000
STEP_SECONDS = rtpmidi_fanout.STEP_SECONDS
CPU_GRACE = rtpmidi_fanout.LATENCY_GRACE
THROUGHPUT_GRACE = rtpmidi_fanout.THROUGHPUT_GRACE
SETTLE_SECONDS = 0.3
PASSPHRASE = "sfront benchmark passphrase"

SIP_HOST = "127.0.0.1"
MEDIA_HOST = "127.0.0.5"        # sfront refuses a member whose c= is 127.0.0.1
FIRST_CLIENT_HOST = 20          # client k binds 127.0.0.(20 + k)
PAYLOAD_TYPE = 96
CLOCK_RATE = 44_100
REPORT_INTERVAL = 2.0           # sfront reports every 5 s; the gateway waits 25 s
SETUP_SECONDS = 20.0
INVITE_RESEND = 5.0             # sfront resends an unanswered INVITE every 5 s
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
RTP_HEADER_SIZE = rtpmidi_fanout.RTP_HEADER_SIZE
COMMAND_LIST_SIZE = rtpmidi_fanout.COMMAND_LIST_SIZE
MARKER_AND_PT = 0x80 | PAYLOAD_TYPE
_U32 = 0xFFFFFFFF


def bind_pair(host):
    """An RTP socket on an even port of ``host`` and its RTCP socket on the next one."""
    for _ in range(100):
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind((host, 0))
        number = rtp.getsockname()[1]
        rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if number % 2 or number >= 65535:
                raise OSError("odd port")
            rtcp.bind((host, number + 1))
        except OSError:
            rtp.close()
            rtcp.close()
            continue
        for sock in (rtp, rtcp):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            sock.setblocking(False)
        return rtp, rtcp
    raise RuntimeError(f"no free even UDP port pair on {host}")


def free_port_range(host, count):
    """An even port of ``host`` with it and the ``count - 1`` above it free now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            base = probe.getsockname()[1] & ~1
        if base + count > 65536:
            continue
        probes = []
        try:
            for number in range(base, base + count):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probes.append(probe)
                probe.bind((host, number))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return base
    raise RuntimeError(f"no {count} free UDP ports in a row on {host}")


class Leg:
    """One of a client's two SIP sockets (§2.1): its number for the double, its server, state."""

    def __init__(self, number, sock, server):
        self.number = number            # SfrontDouble's leg: 0 the RTP socket, 1 the RTCP one
        self.sock = sock
        self.server = server
        self.nonce = None
        self.registered = False
        self.invite = None
        self.sent_at = None


class SfrontClient:
    """One sfront 0.98 client (64-bit build) on real sockets: tests/sip/sfront_double.py
    writes and checks its messages, this class sends, receives and counts them."""

    def __init__(self, index, session, rng, sip_port):
        self.index = index
        self.host = f"127.0.0.{FIRST_CLIENT_HOST + index}"
        self.rtp, self.rtcp = bind_pair(self.host)
        port = self.rtp.getsockname()[1]
        # sfront's Call-ID is its SSRC variable, a random unsigned long; RTCP's is one more.
        self.double = SfrontDouble(session, PASSPHRASE, self.host, port, rng.getrandbits(63),
                                   (SIP_HOST, sip_port), f"player{index}", rate=CLOCK_RATE)
        # Kept per client: sfront.sign/verified prepare a new Signer on every call.
        self.signer = sfront.Signer(self.double.key)
        self.legs = [Leg(0, self.rtp, (SIP_HOST, sip_port)),
                     Leg(1, self.rtcp, (SIP_HOST, sip_port + 1))]
        self.rtcp_to = None             # the gateway's member's RTCP address, from its INVITE
        self.sequence = rng.getrandbits(16)
        self.timestamp = rng.getrandbits(32)
        self.highest = None             # extended highest sequence heard from the member
        self.reported_at = None
        self.sender = None              # the index of the sender whose packets this one gets
        self.counted = self.checked = self.bad = 0

    @property
    def name(self):
        return self.double.login

    @property
    def media_to(self):
        return self.double.member[1] if self.double.member else None

    # SIP ------------------------------------------------------------------------
    def start(self, now):
        for leg in self.legs:
            self._invite(leg, now)

    def _invite(self, leg, now):
        leg.invite = self.double.invite(leg.number, time.time(), leg.nonce)
        leg.sent_at = now
        leg.sock.sendto(leg.invite, leg.server)

    def resend(self, now):
        """An INVITE still unanswered after 5 s goes again, unchanged (§2.1)."""
        for leg in self.legs:
            if not leg.registered and now - leg.sent_at >= INVITE_RESEND:
                leg.sent_at = now
                leg.sock.sendto(leg.invite, leg.server)

    def _request(self, leg, method):
        """An ACK (the CSeq it acknowledges) or a BYE (the next CSeq) from ``leg``."""
        if method == "ACK":
            self.double.cseq[leg.number] -= 1   # request() counts up; an ACK does not
        leg.sock.sendto(self.double.request(method, leg.number), leg.server)

    def on_sip(self, leg, data, source, now):
        if source != leg.server:
            return      # "SIP from unknown source ... rejected"
        try:
            message = parse(data)
        except MalformedMessage:
            return
        if isinstance(message, Response):
            self._on_response(leg, message, data, now)
        elif message.method == "INVITE" and leg.number == 0:
            self._on_member_invite(leg, message, data, source)

    def _on_response(self, leg, message, data, now):
        if message.call_id is None or message.call_id.strip() != str(self.double.call_id
                                                                       + leg.number):
            return
        status = message.status
        if status < 200:
            return
        self._request(leg, "ACK")
        if status == 401:
            leg.nonce = self.double.challenged(data, leg.number)
            self._invite(leg, now)
        elif status < 300:
            leg.registered = True
        else:
            raise RuntimeError(f"{self.name}: the SIP door answered {status} {message.reason}")

    def _on_member_invite(self, leg, message, data, source):
        """The INVITE that introduces the gateway's member: answered ``SIP/2.0 200`` with its
        headers echoed (§2.3), checked as sfront checks it (by the double)."""
        leg.sock.sendto(Response(200, "", message.headers).to_bytes(sfront.DIALECT), leg.server)
        if message.get("in-reply-to") != str(self.double.call_id):
            return      # sfront answers 200 and ignores it
        first = self.double.member is None
        ssrc, (host, port) = self.double.member_invite(data, source)
        self.rtcp_to = (host, port + 1)
        if first:
            self.report()       # the gateway counts its member accepted on our first RTCP

    @property
    def ready(self):
        return self.double.member is not None and all(leg.registered for leg in self.legs)

    # Media ----------------------------------------------------------------------
    def report(self, bye=False):
        """A signed RR from the RTCP socket, with a report block once the member was heard."""
        self.rtcp.sendto(self.double.rtcp(self.highest, bye), self.rtcp_to)
        self.reported_at = time.monotonic()

    def saw(self, sequence):
        """Extend the member's 16-bit sequence numbers (RFC 3550 §A.1, without probation)."""
        highest = self.highest
        if highest is None:
            self.highest = sequence
            return
        delta = (sequence - highest) & 0xFFFF
        if delta < 0x8000:
            self.highest = highest + delta

    def build_packets(self, count, rate):
        """``count`` signed packets at ``rate``/s: one command each, journal on, marker set,
        PT 96, SSRC 0 (§3.1; the double's :meth:`rtp` sends no journal, sfront's default does)."""
        ticks = max(1, round(CLOCK_RATE / rate))
        packets = rtp_midi_packets(count, self.sequence, self.timestamp, 0, bend=False,
                                   ticks=ticks, marker=True, payload_type=PAYLOAD_TYPE)
        self.sequence = (self.sequence + count) & 0xFFFF
        self.timestamp = (self.timestamp + count * ticks) & _U32
        return [self.signer.sign(packet) for packet in packets]

    def close(self):
        """What sfront does on exit: a signed RR + BYE to the member, SIP BYE from both sockets."""
        try:
            if self.double.member is not None:
                self.report(bye=True)
            for leg in self.legs:
                self._request(leg, "BYE")
        except OSError:
            pass
        self.rtp.close()
        self.rtcp.close()


def pump(clients, seconds):
    """Carry SIP, take note of the member's RTP, send due RTCP reports, for ``seconds``."""
    sockets = {}
    for client in clients:
        sockets[client.rtp] = (client, client.legs[0])
        sockets[client.rtcp] = (client, client.legs[1])
    deadline = time.monotonic() + seconds
    while True:
        now = time.monotonic()
        for client in clients:
            client.resend(now)
            if client.ready and now - client.reported_at >= REPORT_INTERVAL:
                client.report()
        remaining = deadline - now
        if remaining <= 0:
            return
        readable, _, _ = select.select(list(sockets), [], [], min(remaining, 0.05))
        for sock in readable:
            client, leg = sockets[sock]
            while True:
                try:
                    data, source = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                if not data:
                    continue
                if data[0] & 0xC0 == 0x80:     # RTP or RTCP version 2, not SIP text
                    if sock is client.rtp and len(data) > RTP_HEADER_SIZE:
                        client.saw(data[2] << 8 | data[3])
                    continue
                client.on_sip(leg, data, source, time.monotonic())


def setup_sip(sessions, size, args, python):
    sip_port = free_port(socket.SOCK_DGRAM, even=True)
    media_min = free_port_range(MEDIA_HOST, 2 * sessions)
    config = {
        "sessions": [{"name": f"s{index}", "passphrase": PASSPHRASE}
                     for index in range(sessions)],
        "limits": {"events_per_second": 1000000, "max_members_per_session": size,
                   "max_sessions": sessions + 1, "idle_timeout": 3600},
        "web": {"host": "127.0.0.1", "port": free_port()},
        "logging": {"level": "warn"},
        "sip": {"host": SIP_HOST, "port": sip_port,
                "media": {"host": MEDIA_HOST, "port_min": media_min,
                          "port_max": media_min + 2 * sessions - 1},
                "channels": "keep", "latetime": 60.0, "journal": True,
                "max_clients": sessions * size},
    }
    gateway = start_gateway(config, "bench-sip-", args, python)
    rng = random.Random(3261)
    groups = []
    try:
        for session in range(sessions):
            group = [SfrontClient(session * size + index, f"s{session}", rng, sip_port)
                     for index in range(size)]
            for receiver in group[1:]:
                receiver.sender = session
            groups.append(group)
        clients = [client for group in groups for client in group]
        now = time.monotonic()
        for client in clients:
            client.start(now)
        deadline = now + SETUP_SECONDS
        while not all(client.ready for client in clients):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sum(not client.ready for client in clients)} of"
                                   f" {len(clients)} sfront clients did not join the SIP door:\n"
                                   + gateway.log[-3000:])
            pump(clients, 0.1)
        pump(clients, 0.5)
        joined = gateway.status()["doors"]["sip"]["clients"]
        if joined != len(clients):
            raise RuntimeError(f"the SIP door counts {joined} clients, not {len(clients)}")
    except BaseException:
        close_sip(gateway, groups)
        raise
    return gateway, groups


def close_sip(gateway, groups):
    for group in groups:
        for client in group:
            client.close()
    gateway.stop()


def sip_step(groups, forwarded_rate, seconds, server_pid, grace, verify_every):
    """Offer ``forwarded_rate`` forwarded packets/s from the senders for ``seconds``."""
    senders = [group[0] for group in groups]
    receivers = [client for group in groups for client in group[1:]]
    fanout = len(groups[0]) - 1
    input_rate = forwarded_rate / fanout
    per_sender = max(1, int(input_rate * seconds / len(senders)))
    sources = [(sender.rtp, sender.media_to,
                sender.build_packets(per_sender, input_rate / len(senders)))
               for sender in senders]
    def classify(receiver, view, size):
        if view[0] & 0xC0 != 0x80:
            return None                         # SIP on the RTP socket
        receiver.saw(view[2] << 8 | view[3])
        if not view[RTP_HEADER_SIZE] & COMMAND_LIST_SIZE:
            return None                         # a journal-only guard packet
        receiver.counted += 1
        if receiver.counted % verify_every == 0:
            receiver.checked += 1
            if view[1] != MARKER_AND_PT or receiver.signer.verified(bytes(view[:size])) is None:
                receiver.bad += 1
                return None
        return receiver.sender, None

    result = paced_exchange(sources, {receiver.rtp: receiver for receiver in receivers},
                            input_rate, grace, server_pid, classify)
    return dict(fanout_figures(result, fanout), sent=result["sent"])


def run_sip(shape, args, python):
    sessions, size = SHAPES[shape]
    gateway, groups = setup_sip(sessions, size, args, python)
    pid = gateway.process.pid
    clients = [client for group in groups for client in group]
    receivers = [client for group in groups for client in group[1:]]
    try:
        before = gateway.status()["doors"]["sip"]["packets_verified"]
        cpu = sip_step(groups, args.cpu_rate, CPU_SECONDS, pid, CPU_GRACE, args.verify_every)
        # Every packet sent in the step, and nothing else (no RTCP is sent in a step).
        cpu["gateway_verified"] = gateway.status()["doors"]["sip"]["packets_verified"] - before
        pump(clients, SETTLE_SECONDS)
        maximum = max_forwarded(
            lambda rate: sip_step(groups, rate, STEP_SECONDS, pid, THROUGHPUT_GRACE,
                                  args.verify_every),
            lambda: pump(clients, SETTLE_SECONDS), START_RATE, args.max_rate)
        cpu["checked"] = sum(receiver.checked for receiver in receivers)
        cpu["bad"] = sum(receiver.bad for receiver in receivers)
        cpu["counted"] = sum(receiver.counted for receiver in receivers)
        return maximum, cpu
    finally:
        close_sip(gateway, groups)


def run_rtpmidi(shape, args, python):
    sessions, size = SHAPES[shape]
    gateway, groups = rtpmidi_fanout.setup_gateway(sessions, size, args, python)
    pid = gateway.process.pid
    members = [member for group in groups for member in group]
    try:
        cpu = rtpmidi_fanout.step(groups, args.cpu_rate, CPU_SECONDS, False, pid, CPU_GRACE,
                                  bend=False)
        rtpmidi_fanout.pump(members, SETTLE_SECONDS)
        maximum = rtpmidi_fanout.max_forwarded_step(groups, START_RATE, args.max_rate, pid,
                                                    bend=False)
        return maximum, cpu
    finally:
        for member in members:
            member.close()
        gateway.stop()


RUNNERS = {"rtpmidi": run_rtpmidi, "sip": run_sip}


def busy(figures):
    """The share of one CPU the gateway used in a step (its CPU time over the step)."""
    return figures["cpu_us"] * figures["forwarded"] / 1e6


def main():
    def add_arguments(parser):
        parser.add_argument("--shapes", default=None,
                            help="sessions x members, of " + ", ".join(SHAPES)
                                 + " (default 1x1,1x4; 1x1 with --quick)")
        parser.add_argument("--quick", action="store_true",
                            help="one run of 1x1 (unless --runs or --shapes say otherwise):"
                                 " checks that the bench works, figures are rough")
        parser.add_argument("--cpu-rate", type=float, default=CPU_RATE,
                            help="forwarded packets/s at which CPU per packet is measured")
        parser.add_argument("--verify-every", type=int, default=1, metavar="N",
                            help="SIP receivers check the signature of every N-th packet"
                                 " (default: all)")

    udp_benchmark_main(__doc__.split("\n")[0], add_arguments, run_all)


def run_all(args):
    if args.quick and not any(arg == "--runs" or arg.startswith("--runs=")
                              for arg in sys.argv[1:]):
        args.runs = 1
    args.shapes = args.shapes or ("1x1" if args.quick else "1x1,1x4")
    for shape in args.shapes.split(","):
        if shape not in SHAPES:
            raise SystemExit(f"unknown shape {shape!r}: expected one of {', '.join(SHAPES)}")
    if args.verify_every < 1:
        raise SystemExit("--verify-every must be at least 1")
    pythons = gateway_pythons(args)
    builds = rtpmidi_fanout.server_labels(pythons)
    servers = [(door, python) for python in pythons for door in DOORS]

    def label(server):
        door, python = server
        return door if len(pythons) == 1 else f"{door} {builds[python]}"

    width = max(len(label(server)) for server in servers)
    print(f"{'shape':>5} {'door':>{width}} | {'max fwd/s':>9} {'cpu µs':>6} {'busy':>4} |"
          f" at {args.cpu_rate:.0f} fwd/s: {'loss':>6} {'cpu µs':>6}   (each run: max; cpu µs)",
          flush=True)
    started = time.monotonic()
    for shape in args.shapes.split(","):
        runs_by_server = interleaved_runs(servers, args.runs,
                                          lambda server: RUNNERS[server[0]](shape, args, server[1]))
        results = {}
        for server in servers:
            runs = runs_by_server[server]
            figures = {"max": statistics.median(run[0]["forwarded"] for run in runs),
                       "max_cpu_us": statistics.median(run[0]["cpu_us"] for run in runs),
                       "busy": statistics.median(busy(run[0]) for run in runs),
                       "loss": statistics.median(run[1]["loss"] for run in runs),
                       "cpu_us": statistics.median(run[1]["cpu_us"] for run in runs)}
            results[server] = figures
            each = ", ".join(f"{run[0]['forwarded']:.0f}" for run in runs)
            cpus = ", ".join(f"{run[1]['cpu_us']:.1f}" for run in runs)
            print(f"{shape:>5} {label(server):>{width}} | {figures['max']:9.0f}"
                  f" {figures['max_cpu_us']:6.1f} {figures['busy']:4.0%} | {'':>{10}}"
                  f" {figures['loss']:6.2%} {figures['cpu_us']:6.1f}   ({each}; {cpus})",
                  flush=True)
            if server[0] == "sip":
                counted = sum(run[1]["counted"] for run in runs)
                checked = sum(run[1]["checked"] for run in runs)
                bad = sum(run[1]["bad"] for run in runs)
                verified = ", ".join(f"{run[1]['gateway_verified']}/{run[1]['sent']}"
                                     for run in runs)
                print(f"{shape:>5} {label(server):>{width}} | receivers checked {checked} of"
                      f" {counted} signatures, {bad} bad; the gateway verified (RTP sent)"
                      f" in the CPU steps: {verified}", flush=True)
        for python in pythons:
            sip, rtp = results[("sip", python)], results[("rtpmidi", python)]
            which = "" if len(pythons) == 1 else f" {builds[python]}"
            print(f"{shape:>5} sip/rtpmidi{which}: max {ratio(sip['max'], rtp['max']):.2f};"
                  f" CPU per forwarded packet {ratio(sip['cpu_us'], rtp['cpu_us']):.2f}"
                  f" at {args.cpu_rate:.0f}/s, {ratio(sip['max_cpu_us'], rtp['max_cpu_us']):.2f}"
                  f" at the maxima (> 1: the SIP door costs more)", flush=True)
    print(f"took {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
