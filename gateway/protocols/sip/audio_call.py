"""The audio media of one SIP call whose offer/answer chose a phone codec (PCMU/PCMA).

# implements RFC 3550 §5 through phone.py (RTP in and out) and §6 through rtcp.py
#   (our sender reports every REPORT_INTERVAL, RTCP BYE when the call ends; the
#   phone's reports are read and keep the call alive)
# implements RFC 4733 (telephone-event digits to notes) and G.711 (the jam's
#   sound, 20 ms frames) through phone.py, phone_dtmf.py and phone_audio.py
# implements RFC 5761 (RTP and RTCP on one port) when the offer asked for rtcp-mux
# follows RFC 4961 (symmetric RTP): our frames leave from the port we answered
#   with and go to where the phone's RTP comes from once it has come (a NAT
#   may have changed its port), until then to the offer's address

The phone's packets are taken only from the host its SDP or its SIP came
from. Inputs: :meth:`AudioCall.receive` (one datagram on our RTP or RTCP
port), :meth:`AudioCall.play` (what the session plays), :meth:`AudioCall.frames`
(the 20 ms frames due, called by the adapter's pacer for every call at once),
:meth:`AudioCall.timer` and :meth:`AudioCall.close`. Outputs: actions, as every
core's: :class:`~gateway.actions.Send` (RTCP; frames come from ``frames``),
:class:`~gateway.actions.Drop`, :class:`~gateway.protocols.sip.midi_call.Heard`
(the caller's keys as notes, for the session) and
:class:`~gateway.actions.PeerLeft` when the phone went silent for ``timeout``.

Sans-IO: no sockets, no clocks; ``now`` is Unix time (RTCP's NTP times are made from it).
"""

import collections

from gateway.actions import Drop, PeerLeft, RoundTrip, Send
from gateway.protocols.sip import rtcp
from gateway.protocols.sip.midi_call import RTCP, RTP, Heard
from gateway.protocols.sip.phone import PhoneCall
from gateway.protocols.sip.phone_audio import FRAME_SAMPLES, SAMPLE_RATE

__all__ = ["AudioCall", "REPORT_INTERVAL"]

REPORT_INTERVAL = 5.0
_U32 = 0xFFFFFFFF


class AudioCall:
    """Both directions of one phone call: keys in, the jam's sound out, RTCP both ways."""

    kind = "phone"

    def __init__(self, offer, ssrc, sequence, timestamp, start, *, keypad=None, channel=0,
                 velocity=100, hear_keys=True, max_voices=16, timeout=60.0, hosts=(),
                 cname="netgateway"):
        self.offer = offer
        self.ssrc = ssrc & _U32
        self.phone = PhoneCall(start, self.ssrc, sequence, timestamp,
                               audio_payload_type=offer.payload_type,
                               event_payload_type=offer.event_payload_type,
                               keypad=keypad, channel=channel, velocity=velocity,
                               max_voices=max_voices, hear_keys=hear_keys)
        self.start = start
        self.rtp_to = offer.address
        self.rtcp_to = offer.rtcp_address
        self.hosts = frozenset((offer.address[0], offer.rtcp_address[0]) + tuple(hosts))
        self.remote_ssrc = None
        self.rtp_latched = False
        self.rtcp_latched = False
        self.timeout = timeout
        self.last_heard = start
        self.report_due = start + REPORT_INTERVAL
        self.cname = cname
        self.closed = False
        self._counts = collections.Counter()

    def begin(self, start, now):
        """The call is answered: its first frame is due at ``start`` (the pacer's next tick)."""
        self.phone.clock.start = start
        self.start = start
        self.last_heard = now
        self.report_due = now + REPORT_INTERVAL

    # Receiving ------------------------------------------------------------------------

    def receive(self, data, source, now, via):
        """Actions for one datagram from ``source`` on our ``via`` (RTP or RTCP) port."""
        if self.closed:
            return []
        if source[0] not in self.hosts:
            self._counts["refused_in"] += 1
            return [Drop("unknown_source", source, "media from a host the call did not name")]
        if via == RTCP or (self.offer.rtcp_mux and rtcp.is_rtcp(data)):
            return self._rtcp(data, source, now)
        phone = self.phone
        malformed = phone.malformed
        events = phone.receive(data, now)
        if phone.malformed != malformed:
            return [Drop("malformed", source, "RTP or telephone-event")]
        self.last_heard = now
        if not self.rtp_latched:
            self.rtp_latched = True
            self.rtp_to = source
            self.remote_ssrc = int.from_bytes(data[8:12], "big")
            if self.offer.rtcp_mux and not self.rtcp_latched:
                self.rtcp_to = source
        if events:
            if not self.offer.receive:
                return [Drop("not_receiving", source, "the answer was sendonly")]
            return [Heard(self, events, None)]
        return []

    def _rtcp(self, data, source, now):
        try:
            report = rtcp.read(data, self.ssrc, now)
        except ValueError as error:
            if len(data) >= 8 and data[0] >> 6 == 2 and rtcp.is_rtcp(data):
                # RTCP all the same (baresip starts some compounds with APP): alive.
                self.last_heard = now
                self._counts["rtcp_other_in"] += 1
                return []
            self._counts["malformed_in"] += 1
            return [Drop("malformed", source, f"RTCP: {error}")]
        if not self.rtcp_latched:
            self.rtcp_latched = True
            self.rtcp_to = source
        self.last_heard = now
        self._counts["rtcp_in"] += 1
        if report.bye:
            self._counts["rtcp_bye_in"] += 1
        return [RoundTrip(self, report.round_trip)] if report.round_trip is not None else []

    # The session's sound --------------------------------------------------------------

    def play(self, events):
        """Session MidiEvents: they sound from the next frame."""
        if not self.closed:
            self.phone.play(events)

    def frames(self, now):
        """``(datagrams, events)``: the frames due at ``now`` for the phone, and note-offs of
        digits whose end never came (for the session)."""
        frames, events = self.phone.due(now)
        return (self.packets(frames) if frames else []), events

    def due(self, now):
        """``(frames, events)`` as :meth:`PhoneCall.due
        <gateway.protocols.sip.phone.PhoneCall.due>`: the pacer renders many calls'
        frames at once, then makes each call's datagrams with :meth:`packets`."""
        return self.phone.due(now)

    def packets(self, frames, payloads=()):
        """The datagrams of ``frames`` (none when the answer said we do not send)."""
        packets = self.phone.packets(frames, payloads)
        return packets if self.offer.send else []

    @property
    def synthesizer(self):
        return self.phone.synthesizer

    # Time -------------------------------------------------------------------------------

    def timer(self, now):
        """RTCP reports, and the silence timeout."""
        if self.closed:
            return []
        actions = []
        if now >= self.report_due:
            self.report_due = now + REPORT_INTERVAL
            actions.append(Send(self._report(now), self.rtcp_to, self._rtcp_via()))
        if self.timeout and now - self.last_heard > self.timeout:
            actions += self._end(now)
            actions.append(PeerLeft(self, "media_timeout"))
        return actions

    def close(self, now):
        """The call is over: note-offs for every key still down, and our RTCP BYE."""
        if self.closed:
            return []
        return self._end(now)

    def _end(self, now):
        self.closed = True
        actions = []
        released = self.phone.hang_up(now)
        if released:
            actions.append(Heard(self, released, None))
        actions.append(Send(self._report(now, bye=True), self.rtcp_to, self._rtcp_via()))
        return actions

    def _rtcp_via(self):
        return RTP if self.offer.rtcp_mux else RTCP

    def _report(self, now, bye=False):
        sender = self.phone.sender
        sent = None
        if sender.packets:
            timestamp = (sender.first_timestamp + int((now - self.start) * SAMPLE_RATE)) & _U32
            sent = (timestamp, sender.packets, sender.packets * FRAME_SAMPLES)
        self._counts["rtcp_out"] += 1
        return rtcp.compound(self.ssrc, now, sent=sent, cname=self.cname, bye=bye)

    # Status -----------------------------------------------------------------------------

    @property
    def counts(self):
        """Media packets by kind (the same kinds as RTP-MIDI calls', where they apply)."""
        phone = self.phone
        counts = collections.Counter(self._counts)
        counts["rtp_out"] += phone.sender.packets
        counts["rtp_in"] += phone.audio_received + phone.event_packets
        counts["event_in"] += phone.event_packets
        counts["malformed_in"] += phone.malformed
        counts["unknown_payload_type_in"] += phone.unknown_payload_type
        return +counts

    @property
    def phone_counts(self):
        """The frames and keys of this call: sent, late, skipped, digits..."""
        counters = self.phone.counters
        return {"frames_sent": counters["packets_sent"], "frames_late": counters["frames_late"],
                "frames_skipped": counters["frames_skipped"], "digits": counters["digits"],
                "digits_timed_out": counters["digits_timed_out"],
                "voices_stolen": counters["voices_stolen"]}

    def describe(self):
        offer = self.offer
        return {"media": "audio", "codec": "PCMU" if offer.payload_type == 0 else "PCMA",
                "telephone_event": offer.event_payload_type,
                "media_to": f"{self.rtp_to[0]}:{self.rtp_to[1]}", "direction": offer.direction,
                **self.phone_counts, **dict(self.counts)}
