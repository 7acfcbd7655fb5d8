"""RTP-MIDI fan-out through the real gateway vs a minimal Twisted UDP relay.

For each shape (sessions x members, one sender per session, every other member
receives) and each server -- ``twistd netgateway`` with the recovery journal on,
and bench/udp_relay_baseline.py -- pinned to CPU 0 while this load generator
runs on CPU 1:

- maximum: the highest forwarded datagrams/s with < 0.1% loss, a datagram
  arriving more than 50 ms after the step's end counting as lost (offered
  rate raised by 1.5x steps, then bisected twice between the last pass and the
  first failure; 1 s per step);
- latency at 10,000 forwarded datagrams/s: one-way added latency (send to
  receive through the server, same clock) p50 / p99 / p99.9, and the
  server's CPU time per forwarded datagram (robust when other work shares
  CPU 0).

Each generator member is an AppleMIDI endpoint set up with the project's
sans-IO session core (invite, CK); the RTP packets (NoteOn/NoteOff 60 plus a
pitch bend, with a recovery journal acknowledged up to the previous packet, as
a peer receiving RS keeps it) are built before each step, so the timed loop
only calls ``sendto``/``recv_into``. Medians of ``--runs`` runs are printed
with the gateway/baseline ratios (goals: >= 0.40 of the relay's maximum;
gateway p99 <= 1 ms at 10k/s).

While it runs, a SCHED_IDLE busy loop keeps CPU 0's vCPU from halting
between datagrams (benchlib.cpu0_kept_awake; ``--let-cpu0-idle`` turns it
off), so that latency measures the servers rather than the host's wake-ups.

With ``--python`` given more than once, each interpreter's installed build is
measured as another server in the same interleaved runs, and the ratios of
their medians to the first one's are printed at the end: this is how two
compiled sets are compared (README, "Speed").

Run: .venv/bin/python bench/rtpmidi_fanout.py [--shapes 1x1,1x4,8x5] [--runs 3]
         [--python A/bin/python --python B/bin/python]
"""

import os
import random
import select
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from gateway.protocols.rtpmidi.payload import RtpMidiPacket  # noqa: E402
from gateway.actions import Send  # noqa: E402
from gateway.protocols.rtpmidi.session import CONTROL, DATA, AppleMidiSession  # noqa: E402
from benchlib import (ID_MASK, fanout_figures, gateway_pythons, interleaved_runs,  # noqa: E402
                      max_forwarded, paced_exchange, ratio, rtp_midi_packets, start_gateway,
                      udp_benchmark_main)
from tests.conftest import free_port  # noqa: E402
from tests.rtpmidi_peer import bind_port_pair  # noqa: E402

SHAPES = {"1x1": (1, 2), "1x4": (1, 5), "8x5": (8, 5)}
LATENCY_RATE = 10_000
STEP_SECONDS = 1.0
LATENCY_SECONDS = 2.0
LATENCY_GRACE = 0.3
# A server that keeps up delivers within milliseconds; later arrivals were
# queued in its 4 MiB receive buffer, which hides overload in short steps.
THROUGHPUT_GRACE = 0.05
SIGNATURE = b"\xff\xff"
RTP_HEADER_SIZE = 12
COMMAND_LIST_SIZE = 0x8F     # the B flag and LEN of the command section header
PASSPHRASE = "rtp-midi benchmark passphrase"


class Member:
    """One generator endpoint: a control/data socket pair and, for the gateway, a session."""

    def __init__(self, index, rng, with_session):
        self.control, self.data = bind_port_pair()
        for sock in (self.control, self.data):
            sock.setblocking(False)
        self.session = (AppleMidiSession(f"bench {index}", rng.getrandbits(32),
                                         time.monotonic(), rng=rng)
                        if with_session else None)
        self.target = None
        self.sequence = rng.getrandbits(16)
        self.sender = None   # index of the member whose packets this one receives

    def carry_out(self, actions):
        for action in actions:
            if type(action) is Send:
                sock = self.control if action.via == CONTROL else self.data
                sock.sendto(action.data, action.address)

    def close(self):
        if self.session is not None:
            self.carry_out(self.session.close())
        self.control.close()
        self.data.close()

    # Packets: NoteOn/NoteOff 60 alternating, a pitch bend with ``bend``, journal on.
    def build_packets(self, count, ids, bend=True):
        """``count`` packets continuing this member's sequence (benchlib.rtp_midi_packets)."""
        ssrc = self.session.ssrc if self.session else 0x5EED
        built = rtp_midi_packets(count, self.sequence, int(time.monotonic() * 10_000), ssrc,
                                 ids=ids, bend=bend)
        self.sequence = (self.sequence + count) & 0xFFFF
        return built


def pump(members, seconds):
    """Carry AppleMIDI control traffic and timers for ``seconds``; drop leftover RTP."""
    sockets = {}
    for member in members:
        sockets[member.control] = (member, CONTROL)
        sockets[member.data] = (member, DATA)
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        readable, _, _ = select.select(list(sockets), [], [], min(remaining, 0.05))
        now = time.monotonic()
        for sock in readable:
            member, which = sockets[sock]
            while True:
                try:
                    data, addr = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                if member.session is not None and data[:2] == SIGNATURE:
                    member.carry_out(member.session.receive(data, addr, now, which))
        for member in members:
            if member.session is not None:
                member.carry_out(member.session.timer(now))


def make_groups(sessions, size, with_session):
    rng = random.Random(6295)
    groups = []
    for session in range(sessions):
        group = [Member(session * size + index, rng, with_session) for index in range(size)]
        for receiver in group[1:]:
            receiver.sender = session
        groups.append(group)
    return groups


def setup_gateway(sessions, size, args, python):
    ports = [free_port(socket.SOCK_DGRAM, even=True) for _ in range(sessions)]
    config = {
        "sessions": [{"name": f"s{index}", "passphrase": PASSPHRASE,
                      "allow_addresses": ["127.0.0.0/8"]} for index in range(sessions)],
        "limits": {"events_per_second": 1000000, "max_members_per_session": size,
                   "max_sessions": sessions + 1, "idle_timeout": 3600},
        "web": {"host": "127.0.0.1", "port": free_port()},
        "logging": {"level": "warn"},
        "rtpmidi": {"latetime": 60.0, "journal": True,
                    "sessions": [{"session": f"s{index}", "port": port}
                                 for index, port in enumerate(ports)]},
    }
    gateway = start_gateway(config, "bench-rtpmidi-", args, python)
    groups = make_groups(sessions, size, with_session=True)
    members = [member for group in groups for member in group]
    now = time.monotonic()
    for group, port in zip(groups, ports):
        for member in group:
            member.carry_out(member.session.invite(("127.0.0.1", port), now)[1])
    deadline = time.monotonic() + 20.0
    while not all(member.session.peers for member in members):
        if time.monotonic() > deadline:
            raise RuntimeError("generator members did not all join the gateway")
        pump(members, 0.1)
    for member in members:
        member.target = member.session.peers[0].data_addr
    pump(members, 0.5)
    return gateway, groups


def setup_baseline(sessions, size):
    relay = subprocess.Popen(["taskset", "-c", "0", sys.executable,
                              os.path.join(HERE, "udp_relay_baseline.py"), str(sessions)],
                             stdout=subprocess.PIPE, text=True)
    ready, *ports = relay.stdout.readline().split()
    if ready != "ready":
        raise RuntimeError("baseline relay did not start")
    ports = [int(port) for port in ports]
    groups = make_groups(sessions, size, with_session=False)
    for group, port in zip(groups, ports):
        for member in group:
            member.target = ("127.0.0.1", port)
            member.data.sendto(b"join", member.target)
    pump([member for group in groups for member in group], 0.3)
    return relay, groups


def step(groups, forwarded_rate, seconds, measure_latency, server_pid, grace, bend=True):
    """Offer ``forwarded_rate`` forwarded datagrams/s for ``seconds``; return the figures.

    ``cpu_us`` is the server's CPU time per forwarded datagram: on a shared
    machine where other work also runs on CPU 0 it stays comparable when the
    rates do not. Without ``bend`` each packet carries one command, the note
    (bench/sip_fanout.py compares with sfront, which sends one per packet).
    """
    senders = [group[0] for group in groups]
    receivers = [member for group in groups for member in group[1:]]
    fanout = len(groups[0]) - 1
    input_rate = forwarded_rate / fanout
    per_sender = max(1, int(input_rate * seconds / len(senders)))
    sources = [(sender.data, sender.target,
                sender.build_packets(per_sender, measure_latency, bend))
               for sender in senders]

    def classify(receiver, view, size):
        # AppleMIDI control packets and journal-only guard packets (no MIDI
        # list: B=0, LEN=0) forward nothing that was sent.
        if view[:2] == SIGNATURE or not view[RTP_HEADER_SIZE] & COMMAND_LIST_SIZE:
            return None
        if not measure_latency:
            return receiver.sender, None
        for _, message in RtpMidiPacket.parse(bytes(view[:size])).commands:
            if message[0] == 0xE0:
                return receiver.sender, message[1] | (message[2] << 7)
        return receiver.sender, None

    result = paced_exchange(sources, {receiver.data: receiver for receiver in receivers},
                            input_rate, grace, server_pid, classify,
                            (lambda index: index & ID_MASK) if measure_latency else None)
    return fanout_figures(result, fanout)


def max_forwarded_rate(groups, start_rate, limit, server_pid):
    """Highest forwarded rate with < 0.1% loss: 1.5x steps, then two bisections."""
    return max_forwarded_step(groups, start_rate, limit, server_pid)["forwarded"]


def max_forwarded_step(groups, start_rate, limit, server_pid, bend=True):
    """The figures of the step at the highest forwarded rate with < 0.1% loss."""
    members = [member for group in groups for member in group]
    return max_forwarded(
        lambda rate: step(groups, rate, STEP_SECONDS, False, server_pid, THROUGHPUT_GRACE, bend),
        lambda: pump(members, 0.3), start_rate, limit)


def run_server(python, shape, args):
    """One run against the baseline relay (``python`` is BASELINE) or a gateway build."""
    sessions, size = SHAPES[shape]
    gateway = python is not BASELINE
    if gateway:
        server, groups = setup_gateway(sessions, size, args, python)
    else:
        server, groups = setup_baseline(sessions, size)
    pid = server.process.pid if gateway else server.pid
    try:
        members = [member for group in groups for member in group]
        latency = step(groups, LATENCY_RATE, LATENCY_SECONDS, True, pid, LATENCY_GRACE)
        pump(members, 0.3)
        maximum = max_forwarded_rate(groups, 4000, args.max_rate, pid)
        return maximum, latency
    finally:
        for group in groups:
            for member in group:
                member.close()
        if gateway:
            server.stop()
        else:
            server.terminate()
            server.wait(15)


def main():
    def add_arguments(parser):
        parser.add_argument("--shapes", default="1x1,1x4,8x5")

    udp_benchmark_main(__doc__.split("\n")[0], add_arguments, run_all)


BASELINE = object()


def server_labels(pythons):
    """A column label per server: "baseline", and "gateway" or each build's virtualenv name."""
    if len(pythons) == 1:
        return {BASELINE: "baseline", pythons[0]: "gateway"}
    labels = {BASELINE: "baseline"}
    for number, python in enumerate(pythons, 1):
        name = os.path.basename(os.path.dirname(os.path.dirname(python)))[-10:]
        labels[python] = name if name and name not in labels.values() else f"build{number}"
    return labels


def run_all(args):
    pythons = gateway_pythons(args)
    labels = server_labels(pythons)
    servers = [BASELINE] + pythons
    if len(pythons) > 1:
        print("builds compared: " + "; ".join(f"{labels[python]} = {python}" for python in pythons))
    print(f"{'shape':>5} {'server':>10} | {'max fwd/s':>9} | at {LATENCY_RATE} fwd/s:"
          f" {'loss':>6} {'cpu µs':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8}", flush=True)
    by_build = {}
    for shape in args.shapes.split(","):
        results = {}
        runs_by_server = interleaved_runs(servers, args.runs,
                                          lambda server: run_server(server, shape, args))
        for server in servers:
            runs = runs_by_server[server]
            figures = {"max": statistics.median(run[0] for run in runs)}
            for key in ("loss", "cpu_us", "p50", "p99", "p999"):
                figures[key] = statistics.median(run[1][key] for run in runs)
            results[server] = figures
            print(f"{shape:>5} {labels[server]:>10} | {figures['max']:9.0f} | {'':16}"
                  f" {figures['loss']:6.2%} {figures['cpu_us']:7.1f} {figures['p50']:7.3f} {figures['p99']:7.3f}"
                  f" {figures['p999']:8.3f}   (runs: "
                  f"{', '.join(f'{run[0]:.0f}' for run in runs)})", flush=True)
        base = results[BASELINE]
        for python in pythons:
            ours = results[python]
            print(f"{shape:>5} {labels[python]:>10} | gateway/baseline max ="
                  f" {ratio(ours['max'], base['max']):.2f} (goal >= 0.40),"
                  f" by CPU per datagram = {ratio(base['cpu_us'], ours['cpu_us']):.2f};"
                  f" gateway p99 at 10k/s = {ours['p99']:.3f} ms (goal <= 1 ms),"
                  f" p99 gateway/baseline = {ratio(ours['p99'], base['p99']):.2f}", flush=True)
        by_build[shape] = results
    if len(pythons) > 1:
        first = pythons[0]
        print(f"ratios of medians against {labels[first]} (> 1: faster):")
        for python in pythons[1:]:
            for shape, results in by_build.items():
                ours, theirs = results[python], results[first]
                print(f"{shape:>5} {labels[python]:>10} / {labels[first]}:"
                      f" max {ratio(ours['max'], theirs['max']):.2f},"
                      f" by CPU per datagram {ratio(theirs['cpu_us'], ours['cpu_us']):.2f},"
                      f" p99 at 10k/s {ratio(ours['p99'], theirs['p99']):.2f}", flush=True)


if __name__ == "__main__":
    main()
