"""Outgoing RTP-MIDI: a fan-out encoded once, per-peer streams with journal and guard packets."""

from gateway.midi import MidiEvent
from gateway.protocols.rtpmidi.journal_receiver import JournalReceiver
from gateway.protocols.rtpmidi.journal_sender import JournalSender
from gateway.protocols.rtpmidi.payload import RtpMidiPacket
from gateway.protocols.rtpmidi.session import CLOCK_RATE
from gateway.protocols.rtpmidi.stream import (
    GUARD_DELAYS, MAX_LIST_OCTETS, OutgoingStream, prepare,
)

NOTE_ON = bytes((0x90, 60, 100))
NOTE_OFF = bytes((0x80, 60, 0))


def test_prepared_packet_is_what_the_codec_builds_for_every_peer():
    events = [MidiEvent(NOTE_ON, 1.0), MidiEvent(bytes((0xE0, 0, 64)), 1.0015)]
    [prepared], refused = prepare(events, CLOCK_RATE)
    assert refused == []
    streams = [OutgoingStream(0xABCD, sequence, JournalSender()) for sequence in (7, 0xFFFF)]
    for stream in streams:
        sequence = stream.sequence
        packet = RtpMidiPacket.parse(stream.packet(prepared, 5000, 1.0))
        assert packet == RtpMidiPacket(sequence, 5000, 0xABCD,
                                       [(0, NOTE_ON), (15, bytes((0xE0, 0, 64)))])
        assert stream.sequence == (sequence + 1) & 0xFFFF


def test_a_received_list_is_forwarded_as_it_came():
    # Running status and a three-octet delta: not what prepare() would encode itself.
    sent = RtpMidiPacket(9, 700, 0x51, [(0, NOTE_ON), (20000, bytes((0x90, 64, 90)))])
    received = RtpMidiPacket.parse(bytes(sent))
    assert received.midi_list == bytes(sent)[13:]
    messages = [message for _, message in received.commands]
    [prepared], refused = prepare([MidiEvent(message) for message in messages], CLOCK_RATE,
                                  received.midi_list)
    assert refused == [] and prepared.messages == messages
    stream = OutgoingStream(0xABCD, 3, None)
    assert RtpMidiPacket.parse(stream.packet(prepared, 5000, 1.0)) == RtpMidiPacket(
        3, 5000, 0xABCD, received.commands)


def test_a_list_starting_with_a_delta_is_not_forwarded_as_it_came():
    received = RtpMidiPacket.parse(bytes(RtpMidiPacket(9, 700, 0x51, [(5, NOTE_ON)])))
    assert received.midi_list is None


def test_journal_follows_from_the_second_packet_and_an_empty_one_is_left_out():
    [on], _ = prepare([MidiEvent(NOTE_ON, 0.0)], CLOCK_RATE)
    [off], _ = prepare([MidiEvent(NOTE_OFF, 0.1)], CLOCK_RATE)
    stream = OutgoingStream(1, 100, JournalSender())
    first = RtpMidiPacket.parse(stream.packet(on, 0, 0.0))
    second = RtpMidiPacket.parse(stream.packet(off, 1000, 0.1))
    assert first.journal is None
    assert second.journal.checkpoint == 100 and second.journal.channels[0].notes.logs
    stream.acknowledge(101)
    [bend], _ = prepare([MidiEvent(bytes((0xE0, 0, 64)), 0.2)], CLOCK_RATE)
    third = RtpMidiPacket.parse(stream.packet(bend, 2000, 0.2))
    assert third.journal.checkpoint == 101


def test_lists_are_split_and_oversized_ones_refused():
    events = [MidiEvent(bytes((0xB0, index % 128, 1)), 0.0) for index in range(400)]
    packets, refused = prepare(events, CLOCK_RATE)
    assert refused == [] and len(packets) == 2
    assert all(len(packet.section) <= MAX_LIST_OCTETS + 2 for packet in packets)
    assert sum(len(packet.messages) for packet in packets) == 400
    sysex = b"\xf0" + bytes(5000) + b"\xf7"
    packets, refused = prepare([MidiEvent(NOTE_ON, 0.0), MidiEvent(sysex, 0.0)], CLOCK_RATE)
    assert len(packets) == 1 and len(refused) == 1


def test_guard_packets_repair_a_lost_last_packet():
    stream = OutgoingStream(1, 0, JournalSender())
    receiver = JournalReceiver()
    [on], _ = prepare([MidiEvent(NOTE_ON, 0.0)], CLOCK_RATE)
    [off], _ = prepare([MidiEvent(NOTE_OFF, 1.0)], CLOCK_RATE)
    receiver.receive(RtpMidiPacket.parse(stream.packet(on, 0, 0.0)))
    stream.packet(off, 10_000, 1.0)                          # lost
    assert stream.guard_packet(10_100, 1.0 + GUARD_DELAYS[0] / 2) is None
    guards = [stream.guard_packet(10_000 + int(delay * 10_000), 1.0 + delay)
              for delay in GUARD_DELAYS]
    assert stream.guard_packet(20_000, 2.0) is None
    first = RtpMidiPacket.parse(guards[0])
    assert first.commands == [] and first.sequence == 2
    assert receiver.receive(first) == [(0, NOTE_OFF)]
    assert receiver.repaired_gaps == 1 and not receiver.snapshot()[0]["notes"]


def test_no_guard_packet_once_everything_is_acknowledged_or_without_journal():
    stream = OutgoingStream(1, 0, JournalSender())
    [on], _ = prepare([MidiEvent(NOTE_ON, 0.0)], CLOCK_RATE)
    stream.packet(on, 0, 0.0)
    stream.packet(on, 1, 0.0)
    stream.acknowledge(1)
    assert stream.guard_packet(500, GUARD_DELAYS[0]) is not None   # still covers packet 1
    stream.acknowledge(2)
    assert stream.guard_packet(2500, GUARD_DELAYS[1]) is None
    plain = OutgoingStream(1, 0, None)
    assert RtpMidiPacket.parse(plain.packet(on, 0, 0.0)).journal is None
    assert plain.guard_packet(10_000, 1.0) is None
