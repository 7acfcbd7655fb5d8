"""sfront 0.98's dialect of SIP and its signatures: keys, keyed session names, nonces, digests.

# follows sfront 0.98 networking (shared/protocols/sfront.md §1: the key, the keyed session
#   name, HMAC-MD5 digests; §2.1-§2.3: the SIP dialect and SignSDP authorization; §3: the
#   4-octet signatures of RTP and RTCP, and the RTCP the client sends and accepts)
# implements RFC 2104 (HMAC) with MD5, through the standard library
# implements RFC 3550 §6.4 (SR and RR report blocks), §6.6 (BYE) for the packets the
#   door reads and writes

What is sfront's and not SIP's lives here, so that the message model
(:mod:`~gateway.protocols.sip.message`) and the session server
(:mod:`~gateway.protocols.sip.server`) serve RFC 3261 user agents too.

A session's key is MD5 applied 10001 times to its passphrase; everything an
sfront client sends is signed with it, so a server that knows the passphrase
verifies every INVITE and every media packet, and never needs the session's
plain name on the wire (``s=`` is the name's HMAC).

Sans-IO: bytes in, bytes out.
"""

import base64
import hashlib
import hmac
import re
import socket
import struct
import typing

from gateway.protocols.sip.message import Dialect

__all__ = ["DIALECT", "speaks_sfront", "session_key", "keyed_name", "MIRROR_NAME",
           "MIRROR_KEYED_NAME", "digest", "is_digest", "member_nonce", "Signer", "sign", "verified", "SignSdp",
           "RtcpReport", "read_rtcp", "receiver_report", "PAYLOAD_NAME", "SIGNATURE_OCTETS"]

DIALECT = Dialect(line_end="\n", compact=True, content_length=False, trailing_nul=True,
                  empty_line_without_body=False)
"""How sfront writes SIP: LF lines, compact names, no Content-Length, a final NUL, and no
empty line after the headers of a message without a body (§2.1; the golden captures)."""



def speaks_sfront(datagram):
    """Whether a datagram on a SIP port shared with RFC 3261 user agents is sfront's.

    sfront ends every SIP datagram with a NUL and every line with a bare LF; RFC
    3261 §7 requires CRLF, and every standard agent measured writes it (and no
    NUL). So a datagram that ends with a NUL, or whose first line ends with a
    bare LF, is sfront's; anything else, CRLF keep-alives and garbage included,
    is the standard agents' core's to answer or drop.
    """
    if datagram[-1:] == b"\0":
        return True
    end = datagram.find(b"\n", 0, 4096)
    return end > 0 and datagram[end - 1] != 0x0D


MD5_ROUNDS = 10000
MIRROR_NAME = "mirror"
MIRROR_KEYED_NAME = base64.b64encode(hashlib.md5(MIRROR_NAME.encode()).digest()).decode()
"""sfront's ``s=`` for its built-in mirror session: no key involved (§1)."""

PAYLOAD_NAME = "pre1-mpeg4-generic"
"""The rtpmap encoding name sfront offers and insists on (§2.3)."""

SIGNATURE_OCTETS = 4
"""RTP and RTCP carry the first 4 octets of their HMAC-MD5 at the end (§3.1)."""

_DIGEST_SHAPE = re.compile(r"^[A-Za-z0-9+/]{21}[AQgw]==$")


def session_key(passphrase):
    """The 16-octet key of a session: MD5 of the passphrase, then MD5 10000 more times."""
    key = hashlib.md5(passphrase.encode("utf-8")).digest()
    for _ in range(MD5_ROUNDS):
        key = hashlib.md5(key).digest()
    return key


def digest(key, data):
    """The base64 HMAC-MD5 of ``data`` (24 characters ending in ``==``)."""
    return base64.b64encode(hmac.new(key, data, hashlib.md5).digest()).decode()


def keyed_name(key, name):
    """A session's ``s=`` value: the HMAC of its name (§1)."""
    return digest(key, name.encode("utf-8"))


def is_digest(text):
    """Whether ``text`` has the shape sfront accepts for a nonce or digest."""
    return bool(_DIGEST_SHAPE.match(text))


def member_nonce(key, server_call_id, in_reply_to, server_host, server_port):
    """The nonce a client expects on the INVITE that introduces a member (§2.3).

    The client signs the low 4 octets of both Call-IDs as its (little-endian)
    host stores them, then the server's IPv4 address and port in network order.
    """
    text = b"".join((struct.pack("<II", server_call_id & 0xFFFFFFFF, in_reply_to & 0xFFFFFFFF),
                     socket.inet_aton(server_host), struct.pack(">H", server_port)))
    return digest(key, text)


class Signer:
    """Signs and verifies one session's RTP and RTCP (the HMAC-MD5 of RFC 2104, cut to 4 octets).

    Hand-written on purpose, from two hashlib.md5 states keyed once: every
    media packet is verified or signed once per member, and copying the
    prepared inner and outer states costs 0.94 µs per 40-octet packet where
    ``hmac.new(key, packet, hashlib.md5)`` costs 2.04 µs and
    ``hmac.digest(key, packet, "md5")`` 3.13 µs (CPython 3.11, timeit, best of
    5 x 100000 on this 2-core machine). tests/sip/test_sfront.py checks it
    against :mod:`hmac`.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key):
        block = key.ljust(64, b"\0")     # a 16-octet key is never longer than the block
        self._inner = hashlib.md5(bytes(octet ^ 0x36 for octet in block))
        self._outer = hashlib.md5(bytes(octet ^ 0x5C for octet in block))

    def signature(self, packet):
        inner = self._inner.copy()
        inner.update(packet)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:SIGNATURE_OCTETS]

    def sign(self, packet):
        """``packet`` with its 4-octet signature appended."""
        return packet + self.signature(packet)

    def verified(self, datagram):
        """The packet without its signature when the signature is right, else None."""
        if len(datagram) <= SIGNATURE_OCTETS:
            return None
        packet = datagram[:-SIGNATURE_OCTETS]
        if hmac.compare_digest(self.signature(packet), datagram[-SIGNATURE_OCTETS:]):
            return packet
        return None


def sign(key, packet):
    """``packet`` signed with ``key`` (see :class:`Signer`, which a door keeps per session)."""
    return Signer(key).sign(packet)


def verified(key, datagram):
    """``datagram`` verified with ``key``: the packet, or None (see :class:`Signer`)."""
    return Signer(key).verified(datagram)


class SignSdp(typing.NamedTuple):
    """An ``Authorization: SignSDP nonce="…", digest="…"`` header (§2.1)."""

    nonce: str
    digest: str

    @classmethod
    def parse(cls, value):
        """The SignSDP value of an Authorization header, or None when it is not one."""
        if value is None:
            return None
        scheme, _, rest = value.strip().partition(" ")
        if scheme != "SignSDP":
            return None
        fields = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', rest))
        if "nonce" not in fields or "digest" not in fields:
            return None
        return cls(fields["nonce"], fields["digest"])

    def __str__(self):
        return f'SignSDP nonce="{self.nonce}", digest="{self.digest}"'


def challenge(nonce):
    """The WWW-Authenticate value of a 401 that asks for a signed resend."""
    return f'SignSDP nonce="{nonce}"'


def challenged_nonce(value):
    """The nonce in a client's ``WWW-Authenticate: SignSDP nonce ="…"``, or None."""
    if value is None:
        return None
    match = re.match(r'\s*SignSDP\s+nonce\s*=\s*"([^"]*)"', value)
    return match.group(1) if match else None


# RTCP ---------------------------------------------------------------------

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203


class RtcpReport(typing.NamedTuple):
    """What the door reads from one client RTCP packet.

    ``ssrc`` is the sender's (the low 32 bits of its Call-ID); ``highest``
    the extended highest sequence number its first report block says it has
    received from us, or None; ``bye`` whether it says goodbye.
    """

    ssrc: int
    highest: typing.Optional[int]
    bye: bool


def read_rtcp(packet):
    """The :class:`RtcpReport` of a verified RTCP compound packet; ValueError if it is not one.

    The first sub-packet must be a well-formed SR or RR. After it, a 64-bit
    sfront overwrites the SDES header with zeros whenever a report block is
    present (§3.3), so the walk stops quietly at the first sub-packet that is
    not RTCP version 2 instead of calling the packet malformed.
    """
    if len(packet) < 8:
        raise ValueError("RTCP packet shorter than a header")
    first, kind, words, ssrc = struct.unpack_from("!BBHI", packet)
    if first >> 6 != 2 or kind not in (RTCP_SR, RTCP_RR):
        raise ValueError(f"RTCP packet starts with type {kind}, not SR or RR")
    end = 4 * (words + 1)
    if end > len(packet):
        raise ValueError("RTCP length runs past the packet")
    blocks_at = 28 if kind == RTCP_SR else 8
    highest = None
    if first & 0x1F and blocks_at + 24 <= end:
        highest = struct.unpack_from("!I", packet, blocks_at + 8)[0]
    bye = False
    offset = end
    while offset + 4 <= len(packet):
        first, kind, words = struct.unpack_from("!BBH", packet, offset)
        if first >> 6 != 2:
            break
        if kind == RTCP_BYE:
            bye = True
        offset += 4 * (words + 1)
    return RtcpReport(ssrc, highest, bye)


def receiver_report(ssrc, reportee=None, highest=None, bye=False):
    """An RR from ``ssrc`` (unsigned), with a report block about ``reportee`` when
    ``highest`` (the extended highest sequence received from it) is known, and
    a BYE after it when ``bye``."""
    if highest is None:
        packet = struct.pack("!BBHI", 0x80, RTCP_RR, 1, ssrc)
    else:
        packet = struct.pack("!BBHII4xI12x", 0x81, RTCP_RR, 7, ssrc, reportee & 0xFFFFFFFF,
                             highest & 0xFFFFFFFF)
    if bye:
        packet += struct.pack("!BBHI", 0x81, RTCP_BYE, 1, ssrc)
    return packet
