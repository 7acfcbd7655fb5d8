"""Our own AppleMIDI / RTP-MIDI peer for tests and benchmarks, built from the sans-IO cores.

It owns two UDP sockets (control P, data P+1) on 127.0.0.1 and one thread that
feeds every datagram and timer tick into an
:class:`~gateway.protocols.rtpmidi.session.AppleMidiSession`. What it sends
goes out on an :class:`OutgoingStream` with a recovery journal and guard
packets, as the gateway sends; what it receives goes
through a :class:`JournalReceiver`, and every command that comes out (repairs
included) is applied to ``heard``, one :class:`ChannelState` per channel, as a
synthesizer would play it. Compare ``heard_snapshot()`` with another peer's
``sent_snapshot()`` to check that nothing was lost or left sounding.

It invites (initiator) with :meth:`invite` and, because the session core
accepts every invitation by default, also answers invitations (responder).
"""

import select
import socket
import threading
import time

from gateway.midi import MidiEvent
from gateway.protocols.rtpmidi.journal_receiver import JournalReceiver
from gateway.protocols.rtpmidi.journal_sender import JournalSender
from gateway.protocols.rtpmidi.journal_state import ChannelState
from gateway.protocols.rtpmidi.payload import MalformedPacket, RtpMidiPacket
from gateway.actions import Feedback, Send
from gateway.protocols.rtpmidi.session import (
    CLOCK_RATE, CONTROL, DATA, AppleMidiSession, RtpReceived,
)
from gateway.protocols.rtpmidi.stream import OutgoingStream, prepare
from tests.conftest import free_port

POLL_INTERVAL = 0.02
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
MAX_DATAGRAM = 65535


def wait_until(condition, timeout, what):
    """Poll ``condition`` until it returns a true value, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(f"{what} not within {timeout}s")


def bind_port_pair():
    """Two UDP sockets on 127.0.0.1: an even control port and the data port above it."""
    for _ in range(20):
        port = free_port(socket.SOCK_DGRAM, even=True)
        pair = []
        try:
            for number in (port, port + 1):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                pair.append(sock)
                sock.bind(("127.0.0.1", number))
        except OSError:
            for sock in pair:
                sock.close()
            continue
        for sock in pair:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        return pair
    raise RuntimeError("no free even UDP port pair")


class RtpMidiPeer:
    """One AppleMIDI endpoint with journal in both directions; ``with`` closes it."""

    def __init__(self, name, rng, sound_late_notes=False):
        self.sockets = dict(zip((CONTROL, DATA), bind_port_pair()))
        self.port = self.sockets[CONTROL].getsockname()[1]
        self.session = AppleMidiSession(name, rng.getrandbits(32), time.monotonic(), rng=rng)
        self.stream = OutgoingStream(self.session.ssrc, rng.getrandbits(16), JournalSender())
        self.journal_receiver = JournalReceiver(sound_late_notes=sound_late_notes)
        self.heard = [ChannelState() for _ in range(16)]
        self.packets_received = 0
        self.malformed = 0
        self._heard_count = 0
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"rtpmidi peer {name}",
                                        daemon=True)
        self._thread.start()

    # -- control -------------------------------------------------------------

    def invite(self, control_addr, timeout=10.0):
        """Invite the session at ``control_addr`` and wait until both ports are joined."""
        with self._lock:
            _, actions = self.session.invite(control_addr, time.monotonic())
            self._carry_out(actions)
        return wait_until(self.joined_peer, timeout, f"joining {control_addr}")

    def joined_peer(self):
        peers = self.session.peers
        return peers[0] if peers else None

    def close(self):
        """Say BY to every peer, stop the thread and close the sockets."""
        self._stop(say_bye=True)

    def vanish(self):
        """Stop and close the sockets without a BY, as a peer whose network went away."""
        self._stop(say_bye=False)

    def _stop(self, say_bye):
        with self._lock:
            if not self._running:
                return
            if say_bye:
                self._carry_out(self.session.close())
            self._running = False
        self._thread.join(5.0)
        for sock in self.sockets.values():
            sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- MIDI ------------------------------------------------------------------

    def send(self, messages):
        """Send ``messages`` (complete MIDI messages) now, with the stream's journal."""
        with self._lock:
            now = time.monotonic()
            timestamp = self.session.ticks(now) & 0xFFFFFFFF
            packets, _ = prepare([MidiEvent(message, now) for message in messages],
                                 CLOCK_RATE)
            for prepared in packets:
                self._carry_out(self.session.send_rtp(self.stream.packet(prepared, timestamp,
                                                                         now)))

    def sent_snapshot(self):
        with self._lock:
            return self.stream.journal.snapshot()

    def heard_snapshot(self):
        with self._lock:
            return [state.snapshot() for state in self.heard]

    # -- the thread ----------------------------------------------------------------

    def _run(self):
        by_socket = {sock: which for which, sock in self.sockets.items()}
        while self._running:
            readable, _, _ = select.select(list(by_socket), [], [], POLL_INTERVAL)
            with self._lock:
                if not self._running:
                    return
                now = time.monotonic()
                for sock in readable:
                    data, addr = sock.recvfrom(MAX_DATAGRAM)
                    self._carry_out(self.session.receive(data, addr, now, by_socket[sock]))
                self._carry_out(self.session.timer(now))
                guard = self.stream.guard_packet(self.session.ticks(now) & 0xFFFFFFFF, now)
                if guard is not None:
                    self._carry_out(self.session.send_rtp(guard))

    def _carry_out(self, actions):
        for action in actions:
            kind = type(action)
            if kind is Send:
                try:
                    self.sockets[action.via].sendto(action.data, action.address)
                except OSError:
                    pass  # a closed peer port; the session's timeouts deal with it
            elif kind is RtpReceived:
                self._rtp_received(action.data)
            elif kind is Feedback:
                self.stream.acknowledge(action.sequence)

    def _rtp_received(self, data):
        try:
            packet = RtpMidiPacket.parse(data)
        except MalformedPacket:
            self.malformed += 1
            return
        self.packets_received += 1
        for _, message in self.journal_receiver.receive(packet):
            if message[0] < 0xF0:
                self._heard_count += 1
                self.heard[message[0] & 0x0F].apply(message, self._heard_count)
