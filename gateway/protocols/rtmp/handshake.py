"""The server side of the RTMP handshake: C0/C1/C2 in, S0/S1/S2 out.

# implements RTMP spec 1.0 §5.2 (C0/S0 version octet, C1/S1 time + zero + random,
#   C2/S2 echo; the server answers S0+S1+S2 as soon as C0+C1 are in, §5.2.5)
# implements the Flash Player 9 "digest" handshake every Adobe-era client can send
#   (not in the spec: C1/S1 carry an HMAC-SHA256 digest at a position scheme 0 or 1
#   derives from the packet itself; S2 is signed with a key derived from the client's digest)

Written by hand because no maintained Python library does the server side of
the FP9 handshake. Which answers real clients accept was measured in
shared/protocols/rtmp-clients.md §1.3: ffmpeg (always) and rtmpdump ``-w/-x``
send a digest C1, rtmpdump by default and librtmp a plain one. We answer a
digest C1 with a digest S1 and a signed S2 (every client accepts that), and
a plain C1 with a version-0 S1 and S2 = C1 (every client accepts that too).
An S1 with a non-zero version and no digest is what ffmpeg-play and rtmpdump
``-w/-x`` reject, so this module never sends one. C2 is read but not
compared with S1: ffmpeg's differs from it when S1 is digest-signed.

RTMPE (C0 = 6 or 8, encrypted) and RTMPT (RTMP tunnelled in HTTP) are out of
scope and refused with a :class:`HandshakeError` that says so.

Sans-IO: :meth:`ServerHandshake.receive` takes bytes and the time and returns
events; randomness is injectable so tests are deterministic.
"""

import hashlib
import hmac
import os
import struct
import typing

RTMP_VERSION = 3
PACKET_SIZE = 1536                   # C1, S1, C2, S2
DIGEST_SIZE = 32                     # HMAC-SHA256
# Each scheme names where the 4 "offset" octets sit; the digest follows them
# at offset + 4 + (sum of the 4 octets mod 728): 728 = 764 - 4 - 32, so the
# digest stays inside its 764-octet half of the packet.
DIGEST_SCHEME_OFFSETS = {0: 8, 1: 772}
_DIGEST_POSITION_MODULUS = 728

# A 32-octet constant of the FP9 handshake; appended to the public "Genuine"
# strings it makes the keys that sign S2 (server) and the client's response.
_KEY_SUFFIX = bytes.fromhex(
    "f0eec24a8068bee82e00d0d1029e7e57"
    "6eec5d2d29806fab93b8e636cfeb31ae")
CLIENT_PUBLIC_KEY = b"Genuine Adobe Flash Player 001"           # signs C1
CLIENT_FULL_KEY = CLIENT_PUBLIC_KEY + _KEY_SUFFIX                # signs C2
SERVER_PUBLIC_KEY = b"Genuine Adobe Flash Media Server 001"      # signs S1
SERVER_FULL_KEY = SERVER_PUBLIC_KEY + _KEY_SUFFIX                # derives S2's key

# What a digest S1 says it is. Clients check only that its first octet is
# at least 3 (then they look for the digest) — any FMS-like version will do.
SERVER_VERSION = bytes((5, 0, 3, 1))
_PLAIN_VERSION = bytes(4)

_RTMPE_VERSIONS = frozenset({6, 8})
# First octets of an HTTP request: an RTMPT client or a browser knocking.
_HTTP_FIRST_OCTETS = frozenset(b"GPHOCDT")

_U32 = struct.Struct(">I")


class HandshakeError(ValueError):
    """The client's handshake is not one this server speaks; close the connection."""


class Reply(typing.NamedTuple):
    """Write ``data`` to the client."""

    data: bytes


class HandshakeDone(typing.NamedTuple):
    """The handshake is complete; ``leftover`` is the first chunk-stream bytes.

    ``client_version`` is C1's four version octets (0.0.0.0 for a plain C1),
    ``digest_scheme`` 0 or 1 for a digest C1, None for a plain one.
    """

    leftover: bytes
    client_version: bytes
    digest_scheme: typing.Optional[int]


def digest_position(packet, scheme):
    """Where the digest of a 1536-octet C1/S1 sits under ``scheme`` (0 or 1)."""
    offset = DIGEST_SCHEME_OFFSETS[scheme]
    return offset + 4 + sum(packet[offset:offset + 4]) % _DIGEST_POSITION_MODULUS


def compute_digest(packet, position, key):
    """HMAC-SHA256 under ``key`` of ``packet`` without its 32 digest octets."""
    signed = packet[:position] + packet[position + DIGEST_SIZE:]
    return hmac.new(key, signed, hashlib.sha256).digest()


def find_digest(packet, key):
    """The (scheme, position) whose digest verifies under ``key``, or None."""
    for scheme in DIGEST_SCHEME_OFFSETS:
        position = digest_position(packet, scheme)
        expected = compute_digest(packet, position, key)
        if hmac.compare_digest(expected, bytes(packet[position:position + DIGEST_SIZE])):
            return scheme, position
    return None


def sign_packet(packet, scheme, key):
    """Return ``packet`` (bytes-like, 1536 octets) with its digest for ``scheme`` written in."""
    signed = bytearray(packet)
    position = digest_position(signed, scheme)
    signed[position:position + DIGEST_SIZE] = compute_digest(signed, position, key)
    return bytes(signed)


def response_signature(peer_digest, full_key, response):
    """The last 32 octets of a response (S2, or a client's C2) to a digest packet.

    The key is HMAC(full_key, peer's digest); it signs the response's first
    1504 octets.
    """
    derived_key = hmac.new(full_key, peer_digest, hashlib.sha256).digest()
    return hmac.new(derived_key, response[:PACKET_SIZE - DIGEST_SIZE],
                    hashlib.sha256).digest()


def _refusal(version):
    if version in _RTMPE_VERSIONS:
        return HandshakeError(
            f"RTMPE is not supported (C0 version {version}: encrypted RTMP); use plain rtmp://")
    if version in _HTTP_FIRST_OCTETS:
        return HandshakeError(
            "RTMPT is not supported (the client sent HTTP, not an RTMP C0)")
    return HandshakeError(f"RTMP version {version} is not supported (C0 must be 3)")


class ServerHandshake:
    """One connection's handshake, server side.

    ``receive(data, now)`` returns a list of :class:`Reply` and, last, one
    :class:`HandshakeDone`; it raises :class:`HandshakeError` for a client
    this server cannot talk to, and nothing else whatever it is fed. After
    the error or done, feeding more is a programming error (RuntimeError).
    ``now`` (seconds, any epoch) fills S1's time field in milliseconds.
    """

    def __init__(self, random_bytes=os.urandom):
        self._random_bytes = random_bytes
        self._buffer = bytearray()
        self._c1 = None
        self._client_version = None
        self._digest_scheme = None
        self._finished = False

    @property
    def done(self):
        return self._finished

    def receive(self, data, now):
        if self._finished:
            raise RuntimeError("the handshake is over; bytes belong to the chunk stream")
        self._buffer += data
        events = []
        if self._c1 is None:
            if not self._buffer:
                return events
            # Refuse on the very first octet: an RTMPE client would otherwise
            # wait for us while we wait for 1536 more.
            if self._buffer[0] != RTMP_VERSION:
                self._finished = True
                raise _refusal(self._buffer[0])
            if len(self._buffer) < 1 + PACKET_SIZE:
                return events
            self._c1 = bytes(self._buffer[1:1 + PACKET_SIZE])
            del self._buffer[:1 + PACKET_SIZE]
            events.append(Reply(self._answer(self._c1, now)))
        if len(self._buffer) >= PACKET_SIZE:
            # C2 is taken as it comes: clients do not agree on what it holds.
            leftover = bytes(self._buffer[PACKET_SIZE:])
            self._buffer = bytearray()
            self._finished = True
            events.append(HandshakeDone(leftover, self._client_version, self._digest_scheme))
        return events

    def _answer(self, c1, now):
        self._client_version = c1[4:8]
        found = None
        # A plain C1 has a zero version; only a versioned one can carry a digest.
        if self._client_version != _PLAIN_VERSION:
            found = find_digest(c1, CLIENT_PUBLIC_KEY)
        time_field = _U32.pack(int(now * 1000) & 0xFFFFFFFF)
        if found is None:
            # A version-0 S1 tells the client not to look for a digest; S2
            # echoes C1 as §5.2.4 asks (librtmp checks that echo).
            s1 = time_field + _PLAIN_VERSION + self._random_bytes(PACKET_SIZE - 8)
            s2 = c1
        else:
            scheme, position = found
            self._digest_scheme = scheme
            # Sign S1 with the client's own scheme: librtmp looks for the
            # server digest only where it put its own.
            s1 = sign_packet(
                time_field + SERVER_VERSION + self._random_bytes(PACKET_SIZE - 8),
                scheme, SERVER_PUBLIC_KEY)
            client_digest = c1[position:position + DIGEST_SIZE]
            s2_body = self._random_bytes(PACKET_SIZE - DIGEST_SIZE)
            s2 = s2_body + response_signature(client_digest, SERVER_FULL_KEY, s2_body)
        return bytes((RTMP_VERSION,)) + s1 + s2
