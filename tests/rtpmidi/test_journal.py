"""RFC 6295 recovery journal: wire format, sender and receiver semantics, loss simulation."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.rtpmidi.journal_receiver import JournalReceiver
from gateway.protocols.rtpmidi.journal_sender import JournalSender
from gateway.protocols.rtpmidi.journal_wire import (
    ChannelJournal, ControllerChapter, ExtrasChapter, Journal, MalformedPacket, NoteChapter,
    ParameterChapter, PitchChapter, PolyPressureChapter, PressureChapter, ProgramChapter,
    SystemJournal,
)
from gateway.protocols.rtpmidi.payload import RtpMidiPacket

from .test_payload import golden

# -- wire format ------------------------------------------------------------


def test_macos_journal_fields():
    journal = RtpMidiPacket.parse(golden("macos_running_status_two_channels")).journal
    assert (journal.s_bit, journal.h_bit, journal.checkpoint) == (False, False, 17020)
    first, second = journal.channels
    assert (first.s_bit, first.channel, first.h_bit) == (False, 0, False)
    assert first.notes.b_bit and first.notes.low == 6 and first.notes.offbits == b"\x0d\x50"
    assert first.notes.off_notes == [52, 53, 55, 57, 59]
    assert (second.s_bit, second.channel) == (True, 9)
    assert second.notes.off_notes == [36, 37, 38]
    for name in ("program", "controllers", "parameters", "pitch", "extras", "pressure",
                 "poly_pressure"):
        assert getattr(first, name) is None and getattr(second, name) is None


def test_macos_journal_bytes_round_trip():
    for name in ("macos_note_on_chapter_n", "macos_running_status_two_channels",
                 "macos_control_change_chapters_c_n"):
        data = golden(name)
        journal_bytes = data[12 + 1 + (data[12] & 0x0F):]
        journal = Journal.parse(journal_bytes)
        assert bytes(journal) == journal_bytes


def test_channel_journal_chapters_p_w_t_bytes():
    journal = Journal(0x1234, [ChannelJournal(
        3, program=ProgramChapter(5, 1, 2, bank_valid=True), pitch=PitchChapter(0x00, 0x40),
        pressure=PressureChapter(0x7F), s_bit=True)], s_bit=True)
    data = bytes(journal)
    assert data == bytes.fromhex("a0 1234  98 09 92  05 81 02  00 40  7f")
    assert Journal.parse(data) == journal


def test_chapters_c_e_a_bytes():
    channel = ChannelJournal(
        0, controllers=ControllerChapter([(False, 7, False, 100), (True, 64, False, 127)]),
        extras=ExtrasChapter([(False, 60, True, 40)]),
        poly_pressure=PolyPressureChapter([(False, 61, False, 9)]))
    data = bytes(Journal(1, [channel]))
    assert data[3:] == bytes.fromhex("00 0e 45  01 07 64 c0 7f  00 3c a8  00 3d 09")
    assert Journal.parse(data).channels == [channel]


def test_note_chapter_from_off_notes():
    chapter = NoteChapter.with_off_notes([(False, 60, True, 100)], [48, 53, 55, 71])
    assert (chapter.low, chapter.offbits) == (6, b"\x85\x00\x01")
    assert chapter.off_notes == [48, 53, 55, 71]


def test_note_chapter_128_logs_use_len_127_low_15_high_0():
    logs = [(False, note, True, 1) for note in range(128)]
    data = bytes(Journal(1, [ChannelJournal(0, notes=NoteChapter(logs))]))
    assert data[6:8] == b"\x7f\xf0"
    assert Journal.parse(data).channels[0].notes.logs == logs


def test_note_chapter_127_logs_without_bitmap_avoid_the_128_code():
    logs = [(False, note, True, 1) for note in range(127)]
    data = bytes(Journal(1, [ChannelJournal(0, notes=NoteChapter(logs))]))
    assert data[6:8] == b"\x7f\xf1"
    assert len(Journal.parse(data).channels[0].notes.logs) == 127


def test_system_journal_and_chapter_m_are_skipped_by_length():
    data = bytes.fromhex("60 0010  44 06 aa bb cc dd  00 09 30  00 04 ab cd  20 40  11 22")
    journal = Journal.parse(data)
    assert journal.system.chapters == "DX" and journal.system.raw == bytes.fromhex("4406aabbccdd")
    [channel] = journal.channels
    assert channel.parameters == ParameterChapter(bytes.fromhex("0004abcd"))
    assert channel.pitch.value == 0x20 | 0x40 << 7
    assert bytes(journal) == data[:-2]


@pytest.mark.parametrize("hex_data, reason", [
    ("20", "header truncated"),
    ("20 0001", "channel journal header truncated"),
    ("20 0001 00 02 00", "LENGTH 2"),
    ("20 0001 00 09 08 00 66", "LENGTH 9"),
    ("20 0001 00 04 08 00", "overruns"),
    ("20 0001 00 05 08 00 66", "overruns"),
    ("20 0001 00 05 02 7f 00", "unused"),
    ("20 0001 00 05 20 00 01", "chapter M LENGTH 1"),
    ("40 0001 00 01", "system journal LENGTH 1"),
    ("40 0001 00", "system journal header truncated"),
    ("21 0001 00 04 02 7f", "channel journal header truncated"),
])
def test_malformed_journals(hex_data, reason):
    with pytest.raises(MalformedPacket, match=reason):
        Journal.parse(bytes.fromhex(hex_data))


flag = st.booleans()
seven = st.integers(0, 127)
log = st.tuples(flag, seven, flag, seven)
logs = st.lists(log, min_size=1, max_size=20)


@st.composite
def note_chapters(draw):
    note_logs = draw(st.lists(log, max_size=20))
    if draw(flag):
        low = draw(st.integers(0, 15))
        offbits = draw(st.binary(min_size=1, max_size=16 - low))
        return NoteChapter(note_logs, low, offbits, draw(flag))
    return NoteChapter(note_logs, b_bit=draw(flag))


channel_journals = st.builds(
    ChannelJournal, st.integers(0, 15),
    program=st.none() | st.builds(ProgramChapter, seven, seven, seven, flag, flag, flag),
    controllers=st.none() | st.builds(ControllerChapter, logs, flag),
    parameters=st.none() | st.builds(
        lambda body: ParameterChapter(bytes((0, len(body) + 2)) + body), st.binary(max_size=20)),
    pitch=st.none() | st.builds(PitchChapter, seven, seven, flag, flag),
    notes=st.none() | note_chapters(),
    extras=st.none() | st.builds(ExtrasChapter, logs, flag),
    pressure=st.none() | st.builds(PressureChapter, seven, flag),
    poly_pressure=st.none() | st.builds(PolyPressureChapter, logs, flag),
    s_bit=flag, h_bit=flag)
journals = st.builds(
    Journal, st.integers(0, 0xFFFF), st.lists(channel_journals, max_size=4),
    system=st.none() | st.builds(
        lambda flags, body: SystemJournal(bytes((flags & 0xFC, len(body) + 2)) + body),
        st.integers(0, 255), st.binary(max_size=20)),
    s_bit=flag, h_bit=flag)


@settings(max_examples=300, deadline=None)
@given(journals)
def test_any_journal_round_trips(journal):
    assert Journal.parse(bytes(journal)) == journal


@settings(max_examples=300, deadline=None)
@given(journals, st.lists(st.tuples(st.integers(0, 10), st.integers(0, 255)), max_size=3))
def test_journal_in_packet_round_trips(journal, commands):
    packet = RtpMidiPacket(1, 2, 3, [(delta, bytes((0xF8 | (v & 7),))) for delta, v in commands],
                           journal=journal)
    assert RtpMidiPacket.parse(bytes(packet)) == packet


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=60))
def test_arbitrary_journal_bytes_raise_only_malformed(data):
    try:
        journal = Journal.parse(data)
    except MalformedPacket:
        return
    assert Journal.parse(bytes(journal)) == journal


# -- sender -----------------------------------------------------------------

def send(sender, sequence, timestamp, messages):
    journal = sender.journal_for(sequence, timestamp)
    sender.record(sequence, timestamp, messages)
    return RtpMidiPacket(sequence, timestamp, 0x1234, [(0, m) for m in messages], journal)


def test_first_packet_has_no_journal():
    assert JournalSender().journal_for(500, 0) is None
    assert JournalSender().journal_octets(500, 0) is None


def test_sender_journals_note_on_then_off():
    sender = JournalSender()
    send(sender, 10, 0, [b"\x90\x3c\x64"])
    journal = sender.journal_for(11, 100)
    assert journal.checkpoint == 10 and journal.s_bit is False
    [channel] = journal.channels
    assert channel.s_bit is False and channel.notes.logs == [(False, 60, True, 100)]
    sender.record(11, 100, [])
    journal = sender.journal_for(12, 5000)
    assert journal.s_bit is True
    assert journal.channels[0].notes.logs == [(True, 60, False, 100)]
    sender.record(12, 5000, [b"\x80\x3c\x40"])
    notes = sender.journal_for(13, 5100).channels[0].notes
    assert notes.logs == [] and notes.off_notes == [60] and notes.b_bit is False


def test_sender_journals_controllers_program_pitch_pressures():
    sender = JournalSender()
    send(sender, 1, 0, [b"\xb2\x00\x01", b"\xb2\x20\x02", b"\xc2\x05", b"\xb2\x07\x64",
                        b"\xe2\x00\x50", b"\xd2\x30", b"\x92\x40\x50", b"\xa2\x40\x11"])
    [channel] = sender.journal_for(2, 0).channels
    assert channel.channel == 2
    assert channel.program == ProgramChapter(5, 1, 2, bank_valid=True)
    assert [(n, v) for _, n, _, v in channel.controllers.logs] == [(0, 1), (32, 2), (7, 100)]
    assert channel.pitch.value == 0x50 << 7
    assert channel.pressure.pressure == 0x30
    assert channel.poly_pressure.logs == [(False, 0x40, False, 0x11)]


def test_acknowledge_moves_checkpoint_and_trims():
    sender = JournalSender()
    for sequence in range(5):
        send(sender, sequence, 0, [bytes((0x90, 60 + sequence, 100))])
    sender.acknowledge(2)
    journal = sender.journal_for(5, 0)
    assert journal.checkpoint == 2
    assert [note for _, note, _, _ in journal.channels[0].notes.logs] == [62, 63, 64]
    sender.acknowledge(4)
    assert [note for _, note, _, _ in sender.journal_for(5, 0).channels[0].notes.logs] == [64]
    sender.record(5, 0, [])
    sender.acknowledge(5)
    assert sender.journal_octets(6, 0) is None
    sender.acknowledge(40000)           # never sent: ignored
    sender.acknowledge(1)               # older than the checkpoint: ignored
    assert sender.checkpoint == 5


def test_open_loop_history_is_bounded():
    sender = JournalSender(max_history=8)
    for sequence in range(100):
        send(sender, sequence, 0, [bytes((0x90, sequence, 100))])
    journal = sender.journal_for(100, 0)
    assert journal.checkpoint == 92
    assert [note for _, note, _, _ in journal.channels[0].notes.logs] == list(range(92, 100))
    assert len(sender.channels[0].note_stamps) == 8


def test_history_bound_holds_when_recording_starts_before_any_journal():
    sender = JournalSender(max_history=8)
    for sequence in range(100):
        sender.record(sequence, 0, [bytes((0x90, sequence, 100))])
    journal = sender.journal_for(100, 0)
    assert journal.checkpoint == 92
    assert [note for _, note, _, _ in journal.channels[0].notes.logs] == list(range(92, 100))


def test_sender_sequence_wraps():
    sender = JournalSender()
    send(sender, 0xFFFE, 0, [b"\x90\x3c\x64"])
    send(sender, 0xFFFF, 0, [])
    send(sender, 0, 0, [])
    journal = sender.journal_for(1, 0)
    assert journal.checkpoint == 0xFFFE and journal.channels[0].notes.logs
    sender.acknowledge(0)
    assert sender.checkpoint == 0 and sender.journal_for(1, 0) is None


def test_all_notes_off_and_reset_all_controllers_become_state():
    sender = JournalSender()
    send(sender, 1, 0, [b"\x90\x3c\x64", b"\x90\x3e\x64", b"\xb0\x40\x7f", b"\xe0\x10\x10"])
    send(sender, 2, 0, [])
    sender.acknowledge(2)
    send(sender, 3, 0, [b"\xb0\x7b\x00", b"\xb0\x79\x00"])
    [channel] = sender.journal_for(4, 0).channels
    assert channel.notes.off_notes == [60, 62] and channel.notes.logs == []
    controllers = {n: v for _, n, _, v in channel.controllers.logs}
    assert controllers[64] == 0 and 123 not in controllers and 121 not in controllers
    assert channel.pitch.value == 0x2000


# -- receiver ---------------------------------------------------------------

def stream(messages_per_packet, first_sequence=100):
    sender = JournalSender()
    return [send(sender, first_sequence + index, index * 10, messages)
            for index, messages in enumerate(messages_per_packet)], sender


def test_in_order_packets_pass_through():
    packets, _ = stream([[b"\x90\x3c\x64"], [b"\x80\x3c\x00"]])
    receiver = JournalReceiver()
    assert [receiver.receive(packet) for packet in packets] == [
        [(0, b"\x90\x3c\x64")], [(0, b"\x80\x3c\x00")]]
    assert receiver.lost_packets == 0


def test_lost_note_off_is_repaired_before_the_packet_commands():
    packets, _ = stream([[b"\x90\x3c\x64"], [b"\x80\x3c\x00"], [b"\x90\x40\x64"]])
    receiver = JournalReceiver()
    receiver.receive(packets[0])
    assert receiver.receive(packets[2]) == [(0, b"\x80\x3c\x00"), (0, b"\x90\x40\x64")]
    assert receiver.lost_packets == 1 and receiver.repaired_gaps == 1
    assert receiver.snapshot()[0]["notes"] == {0x40}


def test_lost_recent_note_on_is_played_old_one_only_on_request():
    sender = JournalSender(late_note_ticks=1000)
    first = send(sender, 1, 0, [b"\xf8"])
    send(sender, 2, 100, [b"\x90\x3c\x64"])
    recent = send(sender, 3, 500, [])
    receiver = JournalReceiver()
    receiver.receive(first)
    assert receiver.receive(recent) == [(0, b"\x90\x3c\x64")]

    old = send(sender, 4, 5000, [])
    strict, lenient = JournalReceiver(), JournalReceiver(sound_late_notes=True)
    for receiver in (strict, lenient):
        receiver.receive(first)
    assert strict.receive(old) == []
    assert lenient.receive(old) == [(0, b"\x90\x3c\x64")]


def test_restruck_note_is_retriggered_when_both_edges_were_lost():
    sender = JournalSender()
    receiver = JournalReceiver()
    receiver.receive(send(sender, 1, 0, [b"\x90\x3c\x10"]))
    receiver.receive(send(sender, 2, 10, [b"\xf8"]))
    sender.acknowledge(2)
    send(sender, 3, 20, [b"\x80\x3c\x00"])
    send(sender, 4, 30, [b"\x90\x3c\x70"])
    repaired = receiver.receive(send(sender, 5, 40, [b"\xf8"]))
    assert repaired == [(0, b"\x80\x3c\x00"), (0, b"\x90\x3c\x70"), (0, b"\xf8")]


def test_note_struck_inside_the_history_keeps_sounding():
    # The receiver cannot tell whether its NoteOn is the sender's latest one; it
    # keeps the note (sounding, as the sender's) rather than cutting it.
    packets, sender = stream([[b"\x90\x3c\x10"], [b"\x80\x3c\x00"], [b"\x90\x3c\x70"],
                              [b"\xf8"]])
    receiver = JournalReceiver()
    receiver.receive(packets[0])
    assert receiver.receive(packets[3]) == [(0, b"\xf8")]
    assert receiver.snapshot() == sender.snapshot()


def test_program_controllers_pitch_pressure_restored():
    packets, sender = stream([
        [b"\xf8"],
        [b"\xb1\x00\x02", b"\xb1\x20\x03", b"\xc1\x07", b"\xb1\x40\x7f", b"\xe1\x7f\x7f",
         b"\xd1\x22", b"\x91\x30\x40", b"\xa1\x30\x10"],
        [b"\xf8"]])
    receiver = JournalReceiver()
    receiver.receive(packets[0])
    repaired = receiver.receive(packets[2])
    assert [message for _, message in repaired][:3] == [b"\xb1\x00\x02", b"\xb1\x20\x03",
                                                        b"\xc1\x07"]
    assert receiver.snapshot() == sender.snapshot()


def test_late_and_duplicate_packets_are_dropped():
    packets, sender = stream([[b"\x90\x3c\x64"], [b"\x80\x3c\x00"], [b"\x90\x40\x64"]])
    receiver = JournalReceiver()
    receiver.receive(packets[0])
    receiver.receive(packets[2])
    assert receiver.receive(packets[1]) == [] and receiver.receive(packets[2]) == []
    assert receiver.late_packets == 2
    assert receiver.snapshot() == sender.snapshot()


def test_receiver_follows_sequence_wrap():
    packets, sender = stream([[b"\x90\x3c\x64"], [b"\x80\x3c\x00"], [b"\x90\x40\x64"],
                              [b"\xf8"]], first_sequence=0xFFFE)
    receiver = JournalReceiver()
    receiver.receive(packets[0])
    receiver.receive(packets[3])
    assert receiver.lost_packets == 2 and receiver.snapshot() == sender.snapshot()


def test_single_loss_with_s_bit_set_needs_no_repair():
    packets, _ = stream([[b"\x90\x3c\x64"], [b"\xf8"], [b"\xf8"]])
    receiver = JournalReceiver()
    receiver.receive(packets[0])
    assert packets[2].journal.s_bit is True
    assert receiver.receive(packets[2]) == [(0, b"\xf8")]


def test_gap_without_journal_is_counted():
    receiver = JournalReceiver()
    receiver.receive(RtpMidiPacket(1, 0, 0, [(0, b"\xf8")]))
    receiver.receive(RtpMidiPacket(3, 0, 0, [(0, b"\xf8")]))
    assert receiver.unrecoverable_gaps == 1 and receiver.lost_packets == 1


def test_macos_journal_releases_notes_after_a_gap():
    receiver = JournalReceiver()
    receiver.receive(RtpMidiPacket(17016, 0, 0, [(0, b"\x90\x30\x26"), (0, b"\x90\x35\x26")]))
    repaired = receiver.receive(RtpMidiPacket.parse(golden("macos_note_on_chapter_n")))
    assert repaired == [(0, b"\x80\x30\x00"), (0, b"\x80\x35\x00"), (0, b"\x90\x30\x26")]


# -- loss simulation --------------------------------------------------------

CHANNELS = (0, 1, 9)


def performance(rng, events=1000):
    """A seeded random performance: lists of messages, one list per packet."""
    sounding = set()
    packets = []
    while events > 0:
        messages = []
        for _ in range(rng.randint(1, 4)):
            channel = rng.choice(CHANNELS)
            roll = rng.random()
            held = sorted(note for note in sounding if note[0] == channel)
            if roll < 0.35:
                note = rng.randint(36, 96)
                messages.append(bytes((0x90 | channel, note, rng.randint(1, 127))))
                sounding.add((channel, note))
            elif roll < 0.65 and held:
                _, note = rng.choice(held)
                off = rng.choice([bytes((0x80 | channel, note, 64)), bytes((0x90 | channel, note, 0))])
                messages.append(off)
                sounding.discard((channel, note))
            elif roll < 0.72:
                messages.append(bytes((0xB0 | channel, 64, rng.choice((0, 127)))))
            elif roll < 0.82:
                messages.append(bytes((0xB0 | channel, rng.choice((1, 7, 10, 11, 74)),
                                       rng.randint(0, 127))))
            elif roll < 0.86:
                if rng.random() < 0.5:
                    messages += [bytes((0xB0 | channel, 0, rng.randint(0, 3))),
                                 bytes((0xB0 | channel, 32, rng.randint(0, 3)))]
                messages.append(bytes((0xC0 | channel, rng.randint(0, 127))))
            elif roll < 0.93:
                messages.append(bytes((0xE0 | channel, rng.randint(0, 127), rng.randint(0, 127))))
            elif roll < 0.96:
                messages.append(bytes((0xD0 | channel, rng.randint(0, 127))))
            elif roll < 0.99 and held:
                _, note = rng.choice(held)
                messages.append(bytes((0xA0 | channel, note, rng.randint(0, 127))))
            elif roll >= 0.995:
                messages.append(bytes((0xB0 | channel, 123, 0)))
                sounding = {note for note in sounding if note[0] != channel}
            else:
                messages.append(b"\xf8")
            events -= 1
        packets.append(messages)
    # Release everything, as a player lifting every key and pedal.
    packets.append([bytes((0x80 | channel, note, 0)) for channel, note in sorted(sounding)]
                   + [bytes((0xB0 | channel, 64, 0)) for channel in CHANNELS])
    return packets


def simulate(seed, acknowledge, loss=0.10, reorder=0.0, sound_late_notes=True):
    rng = random.Random(seed)
    sender = JournalSender()
    receiver = JournalReceiver(sound_late_notes=sound_late_notes)
    sequence = 65000 + rng.randint(0, 500)   # crosses the 16-bit wrap
    timestamp = rng.randint(0, 1 << 32)
    pending_acks = []
    held_back = None
    largest_journal = 0
    stuck_checks = 0

    def transmit(messages):
        nonlocal sequence, timestamp, held_back, largest_journal, stuck_checks
        sequence = (sequence + 1) & 0xFFFF
        timestamp = (timestamp + rng.randint(5, 400)) & 0xFFFFFFFF
        packet = send(sender, sequence, timestamp, messages)
        data = bytes(packet)
        if packet.journal is not None:
            largest_journal = max(largest_journal, len(bytes(packet.journal)))
        if rng.random() < loss:
            return False
        if held_back is None and rng.random() < reorder:
            held_back = data
            return False
        for datagram in [data] + ([held_back] if held_back is not None else []):
            receiver.receive(RtpMidiPacket.parse(datagram))
        held_back = None
        # After every packet that arrives, what sounds here is what the sender holds.
        for mine, theirs in zip(receiver.snapshot(), sender.snapshot()):
            if sound_late_notes:
                assert mine == theirs
            else:
                assert mine["notes"] <= theirs["notes"]
            stuck_checks += 1
        if acknowledge and rng.random() < 0.2:
            pending_acks.append((rng.randint(1, 6), sequence))
        return True

    for messages in performance(rng):
        transmit(messages)
        for ack in list(pending_acks):
            pending_acks.remove(ack)
            if ack[0] <= 1:
                if rng.random() > loss:
                    sender.acknowledge(ack[1])
            else:
                pending_acks.append((ack[0] - 1, ack[1]))
    # Guard packets (journal only) until one gets through, as a quiet sender would.
    while not transmit([]):
        pass
    assert receiver.snapshot() == sender.snapshot() or not sound_late_notes
    assert all(not channel["notes"] for channel in receiver.snapshot())
    return receiver, largest_journal, stuck_checks


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_loss_simulation_without_acknowledgements(seed):
    receiver, _, checks = simulate(seed, acknowledge=False)
    assert receiver.lost_packets > 20 and receiver.repaired_gaps > 20
    assert receiver.unrecoverable_gaps == 0 and checks > 500


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_loss_simulation_with_acknowledgements(seed):
    receiver, largest_journal, _ = simulate(seed, acknowledge=True)
    _, largest_without_acks, _ = simulate(seed, acknowledge=False)
    assert receiver.lost_packets > 20 and receiver.unrecoverable_gaps == 0
    assert largest_journal < largest_without_acks


@pytest.mark.parametrize("seed", [5, 6])
def test_loss_simulation_with_reordering(seed):
    receiver, _, _ = simulate(seed, acknowledge=True, reorder=0.05)
    assert receiver.late_packets > 0


@pytest.mark.parametrize("seed", [7, 8])
def test_loss_simulation_obeying_y_bits_leaves_no_stuck_notes(seed):
    simulate(seed, acknowledge=False, sound_late_notes=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), journals), min_size=1, max_size=6),
       st.booleans())
def test_receiver_survives_any_journal(arrivals, sound_late_notes):
    receiver = JournalReceiver(sound_late_notes=sound_late_notes)
    for sequence, journal in arrivals:
        for _, message in receiver.receive(RtpMidiPacket(sequence, 0, 0, [], journal)):
            assert 1 <= len(message) <= 3 and message[0] >= 0x80
