"""The sending side of the recovery journal: checkpoint history and one journal per packet.

# implements RFC 6295 §4 on the sending side (checkpoint history; S bits set for what
#   the packet just before holds)
# implements RFC 6295 §5 and Appendix A.2, A.3, A.5, A.6, A.8, A.9 on the sending side
#   (chapters P, C, W, N, T, A written straight to octets, per packet)
# implements RFC 6295 Appendix C.2.2 (closed-loop checkpoint policy, fed by AppleMIDI RS feedback),
#   with an open-loop bound on the history when no feedback arrives

Sans-IO: no Twisted, no sockets, no clocks. Sequence numbers and RTP timestamps
are passed in; nothing here reads the time.

Flow per packet ``n``::

    journal = sender.journal_for(seq, timestamp)      # checkpoint .. n-1; None if empty
    packet = RtpMidiPacket(seq, timestamp, ssrc, commands, journal)
    sender.record(seq, timestamp, [message for _, message in commands])
    ...
    sender.acknowledge(rs_sequence)                   # AppleMIDI RS feedback

(stream.py puts ``sender.journal_octets(seq, timestamp)``, the same journal
as octets, straight on the wire; :meth:`JournalSender.send` does both steps.)
"""

from gateway.protocols.rtpmidi.journal_state import HALF_SEQUENCE, ChannelState, extend_sequence
from gateway.protocols.rtpmidi.journal_wire import (
    JOURNAL_A, NO_BITMAP_HIGH, NO_BITMAP_LOW, NOTE_GROUPS, TOC_A, TOC_C, TOC_N, TOC_P, TOC_T,
    TOC_W, Journal, off_bitmap, widen_bitmap,
)

__all__ = ["JournalSender"]


def _forget_older(stamps, checkpoint):
    """Drop the items of ``stamps`` last changed before ``checkpoint``."""
    for item in [item for item, stamp in stamps.items() if stamp < checkpoint]:
        del stamps[item]


def _append_logs(out, stamps, values, previous):
    """A chapter of ``S LEN`` then two-octet logs (C, A) for the items of ``stamps``."""
    chapter_s = True
    start = len(out)
    out.append(0)
    for number, stamp in stamps.items():
        older = stamp != previous
        chapter_s = chapter_s and older
        out.append((older << 7) | number)
        out.append(values[number])
    out[start] = (chapter_s << 7) | (len(stamps) - 1)


class JournalSender:
    """Keeps the checkpoint history of a stream and writes each packet's journal.

    ``late_note_ticks``: a NoteOn younger than this (in RTP timestamp units)
    gets Y=1 in chapter N, telling receivers it is still worth playing late;
    1000 is 100 ms at AppleMIDI's 10 kHz clock. ``max_history``: without
    receiver feedback the checkpoint trails the newest packet by at most this
    many packets (open-loop bound), so the journal stays bounded.

    The journal is written straight to octets (:meth:`journal_octets`, the
    per-packet path); :meth:`journal_for` reads them back as a :class:`Journal`.
    """

    def __init__(self, late_note_ticks=1000, max_history=1024):
        if not 1 <= max_history < HALF_SEQUENCE:
            raise ValueError(f"max_history must be 1-{HALF_SEQUENCE - 1}, got {max_history}")
        self.late_note_ticks = late_note_ticks
        self.max_history = max_history
        self.channels = [ChannelState() for _ in range(16)]
        # Channels that may have changed since the checkpoint, highest first.
        self._recent_channels = []
        self._checkpoint = None      # extended sequence number of the oldest packet journalled
        self._last_sent = None       # extended sequence number of the newest recorded packet
        self._forgotten_before = None   # the checkpoint older items were last dropped at
        self._forget_step = max(1, max_history // 32)

    @property
    def checkpoint(self):
        """16-bit sequence number of the checkpoint packet (None before the first packet)."""
        return None if self._checkpoint is None else self._checkpoint & 0xFFFF

    def _extend(self, sequence):
        last = self._last_sent
        if last is None:
            return sequence
        if sequence == (last + 1) & 0xFFFF:
            return last + 1          # the next packet, the per-packet case: nothing to unwrap
        return extend_sequence(sequence, last)

    def journal_for(self, sequence, timestamp):
        """The journal for packet ``sequence`` (sent at RTP ``timestamp``), or None if empty."""
        octets = self.journal_octets(sequence, timestamp)
        return None if octets is None else Journal.parse(octets)

    def journal_octets(self, sequence, timestamp):
        """The journal of packet ``sequence``, covering checkpoint .. n-1, as octets.

        None when it would hold no channel journal: an empty journal repairs
        nothing, and pymidi misreads its header (S=1 taken for a system
        journal) and drops the whole packet, so the packet goes without (J=0).
        """
        return self._octets(self._extend(sequence), timestamp)

    def record(self, sequence, timestamp, messages):
        """Note the MIDI messages packet ``sequence`` carried (call after journal_for)."""
        self._record(self._extend(sequence), timestamp, messages)

    def send(self, sequence, timestamp, messages):
        """:meth:`journal_octets` then :meth:`record` for one packet: the per-packet path."""
        current = self._extend(sequence)
        octets = self._octets(current, timestamp)
        self._record(current, timestamp, messages)
        return octets

    def _octets(self, current, timestamp):
        checkpoint = self._checkpoint
        if checkpoint is None:
            checkpoint = self._checkpoint = self._forgotten_before = current
        elif checkpoint < current - self.max_history:
            checkpoint = self._checkpoint = current - self.max_history
            if checkpoint - self._forgotten_before >= self._forget_step:
                self._forget_before(checkpoint)
        recent_channels = self._recent_channels
        if not recent_channels:
            return None
        previous = current - 1
        parts = []
        s_bit = True
        channels = self.channels
        # Highest channel first, because only the journal's final chapter N gets
        # a widened bitmap; the parts are reversed into wire order below.
        for channel in recent_channels:
            state = channels[channel]
            octets = self._channel_octets(channel, state, checkpoint, previous, timestamp,
                                          not parts)
            if octets is not None:
                parts.append(octets)
                s_bit = s_bit and state.last_stamp != previous
        if not parts:
            return None
        header = bytes(((s_bit << 7) | JOURNAL_A | (len(parts) - 1),
                        (checkpoint >> 8) & 0xFF, checkpoint & 0xFF))
        if len(parts) == 1:
            return header + parts[0]
        parts.append(header)
        parts.reverse()
        return b"".join(parts)

    def _forget_before(self, checkpoint):
        """Drop what changed before ``checkpoint``: the journal no longer needs it.

        Done when feedback moves the checkpoint, and every ``max_history / 32``
        packets while the history bound drags it along, rather than per packet:
        the per-packet path journals every item still held, and an item a
        little older than the checkpoint states what the receiver already has.
        """
        self._forgotten_before = checkpoint
        channels = self.channels
        for channel in list(self._recent_channels):
            state = channels[channel]
            if state.last_stamp < checkpoint:
                self._recent_channels.remove(channel)
                state.note_stamps.clear()
                state.controller_stamps.clear()
                state.poly_stamps.clear()
                continue
            _forget_older(state.note_stamps, checkpoint)
            _forget_older(state.controller_stamps, checkpoint)
            _forget_older(state.poly_stamps, checkpoint)

    def _channel_octets(self, channel, state, checkpoint, previous, timestamp, final):
        """One channel journal (§5.2) as octets, None if no chapter has anything to say."""
        out = bytearray(3)
        toc = 0
        if state.program_stamp >= checkpoint:
            toc = TOC_P
            out += bytes((((state.program_stamp != previous) << 7) | state.program,
                          (state.bank_valid << 7) | state.bank_msb, state.bank_lsb))
        if state.controller_stamps:
            toc |= TOC_C
            _append_logs(out, state.controller_stamps, state.controllers, previous)
        if state.pitch_stamp >= checkpoint:
            toc |= TOC_W
            pitch = state.pitch
            out.append(((state.pitch_stamp != previous) << 7) | (pitch & 0x7F))
            out.append(pitch >> 7)
        pressure = state.pressure_stamp >= checkpoint
        if state.note_stamps:
            toc |= TOC_N
            self._append_note_chapter(out, state, checkpoint, previous, timestamp,
                                      final and not pressure and not state.poly_stamps)
        if pressure:
            toc |= TOC_T
            out.append(((state.pressure_stamp != previous) << 7) | state.pressure)
        if state.poly_stamps:
            toc |= TOC_A
            _append_logs(out, state.poly_stamps, state.poly_pressure, previous)
        if not toc:
            return None
        length = len(out)
        if length > 0x3FF:
            raise ValueError(f"channel {channel} journal of {length} octets exceeds 1023")
        out[0] = ((state.last_stamp != previous) << 7) | (channel << 3) | (length >> 8)
        out[1] = length & 0xFF
        out[2] = toc
        return out

    def _append_note_chapter(self, out, state, checkpoint, previous, timestamp, ends_journal):
        """Chapter N (A.6) for the notes changed since the checkpoint.

        ``ends_journal``: it is the last chapter of the packet.
        """
        header_at = len(out)
        out += b"\0\0"
        off_notes = []
        offs_from_previous = False
        late_ticks = self.late_note_ticks
        velocities = state.velocities
        on_stamps = state.on_stamps
        off_stamps = state.off_stamps
        on_times = state.on_times
        count = 0
        for note in state.note_stamps:
            velocity = velocities[note]
            if velocity:
                count += 1
                out.append(((on_stamps[note] != previous) << 7) | note)
                out.append(((((timestamp - on_times[note]) & 0xFFFFFFFF) < late_ticks) << 7)
                           | velocity)
            off_stamp = off_stamps[note]
            if off_stamp >= checkpoint:
                off_notes.append(note)
                offs_from_previous = offs_from_previous or off_stamp == previous
        if off_notes and count < 128:
            low, offbits = off_bitmap(off_notes)
            if ends_journal and count > len(offbits):
                # Wireshark 4.0 and earlier (decode_cj_chapter_n in
                # packet-rtp-midi.c) sizes the bitmap of a packet-ending chapter
                # N by its log count, not HIGH - LOW + 1, and calls the correct
                # chapter malformed; zero octets log nothing (A.6) and keep
                # captures of the gateway readable.
                low, offbits = widen_bitmap(low, offbits, min(count, NOTE_GROUPS))
            high = low + len(offbits) - 1
            out += offbits
        else:
            # 128 logs leave no room for a bitmap (every note is sounding anyway);
            # LOW=15, HIGH=0 with LEN=127 would mean 128 logs, so 127 uses HIGH=1.
            low, high = NO_BITMAP_LOW, 1 if count == 127 else NO_BITMAP_HIGH
        out[header_at] = ((not offs_from_previous) << 7) | min(count, 127)
        out[header_at + 1] = (low << 4) | high

    def _record(self, current, timestamp, messages):
        if self._checkpoint is None:
            self._checkpoint = self._forgotten_before = current
        self._last_sent = current
        channels = self.channels
        recent_channels = self._recent_channels
        for message in messages:
            status = message[0]
            if status < 0xF0:
                channel = status & 0x0F
                state = channels[channel]
                state.apply(message, current, timestamp)
                if channel not in recent_channels:
                    recent_channels.append(channel)
                    recent_channels.sort(reverse=True)

    def acknowledge(self, sequence):
        """The receiver reports ``sequence`` as its highest received (AppleMIDI RS).

        That packet becomes the checkpoint: its own commands stay journalled, so
        an RS that raced ahead of the receiver's processing is harmless.
        Reports older than the checkpoint or newer than anything sent are ignored.
        """
        if self._last_sent is None:
            return
        acknowledged = extend_sequence(sequence, self._last_sent)
        if acknowledged > self._checkpoint and acknowledged <= self._last_sent:
            self._checkpoint = acknowledged
            self._forget_before(acknowledged)

    def snapshot(self):
        return [state.snapshot() for state in self.channels]
