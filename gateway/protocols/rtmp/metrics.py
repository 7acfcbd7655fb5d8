"""RTMP door: Prometheus metrics (``netgateway_rtmp_*``).

Read from the door at each scrape; registered by
:class:`~gateway.protocols.rtmp.door.RtmpDoor` when the web site serves
``/metrics``. Dropped input and frames, by reason (``bad_handshake``,
``bad_chunk_stream``, ``frame_dropped``, ``slow_player``, ...), are in
``netgateway_dropped{door="rtmp"}``.
"""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class RtmpCollector:
    """Prometheus view of the RTMP door: connections, live streams, players, frames."""

    def __init__(self, door):
        self.door = door

    def collect(self):
        door = self.door
        connections = GaugeMetricFamily("netgateway_rtmp_connections", "RTMP connections open")
        connections.add_metric([], len(door.connections))
        listeners = GaugeMetricFamily("netgateway_rtmp_web_listeners",
                                      "HTTP-FLV and FLV-over-WebSocket listeners")
        listeners.add_metric([], len(door.web_listeners))
        players = GaugeMetricFamily("netgateway_rtmp_stream_players", "Players per live stream",
                                    labels=["session", "stream"])
        publishing = GaugeMetricFamily("netgateway_rtmp_stream_publishing",
                                       "1 while the live stream has a publisher",
                                       labels=["session", "stream"])
        for stream in door.live:
            players.add_metric([stream.session, stream.name], len(stream.players))
            publishing.add_metric([stream.session, stream.name],
                                  int(stream.publisher is not None))
        relayed = CounterMetricFamily("netgateway_rtmp_frames_relayed",
                                      "Publishers' frames fanned out to players")
        relayed.add_metric([], door.frames_relayed)
        refused = CounterMetricFamily("netgateway_rtmp_publish_refused",
                                      "Second publishers refused (NetStream.Publish.BadName)")
        refused.add_metric([], door.refused_publishers)
        yield from (connections, listeners, players, publishing, relayed, refused)
