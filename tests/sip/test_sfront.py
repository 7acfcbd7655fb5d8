"""sfront's keys, names, nonces, digests and signatures against captured and computed values."""

import struct

import pytest
from hypothesis import given, strategies as st

from gateway.protocols.sip import sfront
from tests.sip.sfront_double import DEMO_KEYED_NAME, DEMO_PASSPHRASE


def test_the_key_and_keyed_name_reproduce_a_real_clients_s_line():
    key = sfront.session_key(DEMO_PASSPHRASE)
    assert len(key) == 16
    assert sfront.keyed_name(key, "demo") == DEMO_KEYED_NAME
    assert sfront.keyed_name(key, "demo2") != DEMO_KEYED_NAME


def test_the_mirror_name_is_the_md5_of_mirror():
    assert sfront.MIRROR_KEYED_NAME == "++MiqJvAulMcPwBQ45NfKA=="


@pytest.mark.parametrize("text, shaped", [
    (DEMO_KEYED_NAME, True), ("++MiqJvAulMcPwBQ45NfKA==", True),
    ("yYyUa/wTDUBMVnpUgiGNEx==", False), ("yYyUa/wTDUBMVnpUgiGNEw=", False),
    ("yYyUa/wTDUBMVnpUgiGNE===", False), ("", False)])
def test_digest_shape_is_what_the_client_accepts(text, shaped):
    assert sfront.is_digest(text) is shaped


def test_the_member_nonce_packs_both_call_ids_little_endian_then_address_and_port():
    key = sfront.session_key(DEMO_PASSPHRASE)
    text = (struct.pack("<I", 0x01020304) + struct.pack("<I", 6869619084028907834 & 0xFFFFFFFF)
            + bytes([127, 0, 0, 1]) + bytes([0x13, 0xC4]))
    assert sfront.member_nonce(key, 0x01020304, 6869619084028907834, "127.0.0.1", 5060) == \
        sfront.digest(key, text)


@given(packet=st.binary(min_size=1, max_size=300), flip=st.integers(min_value=0))
def test_a_signed_packet_verifies_and_any_flipped_bit_does_not(packet, flip):
    key = sfront.session_key("twenty characters or more")
    signed = sfront.sign(key, packet)
    assert sfront.verified(key, signed) == packet
    position = flip % (len(signed) * 8)
    damaged = bytearray(signed)
    damaged[position // 8] ^= 1 << (position % 8)
    assert sfront.verified(key, bytes(damaged)) is None
    assert sfront.verified(sfront.session_key("another twenty characters"), signed) is None


def test_too_short_to_be_signed_is_not_verified():
    assert sfront.verified(b"k" * 16, b"\x00\x01\x02\x03") is None


@pytest.mark.parametrize("value", [
    'SignSDP nonce="abc", digest="def"', 'SignSDP digest="def", nonce="abc"',
    'SignSDP nonce = "abc" ,digest= "def"'])
def test_signsdp_authorization_in_either_order(value):
    assert sfront.SignSdp.parse(value) == sfront.SignSdp("abc", "def")


@pytest.mark.parametrize("value", [None, "Digest nonce=\"a\", digest=\"b\"",
                                   'SignSDP nonce="abc"', "SignSDP"])
def test_other_authorizations_are_not_signsdp(value):
    assert sfront.SignSdp.parse(value) is None


def test_the_clients_own_challenge_has_a_space_before_the_equals():
    assert sfront.challenged_nonce(f'SignSDP nonce ="{DEMO_KEYED_NAME}"') == DEMO_KEYED_NAME
    assert sfront.challenged_nonce(sfront.challenge("xyz")) == "xyz"


def test_receiver_reports_are_the_minimal_packets_the_client_accepted():
    assert sfront.receiver_report(0x11223344) == bytes.fromhex("80c90001 11223344")
    assert sfront.receiver_report(0x11223344, 0xAABBCCDD, 0x00010203) == bytes.fromhex(
        "81c90007 11223344 aabbccdd 00000000 00010203 00000000 00000000 00000000")
    assert sfront.receiver_report(1, bye=True) == bytes.fromhex("80c90001 00000001"
                                                                "81cb0001 00000001")


def test_rtcp_with_a_report_block_and_a_zeroed_sdes_header_is_read_leniently():
    # What a 64-bit client sends: RR with one block, then an SDES whose first
    # four octets an 8-octet store overwrote with zeros (sfront.md §3.3).
    packet = sfront.receiver_report(0xCAFE, 0xBEEF, 70000) + b"\0\0\0\0" + b"garbage!"
    assert sfront.read_rtcp(packet) == sfront.RtcpReport(0xCAFE, 70000, False)


def test_an_sr_report_block_and_a_bye_after_sdes_are_found():
    sender_info = struct.pack("!BBHI", 0x81, 200, 12, 9) + bytes(20)
    block = struct.pack("!I4xI12x", 3, 1234)
    sdes = struct.pack("!BBH", 0x81, 202, 1) + b"\x00" * 4
    bye = struct.pack("!BBHI", 0x81, 203, 1, 9)
    assert sfront.read_rtcp(sender_info + block + sdes + bye) == sfront.RtcpReport(9, 1234, True)


@pytest.mark.parametrize("packet", [b"", b"\x80\xc9\x00", bytes.fromhex("80ca0001 00000001"),
                                    bytes.fromhex("40c90001 00000001"),
                                    bytes.fromhex("80c90009 00000001")])
def test_what_is_not_an_sr_or_rr_is_refused(packet):
    with pytest.raises(ValueError):
        sfront.read_rtcp(packet)


@given(st.binary(max_size=200))
def test_read_rtcp_raises_only_valueerror(packet):
    try:
        sfront.read_rtcp(packet)
    except ValueError:
        pass


@given(key=st.binary(min_size=16, max_size=16), packet=st.binary(max_size=400))
def test_the_signer_is_rfc_2104_hmac_md5_cut_to_four_octets(key, packet):
    import hashlib
    import hmac
    assert sfront.Signer(key).signature(packet) == hmac.new(key, packet, hashlib.md5).digest()[:4]
