"""The media side of a phone call: keypad in, the jam's sound out.

# implements RTP (RFC 3550 §5.1) for an audio-only caller: the fixed header
#   parsed (CSRC list, header extension and padding skipped) and built
# implements RFC 3551 §4.5.14 (PCMU/PCMA, static payload types 0 and 8) with
#   §4.1's 20 ms packetization: 160 samples, the timestamp advancing by 160,
#   the marker bit on the first packet and on the first after a gap
# implements RFC 4733 §2.3 on the receiving side through phone_dtmf.py (the
#   negotiated telephone-event payload type; DTMF digits become notes)
# implements ITU-T G.711 through phone_audio.py (the synthesizer's frames)

A phone cannot send MIDI, so a :class:`PhoneCall` meets it halfway: its
keypad's DTMF digits (RFC 4733 telephone-events) become notes through a
:class:`~gateway.protocols.sip.phone_dtmf.KeypadPlayer`, published to the
session like any member's, and everything the session plays is rendered by a
:class:`~gateway.protocols.sip.phone_audio.Synthesizer` into the G.711 audio
the phone plays. The caller also hears their own keys (``hear_keys``), which
the session never sends back to the member who played them. The caller's
own audio (their microphone) is counted and dropped.

The SIP door's adapter owns the socket and the clock. It calls
:meth:`PhoneCall.receive` with each datagram from the caller and publishes
the MidiEvents it returns; :meth:`PhoneCall.play` with what the session
delivers; :meth:`PhoneCall.tick` from a ``LoopingCall`` every 20 ms on the
reactor clock, sending the datagrams and publishing the events it returns
(digits whose end packets were lost end there), or its two halves
:meth:`PhoneCall.due` and :meth:`PhoneCall.packets`, between which an adapter
renders many calls' frames at once; and :meth:`PhoneCall.hang_up` when the call
ends, publishing its note-offs.

Pacing (:class:`FrameClock`): frame k is due at ``start + k * 20 ms`` on
the adapter's clock, computed from k and never accumulated, so a call stays
on time however long it lasts and however the reactor's calls jitter. A tick
that comes late sends the frames it owes, at most ``max_catch_up``; older
ones are skipped (the timestamp jumps, the marker bit tells the phone's
jitter buffer) and counted, as are frames sent late.

Sans-IO: no Twisted, sockets or clocks.
"""

import math
import struct
import typing

from gateway.protocols.rtpmidi.journal_wire import MalformedPacket
from gateway.protocols.sip import phone_audio
from gateway.protocols.sip.phone_audio import FRAME_SAMPLES, FRAME_SECONDS, PCMA, PCMU
from gateway.protocols.sip.phone_dtmf import (
    EVENT_TIMEOUT, KeypadPlayer, MalformedEvent, TelephoneEvents,
)

__all__ = [
    "PhoneCall", "Tick", "FrameClock", "AudioSender", "RtpPacket", "parse_rtp",
    "MalformedPacket", "PCMU", "PCMA", "AUDIO_PAYLOAD_TYPES",
]

AUDIO_PAYLOAD_TYPES = (PCMU, PCMA)
RTP_VERSION = 2
_HEADER = struct.Struct("!BBHII")
_U32 = 0xFFFFFFFF


class RtpPacket(typing.NamedTuple):
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(datagram):
    """The :class:`RtpPacket` of a datagram; raises MalformedPacket (RFC 3550 §5.1)."""
    if len(datagram) < _HEADER.size:
        raise MalformedPacket(f"RTP packet of {len(datagram)} octets is shorter than its header")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(datagram)
    if first >> 6 != RTP_VERSION:
        raise MalformedPacket(f"RTP version {first >> 6}, expected 2")
    start = _HEADER.size + 4 * (first & 0x0F)           # CSRC list
    end = len(datagram)
    if first & 0x10:                                    # header extension
        if end < start + 4:
            raise MalformedPacket("RTP header extension is cut short")
        start += 4 + 4 * struct.unpack_from("!H", datagram, start + 2)[0]
    if first & 0x20:                                    # padding, its count in the last octet
        end -= datagram[-1]
    if start > end:
        raise MalformedPacket("RTP header, extension or padding overruns the packet")
    return RtpPacket(second & 0x7F, bool(second & 0x80), sequence, timestamp, ssrc,
                     bytes(datagram[start:end]))


class AudioSender:
    """Our RTP stream to the phone: one packet per 20 ms frame (RFC 3551 §4.1)."""

    def __init__(self, ssrc, sequence, timestamp, payload_type=PCMU):
        if payload_type not in AUDIO_PAYLOAD_TYPES:
            raise ValueError(f"audio payload type {payload_type} is neither PCMU (0) nor PCMA (8)")
        self.ssrc = ssrc & _U32
        self.sequence = sequence & 0xFFFF
        self.first_timestamp = timestamp & _U32
        self.payload_type = payload_type
        self.marker = True               # the first packet starts a talkspurt
        self.packets = 0

    def packet(self, frame, payload):
        """The datagram of frame number ``frame`` (its timestamp: first + 160 per frame)."""
        timestamp = (self.first_timestamp + frame * FRAME_SAMPLES) & _U32
        second = self.payload_type | (0x80 if self.marker else 0)
        header = _HEADER.pack(0x80, second, self.sequence, timestamp, self.ssrc)
        self.marker = False
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.packets += 1
        return header + payload

    def gap(self):
        """Frames were skipped: the next packet starts a talkspurt again."""
        self.marker = True


class FrameClock:
    """Which 20 ms frames are due at a given time, drift-free.

    Frame k is due at ``start + k * period``. :meth:`due` gives the numbers of
    the frames to send now: those due and not yet sent, the newest
    ``max_catch_up`` of them when there are more (the rest are skipped and
    counted in ``skipped``). A frame sent more than ``late_after`` seconds
    after it was due counts in ``late``. A frame may go ``early`` seconds
    before it is due (a quarter frame by default), so that a tick that comes
    a little early, as timers and clocks of different sources do, sends the
    frame rather than leaving it 20 ms late to the next tick.
    """

    def __init__(self, start, period=FRAME_SECONDS, max_catch_up=3, late_after=None,
                 early=None):
        if max_catch_up < 1:
            raise ValueError(f"max_catch_up must be at least 1, got {max_catch_up}")
        self.start = start
        self.period = period
        self.max_catch_up = max_catch_up
        self.late_after = period / 2 if late_after is None else late_after
        self.early = period / 4 if early is None else early
        self.next_frame = 0
        self.sent = 0
        self.late = 0
        self.skipped = 0

    def due_time(self, frame):
        return self.start + frame * self.period

    def due(self, now):
        """A ``range`` of the frame numbers to send at ``now`` (often one, or none)."""
        newest = math.floor((now - self.start + self.early) / self.period)
        owed = newest - self.next_frame + 1
        if owed <= 0:
            return range(0)
        if owed > self.max_catch_up:
            self.skipped += owed - self.max_catch_up
            self.next_frame = newest - self.max_catch_up + 1
        frames = range(self.next_frame, newest + 1)
        self.next_frame = newest + 1
        self.sent += len(frames)
        limit = now - self.late_after
        for frame in frames:
            if self.due_time(frame) < limit:
                self.late += 1
        return frames

    def next_due(self):
        """When the next frame is due (an adapter may schedule itself by it)."""
        return self.due_time(self.next_frame)


class Tick(typing.NamedTuple):
    """What :meth:`PhoneCall.tick` gives: datagrams for the phone, events for the session."""

    packets: list
    events: list


class PhoneCall:
    """The media of one audio-only call: RTP in and out, DTMF to notes, session MIDI to sound.

    ``audio_payload_type`` is the negotiated PCMU (0) or PCMA (8);
    ``event_payload_type`` the negotiated telephone-event type (None if the
    phone offered none: then it has no keys for us). ``ssrc``, ``sequence``
    and ``timestamp`` start our stream (random, RFC 3550 §5.1); ``now`` is
    when the first frame is due.
    """

    def __init__(self, now, ssrc, sequence, timestamp, audio_payload_type=PCMU,
                 event_payload_type=None, keypad=None, channel=0, velocity=100,
                 max_voices=16, event_timeout=EVENT_TIMEOUT, hear_keys=True, max_catch_up=3):
        self.sender = AudioSender(ssrc, sequence, timestamp, audio_payload_type)
        self.clock = FrameClock(now, max_catch_up=max_catch_up)
        self.event_payload_type = event_payload_type
        self.events = TelephoneEvents(event_timeout)
        self.keys = KeypadPlayer(keypad, channel, velocity)
        self.synthesizer = phone_audio.Synthesizer(max_voices)
        self.hear_keys = hear_keys
        self.ended = False
        self._next_frame = 0             # the frame the synthesizer renders next
        self.audio_received = 0          # the caller's microphone: counted, not used
        self.event_packets = 0
        self.malformed = 0
        self.unknown_payload_type = 0

    @property
    def audio_payload_type(self):
        return self.sender.payload_type

    # From the phone ---------------------------------------------------------
    def receive(self, datagram, now):
        """The MidiEvents (keypad notes) of one datagram from the phone.

        Never raises for what the phone sent: malformed packets are counted
        (``malformed``) and yield nothing.
        """
        try:
            packet = parse_rtp(datagram)
        except MalformedPacket:
            self.malformed += 1
            return []
        payload_type = packet.payload_type
        if payload_type == self.event_payload_type:
            self.event_packets += 1
            try:
                changes = self.events.receive(packet.timestamp, packet.payload, now, packet.ssrc)
            except MalformedEvent:
                self.malformed += 1
                return []
            return self._keys(changes)
        if payload_type in AUDIO_PAYLOAD_TYPES:
            self.audio_received += 1
        else:
            # RTCP on the RTP port (RFC 5761 muxing), comfort noise, RFC 2198 redundancy...
            self.unknown_payload_type += 1
        return []

    def _keys(self, changes):
        if not changes:
            return []
        events = self.keys.play(changes)
        if self.hear_keys:
            for event in events:
                self.synthesizer.play(event.data)
        return events

    # From the session -------------------------------------------------------
    def play(self, events):
        """Session MidiEvents to render; they sound from the next frame."""
        play = self.synthesizer.play
        for event in events:
            play(event.data)

    # Paced by the adapter ---------------------------------------------------
    def tick(self, now):
        """The frames due at ``now`` as datagrams, and the note-offs of digits timed out."""
        frames, events = self.due(now)
        if not frames:
            return Tick([], events)
        return Tick(self.packets(frames), events)

    def due(self, now):
        """``(frames, events)``: the numbers of the frames due at ``now`` (a ``range``,
        often of one) and the note-offs of digits timed out. The frames are then made
        with :meth:`packets`, which an adapter may give a frame rendered with others'
        (:func:`~gateway.protocols.sip.phone_audio.render_many`)."""
        if self.ended:
            return range(0), []
        events = self._keys(self.events.expire(now))
        frames = self.clock.due(now)
        if frames and frames.start != self._next_frame:
            # The clock skipped frames: the voices move on as if they had sounded.
            self.synthesizer.skip(frames.start - self._next_frame)
            self.sender.gap()
            self._next_frame = frames.start
        return frames, events

    def packets(self, frames, payloads=()):
        """The datagrams of ``frames`` (from :meth:`due`): their payloads as given (the
        G.711 octets of the first frames, already rendered), the rest rendered here."""
        sender = self.sender
        synthesizer = self.synthesizer
        payload_type = sender.payload_type
        packets = []
        for index, frame in enumerate(frames):
            payload = payloads[index] if index < len(payloads) else \
                synthesizer.render_payload(payload_type)
            packets.append(sender.packet(frame, payload))
        self._next_frame = frames.stop
        return packets

    def hang_up(self, now):
        """Note-offs for every key still down (the call ended); nothing is sent after."""
        if self.ended:
            return []
        self.ended = True
        events = self.keys.play(self.events.end_all(now))
        events += self.keys.release_all(now)
        return events

    @property
    def counters(self):
        """Figures for /status and /metrics."""
        clock = self.clock
        events = self.events
        return {
            "packets_sent": self.sender.packets,
            "frames_late": clock.late,
            "frames_skipped": clock.skipped,
            "audio_received": self.audio_received,
            "event_packets": self.event_packets,
            "digits": events.digits,
            "digits_timed_out": events.ended_by_timeout,
            "event_duplicates": events.duplicates,
            "malformed": self.malformed,
            "unknown_payload_type": self.unknown_payload_type,
            "voices_stolen": self.synthesizer.stolen,
        }

