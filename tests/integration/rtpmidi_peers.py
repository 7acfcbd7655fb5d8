"""Drivers for real RTP-MIDI peers nobody on this project wrote: npm `rtpmidi`, PyPI `pymidi`.

Each runs the peer's own code on 127.0.0.1 and reports what it receives
through a queue, so tests can wait (with a deadline) for an exact event.
Known bugs of the peers (shared/protocols/rtpmidi.md §2, §3) are worked
around here, at run time, never in the installed packages.
"""

import importlib.util
import json
import os
import queue
import random
import select
import shutil
import socket
import subprocess
import threading
import time

PEERS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers")
NODE_SCRIPT = os.path.join(PEERS_DIR, "rtpmidi_peer.js")
NODE_MARK = "RTPMIDI-PEER "


def node_available():
    return (shutil.which("node") is not None
            and os.path.isdir(os.path.join(PEERS_DIR, "node_modules", "rtpmidi")))


def pymidi_available():
    return importlib.util.find_spec("pymidi") is not None


def _wait(inbox, predicate, timeout, what):
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no {what} within {timeout}s; saw {seen}")
        try:
            item = inbox.get(timeout=remaining)
        except queue.Empty:
            continue
        if predicate(item):
            return item
        seen.append(item)


class NodePeer:
    """tests/peers/rtpmidi_peer.js in a subprocess: one node-rtpmidi session."""

    def __init__(self, port, name="node peer", prefix=()):
        """``prefix``: a command the peer runs under, e.g. ``ip netns exec NAMESPACE``."""
        self.port = port
        self.events = queue.Queue()
        self.output = []
        self.process = subprocess.Popen(
            [*prefix, shutil.which("node"), NODE_SCRIPT, str(port), name], cwd=PEERS_DIR,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.expect("ready")

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)
            if line.startswith(NODE_MARK):
                self.events.put(json.loads(line[len(NODE_MARK):]))

    def command(self, **command):
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def connect(self, port, host="127.0.0.1"):
        self.command(cmd="connect", host=host, port=port)

    def send(self, data):
        self.command(cmd="send", data=list(data))

    def expect(self, event, timeout=15.0, **fields):
        def matches(item):
            return item["event"] == event and all(item.get(k) == v for k, v in fields.items())
        return _wait(self.events, matches, timeout, f"node event {event} {fields}")

    def midi(self, timeout=10.0):
        return bytes(self.expect("midi", timeout)["data"])

    def end(self, timeout=10.0):
        self.command(cmd="end")
        self.expect("ended", timeout)

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _pymidi_messages(command_list):
    """pymidi's parsed MIDI list as raw messages (it decodes notes, aftertouch and CC)."""
    fields = {"note_on": (0x90, "key", "velocity"), "note_off": (0x80, "key", "velocity"),
              "aftertouch": (0xA0, "key", "touch"),
              "control_mode_change": (0xB0, "controller", "value")}
    messages = []
    for entry in command_list:
        known = fields.get(str(entry.command))
        if known is None:
            messages.append(("unknown", bytes(entry.params.unknown)))
            continue
        kind, first, second = known
        messages.append(bytes((kind | entry.channel, int(entry.params[first]),
                               int(entry.params[second]))))
    return messages


class PymidiResponder:
    """pymidi 0.5.0's own Server (responder) in a thread with its own select loop."""

    def __init__(self, port):
        from pymidi import server

        self.port = port
        self.events = queue.Queue()
        peer_events = self.events

        class Recorder(server.Handler):
            def on_peer_connected(self, peer):
                peer_events.put(("connected", peer.name))

            def on_peer_disconnected(self, peer):
                peer_events.put(("disconnected", peer.name))

            def on_midi_commands(self, peer, command_list):
                for message in _pymidi_messages(command_list):
                    peer_events.put(("midi", message))

        self.server = server.Server([("127.0.0.1", port)])
        self.server.add_handler(Recorder())
        self.server._init_protocols()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.server._loop_once(timeout=0.05)

    def expect(self, kind, timeout=15.0):
        return _wait(self.events, lambda item: item[0] == kind, timeout, f"pymidi {kind}")[1]

    def close(self):
        self._stop.set()
        self._thread.join(5)
        for sock in self.server.socket_map:
            sock.close()


class PymidiInitiator:
    """An initiator built from pymidi's ``pymidi.packets`` structs (0.5.0 has no client).

    Unlike pymidi's own protocol classes it uses one SSRC on both ports, unless
    ``data_ssrc`` gives its data port one of its own (IN, CK and RTP there),
    as pymidi's per-port protocol objects each pick one. It parses received RTP
    without the journal, because pymidi reads a journal's system part when S
    (not Y) is set.
    """

    def __init__(self, port, name="pymidi driver", data_ssrc=None):
        from construct import Struct
        from pymidi import packets

        self.packets = packets
        self._rtp_without_journal = Struct("header" / packets.MIDIPacketHeader,
                                           "command" / packets.MIDIPacketCommand)
        self.name = name
        self.ssrc = random.getrandbits(32)
        self.data_ssrc = self.ssrc if data_ssrc is None else data_ssrc
        self.token = random.getrandbits(32)
        self.sequence = random.getrandbits(16)
        self.epoch = time.monotonic()
        self.control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.data = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.control.bind(("127.0.0.1", port))
        self.data.bind(("127.0.0.1", port + 1))
        self.received = queue.Queue()
        self.gateway = None

    def ticks(self):
        return int((time.monotonic() - self.epoch) * 10000)

    def _exchange(self, command, ssrc):
        return self.packets.AppleMIDIExchangePacket.build(dict(
            command=command, protocol_version=2, initiator_token=self.token, ssrc=ssrc,
            name=self.name))

    def _receive(self, sock, timeout):
        readable, _, _ = select.select([sock], [], [], timeout)
        if not readable:
            return None
        return sock.recvfrom(65535)

    def _request(self, sock, addr, payload, answer_ok, timeout=5.0, interval=1.0):
        """Send ``payload`` every ``interval`` until ``answer_ok(data)``; return the answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.sendto(payload, addr)
            resend_at = min(deadline, time.monotonic() + interval)
            while time.monotonic() < resend_at:
                received = self._receive(sock, resend_at - time.monotonic())
                if received is not None and answer_ok(received[0]):
                    return received[0]
        raise TimeoutError(f"no answer from {addr}")

    def invite(self, gateway_port, host="127.0.0.1"):
        """IN on the control port, then on the data port; returns the answers (OK or NO)."""
        self.gateway = (host, gateway_port)
        answers = []
        for sock, port, ssrc in ((self.control, gateway_port, self.ssrc),
                                 (self.data, gateway_port + 1, self.data_ssrc)):
            answer = self._request(sock, (host, port), self._exchange(b"IN", ssrc),
                                   lambda data: data[2:4] in (b"OK", b"NO"))
            answers.append(self.packets.AppleMIDIExchangePacket.parse(answer))
            if answers[-1].command == b"NO":
                break
        return answers

    def sync(self):
        """One CK0/CK1/CK2 exchange; returns the round trip in ticks."""
        build = self.packets.AppleMIDITimestampPacket.build
        ts1 = self.ticks()
        ck0 = build(dict(command=b"CK", ssrc=self.data_ssrc, count=0, timestamp_1=ts1,
                         timestamp_2=0, timestamp_3=0))
        answer = self._request(self.data, (self.gateway[0], self.gateway[1] + 1), ck0,
                               lambda data: data[2:4] == b"CK" and data[8] == 1)
        ck1 = self.packets.AppleMIDITimestampPacket.parse(answer)
        ts3 = self.ticks()
        self.data.sendto(build(dict(command=b"CK", ssrc=self.data_ssrc, count=2, timestamp_1=ts1,
                                    timestamp_2=ck1.timestamp_2, timestamp_3=ts3)),
                         (self.gateway[0], self.gateway[1] + 1))
        return ts3 - ts1

    def send_notes(self, messages):
        """One RTP-MIDI packet carrying 3-byte channel ``messages``."""
        midi_list = []
        for index, message in enumerate(messages):
            status, first, second = message
            kind = {0x90: "note_on", 0x80: "note_off"}[status & 0xF0]
            midi_list.append(dict(delta_time=0 if index else None, __next=status,
                                  command_byte=status, command=kind, channel=status & 0x0F,
                                  params=dict(key=first, velocity=second)))
        self.sequence = (self.sequence + 1) & 0xFFFF
        packet = self.packets.MIDIPacket.build(dict(
            header=dict(rtp_header=dict(flags=dict(v=2, p=False, x=False, cc=0, m=False,
                                                   pt=0x61),
                                        sequence_number=self.sequence),
                        timestamp=self.ticks() & 0xFFFFFFFF, ssrc=self.data_ssrc),
            command=dict(flags=dict(b=False, j=False, z=False, p=False,
                                    len=4 * len(messages) - 1),
                         midi_list=midi_list),
            journal=None))
        self.data.sendto(packet, (self.gateway[0], self.gateway[1] + 1))

    def midi(self, timeout=10.0):
        """The next MIDI message the gateway sent us (AppleMIDI packets are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.received.get_nowait()
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no MIDI from the gateway")
            received = self._receive(self.data, remaining)
            if received is None or received[0][:2] == b"\xff\xff":
                continue
            packet = self._rtp_without_journal.parse(received[0])
            for message in _pymidi_messages(packet.command.midi_list):
                self.received.put(message)

    def bye(self, ssrc=None):
        """BY on the control port, from ``ssrc`` (default: the control port's SSRC)."""
        self.control.sendto(self.packets.AppleMIDIExchangePacket.build(dict(
            command=b"BY", protocol_version=2, initiator_token=self.token,
            ssrc=self.ssrc if ssrc is None else ssrc, name=None)), self.gateway)

    def close(self):
        self.control.close()
        self.data.close()
