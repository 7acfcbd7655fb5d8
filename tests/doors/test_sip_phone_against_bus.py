"""Phones at the SIP door against a recording bus: keys in as notes, the session out as sound.

The door runs on the in-memory network and clock of tests/rtpmidi/test_door.py
(the test advances the reactor, so the 20 ms pacer ticks exactly on time) with
the user agent doubles of tests/sip/uas_agents.py offering PCMU/PCMA and
telephone-event the way phones do.
"""

import struct

import numpy
import pytest

from gateway.bus import values
from gateway.config import ConfigError, parse
from gateway.midi import MidiEvent
from gateway.protocols.sip import metrics, phone_audio, rtcp
from gateway.protocols.sip.phone import parse_rtp
from gateway.protocols.sip.sdp import Sdp
from tests.doors.test_sip_uas_against_bus import (  # noqa: F401  (the suite's Gateway)
    AGENT, ALICE, NOW, Gateway, _tag, media_port,
)
from tests.sip.rtcp_peer import receiver_report, sender_report_time
from tests.sip.sfront_double import DEMO_PASSPHRASE
from tests.sip.uas_agents import PCMU_OFFER, Agent

PHONE_RTP = ("127.0.0.1", 40002)
PHONE_RTCP = ("127.0.0.1", 40003)
FRAME = 0.02


def offer(formats="0 8 101", rtpmaps=("0 PCMU/8000", "8 PCMA/8000",
                                       "101 telephone-event/8000"), extra=""):
    body = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio 40002 RTP/AVP {formats}\r\n")
    body += "".join(f"a=rtpmap:{value}\r\n" for value in rtpmaps)
    return (body + extra + "a=sendrecv\r\n").encode()


def phone_call(gateway, body=PCMU_OFFER, agent=None, roster=()):
    agent = agent or Agent(user="phil")
    gateway.invite(agent, body)
    [pending] = gateway.bus.pending()
    membership = pending.accept(roster)
    [ok] = gateway.replies()
    assert ok.status == 200, ok
    gateway.send(agent.ack("sip:demo@127.0.0.1", agent.cseq, _tag(ok)))
    return agent, membership, ok


class Keypad:
    """RFC 4733 telephone-event packets as a phone sends them (every 20 ms, E bit x3)."""

    def __init__(self, payload_type=101, ssrc=0xF00D):
        self.payload_type = payload_type
        self.ssrc = ssrc
        self.sequence = 0
        self.timestamp = 8000

    def packet(self, digit, duration, end=False, marker=False):
        self.sequence += 1
        code = "0123456789*#ABCD".index(digit)
        header = struct.pack("!BBHII", 0x80, self.payload_type | (0x80 if marker else 0),
                             self.sequence, self.timestamp, self.ssrc)
        return header + struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)

    def press(self, digit, packets=3):
        """The packets of a press: ``packets`` updates, then three end packets."""
        out = [self.packet(digit, 160 * (index + 1), marker=index == 0)
               for index in range(packets)]
        out += [self.packet(digit, 160 * packets, end=True) for _ in range(3)]
        self.timestamp += 160 * (packets + 2)
        return out


def audio(sequence=1, ssrc=0xF00D, payload_type=0):
    return struct.pack("!BBHII", 0x80, payload_type, sequence, sequence * 160, ssrc) + \
        b"\xff" * 160


def frames_to_phone(gateway, destination=PHONE_RTP):
    return [parse_rtp(data) for data in gateway.reactor.take(destination)
            if not rtcp.is_rtcp(data)]


def tick(gateway, frames=1):
    for _ in range(frames):
        gateway.reactor.advance(FRAME)


def notes(membership):
    return [bytes(event.data) for events, _ in membership.published for event in events]


# --- offer and answer ----------------------------------------------------------------------

def test_a_pcmu_offer_joins_the_bus_and_is_answered_with_pcmu_and_telephone_event(gateway):
    agent = Agent(user="phil")
    gateway.invite(agent, PCMU_OFFER)
    [pending] = gateway.bus.joins
    assert (pending.request.session, pending.request.name, pending.request.door) == (
        "demo", "phil", "sip")
    assert gateway.replies() == []              # no answer before the bus's
    pending.accept()
    [ok] = gateway.replies()
    sdp = Sdp.parse(ok.body)
    media = sdp.media()
    assert (media.kind, media.protocol, media.formats) == ("audio", "RTP/AVP", ("0", "101"))
    assert sdp.connection() == "127.0.0.1" and media.port % 2 == 0
    attributes = [value for kind, value in sdp.lines if kind == "a"]
    assert attributes[:4] == ["rtpmap:0 PCMU/8000", "rtpmap:101 telephone-event/8000",
                              "fmtp:101 0-15", "ptime:20"]
    assert "sendrecv" in attributes and f"rtcp:{media.port + 1}" in attributes
    assert gateway.door.agents.counts["phone_calls_answered_udp"] == 1


@pytest.mark.parametrize("formats, rtpmaps, answered", [
    ("8 0 101", ("8 PCMA/8000", "0 PCMU/8000", "101 telephone-event/8000"), ("0", "101")),
    ("8 96", ("8 PCMA/8000", "96 telephone-event/8000"), ("8", "96")),
    ("0", (), ("0",)),                              # static type, no rtpmap, no keys
    ("9 0 13 101 100", ("9 G722/8000", "101 telephone-event/8000",
                        "100 telephone-event/48000"), ("0", "101")),
])
def test_pcmu_is_preferred_then_pcma_and_telephone_event_keeps_its_offered_type(
        gateway, formats, rtpmaps, answered):
    _, _, ok = phone_call(gateway, offer(formats, rtpmaps))
    assert Sdp.parse(ok.body).media().formats == answered


def test_an_offer_without_pcmu_or_pcma_is_refused_with_a_warning(gateway):
    [refused] = gateway.invite(Agent(), offer("9", ("9 G722/8000",)))
    assert refused.status == 488 and "rtp-midi" in refused.get("warning")
    assert gateway.bus.joins == []


def test_phones_can_be_turned_away():
    gateway = Gateway({"phone": {"enabled": False}})
    [refused] = gateway.invite(Agent(), PCMU_OFFER)
    assert refused.status == 488 and "audio-only" in refused.get("warning")
    assert gateway.bus.joins == [] and gateway.door.agents.counts["phone_offers_refused"] == 1
    gateway.door.stopService()


# --- keys in ---------------------------------------------------------------------------------

def test_dtmf_digits_become_notes_with_a_note_off_when_the_digit_ends(gateway):
    _, membership, ok = phone_call(gateway)
    port = media_port(ok)
    keypad = Keypad()
    for packet in keypad.press("5"):
        gateway.send(packet, PHONE_RTP, port)
    assert notes(membership) == [b"\x90\x43\x64", b"\x80\x43\x40"]      # 5: G4
    for packet in keypad.press("#") + keypad.press("1"):
        gateway.send(packet, PHONE_RTP, port)
    assert notes(membership)[2:] == [b"\x90\x48\x64", b"\x80\x48\x40"]  # #: an octave up
    status = gateway.door.status()["user_agents"]
    assert status["phone"]["digits"] == 3 and status["media_packets"]["event_in"] == 18


def test_a_digit_whose_end_is_lost_ends_after_the_event_timeout(gateway):
    _, membership, ok = phone_call(gateway)
    keypad = Keypad()
    gateway.send(keypad.packet("2", 160, marker=True), PHONE_RTP, media_port(ok))
    assert notes(membership) == [b"\x90\x3e\x64"]
    tick(gateway, 15)
    assert notes(membership) == [b"\x90\x3e\x64", b"\x80\x3e\x40"]


def test_the_keypad_map_comes_from_the_config():
    gateway = Gateway({"phone": {"keypad": {1: "A3", "2": 72, "3": "sustain"},
                                 "channel": 3, "velocity": 90}})
    _, membership, ok = phone_call(gateway)
    keypad = Keypad()
    for digit in "123":
        for packet in keypad.press(digit):
            gateway.send(packet, PHONE_RTP, media_port(ok))
    assert notes(membership) == [b"\x92\x39\x5a", b"\x82\x39\x40", b"\x92\x48\x5a",
                                 b"\x82\x48\x40", b"\xb2\x40\x7f"]
    gateway.door.stopService()


def test_a_wrong_keypad_map_is_a_config_error_that_names_each_key():
    section = {"uas": {"phone": {"keypad": {"5": "H9", "X": 60, "7": 200}}}}
    with pytest.raises(ConfigError) as raised:
        parse({"sessions": [{"name": "demo", "passphrase": DEMO_PASSPHRASE}], "sip": section})
    message = str(raised.value)
    assert "sip.uas.phone.keypad.5: expected a note number" in message
    assert "sip.uas.phone.keypad.X: not a DTMF key" in message
    assert "sip.uas.phone.keypad.7: note 200 is outside MIDI's 0-127" in message


# --- sound out -------------------------------------------------------------------------------

def test_frames_go_out_every_20_ms_and_sound_what_the_session_plays(gateway):
    _, membership, ok = phone_call(gateway)
    tick(gateway, 10)
    silent = frames_to_phone(gateway)
    assert len(silent) == 10
    assert [frame.sequence - silent[0].sequence for frame in silent] == list(range(10))
    assert [frame.timestamp - silent[0].timestamp for frame in silent] == \
        [160 * index for index in range(10)]
    assert silent[0].marker and all(frame.payload_type == 0 for frame in silent)
    assert all(len(frame.payload) == 160 for frame in silent)
    assert max(abs(phone_audio.decode(b"".join(f.payload for f in silent), 0))) < 8
    gateway.bus.fan_out([MidiEvent(b"\x90\x45\x64", NOW)], ALICE)       # A4, 440 Hz
    tick(gateway, 25)
    heard = phone_audio.decode(b"".join(f.payload for f in frames_to_phone(gateway)[5:]), 0)
    spectrum = numpy.abs(numpy.fft.rfft(heard * numpy.hanning(len(heard))))
    peak = numpy.argmax(spectrum) * 8000 / len(heard)
    assert abs(peak - 440) < 10, peak
    assert gateway.door.agents.phone_counts()["frames_late"] == 0


def test_the_caller_hears_its_own_keys(gateway):
    _, _, ok = phone_call(gateway)
    tick(gateway, 3)
    frames_to_phone(gateway)
    keypad = Keypad()
    gateway.send(keypad.packet("6", 160, marker=True), PHONE_RTP, media_port(ok))
    tick(gateway, 5)
    heard = phone_audio.decode(b"".join(f.payload for f in frames_to_phone(gateway)), 0)
    assert numpy.abs(heard).max() > 1000


def test_frames_follow_the_phones_rtp_to_where_it_comes_from(gateway):
    _, _, ok = phone_call(gateway)
    tick(gateway, 2)
    assert len(frames_to_phone(gateway)) == 2
    natted = ("127.0.0.1", 51000)
    gateway.send(audio(), natted, media_port(ok))
    tick(gateway, 3)
    assert frames_to_phone(gateway) == [] and len(frames_to_phone(gateway, natted)) == 3


def test_one_pacer_ticks_every_phone_call_on_the_same_tick(gateway):
    phone_call(gateway, agent=Agent(user="one"))
    gateway.reactor.advance(0.007)
    phone_call(gateway, agent=Agent(user="two", address=("127.0.0.1", 5072)))
    pacer = gateway.door.agents.pacer
    assert pacer.loop.running and len(pacer.calls) == 2
    ticks = pacer.ticks
    tick(gateway, 50)
    assert pacer.ticks - ticks == 50
    # Both calls' frames go out on the ticks, none late, whenever each call began.
    assert len(gateway.reactor.take(PHONE_RTP)) >= 99
    assert gateway.door.agents.phone_counts()["frames_late"] == 0


def test_media_from_another_host_is_refused_and_counted(gateway):
    _, membership, ok = phone_call(gateway)
    gateway.send(Keypad().packet("1", 160, marker=True), ("10.1.1.1", 4000), media_port(ok))
    assert membership.published == [] and gateway.drops.get("sip", "unknown_source") == 1


def test_garbage_on_the_media_port_is_counted_and_never_raises(gateway):
    _, membership, ok = phone_call(gateway)
    for data in (b"", b"\x00" * 3, b"\x80\x65" + b"\x00" * 10 + b"\x01\x02", b"\xc0" * 40,
                 bytes(range(256))):
        gateway.send(data, PHONE_RTP, media_port(ok))
        gateway.send(data, PHONE_RTCP, media_port(ok) + 1)
    assert membership.published == []
    assert gateway.door.agents.media_counts()["malformed_in"] >= 5


def test_the_phones_receiver_reports_give_the_members_round_trip(gateway):
    _, membership, ok = phone_call(gateway)
    tick(gateway, frames=260)                 # past the first report, an SR: frames went out
    [sr] = [data for data in gateway.reactor.take(PHONE_RTCP) if data[1] == rtcp.SR]
    sent_at, last_sr = sender_report_time(sr)
    ours = struct.unpack_from("!I", sr, 4)[0]
    gateway.reactor.advance(0.08)
    gateway.send(receiver_report(0xF00D, ours, last_sr, held=0.03), PHONE_RTCP,
                 media_port(ok) + 1)
    [latency] = membership.latencies
    expected = (gateway.reactor.seconds() - sent_at - 0.03) * 1000
    assert expected > 0 and abs(latency - expected) < 0.1


# --- hanging up -------------------------------------------------------------------------------

def test_hanging_up_releases_the_keys_still_down_before_leaving(gateway):
    agent, membership, ok = phone_call(gateway)
    keypad = Keypad()
    gateway.send(keypad.packet("3", 160, marker=True), PHONE_RTP, media_port(ok))
    gateway.send(agent.request("BYE", "sip:demo@127.0.0.1", to_tag=_tag(ok)))
    assert [r.status for r in gateway.replies()] == [200]
    assert notes(membership) == [b"\x90\x40\x64", b"\x80\x40\x40"]
    assert membership.left == ["bye"]
    assert rtcp.read(gateway.reactor.take(PHONE_RTCP)[-1], 0).bye
    pacer = gateway.door.agents.pacer
    assert not pacer.loop.running and pacer.calls == {}
    assert gateway.door.agents.members == {}


def test_a_sustain_pedal_latched_on_the_keypad_is_released_on_hang_up():
    gateway = Gateway({"phone": {"keypad": {"0": "sustain"}}})
    agent, membership, ok = phone_call(gateway)
    for packet in Keypad().press("0"):
        gateway.send(packet, PHONE_RTP, media_port(ok))
    gateway.send(agent.request("BYE", "sip:demo@127.0.0.1", to_tag=_tag(ok)))
    assert notes(membership) == [b"\xb0\x40\x7f", b"\xb0\x40\x00"]
    gateway.door.stopService()


def test_a_phone_that_stops_sending_is_hung_up_after_the_media_timeout(gateway):
    _, membership, ok = phone_call(gateway)
    gateway.send(audio(), PHONE_RTP, media_port(ok))
    for _ in range(29):
        gateway.reactor.advance(1.0)
        gateway.send(rtcp.compound(0xF00D, NOW), PHONE_RTCP, media_port(ok) + 1)
    assert membership.left == []                 # RTCP alone keeps it alive
    gateway.reactor.advance(31)
    assert membership.left == ["media_timeout"]
    assert any(r.method == "BYE" for r in gateway.replies() if hasattr(r, "method"))


def test_the_bus_kicking_a_phone_sends_our_bye_and_stops_its_frames(gateway):
    _, membership, _ = phone_call(gateway)
    gateway.bus.kick(membership, "kicked")
    [bye] = gateway.replies()
    assert bye.method == "BYE"
    gateway.reactor.take(PHONE_RTP)
    tick(gateway, 3)
    assert frames_to_phone(gateway) == []


def test_a_refused_join_answers_busy_and_opens_nothing(gateway):
    gateway.invite(Agent(), PCMU_OFFER)
    gateway.bus.joins[0].refuse(values.SESSION_FULL)
    [busy] = gateway.replies()
    assert busy.status == 486 and gateway.door.agents.members == {}
    assert not gateway.door.agents.pacer.loop.running


# --- operator's view ---------------------------------------------------------------------------

def test_status_and_metrics_count_phone_calls_frames_and_digits(gateway):
    _, membership, ok = phone_call(gateway)
    for packet in Keypad().press("9"):
        gateway.send(packet, PHONE_RTP, media_port(ok))
    tick(gateway, 10)
    status = gateway.door.status()["user_agents"]
    assert status["phone_calls"] == 1 and status["calls_by_transport"]["UDP"] == 1
    assert status["phone"]["frames_sent"] >= 10 and status["phone"]["digits"] == 1
    [described] = [membership.member.describe()]
    assert described["codec"] == "PCMU" and described["telephone_event"] == 101
    samples = {(family.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in metrics.SipCollector(gateway.door).collect()
               for sample in family.samples}
    assert samples[("netgateway_sip_uas_phone_calls", ())] == 1
    assert samples[("netgateway_sip_uas_phone_frames", (("kind", "sent"),))] >= 10
    assert samples[("netgateway_sip_uas_phone_frames", (("kind", "late"),))] == 0
    assert samples[("netgateway_sip_uas_phone_digits", ())] == 1
    assert DEMO_PASSPHRASE not in repr(status)
