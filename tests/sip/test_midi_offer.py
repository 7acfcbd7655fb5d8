"""Our RTP-MIDI SDP offer (RFC 6295 §6.1, RFC 3264 §5) and reading the answer to it."""

import pytest

from gateway.protocols.sip import midi_sdp


def answer(media="m=audio 40000 RTP/AVP 96\r\na=rtpmap:96 rtp-midi/44100\r\n", extra=""):
    return ("v=0\r\no=b 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n"
            + media + extra).encode()


def test_the_offer_is_one_rtp_midi_stream_both_ways():
    body = midi_sdp.offer("192.0.2.10", 6200, 42)
    assert body == (b"v=0\r\no=netgateway 42 42 IN IP4 192.0.2.10\r\ns=netgateway\r\n"
                    b"c=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 6200 RTP/AVP 96\r\n"
                    b"a=rtpmap:96 rtp-midi/44100\r\na=rtcp:6201\r\na=sendrecv\r\n")
    # It is an offer the gateway's own answerer accepts as it is.
    offer = midi_sdp.read_offer(body)
    assert offer.address == ("192.0.2.10", 6200) and offer.journal and offer.send
    again = midi_sdp.read_answer(midi_sdp.answer(offer, "192.0.2.20", 6300, 1))
    assert again.address == ("192.0.2.20", 6300) and again.rtcp_address == ("192.0.2.20", 6301)


def test_the_answer_sets_where_our_media_goes_and_what_the_answerer_wants():
    stream = midi_sdp.read_answer(answer(extra="a=fmtp:96 j_sec=none; guardtime=8820\r\n"
                                               "a=rtcp:40005\r\na=recvonly\r\n"))
    assert stream.address == ("192.0.2.20", 40000) and stream.rtcp_address == (
        "192.0.2.20", 40005)
    assert not stream.journal and stream.guard_seconds == pytest.approx(0.2)
    assert stream.send and not stream.receive          # it only receives: we only send
    assert stream.payload_type == 96 and stream.clock_rate == 44100


@pytest.mark.parametrize("body, words", [
    (None, "no SDP answer"), (b"", "no SDP answer"), (b"garbage", "unreadable"),
    (answer("m=audio 0 RTP/AVP 96\r\na=rtpmap:96 rtp-midi/44100\r\n"), "refused the rtp-midi"),
    (answer("m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"), "no rtp-midi"),
    (answer("m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 rtp-midi/48000\r\n"), "clock rate"),
    (answer(extra="m=video 5000 RTP/AVP 31\r\n"), "2 m= lines"),
    (answer(extra="a=fmtp:96 tsmode=async\r\n"), "tsmode")])
def test_answers_we_cannot_use_are_refused_with_a_reason(body, words):
    refused = midi_sdp.read_answer(body)
    assert isinstance(refused, midi_sdp.Refused) and words in refused.text, refused
