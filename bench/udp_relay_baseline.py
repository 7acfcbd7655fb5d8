"""The baseline for bench/rtpmidi_fanout.py: a minimal Twisted UDP fan-out relay.

No AppleMIDI, no RTP-MIDI parsing, no registry: each group listens on its own
port; whoever sends a datagram to it becomes a member, and every datagram is
written as is to the group's other members with ``transport.write``.
Usage: python udp_relay_baseline.py GROUPS; prints "ready PORT ..." when listening.
"""

import socket
import sys

from twisted.internet import protocol, reactor

RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024


class Group(protocol.DatagramProtocol):
    noisy = False

    def __init__(self):
        self.members = []

    def startProtocol(self):
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                         RECEIVE_BUFFER_BYTES)

    def datagramReceived(self, data, addr):
        members = self.members
        if addr not in members:
            members.append(addr)
        write = self.transport.write
        for member in members:
            if member != addr:
                write(data, member)


ports = [reactor.listenUDP(0, Group(), interface="127.0.0.1", maxPacketSize=65535)
         for _ in range(int(sys.argv[1]))]
reactor.callWhenRunning(lambda: print(
    "ready", *(port.getHost().port for port in ports), flush=True))
reactor.run()
