"""The RTP-MIDI media core on its own: no AppleMIDI, any clock rate (sans-IO)."""

import pytest

from gateway.protocols.rtpmidi.journal_sender import JournalSender
from gateway.protocols.rtpmidi.media import RtpMidiStream
from gateway.protocols.rtpmidi.payload import RtpMidiPacket
from gateway.protocols.rtpmidi.stream import OutgoingStream, prepare
from gateway.midi import MidiEvent

SDP_RATE = 44100
NOTE_ON = bytes((0x90, 60, 100))
NOTE_OFF = bytes((0x80, 60, 0))


def stream(rate=SDP_RATE, latetime=1.0, journal=True):
    return RtpMidiStream(0x1234, 100, rate, clock_base=0.0, latetime=latetime,
                         journal=journal)


def arrive(packet):
    return RtpMidiPacket.parse(bytes(packet), lazy_journal=True)


def test_deltas_count_in_the_negotiated_clock_rate():
    received = stream().receive(arrive(RtpMidiPacket(1, 5000, 0x51, [
        (0, NOTE_ON), (SDP_RATE // 2, NOTE_OFF)])), now=10.0)
    assert [(event.data, event.time) for event in received.events] == [
        (NOTE_ON, 10.0), (NOTE_OFF, 10.5)]
    assert received.late == 0


def test_a_received_list_of_channel_messages_can_go_on_as_it_came():
    sent = RtpMidiPacket(1, 0, 0x51, [(0, NOTE_ON), (7, bytes((0x90, 64, 90)))])
    received = stream().receive(arrive(sent), now=1.0)
    assert received.midi_list == bytes(sent)[13:]
    [prepared], _ = prepare(received.events, SDP_RATE, received.midi_list)
    assert prepared.section == bytes(sent)[12:]


def test_a_late_note_on_is_dropped_once_the_peer_clock_is_known_and_note_offs_never():
    media = stream(latetime=0.1)
    old = [(0, NOTE_ON), (0, NOTE_OFF)]
    # Before a clock sync nothing is late.
    assert len(media.receive(arrive(RtpMidiPacket(1, 0, 0x51, old)), now=5.0).events) == 2
    media.clock_offset = 0.0            # the signalling measured the peer's clock
    received = media.receive(arrive(RtpMidiPacket(2, 0, 0x51, old)), now=5.0)
    assert [event.data for event in received.events] == [NOTE_OFF]
    assert received.late == 1 and received.midi_list is None and media.late_dropped == 1
    fresh = media.ticks(5.0)
    on_time = media.receive(arrive(RtpMidiPacket(3, fresh, 0x51, [(0, NOTE_ON)])), now=5.0)
    assert [event.data for event in on_time.events] == [NOTE_ON]


def test_sysex_segments_join_across_packets_but_never_across_a_loss():
    media = stream()
    start, end = bytes((0xF0, 1, 2, 0xF0)), bytes((0xF7, 3, 0xF7))
    assert media.receive(arrive(RtpMidiPacket(1, 0, 0x51, [(0, start)])), 1.0).events == []
    [whole] = media.receive(arrive(RtpMidiPacket(2, 0, 0x51, [(0, end)])), 1.0).events
    assert whole.data == bytes((0xF0, 1, 2, 3, 0xF7))
    media.receive(arrive(RtpMidiPacket(3, 0, 0x51, [(0, start)])), 1.0)
    after_gap = media.receive(arrive(RtpMidiPacket(5, 0, 0x51, [(0, end)])), 1.0)
    assert after_gap.events == []


def test_a_lost_note_off_is_repaired_from_the_peer_journal():
    sender = OutgoingStream(0x51, 1, JournalSender())
    [on], _ = prepare([MidiEvent(NOTE_ON, 0.0)], SDP_RATE)
    [off], _ = prepare([MidiEvent(NOTE_OFF, 0.1)], SDP_RATE)
    [bend], _ = prepare([MidiEvent(bytes((0xE0, 0, 64)), 0.2)], SDP_RATE)
    media = stream()
    media.receive(arrive(RtpMidiPacket.parse(sender.packet(on, 0, 0.0))), 1.0)
    sender.packet(off, 4410, 0.1)                    # lost on the way
    received = media.receive(RtpMidiPacket.parse(sender.packet(bend, 8820, 0.2),
                                                 lazy_journal=True), 1.2)
    datas = [event.data for event in received.events]
    assert datas[-1] == bytes((0xE0, 0, 64))
    assert any(data[0] & 0xF0 == 0x80 and data[1] == 60 for data in datas[:-1])
    assert media.journal_receiver.repaired_gaps == 1


def test_feedback_moves_the_journal_checkpoint():
    media = stream()
    [on], _ = prepare([MidiEvent(NOTE_ON, 0.0)], SDP_RATE)
    sequences = [RtpMidiPacket.parse(media.packet(on, tick, 0.0)).sequence for tick in (0, 5, 9)]
    media.feedback(sequences[-1])      # AppleMIDI RS or an RTCP receiver report
    guard = RtpMidiPacket.parse(media.guard_packet(20, 1.0))
    assert guard.commands == [] and guard.journal.checkpoint == sequences[-1]


@pytest.mark.parametrize("rate", [10_000, 44_100, 48_000])
def test_ticks_follow_the_clock_rate_from_the_signalled_origin(rate):
    media = RtpMidiStream(1, 0, rate, clock_base=100.0, latetime=1.0)
    assert media.ticks(101.0) == rate
