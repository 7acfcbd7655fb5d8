"""Golden bytes: a journal-ending chapter N keeps a bitmap as long as its note logs.

Wireshark 4.0 sizes the NoteOff bitmap by the note log count and calls the
packet malformed when that runs past its end (see JournalSender); the sender
pads such a bitmap with zero octets, which RFC 6295 A.6 reads as "no NoteOff".
"""

from gateway.protocols.rtpmidi.journal_sender import JournalSender
from gateway.protocols.rtpmidi.journal_wire import Journal, NoteChapter

from .test_journal import send


def test_final_chapter_n_bitmap_is_widened_to_the_log_count():
    sender = JournalSender()
    send(sender, 10, 1000, [bytes((0x90, 60, 100)), bytes((0x90, 64, 90)),
                            bytes((0x90, 67, 80)), bytes((0x90, 72, 70))])
    send(sender, 11, 1010, [bytes((0x80, 72, 0))])
    journal = sender.journal_for(12, 1020)
    # Header: S=0, A=1, TOTCHAN=0, checkpoint 10. Channel 0 journal: LENGTH 14,
    # TOC N. Chapter N: B=0, LEN=3 logs (S=1, Y=1), LOW=9 HIGH=11: octet 9 holds
    # note 72 (0x80); octets 10 and 11 are zero padding.
    assert bytes(journal).hex(" ") == (
        "20 00 0a 00 0e 08 03 9b bc e4 c0 da c3 d0 80 00 00")
    notes = Journal.parse(bytes(journal)).channels[0].notes
    assert notes.off_notes == [72] and len(notes.logs) == 3


def test_widening_grows_downwards_only_past_group_15():
    chapter = NoteChapter.with_off_notes([(False, 1, False, 1)] * 5, [120])
    widened = chapter.widened(5)
    assert (widened.low, widened.offbits) == (11, b"\0\0\0\0\x80")
    assert widened.off_notes == [120]
    assert chapter.widened(1) is chapter


def test_chapter_n_followed_by_another_channel_is_left_alone():
    sender = JournalSender()
    send(sender, 1, 0, [bytes((0x90, 60, 100)), bytes((0x90, 64, 90)),
                        bytes((0x90, 72, 70)), bytes((0x91, 50, 1))])
    send(sender, 2, 10, [bytes((0x80, 72, 0))])
    first, second = sender.journal_for(3, 20).channels
    assert len(first.notes.offbits) == 1 and second.notes.offbits == b""
