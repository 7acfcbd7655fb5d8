"""The RTP-MIDI media stream with one peer, whatever signalling set it up.

# implements RFC 6295 §2.1 (one RTP stream each way), §3 on the receiving side
#   (command section to timed MIDI events, SysEx segments joined, §3.2) and §4
#   through journal_receiver (a loss is repaired from the recovery journal)
# implements RFC 6295 §2.1, §3 and §4 on the sending side through stream.py
# follows sfront's latetime: a note-on that arrives later than ``latetime``
#   after it was played is dropped; note-offs never are

AppleMIDI (session.py) and SDP-negotiated sessions (the SIP door) set a
stream up differently, but the media is the same: :class:`RtpMidiStream`
holds both directions for one peer. The signalling supplies what it knows:
the RTP clock rate (AppleMIDI uses 10 kHz, SDP says e.g. 44100), the local
clock's origin, the peer's clock offset once a sync measured it
(:attr:`RtpMidiStream.clock_offset`; AppleMIDI CK) and receiver feedback for
journal trimming (:meth:`RtpMidiStream.feedback`; AppleMIDI RS, RTCP receiver
reports).

Sans-IO: no Twisted, sockets or clocks. Packets come in parsed once
(:meth:`RtpMidiPacket.parse <gateway.protocols.rtpmidi.payload.RtpMidiPacket.parse>`,
whose header fields also route them to their peer) and go out as bytes.
"""

import typing

from gateway.midi import NOTE_ON, SYSEX_END, SYSEX_START, MidiEvent
from gateway.protocols.rtpmidi.journal_receiver import JournalReceiver
from gateway.protocols.rtpmidi.journal_sender import JournalSender
from gateway.protocols.rtpmidi.payload import PAYLOAD_TYPE, SysExReassembler
from gateway.protocols.rtpmidi.stream import OutgoingStream

_U32 = 0xFFFFFFFF


class Received(typing.NamedTuple):
    """What one received packet yields.

    ``events`` are MidiEvents on the gateway's clock. ``midi_list`` is the
    packet's MIDI list when ``events`` are exactly what it carried, all channel
    messages (nothing repaired or dropped), so a sender can pass it on as it
    came; otherwise None. ``late`` counts the note-ons dropped as late.
    """

    events: list
    midi_list: typing.Optional[bytes]
    late: int


_NOTHING = Received([], None, 0)


class RtpMidiStream:
    """Both directions of RTP-MIDI with one peer: our outgoing stream and theirs."""

    __slots__ = ("clock_rate", "clock_base", "late_ticks", "clock_offset", "outgoing",
                 "journal_receiver", "sysex", "packets_received", "late_dropped")

    def __init__(self, ssrc, sequence, clock_rate, clock_base, latetime, journal=True,
                 payload_type=PAYLOAD_TYPE, marker=False):
        self.clock_rate = clock_rate
        self.clock_base = clock_base
        self.late_ticks = round(latetime * clock_rate)
        self.clock_offset = None
        self.outgoing = OutgoingStream(ssrc, sequence, JournalSender() if journal else None,
                                       payload_type, marker)
        self.journal_receiver = JournalReceiver()
        self.sysex = SysExReassembler()
        self.packets_received = 0
        self.late_dropped = 0

    def ticks(self, now):
        """Our RTP clock at ``now`` (32 bits)."""
        return int((now - self.clock_base) * self.clock_rate) & _U32

    # Receiving ------------------------------------------------------------
    def receive(self, packet, now):
        """The :class:`Received` of one parsed packet that arrived at ``now``.

        Raises MalformedPacket when its journal, read only after a loss, is invalid.
        """
        receiver = self.journal_receiver
        lost_before = receiver.lost_packets
        commands = receiver.receive(packet)
        self.packets_received += 1
        if receiver.lost_packets != lost_before:
            self.sysex.reset()      # a segment may be lost: never join across a gap
        if not commands:
            return _NOTHING
        rate = self.clock_rate
        start = packet.timestamp
        ticks = start
        time = now
        late_before = None
        late = 0
        events = []
        forwardable = packet.midi_list is not None and commands is packet.commands
        for delta, message in commands:
            if delta:
                ticks += delta
                time = now + (ticks - start) / rate
            status = message[0]
            if status >= 0xF0:
                forwardable = False
                if status == SYSEX_START or status == SYSEX_END:
                    message = self.sysex.feed(message)
                    if message is None:
                        continue
            elif status & 0xF0 == NOTE_ON and message[2]:
                if late_before is None:
                    late_before = self._late_before(now)
                # Played before late_before on the peer's clock (signed 32-bit RTP time).
                if late_before is not False and 0 < (late_before - ticks) & _U32 < 0x80000000:
                    late += 1
                    forwardable = False
                    continue
            events.append(MidiEvent(message, time))
        if late:
            self.late_dropped += late
        return Received(events, packet.midi_list if forwardable else None, late)

    def _late_before(self, now):
        """The peer's RTP time before which a note-on arriving at ``now`` is late.

        False until a clock sync has measured the peer's clock.
        """
        offset = self.clock_offset
        if offset is None:
            return False
        return (self.ticks(now) + round(offset * self.clock_rate) - self.late_ticks) & _U32

    # Sending --------------------------------------------------------------
    def packet(self, prepared, timestamp, now):
        """The datagram carrying a :class:`~.stream.PreparedPacket` to this peer."""
        return self.outgoing.packet(prepared, timestamp, now)

    def guard_packet(self, timestamp, now):
        """A journal-only packet if one is due at ``now``, else None."""
        return self.outgoing.guard_packet(timestamp, now)

    def feedback(self, sequence):
        """The peer received up to ``sequence``: the journal may forget what came before."""
        self.outgoing.acknowledge(sequence)
