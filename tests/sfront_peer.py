"""Helpers for tests with real sfront 0.98 network clients (no tests in here).

The clients are the programs sfront generates (shared/peers/sfront, the wire
facts in shared/protocols/sfront.md). A client finds its own address with
gethostname() + gethostbyname() and refuses 127.0.0.1, so it runs with
``ip netns exec NS`` in a network namespace whose /etc/netns/NS/hosts maps
the hostname to another address; the gateway and every test-side socket
must then live in that namespace too.

How the test process gets into a namespace: network namespaces are per
thread on Linux. :func:`entered` switches the calling thread into one with
``setns(2)`` (through ctypes; Python 3.11 has no ``os.setns``) and back
again. Sockets keep the namespace they were created in for good, and
threads and subprocesses started meanwhile inherit it, so a test can create
a UDP proxy's sockets, start ``twistd``, poll its ``/status`` or run an
asyncio WebSocket client while inside, and carry on outside afterwards.

* :func:`build_client` builds (once, cached) a client program;
  :func:`run_client` runs one in a namespace and parses its
  ``Network status:`` / ``Network advisory:`` lines.
* :func:`namespace`, :func:`entered`, :class:`NamespacedGateway`,
  :func:`start_gateway`, :func:`nat_rig`: namespaces, the gateway inside one,
  a client behind a MASQUERADE NAT.
* :class:`LossProxy`: a seeded, deterministic, bidirectional UDP loss proxy.
* :func:`wav_peaks`, :func:`sound_problems`, :func:`assert_sound_between`,
  :func:`is_silent`: what a client heard.
* :func:`session_key`, :func:`session_name`, :func:`digest`,
  :func:`member_nonce`, :func:`signed`, :func:`signature_ok`: an independent
  copy of sfront's crypto (sfront.md §1, §2.3, §3.1), to check the door with.
"""

import base64
import contextlib
import ctypes
import hashlib
import hmac
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import wave

from tests.conftest import BASE_CONFIG, REPO, GatewayProcess, free_port, merge, need_external

# --------------------------------------------------------------------------------------------
# Where sfront lives, and building clients

CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                     "netgateway-peers")
CLIENT_CACHE = os.path.join(CACHE, "sfront-clients")
MODES = ("stream", "listen", "duplex", "organ")
# Bump when a build recipe here changes, so cached clients are rebuilt.
RECIPE = 2


def peers_dir():
    """shared/peers/sfront: $NETGATEWAY_SFRONT_PEERS, or beside the checkout (or beside the
    main worktree when this checkout is a git worktree); None when not found."""
    configured = os.environ.get("NETGATEWAY_SFRONT_PEERS")
    if configured:
        return configured if os.path.isfile(os.path.join(configured, "build.sh")) else None
    roots = [REPO]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        common = subprocess.run(["git", "rev-parse", "--path-format=absolute",
                                 "--git-common-dir"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        if common:
            roots.append(os.path.dirname(common))
    for root in roots:
        candidate = os.path.join(os.path.dirname(root), "shared", "peers", "sfront")
        if os.path.isfile(os.path.join(candidate, "build.sh")):
            return candidate
    return None


def sfront_missing():
    """Why sfront clients cannot be built here, or None when they can."""
    if peers_dir() is None:
        return ("shared/peers/sfront not found beside the repository"
                " (set NETGATEWAY_SFRONT_PEERS)")
    missing = [tool for tool in ("gcc", "make", "python3") if shutil.which(tool) is None]
    if missing:
        return f"building sfront clients needs {', '.join(missing)}"
    return None


def need_sfront():
    """Skip (fail under CI=true) unless sfront clients can be built."""
    reason = sfront_missing()
    need_external(reason is None, reason or "")


def need_namespaces():
    """Skip (fail under CI=true) unless this process may create network namespaces."""
    need_external(os.geteuid() == 0, "network namespaces need root")
    need_external(shutil.which("ip") is not None, "ip (iproute2) is needed")


def _run(command, timeout=600, **kwargs):
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                               **kwargs)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({completed.returncode}):\n"
                           f"{completed.stdout}\n{completed.stderr}")
    return completed.stdout


def translator():
    """Path of the networked sfront translator (built by build.sh on first use)."""
    need_sfront()
    return _run([os.path.join(peers_dir(), "build.sh")]).strip().splitlines()[-1]


def _digest_file(path):
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def _patched_orchestra(text):
    """stream.saol whose MIDI instrument plays only what arrives from the network.

    Network members' notes arrive on extended channels 16*k + ch (k >= 1,
    sfront.md §2.3 "Channels"); the local stream is on channels 0-15.
    """
    old = "  vval = velocity;\n  kpitch = pitch;\n"
    start = text.index(old)
    end = text.index("  turnoff;\n}", start)
    body = text[start:end]
    guarded = "  if (channel >= 16)\n    {\n" + "".join(
        "  " + line + "\n" if line else "\n" for line in body.rstrip("\n").split("\n")
    ) + "    }\n"
    return text[:start] + guarded + text[end:]


def _beats_per_second(midi):
    """The MIDI file's (first) tempo: SASL's ``end`` counts its beats (bach.mid: 80 bpm)."""
    found = re.search(rb"\xff\x51\x03(...)", midi, re.DOTALL)
    microseconds = int.from_bytes(found.group(1), "big") if found else 500000
    return 1e6 / microseconds


def _build_duplex(out, session, passphrase, sip_ip, sip_port, seconds, extra):
    """Streams bach.mid like ``stream`` and renders to heard.wav only what the network plays.

    make-client.sh cannot do this: its stream mode passes ``-aout null`` and
    sfront refuses a second ``-aout`` ("sfront only processes one -aout
    file/device"). With ``-aout heard.wav`` alone the WAV would also hold the
    client's own local playing, so the orchestra here plays only network
    channels (>= 16); the score ends after ``seconds`` (its ``end`` counts
    beats of the MIDI file's tempo). The plain stream client ends after 90
    beats, about 67.5 s, its last note at about 66 s.
    """
    sfront = translator()
    examples = os.path.join(os.path.dirname(os.path.dirname(sfront)),
                            "examples", "rtime", "network", "nmp_stream")
    shutil.copy(os.path.join(examples, "bach.mid"), out)
    with open(os.path.join(examples, "stream.saol")) as stream:
        orchestra = _patched_orchestra(stream.read())
    with open(os.path.join(out, "stream.saol"), "w") as stream:
        stream.write(orchestra)
    with open(os.path.join(out, "bach.mid"), "rb") as stream:
        beats = seconds * _beats_per_second(stream.read())
    with open(os.path.join(out, "stream.sasl"), "w") as stream:
        stream.write(f"{beats:g} end\n")
    _run([sfront, "-mstr", "bach.mid", "-orc", "stream.saol", "-sco", "stream.sasl",
          "-bitout", "score.mp4"], cwd=out)
    _run([sfront, "-session", session, "-passphrase", passphrase, "-sip_ip", sip_ip,
          "-sip_port", str(sip_port), "-aout", "heard.wav", "-timesync", "-cin", "fstr",
          "-bitc", "score.mp4", "-o", "client.c", *extra], cwd=out)
    _run(["gcc", "-O2", "-w", "client.c", "-lm", "-o", "client"], cwd=out)


ORGAN = """\
// netgateway's test orchestra: a tone that sounds exactly while a note is held, with no
// decay and no release, so a note-off that never arrives leaves its note sounding for the
// rest of the file (stream.saol's plucked string dies away by itself within 2 s).
global {
  srate 44100;
  krate 1050;
  outchannels 1;
}

instr organ (pitch, velocity) preset 1 {
  table tone(harm, 2048, 1, 0.5, 0.25);
  asig sound;

  sound = 0.05 * (velocity / 127) * oscil(tone, cpsmidi(pitch));
  output(sound);
}
"""


def _build_organ(out, session, passphrase, sip_ip, sip_port, seconds, extra):
    """Like ``listen``, but renders with :data:`ORGAN`: a stuck note is heard to the end."""
    sfront = translator()
    with open(os.path.join(out, "organ.saol"), "w") as stream:
        stream.write(ORGAN)
    with open(os.path.join(out, "listen.sasl"), "w") as stream:
        stream.write(f"{seconds} end\n")
    _run([sfront, "-orc", "organ.saol", "-sco", "listen.sasl", "-bitout", "score.mp4"], cwd=out)
    _run([sfront, "-session", session, "-passphrase", passphrase, "-sip_ip", sip_ip,
          "-sip_port", str(sip_port), "-aout", "heard.wav", "-timesync", "-cin", "fstr",
          "-bitc", "score.mp4", "-o", "client.c", *extra], cwd=out)
    _run(["gcc", "-O2", "-w", "client.c", "-lm", "-o", "client"], cwd=out)


def build_client(mode, session, passphrase, sip_ip, sip_port, seconds=20, extra=()):
    """Path of a client program, built once per set of arguments and cached.

    ``mode``: ``stream`` (streams bach.mid, no audio), ``listen`` (plays
    nothing, renders what it hears to ``heard.wav`` for ``seconds``), both by
    shared/peers/sfront/make-client.sh; or ``duplex`` (streams bach.mid and
    renders to ``heard.wav`` only what the network plays, the score ending
    after ``seconds``; built here); or ``organ`` (``listen`` with :data:`ORGAN`,
    whose notes sound until their note-off; built here). ``extra``: more sfront options, e.g.
    ``("-bandsize", "4")``. The WAV lands in the cwd the client runs in.
    Skips (fails under CI=true) when sfront cannot be built here.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    need_sfront()
    peers = peers_dir()
    recipe = [RECIPE, mode, session, passphrase, sip_ip, int(sip_port), seconds,
              [str(option) for option in extra],
              _digest_file(os.path.join(peers, "make-client.sh")),
              _digest_file(os.path.join(peers, "build.sh"))]
    key = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:20]
    out = os.path.join(CLIENT_CACHE, f"{mode}-{key}")
    program = os.path.join(out, "client")
    if os.access(program, os.X_OK) and os.path.isfile(os.path.join(out, "score.mp4")):
        return program
    os.makedirs(CLIENT_CACHE, exist_ok=True)
    building = tempfile.mkdtemp(prefix=f".{mode}-{key}-", dir=CLIENT_CACHE)
    try:
        if mode in BUILDERS:
            BUILDERS[mode](building, session, passphrase, sip_ip, sip_port, seconds, extra)
        else:
            _run([os.path.join(peers, "make-client.sh"), building, mode, session, passphrase,
                  sip_ip, str(sip_port), str(seconds), "--", *map(str, extra)])
        with open(os.path.join(building, "recipe.json"), "w") as stream:
            json.dump({"mode": mode, "session": session, "sip_ip": sip_ip,
                       "sip_port": int(sip_port), "seconds": seconds,
                       "extra": list(map(str, extra))}, stream)
        try:
            os.rename(building, out)
        except OSError:                       # built meanwhile by another process
            if not os.access(program, os.X_OK):
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return program


BUILDERS = {"duplex": _build_duplex, "organ": _build_organ}


# --------------------------------------------------------------------------------------------
# Network namespaces

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_counter = iter(range(1, 1 << 30))


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


def _name(ns):
    return ns.name if isinstance(ns, Namespace) else ns


@contextlib.contextmanager
def entered(ns):
    """Runs the body with the calling thread inside network namespace ``ns``.

    Sockets created inside stay in ``ns`` after the body; threads and
    subprocesses started inside are in ``ns`` for good. Other threads are
    untouched. ``ns=None`` does nothing.
    """
    if ns is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{_name(ns)}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


class Namespace:
    """A network namespace this test made; processes started with :meth:`spawn` (or
    :func:`run_client`) are ended by PID when it is deleted."""

    def __init__(self, name):
        self.name = name
        self.processes = []

    def __str__(self):
        return self.name

    def run(self, *command, timeout=20):
        """``ip netns exec NAME command``; its stdout, or RuntimeError."""
        return _run(["ip", "netns", "exec", self.name, *map(str, command)], timeout=timeout)

    def spawn(self, command, **kwargs):
        """Popen of ``ip netns exec NAME command`` (the PID is the command's: ip execs it)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        process = subprocess.Popen(["ip", "netns", "exec", self.name, *map(str, command)],
                                   **kwargs)
        self.processes.append(process)
        return process

    def entered(self):
        return entered(self)

    def socket(self, kind=socket.SOCK_DGRAM, bind=None):
        """An AF_INET socket that lives in this namespace, bound to ``bind`` if given."""
        with entered(self):
            made = socket.socket(socket.AF_INET, kind)
            try:
                if bind is not None:
                    made.bind(bind)
            except BaseException:
                made.close()
                raise
        return made

    def end_processes(self, timeout=10.0):
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def write_hosts(name, address):
    """/etc/netns/NAME/hosts mapping this machine's hostname to ``address``."""
    folder = f"/etc/netns/{name}"
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "hosts"), "w") as stream:
        stream.write(f"127.0.0.1 localhost\n{address} {socket.gethostname()}\n")


def _create(name_hint, address):
    name = f"ngw-{os.getpid()}-{name_hint}{next(_counter)}"
    _run(["ip", "netns", "add", name], timeout=20)
    created = Namespace(name)
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"], timeout=20)
        write_hosts(name, address)
    except BaseException:
        _delete(created)
        raise
    return created


def _delete(created):
    try:
        created.end_processes()
    finally:
        subprocess.run(["ip", "netns", "del", created.name], capture_output=True, timeout=20)
        shutil.rmtree(f"/etc/netns/{created.name}", ignore_errors=True)


@contextlib.contextmanager
def namespace(name_hint="sf", address="127.0.0.2"):
    """A fresh network namespace ``ngw-<pid>-<hint><n>`` with ``lo`` up and an
    /etc/netns hosts file mapping the hostname to ``address`` (and localhost to
    127.0.0.1). Deleted, with its folder and its processes, on exit, even on failure.
    Skips (fails under CI=true) without root or ip."""
    need_namespaces()
    created = _create(name_hint, address)
    try:
        yield created
    finally:
        _delete(created)


# --------------------------------------------------------------------------------------------
# The gateway inside a namespace

class NamespacedGateway(GatewayProcess):
    """A real ``twistd -n netgateway -c config.yaml`` started with ``ip netns exec`` in
    ``ns``; GatewayProcess's start-and-wait loop, ``status`` and ``get`` run inside the
    namespace too, so ``web_url`` means the namespace's 127.0.0.1."""

    def __init__(self, config, workdir, ns, installed=False):
        super().__init__(config, workdir, installed)
        self.ns = ns

    def command(self):
        return ["ip", "netns", "exec", _name(self.ns)] + super().command()

    def start(self, timeout=20.0):
        with entered(self.ns):
            return super().start(timeout)

    def status(self):
        with entered(self.ns):
            return super().status()

    def get(self, path):
        with entered(self.ns):
            return super().get(path)


def start_gateway(ns, workdir, override=None, installed=False):
    """A started NamespacedGateway on BASE_CONFIG merged with ``override`` (its web port is
    free in ``ns``). Stop it with ``.stop()`` (by PID)."""
    with entered(ns):
        port = free_port()
    config = merge(merge(BASE_CONFIG, {"web": {"port": port}}), override or {})
    workdir = str(workdir)
    os.makedirs(workdir, exist_ok=True)
    return NamespacedGateway(config, workdir, ns, installed).start()


# --------------------------------------------------------------------------------------------
# Running clients

STATUS = re.compile(r"Network (status|advisory): (.*?)\s*$")


class Client:
    """A running sfront client; ``lines`` are its stderr lines so far (stripped), ``network``
    the ``(kind, text)`` of its ``Network status:`` / ``Network advisory:`` lines."""

    def __init__(self, process, cwd):
        self.process = process
        self.cwd = cwd
        self.lines = []
        self.stdout = []
        self._new = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(process.stderr, self.lines),
                                          daemon=True),
                         threading.Thread(target=self._read, args=(process.stdout, self.stdout),
                                          daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, into):
        for line in stream:
            with self._new:
                into.append(line.rstrip("\n").rstrip())
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    @property
    def pid(self):
        return self.process.pid

    @property
    def wav(self):
        """Where a listen or duplex client writes what it heard."""
        return os.path.join(self.cwd, "heard.wav")

    @property
    def network(self):
        with self._new:
            lines = list(self.lines)
        return [match.groups() for match in map(STATUS.search, lines) if match]

    def statuses(self):
        return [text for kind, text in self.network if kind == "status"]

    def advisories(self):
        return [text for kind, text in self.network if kind == "advisory"]

    def wait_for_line(self, pattern, timeout=10.0, start=0):
        """The first re.search match of ``pattern`` in a stderr line (from index ``start``)
        within ``timeout`` s; TimeoutError (with the lines so far) otherwise."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = start
        with self._new:
            while True:
                while index < len(self.lines):
                    match = regex.search(self.lines[index])
                    index += 1
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self.process.poll() is not None and not any(r.is_alive()
                                                               for r in self._readers):
                    break
                self._new.wait(min(remaining, 0.2))
        raise TimeoutError(f"no line matching {pattern!r} within {timeout} s"
                           f" (exit {self.process.poll()}); lines: {self.lines}")

    def wait(self, timeout=30.0):
        """Waits for the client to exit by itself; returns its exit code and all lines."""
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def interrupt(self):
        """Sends SIGINT (by PID) without waiting: the client starts its graceful shutdown."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)

    def stop(self, graceful=True, timeout=15.0):
        """Ends the client by PID: SIGINT first when ``graceful`` (it then sends its RTCP BYE
        and SIP BYE, 2.5), SIGKILL if it does not exit within ``timeout``."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT if graceful else signal.SIGKILL)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for reader in self._readers:
            reader.join(5)
        return self.process.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop(graceful=False)


def run_client(ns, path, cwd, args=()):
    """Starts client program ``path`` with ``ip netns exec`` in ``ns`` (it needs the hosts
    bind-mount), working in ``cwd`` (where heard.wav lands). Returns a :class:`Client`;
    use it as a context manager, or call ``stop``/``wait``."""
    os.makedirs(cwd, exist_ok=True)
    # The program reads its score's streaming data at run time: name it, since cwd is not
    # the build directory.
    command = [path, "-csys_fstr_file", os.path.join(os.path.dirname(path), "score.mp4"),
               *args]
    kwargs = dict(cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True, errors="replace")
    if isinstance(ns, Namespace):
        process = ns.spawn(command, **kwargs)
    else:
        process = subprocess.Popen(["ip", "netns", "exec", ns, *command], **kwargs)
    return Client(process, cwd)


# --------------------------------------------------------------------------------------------
# What a client heard

def wav_peaks(path, window=0.5):
    """Peak absolute sample value per ``window`` seconds of a 16-bit WAV (all channels)."""
    import array
    with wave.open(str(path), "rb") as stream:
        if stream.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * stream.getsampwidth()}-bit, expected 16-bit")
        channels, rate = stream.getnchannels(), stream.getframerate()
        samples = array.array("h", stream.readframes(stream.getnframes()))
    if struct.pack("=H", 1) != struct.pack("<H", 1):
        samples.byteswap()
    step = max(1, int(rate * window)) * channels
    return [max(map(abs, samples[index:index + step]), default=0)
            for index in range(0, len(samples), step)]


def zero_crossing_rate(path, threshold=300, window=0.1):
    """Zero crossings per second of the first channel, over the windows whose peak exceeds
    ``threshold``: a rough pitch measure (it scales with every partial of a transposed note)."""
    import array
    with wave.open(str(path), "rb") as stream:
        channels, rate = stream.getnchannels(), stream.getframerate()
        samples = array.array("h", stream.readframes(stream.getnframes()))[::channels]
    if struct.pack("=H", 1) != struct.pack("<H", 1):
        samples.byteswap()
    step = max(2, int(rate * window))
    crossings = sounding = 0
    for index in range(0, len(samples) - step + 1, step):
        part = samples[index:index + step]
        if max(map(abs, part)) <= threshold:
            continue
        crossings += sum(1 for before, after in zip(part, part[1:]) if (before < 0) != (after < 0))
        sounding += step
    return crossings * rate / sounding if sounding else 0.0


def is_silent(peaks, threshold=0):
    """True when no window's peak exceeds ``threshold``."""
    return all(peak <= threshold for peak in peaks)


def sound_problems(peaks, start, end, window=0.5, threshold=100, margin=0.5,
                   min_sounding=1.0):
    """Why ``peaks`` (from :func:`wav_peaks`) is not "sound from ``start`` to ``end`` s,
    silence elsewhere": an empty list when it is.

    Windows wholly inside [start, end] must mostly sound (a fraction
    ``min_sounding`` of them above ``threshold``); windows wholly outside
    [start - margin, end + margin] must be at or below ``threshold``; others are
    not judged (notes ring on, clocks differ).
    """
    problems = []
    inside = [index for index in range(len(peaks))
              if index * window >= start and (index + 1) * window <= end]
    outside = [index for index in range(len(peaks))
               if (index + 1) * window <= start - margin or index * window >= end + margin]
    if end > start and not inside:
        problems.append(f"no whole {window} s window between {start} and {end} s"
                        f" (the file lasts {len(peaks) * window} s)")
    sounding = [index for index in inside if peaks[index] > threshold]
    if inside and len(sounding) < min_sounding * len(inside):
        quiet = [f"{index * window:g}s" for index in inside if peaks[index] <= threshold]
        problems.append(f"silent between {start} and {end} s at {', '.join(quiet)}")
    loud = [f"{index * window:g}s={peaks[index]}" for index in outside
            if peaks[index] > threshold]
    if loud:
        problems.append(f"sound outside {start}..{end} s: {', '.join(loud)}")
    return problems


def assert_sound_between(peaks, start, end, **kwargs):
    """AssertionError (showing every peak) unless :func:`sound_problems` finds nothing."""
    problems = sound_problems(peaks, start, end, **kwargs)
    window = kwargs.get("window", 0.5)
    assert not problems, "; ".join(problems) + "\npeaks per window: " + " ".join(
        f"{index * window:g}s:{peak}" for index, peak in enumerate(peaks))


# --------------------------------------------------------------------------------------------
# A seeded UDP loss proxy

class LossProxy:
    """Forwards UDP between ``listen`` and ``target``, dropping a ``loss`` fraction.

    Datagrams arriving at ``listen`` (ip, port) go to ``target`` from a second
    socket (bound to ``upstream`` or the listen ip and a free port); what comes
    back to that socket goes out of the listening socket to the last source
    seen there. Which datagrams are lost is decided by ``random.Random`` seeded
    from ``seed`` and the direction, so a run is repeatable. ``lossy`` names the
    directions that lose packets (``"to_target"``, ``"to_source"``).
    ``forwarded``/``dropped`` count per direction; ``log`` holds
    ``(monotonic, direction, length, dropped)``. The sockets are made in ``ns``
    (a Namespace, a name, or None for the current one); the forwarding runs in
    a daemon thread. Use as a context manager or call ``start``/``close``.
    """

    DIRECTIONS = ("to_target", "to_source")

    def __init__(self, listen, target, loss=0.1, seed=0, ns=None, lossy=DIRECTIONS,
                 upstream=None):
        self.listen_address, self.target = tuple(listen), tuple(target)
        self.loss = loss
        self.lossy = set(lossy)
        unknown = self.lossy - set(self.DIRECTIONS)
        if unknown:
            raise ValueError(f"unknown directions {unknown}")
        self.forwarded = dict.fromkeys(self.DIRECTIONS, 0)
        self.dropped = dict.fromkeys(self.DIRECTIONS, 0)
        self.unroutable = 0
        self.log = []
        self.source = None
        self._random = {direction: random.Random(f"{seed}:{direction}")
                        for direction in self.DIRECTIONS}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_read, self._wake_write = os.pipe()
        with entered(ns):
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                self.listener.bind(self.listen_address)
                self.upstream.bind(tuple(upstream) if upstream else (self.listen_address[0], 0))
            except BaseException:
                self._close_sockets()
                raise
        self.upstream_address = self.upstream.getsockname()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"LossProxy {listen}->{target}")

    def start(self):
        self._thread.start()
        return self

    def _decide(self, direction):
        if direction in self.lossy:
            return self._random[direction].random() < self.loss
        return False

    def _loop(self):
        sockets = [self.listener, self.upstream, self._wake_read]
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select(sockets, [], [], 0.5)
            except (OSError, ValueError):
                return
            for ready in readable:
                if ready is self._wake_read:
                    return
                try:
                    data, source = ready.recvfrom(65535)
                except OSError:
                    continue
                if ready is self.listener:
                    direction, out, destination = "to_target", self.upstream, self.target
                    self.source = source
                else:
                    direction, out, destination = "to_source", self.listener, self.source
                with self._lock:
                    if destination is None:
                        self.unroutable += 1
                        continue
                    drop = self._decide(direction)
                    self.log.append((time.monotonic(), direction, len(data), drop))
                    if drop:
                        self.dropped[direction] += 1
                        continue
                    self.forwarded[direction] += 1
                with contextlib.suppress(OSError):
                    out.sendto(data, destination)

    def counts(self):
        with self._lock:
            return {"forwarded": dict(self.forwarded), "dropped": dict(self.dropped),
                    "unroutable": self.unroutable}

    def _close_sockets(self):
        for made in (self.listener, self.upstream):
            made.close()

    def close(self):
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")
        if self._thread.is_alive():
            self._thread.join(5)
        self._close_sockets()
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------
# NAT rig: clients behind a MASQUERADE router, the gateway at a "public" address

PUBLIC_IP = "198.18.0.1"
ROUTER_WAN_IP = "198.18.0.2"
LAN_PREFIX = "192.168.1"


class NatRig:
    """``server``: the namespace where the gateway runs, reachable at ``public_ip``;
    ``router``: the NAT (WAN ``wan_ip``, LAN ``LAN_PREFIX``.1); ``clients``: one namespace per
    client behind it, ``private_ips[i]`` its LAN address (its hosts file maps the hostname
    to it). ``rig``: ``home`` (the router drops unsolicited inbound, like a home router) or
    ``plain`` (MASQUERADE only); ``symmetric`` adds ``--random-fully``."""

    def __init__(self, server, router, clients, private_ips, rig, symmetric):
        self.server, self.router = server, router
        self.clients, self.private_ips = clients, private_ips
        self.public_ip, self.wan_ip = PUBLIC_IP, ROUTER_WAN_IP
        self.rig, self.symmetric = rig, symmetric

    def conntrack(self):
        """The router's conntrack table (``conntrack -L`` or /proc), '' when unavailable."""
        for command in (["conntrack", "-L"], ["cat", "/proc/net/nf_conntrack"]):
            with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
                return self.router.run(*command)
        return ""


def _link(first, first_if, first_ip, second, second_if, second_ip):
    _run(["ip", "-n", first.name, "link", "add", first_if, "type", "veth", "peer", "name",
          second_if, "netns", second.name], timeout=20)
    for space, interface, address in ((first, first_if, first_ip),
                                      (second, second_if, second_ip)):
        if address:
            _run(["ip", "-n", space.name, "addr", "add", address, "dev", interface], timeout=20)
        _run(["ip", "-n", space.name, "link", "set", interface, "up"], timeout=20)


@contextlib.contextmanager
def nat_rig(clients=1, rig="home", symmetric=False):
    """Builds and always tears down::

        server  198.18.0.1/24 (hostname -> 198.18.0.1)
          |
        router  wan 198.18.0.2/24, MASQUERADE; lan bridge 192.168.1.1/24
          |
        client i  192.168.1.(2+i)/24, default via 192.168.1.1 (hostname -> its address)

    Needs root, ip and iptables (skips, or fails under CI=true, otherwise).
    """
    if rig not in ("home", "plain"):
        raise ValueError("rig must be 'home' or 'plain'")
    need_namespaces()
    need_external(shutil.which("iptables") is not None, "iptables is needed")
    made = []
    try:
        server = _create("srv", PUBLIC_IP)
        made.append(server)
        router = _create("nat", ROUTER_WAN_IP)
        made.append(router)
        _link(router, "wan", f"{ROUTER_WAN_IP}/24", server, "eth0", f"{PUBLIC_IP}/24")
        router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        router.run("ip", "link", "add", "lan", "type", "bridge")
        router.run("ip", "addr", "add", f"{LAN_PREFIX}.1/24", "dev", "lan")
        router.run("ip", "link", "set", "lan", "up")
        router.run("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j",
                   "MASQUERADE", *(["--random-fully"] if symmetric else []))
        if rig == "home":
            for chain in ("INPUT", "FORWARD"):
                router.run("iptables", "-A", chain, "-i", "wan", "-m", "conntrack",
                           "--ctstate", "NEW,INVALID", "-j", "DROP")
        spaces, addresses = [], []
        for index in range(clients):
            address = f"{LAN_PREFIX}.{2 + index}"
            client = _create(f"c{index}-", address)
            made.append(client)
            _link(router, f"to_c{index}", None, client, "eth0", f"{address}/24")
            router.run("ip", "link", "set", f"to_c{index}", "master", "lan")
            client.run("ip", "route", "add", "default", "via", f"{LAN_PREFIX}.1")
            spaces.append(client)
            addresses.append(address)
        yield NatRig(server, router, spaces, addresses, rig, symmetric)
    finally:
        for space in reversed(made):
            with contextlib.suppress(Exception):
                _delete(space)


# --------------------------------------------------------------------------------------------
# sfront's crypto, written again from sfront.md (an oracle independent of the door)

NTP_OFFSET = 2208988800


def session_key(passphrase):
    """K: MD5 of the passphrase, then MD5 10000 more times (§1)."""
    key = hashlib.md5(passphrase.encode()).digest()
    for _ in range(10000):
        key = hashlib.md5(key).digest()
    return key


def digest(key, data):
    """b64(HMAC-MD5(K, data)), 24 characters."""
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(hmac.new(key, data, hashlib.md5).digest()).decode()


def session_name(name, passphrase):
    """The ``s=`` of a session (§1); ``mirror`` is keyless."""
    if name == "mirror":
        return base64.b64encode(hashlib.md5(b"mirror").digest()).decode()
    return digest(session_key(passphrase), name)


def member_nonce(key, server_callid, in_reply_to, server_ip, server_port):
    """The nonce a client expects on a server INVITE (§2.3), little-endian host."""
    text = (struct.pack("<I", server_callid & 0xFFFFFFFF)
            + struct.pack("<I", in_reply_to & 0xFFFFFFFF)
            + socket.inet_aton(server_ip) + struct.pack(">H", server_port))
    return digest(key, text)


def signed(key, packet):
    """``packet`` with the 4-octet HMAC-MD5 appended, as RTP and RTCP carry it (§3.1)."""
    return packet + hmac.new(key, packet, hashlib.md5).digest()[:4]


def signature_ok(key, packet):
    return len(packet) > 4 and hmac.new(key, packet[:-4], hashlib.md5).digest()[:4] == packet[-4:]


# --------------------------------------------------------------------------------------------
# Small wait helper

def wait_until(condition, what, timeout=10.0, interval=0.1):
    """The first truthy ``condition()`` within ``timeout`` s, else AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)

