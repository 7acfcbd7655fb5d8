"""UDP ports that answer every peer from the address the peer wrote to.

# implements RFC 3542 §6 (IPV6_PKTINFO) and Linux ip(7) IP_PKTINFO

A UDP socket bound to a wildcard (``0.0.0.0`` or ``::``) receives on every
address of the host, but the kernel picks the source of what it sends by
routing: on a host with several addresses a reply can leave from another
address than the client wrote to, and clients that check the source
(OscGroupClient, sfront, AppleMIDI peers matching sessions by address)
ignore it. With IP_PKTINFO / IPV6_RECVPKTINFO each datagram says which local
address it came to; the port remembers it per peer and sends to that peer
from the same address (ip(7), RFC 3542 §6).

Doors write on hot paths with the socket's own ``sendto``, so the answer
address is applied there: the port's ``socket`` is a thin wrapper whose
``sendto`` adds the packet-info control message. Twisted's UDP port has no
ancillary-data support, hence this subclass. Ports bound to one address are
plain ``reactor.listenUDP`` ports: nothing changes for them.
"""

import os
import socket
import struct

from prometheus_client.core import CounterMetricFamily
from twisted.internet import udp

from gateway.addresses import is_wildcard

# Python 3.11 lacks the constant; 8 is Linux's (<linux/in.h>), the platform we serve.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
MAX_REMEMBERED_PEERS = 65536
# Nothing more to read, or the ICMP error of an earlier send: Twisted's read loop stops there.
_READ_ENDS = frozenset(udp._sockErrReadIgnore + udp._sockErrReadRefuse)
_IN_PKTINFO = struct.Struct("=I4s4s")     # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")     # addr, ifindex
_ANCILLARY_BYTES = socket.CMSG_SPACE(_IN6_PKTINFO.size) + socket.CMSG_SPACE(_IN_PKTINFO.size)


def listen_udp(reactor, port, protocol, interface, **options):
    """``reactor.listenUDP(port, protocol, interface=interface, **options)``, answering
    from the address each peer used when ``interface`` is a wildcard."""
    if not is_wildcard(interface):
        return reactor.listenUDP(port, protocol, interface=interface, **options)
    listening = AnsweringPort(port, protocol, interface, reactor=reactor, **options)
    listening.startListening()
    return listening


class AnsweringSocket:
    """A bound UDP socket whose ``sendto`` leaves from the address the peer last wrote to."""

    def __init__(self, raw):
        self.raw = raw
        self._answer_with = {}    # peer (host, port) -> the control message to answer it with

    def __getattr__(self, name):
        return getattr(self.raw, name)

    def remember(self, peer, ancillary):
        remembered = self._answer_with
        if remembered.get(peer) != ancillary:
            if len(remembered) >= MAX_REMEMBERED_PEERS:
                remembered.clear()
            remembered[peer] = ancillary

    def sendto(self, data, address):
        ancillary = self._answer_with.get(address[:2])
        if ancillary is None:
            return self.raw.sendto(data, address)
        return self.raw.sendmsg([data], ancillary, 0, address)


def _answer_with(level, kind, data):
    """The control message that sends from the local address a received one names."""
    if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
        local, ifindex = _IN6_PKTINFO.unpack_from(data)
        return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, _IN6_PKTINFO.pack(local, ifindex))]
    if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
        _, _, destination = _IN_PKTINFO.unpack_from(data)
        # ifindex 0: the route decides the interface; spec_dst: the source address.
        return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, destination, bytes(4)))]
    return None


class AnsweringPort(udp.Port):
    """A wildcard-bound UDP port that answers each peer from the address it wrote to."""

    def createInternetSocket(self):
        raw = super().createInternetSocket()
        if self.addressFamily == socket.AF_INET6:
            raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            raw.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        return raw

    def _bindSocket(self):
        super()._bindSocket()
        self.socket = AnsweringSocket(self.socket)

    def doRead(self):
        # Twisted's loop (udp.Port.doRead), reading with recvmsg for the packet info.
        read = 0
        raw = self.socket.raw
        while read < self.maxThroughput:
            try:
                data, ancillary, _, peer = raw.recvmsg(self.maxPacketSize, _ANCILLARY_BYTES)
            except OSError as failure:
                if failure.args[0] in _READ_ENDS:
                    return
                raise
            read += len(data)
            peer = peer[:2]
            for level, kind, value in ancillary:
                answer = _answer_with(level, kind, value)
                if answer is not None:
                    self.socket.remember(peer, answer)
                    break
            try:
                self.protocol.datagramReceived(data, peer)
            except BaseException:
                udp.log.err()


class KernelDrops:
    """The kernel's receive drops of every UDP socket the doors listen on.

    A datagram the kernel drops because the socket's receive queue is full
    never reaches the door, so no drop counter of ours sees it; Linux counts
    it per socket in the ``drops`` column of /proc/net/udp and udp6, found by
    the socket's inode. Reading it when asked (``/status``, ``/metrics``) costs
    the hot path nothing, unlike SO_RXQ_OVFL's control message on every read.
    A socket's count goes when the socket closes (a relay port, a call's media).
    """

    TABLES = ("/proc/net/udp", "/proc/net/udp6")

    def __init__(self, tables=TABLES):
        self.tables = tables
        self._watched = {}     # inode -> (door, port number)

    def watch(self, door, listening):
        """Count ``listening``'s drops under ``door`` (ports without a real socket: never)."""
        raw = getattr(listening, "socket", None)
        if not hasattr(raw, "fileno"):
            return
        self._watched[os.fstat(raw.fileno()).st_ino] = (door, listening.getHost().port)

    def _kernel_counts(self):
        counts = {}
        for table in self.tables:
            try:
                with open(table, encoding="ascii") as rows:
                    next(rows)
                    for row in rows:
                        fields = row.split()
                        counts[int(fields[9])] = int(fields[-1])
            except OSError:
                continue
        return counts

    def snapshot(self):
        """``{door: {port: drops}}`` of the sockets still open."""
        counts = self._kernel_counts()
        for inode in [inode for inode in self._watched if inode not in counts]:
            del self._watched[inode]
        by_door = {}
        for inode, (door, number) in self._watched.items():
            by_door.setdefault(door, {})[number] = counts[inode]
        return by_door

    def collect(self):
        """prometheus_client collector: ``netgateway_udp_kernel_drops{door, port}``."""
        family = CounterMetricFamily(
            "netgateway_udp_kernel_drops",
            "Datagrams the kernel dropped before the gateway read them (receive queue full)",
            labels=["door", "port"])
        for door, ports in sorted(self.snapshot().items()):
            for number, drops in sorted(ports.items()):
                family.add_metric([door, str(number)], drops)
        yield family
