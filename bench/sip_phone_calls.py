"""Phone calls one core carries: the gateway rendering the jam to 20 ms G.711 frames, 50/s a call.

Issue 11's goal: at most 1% of one core per call and at least 100 calls on one
core, rendering audio without late frames (anchor: siprtmp's published 3.1% of a
2.13 GHz core per Speex call). The real ``twistd netgateway`` runs pinned to CPU 0
(its checkout sources, or the installed build), this load generator on CPU 1.

Each call is made here on raw UDP sockets, as a phone would: INVITE with an
audio offer (``m=audio PORT RTP/AVP 0 101``: PCMU, telephone-event), the 401,
its ACK, the INVITE with an MD5 digest (qop=auth), the 200 with the answer, the
ACK; at the end a BYE. During a step every call sends a PCMU packet every 20 ms
(160 octets of silence, its own clock, the calls' phases spread over the 20 ms)
and counts the frames the gateway sends back: lost ones (gaps in their sequence
numbers) and their timing (arrival minus RTP timestamp, against the call's
earliest: p99 "jitter", which includes this generator's own scheduling).

Calls are put in sessions of ``--per-session`` (10). Modes, measured for each
number of calls in the same invocation:

- ``keys``: every caller presses a key (RFC 4733 telephone-events replacing
  its audio packets, three end packets) every ``--every`` seconds (2) for
  ``--hold`` seconds (1), the callers of a session spread over the period, so
  about half the keys of a session are down at any time: each caller's
  synthesizer plays about five notes (their own, through hear_keys, and the
  others'), plus their releases;
- ``silent``: the same calls, no keys: the synthesizer renders silence (the
  SIP door's and Twisted's cost of the media alone);
- ``twisted``: bench/rtp_audio_baseline.py, a minimal Twisted server with one UDP
  port per call and one 20 ms LoopingCall sending a constant frame to each
  caller: no SIP, no bus, no synthesizer.

Printed per number of calls and mode: CPU per call as a percentage of one core
(the server's CPU time over the step's length, /proc), frames the gateway
counted late (sent more than 10 ms after due) or skipped (a stalled reactor),
frames lost on the way, p99 jitter; then the largest number of calls whose
``keys`` step had < 0.1% of its frames late or skipped and lost < 0.1% (other
work on a shared machine delays a reactor now and then), and the ratios of
CPU per call: keys/silent and keys/twisted. Medians of ``--runs`` runs, the
modes of a number of calls interleaved.

Measured (checkout sources, medians of 3 runs of 4 s, another session's test suite
on the machine): keys 0.46 / 0.42 / 0.45 / 0.40% of a core per call at 50 / 100 /
150 / 200 calls, silent 0.31 / 0.25 / 0.20 / 0.20%, twisted 0.21 / 0.15 / 0.12 /
0.12% (keys/silent 1.5-2.2, keys/twisted 2.2-3.6); 150 calls carried with no
late, skipped or lost frame; at 200 (80% of the core) 4.5% of frames were late.

Run: .venv/bin/python bench/sip_phone_calls.py [--calls 50,100,200] [--runs 3] [--quick]
         [--source | --python PATH]
Absolute figures move by tens of percent on these shared machines; read the ratios.
"""

import argparse
import heapq
import math
import os
import re
import select
import socket
import statistics
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from benchlib import (add_source_argument, cpu0_kept_awake, cpu_seconds,  # noqa: E402
                      gateway_pythons, percentile, ratio, run_generator_on_cpu1,
                      start_gateway)
from gateway.protocols.sip.digest import response_digest  # noqa: E402
from gateway.protocols.sip.message import parse  # noqa: E402
from gateway.protocols.sip.sdp import Sdp  # noqa: E402
from sip_fanout import bind_pair, free_port_range  # noqa: E402
from tests.conftest import free_port  # noqa: E402

PASSPHRASE = "phone benchmark passphrase"
HOST = "127.0.0.1"
FRAME = 0.02
EVENT_PT = 101
HEADER = struct.Struct("!BBHII")
SILENCE = b"\xff" * 160
MAX_LOSS = 0.001
MODES = ("keys", "silent", "twisted")


# --- the gateway and the baseline ------------------------------------------------------------

def gateway_config(max_calls, per_session):
    sessions = math.ceil(max_calls / per_session)
    media = free_port_range(HOST, 2 * max_calls + 2)
    sip_port = free_port(kind=socket.SOCK_DGRAM, even=True)
    sfront_media = free_port_range("127.0.0.5", 2 * sessions)   # one pair per session
    return {
        "sessions": [{"name": f"s{index}", "passphrase": PASSPHRASE}
                     for index in range(sessions)],
        "limits": {"max_members_per_session": per_session, "max_sessions": sessions + 1,
                   "events_per_second": 100000},
        "web": {"host": HOST, "port": free_port()},
        "logging": {"level": "warn"},
        "sip": {"host": HOST, "port": sip_port,
                "media": {"host": "127.0.0.5", "port_min": sfront_media,
                          "port_max": sfront_media + 2 * sessions - 1},
                "uas": {"tcp_port": None, "max_calls": max_calls,
                        "media": {"port_min": media, "port_max": media + 2 * max_calls + 1},
                        "media_timeout": 30}},
    }


def start_twisted_baseline(calls):
    command = [sys.executable, os.path.join(HERE, "rtp_audio_baseline.py"), str(calls)]
    if os.path.exists("/usr/bin/taskset"):
        command = ["taskset", "-c", "0"] + command
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline().split()
    if not line or line[0] != "ready":
        process.kill()
        raise RuntimeError("rtp_audio_baseline.py did not start")
    return process, [int(port) for port in line[1:]]


# --- one phone of the load generator ---------------------------------------------------------

class Phone:
    def __init__(self, index, session, name):
        self.index = index
        self.session = session
        self.name = name
        self.rtp, self.rtcp = bind_pair(HOST)
        self.port = self.rtp.getsockname()[1]
        self.call_id = f"bench-{os.getpid()}-{index}-{time.monotonic_ns()}"
        self.tag = f"t{index}"
        self.target = None              # the gateway's media address for this call
        self.to_tag = None
        self.remote = None              # the 200's Contact
        self.ssrc = 0x10000 + index
        self.sequence = 0
        self.timestamp = 0
        self.reset()

    def reset(self):
        self.offsets = []               # arrival - RTP timestamp / 8000, per frame
        self.sequences = []

    def close(self):
        self.rtp.close()
        self.rtcp.close()


def offer(port):
    return ("v=0\r\no=bench 1 1 IN IP4 127.0.0.1\r\ns=bench\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 {EVENT_PT}\r\na=rtpmap:0 PCMU/8000\r\n"
            f"a=rtpmap:{EVENT_PT} telephone-event/8000\r\na=fmtp:{EVENT_PT} 0-15\r\n"
            "a=ptime:20\r\na=sendrecv\r\n")


def request(phone, method, uri, cseq, local, branch, extra=(), body="", cseq_method=None):
    lines = [f"{method} {uri} SIP/2.0",
             f"Via: SIP/2.0/UDP {HOST}:{local};branch=z9hG4bK{branch};rport",
             "Max-Forwards: 70", f"From: <sip:{phone.name}@{HOST}>;tag={phone.tag}",
             f"To: <sip:{phone.session}@{HOST}>" + (f";tag={phone.to_tag}" if phone.to_tag
                                                     else ""),
             f"Call-ID: {phone.call_id}", f"CSeq: {cseq} {cseq_method or method}",
             f"Contact: <sip:{phone.name}@{HOST}:{local}>", *extra]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


class Signalling:
    """One UDP socket for every call's SIP; transactions one at a time."""

    def __init__(self, gateway_address):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.local = self.sock.getsockname()[1]
        self.gateway = gateway_address
        self.branches = 0

    def branch(self):
        self.branches += 1
        return f"b{self.branches}"

    def final(self, data, call_id, timeout=5.0):
        """Send ``data`` (again every 0.5 s) until a final response of ``call_id`` comes."""
        deadline = time.monotonic() + timeout
        self.sock.sendto(data, self.gateway)
        resend = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, min(resend, deadline) - time.monotonic()))
            try:
                raw = self.sock.recv(65535)
            except socket.timeout:
                if time.monotonic() >= resend:
                    self.sock.sendto(data, self.gateway)
                    resend = time.monotonic() + 0.5
                continue
            message = parse(raw)
            if getattr(message, "status", None) is None:
                continue                # a request of the gateway's (its BYE): not expected
            if message.get("call-id") == call_id and message.status >= 200:
                return message
        raise TimeoutError(f"no final response for {call_id}")

    def call(self, phone, uri):
        uri = f"sip:{phone.session}@{uri}"
        body = offer(phone.port)
        branch = self.branch()
        challenge = self.final(request(phone, "INVITE", uri, 1, self.local, branch, body=body),
                               phone.call_id)
        if challenge.status != 401:
            raise RuntimeError(f"INVITE: {challenge.status}")
        phone.to_tag = challenge.get("to").split("tag=")[1].split(";")[0]
        self.sock.sendto(request(phone, "ACK", uri, 1, self.local, branch), self.gateway)
        phone.to_tag = None
        value = [v for v in challenge.values("www-authenticate") if "MD5" in v][0]
        params = dict(re.findall(r'(\w+)="?([^",]*)"?', value))
        response = response_digest("MD5", phone.name, params["realm"], PASSPHRASE, "INVITE",
                                   uri, params["nonce"], "00000001", "0a1b2c3d", "auth")
        authorization = (f'Authorization: Digest username="{phone.name}",'
                         f' realm="{params["realm"]}", nonce="{params["nonce"]}", uri="{uri}",'
                         f' response="{response}", algorithm=MD5, qop=auth, nc=00000001,'
                         ' cnonce="0a1b2c3d"')
        ok = self.final(request(phone, "INVITE", uri, 2, self.local, self.branch(),
                                [authorization], body), phone.call_id)
        if ok.status != 200:
            raise RuntimeError(f"INVITE with credentials: {ok.status}")
        phone.to_tag = ok.get("to").split("tag=")[1].split(";")[0]
        phone.remote = ok.get("contact").strip("<>").split(">")[0]
        answer = Sdp.parse(ok.body)
        phone.target = (answer.connection(), answer.media().port)
        self.sock.sendto(request(phone, "ACK", phone.remote, 2, self.local, self.branch()),
                         self.gateway)

    def hang_up(self, phone):
        self.final(request(phone, "BYE", phone.remote, 3, self.local, self.branch()),
                   phone.call_id)

    def close(self):
        self.sock.close()


# --- one step ---------------------------------------------------------------------------------

def event_packet(phone, digit, duration, end, marker, timestamp):
    phone.sequence = (phone.sequence + 1) & 0xFFFF
    return (HEADER.pack(0x80, EVENT_PT | (0x80 if marker else 0), phone.sequence, timestamp,
                        phone.ssrc) + struct.pack("!BBH", digit, (0x80 if end else 0) | 10,
                                                   duration))


def run_step(phones, seconds, keys, every, hold, per_session, server_pid):
    """Send every call's packets for ``seconds`` and count what comes back."""
    for phone in phones:
        phone.reset()
    poller = select.epoll()
    by_fd = {}
    for phone in phones:
        poller.register(phone.rtp.fileno(), select.EPOLLIN)
        by_fd[phone.rtp.fileno()] = phone
    clock = time.perf_counter
    start = clock() + 0.05
    stop = start + seconds
    queue = [(start + FRAME * index / len(phones), index) for index in range(len(phones))]
    heapq.heapify(queue)
    frames = [0] * len(phones)
    press = {}                          # index -> (digit, its timestamp, frames into it)
    held_frames = max(1, round(hold / FRAME))
    period_frames = max(held_frames + 4, round(every / FRAME))
    buffer = bytearray(2048)
    unpack = struct.Struct("!HI").unpack_from
    cpu_before = cpu_seconds(server_pid)
    wall_before = clock()
    late_sends = 0
    while True:
        now = clock()
        if now >= stop + 0.1:
            break
        while queue and queue[0][0] <= now and queue[0][0] < stop:
            due, index = heapq.heappop(queue)
            if now - due > FRAME:
                late_sends += 1
            phone = phones[index]
            frame = frames[index]
            frames[index] = frame + 1
            phone.timestamp = (phone.timestamp + 160) & 0xFFFFFFFF
            data = None
            if keys:
                offset = (index % per_session) * period_frames // per_session
                position = (frame - offset) % period_frames if frame >= offset else None
                if position is not None and position < held_frames + 3:
                    if position == 0:
                        press[index] = (1 + index % 9, phone.timestamp)
                    digit, stamp = press[index]
                    end = position >= held_frames
                    duration = 160 * min(position + 1, held_frames)
                    data = event_packet(phone, digit, duration, end, position == 0, stamp)
            if data is None:
                phone.sequence = (phone.sequence + 1) & 0xFFFF
                data = HEADER.pack(0x80, 0, phone.sequence, phone.timestamp,
                                   phone.ssrc) + SILENCE
            try:
                phone.rtp.sendto(data, phone.target)
            except BlockingIOError:
                pass
            heapq.heappush(queue, (due + FRAME, index))
        for fd, _ in poller.poll(0.001):
            phone = by_fd[fd]
            sock = phone.rtp
            while True:
                try:
                    size = sock.recv_into(buffer)
                except BlockingIOError:
                    break
                if size < 12:
                    continue
                arrival = clock()
                if start <= arrival < stop:
                    sequence, timestamp = unpack(buffer, 2)
                    phone.sequences.append(sequence)
                    phone.offsets.append(arrival - timestamp / 8000)
    elapsed = clock() - wall_before
    cpu_used = cpu_seconds(server_pid) - cpu_before
    poller.close()
    received = expected = 0
    jitter = []
    for phone in phones:
        if not phone.sequences:
            expected += round(seconds / FRAME)
            continue
        span = (phone.sequences[-1] - phone.sequences[0]) & 0xFFFF
        expected += span + 1
        received += len(set(phone.sequences))
        base = min(phone.offsets)
        jitter += [offset - base for offset in phone.offsets]
    jitter.sort()
    return {"cpu_percent_per_call": 100 * cpu_used / elapsed / len(phones),
            "loss": 1 - received / expected if expected else 1.0,
            "p99_jitter_ms": percentile(jitter, 0.99),
            "generator_late_sends": late_sends}


def phone_counts(gateway):
    agents = gateway.status()["doors"]["sip"]["user_agents"]
    return agents["phone"], agents["phone_calls"]


def measure_gateway(gateway, calls, mode, args):
    sip_port = gateway.config["sip"]["port"]
    signalling = Signalling((HOST, sip_port))
    phones = [Phone(index, f"s{index // args.per_session}", f"caller{index}")
              for index in range(calls)]
    try:
        for phone in phones:
            signalling.call(phone, f"{HOST}:{sip_port}")
        before, _ = phone_counts(gateway)
        result = run_step(phones, args.seconds, mode == "keys", args.every, args.hold,
                          args.per_session, gateway.process.pid)
        after, live = phone_counts(gateway)
        if live != calls:
            raise RuntimeError(f"{live} phone calls at the gateway, expected {calls}")
        result["late"] = after.get("frames_late", 0) - before.get("frames_late", 0)
        result["frames"] = after.get("frames_sent", 0) - before.get("frames_sent", 0)
        result["skipped"] = after.get("frames_skipped", 0) - before.get("frames_skipped", 0)
        result["digits"] = after.get("digits", 0) - before.get("digits", 0)
        for phone in phones:
            signalling.hang_up(phone)
    finally:
        for phone in phones:
            phone.close()
        signalling.close()
    deadline = time.monotonic() + 10
    while phone_counts(gateway)[1] and time.monotonic() < deadline:
        time.sleep(0.1)
    return result


def measure_twisted(calls, args):
    process, ports = start_twisted_baseline(calls)
    phones = [Phone(index, "-", "-") for index in range(calls)]
    try:
        for phone, port in zip(phones, ports):
            phone.target = (HOST, port)
        result = run_step(phones, args.seconds, False, args.every, args.hold, args.per_session,
                          process.pid)
        result.update(late=0, skipped=0, digits=0, frames=calls * args.seconds / FRAME)
        return result
    finally:
        for phone in phones:
            phone.close()
        process.terminate()         # ours, by its PID
        process.wait(10)


def median(results, key):
    values = [result[key] for result in results if not math.isnan(result[key])]
    return statistics.median(values) if values else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", default="25,50,100,150,200,250",
                        help="numbers of concurrent calls, ascending")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each step")
    parser.add_argument("--runs", type=int, default=3, help="medians over this many runs")
    parser.add_argument("--per-session", type=int, default=10)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between a"
                        " caller's key presses")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds a key is held")
    parser.add_argument("--quick", action="store_true",
                        help="one run of 3 s steps at 50 and 100 calls (a smoke test)")
    parser.add_argument("--let-cpu0-idle", action="store_true",
                        help="do not keep CPU 0 busy at SCHED_IDLE (benchlib.cpu0_kept_awake)")
    add_source_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.calls, args.seconds, args.runs = "50,100", 3.0, 1
    counts = [int(value) for value in args.calls.split(",")]
    run_generator_on_cpu1()
    if len(gateway_pythons(args)) > 1:
        raise SystemExit("this benchmark measures one build: give --python once")
    gateway = start_gateway(gateway_config(max(counts), args.per_session), "bench-phone-",
                            args)
    print(f"{'calls':>5} {'mode':>8} | {'cpu %/call':>10} {'late':>5} {'skipped':>7}"
          f" {'lost %':>7} {'p99 jitter ms':>13} {'digits':>6}", flush=True)
    carried = None
    summary = {}
    try:
        with cpu0_kept_awake(not args.let_cpu0_idle):
            for calls in counts:
                results = {mode: [] for mode in MODES}
                for run in range(args.runs):
                    order = MODES[run % 3:] + MODES[:run % 3]
                    for mode in order:
                        if mode == "twisted":
                            results[mode].append(measure_twisted(calls, args))
                        else:
                            results[mode].append(measure_gateway(gateway, calls, mode, args))
                figures = {}
                for mode in MODES:
                    figures[mode] = {key: median(results[mode], key) for key in
                                     ("cpu_percent_per_call", "loss", "p99_jitter_ms", "late",
                                      "skipped", "digits", "frames")}
                    row = figures[mode]
                    print(f"{calls:5d} {mode:>8} | {row['cpu_percent_per_call']:10.3f}"
                          f" {row['late']:5.0f} {row['skipped']:7.0f} {100 * row['loss']:7.3f}"
                          f" {row['p99_jitter_ms']:13.2f} {row['digits']:6.0f}", flush=True)
                keys = figures["keys"]
                print(f"{calls:5d}    ratio | CPU per call keys/silent ="
                      f" {ratio(keys['cpu_percent_per_call'], figures['silent']['cpu_percent_per_call']):.2f},"
                      f" keys/twisted ="
                      f" {ratio(keys['cpu_percent_per_call'], figures['twisted']['cpu_percent_per_call']):.2f}",
                      flush=True)
                summary[calls] = figures
                late = (keys["late"] + keys["skipped"]) / max(1, keys["frames"])
                if late < MAX_LOSS and keys["loss"] < MAX_LOSS:
                    carried = calls
                else:
                    break
    finally:
        gateway.stop()
    if carried is None:
        print("no step carried its calls with < 0.1% of frames late, skipped or lost")
        return
    best = summary[carried]["keys"]
    print(f"carried: {carried} calls on one core rendering audio with < 0.1% of frames late"
          f" or skipped, {best['cpu_percent_per_call']:.3f}% of a core per call"
          f" (goal: >= 100 calls, <= 1%)", flush=True)


if __name__ == "__main__":
    main()
