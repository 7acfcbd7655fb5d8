"""RTMP fan-out: one publisher, N players of its stream; the server's CPU per player.

For each target server (``--targets``, default ``nms``: node-media-server
4.4.3 from tests/peers, the reference of shared/protocols/rtmp-clients.md
§1.5) this starts the server, pinned to CPU 0, and one publisher on CPU 1
(``ffmpeg -re -stream_loop -1 -i sine_128k.flv -c copy -f flv URL``: a 60 s
440 Hz sine, AAC 128 kbit/s, 44.1 kHz, so 43.07 audio messages/s). Then, for
each N of ``--players`` (default 0,100,500,1000), bench/rtmp_player.c (built
here with ``gcc -O2`` into a temporary directory) opens N players on CPU 1 at
``--rate`` connections/s; once every one is playing and ``--settle`` seconds
passed, a window of ``--window`` seconds is measured:

- server CPU: utime+stime of the server process (all threads, /proc) over the
  window, as a share of one core; RSS at the window's end;
- CPU per player: (cpu(N) - cpu(0)) / N for each N, and the least-squares
  slope of CPU against N over all N (the steadier figure);
- frames per player: the audio messages each player got in the window,
  min/median/max, against the publisher's rate x the window ("every frame"
  yes: the fewest any player got is within 2 frames + 0.5% of that, no gaps,
  no closes; "late": no gaps or closes, so nothing lost, but some player was
  still behind when the window ended; "NO": gaps or closes); gaps: an audio
  timestamp more than ``--gap-factor`` (1.5) x the median frame interval
  after the previous one, or before it; "max wait": the longest any player
  waited between two audio messages;
- the player program's own CPU over the window, to show that the load
  generator is not the bottleneck.

Medians of ``--runs`` runs (each run: a fresh server and publisher, every N
once), the targets' runs interleaved; with more than one target the first is
the baseline and the others' ratios to it are printed.

A target is a function (below, ``TARGETS``) that starts a server and yields a
:class:`Target`: the server's pid, the URL the players play, their extra
connect arguments and where the publisher publishes: node-media-server
(``nms``) and the gateway (``gateway``: ``twistd -n netgateway`` with its RTMP
door, rtmp://127.0.0.1:PORT/jam/SESSION, connect arguments passphrase and
name; at most 1,023 players, its largest session).

Run: .venv/bin/python bench/rtmp_fanout.py [--quick] [--players 0,100,500,1000]
         [--window 12] [--runs 3] [--targets nms,gateway] [--source]
NMS must be installed: cd tests/peers && npm install --omit=optional.
"""

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import typing

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from benchlib import (add_source_argument, cpu_seconds, interleaved_runs, pin_to_cpu0,  # noqa: E402
                      ratio, run_generator_on_cpu1, start_gateway)
from tests import rtmp_peer  # noqa: E402
from tests.conftest import free_port  # noqa: E402

PLAYER_SOURCE = os.path.join(HERE, "rtmp_player.c")
MAX_PLAYERS = 5000                 # rtmp_player.c's bound
MAX_GATEWAY_MEMBERS = 1024         # the gateway's largest session (limits.max_members_per_session)
FLV_SECONDS = 60
PLAYERS = "0,100,500,1000"
QUICK_PLAYERS = "0,50,200"
WINDOW = 12.0
QUICK_WINDOW = 5.0
SETTLE = 2.0
RATE = 200.0
RUNS = 3
READY_GRACE = 30.0                 # beyond N / rate, for every player to be playing
PUBLISH_WAIT = 20.0                # for the publisher's stream to reach a probe player
FRAME_SLACK = 2                    # frames a player may miss at the window's edges
FRAME_SLACK_SHARE = 0.005
GAP_FACTOR = 1.5                   # ffmpeg's AAC steps are 23/24 ms, across -stream_loop too


class Target(typing.NamedTuple):
    """A started server under test, as a target function yields it."""

    pid: int                       # the process whose CPU and RSS are measured
    url: str                       # rtmp://127.0.0.1:PORT/APP/STREAM, what the players play
    conn_args: tuple = ()          # extra connect arguments, sent as AMF0 strings
    publish_url: str = ""          # where ffmpeg publishes (default: url)
    publish_options: tuple = ()    # ffmpeg output options before -f flv (e.g. -rtmp_conn ...)


# -- targets ------------------------------------------------------------------------

@contextlib.contextmanager
def nms_target(args, workdir):
    """node-media-server 4.4.3 (tests/rtmp_peer.run_nms), app ``live``, stream ``load``."""
    if not os.path.exists(rtmp_peer.NMS_APP) or shutil.which("node") is None:
        raise SystemExit(f"node-media-server is not installed ({rtmp_peer.NMS_APP}):"
                         " cd tests/peers && npm install --omit=optional")
    with rtmp_peer.run_nms(os.path.join(workdir, "nms")) as nms:
        url = nms.url("load")
        yield Target(pid=nms.pid, url=url, publish_url=url)


@contextlib.contextmanager
def gateway_target(args, workdir):
    """``twistd -n netgateway`` with its RTMP door (benchlib.start_gateway: pinned to CPU 0).

    One declared session whose member limit takes every player; the players
    join it with the passphrase and a name as connect arguments, and play its
    default stream, which the publisher publishes (the passphrase in the URL,
    as README.rst says for ffmpeg).
    """
    port = free_port()
    passphrase = "benchmark passphrase 0123"
    config = {
        "sessions": [{"name": "load", "passphrase": passphrase,
                      "max_members": MAX_GATEWAY_MEMBERS}],
        "limits": {"max_members_per_session": MAX_GATEWAY_MEMBERS},
        "web": {"host": "127.0.0.1", "port": free_port()},
        "rtmp": {"port": port, "max_connections": MAX_PLAYERS + 10},
        "logging": {"level": "warn"},
    }
    gateway = start_gateway(config, "bench-rtmp-", args)
    try:
        url = f"rtmp://127.0.0.1:{port}/jam/load"
        yield Target(pid=gateway.process.pid, url=url, conn_args=(passphrase, "listener"),
                     publish_url=f"{url}?passphrase={passphrase.replace(' ', '%20')}"
                                 "&name=publisher")
    finally:
        gateway.stop()


TARGETS = {"nms": nms_target, "gateway": gateway_target}


# -- the player program --------------------------------------------------------------

def build_player(directory):
    """Compile bench/rtmp_player.c into ``directory``; return the program's path."""
    if shutil.which("gcc") is None:
        raise SystemExit("gcc is needed to build bench/rtmp_player.c")
    program = os.path.join(directory, "rtmp_player")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", program, PLAYER_SOURCE], check=True,
                   timeout=120)
    return program


class Players:
    """One rtmp_player process: N players of ``url``; its JSON lines read with timeouts."""

    def __init__(self, program, url, count, rate, conn_args=(), gap_factor=GAP_FACTOR, lowat=0):
        command = [program, "-n", str(count), "--rate", str(rate),
                   "--gap-factor", str(gap_factor), "--lowat", str(lowat)]
        for arg in conn_args:
            command += ["--conn-arg", arg]
        command.append(url)
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._buffer = b""

    @property
    def pid(self):
        return self.process.pid

    def line(self, event, timeout):
        """The next JSON line whose ``event`` is ``event``, or None after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        stdout = self.process.stdout.fileno()
        for _ in range(10_000):
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                report = json.loads(raw)
                if report.get("event") == event:
                    return report
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([stdout], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(stdout, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        return None

    def mark(self):
        os.kill(self.pid, signal.SIGUSR1)
        return self.line("mark", 10)

    def finish(self):
        """SIGTERM, the final report (None if it gave none), and the process ended by PID."""
        report = None
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            report = self.line("final", 15)
        rtmp_peer.stop_process(self.process)
        return report

    def stderr(self):
        with contextlib.suppress(Exception):
            return self.process.stderr.read().decode("utf-8", "replace")[-2000:]
        return ""


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def audio_rate(flv_path):
    """Audio messages per second of the FLV file (its raw AAC frames: 43.07/s at 44.1 kHz)."""
    stamps = [timestamp for kind, timestamp, body in rtmp_peer.flv_tags(flv_path)
              if kind == rtmp_peer.FLV_AUDIO and not (body[0] >> 4 == 10 and body[1] == 0)]
    if len(stamps) < 2 or stamps[-1] == stamps[0]:
        raise RuntimeError(f"{flv_path} has too few audio frames")
    return (len(stamps) - 1) * 1000.0 / (stamps[-1] - stamps[0])


# -- one run: a server, a publisher, every N ------------------------------------------

def start_publisher(flv_path, target, workdir):
    log = open(os.path.join(workdir, "publisher.log"), "w")
    command = [*rtmp_peer.FFMPEG, "-re", "-stream_loop", "-1", "-i", flv_path, "-c", "copy",
               *target.publish_options, "-f", "flv", target.publish_url or target.url]
    try:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log)
    finally:
        log.close()


def wait_stream_live(program, target, publisher):
    """Until a probe player gets audio from the stream (bounded by :data:`PUBLISH_WAIT`)."""
    deadline = time.monotonic() + PUBLISH_WAIT
    while time.monotonic() < deadline:
        if publisher.poll() is not None:
            raise RuntimeError(f"the publisher exited with {publisher.returncode}")
        probe = Players(program, target.url, 1, 10, target.conn_args)
        time.sleep(1.0)
        report = probe.finish()
        if report and report["audio"] >= 10:
            return
    raise RuntimeError(f"no audio reached a player of {target.url} in {PUBLISH_WAIT:.0f} s")


def measure_step(program, target, count, args):
    """One N: players connected and settled, then a measured window. Returns figures."""
    players = None
    try:
        if count:
            players = Players(program, target.url, count, args.rate, target.conn_args,
                              args.gap_factor, args.lowat)
            ready = players.line("ready", count / args.rate + READY_GRACE)
            if ready is None:
                print(f"  warning: not every one of {count} players was playing within"
                      f" {count / args.rate + READY_GRACE:.0f} s", flush=True)
        time.sleep(args.settle)
        player_pid = players.pid if players else None
        server_before = cpu_seconds(target.pid)
        player_before = cpu_seconds(player_pid) if players else 0.0
        started = time.monotonic()
        mark = players.mark() if players else None
        time.sleep(args.window)
        server_after = cpu_seconds(target.pid)
        player_after = cpu_seconds(player_pid) if players else 0.0
        elapsed = time.monotonic() - started
        rss = rss_mb(target.pid)
        final = players.finish() if players else None
        if players and (mark is None or final is None):
            raise RuntimeError(f"rtmp_player gave no report:\n{players.stderr()}")
        players = None
        return {"players": count, "cpu": (server_after - server_before) / elapsed,
                "player_cpu": (player_after - player_before) / elapsed, "rss": rss,
                "report": final}
    finally:
        if players is not None:
            players.finish()


def run_target(name, args, program, flv_path):
    """A fresh server and publisher, every N of ``--players`` in turn: {N: figures}."""
    workdir = tempfile.mkdtemp(prefix=f"bench-rtmp-{name}-")
    figures = {}
    with TARGETS[name](args, workdir) as target:
        pin_to_cpu0(target.pid)
        publisher = start_publisher(flv_path, target, workdir)
        try:
            wait_stream_live(program, target, publisher)
            for count in args.players:
                figures[count] = measure_step(program, target, count, args)
                if publisher.poll() is not None:
                    raise RuntimeError(f"the publisher exited with {publisher.returncode}")
        finally:
            rtmp_peer.stop_process(publisher)
    shutil.rmtree(workdir, ignore_errors=True)
    return figures


# -- figures --------------------------------------------------------------------------

def slope(points):
    """Least-squares slope of y against x over ``points`` [(x, y)] (NaN with < 2 x values)."""
    if len({x for x, _ in points}) < 2:
        return float("nan")
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    return (sum((x - mean_x) * (y - mean_y) for x, y in points)
            / sum((x - mean_x) ** 2 for x, _ in points))


def delivery(report, fps, count, lowat=0):
    """How the ``count`` players' window went: "yes" (every player got every frame),
    "late" (no gaps, no closes, but some player was still behind at the window's end)
    or "NO" (gaps, closes or players not playing).

    With ``lowat`` a player reads in bursts of that many bytes, so as many
    more frames may fall on the far side of the window's edges.
    """
    if (report["window_players"] != count or report["closed_in_window"]
            or report["gaps"] or report["backwards"]):
        return "NO"
    expected = fps * report["window_s"]
    frame_bytes = report["window_bytes"] / report["window_audio"] if report["window_audio"] else 1
    slack = FRAME_SLACK + 2 * lowat / frame_bytes
    return "yes" if report["audio_min"] >= expected * (1 - FRAME_SLACK_SHARE) - slack else "late"


def worst(verdicts):
    return min(verdicts, key=("NO", "late", "yes").index)


def summarise(runs, fps, lowat=0):
    """Medians over runs, per N: {N: {...}}, and the CPU slope (share of a core per player)."""
    counts = sorted(runs[0])
    summary = {}
    for count in counts:
        steps = [run[count] for run in runs]
        row = {"cpu": statistics.median(step["cpu"] for step in steps),
               "rss": statistics.median(step["rss"] for step in steps),
               "player_cpu": statistics.median(step["player_cpu"] for step in steps),
               "each": [step["cpu"] for step in steps]}
        reports = [step["report"] for step in steps if step["report"]]
        if count and reports:
            row.update(
                frames_min=min(r["audio_min"] for r in reports),
                frames_median=statistics.median(r["audio_median"] for r in reports),
                frames_max=max(r["audio_max"] for r in reports),
                expected=statistics.median(fps * r["window_s"] for r in reports),
                gaps=sum(r["gaps"] + r["backwards"] for r in reports),
                closes=sum(r["closed_in_window"] + r["failed"] for r in reports),
                playing=min(r["window_players"] for r in reports),
                max_gap_ms=max(r["max_arrival_gap_ms"] for r in reports),
                delivery=worst([delivery(r, fps, count, lowat) for r in reports]
                               + (["NO"] if len(reports) < len(steps) else [])))
        summary[count] = row
    base = summary.get(0, {}).get("cpu")
    for count, row in summary.items():
        row["per_player"] = (row["cpu"] - base) / count if count and base is not None \
            else float("nan")
    per_player = slope([(count, step["cpu"]) for run in runs for count, step in run.items()])
    return summary, per_player


def print_target(name, summary, per_player, fps):
    print(f"{'target':>8} {'N':>5} | {'CPU %':>6} {'/player %':>9} {'RSS MB':>6} |"
          f" {'frames/player min/med/max':>25} {'expect':>6} {'gaps':>4} {'closes':>6}"
          f" {'max wait ms':>11} {'every frame':>11} | {'player CPU %':>12}   (each run: CPU %)",
          flush=True)
    for count, row in summary.items():
        frames = (f"{row['frames_min']:.0f}/{row['frames_median']:.0f}/{row['frames_max']:.0f}"
                  if "frames_min" in row else "-")
        per = f"{row['per_player'] * 100:9.4f}" if count else f"{'-':>9}"
        extra = (f" {row['expected']:6.0f} {row['gaps']:4d} {row['closes']:6d}"
                 f" {row['max_gap_ms']:11.0f} {row['delivery']:>11}"
                 if "frames_min" in row else f" {'':6} {'':4} {'':6} {'':11} {'':11}")
        each = ", ".join(f"{cpu * 100:.2f}" for cpu in row["each"])
        print(f"{name:>8} {count:5d} | {row['cpu'] * 100:6.2f} {per} {row['rss']:6.0f} |"
              f" {frames:>25}{extra} | {row['player_cpu'] * 100:12.2f}   ({each})", flush=True)
    top = max(summary)
    row = summary[top]
    print(f"{name:>8}: CPU per player (least squares over N) {per_player * 100:.4f} % of a core"
          f" = {per_player * 1e6 / fps:.1f} µs per frame delivered; at N={top}: every player got"
          f" every frame: {row.get('delivery', '-')}; the players used"
          f" {row['player_cpu'] * 100:.1f} % of a core", flush=True)


def parse_players(text):
    counts = sorted({int(item) for item in text.split(",") if item.strip()})
    if not counts or counts[0] < 0 or counts[-1] > MAX_PLAYERS:
        raise SystemExit(f"--players: numbers from 0 to {MAX_PLAYERS}")
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="nms,gateway",
                        help=f"comma-separated, of {', '.join(TARGETS)}; the first is the"
                             " baseline of the ratios (default nms)")
    parser.add_argument("--players", default=None,
                        help=f"numbers of players (default {PLAYERS}; {QUICK_PLAYERS} with"
                             " --quick)")
    parser.add_argument("--window", type=float, default=None,
                        help=f"measured seconds per N (default {WINDOW:g}; {QUICK_WINDOW:g}"
                             " with --quick)")
    parser.add_argument("--settle", type=float, default=SETTLE,
                        help="seconds between every player playing and the window")
    parser.add_argument("--rate", type=float, default=RATE, help="new connections per second")
    parser.add_argument("--runs", type=int, default=None,
                        help=f"medians over this many runs (default {RUNS}; 1 with --quick)")
    parser.add_argument("--gap-factor", type=float, default=GAP_FACTOR,
                        help="a timestamp step above this x the median frame interval is a gap"
                             f" (default {GAP_FACTOR:g}: one lost AAC frame is a 46 ms step)")
    parser.add_argument("--lowat", type=int, default=0, metavar="BYTES",
                        help="players wake only when BYTES are waiting (SO_RCVLOWAT): cheaper"
                             " players, fewer ACKs for the server, coarser 'max wait'"
                             " (default 0: off)")
    parser.add_argument("--quick", action="store_true",
                        help="one short run of fewer players: checks that the bench works")
    add_source_argument(parser)   # for the gateway target (benchlib.start_gateway)
    args = parser.parse_args()
    args.players = parse_players(args.players or (QUICK_PLAYERS if args.quick else PLAYERS))
    args.window = args.window or (QUICK_WINDOW if args.quick else WINDOW)
    args.runs = args.runs or (1 if args.quick else RUNS)
    if args.quick:
        args.settle = min(args.settle, 1.0)
    targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    for name in targets:
        if name not in TARGETS:
            raise SystemExit(f"unknown target {name!r}: expected one of {', '.join(TARGETS)}")

    run_generator_on_cpu1()   # the players and the publisher; each server goes to CPU 0
    started = time.monotonic()
    build = tempfile.mkdtemp(prefix="bench-rtmp-build-")
    try:
        program = build_player(build)
        flv_path = rtmp_peer.make_sine_flv(os.path.join(build, "sine_128k.flv"), FLV_SECONDS)
        fps = audio_rate(flv_path)
        print(f"publisher: {os.path.basename(flv_path)}, AAC 128 kbit/s, {fps:.2f} audio"
              f" messages/s; players: {', '.join(map(str, args.players))} at {args.rate:g}/s;"
              f" window {args.window:g} s after {args.settle:g} s settling; {args.runs} run(s)",
              flush=True)
        runs_by_target = interleaved_runs(
            targets, args.runs, lambda name: run_target(name, args, program, flv_path))
    finally:
        shutil.rmtree(build, ignore_errors=True)
    results = {}
    for name in targets:
        results[name] = summarise(runs_by_target[name], fps, args.lowat)
        print_target(name, *results[name], fps)
    baseline = targets[0]
    for name in targets[1:]:
        (summary, per_player), (base_summary, base_per_player) = results[name], results[baseline]
        at = ", ".join(f"N={count}: {ratio(summary[count]['cpu'], base_summary[count]['cpu']):.2f}"
                       for count in summary if count in base_summary)
        print(f"{name}/{baseline}: CPU per player {ratio(per_player, base_per_player):.2f};"
              f" server CPU {at} (> 1: {name} costs more)", flush=True)
    print(f"took {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
