"""The receiving side of the recovery journal: loss detection and repair.

# implements RFC 6295 §4 on the receiving side (loss found from RTP sequence numbers; the
#   checkpoint says whether a journal covers the gap; S bits skipped after a single loss)
# implements RFC 6295 Appendix A.2, A.3, A.5, A.6, A.8, A.9 on the receiving side
#   (chapters P, C, W, N, T, A compared with what was played, the difference replayed)
# follows RFC 4696's receiver guidance (use the journal after loss to end stuck notes;
#   sounding late NoteOns is a receiver option)

Sans-IO: packets in (``RtpMidiPacket``, whose ``journal`` journal_wire.py parses),
MIDI commands to play out; nothing here reads the time.
"""

from gateway.midi import (
    CHANNEL_PRESSURE, CONTROL_CHANGE, NOTE_OFF, NOTE_ON, PITCH_BEND, POLY_PRESSURE,
    PROGRAM_CHANGE,
)
from gateway.protocols.rtpmidi.journal_state import (
    CC_BANK_LSB, CC_BANK_MSB, COMMAND_CONTROLLERS, UNSET, ChannelState, extend_sequence,
)

__all__ = ["JournalReceiver"]


class JournalReceiver:
    """Follows one sender's stream and repairs the MIDI state after packet loss.

    ``receive`` each packet in arrival order. After a gap, the packet's journal
    is compared with what this receiver has played, and the difference is
    played first: NoteOffs for notes the sender released, then program,
    controllers, pitch and pressure, then NoteOns the sender still holds. A
    missed NoteOn is sounded only when the sender marked it as recent (Y=1)
    or when ``sound_late_notes`` is set (RFC 4696 leaves that choice to the
    receiver). Late and duplicate packets are dropped: the journal of the
    packet that revealed the gap already restored their effect.
    """

    def __init__(self, sound_late_notes=False):
        self.sound_late_notes = sound_late_notes
        self.channels = [ChannelState() for _ in range(16)]
        self.lost_packets = 0
        self.late_packets = 0
        self.repaired_gaps = 0
        self.unrecoverable_gaps = 0
        self._highest = None

    @property
    def highest(self):
        """The extended highest sequence number received, or None before the first packet."""
        return self._highest

    def receive(self, packet):
        """Return ``(delta, message)`` pairs to play: repairs (delta 0) then the packet's commands."""
        highest = self._highest
        sequence = packet.sequence
        played = None
        if highest is not None and sequence == (highest + 1) & 0xFFFF:
            current = highest + 1
        else:
            if highest is None:
                current = sequence
            else:
                current = extend_sequence(sequence, highest)
                if current <= highest:
                    self.late_packets += 1
                    return []
            played = [(0, message) for message in self._recover(packet.journal, highest, current)]
        self._highest = current
        commands = packet.commands
        channels = self.channels
        for _, message in commands:
            status = message[0]
            if status < 0xF0:
                state = channels[status & 0x0F]
                state.apply(message, current)
        if not played:
            return commands
        played.extend(commands)
        return played

    def _recover(self, journal, highest, current):
        """Repairs for the packets between ``highest`` and ``current`` (None: stream start)."""
        if highest is not None:
            self.lost_packets += current - highest - 1
        if journal is None:
            if highest is not None:
                self.unrecoverable_gaps += 1
            return []
        checkpoint = extend_sequence(journal.checkpoint, current)
        if highest is not None:
            if checkpoint > highest + 1:
                self.unrecoverable_gaps += 1
            if current == highest + 2 and journal.s_bit:
                return []
            self.repaired_gaps += 1
        repairs = []
        for channel_journal in journal.channels:
            self._repair_channel(channel_journal, checkpoint, current, repairs)
        return repairs

    def _repair_channel(self, channel_journal, checkpoint, stamp, repairs):
        channel = channel_journal.channel
        state = self.channels[channel]
        start = len(repairs)
        notes = channel_journal.notes
        logged = {}
        if notes is not None:
            logged = {note: (play, velocity) for _, note, play, velocity in notes.logs}
            for note in notes.off_notes:
                # A logged note that was also released in the history was struck
                # again; if what sounds here predates the history, it is the old one.
                if state.velocities[note] and (
                        note not in logged or state.on_stamps[note] < checkpoint):
                    repairs.append(bytes((NOTE_OFF | channel, note, 0)))
        program = channel_journal.program
        if program is not None and (
                program.program != state.program or program.bank_valid != state.bank_valid
                or (program.bank_valid and (program.bank_msb, program.bank_lsb)
                    != (state.bank_msb, state.bank_lsb))):
            if program.bank_valid:
                repairs.append(bytes((CONTROL_CHANGE | channel, CC_BANK_MSB, program.bank_msb)))
                repairs.append(bytes((CONTROL_CHANGE | channel, CC_BANK_LSB, program.bank_lsb)))
            repairs.append(bytes((PROGRAM_CHANGE | channel, program.program)))
        # Apply what is queued so far so later comparisons see the repaired program/bank.
        self._apply(state, repairs, start, stamp)
        start = len(repairs)
        if channel_journal.controllers is not None:
            for _, number, alternate, value in channel_journal.controllers.logs:
                if (not alternate and number not in COMMAND_CONTROLLERS
                        and state.controllers[number] != value):
                    repairs.append(bytes((CONTROL_CHANGE | channel, number, value)))
        pitch = channel_journal.pitch
        if pitch is not None and pitch.value != state.pitch:
            repairs.append(bytes((PITCH_BEND | channel, pitch.first, pitch.second)))
        pressure = channel_journal.pressure
        if pressure is not None and pressure.pressure != state.pressure:
            repairs.append(bytes((CHANNEL_PRESSURE | channel, pressure.pressure)))
        for note, (play, velocity) in logged.items():
            if velocity and not state.velocities[note] and (play or self.sound_late_notes):
                repairs.append(bytes((NOTE_ON | channel, note, velocity)))
        if channel_journal.poly_pressure is not None:
            for _, note, _, value in channel_journal.poly_pressure.logs:
                if state.poly_pressure.get(note, UNSET) != value:
                    repairs.append(bytes((POLY_PRESSURE | channel, note, value)))
        self._apply(state, repairs, start, stamp)

    @staticmethod
    def _apply(state, repairs, start, stamp):
        for index in range(start, len(repairs)):
            state.apply(repairs[index], stamp)

    def snapshot(self):
        return [state.snapshot() for state in self.channels]
