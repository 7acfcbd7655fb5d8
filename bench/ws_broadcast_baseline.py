"""The baseline for bench/websocket_fanout.py: a minimal autobahn broadcast server.

No registry, no parsing of MIDI: a client sends one JSON text frame
``{"type": "join", "session": NAME}``; every later binary frame is relayed as
is to the other clients of that session (prepared once, sent to each), with
TCP_NODELAY set as in the gateway. Usage: python ws_broadcast_baseline.py PORT
"""

import json
import sys
from collections import defaultdict

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor

groups = defaultdict(list)


class Broadcast(WebSocketServerProtocol):
    group = None

    def onOpen(self):
        self.transport.setTcpNoDelay(True)

    def onMessage(self, payload, isBinary):
        if not isBinary:
            self.group = groups[json.loads(payload)["session"]]
            self.group.append(self)
            self.sendMessage(b'{"type":"joined"}')
            return
        frame = self.factory.prepareMessage(payload, isBinary=True)
        for peer in self.group:
            if peer is not self:
                peer.sendPreparedMessage(frame)

    def onClose(self, wasClean, code, reason):
        if self.group is not None:
            self.group.remove(self)


factory = WebSocketServerFactory()
factory.protocol = Broadcast
reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")
reactor.run()
