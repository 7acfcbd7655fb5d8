"""RTP-MIDI door: Prometheus metrics (``netgateway_rtpmidi_*``).

Reads the door's endpoints and members at each scrape; registered by
:class:`~gateway.protocols.rtpmidi.door.RtpMidiDoor` when the web site
serves ``/metrics``.
"""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class RtpMidiCollector:
    """Prometheus view of every AppleMIDI peer: latency and RTP packet counters."""

    def __init__(self, door):
        self.door = door

    def collect(self):
        labels = ["session", "peer"]
        rtt = GaugeMetricFamily("netgateway_rtpmidi_rtt_seconds",
                                "Round trip measured by AppleMIDI CK", labels=labels)
        received = CounterMetricFamily("netgateway_rtpmidi_packets_received",
                                       "RTP packets received", labels=labels)
        lost = CounterMetricFamily("netgateway_rtpmidi_packets_lost",
                                   "RTP packets missing from the sequence", labels=labels)
        repaired = CounterMetricFamily("netgateway_rtpmidi_gaps_repaired",
                                       "Losses repaired from the recovery journal",
                                       labels=labels)
        late = CounterMetricFamily("netgateway_rtpmidi_late_dropped",
                                   "Note-ons dropped for arriving after latetime",
                                   labels=labels)
        for endpoint in self.door.endpoints:
            for member in list(endpoint.members.values()):
                peer = member.peer
                key = [endpoint.entry.session, f"{peer.control_addr[0]}:{peer.control_addr[1]}"]
                if peer.rtt is not None:
                    rtt.add_metric(key, peer.rtt)
                stream = member.stream
                receiver = stream.journal_receiver
                received.add_metric(key, stream.packets_received)
                lost.add_metric(key, receiver.lost_packets)
                repaired.add_metric(key, receiver.repaired_gaps)
                late.add_metric(key, stream.late_dropped)
        yield from (rtt, received, lost, repaired, late)
