"""What the benchmarks share: CPU pinning and CPU time of the server under test.

Wall-clock rates and tail latencies move a lot on these shared 2-core
machines; the CPU time a server spends per message is the steadier figure,
so every benchmark prints it next to the rates.
"""

import argparse
import contextlib
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time

# Every benchmark puts the checkout on sys.path before it imports this module.
from gateway.protocols.rtpmidi.journal_sender import JournalSender
from gateway.protocols.rtpmidi.payload import PAYLOAD_TYPE, RtpMidiPacket
from tests.conftest import ADMIN_TOKEN, REPO, GatewayProcess, build_report, free_port, merge

MAX_LOSS = 0.001
"""A step passes when it loses less than this fraction of what it should forward."""

ID_MASK = 0x3FFF
"""Packet ids carried in a pitch bend's 14 bits (see :func:`rtp_midi_packets`)."""


def cpu_seconds(pid):
    """User + system CPU time the process has used (all its threads)."""
    with open(f"/proc/{pid}/stat") as stream:
        fields = stream.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin_to_cpu0(pid):
    """Keep the server on CPU 0 (all threads); generators run on CPU 1."""
    subprocess.run(["taskset", "-a", "-p", "-c", "0", str(pid)], check=True,
                   stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def cpu0_kept_awake(enabled=True):
    """Keep CPU 0 busy at SCHED_IDLE priority while the servers under test run there.

    These machines are VMs on a shared host: an idle vCPU halts, and the host
    takes milliseconds to run it again when a datagram arrives. Measured with
    the bare UDP relay and a busy-polling client at 1,000-10,000 round trips/s,
    p99 was 1.6-14 ms with CPU 0 idle and 0.15-0.23 ms with it kept busy, so
    an idle CPU 0 measures the host, not the server. A spinning process at
    SCHED_IDLE gives way to the server the moment it wakes, and the server's
    CPU time is read per process, so it does not count in the figures.
    """
    if not enabled:
        yield
        return

    def idle_on_cpu0():
        os.sched_setaffinity(0, {0})
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                               preexec_fn=idle_on_cpu0)
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def udp_benchmark_main(description, add_arguments, run_all):
    """Parse the options the UDP benchmarks share, then ``run_all(args)`` with CPU 0 awake.

    ``add_arguments(parser)`` adds the benchmark's own options.
    """
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser)
    parser.add_argument("--runs", type=int, default=3, help="medians over this many runs")
    parser.add_argument("--max-rate", type=float, default=400_000)
    add_source_argument(parser)
    parser.add_argument("--let-cpu0-idle", action="store_true",
                        help="do not keep CPU 0 busy at SCHED_IDLE (then p99 measures the"
                             " host's vCPU wake-ups; see benchlib.cpu0_kept_awake)")
    args = parser.parse_args()
    run_generator_on_cpu1()
    with cpu0_kept_awake(not args.let_cpu0_idle):
        run_all(args)


def add_source_argument(parser):
    """``--source`` and ``--python``, which :func:`start_gateway` reads."""
    parser.add_argument("--source", action="store_true",
                        help="run the checkout's sources instead of the installed build"
                             " (scripts/setup-python; its hot path is compiled)")
    parser.add_argument("--any-build", action="store_true",
                        help="with --python, also measure builds of other sources (another"
                             " commit installed in another virtualenv: before/after a change)")
    parser.add_argument("--python", action="append", default=[], metavar="PATH",
                        help="measure the build installed for this interpreter (default: the"
                             " one running the benchmark); bench/rtpmidi_fanout.py takes it"
                             " more than once and compares the builds in one run")


def gateway_pythons(args):
    """The interpreters whose installed builds ``args`` asks to measure (None: the sources)."""
    if args.source:
        if args.python:
            raise SystemExit("--source and --python exclude each other")
        return [None]
    return args.python or [sys.executable]


def start_gateway(config, prefix, args, python=None):
    """A started GatewayProcess on CPU 0: an installed build, or the checkout's sources.

    ``python`` is one of :func:`gateway_pythons`; by default the only one.
    Each build must be of the checkout's sources. Says once per build which
    one it measures, as /status reports it.
    """
    pythons = gateway_pythons(args)
    if python is None:
        if len(pythons) > 1:
            raise SystemExit("this benchmark measures one build: give --python once")
        python = pythons[0]
    # Benchmarks read counters from the full /status.
    config = merge(config, {"status": {"admin_token": ADMIN_TOKEN}})
    workdir = tempfile.mkdtemp(prefix=prefix)
    if python is None:
        gateway = GatewayProcess(config, workdir).start()
    else:
        if not args.any_build:
            check_installed_build(python)
        gateway = InstalledGateway(config, workdir, python).start()
    pin_to_cpu0(gateway.process.pid)
    if python not in _build_reported:
        compiled = gateway.status()["compiled_modules"]
        _build_reported[python] = compiled
        names = ", ".join(name.rpartition(".")[2] for name in compiled)
        which = "checkout sources" if python is None else f"installed for {python}"
        print(f"gateway build: {which},"
              f" {len(compiled)} hot modules compiled{f' ({names})' if compiled else ''}",
              flush=True)
    return gateway


_build_reported = {}


def check_installed_build(python):
    """Raise RuntimeError unless ``python`` has netgateway installed from the checkout's sources.

    Every module is compared, not only the compiled ones, so that builds
    compared in one run differ in what they compiled and in nothing else.
    """
    site = build_report(python)[2]
    package = os.path.join(REPO, "gateway")
    for root, _, files in os.walk(package):
        for name in files:
            if not name.endswith(".py"):
                continue
            relative = os.path.relpath(os.path.join(root, name), REPO)
            if _contents(os.path.join(site, relative)) != _contents(os.path.join(REPO, relative)):
                raise RuntimeError(f"{python}: the installed {relative} differs from the"
                                   " checkout's: run scripts/setup-python (NETGATEWAY_VENV=...)")


def _contents(path):
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        return None


class InstalledGateway(GatewayProcess):
    """A GatewayProcess running the build installed for ``python``: the twistd beside it."""

    def __init__(self, config, workdir, python):
        super().__init__(config, workdir, installed=True)
        self.python = python

    def command(self):
        twistd = os.path.join(os.path.dirname(self.python), "twistd")
        return [twistd, "-n", "--pidfile=", "netgateway", "-c", self.config_path]


def run_generator_on_cpu1():
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})


def percentile(sorted_seconds, fraction):
    """The ``fraction`` percentile of sorted durations, in milliseconds."""
    if not sorted_seconds:
        return float("nan")
    return sorted_seconds[min(len(sorted_seconds) - 1, int(fraction * len(sorted_seconds)))] * 1e3


def paced_exchange(sources, receivers, rate, grace, server_pid, classify, id_of=None):
    """Send datagrams at ``rate``/s and count what comes back, on non-blocking sockets.

    ``sources`` is a list of (socket, target, packets), all with as many
    packets, sent round-robin; ``receivers`` maps each receiving socket to a
    tag. ``classify(tag, view, size)`` says what a received datagram is: None
    for traffic that carries nothing sent (control packets), else (source
    index, packet id). With ``id_of(index)`` (the id of a source's index-th
    packet) latencies are measured. Sending stops at three times the planned
    duration plus a second, so a stalled server cannot hang the benchmark.
    """
    per_source = len(sources[0][2])
    total = per_source * len(sources)
    sent_at = [{} for _ in sources]
    poller = select.epoll()
    for sock in receivers:
        poller.register(sock.fileno(), select.EPOLLIN)
    by_fd = {sock.fileno(): (sock, tag) for sock, tag in receivers.items()}
    buffer = bytearray(65535)
    view = memoryview(buffer)
    latencies = []
    sent = received = 0
    finished = None
    clock = time.perf_counter
    cpu_before = cpu_seconds(server_pid)
    start = clock()
    planned = total / rate
    stop_sending = start + 3 * planned + 1.0
    while True:
        now = clock()
        due = min(total, int((now - start) * rate) + 1)
        while sent < due and now < stop_sending:
            number = sent % len(sources)
            sock, target, packets = sources[number]
            index = sent // len(sources)
            try:
                sock.sendto(packets[index], target)
            except BlockingIOError:
                break
            if id_of is not None:
                sent_at[number][id_of(index)] = clock()
            sent += 1
        if sent == total and finished is None:
            finished = clock()
        for fd, _ in poller.poll(0):
            sock, tag = by_fd[fd]
            while True:
                try:
                    size = sock.recv_into(buffer)
                except BlockingIOError:
                    break
                kind = classify(tag, view, size)
                if kind is None:
                    continue
                received += 1
                if id_of is not None and kind[1] is not None:
                    sent_time = sent_at[kind[0]].get(kind[1])
                    if sent_time is not None:
                        latencies.append(clock() - sent_time)
        if (sent == total and now > start + planned + grace) or now > stop_sending:
            break
    poller.close()
    cpu_used = cpu_seconds(server_pid) - cpu_before
    latencies.sort()
    return {"sent": sent, "received": received, "elapsed": planned,
            # A generator that fell behind measured itself, not the server.
            "on_schedule": finished is not None and finished - start <= planned * 1.05 + 0.01,
            "cpu_us": cpu_used / received * 1e6 if received else float("nan"),
            "latencies": latencies}


def find_maximum(passes, start_rate, limit, factor=1.5, bisections=2):
    """The highest rate whose step passes: ``factor`` steps up, then ``bisections``.

    ``passes(rate)`` runs one step and returns its figures, or None when it
    lost too much or fell behind schedule. Returns (rate, figures) or None.
    """
    best, failed = None, None
    rate = start_rate
    while rate <= limit:
        result = passes(rate)
        if result is None:
            failed = rate
            break
        best = (rate, result)
        rate *= factor
    for _ in range(bisections if best and failed else 0):
        middle = (best[0] + failed) / 2
        result = passes(middle)
        if result is not None:
            best = (middle, result)
        else:
            failed = middle
    return best


def max_forwarded(step, settle, start_rate, limit):
    """The figures of the fastest step that loses < :data:`MAX_LOSS` and keeps to schedule.

    ``step(rate)`` offers ``rate`` forwarded datagrams/s and returns its
    :func:`fanout_figures`; ``settle()`` runs after every step (control
    traffic, leftovers). 1.5x steps from ``start_rate``, then two bisections
    (:func:`find_maximum`). When even ``start_rate`` fails: forwarded 0.0,
    CPU NaN.
    """
    def passes(rate):
        result = step(rate)
        settle()
        return result if result["loss"] < MAX_LOSS and result["on_schedule"] else None

    best = find_maximum(passes, start_rate, limit)
    return best[1] if best else {"forwarded": 0.0, "cpu_us": float("nan")}


def fanout_figures(result, fanout):
    """Rates, loss, CPU and latency percentiles of a :func:`paced_exchange` whose every
    sent datagram should reach ``fanout`` receivers."""
    received, expected, latencies = result["received"], result["sent"] * fanout, result["latencies"]
    elapsed = result["elapsed"]
    return {"offered": expected / elapsed, "forwarded": received / elapsed,
            "loss": 1.0 - received / expected if expected else 0.0,
            "on_schedule": result["on_schedule"], "cpu_us": result["cpu_us"],
            "p50": percentile(latencies, 0.50), "p99": percentile(latencies, 0.99),
            "p999": percentile(latencies, 0.999)}


def interleaved_runs(servers, runs, run_one):
    """``{server: [run_one(server) for each of runs]}``, the runs interleaved in a
    rotated order so that other load on the machine and warm-up hit every server alike."""
    by_server = {server: [] for server in servers}
    for number in range(runs):
        shift = number % len(servers)
        for server in servers[shift:] + servers[:shift]:
            by_server[server].append(run_one(server))
    return by_server


def ratio(numerator, denominator):
    return numerator / denominator if denominator else float("nan")


def rtp_midi_packets(count, sequence, timestamp, ssrc, *, ids=False, bend=True, ticks=1,
                     marker=False, payload_type=PAYLOAD_TYPE):
    """``count`` RTP-MIDI packets from ``sequence``/``timestamp`` (``ticks`` apart), journal on.

    Each carries NoteOn or NoteOff 60 in turn and, with ``bend``, a pitch
    bend: the packet's index (& :data:`ID_MASK`) when ``ids``, else the centre.
    The journal is acknowledged up to the previous packet, as a peer that
    receives feedback keeps it. With ``ids`` every packet goes through the
    codec; without, two codec-built templates (one per NoteOn/NoteOff parity)
    are stamped with sequence, timestamp and checkpoint, which is what the
    codec would write for them.
    """
    if ids and not bend:
        raise ValueError("packet ids travel in the pitch bend")
    journal_sender = JournalSender()
    built = []
    for index in range(count if ids else min(count, 4)):
        number = (sequence + index) & 0xFFFF
        stamp = (timestamp + index * ticks) & 0xFFFFFFFF
        messages = [bytes((0x90, 60, 100)) if index % 2 == 0 else bytes((0x80, 60, 0))]
        if bend:
            value = index & ID_MASK if ids else 0x2000
            messages.append(bytes((0xE0, value & 0x7F, value >> 7)))
        journal = journal_sender.journal_for(number, stamp)
        built.append(bytes(RtpMidiPacket(number, stamp, ssrc,
                                         [(0, message) for message in messages],
                                         journal, marker=marker, payload_type=payload_type)))
        journal_sender.record(number, stamp, messages)
        journal_sender.acknowledge(number)
    if not ids and count > 4:
        templates = built[2:4]
        # RTP header, command section header and list, journal header: the checkpoint.
        checkpoint_at = 12 + 1 + (templates[0][12] & 0x0F) + 1
        built = built[:2]
        for index in range(2, count):
            packet = bytearray(templates[index % 2])
            number = (sequence + index) & 0xFFFF
            struct.pack_into("!HI", packet, 2, number, (timestamp + index * ticks) & 0xFFFFFFFF)
            struct.pack_into("!H", packet, checkpoint_at, (number - 1) & 0xFFFF)
            built.append(bytes(packet))
    return built


def rss_bytes(pid):
    """Resident set size of the process now (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def door_drops(status, door):
    """The total of ``door``'s drop counters in a /status answer."""
    return sum(status["drops"].get(door, {}).values())


def gateway_failures(gateway):
    """What says the gateway broke: it exited, or its log has a Traceback. Empty when healthy."""
    failures = []
    if gateway.process.poll() is not None:
        failures.append(f"the gateway exited with {gateway.process.returncode}")
    tracebacks = gateway.log.count("Traceback")
    if tracebacks:
        failures.append(f"{tracebacks} Traceback(s) in the gateway's log")
    return failures


def verdict(failures):
    """Print each failure and PASS or FAILED; the exit status of a run with them."""
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else "FAILED")
    return 1 if failures else 0


def every_door_config(session, passphrase, **limits):
    """``(config, ports)``: every door on, on free loopback ports, and one session.

    The session may be joined from 127.0.0.0/8 through AppleMIDI. ``ports``
    names each port a peer reaches: ``websocket`` (the web port), the UDP
    ports ``oscgroups``, ``oscgroups_bridge``, ``applemidi_control``,
    ``applemidi_data``, ``sip`` (and ``sip`` + 1, sfront's RTCP side),
    ``sfront_rtp``, ``sfront_rtcp``, ``sip_uas_rtp``, ``sip_uas_rtcp`` (open
    only during a call), ``oscgroups_relay`` (the relay's one port), and the
    TCP ports ``sip_tcp`` and ``rtmp``. ``limits`` are the config's ``limits``.
    """
    udp = socket.SOCK_DGRAM
    ports = {"websocket": free_port(), "oscgroups": free_port(udp),
             "oscgroups_bridge": free_port(udp), "applemidi_control": free_port(udp, even=True),
             "sip": free_port(udp, even=True), "sfront_rtp": free_port(udp, even=True),
             "sip_uas_rtp": free_port(udp, even=True), "sip_tcp": free_port(),
             "rtmp": free_port(), "oscgroups_relay": free_port(udp)}
    # free_port(even=True) checked that the port above each of these is free too.
    ports["applemidi_data"] = ports["applemidi_control"] + 1
    ports["sfront_rtcp"] = ports["sfront_rtp"] + 1
    ports["sip_uas_rtcp"] = ports["sip_uas_rtp"] + 1
    loopback = "127.0.0.1"
    config = {
        "sessions": [{"name": session, "passphrase": passphrase,
                      "allow_addresses": ["127.0.0.0/8"]}],
        "limits": limits,
        "web": {"host": loopback, "port": ports["websocket"]},
        "websocket": {"enabled": True},
        "oscgroups": {"host": loopback, "port": ports["oscgroups"],
                      "bridge": {"port": ports["oscgroups_bridge"], "groups": [session]},
                      # One port, not the default range other gateways on the machine use.
                      "relay": {"port_min": ports["oscgroups_relay"],
                                "port_max": ports["oscgroups_relay"], "max_allocations": 1}},
        "rtpmidi": {"host": loopback, "sessions": [
            {"session": session, "port": ports["applemidi_control"], "name": session}]},
        "sip": {"host": loopback, "port": ports["sip"],
                "media": {"host": "127.0.0.5", "port_min": ports["sfront_rtp"],
                          "port_max": ports["sfront_rtcp"]},
                "uas": {"tcp_port": ports["sip_tcp"],
                        "media": {"port_min": ports["sip_uas_rtp"],
                                  "port_max": ports["sip_uas_rtcp"]}}},
        "rtmp": {"host": loopback, "port": ports["rtmp"]},
        "logging": {"level": "info"},
    }
    return config, ports


def bound_udp_ports():
    """The local ports of every IPv4 UDP socket on the machine (/proc/net/udp)."""
    with open("/proc/net/udp") as stream:
        next(stream)
        return {int(line.split()[1].rpartition(":")[2], 16) for line in stream}
