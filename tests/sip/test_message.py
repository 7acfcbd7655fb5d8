"""The SIP message model: sfront's dialect and RFC 3261's, parsed and written."""

import pytest
from hypothesis import given, strategies as st

from gateway.protocols.sip import sfront
from gateway.protocols.sip.message import (
    RFC3261, MalformedMessage, Request, Response, Via, parse,
)
from gateway.protocols.sip.sdp import MalformedSdp, Sdp

# The shape of a real client's first INVITE (sfront.md §2.1), LF lines and a NUL.
SFRONT_INVITE = (
    b"INVITE sip:yYyUa/wTDUBMVnpUgiGNEw==@127.0.0.1:5060 SIP/2.0\n"
    b"i: 6869619084028907834\nv: SIP/2.0/UDP 127.0.0.2:5004\nc: application/sdp\n"
    b"f: sip:unknown@vm\nt: sip:yYyUa/wTDUBMVnpUgiGNEw==@127.0.0.1:5060\nCSeq: 1\n"
    b"User-Agent: sfront/0.98 07/21/10\n\n"
    b"v=0\no=unknown 6869619084028907834 0 IN IP4 vm\ns=yYyUa/wTDUBMVnpUgiGNEw==\n"
    b"a=tool:sfront 0.98 07/21/10\nt=3973622400 0\nm=audio 5004 RTP/AVP 96\n"
    b"c=IN IP4 127.0.0.2\na=rtpmap:96 pre1-mpeg4-generic/44100\n"
    b"a=fmtp:96 streamtype=5; mode=rtp-midi; guardtime=44100\n\0")


def test_an_sfront_invite_parses_with_compact_names():
    message = parse(SFRONT_INVITE)
    assert isinstance(message, Request) and message.method == "INVITE"
    assert message.call_id == "6869619084028907834" and message.cseq == (1, None)
    assert message.get("Via") == message.get("v") == "SIP/2.0/UDP 127.0.0.2:5004"
    assert message.get("content-type") == "application/sdp"
    assert message.body.startswith(b"v=0\n") and message.body.endswith(b"guardtime=44100\n")
    sdp = Sdp.parse(message.body)
    assert sdp.origin().session_id == 6869619084028907834
    assert sdp.media().port == 5004 and sdp.connection() == "127.0.0.2"
    assert sdp.rtpmap() == (96, "pre1-mpeg4-generic", 44100)
    assert sdp.start_time() == 3973622400 - 2208988800


def test_an_sfront_message_written_in_its_dialect_is_byte_identical():
    message = parse(SFRONT_INVITE)
    assert message.to_bytes(sfront.DIALECT) == SFRONT_INVITE


def test_the_rfc3261_dialect_writes_crlf_long_names_and_content_length():
    message = parse(SFRONT_INVITE)
    data = message.to_bytes(RFC3261)
    assert b"\r\nCall-ID: 6869619084028907834\r\n" in data and b"\nVia: SIP/2.0/UDP" in data
    assert f"Content-Length: {len(message.body)}\r\n\r\n".encode() in data
    again = parse(data)
    assert again.body == message.body and again.call_id == message.call_id


def test_a_status_line_without_reason_is_what_sfront_answers():
    response = parse(b"SIP/2.0 200\ni: 5\nCSeq: 1\n\n")
    assert isinstance(response, Response) and (response.status, response.reason) == (200, "")
    assert Response(200, "", [("i", "5")]).to_bytes(sfront.DIALECT) == b"SIP/2.0 200\ni: 5\n\0"


def test_folded_headers_spaces_around_the_colon_and_content_length():
    message = parse(b"OPTIONS sip:x@y SIP/2.0\r\nSubject : one\r\n  two\r\nContent-Length: 3"
                    b"\r\n\r\nabcdef")
    assert message.get("subject") == "one two" and message.body == b"abc"


@pytest.mark.parametrize("data", [
    b"", b"\0\0", b"HELLO\n\n", b"INVITE sip:x SIP/1.0\n\n", b"SIP/2.0 2000 OK\n\n",
    b"INVITE sip:x SIP/2.0\nno colon here\n\n", b"INVITE sip:x SIP/2.0\n continued\n\n",
    b"INVITE sip:x SIP/2.0\nContent-Length: 10\n\nshort", b"INVITE sip:x SIP/2.0\n\xff: x\n\n",
    b"INVITE sip:x SIP/2.0\n" + b"a: b\n" * 65 + b"\n"])
def test_what_is_not_a_sip_message_raises_malformedmessage(data):
    with pytest.raises(MalformedMessage):
        parse(data)


@given(st.binary(max_size=500))
def test_parse_raises_only_malformedmessage(data):
    try:
        parse(data)
    except MalformedMessage:
        pass


@given(st.binary(max_size=300))
def test_sdp_parse_raises_only_malformedsdp(data):
    try:
        sdp = Sdp.parse(data)
        for read in (sdp.origin, sdp.media, sdp.connection, sdp.rtpmap, sdp.start_time):
            try:
                read()
            except MalformedSdp:
                pass
    except MalformedSdp:
        pass


def test_via_parse_and_received_rport():
    via = Via.parse("SIP/2.0/UDP 10.0.0.2:5004;branch=z9hG4bK1;rport")
    assert (via.transport, via.host, via.port) == ("UDP", "10.0.0.2", 5004)
    assert via.has("rport") and via.param("branch") == "z9hG4bK1"
    assert str(via.with_received("198.18.0.7", 40000)) == (
        "SIP/2.0/UDP 10.0.0.2:5004;branch=z9hG4bK1;received=198.18.0.7;rport=40000")
    ipv6 = Via.parse("SIP/2.0/UDP [::1]:5060")
    assert (ipv6.host, ipv6.port, str(ipv6)) == ("::1", 5060, "SIP/2.0/UDP [::1]:5060")


@pytest.mark.parametrize("value", ["", "SIP/2.0 host", "SIP/2.0/UDP :5060",
                                   "SIP/2.0/UDP host:99999", "HTTP/1.1/TCP host"])
def test_bad_vias_raise_valueerror(value):
    with pytest.raises(ValueError):
        Via.parse(value)
