"""What an RTP peer's RTCP says back about our sender reports (RFC 3550 §6.4)."""

import struct

from gateway.protocols.sip import rtcp


def sender_report_time(sr):
    """(Unix time it was sent, its LSR: the middle 32 bits of its NTP time) of our SR."""
    ntp_seconds, ntp_fraction = struct.unpack_from("!II", sr, 8)
    sent_at = ntp_seconds + ntp_fraction / 2 ** 32 - rtcp.NTP_UNIX_OFFSET
    return sent_at, ((ntp_seconds & 0xFFFF) << 16) | (ntp_fraction >> 16)


def receiver_report(ssrc, about, last_sr=0, held=0.0):
    """A peer's RR with one block about ``about``: LSR ``last_sr``, DLSR ``held`` seconds."""
    block = struct.pack("!IIIIII", about, 0, 1234, 0, last_sr, int(held * 65536))
    return struct.pack("!BBHI", 0x81, rtcp.RR, 7, ssrc) + block
