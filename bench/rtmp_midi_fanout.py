"""MIDI fan-out to RTMP players (onMidi data messages) vs WebSocket members, in one run.

One real ``twistd netgateway`` (pinned to CPU 0; this load generator runs on
CPU 1) with the WebSocket and RTMP doors and one session. One WebSocket
member plays MIDI at an offered rate: one binary frame per message, a pitch
bend whose channel and 14 bits carry an 18-bit sequence number, as
bench/websocket_fanout.py sends. K receivers hear it, for each K of
``--receivers`` (10, 50, 200; 10, 50 with ``--quick``) and each door:

- ``rtmp``: K RTMP players of the stream ``midi``
  (``rtmp://127.0.0.1:PORT/jam/SESSION/midi``, passphrase and name as connect
  string arguments): a plain handshake, connect, createStream, play('midi'),
  then the chunk stream read by :class:`PlayerChunkReader`, a reader of the
  bench's own that skips timestamps and costs a third of the gateway's
  ChunkReader per message (with ChunkReader the generator, not the gateway,
  was the limit at K = 50); while setting up, ChunkReader reads the same
  bytes and both must agree. Acknowledgements are sent when the server's
  window passes, pings answered. Each onMidi data message gives back the
  sequence number from its ``hex`` field; the first onMidi of every step is
  decoded in full (amf0) and checked (``bytes`` equal to ``hex``, ``from``
  the player's name);
- ``websocket``: the same K as WebSocket members in binary mode.

Both the player and the receivers are raw non-blocking sockets in one
epoll loop (a hand-written WebSocket client: an upgrade request, masked
frames out, frames in), so that what the generator spends per message is
small next to what the gateway spends and both doors meet the same client
costs. The loop busy-polls, like benchlib.paced_exchange, so CPU 1 never
sleeps; "gen busy" is the share of the step the generator spent reading and
parsing: near 100% would mean it, not the gateway, was the limit.

Per K, door and run, rates in delivered messages/s (sent/s x K):

- light load: 2,000 delivered/s for 1.5 s (1 s with ``--quick``): one-way
  latency p50/p99 (send to receive, one clock), of every receiver;
- CPU: 10,000 delivered/s (``--cpu-rate``) for one step (1 s; 0.75 s with
  ``--quick``, as every step of the search): the gateway's CPU seconds
  (/proc utime+stime of the twistd PID, all threads) per 1,000 delivered
  messages;
- maximum: the highest delivered rate whose step lost < 0.1%, a message
  arriving more than 100 ms after it was sent counting as lost ("late"),
  and whose sender kept to its schedule: the rate doubled from 8,000/s in a
  door's first run at that K, from half its first maximum in later runs,
  then bisected three times (:func:`search`, benchlib.find_maximum with
  larger steps, to keep the default run within about five minutes).
  Printed with that step's CPU per 1,000 and "busy", the share of one CPU
  the gateway used in it. A step that failed while the gateway used less
  than 70% of a CPU is run once more: on these shared machines that was
  mostly other work's processes taking CPU 0 (see "other load" below).

Each run starts with a discarded 0.5 s step at the light rate (the first
messages after K joins were slower in both doors). Each run's maximum is
printed with "other load": the CPUs' time that neither the gateway, this
generator nor the spinner below used, in CPUs (/proc/stat's user, nice and
system time less our processes'; not irq and softirq, where the kernel
carries loopback TCP for our own sockets). Other work's test suites on these two cores show up there, and
a run with more than a few tenths of a CPU of it measured the neighbours as
much as the gateway; "busy" far below 100% at a maximum says the same.

Medians of ``--runs`` runs (3; 1 with ``--quick``), the doors' runs
interleaved (the first door alternates), then the RTMP/WebSocket ratios of
the medians: a noisy shared machine moves both doors alike. While it runs, a
SCHED_IDLE busy loop keeps CPU 0's vCPU awake (benchlib.cpu0_kept_awake;
``--let-cpu0-idle`` turns it off). Between runs the receivers are closed and
the bench waits for the session to shrink back to the player.

Run: .venv/bin/python bench/rtmp_midi_fanout.py [--receivers 10,50,200] [--runs 3] [--quick]
         [--source | --python PATH]
Absolute figures are noise on shared 2-core machines; read the ratios.
"""

import argparse
import base64
import gc
import json
import os
import select
import socket
import statistics
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from benchlib import (MAX_LOSS, add_source_argument, cpu0_kept_awake, cpu_seconds,  # noqa: E402
                      find_maximum, interleaved_runs, percentile, ratio,
                      run_generator_on_cpu1, start_gateway)
from gateway.protocols.rtmp import amf0  # noqa: E402
from gateway.protocols.rtmp.chunks import (  # noqa: E402
    COMMAND_AMF0, DATA_AMF0, USER_CONTROL, Acknowledgement, ChunkReader, ChunkWriter, Message,
    PingResponse)
from tests.conftest import free_port  # noqa: E402

SESSION = "bench"
PASSPHRASE = "benchmark passphrase 0123"
PLAYER = "player"
DOORS = ("rtmp", "websocket")
SEQ_SPACE = 1 << 18
LATE_SECONDS = 0.100         # a message slower than this counts as lost
DRAIN_SECONDS = LATE_SECONDS + 0.1   # after the last send: what comes later is late anyway
LIGHT_RATE = 2_000           # delivered/s
CPU_RATE = 10_000            # delivered/s
SEARCH_START = 8_000         # delivered/s
WARM_UP_SECONDS = 0.5
RETRY_BELOW_BUSY = 0.7       # a step that failed with the gateway this idle runs once more
RECV_BYTES = 256 * 1024
SETUP_TIMEOUT = 10.0
LATENCY_RECEIVERS = 10       # outside the light step, latencies of this many receivers only

ON_MIDI_PREFIX = b"\x02\x00\x06onMidi\x03"
HEX_FIELD = b"\x00\x03hex\x02\x00\x06"     # key "hex", a string of 6 digits: one 3-byte message
HEX_SKIP = len(HEX_FIELD)
PING_REQUEST = b"\x00\x06"      # User Control event type 6


class Counts:
    """What one step's receivers counted; ``sent_at[seq]`` is when seq was sent, or None."""

    def __init__(self):
        self.sent_at = [None] * SEQ_SPACE
        self.reset()

    def reset(self):
        self.ok = 0                 # arrived within LATE_SECONDS
        self.late = 0
        self.stale = 0              # not sent in this step (a previous step's, or garbled)
        self.latencies = []
        self.checked = 0            # onMidi values decoded in full and found right
        self.bad = []               # what was wrong with the others

    def arrived(self, seq, now, record):
        """Count sequence number ``seq`` arriving at ``now``: 1 if it came in time, else 0."""
        sent = self.sent_at[seq]
        if sent is None:
            self.stale += 1
            return 0
        latency = now - sent
        if latency > LATE_SECONDS:
            self.late += 1
            return 0
        if record:
            self.latencies.append(latency)
        return 1


# -- WebSocket: a raw client -----------------------------------------------------------

class WsPeer:
    """One WebSocket member over a raw socket: upgrade, join, masked frames out, frames in."""

    def __init__(self, port, name, counts):
        self.name = name
        self.counts = counts
        self.closed = False
        self.buffer = b""
        self.texts = []             # JSON messages while setting up
        self.record = False
        self.mask = os.urandom(4)
        sock = self.sock = socket.create_connection(("127.0.0.1", port), timeout=SETUP_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            data = sock.recv(4096)
            if not data:
                raise RuntimeError(f"{name}: the gateway closed during the WebSocket upgrade")
            response += data
        head, _, rest = response.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"{name}: upgrade refused: {head[:200]!r}")
        self.feed(rest, time.perf_counter(), setup=True)
        self.send_frame(0x1, json.dumps({"type": "join", "session": SESSION,
                                         "passphrase": PASSPHRASE, "name": name,
                                         "midi": "binary"}).encode())
        reply = self.wait_text(lambda message: message.get("type") in ("joined", "error"))
        if reply["type"] != "joined":
            raise RuntimeError(f"{name}: join refused: {reply}")
        self.texts.clear()
        sock.setblocking(False)

    def frame(self, opcode, payload):
        length = len(payload)
        if length < 126:
            header = bytes((0x80 | opcode, 0x80 | length))
        elif length < 65536:
            header = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack(">H", length)
        else:
            header = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack(">Q", length)
        mask = self.mask
        masked = bytes(octet ^ mask[index & 3] for index, octet in enumerate(payload))
        return header + mask + masked

    def send_frame(self, opcode, payload):
        self.sock.sendall(self.frame(opcode, payload))

    def midi_frame(self, seq):
        mask = self.mask
        return b"\x82\x83" + mask + bytes((
            (0xE0 | seq >> 14) ^ mask[0], ((seq >> 7) & 0x7F) ^ mask[1], (seq & 0x7F) ^ mask[2]))

    def wait_text(self, predicate):
        deadline = time.monotonic() + SETUP_TIMEOUT
        while time.monotonic() < deadline:
            while self.texts:
                message = self.texts.pop(0)
                if predicate(message):
                    return message
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(RECV_BYTES)
            if not data:
                raise RuntimeError(f"{self.name}: the gateway closed the connection")
            self.feed(data, time.perf_counter(), setup=True)
        raise TimeoutError(f"{self.name}: no answer within {SETUP_TIMEOUT} s")

    def feed(self, data, now, setup=False):
        """Parse frames; count MIDI. Returns how many MIDI messages arrived in time."""
        buffer = self.buffer + data if self.buffer else data
        end = len(buffer)
        position = 0
        counts = self.counts
        ok = 0
        while position + 2 <= end:
            first = buffer[position]
            length = buffer[position + 1] & 0x7F
            start = position + 2
            if first == 0x82 and length == 3:           # the common case: one MIDI message
                if start + 3 > end:
                    break
                seq = ((buffer[start] & 0x0F) << 14 | buffer[start + 1] << 7
                       | buffer[start + 2])
                position = start + 3
                ok += counts.arrived(seq, now, self.record)
                continue
            if length == 126:
                if start + 2 > end:
                    break
                length = struct.unpack_from(">H", buffer, start)[0]
                start += 2
            elif length == 127:
                if start + 8 > end:
                    break
                length = struct.unpack_from(">Q", buffer, start)[0]
                start += 8
            if start + length > end:
                break
            payload = buffer[start:start + length]
            position = start + length
            opcode = first & 0x0F
            if opcode == 0x1 and setup:
                self.texts.append(json.loads(payload))
            elif opcode == 0x1 and b'"ping"' in payload:
                message = json.loads(payload)
                if message.get("type") == "ping":
                    self.send_later(self.frame(0x1, json.dumps(
                        {"type": "pong", "id": message["id"]}).encode()))
            elif opcode == 0x9:
                self.send_later(self.frame(0xA, payload))
            elif opcode == 0x8:
                self.closed = True
            elif opcode == 0x2:
                counts.bad.append(f"websocket: binary frame {payload[:16].hex()}")
        self.buffer = buffer[position:]
        counts.ok += ok
        return ok

    def send_later(self, data):
        try:
            self.sock.send(data)
        except (BlockingIOError, OSError):
            pass                    # a pong lost to a full socket: the gateway pings again

    def close(self):
        self.sock.close()


# -- RTMP: a raw player --------------------------------------------------------------------

class _ChunkStream:
    __slots__ = ("length", "type_id", "stream_id", "extended", "parts", "remaining")

    def __init__(self):
        self.length = self.type_id = self.stream_id = self.remaining = 0
        self.extended = False
        self.parts = []


class PlayerChunkReader:
    """The server's chunk stream as a player reads it, cheaply: messages, no timestamps.

    ``receive(data)`` returns (type_id, stream_id, payload) for every complete
    message except protocol control, which takes effect here: Set Chunk Size,
    Abort, Window Acknowledgement Size (``ack_due()`` then says when to
    acknowledge); User Control messages are returned like any message (type 4).
    Timestamps are skipped: the bench times messages itself. Raises
    ValueError on a malformed chunk stream.
    """

    def __init__(self):
        self.chunk_size = 128
        self.streams = {}
        self.buffer = b""
        self.bytes_received = 0
        self.ack_window = None
        self.acknowledged = 0

    def ack_due(self):
        """The sequence number to acknowledge now, or None."""
        if self.ack_window and self.bytes_received - self.acknowledged >= self.ack_window:
            self.acknowledged = self.bytes_received
            return self.bytes_received & 0xFFFFFFFF
        return None

    def receive(self, data):
        self.bytes_received += len(data)
        buffer = self.buffer + data if self.buffer else data
        end = len(buffer)
        position = 0
        streams = self.streams
        messages = []
        while position < end:
            first = buffer[position]
            header_type = first >> 6
            csid = first & 0x3F
            cursor = position + 1
            if csid < 2:
                if csid == 0:
                    if cursor + 1 > end:
                        break
                    csid = 64 + buffer[cursor]
                    cursor += 1
                else:
                    if cursor + 2 > end:
                        break
                    csid = 64 + buffer[cursor] + (buffer[cursor + 1] << 8)
                    cursor += 2
            state = streams.get(csid)
            if header_type == 2:
                if cursor + 3 > end:
                    break
                extended = buffer[cursor] == 0xFF and buffer[cursor + 1] == 0xFF \
                    and buffer[cursor + 2] == 0xFF
                cursor += 3
                length = type_id = stream_id = None
            elif header_type == 3:
                extended = state.extended if state is not None else False
                length = type_id = stream_id = None
            else:
                size = 11 if header_type == 0 else 7
                if cursor + size > end:
                    break
                extended = buffer[cursor] == 0xFF and buffer[cursor + 1] == 0xFF \
                    and buffer[cursor + 2] == 0xFF
                length = int.from_bytes(buffer[cursor + 3:cursor + 6], "big")
                type_id = buffer[cursor + 6]
                stream_id = (int.from_bytes(buffer[cursor + 7:cursor + 11], "little")
                             if header_type == 0 else None)
                cursor += size
            if state is None:
                if header_type != 0:
                    raise ValueError(f"chunk stream {csid} starts with a type {header_type}"
                                     " header")
                state = streams[csid] = _ChunkStream()
            if extended:
                cursor += 4
            in_progress = state.remaining > 0
            if in_progress:
                if header_type != 3:
                    raise ValueError(f"type {header_type} header inside a message on"
                                     f" chunk stream {csid}")
                body = min(self.chunk_size, state.remaining)
            else:
                body = min(self.chunk_size, state.length if length is None else length)
            if cursor + body > end:
                break
            if not in_progress:
                if length is not None:
                    state.length, state.type_id = length, type_id
                if stream_id is not None:
                    state.stream_id = stream_id
                if header_type != 3:
                    state.extended = extended
                state.remaining = state.length
            chunk = buffer[cursor:cursor + body]
            position = cursor + body
            state.remaining -= body
            if state.remaining:
                state.parts.append(chunk)
                continue
            if state.parts:
                state.parts.append(chunk)
                chunk = b"".join(state.parts)
                state.parts = []
            kind = state.type_id
            if kind <= 3 or kind == 5 or kind == 6:
                self._control(kind, chunk)
            else:
                messages.append((kind, state.stream_id, chunk))
        self.buffer = buffer[position:]
        return messages

    def _control(self, type_id, payload):
        value = int.from_bytes(payload[:4], "big")
        if type_id == 1:
            if not 0 < value < 0x80000000:
                raise ValueError(f"Set Chunk Size {value}")
            self.chunk_size = value
        elif type_id == 2:
            aborted = self.streams.get(value)
            if aborted is not None:
                aborted.parts, aborted.remaining = [], 0
        elif type_id == 5:
            self.ack_window = value



class RtmpPeer:
    """One RTMP player of the session's ``midi`` stream."""

    def __init__(self, port, name, counts):
        self.name = name
        self.counts = counts
        self.closed = False
        self.record = False
        self.check_next = False
        self.reader = PlayerChunkReader()
        self.reference = ChunkReader()      # reads the same bytes while setting up: a check
        self.writer = ChunkWriter()
        sock = self.sock = socket.create_connection(("127.0.0.1", port), timeout=SETUP_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Plain handshake: C0 C1 (time, zero version, random), then C2 echoing S1.
        sock.sendall(b"\x03" + bytes(8) + os.urandom(1528))
        s0s1s2 = self.recv_exactly(1 + 1536 + 1536)
        if s0s1s2[0] != 3:
            raise RuntimeError(f"{name}: server handshake version {s0s1s2[0]}")
        sock.sendall(s0s1s2[1:1537])
        url = f"rtmp://127.0.0.1:{port}/jam/{SESSION}"
        self.command(0, "connect", 1, {
            "app": f"jam/{SESSION}", "flashVer": "LNX 9,0,124,2", "tcUrl": url, "fpad": False,
            "capabilities": 15.0, "audioCodecs": 0.0, "videoCodecs": 0.0,
            "videoFunction": 1.0, "objectEncoding": 0.0}, PASSPHRASE, name)
        result = self.wait_command(lambda values: values[0] in ("_result", "_error")
                                   and values[1] == 1)
        if result[0] != "_result":
            raise RuntimeError(f"{name}: connect refused: {result}")
        self.command(0, "createStream", 2, None)
        result = self.wait_command(lambda values: values[0] in ("_result", "_error")
                                   and values[1] == 2)
        if result[0] != "_result":
            raise RuntimeError(f"{name}: createStream refused: {result}")
        self.stream_id = int(result[3])
        self.command(self.stream_id, "play", 0, None, "midi", chunk_stream=8)
        self.wait_command(lambda values: values[0] == "onStatus" and len(values) > 3
                          and isinstance(values[3], dict)
                          and values[3].get("code") in ("NetStream.Play.Start",
                                                        "NetStream.Play.Failed",
                                                        "NetConnection.Connect.Rejected"),
                          require=lambda values: values[3]["code"] == "NetStream.Play.Start")
        self.reference = None
        sock.setblocking(False)

    def recv_exactly(self, size):
        data = b""
        while len(data) < size:
            more = self.sock.recv(size - len(data))
            if not more:
                raise RuntimeError(f"{self.name}: the gateway closed during the handshake")
            data += more
        return data

    def command(self, stream_id, name, transaction, command_object, *arguments,
                chunk_stream=3):
        self.sock.sendall(self.writer.write(Message(
            COMMAND_AMF0, stream_id, 0,
            amf0.encode(name, float(transaction), command_object, *arguments), chunk_stream)))

    def wait_command(self, predicate, require=None):
        deadline = time.monotonic() + SETUP_TIMEOUT
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(RECV_BYTES)
            if not data:
                raise RuntimeError(f"{self.name}: the gateway closed the connection")
            messages = self.reader.receive(data)
            self.answer(messages)
            read = [message for message in messages if message[0] != USER_CONTROL]
            expected = [(event.type_id, event.stream_id, event.payload)
                        for event in self.reference.receive(data) if type(event) is Message]
            if read != expected:
                raise RuntimeError(f"{self.name}: the bench's chunk reader read {messages},"
                                   f" ChunkReader {expected}")
            for type_id, _, payload in messages:
                if type_id == COMMAND_AMF0:
                    values = amf0.decode_all(payload)
                    if predicate(values):
                        if require is not None and not require(values):
                            raise RuntimeError(f"{self.name}: {values}")
                        return values
        raise TimeoutError(f"{self.name}: no answer within {SETUP_TIMEOUT} s")

    def answer(self, messages):
        """Acknowledge when the window passed; answer pings."""
        sequence = self.reader.ack_due()
        if sequence is not None:
            self.send_later(self.writer.write(Acknowledgement(sequence)))
        for type_id, _, payload in messages:
            if type_id == USER_CONTROL and payload[:2] == PING_REQUEST:
                self.send_later(self.writer.write(PingResponse(
                    int.from_bytes(payload[2:6], "big"))))

    def send_later(self, data):
        try:
            self.sock.sendall(data) if self.sock.gettimeout() else self.sock.send(data)
        except (BlockingIOError, OSError):
            pass

    def feed(self, data, now, setup=False):
        counts = self.counts
        ok = 0
        messages = self.reader.receive(data)
        for type_id, _, payload in messages:
            if type_id != DATA_AMF0 or not payload.startswith(ON_MIDI_PREFIX):
                if type_id == USER_CONTROL:
                    self.answer([(type_id, 0, payload)])
                continue        # |RtmpSampleAccess, commands
            at = payload.find(HEX_FIELD, 20) + HEX_SKIP
            value = int(payload[at:at + 6], 16)
            seq = (value >> 2 & 0x3C000) | (value >> 1 & 0x3F80) | (value & 0x7F)
            if self.check_next:
                self.check_next = False
                self.check(payload, value)
            ok += counts.arrived(seq, now, self.record)
        if self.reader.ack_window is not None:
            self.answer(())
        counts.ok += ok
        return ok

    def check(self, payload, value):
        """Decode one onMidi in full: the fast path must have read what it says."""
        counts = self.counts
        try:
            values = amf0.decode_all(payload)
            body = values[1]
            expected = [value >> 16, (value >> 8) & 0xFF, value & 0xFF]
            if values[0] != "onMidi" or body["bytes"] != expected \
                    or body["hex"] != bytes(expected).hex() or body["from"] != PLAYER:
                counts.bad.append(f"rtmp: onMidi {values!r}")
            else:
                counts.checked += 1
        except (amf0.AmfError, KeyError, IndexError, TypeError) as error:
            counts.bad.append(f"rtmp: onMidi {payload[:40]!r}: {error}")

    def close(self):
        self.sock.close()


PEERS = {"rtmp": RtmpPeer, "websocket": WsPeer}


# -- the load generator ----------------------------------------------------------------------

class OtherLoad:
    """CPU time the rest of the machine used: what neither the gateway, this generator nor
    the CPU 0 spinner ran (other work's tests, say), in CPUs over a stretch of time."""

    def __init__(self, gateway_pid):
        me = os.getpid()
        self.pids = [me, gateway_pid] + [pid for pid in _children(me) if pid != gateway_pid]

    @staticmethod
    def machine_busy():
        with open("/proc/stat") as stream:
            fields = [int(value) for value in stream.readline().split()[1:]]
        # Not irq and softirq: loopback TCP is carried there, for our sockets.
        user, nice, system = fields[:3]
        return (user + nice + system) / os.sysconf("SC_CLK_TCK")

    def snapshot(self):
        ours = 0.0
        for pid in self.pids:
            try:
                ours += cpu_seconds(pid)
            except OSError:
                pass
        return self.machine_busy(), ours, time.monotonic()

    def since(self, before):
        busy, ours, now = self.snapshot()
        return max(0.0, (busy - before[0]) - (ours - before[1])) / (now - before[2])

    @staticmethod
    def processes():
        """{pid: (command name, CPU seconds)} of every process now."""
        found = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as stream:
                        text = stream.read()
                except OSError:
                    continue
                command = text[text.index("(") + 1:text.rindex(")")]
                fields = text.rpartition(")")[2].split()
                found[int(name)] = (command, (int(fields[11]) + int(fields[12]))
                                    / os.sysconf("SC_CLK_TCK"))
        return found

    def busiest(self, before, count=4):
        """The ``count`` other processes that used most CPU since ``before`` (processes())."""
        used = []
        for pid, (command, seconds) in self.processes().items():
            if pid not in self.pids:
                used.append((seconds - before.get(pid, (command, 0.0))[1], pid, command))
        return ", ".join(f"{command} {pid} {seconds:.1f} s"
                         for seconds, pid, command in sorted(used, reverse=True)[:count]
                         if seconds > 0)


def _children(parent):
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as stream:
                    if int(stream.read().rpartition(")")[2].split()[1]) == parent:
                        found.append(int(name))
            except OSError:
                pass
    return found


class Bench:
    """The gateway, its one player (a WebSocket member) and the current receivers."""

    def __init__(self, gateway, config):
        self.gateway = gateway
        self.pid = gateway.process.pid
        self.ws_port = config["web"]["port"]
        self.rtmp_port = config["rtmp"]["port"]
        self.counts = Counts()
        self.player = WsPeer(self.ws_port, PLAYER, self.counts)
        self.receivers = []
        self.door = None
        self.seq = 0
        self.poller = None
        self.by_fd = {}
        self.verbose = False
        self.other_load = OtherLoad(self.pid)

    def pump(self, peers):
        """Read whatever is waiting on ``peers`` (roster notices while members come and go)."""
        now = time.perf_counter()
        for peer in peers:
            for _ in range(64):
                try:
                    data = peer.sock.recv(RECV_BYTES)
                except BlockingIOError:
                    break
                if not data:
                    peer.closed = True
                    break
                peer.feed(data, now)

    def connect(self, door, count):
        began = time.monotonic()
        self.door = door
        port = self.rtmp_port if door == "rtmp" else self.ws_port
        for number in range(count):
            self.receivers.append(PEERS[door](port, f"{door}{number}", self.counts))
            self.pump([self.player] + self.receivers[:-1])
        self.poller = select.epoll()
        self.by_fd = {}
        for peer in [self.player] + self.receivers:
            self.poller.register(peer.sock.fileno(), select.EPOLLIN)
            self.by_fd[peer.sock.fileno()] = peer
        self.settle(0.2)
        self.counts.reset()
        if self.verbose:
            print(f"    {count} {door} receivers joined in {time.monotonic() - began:.1f} s",
                  flush=True)

    def members(self):
        """Members of the session now, or None while the gateway is too busy to answer."""
        try:
            status = self.gateway.status()
        except OSError:
            return None
        for session in status["sessions"]:
            if session["name"] == SESSION:
                return session["members"] if isinstance(session["members"], int) \
                    else len(session["members"])
        return 0

    def disconnect(self):
        began = time.monotonic()
        self.poller.close()
        self.poller = None
        for peer in self.receivers:
            peer.close()
        self.receivers = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.pump([self.player])
            members = self.members()
            if members is not None and members <= 1:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("the receivers' members did not leave within 30 s")
        self.pump([self.player])
        if self.verbose:
            print(f"    they left in {time.monotonic() - began:.1f} s", flush=True)

    def settle(self, quiet=0.1, limit=3.0):
        """Read until nothing came for ``quiet`` s (at most ``limit`` s)."""
        start = last = time.perf_counter()
        poll = self.poller.poll
        by_fd = self.by_fd
        while True:
            now = time.perf_counter()
            if now - last > quiet or now - start > limit:
                return
            for fd, _ in poll(0.01):
                peer = by_fd[fd]
                try:
                    data = peer.sock.recv(RECV_BYTES)
                except BlockingIOError:
                    continue
                if not data:
                    peer.closed = True
                    self.poller.unregister(fd)
                    continue
                peer.feed(data, time.perf_counter())
                last = time.perf_counter()

    def step(self, delivered_rate, seconds, all_latencies=False):
        """Offer ``delivered_rate`` messages/s (sent/s x receivers) for ``seconds``; figures."""
        receivers = self.receivers
        fanout = len(receivers)
        counts = self.counts
        counts.reset()
        for number, peer in enumerate(receivers):
            peer.record = all_latencies or number < LATENCY_RECEIVERS
            if isinstance(peer, RtmpPeer):
                peer.check_next = number == 0
        sent_at = counts.sent_at
        rate = delivered_rate / fanout
        total = max(1, int(rate * seconds))
        first_seq = self.seq
        player = self.player
        player_sock = player.sock
        midi_frame = player.midi_frame
        poll = self.poller.poll
        by_fd = self.by_fd
        clock = time.perf_counter
        outbox = b""
        sent = received = 0
        expected = total * fanout
        busy = 0.0
        finished = None
        gc.collect()
        gc.disable()
        cpu_before = cpu_seconds(self.pid)
        start = clock()
        bound = start + 3 * seconds + 2 * DRAIN_SECONDS
        try:
            while True:
                now = clock()
                if sent < total:
                    due = min(total, int((now - start) * rate) + 1)
                    if due > sent:
                        frames = []
                        for _ in range(due - sent):
                            seq = self.seq
                            sent_at[seq] = now
                            frames.append(midi_frame(seq))
                            self.seq = (seq + 1) % SEQ_SPACE
                        sent = due
                        outbox += b"".join(frames)
                if outbox:
                    try:
                        written = player_sock.send(outbox)
                        outbox = outbox[written:]
                    except BlockingIOError:
                        pass
                    if not outbox and sent == total:
                        finished = clock()
                events = poll(0)
                if events:
                    began = clock()
                    for fd, _ in events:
                        peer = by_fd[fd]
                        try:
                            data = peer.sock.recv(RECV_BYTES)
                        except BlockingIOError:
                            continue
                        if not data:
                            peer.closed = True
                            self.poller.unregister(fd)
                            continue
                        received += peer.feed(data, clock())
                    busy += clock() - began
                if finished is not None and (counts.ok + counts.late >= expected
                                             or now > finished + DRAIN_SECONDS):
                    break
                if now > bound:
                    break
        finally:
            cpu_used = cpu_seconds(self.pid) - cpu_before
            wall = clock() - start
            gc.enable()
        self.settle()
        stale_after = counts.stale
        for number in range(total):
            sent_at[(first_seq + number) % SEQ_SPACE] = None
        latencies = sorted(counts.latencies)
        closed = sum(peer.closed for peer in receivers)
        figures = {
            "offered": total * fanout / seconds, "delivered": counts.ok / seconds,
            "loss": 1.0 - counts.ok / expected, "late": counts.late,
            "lost": expected - counts.ok - counts.late, "stale": stale_after,
            "on_schedule": finished is not None and finished - start <= seconds * 1.05 + 0.01,
            "closed": closed,
            "cpu_per_1000": cpu_used / counts.ok * 1000 if counts.ok else float("nan"),
            "busy": cpu_used / wall, "gen_busy": busy / wall,
            "p50": percentile(latencies, 0.50), "p99": percentile(latencies, 0.99),
            "checked": counts.checked, "bad": list(counts.bad),
        }
        if self.verbose:
            print(f"    step {self.door} K={fanout} {delivered_rate:.0f}/s:"
                  f" delivered {figures['delivered']:.0f}/s, loss {figures['loss']:.3%}"
                  f" (late {figures['late']}, lost {figures['lost']}, stale {stale_after}),"
                  f" on schedule {figures['on_schedule']}, closed {closed},"
                  f" busy {figures['busy']:.0%}, gen {figures['gen_busy']:.0%},"
                  f" p50 {figures['p50']:.2f} p99 {figures['p99']:.2f} ms", flush=True)
        return figures


def passes(figures):
    return (figures["loss"] < MAX_LOSS and figures["on_schedule"] and not figures["closed"]
            and not figures["bad"])


def search(passes, start_rate, limit):
    """benchlib.find_maximum in 2x steps and three bisections, from SEARCH_START again
    when even the first (carried-over) rate failed."""
    best = find_maximum(passes, start_rate, limit, factor=2.0, bisections=3)
    if best is None and start_rate > SEARCH_START:
        return find_maximum(passes, SEARCH_START, limit, factor=2.0, bisections=3)
    return best


def other_benchmarks(ours=()):
    """Other benchmarks running now (they would share these two CPUs): "PID command" each.

    A Python or node process with bench/ in its command line; shells and greps
    that only mention it (another helper waiting its turn) do not count.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (os.getpid(), os.getppid(), *ours):
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as stream:
                command = stream.read().replace(b"\0", b" ")
        except OSError:
            continue
        program = os.path.basename(command.split(b" ", 1)[0])
        if b"bench/" in command and b"rtmp_midi_fanout" not in command \
                and program.startswith((b"python", b"pypy", b"node")):
            found.append(f"{name} {command.decode('utf-8', 'replace')[:100].strip()}")
    return found


def run_once(bench, door, fanout, args, start_rate):
    """One run: connect ``fanout`` receivers of ``door``, light, CPU and maximum steps."""
    bench.connect(door, fanout)
    before = bench.other_load.snapshot()
    processes = bench.other_load.processes() if bench.verbose else None
    try:
        bench.step(LIGHT_RATE, WARM_UP_SECONDS)
        light = bench.step(LIGHT_RATE, args.light_seconds, all_latencies=True)
        cpu = bench.step(args.cpu_rate, args.step_seconds)
        bad = light["bad"] + cpu["bad"]

        def passing(rate):
            figures = bench.step(rate, args.step_seconds)
            if not passes(figures) and figures["busy"] < RETRY_BELOW_BUSY:
                figures = bench.step(rate, args.step_seconds)
            bad.extend(figures["bad"])
            if figures["closed"]:
                raise RuntimeError(f"{figures['closed']} {door} receivers were disconnected"
                                   f" at {rate:.0f} delivered/s")
            return figures if passes(figures) else None

        best = search(passing, start_rate, args.max_rate)
        maximum = best[1] if best else {"delivered": 0.0, "cpu_per_1000": float("nan"),
                                        "busy": float("nan"), "gen_busy": float("nan"),
                                        "p99": float("nan")}
        checked = light["checked"] + cpu["checked"]
        others = bench.other_load.since(before)
        if bench.verbose:
            print(f"    other load {others:.2f} CPUs; busiest others:"
                  f" {bench.other_load.busiest(processes)}", flush=True)
        benchmarks = other_benchmarks([bench.pid])
        if benchmarks:
            print(f"    warning: another benchmark ran during this {door} run, its figures are"
                  f" not alone: {'; '.join(benchmarks)}", flush=True)
        return {"light": light, "cpu": cpu, "max": maximum, "bad": bad, "checked": checked,
                "others": others}
    finally:
        bench.disconnect()


def median(runs, part, key):
    return statistics.median(run[part][key] for run in runs)


def make_config(largest):
    return {
        "sessions": [{"name": SESSION, "passphrase": PASSPHRASE, "max_members": largest + 4}],
        "limits": {"events_per_second": 1_000_000, "max_members_per_session": largest + 4,
                   "idle_timeout": 3600},
        "web": {"host": "127.0.0.1", "port": free_port()},
        "websocket": {"ping_interval": 300, "send_buffer_bytes": 4 * 1024 * 1024},
        "rtmp": {"host": "127.0.0.1", "port": free_port(), "idle_timeout": 3600,
                 "max_connections": largest + 16},
        "logging": {"level": "warn"},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--receivers", default=None,
                        help="comma-separated K (default 10,50,200; 10,50 with --quick)")
    parser.add_argument("--runs", type=int, default=None,
                        help="medians over this many runs (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer receivers, one run, shorter steps: checks that the bench"
                             " works; figures are rough")
    parser.add_argument("--cpu-rate", type=float, default=CPU_RATE,
                        help="delivered messages/s at which CPU per message is measured")
    parser.add_argument("--max-rate", type=float, default=400_000,
                        help="the maximum search stops here (delivered/s)")
    parser.add_argument("--step-seconds", type=float, default=None,
                        help="seconds per CPU and search step (1; 0.75 with --quick)")
    parser.add_argument("--light-seconds", type=float, default=None,
                        help="seconds of the light-load step (1.5; 1 with --quick)")
    parser.add_argument("--let-cpu0-idle", action="store_true",
                        help="do not keep CPU 0 busy at SCHED_IDLE (see benchlib.cpu0_kept_awake)")
    parser.add_argument("--verbose", action="store_true", help="print every step's figures")
    parser.add_argument("--doors", default=",".join(DOORS),
                        help="measure only these doors (no ratios then)")
    add_source_argument(parser)
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.doors = args.doors.split(",")
    if not set(args.doors) <= set(DOORS):
        raise SystemExit(f"--doors: expected some of {', '.join(DOORS)}")
    args.receivers = [int(k) for k in (args.receivers or ("10,50" if args.quick
                                                          else "10,50,200")).split(",")]
    args.step_seconds = args.step_seconds or (0.75 if args.quick else 1.0)
    args.light_seconds = args.light_seconds or (1.0 if args.quick else 1.5)
    run_generator_on_cpu1()
    started = time.monotonic()
    with cpu0_kept_awake(not args.let_cpu0_idle):
        config = make_config(max(args.receivers))
        gateway = start_gateway(config, "bench-rtmp-midi-", args)
        try:
            bench = Bench(gateway, config)
            bench.verbose = args.verbose
            measure(bench, args)
        finally:
            gateway.stop()
    print(f"took {time.monotonic() - started:.0f} s", flush=True)


def measure(bench, args):
    print(f"one twistd netgateway, one WebSocket player; offered rates in delivered messages/s;"
          f" light {LIGHT_RATE}/s, CPU at {args.cpu_rate:.0f}/s, steps {args.step_seconds:g} s,"
          f" a message later than {LATE_SECONDS * 1000:.0f} ms counts as lost", flush=True)
    print(f"{'K':>4} {'door':>9} | {'max deliv/s':>11} {'cpu s/1k':>8} {'busy':>4} {'gen':>4} |"
          f" cpu s/1k at {args.cpu_rate:.0f}/s | light p50 ms p99 ms | (each run: max, other load)",
          flush=True)
    for fanout in args.receivers:
        first_max = {}

        def run_one(door):
            start_rate = SEARCH_START
            if first_max.get(door):
                start_rate = max(SEARCH_START, 0.5 * first_max[door])
            result = run_once(bench, door, fanout, args, start_rate)
            first_max.setdefault(door, result["max"]["delivered"])
            return result

        runs_by_door = interleaved_runs(args.doors, args.runs, run_one)
        results = {}
        for door in args.doors:
            runs = runs_by_door[door]
            figures = results[door] = {
                "max": median(runs, "max", "delivered"),
                "max_cpu": median(runs, "max", "cpu_per_1000"),
                "busy": median(runs, "max", "busy"), "gen": median(runs, "max", "gen_busy"),
                "cpu": median(runs, "cpu", "cpu_per_1000"),
                "cpu_loss": median(runs, "cpu", "loss"),
                "p50": median(runs, "light", "p50"), "p99": median(runs, "light", "p99")}
            each = ", ".join(f"{run['max']['delivered']:.0f} {run['others']:.2f}" for run in runs)
            print(f"{fanout:>4} {door:>9} | {figures['max']:11.0f} {figures['max_cpu']:8.4f}"
                  f" {figures['busy']:4.0%} {figures['gen']:4.0%} |"
                  f" {figures['cpu']:8.4f} (loss {figures['cpu_loss']:.2%}) |"
                  f" {figures['p50']:9.2f} {figures['p99']:6.2f} | ({each})", flush=True)
            bad = [text for run in runs for text in run["bad"]]
            checked = sum(run["checked"] for run in runs)
            if door == "rtmp" or bad:
                print(f"{fanout:>4} {door:>9} | onMidi decoded in full and right: {checked};"
                      f" wrong: {len(bad)}{': ' + bad[0] if bad else ''}", flush=True)
        if len(results) < 2:
            continue
        rtmp, ws = results["rtmp"], results["websocket"]
        print(f"{fanout:>4} rtmp/websocket: max {ratio(rtmp['max'], ws['max']):.2f};"
              f" CPU per message {ratio(rtmp['cpu'], ws['cpu']):.2f} at {args.cpu_rate:.0f}/s,"
              f" {ratio(rtmp['max_cpu'], ws['max_cpu']):.2f} at the maxima;"
              f" light p50 {ratio(rtmp['p50'], ws['p50']):.2f}, p99"
              f" {ratio(rtmp['p99'], ws['p99']):.2f}", flush=True)


if __name__ == "__main__":
    main()
