"""The RTP-MIDI media of one SIP call whose SDP offer/answer chose rtp-midi.

# implements RFC 6295 on both sides through gateway.protocols.rtpmidi.media (one
#   RtpMidiStream: recovery journal sent and read, latetime) with the parameters
#   the offer set (gateway.protocols.sip.midi_sdp: j_sec, guardtime, direction)
# implements RFC 6295 Appendix C.2.2.2 (closed-loop journal: trimmed by the
#   caller's RTCP receiver reports) and RFC 3550 §6 through rtcp.py (our
#   reports every REPORT_INTERVAL, so the caller can trim its journal too)
# implements RFC 5761 (RTP and RTCP on one port) when the offer asked for rtcp-mux
# follows RFC 4961 (symmetric RTP): our media leaves from the ports we answered
#   with, and goes to where the caller's media comes from once it has come

The caller's packets are taken only from the host its SDP or its SIP came
from; the first valid RTP packet fixes the caller's SSRC and, as a NAT may
have changed its port, the address our RTP goes to (likewise for RTCP).

Inputs: :meth:`MidiCall.receive` (one datagram on our RTP or RTCP port),
:meth:`MidiCall.packets` (what the session plays, prepared once per fan-out),
:meth:`MidiCall.timer` and :meth:`MidiCall.close`. Outputs: actions, as every
core's (:class:`~gateway.actions.Send` with ``via`` RTP or RTCP,
:class:`~gateway.actions.Drop`, :class:`Heard`, and
:class:`~gateway.actions.PeerLeft` when the caller's media went silent for
``timeout``).

Sans-IO: no sockets, no clocks; ``now`` is Unix time (RTCP's NTP times are made from it).
"""

import collections
import typing

from gateway.actions import Drop, PeerLeft, RoundTrip, Send
from gateway.protocols.rtpmidi.media import RtpMidiStream
from gateway.protocols.rtpmidi.payload import MalformedPacket, RtpMidiPacket, command_section
from gateway.protocols.rtpmidi.stream import PreparedPacket
from gateway.protocols.sip import rtcp

__all__ = ["MidiCall", "AwaitingAnswer", "Heard", "RTP", "RTCP", "REPORT_INTERVAL"]

RTP = "rtp"
RTCP = "rtcp"
REPORT_INTERVAL = 5.0
"""Seconds between our RTCP reports (RFC 3550 §6.2's minimum for a two-party session)."""

_EMPTY = PreparedPacket(command_section([], journal_follows=False), [])


class Heard(typing.NamedTuple):
    """The caller of ``call`` played ``events``; ``midi_list`` is their RTP-MIDI list as it came."""

    call: typing.Any
    events: list
    midi_list: typing.Optional[bytes]


class MidiCall:
    """Both directions of one call's RTP-MIDI, its RTCP, its guard and keep-alive packets."""

    def __init__(self, offer, ssrc, sequence, clock_base, now, *, latetime=1.0, journal=True,
                 timeout=60.0, hosts=(), cname="netgateway"):
        self.offer = offer
        self.ssrc = ssrc
        self.stream = RtpMidiStream(ssrc, sequence, offer.clock_rate, clock_base, latetime,
                                    journal=journal and offer.journal,
                                    payload_type=offer.payload_type, marker=True)
        self.journal = journal and offer.journal
        self.rtp_to = offer.address
        self.rtcp_to = offer.rtcp_address
        self.hosts = frozenset((offer.address[0], offer.rtcp_address[0]) + tuple(hosts))
        self.remote_ssrc = None
        self.rtp_latched = False
        self.rtcp_latched = False
        self.timeout = timeout
        self.last_heard = now
        self.last_sent = now
        self.report_due = now + REPORT_INTERVAL
        self.cname = cname
        self.sent_since_report = False
        self.packets_sent = 0
        self.octets_sent = 0
        self.counts = collections.Counter()     # media packets by kind, for /status and /metrics
        self.closed = False

    # Receiving ------------------------------------------------------------------------

    def receive(self, data, source, now, via):
        """Actions for one datagram from ``source`` on our ``via`` (RTP or RTCP) port."""
        if self.closed:
            return []
        if source[0] not in self.hosts:
            self.counts["refused_in"] += 1
            return [Drop("unknown_source", source, "media from a host the call did not name")]
        if via == RTCP or (self.offer.rtcp_mux and rtcp.is_rtcp(data)):
            return self._rtcp(data, source, now)
        return self._rtp(data, source, now)

    def _rtp(self, data, source, now):
        try:
            packet = RtpMidiPacket.parse(data, lazy_journal=True)
        except MalformedPacket as error:
            self.counts["malformed_in"] += 1
            return [Drop("malformed", source, str(error))]
        if packet.payload_type != self.offer.payload_type:
            self.counts["malformed_in"] += 1
            return [Drop("wrong_payload_type", source, f"payload type {packet.payload_type}")]
        if self.remote_ssrc is None:
            self.remote_ssrc = packet.ssrc
        elif packet.ssrc != self.remote_ssrc:
            self.counts["refused_in"] += 1
            return [Drop("unexpected_ssrc", source, f"ssrc {packet.ssrc:#010x}")]
        if not self.rtp_latched:
            self.rtp_latched = True
            self.rtp_to = source
            if self.offer.rtcp_mux and not self.rtcp_latched:
                self.rtcp_to = source
        self.last_heard = now
        self.counts["rtp_in"] += 1
        try:
            received = self.stream.receive(packet, now)
        except MalformedPacket as error:       # its journal, read after a loss
            self.counts["malformed_in"] += 1
            return [Drop("malformed", source, str(error))]
        actions = []
        if received.late:
            actions.append(Drop("late", source, "note-on later than latetime", received.late))
        if received.events:
            if not self.offer.receive:
                return actions + [Drop("not_receiving", source, "the answer was sendonly")]
            actions.append(Heard(self, received.events, received.midi_list))
        return actions

    def _rtcp(self, data, source, now):
        try:
            report = rtcp.read(data, self.ssrc, now)
        except ValueError as error:
            self.counts["malformed_in"] += 1
            return [Drop("malformed", source, f"RTCP: {error}")]
        if self.remote_ssrc is not None and report.ssrc != self.remote_ssrc:
            self.counts["refused_in"] += 1
            return [Drop("unexpected_ssrc", source, f"RTCP from ssrc {report.ssrc:#010x}")]
        if not self.rtcp_latched:
            self.rtcp_latched = True
            self.rtcp_to = source
        self.last_heard = now
        self.counts["rtcp_in"] += 1
        if report.highest is not None:
            self.stream.feedback(report.highest & 0xFFFF)
            self.counts["feedback_in"] += 1
        if report.bye:
            self.counts["rtcp_bye_in"] += 1
        return [RoundTrip(self, report.round_trip)] if report.round_trip is not None else []

    # Sending ----------------------------------------------------------------------------

    def packets(self, prepared, timestamp, now):
        """The datagrams carrying ``prepared`` (stream.prepare's packets) to the caller."""
        if self.closed or not self.offer.send:
            return []
        out = []
        for item in prepared:
            out.append(self._sent(self.stream.packet(item, timestamp, now), now, "rtp_out"))
        return out

    def _sent(self, data, now, kind):
        self.last_sent = now
        self.sent_since_report = True
        self.packets_sent += 1
        self.octets_sent += len(data) - 12
        self.counts[kind] += 1
        return data

    def timer(self, now):
        """Guard packets, guardtime keep-alives, RTCP reports, and the silence timeout."""
        if self.closed:
            return []
        actions = []
        timestamp = self.stream.ticks(now)
        if self.offer.send:
            data = self.stream.guard_packet(timestamp, now) if self.journal else None
            if data is not None:
                actions.append(Send(self._sent(data, now, "guard_out"), self.rtp_to, RTP))
            guard = self.offer.guard_seconds
            if guard is not None and now - self.last_sent >= guard:
                data = self.stream.packet(_EMPTY, timestamp, now)
                actions.append(Send(self._sent(data, now, "keepalive_out"), self.rtp_to, RTP))
        if now >= self.report_due:
            self.report_due = now + REPORT_INTERVAL
            actions.append(Send(self._report(now, timestamp), self.rtcp_to, self._rtcp_via()))
        if self.timeout and now - self.last_heard > self.timeout:
            self.closed = True
            actions.append(Send(self._report(now, timestamp, bye=True), self.rtcp_to,
                                self._rtcp_via()))
            actions.append(PeerLeft(self, "media_timeout"))
        return actions

    def close(self, now):
        """The call is over: our RTCP BYE."""
        if self.closed:
            return []
        self.closed = True
        return [Send(self._report(now, self.stream.ticks(now), bye=True), self.rtcp_to,
                     self._rtcp_via())]

    def _rtcp_via(self):
        return RTP if self.offer.rtcp_mux else RTCP

    def _report(self, now, timestamp, bye=False):
        receiver = self.stream.journal_receiver
        sent = (timestamp, self.packets_sent, self.octets_sent) if self.sent_since_report \
            else None
        self.sent_since_report = False
        self.counts["rtcp_out"] += 1
        return rtcp.compound(self.ssrc, now, self.remote_ssrc, receiver.highest,
                             receiver.lost_packets, sent, self.cname, bye)

    def describe(self):
        receiver = self.stream.journal_receiver
        return {"media_to": f"{self.rtp_to[0]}:{self.rtp_to[1]}",
                "clock_rate": self.offer.clock_rate, "payload_type": self.offer.payload_type,
                "journal": self.journal, "direction": self.offer.direction,
                "packets_received": self.stream.packets_received,
                "packets_lost": receiver.lost_packets, "gaps_repaired": receiver.repaired_gaps,
                "late_dropped": self.stream.late_dropped, **dict(self.counts)}


class _Offered(typing.NamedTuple):
    clock_rate: int


class AwaitingAnswer:
    """The media of a call we made the offer in, before its answer came.

    An INVITE without an offer gets ours in the 200 and its answer in the ACK
    (RFC 3264 §5, RFC 3261 §13.2.1): until then nothing is sent, and what arrives
    on the call's ports is counted and dropped. The adapter then replaces this
    with a :class:`MidiCall` made from the answer.
    """

    def __init__(self, now, clock_rate=44100):
        self.offer = _Offered(clock_rate)
        self.rtp_to = None
        self.last_heard = now
        self.counts = collections.Counter()
        self.closed = False

    def receive(self, data, source, now, via):
        self.counts["before_answer_in"] += 1
        return [Drop("before_answer", source, "media before the SDP answer")]

    def packets(self, prepared, timestamp, now):
        return []

    def timer(self, now):
        return []

    def close(self, now):
        self.closed = True
        return []

    def describe(self):
        return {"media": "awaiting the SDP answer", **dict(self.counts)}
