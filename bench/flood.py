"""Flood: what garbage sent to each door costs the gateway, and its legit members.

A real ``twistd netgateway`` with every door on (benchlib.every_door_config)
and two legit WebSocket members in one session, each sending ``--legit-rate``
pitch bends a second to the other, with a 14-bit id in each: one-way delay
(send to receive, one clock) and loss (not received within 1 s of the
phase's end). One phase per row, ``--seconds`` each, the flood in a process
of its own pinned to CPU 1 with the legit members (the gateway runs on CPU 0):

- quiet: no flood, the reference;
- websocket frames / json / guesses: ``--connections`` concurrent
  connections, each opened, upgraded, then sending one invalid frame (a
  reserved opcode), one text frame of invalid JSON, or wrong-passphrase
  joins (one after another, each waiting for its answer, until the gateway
  closes the connection), then closed; a new one follows at once;
- oscgroups / applemidi / sip: random datagrams (1-200 bytes) at
  ``--udp-rate`` a second to the OSCgroups server port, the AppleMIDI
  control port and the SIP port.

The flood comes from ``--sources`` addresses (127.0.K.2, one per /24), none
exempt from the per-source limits (the config's ``source_limits_exempt`` is
empty), as an attacker on the Internet would be; the legit members come from
127.0.0.1. ``--sources 0`` floods from 127.0.0.1 with loopback exempt again:
what the flood cost before the per-source limits.

Printed per phase: what the flood sent (connections or datagrams, and the
rate reached), the gateway's CPU (% of one core), the bytes its log grew
(and per second), what /status counted meanwhile (the door's drops, the
bus's refusals, and the kernel's receive drops on the flooded UDP port as
/status reports them), and the legit members' p50/p99 one-way delay and
loss.
The column uncounted is what the flood sent (connections refused before
their upgrade, invalid frames, JSON texts, guesses, datagrams) less what the
gateway's counters and the kernel's show (drops + refusals + kernel drops,
floored at 0): what went by uncounted, at least. For the guesses phase,
``checked/min`` is how many guesses a minute had their passphrase checked
(refused as wrong_passphrase, not throttled unchecked), per source.

It passes (exit status 0) when the gateway is alive with no Traceback in its
log and the legit members lost nothing. Cost (CPU, log, delay) is printed,
not judged: issue 16 sets the goals.

Run: .venv/bin/python bench/flood.py [--seconds 20] [--udp-rate 20000] [--sources 1] [--quick]
"""

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import random
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, HERE]

from benchlib import (add_source_argument, cpu0_kept_awake, cpu_seconds, door_drops,  # noqa: E402
                      every_door_config, gateway_failures, percentile,
                      run_generator_on_cpu1, start_gateway, verdict)
from tests.wsclient import JamClient  # noqa: E402

LOOPBACK = "127.0.0.1"
SESSION = ("flood", "flood benchmark passphrase 0123")
ID_SPACE = 1 << 14
GRACE_SECONDS = 1.0
UDP_DOORS = {"oscgroups": "oscgroups", "applemidi": "applemidi_control", "sip": "sip"}
"""UDP phase -> the port (every_door_config's name) it floods."""
DROP_DOORS = {"oscgroups": "oscgroups", "applemidi": "rtpmidi", "sip": "sip"}
WEBSOCKET_FLOODS = ("frames", "json", "guesses")
GUESSES_PER_CONNECTION = 20


# ----------------------------------------------------------------------
# Legit members


class LegitPair:
    """Two WebSocket members sending each other pitch bends with ids; delays and loss."""

    def __init__(self, clients):
        self.clients = clients
        self.sent_at = [{}, {}]         # by sender: id -> send time
        self.delays = []
        self.received = 0

    @classmethod
    async def join(cls, url):
        clients = []
        for name in ("legit-a", "legit-b"):
            client = await JamClient.connect(url)
            reply = await client.join(*SESSION, name, midi="binary")
            if reply["type"] != "joined":
                raise RuntimeError(f"{name} was refused: {reply}")
            clients.append(client)
        return cls(clients)

    async def _receive(self, number):
        """What member ``number`` hears: the other's pitch bends."""
        sent_at = self.sent_at[1 - number]
        while True:
            payload = (await self.clients[number].midi(timeout=3600))["data"]
            now = time.perf_counter()
            for offset in range(0, len(payload) - 2, 3):
                sent = sent_at.pop(payload[offset + 1] | payload[offset + 2] << 7, None)
                if sent is not None:
                    self.delays.append(now - sent)
                    self.received += 1

    async def run(self, seconds, rate):
        """Send ``rate``/s from each member for ``seconds``; (sent, received, delays)."""
        for sent_at in self.sent_at:
            sent_at.clear()
        self.delays, self.received = [], 0
        receivers = [asyncio.create_task(self._receive(number)) for number in (0, 1)]
        start = time.perf_counter()
        total = min(int(seconds * rate), ID_SPACE - 1)
        sent = 0
        while sent < total and time.perf_counter() - start < 2 * seconds:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while sent < due:
                for number, client in enumerate(self.clients):
                    self.sent_at[number][sent] = time.perf_counter()
                    client.send_binary((0xE0, sent & 0x7F, sent >> 7))
                sent += 1
            await asyncio.sleep(0.002)
        deadline = time.perf_counter() + GRACE_SECONDS
        while self.received < 2 * sent and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        for receiver in receivers:
            receiver.cancel()
        return 2 * sent, self.received, sorted(self.delays)


# ----------------------------------------------------------------------
# Flooders (each runs in a process of its own until its deadline)


def masked_frame(opcode, payload):
    """A client frame (clients must mask), FIN set; payload under 126 bytes."""
    mask = os.urandom(4)
    return (bytes((0x80 | opcode, 0x80 | len(payload))) + mask
            + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload)))


def upgrade_request(port):
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /ws HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def flood_sources(count):
    """The addresses a flood comes from: one per /24 (127.0.K.2), or 127.0.0.1 for 0."""
    return [f"127.0.{network}.2" for network in range(1, count + 1)] or [LOOPBACK]


async def websocket_connection(port, kind, source, counts):
    """One flooding connection from ``source``: upgrade, the garbage of ``kind``, close.

    Counts in ``counts["refused"]`` a connection closed before its upgrade was
    answered, and in ``counts["messages"]`` each garbage message it sends.
    """
    reader, writer = await asyncio.open_connection(LOOPBACK, port, local_addr=(source, 0))
    try:
        writer.write(upgrade_request(port))
        try:
            await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError):
            counts["refused"] += 1
            return
        if kind == "frames":
            writer.write(masked_frame(0x3, b"reserved opcode"))
            counts["messages"] += 1
            await reader.read(1024)               # the close frame, or the end
        elif kind == "json":
            writer.write(masked_frame(0x1, b"{this is not json"))
            counts["messages"] += 1
            await reader.read(1024)
        else:
            for guess in range(GUESSES_PER_CONNECTION):
                join = json.dumps({"type": "join", "session": SESSION[0], "name": "guesser",
                                   "passphrase": f"wrong guess {guess} {os.urandom(4).hex()}"})
                writer.write(masked_frame(0x1, join.encode()))
                counts["messages"] += 1
                answer = await reader.read(1024)
                if not answer or answer[0] == 0x88:       # closed: nothing more is read
                    break
    finally:
        writer.transport.abort()


def flood_websocket(port, kind, seconds, connections, sources, results):
    """``connections`` at a time, each followed at once by a new one, until the deadline."""
    run_generator_on_cpu1()

    async def worker(number, deadline, counts):
        source = sources[number % len(sources)]
        while time.monotonic() < deadline:
            counts["connections"] += 1
            try:
                await asyncio.wait_for(websocket_connection(port, kind, source, counts), 5)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                pass        # the gateway closed it: the next one follows

    async def flood():
        counts = {"connections": 0, "messages": 0, "refused": 0}
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(worker(number, deadline, counts)
                               for number in range(connections)))
        return counts

    start = time.perf_counter()
    counts = asyncio.run(flood())
    results.put((counts["connections"], counts["messages"] + counts["refused"],
                 time.perf_counter() - start))


def flood_udp(port, rate, seconds, sources, results):
    """Random datagrams to ``port`` at ``rate``/s for ``seconds``, in 1 ms batches, from
    each of ``sources`` in turn."""
    run_generator_on_cpu1()
    rng = random.Random(port)
    garbage = [rng.randbytes(rng.randint(1, 200)) for _ in range(4096)]
    socks = []
    for source in sources:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        socks.append(sock)
    target = (LOOPBACK, port)
    total = int(rate * seconds)
    sent = 0
    start = time.perf_counter()
    while sent < total:
        elapsed = time.perf_counter() - start
        if elapsed > seconds * 1.5:
            break                   # fell behind: the rate printed says so
        due = min(total, int(elapsed * rate) + 1)
        while sent < due:
            try:
                socks[sent % len(socks)].sendto(garbage[sent % len(garbage)], target)
            except OSError:         # ECONNREFUSED from an ICMP error: count, go on
                pass
            sent += 1
        time.sleep(0.001)
    for sock in socks:
        sock.close()
    results.put((sent, sent, time.perf_counter() - start))


# ----------------------------------------------------------------------
# Phases


def snapshot(gateway, door, port):
    status = gateway.status()
    kernel = status["kernel_drops"].get(door, {}).get(str(port), 0) if port else 0
    return {"cpu": cpu_seconds(gateway.process.pid), "log": os.path.getsize(gateway.log_path),
            "drops": {door: door_drops(status, door) for door in status["drops"]},
            "refusals": sum(status["refusals"].values()),
            "checked": status["refusals"].get("wrong_passphrase", 0),
            "kernel": kernel, "time": time.perf_counter()}


async def run_phase(name, gateway, ports, pair, args):
    if name == "quiet":
        flooder, port, door = None, None, None
    elif name in WEBSOCKET_FLOODS:
        port, door = None, "websocket"
        flooder = (flood_websocket, (ports["websocket"], name, args.seconds, args.connections,
                                     flood_sources(args.sources)))
    else:
        port, door = ports[UDP_DOORS[name]], DROP_DOORS[name]
        flooder = (flood_udp, (port, args.udp_rate, args.seconds, flood_sources(args.sources)))
    before = snapshot(gateway, door, port)
    sent_by_flood, messages, flood_seconds = 0, 0, 0.0
    if flooder:
        results = multiprocessing.get_context("fork").SimpleQueue()
        process = multiprocessing.get_context("fork").Process(target=flooder[0],
                                                               args=flooder[1] + (results,))
        process.start()
    legit = await pair.run(args.seconds, args.legit_rate)
    if flooder:
        process.join(args.seconds * 2 + 10)
        if process.is_alive():
            process.kill()
            raise RuntimeError(f"the {name} flooder did not finish")
        sent_by_flood, messages, flood_seconds = results.get()
    after = snapshot(gateway, door, port)
    elapsed = after["time"] - before["time"]
    # Connections refused at accept time are the web site's (the door of the port).
    counted = {door, "web"} if door == "websocket" else {door}
    drops = sum(after["drops"].get(d, 0) - before["drops"].get(d, 0) for d in after["drops"]
                if door is None or d in counted)
    refusals = after["refusals"] - before["refusals"]
    kernel = after["kernel"] - before["kernel"]
    legit_sent, legit_received, delays = legit
    return {"phase": name, "door": door, "sent": sent_by_flood, "flood_seconds": flood_seconds,
            "elapsed": elapsed,
            "cpu": (after["cpu"] - before["cpu"]) / elapsed * 100,
            "log": after["log"] - before["log"], "drops": drops, "refusals": refusals,
            "kernel": kernel,
            "uncounted": max(0, messages - drops - refusals - kernel) if flooder else None,
            "checked_per_minute": (after["checked"] - before["checked"]) / elapsed * 60
            / max(1, args.sources),
            "p50": percentile(delays, 0.50), "p99": percentile(delays, 0.99),
            "loss": 1 - legit_received / legit_sent if legit_sent else float("nan")}


def print_row(row):
    unit = "conn" if row["phase"] in WEBSOCKET_FLOODS else "dgram"
    flood = f"{row['sent']:>8} {unit:<5} {row['sent'] / row['flood_seconds']:>7.0f}/s" \
        if row["sent"] else f"{'-':>23}"
    uncounted = "-" if row["uncounted"] is None else str(row["uncounted"])
    checked = f"{row['checked_per_minute']:.1f}" if row["phase"] == "guesses" else "-"
    print(f"{row['phase']:<10} {flood} {row['cpu']:>6.1f} {row['log'] / 1024:>9.1f}"
          f" {row['log'] / 1024 / row['elapsed']:>7.1f} {row['drops']:>8} {row['refusals']:>7}"
          f" {row['kernel']:>7} {uncounted:>9} {checked:>11} | {row['p50']:>7.2f}"
          f" {row['p99']:>7.2f} {row['loss'] * 100:>6.2f}", flush=True)


async def flood_all(gateway, ports, args):
    pair = await LegitPair.join(gateway.ws_url)
    print(f"{'phase':<10} {'flood sent':>23} {'CPU %':>6} {'log KB':>9} {'KB/s':>7}"
          f" {'drops':>8} {'refused':>7} {'kernel':>7} {'uncounted':>9} {'checked/min':>11} |"
          f" {'p50 ms':>7} {'p99 ms':>7} {'loss %':>6}")
    rows = []
    for name in args.phases.split(","):
        rows.append(await run_phase(name, gateway, ports, pair, args))
        print_row(rows[-1])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--quick", action="store_true", help="3 s per phase")
    parser.add_argument("--phases",
                        default=",".join(("quiet",) + WEBSOCKET_FLOODS + tuple(UDP_DOORS)))
    parser.add_argument("--udp-rate", type=float, default=20_000, help="datagrams/s")
    parser.add_argument("--connections", type=int, default=50,
                        help="concurrent WebSocket flooding connections")
    parser.add_argument("--sources", type=int, default=1,
                        help="addresses the flood comes from, one per /24; 0: 127.0.0.1,"
                             " exempt from the per-source limits")
    parser.add_argument("--legit-rate", type=float, default=200,
                        help="messages/s each legit member sends")
    parser.add_argument("--let-cpu0-idle", action="store_true",
                        help="do not keep CPU 0 busy at SCHED_IDLE (then p99 measures the"
                             " host's vCPU wake-ups; see benchlib.cpu0_kept_awake)")
    add_source_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 3.0
    run_generator_on_cpu1()
    exempt = ["127.0.0.0/8"] if args.sources == 0 else []
    config, ports = every_door_config(SESSION[0], SESSION[1], events_per_second=100_000,
                                      source_limits_exempt=exempt)
    gateway = start_gateway(config, "bench-flood-", args)
    try:
        with cpu0_kept_awake(not args.let_cpu0_idle):
            rows = asyncio.run(flood_all(gateway, ports, args))
        failures = gateway_failures(gateway)
    finally:
        gateway.stop()
    failures += [f"legit members lost {row['loss'] * 100:.2f}% during {row['phase']}"
                 for row in rows if row["loss"] != 0]
    return verdict(failures)


if __name__ == "__main__":
    sys.exit(main())
