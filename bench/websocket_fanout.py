"""WebSocket fan-out through the gateway vs a minimal autobahn broadcast server.

For each shape (sessions x members) and each server (the real ``twistd
netgateway`` and bench/ws_broadcast_baseline.py, both started here and pinned
to CPU 0 while this load generator runs on CPU 1), every member sends 3-byte
MIDI binary frames (pitch bend carrying an 18-bit sequence number) and
receives everyone else's. Printed per shape:

- light load: 1,000 messages/s sent in total for ``--seconds``: delivered/s,
  one-way latency p50/p99 (send to receive, same clock);
- maximum: offered rate doubled step by step; the highest delivered rate
  whose step lost < 0.1% (late messages count as lost after a 1 s grace);
- ratios gateway/baseline for throughput and p99.

Run: .venv/bin/python bench/websocket_fanout.py [--shapes 1x2,8x5,50x4]
Absolute figures are noise on shared 2-core machines; read the ratios.
"""

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from benchlib import (add_source_argument, cpu_seconds, run_generator_on_cpu1,  # noqa: E402
                      start_gateway)
from tests.conftest import free_port  # noqa: E402

SEQ_SPACE = 1 << 18


def pinned(command, cpu="0"):
    return (["taskset", "-c", cpu] + command) if os.path.exists("/usr/bin/taskset") else command


def setup_gateway(shape_sessions, members, args):
    config = {
        "sessions": [{"name": f"s{i}", "passphrase": "benchmark passphrase 0123"}
                     for i in range(shape_sessions)],
        "limits": {"events_per_second": 1000000, "max_members_per_session": members,
                   "max_sessions": shape_sessions + 1},
        "web": {"host": "127.0.0.1", "port": free_port()},
        "websocket": {"ping_interval": 300, "send_buffer_bytes": 4 * 1024 * 1024},
        "logging": {"level": "warn"},
    }
    return start_gateway(config, "bench-ws-", args), config["web"]["port"]


def start_baseline():
    port = free_port()
    process = subprocess.Popen(pinned([sys.executable, os.path.join(HERE,
                                                                    "ws_broadcast_baseline.py"),
                                       str(port)]))
    return process, port


def wait_for_port(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


class Member(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.opened.set_result(self)

    def onMessage(self, payload, isBinary):
        stats = self.factory.stats
        if not isBinary:
            if not self.factory.joined.done():
                self.factory.joined.set_result(payload)
            return
        now = time.perf_counter()
        for offset in range(0, len(payload) - 2, 3):
            seq = (payload[offset] & 0x0F) << 14 | payload[offset + 1] << 7 | payload[offset + 2]
            sent = stats.sent_at.get(seq)
            if sent is not None:
                stats.latencies.append(now - sent)
                stats.received += 1


class Stats:
    def __init__(self):
        self.sent_at = {}
        self.latencies = []
        self.received = 0


async def connect_members(port, sessions, members, stats):
    loop = asyncio.get_running_loop()
    clients = []
    for session in range(sessions):
        for index in range(members):
            factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/ws")
            factory.protocol = Member
            factory.stats = stats
            factory.opened = loop.create_future()
            factory.joined = loop.create_future()
            await loop.create_connection(factory, "127.0.0.1", port)
            client = await asyncio.wait_for(factory.opened, 10)
            client.sendMessage(
                (f'{{"type":"join","session":"s{session}","passphrase":'
                 f'"benchmark passphrase 0123","name":"m{index}","midi":"binary"}}').encode())
            await asyncio.wait_for(factory.joined, 10)
            clients.append(client)
    return clients


async def run_step(clients, members, stats, rate, seconds, server_pid):
    """Send ``rate`` messages/s in total for ``seconds``; return step figures."""
    cpu_before = cpu_seconds(server_pid)
    stats.sent_at.clear()
    stats.latencies.clear()
    stats.received = 0
    total = int(rate * seconds)
    total = min(total, SEQ_SPACE - 1)
    start = time.perf_counter()
    tick = 0.002
    sent = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while sent < due:
            client = clients[sent % len(clients)]
            seq = sent
            stats.sent_at[seq] = time.perf_counter()
            client.sendMessage(bytes((0xE0 | seq >> 14, (seq >> 7) & 0x7F, seq & 0x7F)),
                               isBinary=True)
            sent += 1
        await asyncio.sleep(tick)
    elapsed = time.perf_counter() - start
    expected = sent * (members - 1)
    deadline = time.perf_counter() + 1.0
    while stats.received < expected and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    cpu_used = cpu_seconds(server_pid) - cpu_before
    latencies = sorted(stats.latencies)

    def pct(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies \
            else float("nan")
    return {"offered": sent / elapsed, "delivered": stats.received / elapsed,
            "loss": 1 - stats.received / expected if expected else 0.0,
            "p50": pct(0.50), "p99": pct(0.99),
            "cpu_us": cpu_used / stats.received * 1e6 if stats.received else float("nan")}


async def measure(port, server_pid, sessions, members, seconds, max_rate):
    stats = Stats()
    clients = await connect_members(port, sessions, members, stats)
    light = await run_step(clients, members, stats, 1000, seconds, server_pid)
    best = None
    rate = 1000
    while rate <= max_rate:
        step = await run_step(clients, members, stats, rate, max(2.0, seconds / 2), server_pid)
        if step["loss"] >= 0.001 or step["offered"] < rate * 0.9:
            break
        best = step
        rate *= 2
    for client in clients:
        # The server is about to be stopped anyway; a closing handshake per
        # member would only add noise (and timeouts) to the next run.
        client.transport.abort()
    return light, best


def run_server(kind, sessions, members, args):
    if kind == "gateway":
        gateway, port = setup_gateway(sessions, members, args)
        process = gateway.process
    else:
        process, port = start_baseline()
    try:
        wait_for_port(port)
        return asyncio.run(measure(port, process.pid, sessions, members, args.seconds,
                                   args.max_rate))
    finally:
        if kind == "gateway":
            gateway.stop()
        else:
            process.terminate()
            process.wait(15)


def summarise(runs):
    """Medians over runs of (light step, best max step)."""
    light = {key: statistics.median(run[0][key] for run in runs)
             for key in ("delivered", "p50", "p99", "cpu_us")}
    best = [run[1] for run in runs]
    maximum = {"delivered": statistics.median(step["delivered"] if step else 0.0
                                              for step in best),
               "p99": statistics.median(step["p99"] if step else float("nan") for step in best),
               "cpu_us": statistics.median(step["cpu_us"] if step else float("nan")
                                           for step in best)}
    return light, maximum


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="1x2,8x5,50x4")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--max-rate", type=int, default=64000)
    parser.add_argument("--runs", type=int, default=3, help="medians over this many runs")
    add_source_argument(parser)
    args = parser.parse_args()
    run_generator_on_cpu1()
    print(f"{'shape':>6} {'server':>8} | light 1000/s: {'deliv/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
          f" {'cpu us/msg':>10} | max: {'deliv/s':>8} {'p99 ms':>7} {'cpu us/msg':>10}")
    for shape in args.shapes.split(","):
        sessions, members = map(int, shape.split("x"))
        runs = {"baseline": [], "gateway": []}
        # Interleaved, so both servers meet the same noise from the shared machine.
        for _ in range(args.runs):
            for kind in runs:
                runs[kind].append(run_server(kind, sessions, members, args))
        results = {}
        for kind, kind_runs in runs.items():
            light, maximum = results[kind] = summarise(kind_runs)
            print(f"{shape:>6} {kind:>8} | {'':13} {light['delivered']:8.0f} {light['p50']:7.2f}"
                  f" {light['p99']:7.2f} {light['cpu_us']:10.1f} | {'':4}"
                  f" {maximum['delivered']:8.0f} {maximum['p99']:7.2f}"
                  f" {maximum['cpu_us']:10.1f}", flush=True)
        (base_light, base_max), (light, maximum) = results["baseline"], results["gateway"]
        print(f"{shape:>6}   ratio  | max throughput gateway/baseline ="
              f" {maximum['delivered'] / base_max['delivered']:.2f} (goal >= 0.50);"
              f" baseline/gateway CPU per message = {base_max['cpu_us'] / maximum['cpu_us']:.2f};"
              f" p99 at 1000/s gateway/baseline = {light['p99'] / base_light['p99']:.2f}"
              f" (goal <= 2)", flush=True)


if __name__ == "__main__":
    main()
