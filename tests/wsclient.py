"""A small autobahn (asyncio) client speaking the jam protocol, for tests and bench."""

import asyncio
import json
import time

from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol


class JamClientProtocol(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.opened.set_result(self)

    def onMessage(self, payload, isBinary):
        message = ("binary", payload) if isBinary else json.loads(payload)
        if self.factory.stamp and isinstance(message, dict):
            message["arrived"] = time.monotonic()       # for timing tests (connect(stamp=True))
        # A ping that crosses our own close frame gets no pong (autobahn would raise).
        if isinstance(message, dict) and message.get("type") == "ping" \
                and self.state == self.STATE_OPEN:
            self.sendMessage(json.dumps({"type": "pong", "id": message["id"]}).encode())
        self.factory.inbox.put_nowait(message)

    def onClose(self, wasClean, code, reason):
        self.factory.closed.set_result((code, reason)) if not self.factory.closed.done() else None
        if not self.factory.opened.done():
            self.factory.opened.set_exception(ConnectionError(reason))


class JamClient:
    """``await JamClient.connect(url)``, then ``join``, ``send_midi``, ``expect``."""

    def __init__(self, factory, protocol):
        self.factory = factory
        self.protocol = protocol

    @classmethod
    async def connect(cls, url, timeout=10.0, ssl=None, stamp=False):
        """``stamp``: every JSON message gets ``arrived``, time.monotonic() when it came."""
        loop = asyncio.get_running_loop()
        factory = WebSocketClientFactory(url)
        factory.protocol = JamClientProtocol
        factory.stamp = stamp
        factory.inbox = asyncio.Queue()
        factory.opened = loop.create_future()
        factory.closed = loop.create_future()
        host_port = url.split("//", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        await loop.create_connection(factory, host, int(port), ssl=ssl)
        protocol = await asyncio.wait_for(factory.opened, timeout)
        return cls(factory, protocol)

    def send(self, message):
        self.protocol.sendMessage(json.dumps(message).encode())

    def send_binary(self, payload):
        self.protocol.sendMessage(bytes(payload), isBinary=True)

    async def join(self, session, passphrase, name, midi="json"):
        self.send({"type": "join", "session": session, "passphrase": passphrase,
                   "name": name, "midi": midi})
        return await self.expect(lambda m: m.get("type") in ("joined", "error"))

    def send_midi(self, data):
        self.send({"type": "midi", "data": list(data)})

    async def expect(self, predicate, timeout=5.0):
        """The next message matching ``predicate``; others are skipped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("no matching message")
            message = await asyncio.wait_for(self.factory.inbox.get(), remaining)
            if isinstance(message, dict) and predicate(message):
                return message
            if isinstance(message, tuple) and predicate({"type": "binary",
                                                         "data": message[1]}):
                return {"type": "binary", "data": message[1]}

    async def midi(self, timeout=5.0):
        return await self.expect(lambda m: m.get("type") in ("midi", "binary"), timeout)

    async def closed(self, timeout=5.0):
        return await asyncio.wait_for(asyncio.shield(self.factory.closed), timeout)

    def close(self):
        self.protocol.sendClose(1000)

    def abort(self):
        self.protocol.transport.abort()
