"""RTMP door: configuration (the ``rtmp`` section).

Imports nothing from Twisted or prometheus_client, so a configuration is
validated without them; the door itself is :mod:`gateway.protocols.rtmp.door`.
"""

import dataclasses
import typing

from gateway.schema import bounded, port


@dataclasses.dataclass
class Config:
    enabled: bool = True
    host: typing.Optional[str] = bounded(None, doc="address the RTMP port listens on;"
                                                   " null: network.bind")
    port: int = port(1935, doc="rtmp:// port")
    tls_port: typing.Optional[int] = bounded(
        None, minimum=1, maximum=65535,
        doc="rtmps:// port, with web.tls's certificate; null: no rtmps")
    app: str = bounded("jam", doc="application name: rtmp://HOST/APP/SESSION[/STREAM]")
    default_stream: str = bounded("live", doc="stream of rtmp://HOST/APP/SESSION, where the"
                                              " playpath names the session")
    midi_stream: str = bounded("midi", doc="players of this stream get the session's MIDI"
                                           " as onMidi data messages")
    http_path: str = bounded("live", doc="web site path of HTTP-FLV and FLV over WebSocket:"
                                         " /PATH/SESSION/STREAM.flv")
    max_connections: int = bounded(2000, minimum=1, maximum=100000)
    player_queue_bytes: int = bounded(1024 * 1024, minimum=16 * 1024,
                                      maximum=256 * 1024 * 1024,
                                      doc="bytes waiting for one slow player before whole"
                                          " frames are dropped (video first)")
    slow_player_seconds: float = bounded(10.0, minimum=0.5, maximum=600.0,
                                         doc="a player whose socket stays full this long"
                                             " is disconnected")
    handshake_timeout: float = bounded(10.0, minimum=0.5, maximum=600.0,
                                       doc="seconds from accept to a connect command")
    idle_timeout: float = bounded(60.0, minimum=3.0, maximum=86400.0,
                                  doc="seconds of silence (pings unanswered) before closing")

    def listening_ports(self, path):
        ports = [(f"{path}.port", "tcp", self.port)]
        if self.tls_port is not None:
            ports.append((f"{path}.tls_port", "tcp", self.tls_port))
        return ports

    def check(self, name, config):
        problems = []
        for key in ("app", "default_stream", "midi_stream", "http_path"):
            value = getattr(self, key)
            if not value or "/" in value.strip("/") or "?" in value or value != value.strip():
                problems.append(f"{name}.{key}: expected one path segment such as"
                                f" {getattr(Config, key)!r}, got {value!r}")
        if self.tls_port is not None and config.web.tls is None:
            problems.append(f"{name}.tls_port: rtmps uses the web site's certificate;"
                            " expected web.tls to be set (or tls_port: null)")
        return problems
