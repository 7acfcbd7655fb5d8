"""The gateway's AppleMIDI and RTP-MIDI traffic as Wireshark's dissectors read it.

tshark captures the gateway's two ports on lo while two of our peers
(tests/rtpmidi_peer.py) join, play chords both ways with the recovery journal
on, and leave. The capture is then decoded and must show IN/OK/CK/BY, RTP-MIDI
packets with journals (J=1, chapter N with note logs and NoteOff bitmaps) and
no malformed packet or expert error at all.

A dissector bug we work around: tshark 4.0's ``decode_cj_chapter_n``
(epan/dissectors/packet-rtp-midi.c) adds the "NoteOff bitmap" subtree with the
length of the note *log count* instead of the bitmap's HIGH - LOW + 1 octets.
When fewer octets than that remain in the packet (the chapter ends the last
channel journal and it has more logs than bitmap octets) the item runs past
the end of the data and tshark reports "Malformed Packet", although the chapter
is exactly as RFC 6295 Appendix A.6 lays it out (our parser, the RFC's byte
count and the journal's LENGTH field agree). JournalSender therefore widens
such a bitmap with zero octets (legal: a clear bit logs nothing) up to the log
count, which the 16 note groups allow for up to 16 logs; this test stays below
that.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import time

import pytest

from tests.conftest import free_port, need_external
from tests.rtpmidi_peer import RtpMidiPeer, wait_until

pytestmark = pytest.mark.external

NOTE_ON = 0x90
NOTE_OFF = 0x80
CAPTURE_START_TIMEOUT = 15.0


def can_capture_on_loopback():
    dumpcap = shutil.which("dumpcap")
    if shutil.which("tshark") is None or dumpcap is None:
        return False
    listing = subprocess.run([dumpcap, "-D"], capture_output=True, text=True, timeout=20)
    return listing.returncode == 0 and " lo" in listing.stdout


class Capture:
    """``tshark -i lo`` writing the UDP traffic of ``ports`` to ``path``.

    tshark says "Capturing on" a little before packets really reach the file,
    so the capture also takes a probe port and is ready once a probe shows up.
    """

    def __init__(self, path, ports):
        self.path = path
        probe_port = free_port(socket.SOCK_DGRAM)
        capture_filter = " or ".join(f"udp port {port}" for port in (probe_port, *ports))
        self.stderr_path = path + ".stderr"
        self._stderr = open(self.stderr_path, "w")
        self.process = subprocess.Popen(
            ["tshark", "-i", "lo", "-f", capture_filter, "-w", path, "-q"],
            stdout=subprocess.DEVNULL, stderr=self._stderr)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            def probe_captured():
                if self.process.poll() is not None:
                    raise RuntimeError(f"tshark exited: {self.messages()}")
                probe.sendto(b"probe", ("127.0.0.1", probe_port))
                time.sleep(0.1)
                return os.path.exists(path) and self.frames() > 0
            wait_until(probe_captured, CAPTURE_START_TIMEOUT, "tshark to capture a probe")

    def frames(self):
        listing = subprocess.run(["tshark", "-r", self.path], capture_output=True, text=True,
                                 timeout=30)
        return len(listing.stdout.splitlines())

    def messages(self):
        with open(self.stderr_path) as stream:
            return stream.read()

    def stop(self):
        if self.process.poll() is None:
            # Let the kernel hand the last packets to dumpcap before it stops.
            time.sleep(0.5)
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()


def decode(path, *arguments):
    result = subprocess.run(
        ["tshark", "-r", path, "-o", "udp.try_heuristic_first:TRUE", *arguments],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fields(path, display_filter, *names):
    arguments = ["-Y", display_filter, "-T", "fields", "-E", "occurrence=a",
                 "-E", "aggregator=,"]
    for name in names:
        arguments += ["-e", name]
    return [line.split("\t") for line in decode(path, *arguments).splitlines()]


def chord(channel, notes, velocity=100):
    return [bytes((NOTE_ON | channel, note, velocity)) for note in notes]


def release(channel, notes):
    return [bytes((NOTE_OFF | channel, note, 0)) for note in notes]


def play_phrases(peer, channel, base):
    """Chords held while other notes are released: chapter N with logs and a bitmap."""
    peer.send(chord(channel, (base, base + 4, base + 7)))
    time.sleep(0.02)
    peer.send(chord(channel, (base + 12,)))
    time.sleep(0.02)
    peer.send(release(channel, (base + 12,)))
    time.sleep(0.02)
    peer.send(chord(channel, (base + 2, base + 14)))
    time.sleep(0.02)
    peer.send(release(channel, (base + 2,)))
    time.sleep(0.02)
    peer.send(release(channel, (base, base + 4, base + 7, base + 14)))
    time.sleep(0.02)


def test_tshark_decodes_the_session_and_journals_without_malformed_packets(
        gateway_factory, tmp_path):
    need_external(can_capture_on_loopback(),
                  "capturing on lo needs tshark/dumpcap and root or the pcap capabilities")
    port = free_port(socket.SOCK_DGRAM, even=True)
    gateway = gateway_factory({"rtpmidi": {"sessions": [{"session": "demo", "port": port}]}})
    path = os.path.join(str(tmp_path), "gateway.pcapng")
    capture = Capture(path, (port, port + 1))
    try:
        with RtpMidiPeer("tshark one", random.Random(1)) as first, \
                RtpMidiPeer("tshark two", random.Random(2)) as second:
            first.invite(("127.0.0.1", port))
            second.invite(("127.0.0.1", port))
            wait_until(lambda: len(next(s for s in gateway.status()["sessions"]
                                        if s["name"] == "demo")["members"]) == 2,
                       10.0, "two members")
            for repeat in range(3):
                # A lower channel first, so the phrases' channel journal comes last.
                first.send(chord(1, (40,)) + release(1, (40,)))
                second.send(chord(9, (36, 38)) + release(9, (36, 38)))
                play_phrases(first, 5, 48 + repeat)
                play_phrases(second, 12, 60 + repeat)
            time.sleep(0.3)
            assert first.packets_received >= 20 and second.packets_received >= 20
    finally:
        capture.stop()

    commands = {row[0] for row in fields(path, "applemidi", "applemidi.command")}
    assert {"0x494e", "0x4f4b", "0x434b", "0x4259"} <= commands, commands

    journals = fields(path, "rtpmidi", "udp.srcport", "rtpmidi.j_flag",
                      "rtpmidi.cj_chapter_n_length", "rtpmidi.cj_chapter_n_log_octet")
    from_gateway = [row for row in journals if row[0] == str(port + 1)]
    from_peers = [row for row in journals if row[0] != str(port + 1)]
    assert len(from_gateway) >= 20 and len(from_peers) >= 20
    for rows in (from_gateway, from_peers):
        assert any(row[1] == "1" for row in rows)
        assert any(row[2] and row[3] for row in rows), "chapter N with logs and a bitmap"

    problems = decode(path, "-Y", "_ws.malformed || _ws.expert.severity >= error", "-V")
    assert problems == "", problems
    assert "Malformed" not in decode(path, "-V")
