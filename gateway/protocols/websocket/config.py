"""WebSocket door: configuration.

This module imports neither Twisted nor autobahn: configuration validation
imports every door's ``Config``, and autobahn's txaio allows one framework
(Twisted or asyncio) per process, so the Twisted server
(:mod:`gateway.protocols.websocket.server`) is imported only when the door
is actually built.
"""

import dataclasses

from gateway.schema import bounded


@dataclasses.dataclass
class Config:
    enabled: bool = True
    path: str = bounded("ws", doc="URL path of the WebSocket endpoint on the web site")
    max_message_bytes: int = bounded(65536, minimum=64, maximum=16 * 1024 * 1024)
    send_buffer_bytes: int = bounded(256 * 1024, minimum=1024, maximum=64 * 1024 * 1024,
                                     doc="queued bytes per slow reader before it is dropped")
    ping_interval: float = bounded(5.0, minimum=0.5, maximum=300.0)

    def listening_ports(self, path):
        return []     # served on the web site's port

    def check(self, name, config):
        problems = []
        if not config.web.enabled:
            problems.append(f"{name}.enabled: the WebSocket door is served by the web"
                            " site; expected web.enabled: true (or websocket.enabled: false)")
        if not self.path.strip("/") or "/" in self.path.strip("/"):
            problems.append(f"{name}.path: expected one path segment such as 'ws',"
                            f" got {self.path!r}")
        return problems
