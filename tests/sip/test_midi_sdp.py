"""The sans-IO parts of RTP-MIDI calls: SDP offer/answer, RTCP, the call's media, the demux."""

import os

from hypothesis import given, strategies as st

from gateway.midi import MidiEvent
from gateway.protocols.rtpmidi.payload import RtpMidiPacket, command_section, rtp_header
from gateway.protocols.rtpmidi.stream import prepare
from gateway.protocols.sip import midi_sdp, rtcp, sfront
from gateway.protocols.sip.midi_call import RTCP, RTP, Heard, MidiCall
from gateway.protocols.sip.sdp import Sdp
from tests.sip.rtcp_peer import receiver_report, sender_report_time
from tests.sip.uas_agents import MIDI_OFFER, PCMU_OFFER

NOW = 1_800_000_000.0
GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def offer(media="m=audio 42000 RTP/AVP 96\r\na=rtpmap:96 rtp-midi/44100\r\n", session=""):
    return ("v=0\r\no=x 7 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            + session + media).encode()


def test_a_plain_rtp_midi_offer_is_taken_as_it_comes():
    taken = midi_sdp.read_offer(MIDI_OFFER)
    assert isinstance(taken, midi_sdp.MidiOffer)
    assert (taken.payload_type, taken.clock_rate, taken.address, taken.rtcp_address) == (
        96, 44100, ("127.0.0.1", 42000), ("127.0.0.1", 42001))
    assert taken.journal and taken.send and taken.receive and taken.guard_seconds is None
    answer = Sdp.parse(midi_sdp.answer(taken, "127.0.0.9", 6200, 5))
    assert answer.connection() == "127.0.0.9"
    assert answer.media() == ("audio", 6200, "RTP/AVP", ("96",))
    assert answer.rtpmap() == (96, "rtp-midi", 44100)
    assert answer.attribute("rtcp") == "6201" and answer.attribute("fmtp") is None


def test_the_first_rtp_midi_format_is_chosen_among_others_and_rtcp_attributes_are_read():
    taken = midi_sdp.read_offer(offer(
        "m=audio 42000 RTP/AVP 0 97 96\r\na=rtpmap:97 mpeg4-generic/48000\r\n"
        "a=fmtp:97 streamtype=5; mode=AAC-hbr\r\na=rtpmap:96 rtp-midi/32000\r\n"
        "a=rtcp:43001 IN IP4 127.0.0.3\r\na=recvonly\r\n"))
    assert (taken.payload_type, taken.clock_rate) == (96, 32000)
    assert taken.rtcp_address == ("127.0.0.3", 43001)
    assert (taken.direction, taken.send, taken.receive) == ("sendonly", True, False)


def test_direction_at_session_level_and_rtcp_mux():
    taken = midi_sdp.read_offer(offer("m=audio 42000 RTP/AVP 96\r\na=rtpmap:96 rtp-midi/44100"
                                      "\r\na=rtcp-mux\r\n", session="a=sendonly\r\n"))
    assert taken.direction == "recvonly" and not taken.send and taken.receive
    assert taken.rtcp_mux and taken.rtcp_address == taken.address
    assert b"a=rtcp-mux" in midi_sdp.answer(taken, "127.0.0.1", 6200, 1)


def test_sfronts_own_form_is_rtp_midi():
    taken = midi_sdp.read_offer(offer(
        "m=audio 5004 RTP/AVP 96\r\na=rtpmap:96 pre1-mpeg4-generic/44100\r\n"
        "a=fmtp:96 streamtype=5; mode=rtp-midi; guardtime=44100\r\n"))
    assert taken.encoding == "pre1-mpeg4-generic" and taken.guard_seconds == 1.0
    fmtp = Sdp.parse(midi_sdp.answer(taken, "127.0.0.1", 6200, 1)).attribute("fmtp")
    assert "mode=rtp-midi" in fmtp and "guardtime=44100" in fmtp


def test_phones_ipv6_and_nothing_usable():
    assert isinstance(midi_sdp.read_offer(PCMU_OFFER), midi_sdp.PhoneOffer)
    ipv6 = offer().replace(b"c=IN IP4 127.0.0.1", b"c=IN IP6 ::1")
    assert midi_sdp.read_offer(ipv6).code == 301
    assert midi_sdp.read_offer(offer("m=video 5000 RTP/AVP 31\r\n")).code == 304
    assert midi_sdp.read_offer(offer("m=audio 5000 RTP/SAVP 96\r\na=rtpmap:96 rtp-midi/44100"
                                     "\r\n")).code == 302
    refused = midi_sdp.read_offer(b"\xff\xfe")
    assert refused.status == 488 and refused.warning("h").startswith('399 h "')


@given(st.binary(max_size=600))
def test_any_bytes_are_an_offer_a_phone_or_a_refusal(data):
    assert isinstance(midi_sdp.read_offer(data),
                      (midi_sdp.MidiOffer, midi_sdp.PhoneOffer, midi_sdp.Refused))


@given(st.text(alphabet="=;a_ -jsecnoruptdlmvh0123456789", max_size=80))
def test_any_fmtp_is_honoured_or_refused(fmtp):
    taken = midi_sdp.read_offer(offer("m=audio 42000 RTP/AVP 96\r\na=rtpmap:96 rtp-midi/44100"
                                      f"\r\na=fmtp:96 {fmtp}\r\n"))
    assert isinstance(taken, (midi_sdp.MidiOffer, midi_sdp.Refused))
    if isinstance(taken, midi_sdp.MidiOffer):
        midi_sdp.answer(taken, "127.0.0.1", 6200, 1)


# --- RTCP ------------------------------------------------------------------------------

def test_our_reports_read_back():
    report = rtcp.compound(0x1111, NOW, 0x2222, 70000, lost=3, sent=(5, 6, 7), bye=True)
    assert rtcp.is_rtcp(report) and not rtcp.is_rtcp(rtp_header(1, 2, 3, True, 96))
    assert rtcp.read(report, 0x2222) == (0x1111, 70000, True, None)
    assert rtcp.read(rtcp.compound(0x1111, NOW), 0x2222) == (0x1111, None, False, None)
    assert rtcp.read(report, 0x3333).highest is None        # a block about someone else


def test_a_receiver_report_about_our_sr_gives_the_round_trip():
    # Our SR left at NOW; the peer held it 0.25 s (DLSR) and its RR came 0.3 s later.
    _, last_sr = sender_report_time(rtcp.compound(0x1111, NOW, sent=(0, 1, 160)))
    report = receiver_report(0x2222, 0x1111, last_sr, held=0.25)
    assert abs(rtcp.read(report, 0x1111, NOW + 0.3).round_trip - 0.05) < 1e-4
    # No SR of ours heard (LSR 0), another's block, or no arrival time: no reading.
    assert rtcp.read(receiver_report(0x2222, 0x1111), 0x1111, NOW).round_trip is None
    assert rtcp.read(report, 0x3333, NOW + 0.3).round_trip is None
    assert rtcp.read(report, 0x1111).round_trip is None
    # A block that would put the round trip before our SR is no reading either.
    assert rtcp.read(report, 0x1111, NOW + 0.1).round_trip is None


@given(st.binary(max_size=200))
def test_any_bytes_are_a_report_or_a_value_error(data):
    try:
        rtcp.read(data, 1)
    except ValueError:
        pass


# --- the call's media --------------------------------------------------------------------

def media(fmtp="", **options):
    taken = midi_sdp.read_offer(offer("m=audio 42000 RTP/AVP 96\r\na=rtpmap:96 rtp-midi/44100"
                                      + (f"\r\na=fmtp:96 {fmtp}" if fmtp else "") + "\r\n"))
    return MidiCall(taken, 0xAB, 10, NOW, NOW, **options)


def test_received_midi_is_heard_and_the_first_packet_latches_the_address():
    call = media()
    packet = rtp_header(1, 0, 0xCA11, True, 96) + command_section([(0, b"\x90\x3c\x64")], False)
    [heard] = call.receive(packet, ("127.0.0.1", 42010), NOW, RTP)
    assert type(heard) is Heard and [e.data for e in heard.events] == [b"\x90\x3c\x64"]
    assert call.rtp_to == ("127.0.0.1", 42010)
    other = rtp_header(2, 0, 0xBAD, True, 96) + command_section([], False)
    [drop] = call.receive(other, ("127.0.0.1", 42010), NOW, RTP)
    assert drop.reason == "unexpected_ssrc"
    [drop] = call.receive(packet, ("127.0.0.2", 1), NOW, RTP)
    assert drop.reason == "unknown_source"


def test_reports_keepalives_and_the_silence_timeout():
    call = media("guardtime=4410", timeout=10)
    prepared, _ = prepare([MidiEvent(b"\x90\x3c\x64", NOW)], 44100)
    [data] = call.packets(prepared, 0, NOW)
    assert RtpMidiPacket.parse(data).journal is None        # nothing to repair yet
    sends = call.timer(NOW + 5.0)
    vias = sorted(send.via for send in sends)
    assert vias == [RTCP, RTP]          # a keep-alive (guardtime) and our report
    assert call.timer(NOW + 10.5)[-1].reason == "media_timeout"
    assert call.timer(NOW + 11) == [] and call.close(NOW + 11) == []


@given(st.binary(max_size=300), st.sampled_from([RTP, RTCP]))
def test_any_datagram_is_heard_or_dropped(data, via):
    call = media()
    for action in call.receive(data, ("127.0.0.1", 42000), NOW, via):
        assert type(action).__name__ in ("Heard", "Drop")


# --- the shared UDP port -------------------------------------------------------------------

def test_every_datagram_a_real_sfront_client_sent_is_told_apart_from_rfc_3261():
    names = [name for name in os.listdir(GOLDEN) if name.endswith(".bin")
             and not name.startswith(("rtp", "rtcp"))]
    assert len(names) >= 10
    for name in names:
        with open(os.path.join(GOLDEN, name), "rb") as stream:
            assert sfront.speaks_sfront(stream.read()), name
    assert not sfront.speaks_sfront(MIDI_OFFER.replace(b"v=0", b"INVITE sip:x SIP/2.0\r\nv=0"))
    assert not sfront.speaks_sfront(b"\r\n\r\n") and not sfront.speaks_sfront(b"")
