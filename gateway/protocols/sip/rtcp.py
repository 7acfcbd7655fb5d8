"""RTCP for SDP-negotiated RTP-MIDI calls: reading reports, writing ours.

# implements RFC 3550 §6.1 (compound packets: SR or RR first, SDES with CNAME),
#   §6.4.1 (SR), §6.4.2 (RR) and their report blocks, §6.5.1 (SDES CNAME), §6.6 (BYE)
# implements RFC 5761 §4 (telling RTCP from RTP on one port by the packet type)

What a door needs of RTCP with one peer: the extended highest sequence number
the peer says it received from our SSRC (it trims our recovery journal: RFC
6295 Appendix C.2.2.2, closed-loop), the round trip its report block gives
(the player's delay light), whether it said BYE, and our own reports so that
the peer can trim its journal. Nothing more is read; an RTCP packet
of a type we do not know is skipped.

(sfront's RTCP, signed and with the quirks of its client, is read in
:mod:`gateway.protocols.sip.sfront`.)

Sans-IO: bytes in, values out; times are parameters.
"""

import struct
import typing

__all__ = ["Report", "read", "compound", "is_rtcp", "NTP_UNIX_OFFSET"]

SR = 200
RR = 201
SDES = 202
BYE = 203
APP = 204
CNAME = 1
NTP_UNIX_OFFSET = 2208988800
_HEADER = struct.Struct("!BBH")
_BLOCK = struct.Struct("!IIIIII")
MAX_BLOCKS = 31
MAX_ROUND_TRIP = 10.0


class Report(typing.NamedTuple):
    """What one compound RTCP packet says: its sender's SSRC, the extended highest
    sequence number it received from ``about`` (None when no block is about it),
    whether it says BYE, and the round trip in seconds its block about ``about``
    gives (§6.4.1: arrival less LSR less DLSR; None without our SR to refer to)."""

    ssrc: int
    highest: typing.Optional[int]
    bye: bool
    round_trip: typing.Optional[float] = None


def is_rtcp(datagram):
    """Whether a datagram on a multiplexed port is RTCP (RFC 5761 §4: types 192-223)."""
    return len(datagram) >= 2 and 192 <= datagram[1] <= 223


def _middle_32(now):
    """The middle 32 bits of the NTP time of Unix time ``now`` (LSR's unit: 1/65536 s)."""
    return int((now + NTP_UNIX_OFFSET) * 65536) & 0xFFFFFFFF


def read(packet, about, now=None):
    """The :class:`Report` of a compound RTCP packet received at Unix time ``now``;
    ValueError when it is not one."""
    if len(packet) < 8:
        raise ValueError("RTCP packet shorter than a header")
    offset = 0
    ssrc = None
    highest = None
    round_trip = None
    bye = False
    while offset + 4 <= len(packet):
        first, kind, words = _HEADER.unpack_from(packet, offset)
        if first >> 6 != 2:
            raise ValueError(f"RTCP version {first >> 6}, expected 2")
        end = offset + 4 * (words + 1)
        if end > len(packet):
            raise ValueError("RTCP length runs past the packet")
        if offset == 0 and kind not in (SR, RR):
            raise ValueError(f"RTCP compound starts with type {kind}, not SR or RR")
        if kind in (SR, RR):
            if end - offset < 8:
                raise ValueError("SR or RR without its SSRC")
            sender = struct.unpack_from("!I", packet, offset + 4)[0]
            ssrc = sender if ssrc is None else ssrc
            blocks = offset + (28 if kind == SR else 8)
            for index in range(first & 0x1F):
                start = blocks + index * _BLOCK.size
                if start + _BLOCK.size > end:
                    raise ValueError("RTCP report block runs past its packet")
                reportee, _, extended, _, last_sr, since_sr = _BLOCK.unpack_from(packet, start)
                if reportee == about:
                    highest = extended
                    if last_sr and now is not None:
                        units = (_middle_32(now) - last_sr - since_sr) & 0xFFFFFFFF
                        # A negative round trip wraps to ~18 h: a clock step or a
                        # forged block, not a reading.
                        round_trip = units / 65536 if units < MAX_ROUND_TRIP * 65536 else None
        elif kind == BYE:
            bye = True
        offset = end
    return Report(ssrc, highest, bye, round_trip)


def compound(ssrc, now, reportee=None, highest=None, lost=0, sent=None, cname="netgateway",
             bye=False):
    """Our compound RTCP packet at Unix time ``now``.

    An SR when ``sent`` is ``(rtp_timestamp, packets, octets)`` (we sent RTP since
    the last report), else an RR; a report block about ``reportee`` when
    ``highest`` (the extended highest sequence received from it) is known; then
    SDES CNAME, and BYE when ``bye``.
    """
    block = b""
    if highest is not None and reportee is not None:
        cumulative = max(0, min(lost, 0x7FFFFF))
        block = _BLOCK.pack(reportee & 0xFFFFFFFF, cumulative, highest & 0xFFFFFFFF, 0, 0, 0)
    count = 1 if block else 0
    if sent is not None:
        ntp = now + NTP_UNIX_OFFSET
        seconds = int(ntp)
        fraction = int((ntp - seconds) * (1 << 32)) & 0xFFFFFFFF
        timestamp, packets, octets = sent
        body = struct.pack("!IIIIII", ssrc, seconds & 0xFFFFFFFF, fraction,
                           timestamp & 0xFFFFFFFF, packets & 0xFFFFFFFF,
                           octets & 0xFFFFFFFF) + block
        kind = SR
    else:
        body = struct.pack("!I", ssrc) + block
        kind = RR
    packet = _HEADER.pack(0x80 | count, kind, len(body) // 4) + body
    name = cname.encode("utf-8")[:255]
    chunk = struct.pack("!IBB", ssrc, CNAME, len(name)) + name + b"\0"
    chunk += b"\0" * (-len(chunk) % 4)
    packet += _HEADER.pack(0x81, SDES, len(chunk) // 4) + chunk
    if bye:
        packet += _HEADER.pack(0x81, BYE, 1) + struct.pack("!I", ssrc)
    return packet
