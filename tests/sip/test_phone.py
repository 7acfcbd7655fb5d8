"""A phone call's media on a fake clock: RTP in and out, frame pacing, keys to notes."""

import random
import struct

import numpy
import pytest
from hypothesis import given, strategies as st

from gateway.midi import MidiEvent, NoteTracker, is_note_off, is_note_on, note_off, note_on
from gateway.protocols.sip.phone import (
    AudioSender, FrameClock, MalformedPacket, PhoneCall, parse_rtp,
)
from gateway.protocols.sip.phone_audio import PCMA, PCMU, decode_ulaw

START = 1_800_000_000.0
FRAME = 0.02
EVENT_PT = 101
PHONE_SSRC = 0x1234ABCD


def event_packet(sequence, timestamp, event, duration, end=False, marker=False,
                 payload_type=EVENT_PT):
    header = struct.pack("!BBHII", 0x80, payload_type | (0x80 if marker else 0), sequence,
                         timestamp, PHONE_SSRC)
    return header + struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)


def make_call(**options):
    options.setdefault("event_payload_type", EVENT_PT)
    return PhoneCall(START, ssrc=0xCAFE, sequence=65530, timestamp=0xFFFFFF00, **options)


def header_of(datagram):
    first, second, sequence, timestamp, ssrc = struct.unpack_from("!BBHII", datagram)
    return first, second >> 7, second & 0x7F, sequence, timestamp, ssrc


# RTP -------------------------------------------------------------------------------
def test_parse_rtp_skips_csrcs_extension_and_padding():
    header = struct.pack("!BBHII", 0xB2, 0x80 | EVENT_PT, 7, 8000, PHONE_SSRC)   # P, X, CC=2
    csrcs = struct.pack("!II", 1, 2)
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xaa\x00\x00"
    padding = b"\x00\x00\x03"
    packet = parse_rtp(header + csrcs + extension + b"\x05\x0a\x01\x90" + padding)
    assert packet == (EVENT_PT, True, 7, 8000, PHONE_SSRC, b"\x05\x0a\x01\x90")


@pytest.mark.parametrize("datagram", [
    b"", b"\x80\x00\x00", b"\x40" + bytes(11), b"\x8f" + bytes(11),          # short, v1, CSRCs
    b"\x90" + bytes(11) + b"\x00\x00", b"\x90" + bytes(11) + b"\x00\x00\x00\x09",
    b"\xa0" + bytes(11) + b"\x05",                                         # padding overruns
])
def test_malformed_rtp_is_refused(datagram):
    with pytest.raises(MalformedPacket):
        parse_rtp(datagram)


def test_audio_sender_packets():
    sender = AudioSender(ssrc=0xCAFE, sequence=0xFFFF, timestamp=0xFFFFFFA0, payload_type=PCMA)
    first = sender.packet(0, b"\xd5" * 160)
    second = sender.packet(1, b"\xd5" * 160)
    assert header_of(first) == (0x80, 1, PCMA, 0xFFFF, 0xFFFFFFA0, 0xCAFE)
    assert header_of(second) == (0x80, 0, PCMA, 0, 0x40, 0xCAFE)      # both wrap
    assert len(first) == 12 + 160
    with pytest.raises(ValueError):
        AudioSender(1, 1, 1, payload_type=3)


# Pacing ------------------------------------------------------------------------------
def test_frames_are_due_every_20_ms():
    clock = FrameClock(START)
    assert list(clock.due(START - 0.0051)) == []
    assert list(clock.due(START - 0.001)) == [0]          # a little early is on time
    assert list(clock.due(START + 0.005)) == []
    assert list(clock.due(START + 0.02)) == [1]
    assert list(clock.due(START + 0.0405)) == [2]
    assert clock.next_due() == pytest.approx(START + 0.06)
    assert (clock.sent, clock.late, clock.skipped) == (3, 0, 0)


def test_a_late_tick_catches_up_a_bounded_number_and_counts():
    clock = FrameClock(START, max_catch_up=3)
    clock.due(START)
    assert list(clock.due(START + 0.034)) == [1]          # 14 ms late: counted
    assert clock.late == 1
    assert list(clock.due(START + 0.2)) == [8, 9, 10]     # 2-7 owed too: skipped
    assert clock.skipped == 6
    assert clock.late == 3                                # 8 and 9 were late, 10 on time
    assert list(clock.due(START + 0.22)) == [11]
    assert list(clock.due(START + 0.236)) == [12]         # 4 ms early


@pytest.mark.parametrize("accumulate", [False, True])
def test_ten_minutes_of_jittery_ticks_stay_on_time(accumulate):
    """30,000 frames: none lost, none late, the last one's timestamp exact."""
    call = make_call()
    rng = random.Random(11)
    now = START - FRAME
    frames = 0
    last = None
    for tick in range(30_000):
        if accumulate:
            now += FRAME                                  # a clock that adds up its rounding
            at = now + rng.uniform(-0.004, 0.004)
        else:
            at = START + tick * FRAME + rng.uniform(-0.004, 0.004)
        packets = call.tick(at).packets
        frames += len(packets)
        if packets:
            last = packets[-1]
    clock = call.clock
    assert clock.skipped == 0 and clock.late == 0
    assert frames == clock.sent == clock.next_frame
    assert 29_999 <= frames <= 30_000
    sequence, timestamp = header_of(last)[3:5]
    assert timestamp == (0xFFFFFF00 + (frames - 1) * 160) & 0xFFFFFFFF
    assert sequence == (65530 + frames - 1) & 0xFFFF


def test_a_stall_skips_frames_with_a_marker_and_a_timestamp_jump():
    call = make_call()
    call.play([MidiEvent(note_on(0, 69, 100))])
    call.tick(START)
    call.tick(START + 0.02)
    packets = call.tick(START + 0.5).packets              # the reactor was busy for 480 ms
    assert len(packets) == 3
    assert call.clock.skipped == 21                       # 2 ... 22; 23, 24, 25 are sent
    headers = [header_of(packet) for packet in packets]
    assert [marker for _, marker, *_ in headers] == [1, 0, 0]
    assert headers[0][4] == (0xFFFFFF00 + 23 * 160) & 0xFFFFFFFF
    assert [header[3] for header in headers] == [(65532 + index) & 0xFFFF for index in range(3)]
    assert call.counters["frames_skipped"] == 21


# The call ------------------------------------------------------------------------------
def test_first_packet_has_the_marker_and_silence_is_sent_when_nothing_plays():
    call = make_call(audio_payload_type=PCMU)
    [first] = call.tick(START).packets
    [second] = call.tick(START + FRAME).packets
    assert header_of(first) == (0x80, 1, PCMU, 65530, 0xFFFFFF00, 0xCAFE)
    assert header_of(second)[1] == 0
    assert first[12:] == b"\xff" * 160


def test_dtmf_digits_become_notes_and_the_caller_hears_them():
    call = make_call()
    events = call.receive(event_packet(1, 8000, 5, 160, marker=True), START)
    assert [event.data for event in events] == [note_on(0, 67, 100)]
    assert events[0].time == START
    assert call.receive(event_packet(2, 8000, 5, 320), START + 0.02) == []
    sound = decode_ulaw(b"".join(
        packet[12:] for step in range(10) for packet in call.tick(START + step * FRAME).packets))
    assert numpy.abs(sound.astype(float)).max() > 3000
    ended = call.receive(event_packet(3, 8000, 5, 480, end=True), START + 0.04)
    assert [event.data for event in ended] == [note_off(0, 67)]
    for sequence in (4, 5):                               # the E retransmissions
        assert call.receive(event_packet(sequence, 8000, 5, 480, end=True), START + 0.05) == []
    assert call.counters["digits"] == 1
    assert call.counters["event_duplicates"] == 2


def test_hear_keys_off_leaves_the_phone_silent():
    call = make_call(hear_keys=False)
    call.receive(event_packet(1, 8000, 1, 160), START)
    assert call.tick(START).packets[0][12:] == b"\xff" * 160


def test_a_digit_whose_end_is_lost_ends_in_tick():
    call = make_call(event_timeout=0.25)
    call.receive(event_packet(1, 8000, 9, 160), START)
    assert call.tick(START + 0.2).events == []
    events = call.tick(START + 0.26).events
    assert [event.data for event in events] == [note_off(0, 74)]
    assert call.counters["digits_timed_out"] == 1


def test_the_session_is_heard_at_its_pitch():
    call = make_call(audio_payload_type=PCMA)
    call.play([MidiEvent(note_on(3, 69, 110))])
    audio = []
    for step in range(60):
        for packet in call.tick(START + step * FRAME).packets:
            audio.append(packet[12:])
    from gateway.protocols.sip.phone_audio import decode_alaw
    samples = decode_alaw(b"".join(audio[10:])).astype(float)
    spectrum = numpy.abs(numpy.fft.rfft(samples * numpy.hanning(len(samples))))
    assert abs(spectrum.argmax() * 8000 / len(samples) - 440) < 3


def test_hang_up_releases_every_key_and_stops_the_stream():
    call = make_call(keypad=None)
    call.receive(event_packet(1, 8000, 2, 160), START)
    events = call.hang_up(START + 1)
    assert [event.data for event in events] == [note_off(0, 62)]
    assert call.hang_up(START + 2) == []
    assert call.tick(START + 3) == ([], [])


def test_the_callers_audio_and_other_payload_types_are_counted_and_dropped():
    call = make_call()
    audio = struct.pack("!BBHII", 0x80, PCMU, 1, 0, PHONE_SSRC) + b"\x7f" * 160
    comfort_noise = struct.pack("!BBHII", 0x80, 13, 2, 0, PHONE_SSRC) + b"\x40"
    assert call.receive(audio, START) == [] and call.receive(comfort_noise, START) == []
    assert call.receive(b"\x00garbage", START) == []
    assert call.receive(event_packet(3, 0, 1, 10)[:-1], START) == []   # a cut event payload
    counters = call.counters
    assert (counters["audio_received"], counters["unknown_payload_type"],
            counters["malformed"]) == (1, 1, 2)


def test_without_a_negotiated_event_type_no_digits_are_read():
    call = make_call(event_payload_type=None)
    assert call.receive(event_packet(1, 0, 1, 160), START) == []
    assert call.counters["unknown_payload_type"] == 1


@given(st.lists(st.binary(max_size=40), max_size=30), st.data())
def test_arbitrary_datagrams_never_raise_and_never_leave_a_note(datagrams, data):
    call = make_call()
    tracker = NoteTracker()
    now = START
    for datagram in datagrams:
        if data.draw(st.booleans()):
            # Well-formed headers with fuzzed event payloads reach the DTMF code.
            datagram = event_packet(1, data.draw(st.integers(0, 5000)), 0, 0)[:12] + datagram
        now += 0.03
        for event in call.receive(datagram, now) + call.tick(now).events:
            assert is_note_on(event.data) or is_note_off(event.data)
            tracker.observe(event.data)
    for event in call.hang_up(now):
        tracker.observe(event.data)
    assert tracker.sounding == frozenset()
