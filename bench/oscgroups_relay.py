"""OSCgroups relay and OSC -> session -> OSC bridge through twistd vs a minimal UDP relay.

Three servers, each pinned to CPU 0 while this load generator runs on CPU 1:

- baseline: bench/udp_relay_baseline.py, one port per flow, 1 -> 1;
- relay: ``twistd netgateway`` with ``oscgroups.relay.policy: always``. Each
  flow is a pair of OSCgroups users registered with the real server over UDP;
  each pings the relay port the server advertised for the other (as
  OscGroupClient does), then one sends ``/midi/note`` datagrams to the other's
  relay port and the other receives them from the sender's relay port;
- bridge: the same twistd's bridge in a mirror session (interval 7, no
  delay). Each flow is one OSCgroups user: its ``/midi/note`` goes to the
  bridge, becomes session MIDI, the mirror echoes it a fifth up, and the
  bridge sends ``/midi/noteon`` back: OSC -> session -> OSC.

Per server: the highest received datagrams/s with < 0.1% loss (offered rate
raised in 1.5x steps, then bisected twice; 1 s per step; a datagram arriving
over 50 ms after the step's end is lost; a step the generator could not keep
on schedule counts as failed) and the added one-way latency
p50 / p99 at ``LATENCY_RATE`` (send to receive, same clock). Medians of
``--runs`` runs, with relay/baseline (goal >= 0.50) and bridge/baseline (goal
>= 0.30).

CPU 0 is kept from halting between datagrams as in bench/rtpmidi_fanout.py
(``--let-cpu0-idle`` turns that off).

Run: .venv/bin/python bench/oscgroups_relay.py [--flows 4] [--runs 3]
         [--python A/bin/python --python B/bin/python [--any-build]]
With ``--python`` given more than once, each interpreter's installed build is
measured in the same interleaved runs and the ratios to the first are printed
(``--any-build`` allows builds of other sources: before/after a change).
Absolute figures are noise on shared 2-core machines; read the ratios.
"""

import os
import socket
import statistics
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, HERE]

from benchlib import (find_maximum, gateway_pythons, paced_exchange, percentile,  # noqa: E402
                      start_gateway, udp_benchmark_main)

from gateway.protocols.oscgroups import wire  # noqa: E402
from tests.conftest import free_port  # noqa: E402

LOOPBACK = "127.0.0.1"
LATENCY_RATE = 5_000
MAX_LOSS = 0.001
STEP_SECONDS = 1.0
LATENCY_SECONDS = 2.0
# Datagrams arriving later than this after a step's end count as lost: the
# 4 MiB receive buffers would otherwise absorb a second of overload.
GRACE_SECONDS = 0.05
MIRROR = ("echo", "mirror benchmark passphrase")
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
# Bridge ids ride in note (0-63, below the mirror's fifth) and velocity (1-127).
BRIDGE_IDS = 64 * 127
NOTE_HEAD = wire.encode_message("/midi/note", "iii", (1, 0, 0))[:-12]
ECHO_PREFIX = b"/midi/noteon"


def udp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    sock.bind((LOOPBACK, 0))
    return sock


class Flow:
    """Datagrams from ``sender`` to ``target``, arriving on ``receiver``; ids inside."""

    def __init__(self, sender, target, receiver, through_bridge=False):
        self.sender, self.target, self.receiver = sender, target, receiver
        self.through_bridge = through_bridge

    def packet(self, packet_id):
        if self.through_bridge:
            packet_id %= BRIDGE_IDS
            return NOTE_HEAD + struct.pack(">iii", 1, packet_id & 63, (packet_id >> 6) + 1)
        return NOTE_HEAD + struct.pack(">iii", 1, 60, packet_id)

    def received_id(self, data):
        """The id in a datagram this flow's receiver got, or None for anything else."""
        if self.through_bridge:
            if not data.startswith(ECHO_PREFIX):
                return None
            _channel, note, velocity = struct.unpack_from(">iii", data, len(data) - 12)
            return (note - 7) | ((velocity - 1) << 6)
        if not data.startswith(NOTE_HEAD):
            return None        # the peers' forwarded pings
        return struct.unpack_from(">i", data, len(data) - 4)[0]

    def drain(self):
        self.receiver.setblocking(False)
        while True:
            try:
                self.receiver.recv(65535)
            except BlockingIOError:
                return


def step(flows, rate, seconds, measure_latency, server_pid):
    """Offer ``rate`` datagrams/s spread over the flows for ``seconds``; return the figures."""
    per_flow = max(1, int(rate * seconds / len(flows)))
    sources = [(flow.sender, flow.target, [flow.packet(index) for index in range(per_flow)])
               for flow in flows]

    def classify(number, view, size):
        packet_id = flows[number].received_id(bytes(view[:size]))
        return None if packet_id is None else (number, packet_id % BRIDGE_IDS)

    result = paced_exchange(sources, {flow.receiver: number for number, flow in enumerate(flows)},
                            rate, GRACE_SECONDS, server_pid, classify,
                            (lambda index: index % BRIDGE_IDS) if measure_latency else None)
    received, sent, latencies = result["received"], result["sent"], result["latencies"]
    return {"received": received / result["elapsed"],
            "loss": 1.0 - received / sent if sent else 0.0,
            "on_schedule": result["on_schedule"], "cpu_us": result["cpu_us"],
            "p50": percentile(latencies, 0.50), "p99": percentile(latencies, 0.99)}


def max_received_rate(flows, start_rate, limit, server_pid):
    """Highest received rate with < 0.1% loss: 1.5x steps, then two bisections."""
    def passes(rate):
        result = step(flows, rate, STEP_SECONDS, False, server_pid)
        time.sleep(0.2)
        for flow in flows:
            flow.drain()
        return result if result["loss"] < MAX_LOSS and result["on_schedule"] else None

    best = find_maximum(passes, start_rate, limit)
    return best[1]["received"] if best else 0.0


def measure(flows, pid, args):
    for flow in flows:
        flow.drain()
    latency = step(flows, LATENCY_RATE, LATENCY_SECONDS, True, pid)
    for flow in flows:
        flow.drain()
    return max_received_rate(flows, 4000, args.max_rate, pid), latency


# ----------------------------------------------------------------------
# Servers


def run_baseline(args):
    process = subprocess.Popen(["taskset", "-c", "0", sys.executable,
                                os.path.join(HERE, "udp_relay_baseline.py"), str(args.flows)],
                               stdout=subprocess.PIPE, text=True)
    sockets = []
    try:
        ready, *ports = process.stdout.readline().split()
        if ready != "ready":
            raise RuntimeError("baseline relay did not start")
        ports = [int(port) for port in ports]
        flows = []
        for port in ports:
            sender, receiver = udp_socket(), udp_socket()
            sockets += [sender, receiver]
            for sock in (sender, receiver):
                sock.sendto(b"join", (LOOPBACK, port))
            flows.append(Flow(sender, (LOOPBACK, port), receiver))
        time.sleep(0.3)
        return measure(flows, process.pid, args)
    finally:
        for sock in sockets:
            sock.close()
        process.terminate()
        process.wait(15)


def setup_gateway(args, python):
    server_port, bridge_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    relay_first = 30000 + os.getpid() % 20000
    config = {
        "sessions": [{"name": MIRROR[0], "passphrase": MIRROR[1],
                      "mirror": {"interval": 7, "delay": 0.0}}],
        "limits": {"events_per_second": 1000000, "max_members_per_session": args.flows + 1},
        "web": {"host": LOOPBACK, "port": free_port()},
        "websocket": {"enabled": False}, "rtpmidi": {"enabled": False},
        "logging": {"level": "warn"},
        "oscgroups": {"host": LOOPBACK, "port": server_port, "timeout": 3600,
                      "bridge": {"port": bridge_port, "groups": [MIRROR[0]]},
                      "relay": {"policy": "always", "port_min": relay_first,
                                "port_max": relay_first + 2 * args.flows + 7,
                                "packets_per_second": 1000000}}}
    gateway = start_gateway(config, "bench-oscgroups-", args, python)
    return gateway, (LOOPBACK, server_port), (LOOPBACK, bridge_port)


def alive_bundle(sock, name, group, group_password):
    """The bundle OscGroupClient sends every 6 s, for a client on ``sock``."""
    return wire.encode_bundle([
        wire.UserAlive(name, wire.password_hash(name), sock.getsockname(),
                       ((group, wire.password_hash(group_password)),)).encode(),
        wire.GroupUsersQuery(group, wire.password_hash(group_password)).encode()])


def user_infos(sock, server, alive, timeout=5.0):
    """Send ``alive`` to the server; {name: UserInfo} from its reply."""
    sock.settimeout(timeout)
    sock.sendto(alive, server)
    infos = {}
    while True:
        data, source = sock.recvfrom(65535)
        if source != server:
            continue
        for message in wire.parse_packet(data):
            decoded = wire.decode_message(message)
            if isinstance(decoded, wire.UserInfo):
                infos[decoded.user_name] = decoded
        return infos


def ping(name):
    return wire.encode_bundle([wire.Ping(name).encode()])


def relay_flows(server, count, sockets):
    flows = []
    for number in range(count):
        group = f"pair{number}"
        sender, receiver = udp_socket(), udp_socket()
        sockets += [sender, receiver]
        names = {sender: f"x{number}", receiver: f"u{number}"}
        alives = {sock: alive_bundle(sock, name, group, "bench") for sock, name in names.items()}
        user_infos(sender, server, alives[sender])
        user_infos(receiver, server, alives[receiver])
        relay_of = {sock: user_infos(sock, server, alives[sock])[names[other]].public_endpoint
                    for sock, other in ((sender, receiver), (receiver, sender))}
        for _ in range(2):
            for sock in (sender, receiver):
                sock.sendto(ping(names[sock]), relay_of[sock])
            time.sleep(0.05)
        flows.append(Flow(sender, relay_of[sender], receiver))
    return flows


def bridge_flows(server, bridge, count, sockets):
    flows = []
    for number in range(count):
        sock = udp_socket()
        sockets.append(sock)
        name = f"player{number}"
        alive = alive_bundle(sock, name, *MIRROR)
        flow = Flow(sock, bridge, sock, through_bridge=True)
        deadline = time.monotonic() + 20.0
        echoed = False
        while not echoed:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the bridge never echoed {name}'s notes")
            user_infos(sock, server, alive)
            sock.sendto(ping(name), bridge)
            sock.sendto(flow.packet(0), bridge)
            sock.settimeout(0.3)
            try:
                while not echoed:
                    echoed = flow.received_id(sock.recv(65535)) == 0
            except socket.timeout:
                pass
        flows.append(flow)
    return flows


def run_gateway(args, python):
    gateway, server, bridge = setup_gateway(args, python)
    sockets = []
    try:
        relay = measure(relay_flows(server, args.flows, sockets), gateway.process.pid, args)
        relay_status = gateway.status()["doors"]["oscgroups"]["relay"]
        if relay_status["forwarded"]["packets"] == 0:
            raise RuntimeError("the relay forwarded nothing")
        bridged = measure(bridge_flows(server, bridge, args.flows, sockets),
                          gateway.process.pid, args)
        return relay, bridged
    finally:
        for sock in sockets:
            sock.close()
        gateway.stop()


def summary(runs):
    return {"max": statistics.median(run[0] for run in runs),
            **{key: statistics.median(run[1][key] for run in runs)
               for key in ("loss", "cpu_us", "p50", "p99")},
            "each": [round(run[0]) for run in runs]}


def main():
    def add_arguments(parser):
        parser.add_argument("--flows", type=int, default=4)

    udp_benchmark_main(__doc__.split("\n")[0], add_arguments, run_all)


def run_all(args):
    pythons = gateway_pythons(args)
    # One label per gateway build: its virtualenv's name when several are compared.
    labels = {python: "" if len(pythons) == 1 else
              f" {os.path.basename(os.path.dirname(os.path.dirname(python)))[-10:]}"
              for python in pythons}
    baseline_runs = []
    gateway_runs = {python: ([], []) for python in pythons}
    for number in range(args.runs):
        # Interleaved, in a rotated order, so that other load hits every build alike.
        baseline_runs.append(run_baseline(args))
        shift = number % len(pythons)
        for python in pythons[shift:] + pythons[:shift]:
            relay, bridged = run_gateway(args, python)
            gateway_runs[python][0].append(relay)
            gateway_runs[python][1].append(bridged)
    results = {"baseline": summary(baseline_runs)}
    for python, (relay_runs, bridge_runs) in gateway_runs.items():
        results["relay" + labels[python]] = summary(relay_runs)
        results["bridge" + labels[python]] = summary(bridge_runs)
    print(f"{args.flows} flows, medians of {args.runs} runs")
    print(f"{'server':>18} | {'max recv/s':>10} | at {LATENCY_RATE}/s: {'loss':>6} {'cpu µs':>7}"
          f" {'p50 ms':>7} {'p99 ms':>7} | runs")
    for kind, figures in results.items():
        print(f"{kind:>18} | {figures['max']:10.0f} | {'':12}{figures['loss']:6.2%}"
              f" {figures['cpu_us']:7.1f} {figures['p50']:7.3f} {figures['p99']:7.3f}"
              f" | {figures['each']}")
    base = results["baseline"]
    for python in pythons:
        for kind, goal in (("relay", 0.50), ("bridge", 0.30)):
            figures = results[kind + labels[python]]
            print(f"{kind + labels[python]}/baseline: max {figures['max'] / base['max']:.2f}"
                  f" (goal >= {goal:.2f}), by CPU per datagram"
                  f" {base['cpu_us'] / figures['cpu_us']:.2f},"
                  f" added p50 {figures['p50'] - base['p50']:+.3f} ms,"
                  f" p99 {figures['p99'] - base['p99']:+.3f} ms")
    first = pythons[0]
    for python in pythons[1:]:
        for kind in ("relay", "bridge"):
            ours, theirs = results[kind + labels[python]], results[kind + labels[first]]
            print(f"{kind}:{labels[python]} /{labels[first]}: max"
                  f" {ours['max'] / theirs['max']:.2f}, by CPU per datagram"
                  f" {theirs['cpu_us'] / ours['cpu_us']:.2f}")


if __name__ == "__main__":
    main()
