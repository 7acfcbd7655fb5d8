"""Sending RTP-MIDI to the peers of a session: each fan-out encoded once, one stream per peer.

# implements RFC 6295 §2.1 and §3 on the sending side (through payload.py): one RTP
#   stream per peer, MIDI lists split to stay well inside one datagram
# implements RFC 6295 §4 on the sending side (through journal_sender.py): every packet
#   carries the peer's recovery journal, or J=0 when that journal would be empty
# follows RFC 4696's sender guidance: after the last MIDI packet a quiet stream
#   sends journal-only "guard" packets, so a receiver that lost that packet repairs it

The bus hands the same events to every member of a session. What
a packet says about those events (the MIDI command section) is the same for
every peer; only the RTP header's sequence number and the journal differ. So
:func:`prepare` encodes a fan-out once and :meth:`OutgoingStream.packet` adds
the per-peer parts.

Sans-IO: no Twisted, sockets or clocks; ``now`` (seconds) and RTP timestamps
are parameters, packets are returned as bytes.
"""

from gateway.midi import UNDEFINED_STATUSES
from gateway.protocols.rtpmidi.payload import (
    FLAG_J, MAX_DELTA, PAYLOAD_TYPE, command_section, rtp_header, section_of_list,
)

__all__ = ["PreparedPacket", "RTP_MIDI_LIST", "prepare", "OutgoingStream", "GUARD_DELAYS",
           "MAX_LIST_OCTETS"]

MAX_LIST_OCTETS = 900
"""Keeps every packet well inside one Ethernet frame and pymidi's 1024-byte reads."""

GUARD_DELAYS = (0.05, 0.25)
"""Seconds after a stream's last MIDI packet at which a guard packet is sent."""

_JOURNAL_ONLY_SECTION = command_section([], journal_follows=True)


class PreparedPacket:
    """The peer-independent part of one packet: its command section and channel messages.

    ``section`` has J=0, ``journalled_section`` the same with J=1;
    ``messages`` are the channel messages it carries, for the journal to record.
    """

    __slots__ = ("section", "journalled_section", "messages")

    def __init__(self, section, messages):
        self.section = section
        self.journalled_section = _JOURNALLED_HEADERS[section[0]] + section[1:]
        self.messages = messages


_JOURNALLED_HEADERS = [bytes((octet | FLAG_J,)) for octet in range(0x100)]


RTP_MIDI_LIST = "rtp-midi-list"
"""The name under which a door passes a received packet's MIDI list on with its
events (:attr:`gateway.bus.values.Delivery.encodings`)."""


def prepare(events, clock_rate, midi_list=None, max_list_octets=MAX_LIST_OCTETS):
    """Split ``events`` (MidiEvent) into packets; return ``(packets, refused)``.

    ``clock_rate`` is the RTP clock's (Hz) that delta times count in.
    ``midi_list``, when given, is a received packet's MIDI list
    (:attr:`RtpMidiPacket.midi_list`) that carried exactly ``events``, all
    channel messages; it is sent on as it came instead of encoding the events
    again.

    Delta times come from the events' times. A packet whose MIDI list exceeds
    what RFC 6295 can carry (a huge SysEx) is left out and described in
    ``refused``, so no sequence number is spent on it. Undefined statuses
    have no meaning on the wire and are skipped.
    """
    if midi_list is not None and len(midi_list) <= max_list_octets:
        return [PreparedPacket(section_of_list(midi_list),
                               [event.data for event in events])], []
    packets = []
    refused = []
    commands = []
    messages = []
    octets = 0
    previous = events[0].time if events else 0.0
    for event in events:
        data = event.data
        status = data[0]
        if status in UNDEFINED_STATUSES:
            continue
        if octets + len(data) > max_list_octets and commands:
            _add_packet(packets, refused, commands, messages)
            commands, messages, octets = [], [], 0
        time = event.time
        if time == previous or not commands:
            delta = 0
        else:
            delta = min(MAX_DELTA, max(0, round((time - previous) * clock_rate)))
        previous = time
        commands.append((delta, data))
        if status < 0xF0:
            messages.append(data)
        octets += len(data) + 1
    if commands:
        _add_packet(packets, refused, commands, messages)
    return packets, refused


def _add_packet(packets, refused, commands, messages):
    try:
        packets.append(PreparedPacket(command_section(commands, journal_follows=False), messages))
    except ValueError as error:
        refused.append(str(error))


class OutgoingStream:
    """Our RTP stream to one peer: SSRC, sequence numbers, recovery journal, guard packets.

    ``journal`` is a :class:`~gateway.protocols.rtpmidi.journal_sender.JournalSender`,
    or None to send without one (and then without guard packets). The RTP
    ``payload_type`` and ``marker`` are what the signalling agreed: AppleMIDI
    peers expect 97 and no marker, sfront the SDP's type with the marker set.
    """

    __slots__ = ("ssrc", "sequence", "journal", "last_midi_time", "_guards_sent", "marker",
                 "payload_type")

    def __init__(self, ssrc, sequence, journal, payload_type=PAYLOAD_TYPE, marker=False):
        self.ssrc = ssrc
        self.sequence = sequence
        self.journal = journal
        self.payload_type = payload_type
        self.marker = marker
        self.last_midi_time = None
        self._guards_sent = len(GUARD_DELAYS)

    def packet(self, prepared, timestamp, now):
        """The datagram carrying ``prepared`` to this peer, sent at RTP ``timestamp``."""
        sequence = self.sequence
        self.sequence = (sequence + 1) & 0xFFFF
        header = rtp_header(sequence, timestamp, self.ssrc, self.marker, self.payload_type)
        journal = self.journal
        if journal is None:
            return header + prepared.section
        self.last_midi_time = now
        self._guards_sent = 0
        octets = journal.send(sequence, timestamp, prepared.messages)
        if octets is None:
            return header + prepared.section
        return b"".join((header, prepared.journalled_section, octets))

    def guard_packet(self, timestamp, now):
        """A journal-only packet if one is due at ``now``, else None."""
        sent = self._guards_sent
        if sent >= len(GUARD_DELAYS) or now - self.last_midi_time < GUARD_DELAYS[sent]:
            return None
        self._guards_sent = sent + 1
        journal = self.journal
        sequence = self.sequence
        octets = journal.journal_octets(sequence, timestamp)
        if octets is None:
            # Everything sent has been acknowledged: nothing left to repair.
            self._guards_sent = len(GUARD_DELAYS)
            return None
        self.sequence = (sequence + 1) & 0xFFFF
        journal.record(sequence, timestamp, ())
        return b"".join((rtp_header(sequence, timestamp, self.ssrc, self.marker, self.payload_type),
                         _JOURNAL_ONLY_SECTION,
                         octets))

    def acknowledge(self, sequence):
        """The peer reports ``sequence`` as the highest it received (AppleMIDI RS)."""
        if self.journal is not None:
            self.journal.acknowledge(sequence)
