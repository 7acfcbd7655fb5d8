"""Phone calls' SDP offer/answer (audio_sdp.py) and media (audio_call.py), sans-IO."""

import struct

from hypothesis import given, strategies as st

from gateway.actions import Drop, PeerLeft, Send
from gateway.protocols.sip import rtcp
from gateway.protocols.sip.audio_call import AudioCall
from gateway.protocols.sip.audio_sdp import AudioOffer, audio_answer, read_audio_offer
from gateway.protocols.sip.midi_call import RTCP, RTP, Heard
from gateway.protocols.sip.midi_sdp import PhoneOffer, Refused, read_offer
from gateway.protocols.sip.sdp import Sdp

NOW = 1_800_000_000.0
PHONE = ("127.0.0.1", 40002)


def sdp(media, session="", extra_media=""):
    return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            + session + media + extra_media).encode()


BARESIP = sdp("m=audio 40002 RTP/AVP 0 8 96 10 97 98 99 100 11 101 102 103 104\r\n"
              "a=rtpmap:96 L16/48000/2\r\na=rtpmap:97 L16/32000/2\r\na=rtpmap:98 L16/16000/2\r\n"
              "a=rtpmap:99 L16/8000/2\r\na=rtpmap:100 L16/48000\r\na=rtpmap:102 L16/32000\r\n"
              "a=rtpmap:103 L16/16000\r\na=rtpmap:104 L16/8000\r\n"
              "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n")


def test_midi_sdp_hands_baresips_offer_to_the_phone_side_and_it_is_read():
    assert isinstance(read_offer(BARESIP), PhoneOffer)
    offer = read_audio_offer(BARESIP)
    assert (offer.payload_type, offer.event_payload_type) == (0, 101)
    assert offer.address == PHONE and offer.rtcp_address == ("127.0.0.1", 40003)
    assert offer.send and offer.receive and offer.direction == "sendrecv"


def test_directions_rtcp_and_rtcp_mux_are_answered_in_kind():
    offer = read_audio_offer(sdp("m=audio 40002 RTP/AVP 8\r\na=sendonly\r\na=rtcp-mux\r\n"))
    assert offer.direction == "recvonly" and not offer.send and offer.receive
    assert offer.rtcp_mux and offer.rtcp_address == PHONE
    answer = Sdp.parse(audio_answer(offer, "127.0.0.9", 6200, 5))
    values = [value for kind, value in answer.lines if kind == "a"]
    assert answer.media().formats == ("8",) and "rtcp-mux" in values and "recvonly" in values
    offer = read_audio_offer(sdp("m=audio 40002 RTP/AVP 0\r\na=rtcp:41000 IN IP4 10.0.0.2\r\n",
                                 session="a=recvonly\r\n"))
    assert offer.rtcp_address == ("10.0.0.2", 41000) and offer.direction == "sendonly"


def test_lines_not_taken_are_answered_with_port_zero():
    body = sdp("m=video 5000 RTP/AVP 31\r\n", extra_media="m=audio 40002 RTP/AVP 0\r\n")
    offer = read_audio_offer(body)
    assert offer.media_index == 1
    lines = [value for kind, value in Sdp.parse(audio_answer(offer, "h", 6200, 1)).lines
             if kind == "m"]
    assert lines == ["video 0 RTP/AVP 31", "audio 6200 RTP/AVP 0"]


def test_offers_it_cannot_serve_are_refused():
    assert isinstance(read_audio_offer(sdp("m=audio 40002 RTP/AVP 9\r\n")), Refused)
    assert isinstance(read_audio_offer(b"\xff\xfe"), Refused)
    refused = read_audio_offer(b"v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\n"
                               b"m=audio 40002 RTP/AVP 0\r\n")
    assert refused.code == 301


def audio_offer(**changes):
    fields = dict(payload_type=0, event_payload_type=101, address=PHONE,
                  rtcp_address=("127.0.0.1", 40003), send=True, receive=True,
                  direction="sendrecv", rtcp_mux=False, media_index=0,
                  media_lines=("audio 40002 RTP/AVP 0 101",))
    fields.update(changes)
    return AudioOffer(**fields)


def event(digit, duration, end=False, sequence=1, timestamp=800):
    return (struct.pack("!BBHII", 0x80, 101, sequence, timestamp, 0xABC)
            + struct.pack("!BBH", "0123456789*#ABCD".index(digit), 0x80 * end | 10, duration))


def test_keys_are_heard_and_the_call_times_out_with_its_notes_released():
    call = AudioCall(audio_offer(), 1, 2, 3, NOW, timeout=10)
    [heard] = call.receive(event("7", 160), PHONE, NOW, RTP)
    assert type(heard) is Heard and [bytes(e.data) for e in heard.events] == [b"\x90\x47\x64"]
    assert call.rtp_latched and call.remote_ssrc == 0xABC
    actions = call.timer(NOW + 10.5)
    kinds = [type(action) for action in actions]
    assert kinds == [Send, Heard, Send, PeerLeft]        # report, note-off, RTCP BYE, gone
    assert [bytes(e.data) for e in actions[1].events] == [b"\x80\x47\x40"]
    assert rtcp.read(actions[2].data, 0).bye
    assert call.close(NOW + 11) == []


def test_a_sendonly_answer_ignores_keys_and_a_recvonly_one_sends_nothing():
    call = AudioCall(audio_offer(receive=False, direction="sendonly"), 1, 2, 3, NOW)
    [drop] = call.receive(event("1", 160), PHONE, NOW, RTP)
    assert drop.reason == "not_receiving"
    call = AudioCall(audio_offer(send=False, direction="recvonly"), 1, 2, 3, NOW)
    assert call.frames(NOW + 0.1) == ([], [])


def test_rtcp_from_the_phone_keeps_it_alive_and_is_counted():
    call = AudioCall(audio_offer(), 1, 2, 3, NOW, timeout=10)
    assert call.receive(rtcp.compound(0xABC, NOW), ("127.0.0.1", 40003), NOW + 9, RTCP) == []
    assert not [a for a in call.timer(NOW + 15) if type(a) is PeerLeft]
    assert call.counts["rtcp_in"] == 1


@given(st.binary(max_size=300), st.sampled_from([RTP, RTCP]))
def test_arbitrary_datagrams_never_raise(data, via):
    call = AudioCall(audio_offer(rtcp_mux=via == RTCP), 1, 2, 3, NOW)
    for action in call.receive(data, PHONE, NOW, via):
        assert type(action) in (Drop, Heard)
    call.frames(NOW + 0.02)
