"""SIP transactions per second: REGISTER with digest, the gateway vs a minimal Twisted registrar.

The real ``twistd netgateway`` (standard user agents on, UDP) and
bench/sip_register_baseline.py (a Twisted DatagramProtocol that answers 401 and
checks an MD5 digest, nothing else), each pinned to CPU 0 in turn while this
load generator runs on CPU 1. ``--clients`` (64) registrations are in flight at
once, each a closed loop over its own Call-ID and contact: REGISTER, the 401
challenge, REGISTER with ``Authorization: Digest ... algorithm=MD5, qop=auth``
for the session ``demo`` (its passphrase the password), the 200; then the next
registration with a new CSeq and branch. A request unanswered for 0.5 s is sent
again (the gateway's transaction layer answers a retransmission from its
cache). A registration is two transactions. For the gateway each registration
is a digest proof checked by the bus (``bus.check``), a nonce issued and
verified (HMAC), transaction state and a binding refreshed.

Printed per server: registrations/s and transactions/s over ``--seconds``, the
server's CPU per registration (µs, /proc), and the ratios gateway/baseline of
the rates and of the CPU per registration. Medians of ``--runs`` runs, the two
servers' runs interleaved.

Measured (checkout sources, medians of 3 runs of 5 s): the gateway 1,817
registrations/s (3,634 transactions/s) at 494 µs of CPU each, the baseline 21,184
(42,368) at 47 µs: 0.09x its rate, 10.6x its CPU per registration (a full RFC 3261
transaction layer, registrar and HMAC nonces, and the bus's check, in Python).

Run: .venv/bin/python bench/sip_register.py [--clients 64] [--seconds 5] [--runs 3] [--quick]
         [--source | --python PATH]
"""

import argparse
import hashlib
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from benchlib import (add_source_argument, cpu0_kept_awake, cpu_seconds,  # noqa: E402
                      interleaved_runs, ratio, run_generator_on_cpu1, start_gateway)
from tests.conftest import free_port  # noqa: E402

PASSPHRASE = "register benchmark passphrase"
HOST = "127.0.0.1"
RESEND = 0.5
_CALL_ID = re.compile(rb"\r\n(?:call-id|i)\s*:\s*([^\r]+)", re.I)
_NONCE = re.compile(rb'nonce="([^"]+)"')
_REALM = re.compile(rb'realm="([^"]+)"')


def md5(text):
    return hashlib.md5(text.encode()).hexdigest()


class Client:
    """One registration loop: its Call-ID, CSeq and what it waits for."""

    def __init__(self, index, local):
        self.index = index
        self.local = local
        self.name = f"reg{index}"
        self.call_id = f"register-{os.getpid()}-{index}"
        self.cseq = 0
        self.sent = None
        self.sent_at = 0.0

    def register(self, authorization=None):
        self.cseq += 1
        uri = f"sip:{HOST}"
        lines = [f"REGISTER {uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {HOST}:{self.local};branch=z9hG4bK{self.index}x{self.cseq}"
                 ";rport", "Max-Forwards: 70",
                 f"From: <sip:demo@{HOST}>;tag=r{self.index}", f"To: <sip:demo@{HOST}>",
                 f"Call-ID: {self.call_id}", f"CSeq: {self.cseq} REGISTER",
                 f"Contact: <sip:{self.name}@{HOST}:{self.local}>", "Expires: 300"]
        if authorization:
            lines.append(authorization)
        lines.append("Content-Length: 0")
        self.sent = ("\r\n".join(lines) + "\r\n\r\n").encode()
        return self.sent

    def authorization(self, realm, nonce):
        uri = f"sip:{HOST}"
        ha1 = md5(f"{self.name}:{realm}:{PASSPHRASE}")
        ha2 = md5(f"REGISTER:{uri}")
        response = md5(f"{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}")
        return (f'Authorization: Digest username="{self.name}", realm="{realm}",'
                f' nonce="{nonce}", uri="{uri}", response="{response}", algorithm=MD5,'
                ' qop=auth, nc=00000001, cnonce="c0ffee"')


def run_load(server, server_pid, clients_count, seconds):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    local = sock.getsockname()[1]
    clients = [Client(index, local) for index in range(clients_count)]
    by_call = {client.call_id.encode(): client for client in clients}
    poller = select.epoll()
    poller.register(sock.fileno(), select.EPOLLIN)
    clock = time.perf_counter
    registered = refused = resent = 0
    warm_until = clock() + 0.5                 # the first registrations make the bindings
    counting = False
    cpu_before = start = None
    for client in clients:
        sock.sendto(client.register(), server)
        client.sent_at = clock()
    while True:
        now = clock()
        if not counting and now >= warm_until:
            counting = True
            registered = refused = resent = 0
            cpu_before, start = cpu_seconds(server_pid), now
        if counting and now >= start + seconds:
            break
        for _ in poller.poll(0.01):
            while True:
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    break
                match = _CALL_ID.search(data)
                client = by_call.get(match.group(1).strip()) if match else None
                if client is None or not data.startswith(b"SIP/2.0 "):
                    continue
                status = int(data[8:11])
                if status < 200:
                    continue
                now = clock()
                if status == 401:
                    realm = _REALM.search(data).group(1).decode()
                    nonce = _NONCE.search(data).group(1).decode()
                    sock.sendto(client.register(client.authorization(realm, nonce)), server)
                else:
                    if status == 200:
                        registered += 1
                    else:
                        refused += 1
                    sock.sendto(client.register(), server)
                client.sent_at = now
        now = clock()
        for client in clients:
            if now - client.sent_at > RESEND:
                sock.sendto(client.sent, server)
                client.sent_at = now
                resent += 1
    elapsed = clock() - start
    cpu_used = cpu_seconds(server_pid) - cpu_before
    poller.close()
    sock.close()
    return {"registrations": registered / elapsed, "transactions": 2 * registered / elapsed,
            "cpu_us": cpu_used / registered * 1e6 if registered else float("nan"),
            "refused": refused, "resent": resent}


def run_gateway(args):
    config = {
        "sessions": [{"name": "demo", "passphrase": PASSPHRASE}],
        "web": {"host": HOST, "port": free_port()},
        "logging": {"level": "warn"},
        "sip": {"host": HOST, "port": free_port(kind=socket.SOCK_DGRAM, even=True),
                "uas": {"tcp_port": None, "max_registrations": 100000}},
    }
    gateway = start_gateway(config, "bench-register-", args)
    try:
        return run_load((HOST, config["sip"]["port"]), gateway.process.pid, args.clients,
                        args.seconds)
    finally:
        gateway.stop()


def run_baseline(args):
    command = [sys.executable, os.path.join(HERE, "sip_register_baseline.py"), PASSPHRASE]
    if os.path.exists("/usr/bin/taskset"):
        command = ["taskset", "-c", "0"] + command
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError("sip_register_baseline.py did not start")
        return run_load((HOST, int(line[1])), process.pid, args.clients, args.seconds)
    finally:
        process.terminate()             # ours, by its PID
        process.wait(10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="registrations in flight")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3, help="medians over this many runs")
    parser.add_argument("--quick", action="store_true", help="one run of 2 s")
    parser.add_argument("--let-cpu0-idle", action="store_true",
                        help="do not keep CPU 0 busy at SCHED_IDLE (benchlib.cpu0_kept_awake)")
    add_source_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.runs = 2.0, 1
    run_generator_on_cpu1()
    servers = {"gateway": run_gateway, "baseline": run_baseline}
    with cpu0_kept_awake(not args.let_cpu0_idle):
        runs = interleaved_runs(list(servers), args.runs, lambda name: servers[name](args))
    print(f"{'server':>8} | {'registrations/s':>15} {'transactions/s':>14} {'cpu us/reg':>10}"
          f" {'refused':>7} {'resent':>6}")
    medians = {}
    for name, results in runs.items():
        row = medians[name] = {key: statistics.median(result[key] for result in results)
                               for key in ("registrations", "transactions", "cpu_us",
                                           "refused", "resent")}
        print(f"{name:>8} | {row['registrations']:15.0f} {row['transactions']:14.0f}"
              f" {row['cpu_us']:10.1f} {row['refused']:7.0f} {row['resent']:6.0f}", flush=True)
    gateway, baseline = medians["gateway"], medians["baseline"]
    print(f"   ratio | transactions/s gateway/baseline ="
          f" {ratio(gateway['transactions'], baseline['transactions']):.2f};"
          f" CPU per registration gateway/baseline ="
          f" {ratio(gateway['cpu_us'], baseline['cpu_us']):.2f}", flush=True)


if __name__ == "__main__":
    main()
