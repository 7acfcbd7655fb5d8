"""The server side of the RTMP handshake: plain and FP9 digest clients, refusals, byte-at-a-time.

The digest C1s here are built the way ffmpeg and rtmpdump ``-w/-x`` build
theirs (shared/protocols/rtmp-clients.md §1.3): a non-zero version and a
valid digest under the public Flash Player key at scheme 0 or 1. The checks
on S1/S2 are the ones those clients make.
"""

import hashlib
import hmac
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols.rtmp.handshake import (
    CLIENT_PUBLIC_KEY,
    DIGEST_SIZE,
    PACKET_SIZE,
    SERVER_FULL_KEY,
    SERVER_PUBLIC_KEY,
    HandshakeDone,
    HandshakeError,
    Reply,
    ServerHandshake,
    digest_position,
    find_digest,
)

FFMPEG_VERSION = bytes((9, 0, 124, 2))


def seeded_random(seed):
    generator = random.Random(seed)
    return lambda n: bytes(generator.getrandbits(8) for _ in range(n))


def plain_c1(seed=1):
    return bytes(4) + bytes(4) + seeded_random(seed)(PACKET_SIZE - 8)


def digest_c1(scheme, seed=2):
    """A C1 signed the FP9 way, written out step by step (independent of the module's helpers)."""
    packet = bytearray(b"\x00\x00\x12\x34" + FFMPEG_VERSION + seeded_random(seed)(PACKET_SIZE - 8))
    offset_field = 8 if scheme == 0 else 772
    position = offset_field + 4 + sum(packet[offset_field:offset_field + 4]) % 728
    without_digest = packet[:position] + packet[position + 32:]
    packet[position:position + 32] = hmac.new(
        b"Genuine Adobe Flash Player 001", without_digest, hashlib.sha256).digest()
    return bytes(packet), position


def run(handshake, data, now=0.0):
    return handshake.receive(data, now)


def split_reply(events):
    replies = [e for e in events if isinstance(e, Reply)]
    assert len(replies) == 1
    data = replies[0].data
    assert len(data) == 1 + 2 * PACKET_SIZE
    return data[0], data[1:1 + PACKET_SIZE], data[1 + PACKET_SIZE:]


def test_plain_c1_gets_version_zero_s1_and_s2_echoing_c1():
    c1 = plain_c1()
    handshake = ServerHandshake(random_bytes=seeded_random(9))
    events = run(handshake, b"\x03" + c1, now=12.345)
    s0, s1, s2 = split_reply(events)
    assert s0 == 3
    assert s1[:4] == (12345).to_bytes(4, "big")
    assert s1[4:8] == bytes(4)      # version 0: "no digest here", accepted by every client
    assert s2 == c1
    assert not handshake.done
    events = run(handshake, b"C2" * (PACKET_SIZE // 2) + b"\x02rest")
    assert events == [HandshakeDone(b"\x02rest", bytes(4), None)]
    assert handshake.done


@pytest.mark.parametrize("scheme", [0, 1])
def test_digest_c1_gets_a_digest_s1_and_an_s2_signed_for_the_client_digest(scheme):
    c1, client_position = digest_c1(scheme)
    client_digest = c1[client_position:client_position + DIGEST_SIZE]
    handshake = ServerHandshake()
    s0, s1, s2 = split_reply(run(handshake, b"\x03" + c1))
    assert s0 == 3
    assert s1[4] >= 3                # the octet ffmpeg looks at before checking the digest
    # ffmpeg's check of S1: scheme 1 (offset 772) first, then scheme 0.
    found = find_digest(s1, SERVER_PUBLIC_KEY)
    assert found is not None and found[0] == scheme
    position = digest_position(s1, scheme)
    signed = s1[:position] + s1[position + 32:]
    assert s1[position:position + 32] == hmac.new(
        b"Genuine Adobe Flash Media Server 001", signed, hashlib.sha256).digest()
    # ffmpeg's check of S2: key = HMAC(full server key, client digest), over S2[:1504].
    key = hmac.new(SERVER_FULL_KEY, client_digest, hashlib.sha256).digest()
    assert s2[-32:] == hmac.new(key, s2[:-32], hashlib.sha256).digest()
    # ffmpeg's C2 does not echo a digest S1; it must still be accepted.
    events = run(handshake, bytes(PACKET_SIZE))
    assert events == [HandshakeDone(b"", FFMPEG_VERSION, scheme)]


def test_versioned_c1_without_a_valid_digest_is_answered_plain():
    c1 = bytearray(plain_c1())
    c1[4:8] = bytes((10, 0, 32, 18))
    handshake = ServerHandshake()
    _, s1, s2 = split_reply(run(handshake, b"\x03" + bytes(c1)))
    assert s1[4:8] == bytes(4)
    assert s2 == bytes(c1)
    assert run(handshake, bytes(PACKET_SIZE))[0].digest_scheme is None


def test_the_full_server_key_is_the_public_key_plus_the_fp9_constant():
    assert len(CLIENT_PUBLIC_KEY) == 30 and len(SERVER_PUBLIC_KEY) == 36
    assert len(SERVER_FULL_KEY) == 68 and SERVER_FULL_KEY.startswith(SERVER_PUBLIC_KEY)
    assert SERVER_FULL_KEY[36:40] == b"\xf0\xee\xc2\x4a" and SERVER_FULL_KEY[-1] == 0xAE


@pytest.mark.parametrize("scheme", [0, 1, None])
def test_bytes_fed_one_at_a_time_give_the_same_answer(scheme):
    c1 = plain_c1() if scheme is None else digest_c1(scheme)[0]
    whole = ServerHandshake(random_bytes=seeded_random(5))
    expected = run(whole, b"\x03" + c1 + bytes(PACKET_SIZE) + b"xyz")
    trickled = ServerHandshake(random_bytes=seeded_random(5))
    events = []
    for octet in b"\x03" + c1 + bytes(PACKET_SIZE) + b"xyz":
        if trickled.done:
            break
        events += run(trickled, bytes((octet,)))
    assert events[0] == expected[0]
    # Fed one octet at a time, the handshake ends with the last C2 octet,
    # so the chunk-stream bytes are not part of it.
    assert events[1] == expected[1]._replace(leftover=b"")
    assert len(events) == 2


@pytest.mark.parametrize("version", [6, 8])
def test_rtmpe_is_refused_by_name_on_the_first_octet(version):
    with pytest.raises(HandshakeError, match="RTMPE is not supported"):
        run(ServerHandshake(), bytes((version,)))


def test_http_is_refused_as_rtmpt():
    with pytest.raises(HandshakeError, match="RTMPT is not supported"):
        run(ServerHandshake(), b"POST /open/1 HTTP/1.1\r\n")


@pytest.mark.parametrize("version", [0, 1, 2, 4, 0xFF])
def test_other_versions_are_refused(version):
    with pytest.raises(HandshakeError, match=f"RTMP version {version} is not supported"):
        run(ServerHandshake(), bytes((version,)) + plain_c1())


def test_short_input_waits_and_sends_nothing():
    handshake = ServerHandshake()
    assert run(handshake, b"") == []
    assert run(handshake, b"\x03" + bytes(100)) == []
    assert run(handshake, bytes(PACKET_SIZE - 101)) == []
    assert len(run(handshake, b"\x00")) == 1       # C1 complete: the reply
    assert run(handshake, bytes(PACKET_SIZE - 1)) == []
    assert isinstance(run(handshake, b"\x00")[0], HandshakeDone)


def test_feeding_after_the_end_is_a_programming_error():
    handshake = ServerHandshake()
    run(handshake, b"\x03" + plain_c1() + bytes(PACKET_SIZE))
    with pytest.raises(RuntimeError):
        run(handshake, b"more")


@given(st.binary(max_size=2 * PACKET_SIZE + 10), st.integers(1, 4000))
def test_garbage_gives_replies_done_or_handshake_error_only(data, piece):
    handshake = ServerHandshake()
    try:
        for start in range(0, len(data), piece):
            if handshake.done:
                break
            for event in run(handshake, data[start:start + piece]):
                assert isinstance(event, (Reply, HandshakeDone))
    except HandshakeError:
        assert data[0] != 3
