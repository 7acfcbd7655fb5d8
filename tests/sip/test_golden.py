"""The door's parsers against datagrams captured from a real sfront 0.98 client.

tests/sip/golden (captured with tests/sfront_capture.py; README.md there says
how) holds what a real client sent in session demo: INVITEs, ACKs, BYEs,
INFO, its answer to a member INVITE, RTP-MIDI with and without a recovery
journal, RTCP. Each is parsed by the door's code and, where the wire is
sfront's, written back byte for byte.
"""

import os

import pytest

from gateway.protocols.rtpmidi.payload import RtpMidiPacket
from gateway.protocols.sip import sfront
from gateway.protocols.sip.message import Request, Response, Via, parse
from gateway.protocols.sip.sdp import Sdp
from tests.sip.sfront_double import DEMO_KEYED_NAME, DEMO_PASSPHRASE

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
KEY = sfront.session_key(DEMO_PASSPHRASE)
SIP_FILES = ["invite_unsigned_rtp", "invite_unsigned_rtcp", "invite_signed_rtp",
             "invite_signed_rtcp", "ack_401_rtp", "ack_200_rtcp", "bye_rtp", "bye_rtcp",
             "nat_invite_signed_rtp", "nat_info_rtcp", "member_invite_reply"]


def golden(name):
    with open(os.path.join(GOLDEN, name + ".bin"), "rb") as stream:
        return stream.read()


@pytest.mark.parametrize("name", SIP_FILES)
def test_a_real_clients_sip_parses_and_is_written_back_byte_for_byte(name):
    data = golden(name)
    message = parse(data)
    assert message.call_id.isdigit() and message.cseq is not None
    assert message.to_bytes(sfront.DIALECT) == data


@pytest.mark.parametrize("leg", ["rtp", "rtcp"])
def test_a_real_clients_signed_invite_verifies_with_the_session_key(leg):
    unsigned, signed = parse(golden(f"invite_unsigned_{leg}")), parse(golden(f"invite_signed_{leg}"))
    assert isinstance(signed, Request) and signed.method == "INVITE"
    authorization = sfront.SignSdp.parse(signed.get("authorization"))
    assert authorization.digest == sfront.digest(KEY, signed.body)
    assert authorization.nonce == "AAECAwQFBgcICQoLDA0ODw=="      # the capture's nonce
    sdp = Sdp.parse(signed.body)
    assert sdp.first("s") == DEMO_KEYED_NAME
    assert sdp.attribute("nonce") == f'"{authorization.nonce}"'
    assert sdp.rtpmap() == (96, "pre1-mpeg4-generic", 44100)
    assert signed.cseq[0] == unsigned.cseq[0] + 1
    assert sdp.origin().session_id == int(parse(golden("invite_signed_rtp")).call_id)
    assert int(signed.call_id) == int(parse(golden("invite_signed_rtp")).call_id) + (
        leg == "rtcp")


def test_the_nat_variant_carries_a_nat_under_the_digest():
    signed = parse(golden("nat_invite_signed_rtp"))
    sdp = Sdp.parse(signed.body)
    assert sdp.attribute("nat") is not None
    assert sfront.SignSdp.parse(signed.get("authorization")).digest == sfront.digest(
        KEY, signed.body)


def test_the_clients_answer_to_a_member_invite_is_a_bare_200_echoing_our_headers():
    reply = parse(golden("member_invite_reply"))
    sent = parse(golden("member_invite_sent"))
    assert isinstance(reply, Response) and (reply.status, reply.reason) == (200, "")
    assert reply.call_id == sent.call_id and reply.get("in-reply-to") == sent.get("in-reply-to")
    Via.parse(reply.get("via"))


@pytest.mark.parametrize("name", ["rtp_first", "rtp_note_journal", "rtp_note_journal_late",
                                  "rtp_guard"])
def test_a_real_clients_rtp_verifies_and_parses_with_its_journal(name):
    packet = sfront.verified(KEY, golden(name))
    assert packet is not None
    rtp = RtpMidiPacket.parse(packet)          # the journal parsed eagerly, all of it
    assert rtp.marker and rtp.payload_type == 96 and rtp.ssrc == 0
    if name.startswith("rtp_note"):
        assert rtp.commands and rtp.journal is not None


def test_a_real_clients_rtcp_is_read_despite_the_zeroed_sdes_header():
    report = sfront.read_rtcp(sfront.verified(KEY, golden("rtcp_sr_report_block")))
    assert report.highest is not None and not report.bye
    signed = parse(golden("invite_signed_rtp"))
    assert report.ssrc == int(signed.call_id) & 0xFFFFFFFF
    assert sfront.read_rtcp(sfront.verified(KEY, golden("rtcp_sr"))).highest is None
    assert sfront.read_rtcp(sfront.verified(KEY, golden("rtcp_bye"))).bye
