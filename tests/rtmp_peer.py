"""Real RTMP peers for tests: node-media-server, ffmpeg, rtmpdump and python-librtmp.

Helpers only, no tests (the smoke tests are tests/integration/test_rtmp_peers.py).
What these clients send and accept is measured in shared/protocols/rtmp-clients.md.

- :func:`run_nms` starts node-media-server 4.4.3 (tests/peers, npm), the
  reference server, on 127.0.0.1 and free ports.
- :func:`ffmpeg_publish_sine`, :func:`ffmpeg_publish_flv`, :func:`ffmpeg_play`,
  :func:`ffmpeg_play_data`, :func:`rtmpdump_play` and :func:`ffprobe` drive the
  Debian tools, every one bounded by a timeout and ended by its PID.
- :func:`make_midi_flv` writes an FLV whose ``onMidi`` script tags sit between
  the audio tags of another FLV; :func:`flv_tags` and :func:`amf0_decode` read
  FLV files and AMF0 bodies back (a small AMF0 codec of the test's own, so that
  the tests never check the gateway's AMF0 with the gateway's AMF0).
- :class:`LibrtmpClient` publishes and plays with python-librtmp, sending and
  collecting AMF0 data messages.

Every address is on 127.0.0.0/8.
"""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import time

from tests.conftest import REPO, free_port, need_external

PEERS_DIR = os.path.join(REPO, "tests", "peers")
NMS_APP = os.path.join(PEERS_DIR, "node_modules", "node-media-server", "bin", "app.js")
RTMP_TOOLS = ("ffmpeg", "ffprobe", "rtmpdump")

# rtmpdump -w/-x: any SHA-256 and size turn on the FP9 digest handshake (the
# SWF verification answer itself is only sent when a server asks for it).
FP9_SWF_HASH = hashlib.sha256(b"netgateway test swf").hexdigest()
FP9_SWF_SIZE = 123456


# -- availability ----------------------------------------------------------------

def librtmp_available():
    try:
        import librtmp
    except ImportError:
        return False
    return librtmp is not None


def need_rtmp_tools():
    """Skip (fail under CI=true) unless ffmpeg, ffprobe, rtmpdump and python-librtmp are here."""
    missing = [tool for tool in RTMP_TOOLS if shutil.which(tool) is None]
    if not librtmp_available():
        missing.append("python-librtmp (import librtmp)")
    need_external(not missing, f"RTMP test clients missing: {', '.join(missing)}"
                               " (scripts/test installs Debian ffmpeg, rtmpdump, librtmp-dev"
                               " and PyPI python-librtmp)")


def need_nms():
    """Skip (fail under CI=true) unless node and npm node-media-server are installed."""
    need_external(shutil.which("node") is not None and os.path.exists(NMS_APP),
                  "node and tests/peers/node_modules/node-media-server are needed"
                  " (cd tests/peers && npm install --omit=optional)")


# -- processes -------------------------------------------------------------------

def stop_process(process, timeout=5.0):
    """End ``process`` by its PID: SIGTERM, again after 0.5 s, SIGKILL after ``timeout``.

    ffmpeg lets a first SIGTERM interrupt a blocking network read only before
    it started transcoding; a second one always does, and it still closes its
    output cleanly. Returns the return code.
    """
    for signum, wait in ((signal.SIGTERM, 0.5), (signal.SIGTERM, timeout),
                         (signal.SIGKILL, timeout)):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)
    return process.wait(timeout)


def run_bounded(command, timeout, **kwargs):
    """Run ``command`` to its end, at most ``timeout`` s (then it is ended by PID).

    Returns ``(returncode, stderr text, timed_out)``; stdout goes where ``kwargs`` say.
    """
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               **kwargs)
    timed_out = False
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        stop_process(process)
        _, stderr = process.communicate()
    return process.returncode, stderr.decode("utf-8", "replace"), timed_out


# -- node-media-server -----------------------------------------------------------

class Nms:
    """A running node-media-server: ``rtmp_port``, ``http_port``, ``pid``, ``log``."""

    def __init__(self, process, rtmp_port, http_port, log_path):
        self.process = process
        self.rtmp_port = rtmp_port
        self.http_port = http_port
        self.pid = process.pid
        self.log_path = log_path

    def url(self, stream, app="live"):
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{app}/{stream}"

    @property
    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as stream:
            return stream.read()

    def wait_log(self, text, count=1, timeout=10.0):
        """Wait until ``text`` is in the log ``count`` times (e.g. ``"start play /live/x"``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.count(text) >= count:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"node-media-server exited:\n{self.log}")
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} x{count} not in the NMS log within {timeout}s:\n{self.log}")

    def __iter__(self):  # rtmp_port, http_port, pid = ...
        return iter((self.rtmp_port, self.http_port, self.pid))


@contextlib.contextmanager
def run_nms(workdir, timeout=15.0):
    """Start node-media-server on 127.0.0.1, free RTMP and HTTP ports; yield :class:`Nms`.

    It unpacks as ``(rtmp_port, http_port, pid)``. Auth and the web admin are off,
    and no RTMPS/HTTPS listener is opened. NMS rewrites its config file on its
    first start when the auth secret or an admin password is empty: the config
    sets a secret and leaves out the JWT users, so it stays as written (it is
    written afresh at every start anyway). Stopped by its PID.
    """
    need_nms()
    workdir = str(workdir)
    os.makedirs(workdir, exist_ok=True)
    for _ in range(3):
        rtmp_port, http_port = free_port(), free_port()
        if rtmp_port == http_port:
            continue
        config_path = os.path.join(workdir, "nms-config.json")
        with open(config_path, "w") as stream:
            json.dump({
                "bind": "127.0.0.1",
                "auth": {"play": False, "publish": False, "secret": "netgateway-tests-unused"},
                "rtmp": {"port": rtmp_port},
                "http": {"port": http_port},
                "webadmin": {"enable": False},
                "record": {"auto": False},
                "store": {"path": "./nms-data"},
            }, stream, indent=2)
        log_path = os.path.join(workdir, "nms.log")
        log = open(log_path, "w")
        process = subprocess.Popen(["node", NMS_APP, "-c", config_path], cwd=workdir,
                                   stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT)
        log.close()
        nms = Nms(process, rtmp_port, http_port, log_path)
        if _wait_nms_listening(nms, timeout):
            break
        stop_process(process)
        if "already in use" not in nms.log:
            raise RuntimeError(f"node-media-server did not listen within {timeout}s:\n{nms.log}")
    else:
        raise RuntimeError(f"node-media-server found no free ports:\n{nms.log}")
    try:
        yield nms
    finally:
        stop_process(process)


def _wait_nms_listening(nms, timeout):
    wanted = (f"Rtmp Server listening on port 127.0.0.1:{nms.rtmp_port}",
              f"HTTP server listening on port 127.0.0.1:{nms.http_port}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = nms.log
        if all(line in log for line in wanted):
            return True
        if nms.process.poll() is not None:
            return False
        time.sleep(0.05)
    return False


# -- ffmpeg, rtmpdump, ffprobe -----------------------------------------------------

FFMPEG = ("ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error")


def ffmpeg_publish_sine(url, seconds, freq=440, extra=()):
    """Popen: ffmpeg publishes a ``freq`` Hz sine for ``seconds`` s, AAC 128k at real time (-re).

    ``extra`` are output options put before ``-f flv URL`` (e.g. ``-rtmp_conn ...``).
    End it with :func:`stop_process` (it ends by itself after ``seconds``).
    """
    command = [*FFMPEG, "-re", "-f", "lavfi",
               "-i", f"sine=frequency={freq}:sample_rate=44100:duration={seconds}",
               "-c:a", "aac", "-b:a", "128k", *extra, "-f", "flv", url]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def ffmpeg_publish_flv(path, url, extra=()):
    """Popen: ffmpeg publishes the FLV file ``path`` at real time, audio and data streams copied.

    With :func:`make_midi_flv` this sends the ``onMidi`` script tags as AMF0 data
    messages without the ``@setDataFrame`` prefix (shared/protocols/rtmp-clients.md 1.4).
    """
    command = [*FFMPEG, "-re", "-f", "flv", "-i", str(path), "-map", "0:a", "-map", "0:d?",
               "-c", "copy", *extra, "-f", "flv", url]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def make_sine_flv(out_path, seconds, freq=440):
    """Encode a ``seconds`` s ``freq`` Hz sine to an AAC 128k FLV file (no network)."""
    rc, stderr, _ = run_bounded(
        [*FFMPEG, "-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=44100:"
         f"duration={seconds}", "-c:a", "aac", "-b:a", "128k", "-y", str(out_path)],
        timeout=30, stdout=subprocess.DEVNULL)
    if rc != 0:
        raise RuntimeError(f"ffmpeg could not write {out_path}: {stderr}")
    return out_path


def ffmpeg_play(url, out_path, seconds, extra=(), timeout=None):
    """ffmpeg plays ``url`` and copies ``seconds`` s of it to ``out_path``.

    Returns ``(returncode, stderr, timed_out)``; ``timeout`` defaults to ``seconds`` + 15.
    ``extra`` are input options (e.g. ``-rtmp_conn ...``). ffmpeg ends by itself
    only once it has ``seconds`` of media: ask for less than the publisher sends
    (a server need not close its players when the publisher leaves; NMS does not).
    A player that joins before the publisher gets no onMetaData from NMS, so
    ffmpeg would probe for 5 s of stream: ``-analyzeduration`` cuts that to 1 s
    (the probed packets are kept, the recording starts at the first frame).
    """
    command = [*FFMPEG, "-analyzeduration", "1000000", *extra, "-i", url,
               "-t", str(seconds), "-c", "copy", "-y", str(out_path)]
    return run_bounded(command, timeout or seconds + 15, stdout=subprocess.DEVNULL)


# A stream of data messages only (the RTMP door's MIDI stream): ffmpeg's probing
# of it never ends by duration (data packets have none), only at -probesize
# bytes, 5 MB by default; 32 makes it start writing at the first message, which
# the probe keeps.
DATA_ONLY = ("-probesize", "32", "-analyzeduration", "0")


def ffmpeg_play_data(url, seconds, extra=()):
    """ffmpeg plays ``url`` for ``seconds`` s of wall time: ``(raw AMF0 bodies, stderr)``.

    ``-f data`` writes the data stream's message bodies back to back (decode
    them with :func:`amf0_decode`); ffmpeg's ``-t`` does not end it there, so it
    is ended by PID (SIGTERM: it flushes what it has) once ``seconds`` passed.
    ``extra`` are input options: :data:`DATA_ONLY` for a stream without media.
    """
    command = [*FFMPEG, "-analyzeduration", "500000", *extra, "-i", url, "-map", "0:d",
               "-c", "copy", "-flush_packets", "1", "-f", "data", "pipe:1"]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        stop_process(process)
        out, err = process.communicate()
    return out, err.decode("utf-8", "replace")


def rtmpdump_play(url, out_path, seconds, fp9=False, extra=()):
    """rtmpdump records the live stream ``url`` to ``out_path`` (FLV) for ``seconds`` s (wall).

    ``-B``/``--stop`` does not end a live recording (rtmpdump stops at a
    percentage of a duration a live stream lacks), so it is ended by PID
    (SIGTERM: it closes the file cleanly, exit code 2) once ``seconds`` passed,
    unless it ended before. Plain handshake by default; ``fp9`` passes
    ``-w HASH -x SIZE``, which makes it send an FP9 digest C1. ``extra``: e.g.
    ``-C S:room42``. Returns ``(returncode, stderr, ended_by_pid)``.
    """
    command = ["rtmpdump", "-r", url, "--live", "-o", str(out_path)]
    if fp9:
        command += ["-w", FP9_SWF_HASH, "-x", str(FP9_SWF_SIZE)]
    command += list(extra)
    return run_bounded(command, seconds, stdout=subprocess.DEVNULL)


def ffprobe(path, timeout=20):
    """ffprobe's view of ``path``: ``{'codec', 'duration', 'streams', 'format'}``.

    ``codec`` is the first audio stream's codec name (None without audio),
    ``duration`` the container's duration in seconds (None if unknown).
    """
    result = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json",
                             "-show_format", "-show_streams", str(path)],
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"ffprobe {path} failed: {result.stderr}")
    data = json.loads(result.stdout)
    streams = data.get("streams", [])
    fmt = data.get("format", {})
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    duration = fmt.get("duration")
    return {"codec": audio[0].get("codec_name") if audio else None,
            "duration": float(duration) if duration not in (None, "N/A") else None,
            "streams": streams, "format": fmt}


# -- AMF0 (test side) -------------------------------------------------------------

class Amf0Error(ValueError):
    pass


def amf0_encode(value):
    """AMF0 bytes of ``value``: None, bool, int/float, str, dict (object), list (strict array)."""
    if value is None:
        return b"\x05"
    if isinstance(value, bool):
        return b"\x01" + bytes((int(value),))
    if isinstance(value, (int, float)):
        return b"\x00" + struct.pack(">d", float(value))
    if isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) > 0xFFFF:
            return b"\x0c" + struct.pack(">I", len(raw)) + raw
        return b"\x02" + struct.pack(">H", len(raw)) + raw
    if isinstance(value, dict):
        return b"\x03" + _amf0_properties(value) + b"\x00\x00\x09"
    if isinstance(value, (list, tuple)):
        return b"\x0a" + struct.pack(">I", len(value)) + b"".join(map(amf0_encode, value))
    raise TypeError(f"no AMF0 encoding for {type(value).__name__}")


def _amf0_properties(mapping):
    out = []
    for key, item in mapping.items():
        raw = str(key).encode("utf-8")
        out.append(struct.pack(">H", len(raw)) + raw + amf0_encode(item))
    return b"".join(out)


def amf0_encode_all(values):
    return b"".join(amf0_encode(value) for value in values)


def amf0_decode(data):
    """Every AMF0 value in ``data``, back to back, as a list (numbers come back as float)."""
    values, offset = [], 0
    while offset < len(data):
        value, offset = _amf0_value(data, offset)
        values.append(value)
    return values


def _amf0_take(data, offset, size):
    if offset + size > len(data):
        raise Amf0Error(f"AMF0 value runs past the end at {offset}")
    return data[offset:offset + size], offset + size


def _amf0_value(data, offset):
    marker, offset = _amf0_take(data, offset, 1)
    marker = marker[0]
    if marker == 0x00:
        raw, offset = _amf0_take(data, offset, 8)
        return struct.unpack(">d", raw)[0], offset
    if marker == 0x01:
        raw, offset = _amf0_take(data, offset, 1)
        return raw[0] != 0, offset
    if marker in (0x02, 0x0c):
        size_bytes = 2 if marker == 0x02 else 4
        raw, offset = _amf0_take(data, offset, size_bytes)
        raw, offset = _amf0_take(data, offset, int.from_bytes(raw, "big"))
        return raw.decode("utf-8", "replace"), offset
    if marker in (0x03, 0x08, 0x10):
        if marker == 0x08:
            _, offset = _amf0_take(data, offset, 4)  # ECMA array count: a hint only
        elif marker == 0x10:
            raw, offset = _amf0_take(data, offset, 2)
            _, offset = _amf0_take(data, offset, int.from_bytes(raw, "big"))  # class name
        result = {}
        while True:
            raw, offset = _amf0_take(data, offset, 2)
            key, offset = _amf0_take(data, offset, int.from_bytes(raw, "big"))
            if not key and data[offset:offset + 1] == b"\x09":
                return result, offset + 1
            result[key.decode("utf-8", "replace")], offset = _amf0_value(data, offset)
    if marker in (0x05, 0x06):
        return None, offset
    if marker == 0x0a:
        raw, offset = _amf0_take(data, offset, 4)
        items = []
        for _ in range(int.from_bytes(raw, "big")):
            item, offset = _amf0_value(data, offset)
            items.append(item)
        return items, offset
    if marker == 0x0b:
        raw, offset = _amf0_take(data, offset, 10)
        return struct.unpack(">d", raw[:8])[0], offset  # date: milliseconds
    raise Amf0Error(f"unsupported AMF0 marker 0x{marker:02x} at {offset - 1}")


# -- FLV (test side) ---------------------------------------------------------------

FLV_AUDIO, FLV_VIDEO, FLV_SCRIPT = 8, 9, 18


def flv_tags(path):
    """The tags of the FLV file ``path``: a list of ``(type, timestamp_ms, body)``."""
    with open(path, "rb") as stream:
        data = stream.read()
    if data[:3] != b"FLV" or len(data) < 9:
        raise ValueError(f"{path} is not an FLV file")
    offset = struct.unpack(">I", data[5:9])[0] + 4  # header, then PreviousTagSize0
    tags = []
    while offset + 11 <= len(data):
        kind = data[offset] & 0x1F
        size = int.from_bytes(data[offset + 1:offset + 4], "big")
        timestamp = int.from_bytes(data[offset + 4:offset + 7], "big") | data[offset + 7] << 24
        body = data[offset + 11:offset + 11 + size]
        if len(body) < size:
            break  # a truncated last tag (a recording cut short)
        tags.append((kind, timestamp, body))
        offset += 11 + size + 4
    return tags


def flv_tag(kind, timestamp, body):
    """One complete FLV tag with its PreviousTagSize."""
    timestamp = int(timestamp) & 0xFFFFFFFF
    header = (bytes((kind,)) + len(body).to_bytes(3, "big")
              + (timestamp & 0xFFFFFF).to_bytes(3, "big") + bytes((timestamp >> 24,))
              + b"\x00\x00\x00")
    return header + body + struct.pack(">I", 11 + len(body))


def flv_header(audio=True, video=False):
    return b"FLV\x01" + bytes((4 * audio + video,)) + struct.pack(">I", 9) + b"\x00\x00\x00\x00"


def midi_hex(message):
    return message.hex() if isinstance(message, (bytes, bytearray)) else str(message).lower()


def onmidi_body(seq, message):
    """The AMF0 body ``['onMidi', {'seq': seq, 'hex': '903c64'}]``."""
    return amf0_encode_all(["onMidi", {"seq": seq, "hex": midi_hex(message)}])


def make_midi_flv(src_flv, out_flv, notes):
    """Write ``out_flv``: the tags of ``src_flv`` with one ``onMidi`` script tag per note.

    ``notes`` is an iterable of ``(timestamp_ms, message)``, the message as bytes
    or a hex string; the n-th note gets ``seq`` n. The script tags are merged
    with the source's tags by timestamp (a note goes before media of the same
    timestamp). Returns the ``[('onMidi', {'seq':..., 'hex':...}), ...]`` written.
    """
    media = flv_tags(src_flv)
    events = sorted(((int(ts), seq, midi_hex(message))
                     for seq, (ts, message) in enumerate(notes)), key=lambda e: (e[0], e[1]))
    has_video = any(kind == FLV_VIDEO for kind, _, _ in media)
    out = [flv_header(audio=True, video=has_video)]
    index = 0
    for kind, timestamp, body in media:
        while index < len(events) and events[index][0] <= timestamp:
            ts, seq, hexed = events[index]
            out.append(flv_tag(FLV_SCRIPT, ts, onmidi_body(seq, hexed)))
            index += 1
        out.append(flv_tag(kind, timestamp, body))
    for ts, seq, hexed in events[index:]:
        out.append(flv_tag(FLV_SCRIPT, ts, onmidi_body(seq, hexed)))
    with open(out_flv, "wb") as stream:
        stream.write(b"".join(out))
    return [("onMidi", {"seq": seq, "hex": hexed}) for _, seq, hexed in events]


# -- python-librtmp ----------------------------------------------------------------

def _plain(value):
    """python-librtmp's decoded AMF values as plain dicts and lists."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


class LibrtmpClient:
    """A python-librtmp (librtmp 2.4) publisher or player; ``with`` closes it.

    ``LibrtmpClient(url, publish=True)`` connects, createStream and publish
    (plain handshake, like every librtmp client); then :meth:`send_data`,
    :meth:`send_midi` and :meth:`call`. ``LibrtmpClient(url)`` plays; then
    :meth:`collect` reads messages into ``data`` (AMF0 data messages, decoded),
    ``invokes`` and ``media`` counts.

    The ``RTMPStream`` from ``create_stream()`` is kept in ``self.stream``: when
    it is garbage-collected librtmp's socket is closed under us (rtmp-clients.md).
    ``timeout`` is librtmp's receive timeout in seconds, so no read blocks longer.
    """

    def __init__(self, url, publish=False, timeout=3, connect_data=None, live=True):
        import librtmp
        self._librtmp = librtmp
        self.url = url
        self.publishing = publish
        self.conn = librtmp.RTMP(url, live=live, timeout=int(timeout),
                                 connect_data=connect_data)
        self.conn.connect()
        self.stream = self.conn.create_stream(writeable=publish)
        self.stream_id = 1  # what createStream answers first; librtmp hides it
        self.data = []      # [(timestamp, message stream id, [decoded AMF0 values])]
        self.invokes = []   # [(timestamp, [decoded values])]
        self.media = {"audio": 0, "video": 0}
        self._timestamp = 0

    # -- publish -----------------------------------------------------------------

    def send_data(self, values, timestamp=None, set_data_frame=False):
        """Send one AMF0 data message (type 18) of ``values`` on the published stream.

        Without ``set_data_frame`` it is a raw RTMP packet whose body is exactly
        ``values``; with it, an FLV script tag through ``RTMPStream.write``, to
        which librtmp prepends ``@setDataFrame`` (what it does for every script tag).
        """
        if timestamp is None:
            timestamp = self._timestamp
        body = amf0_encode_all(values)
        if set_data_frame:
            self.stream.write(flv_tag(FLV_SCRIPT, timestamp, body))
            return
        from librtmp.packet import PACKET_SIZE_LARGE, PACKET_TYPE_INFO, RTMPPacket
        packet = RTMPPacket(type=PACKET_TYPE_INFO, format=PACKET_SIZE_LARGE, channel=0x05,
                            timestamp=int(timestamp), absolute_timestamp=True, body=body)
        packet.packet.m_nInfoField2 = self.stream_id
        if not self.conn.send_packet(packet, queue=False):
            raise IOError("librtmp could not send the data message")

    def send_midi(self, seq, message, timestamp=None, set_data_frame=False):
        """Send ``['onMidi', {'seq': seq, 'hex': ...}]`` (see :meth:`send_data`)."""
        self.send_data(["onMidi", {"seq": seq, "hex": midi_hex(message)}], timestamp,
                       set_data_frame)

    def call(self, method, *args):
        """``conn.call(method, *args)`` (an AMF0 command on stream 0); does not wait."""
        return self.conn.call(method, *args)

    def advance(self, milliseconds):
        """Move the timestamp the next :meth:`send_data` uses by default."""
        self._timestamp += int(milliseconds)

    # -- play ---------------------------------------------------------------------

    def collect(self, seconds, until=None):
        """Read messages for ``seconds`` s (or until ``until(self)`` is true); return ``data``.

        Data messages (AMF0 type 18; AMF3 type 15 with its leading zero byte) are
        decoded into ``data``; commands into ``invokes``; everything else also
        goes to librtmp (ping answers and the like).
        """
        from librtmp.exceptions import RTMPError, RTMPTimeoutError
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if until is not None and until(self):
                break
            try:
                packet = self.conn.read_packet()
            except RTMPTimeoutError:
                continue
            except RTMPError:
                if not self.conn.connected:
                    break
                continue
            kind = packet.type
            body = packet.body
            if kind in (0x12, 0x0F):
                if kind == 0x0F and body[:1] == b"\x00":
                    body = body[1:]
                try:
                    values = amf0_decode(body)
                except Amf0Error:
                    values = [("undecodable", body)]
                self.data.append((packet.timestamp, packet.packet.m_nInfoField2, values))
            elif kind == 0x14:
                self.invokes.append((packet.timestamp, _plain(
                    self._librtmp.amf.decode_amf(body))))
                self.conn.handle_packet(packet)
            else:
                if kind == 0x08:
                    self.media["audio"] += 1
                elif kind == 0x09:
                    self.media["video"] += 1
                self.conn.handle_packet(packet)
        return self.data

    def data_named(self, name):
        """The decoded data messages whose first value (after any @setDataFrame) is ``name``."""
        found = []
        for _, _, values in self.data:
            if values[:1] == ["@setDataFrame"]:
                values = values[1:]
            if values[:1] == [name]:
                found.append(values)
        return found

    def close(self):
        stream, self.stream = self.stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        with contextlib.suppress(Exception):
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def rtmp_chunks(csid, type_id, stream_id, body, timestamp=0, chunk_size=128):
    """One message in chunks: a type 0 header, then type 3 continuations (RTMP spec §5.3)."""
    header = (bytes((csid,)) + timestamp.to_bytes(3, "big") + len(body).to_bytes(3, "big")
              + bytes((type_id,)) + struct.pack("<I", stream_id))
    pieces = [header, body[:chunk_size]]
    for start in range(chunk_size, len(body), chunk_size):
        pieces += [bytes((0xC0 | csid,)), body[start:start + chunk_size]]
    return b"".join(pieces)


def command(name, transaction, command_object, *arguments, stream_id=0, csid=3):
    return rtmp_chunks(csid, 20, stream_id, amf0_encode_all(
        [name, float(transaction), command_object, *arguments]))


def plain_handshake(rng):
    """C0 C1 C2 of a plain handshake; C2 echoes C1 (the server does not compare it with S1)."""
    c1 = bytes(8) + rng.randbytes(1528)
    return b"\x03" + c1 + c1
