"""The baseline for bench/sip_phone_calls.py: a minimal Twisted server of 20 ms audio frames.

What a phone call's media costs with nothing else: one UDP port per call, as
the gateway opens; whoever sends to a port is its caller (its datagrams are
counted, not read); one ``LoopingCall`` every 20 ms sends every caller a
172-octet PCMU frame (a constant payload under a fresh RTP header) with the
socket's ``sendto``. No SIP, no bus, no DTMF, no synthesizer.
Usage: python rtp_audio_baseline.py CALLS; prints "ready PORT ..." when listening.
"""

import socket
import struct
import sys

from twisted.internet import protocol, reactor, task

RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
HEADER = struct.Struct("!BBHII")
PAYLOAD = b"\xff" * 160


class Call(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, ssrc):
        self.ssrc = ssrc
        self.peer = None
        self.sequence = 0
        self.received = 0

    def startProtocol(self):
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                         RECEIVE_BUFFER_BYTES)
        self.sendto = self.transport.socket.sendto

    def datagramReceived(self, data, addr):
        self.received += 1
        if self.peer is None:
            self.peer = addr

    def frame(self):
        if self.peer is None:
            return
        self.sequence = (self.sequence + 1) & 0xFFFF
        try:
            self.sendto(HEADER.pack(0x80, 0, self.sequence, self.sequence * 160, self.ssrc)
                        + PAYLOAD, self.peer)
        except OSError:
            pass


calls = [Call(index) for index in range(int(sys.argv[1]))]
ports = [reactor.listenUDP(0, call, interface="127.0.0.1") for call in calls]


def tick():
    for call in calls:
        call.frame()


task.LoopingCall(tick).start(0.02, now=False)
reactor.callWhenRunning(lambda: print(
    "ready", *(port.getHost().port for port in ports), flush=True))
reactor.run()
