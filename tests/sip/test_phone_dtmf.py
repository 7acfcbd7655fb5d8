"""RFC 4733 telephone-events to digits, and the keypad map from digits to notes."""

import struct

import pytest
from hypothesis import given, strategies as st

from gateway.midi import NoteTracker, is_note_off, is_note_on
from gateway.protocols.sip.phone import parse_rtp
from gateway.protocols.sip.phone_dtmf import (
    DEFAULT_KEYPAD, DigitDown, DigitUp, KeypadMap, KeypadPlayer, MalformedEvent,
    TelephoneEvents, parse_note,
)

NOW = 1_800_000_000.0
EVENT_PT = 101

# The event sequence of RFC 4733 §5.1 (Table 5): the digit "9" from timestamp
# 0, an update every 50 ms (400 samples at 8 kHz) up to 1600, the end (E)
# sent three times; then "1" from timestamp 7040 (880 ms). Volume 10
# (-10 dBm0), SSRC 0x1234abcd, payload type 101, as a phone sends them:
# (arrival time in s, datagram).
RFC_4733_EXAMPLE = [
    (0.050, "80e5 0001 00000000 1234abcd 09 0a 0190"),    # M=1, start
    (0.100, "8065 0002 00000000 1234abcd 09 0a 0320"),
    (0.150, "8065 0003 00000000 1234abcd 09 0a 04b0"),
    (0.200, "8065 0004 00000000 1234abcd 09 8a 0640"),    # E=1, duration 1600
    (0.250, "8065 0005 00000000 1234abcd 09 8a 0640"),    # its retransmissions
    (0.300, "8065 0006 00000000 1234abcd 09 8a 0640"),
    (0.930, "80e5 0007 00001b80 1234abcd 01 0a 0190"),    # "1" at 7040
    (0.980, "8065 0008 00001b80 1234abcd 01 0a 0320"),
    (1.030, "8065 0009 00001b80 1234abcd 01 8a 0320"),
    (1.080, "8065 000a 00001b80 1234abcd 01 8a 0320"),
    (1.130, "8065 000b 00001b80 1234abcd 01 8a 0320"),
]


def datagrams(table):
    return [(NOW + offset, bytes.fromhex(text.replace(" ", ""))) for offset, text in table]


def payload(event, duration, end=False, volume=10):
    return struct.pack("!BBH", event, (0x80 if end else 0) | volume, duration)


def feed(receiver, packets):
    changes = []
    for now, datagram in packets:
        packet = parse_rtp(datagram)
        changes += receiver.receive(packet.timestamp, packet.payload, now, packet.ssrc)
    return changes


def test_the_golden_bytes_say_what_the_example_says():
    fields = [parse_rtp(datagram) for _, datagram in datagrams(RFC_4733_EXAMPLE)]
    assert [packet.sequence for packet in fields] == list(range(1, 12))
    assert [packet.marker for packet in fields] == [True] + [False] * 5 + [True] + [False] * 4
    assert {packet.payload_type for packet in fields} == {EVENT_PT}
    assert {packet.ssrc for packet in fields} == {0x1234ABCD}
    assert fields[6].timestamp == 7040
    assert fields[3].payload == payload(9, 1600, end=True)


def test_rfc_4733_example_gives_each_digit_once_down_and_once_up():
    receiver = TelephoneEvents()
    changes = feed(receiver, datagrams(RFC_4733_EXAMPLE))
    assert changes == [
        DigitDown("9", NOW + 0.050), DigitUp("9", NOW + 0.200, "end"),
        DigitDown("1", NOW + 0.930), DigitUp("1", NOW + 1.030, "end"),
    ]
    assert receiver.digits == 2
    assert receiver.ended_by_bit == 2
    assert receiver.duplicates == 4          # the second and third E packets of each
    assert receiver.expire(NOW + 5) == []


def test_the_event_starts_on_its_first_packet_even_without_the_marker():
    receiver = TelephoneEvents()
    packets = datagrams(RFC_4733_EXAMPLE)[1:]       # the M=1 packet was lost
    assert feed(receiver, packets)[0] == DigitDown("9", NOW + 0.100)


def test_only_the_end_packets_arrived_still_a_short_press():
    receiver = TelephoneEvents()
    changes = feed(receiver, datagrams(RFC_4733_EXAMPLE)[4:6])
    assert changes == [DigitDown("9", NOW + 0.250), DigitUp("9", NOW + 0.250, "end")]
    assert receiver.duplicates == 1


def test_lost_end_packets_end_the_digit_after_the_timeout():
    receiver = TelephoneEvents(timeout=0.25)
    changes = feed(receiver, datagrams(RFC_4733_EXAMPLE)[:3])      # no E packet arrives
    assert changes == [DigitDown("9", NOW + 0.050)]
    assert receiver.expire(NOW + 0.150 + 0.24) == []
    assert receiver.expire(NOW + 0.150 + 0.25) == [DigitUp("9", NOW + 0.400, "timeout")]
    assert receiver.ended_by_timeout == 1
    # A straggling end packet of that event is recognised, not a new press.
    assert feed(receiver, datagrams(RFC_4733_EXAMPLE)[3:4]) == []
    assert receiver.duplicates == 1
    assert receiver.expire(NOW + 10) == []


def test_a_new_event_ends_the_one_whose_end_was_lost():
    receiver = TelephoneEvents()
    table = RFC_4733_EXAMPLE[:3] + RFC_4733_EXAMPLE[6:8]
    assert feed(receiver, datagrams(table)) == [
        DigitDown("9", NOW + 0.050), DigitUp("9", NOW + 0.930, "next"),
        DigitDown("1", NOW + 0.930)]


def test_the_same_key_pressed_twice_is_two_presses():
    receiver = TelephoneEvents()
    changes = []
    for start, at in ((0, 0.0), (2400, 0.3)):
        changes += receiver.receive(start, payload(5, 400), NOW + at)
        changes += receiver.receive(start, payload(5, 800, end=True), NOW + at + 0.05)
    assert [type(change) for change in changes] == [DigitDown, DigitUp, DigitDown, DigitUp]


def test_a_long_event_in_segments_stays_one_digit():
    """RFC 4733 §2.5.1.3: past 0xFFFF samples the next segment starts where it ended."""
    receiver = TelephoneEvents()
    changes = receiver.receive(1000, payload(3, 0xFFFF), NOW)
    changes += receiver.receive(1000, payload(3, 0xFFFF), NOW + 0.02)
    changes += receiver.receive(1000 + 0xFFFF, payload(3, 400), NOW + 8.2)
    changes += receiver.receive(1000 + 0xFFFF, payload(3, 800, end=True), NOW + 8.25)
    assert changes == [DigitDown("3", NOW), DigitUp("3", NOW + 8.25, "end")]


def test_timestamps_wrap_around():
    receiver = TelephoneEvents()
    first = 0xFFFFFF00
    changes = receiver.receive(first, payload(1, 400), NOW)
    changes += receiver.receive((first + 4000) & 0xFFFFFFFF, payload(2, 400), NOW + 0.6)
    # After the wrap, a late packet of the first event is recognised, and one
    # of an event before it is older than the current one: neither starts a digit.
    changes += receiver.receive(first, payload(1, 800), NOW + 0.61)
    changes += receiver.receive(first - 800, payload(9, 800), NOW + 0.62)
    assert [change.digit for change in changes] == ["1", "1", "2"]
    assert receiver.duplicates == 1 and receiver.stale == 1


def test_reordered_packets_of_an_earlier_event_do_not_start_it_again():
    receiver = TelephoneEvents()
    receiver.receive(8000, payload(4, 400, end=True), NOW)
    assert receiver.receive(4000, payload(7, 400), NOW + 0.01) == []
    assert receiver.stale == 1


def test_several_events_in_one_packet():
    """RFC 4733 §2.5.1.5: ended events first, each where the one before ended."""
    receiver = TelephoneEvents()
    data = payload(1, 800, end=True) + payload(2, 400)
    changes = receiver.receive(16000, data, NOW)
    assert changes == [DigitDown("1", NOW), DigitUp("1", NOW, "end"), DigitDown("2", NOW)]
    assert receiver.current.timestamp == 16800
    # The next packet repeats both: only the second one's end is news.
    changes = receiver.receive(16000, payload(1, 800, end=True) + payload(2, 800, end=True),
                               NOW + 0.05)
    assert changes == [DigitUp("2", NOW + 0.05, "end")]


def test_events_other_than_dtmf_are_ignored_and_counted():
    receiver = TelephoneEvents()
    assert receiver.receive(0, payload(16, 400), NOW) == []          # flash
    assert receiver.receive(0, payload(70, 400), NOW) == []          # a ringing tone
    assert receiver.unsupported == 2


@pytest.mark.parametrize("data", [b"", b"\x01\x0a\x01", b"\x01\x0a\x01\x90\x00"])
def test_a_payload_not_of_whole_blocks_is_malformed(data):
    with pytest.raises(MalformedEvent):
        TelephoneEvents().receive(0, data, NOW)


def test_a_new_ssrc_ends_the_old_streams_digit():
    receiver = TelephoneEvents()
    receiver.receive(0, payload(6, 400), NOW, ssrc=1)
    changes = receiver.receive(0, payload(6, 400), NOW + 0.1, ssrc=2)
    assert changes == [DigitUp("6", NOW + 0.1, "next"), DigitDown("6", NOW + 0.1)]


def test_end_all_at_hang_up():
    receiver = TelephoneEvents()
    receiver.receive(0, payload(0, 400), NOW)
    assert receiver.end_all(NOW + 1) == [DigitUp("0", NOW + 1, "hangup")]
    assert receiver.end_all(NOW + 2) == []


_packets = st.lists(st.tuples(
    st.integers(0, 40_000),                     # timestamp
    st.integers(0, 17),                         # event
    st.booleans(),                              # E bit
    st.integers(0, 0xFFFF),                     # duration
    st.floats(0, 0.4),                          # time since the previous packet
), max_size=40)


@given(_packets)
def test_every_digit_that_goes_down_comes_up(packets):
    receiver = TelephoneEvents()
    now = NOW
    down = None
    for timestamp, event, end, duration, gap in packets:
        now += gap
        for change in receiver.expire(now) + receiver.receive(
                timestamp, payload(event, duration, end), now):
            if type(change) is DigitDown:
                assert down is None
                down = change.digit
            else:
                assert change.digit == down
                down = None
    for change in receiver.end_all(now + 1):
        assert change.digit == down
        down = None
    assert down is None


@given(st.binary(max_size=64), st.integers(0, 0xFFFFFFFF))
def test_arbitrary_payloads_raise_nothing_but_malformed_event(data, timestamp):
    receiver = TelephoneEvents()
    try:
        receiver.receive(timestamp, data, NOW)
    except MalformedEvent:
        pass
    receiver.expire(NOW + 1)


# The keypad map ------------------------------------------------------------------
def test_default_map_is_the_c_major_scale_from_middle_c():
    keypad = KeypadMap.from_config()
    assert [keypad[digit] for digit in "1234567890"] == [60, 62, 64, 65, 67, 69, 71, 72, 74, 76]
    assert [keypad[digit] for digit in "ABCD"] == [77, 79, 81, 83]
    assert keypad["*"] == "octave_down" and keypad["#"] == "octave_up"
    assert keypad.describe()[0] == "1: note 60"


@pytest.mark.parametrize("name, note", [
    ("C4", 60), ("c4", 60), ("A4", 69), ("F#3", 54), ("Bb5", 82), ("C-1", 0), ("G9", 127),
    (61, 61)])
def test_note_names(name, note):
    assert parse_note(name) == note


@pytest.mark.parametrize("value", ["H4", "C#", "G#9", 128, -1, True, 3.5, None])
def test_bad_notes_are_refused(value):
    with pytest.raises(ValueError):
        parse_note(value)


def test_the_map_is_configurable_and_errors_name_the_key():
    keypad = KeypadMap.from_config({"1": "A3", 2: 50, "#": "sustain", "d": "none"})
    assert keypad["1"] == 57 and keypad["2"] == 50 and keypad["#"] == "sustain"
    assert keypad["D"] == "none" and keypad["3"] == 64
    with pytest.raises(ValueError) as error:
        KeypadMap.from_config({"E": 60, "5": "loud"})
    assert str(error.value).splitlines()[0].startswith("E: not a DTMF key")
    assert str(error.value).splitlines()[1].startswith("5: expected a note number")
    assert DEFAULT_KEYPAD["5"] == "G4"               # the default is left alone


def down_up(player, digit, at=NOW):
    return player.digit_down(digit, at) + player.digit_up(digit, at + 0.1)


def test_digits_play_notes_with_a_note_off_for_each():
    player = KeypadPlayer(channel=2, velocity=90)
    events = down_up(player, "5")
    assert [event.data for event in events] == [b"\x92\x43\x5a", b"\x82\x43\x40"]
    assert events[1].time == NOW + 0.1
    assert player.sounding == {}


def test_star_and_hash_shift_octaves_and_a_sounding_note_ends_as_it_began():
    player = KeypadPlayer()
    assert player.digit_down("#", NOW) == [] and player.digit_up("#", NOW) == []
    assert player.digit_down("1", NOW)[0].data[1] == 72
    player.digit_down("*", NOW)                      # while 1 is (somehow) still down
    player.digit_down("*", NOW)
    assert player.digit_up("1", NOW)[0].data[1] == 72
    assert down_up(player, "1")[0].data[1] == 48
    for _ in range(5):
        player.digit_down("*", NOW)
    assert down_up(player, "1")[0].data[1] == 36     # two octaves down at most
    for _ in range(9):
        player.digit_down("#", NOW)
    assert down_up(player, "D")[0].data[1] == 83 + 24


def test_a_shift_never_leaves_the_midi_range():
    player = KeypadPlayer(KeypadMap.from_config({"1": 125, "2": 2}))
    for _ in range(2):
        player.digit_down("#", NOW)
    assert down_up(player, "1")[0].data[1] == 125     # 149 folds back by octaves
    for _ in range(4):
        player.digit_down("*", NOW)
    assert down_up(player, "2")[0].data[1] == 2


def test_sustain_latches_and_release_all_lets_everything_go():
    player = KeypadPlayer(KeypadMap.from_config({"#": "sustain"}))
    assert [event.data for event in player.digit_down("#", NOW)] == [b"\xb0\x40\x7f"]
    player.digit_down("3", NOW)
    events = player.release_all(NOW + 1)
    assert [event.data for event in events] == [b"\x80\x40\x40", b"\xb0\x40\x00"]
    assert player.release_all(NOW + 2) == []


def test_a_down_without_its_up_ends_the_first_note_before_the_second():
    player = KeypadPlayer()
    player.digit_down("1", NOW)
    events = player.digit_down("1", NOW + 1)
    assert [is_note_off(event.data) for event in events] == [True, False]


@given(st.lists(st.tuples(st.sampled_from("0123456789*#ABCD"), st.booleans()), max_size=60))
def test_the_keypad_never_leaves_a_note_stuck(presses):
    player = KeypadPlayer()
    tracker = NoteTracker()
    for digit, down in presses:
        events = player.digit_down(digit, NOW) if down else player.digit_up(digit, NOW)
        for event in events:
            assert is_note_on(event.data) or is_note_off(event.data)
            tracker.observe(event.data)
    for event in player.release_all(NOW):
        tracker.observe(event.data)
    assert tracker.sounding == frozenset()
