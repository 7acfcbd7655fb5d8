"""SIP over a byte stream (TCP, TLS): where one message ends and the next begins.

# implements RFC 3261 §18.3 (on a stream the Content-Length says where the body ends;
#   a message without one has no body) and §7.5 (CRLFs before a start line are skipped)
# implements RFC 5626 §3.5.1 (a CRLFCRLF "ping" between messages is answered with a
#   CRLF "pong")

One :class:`StreamFramer` per connection. ``feed(data)`` returns what is now
complete: message octets, :data:`PING`, or a :class:`Broken` when the peer sent
a header section larger than ``max_header_octets``, a body larger than
``max_body_octets`` or a Content-Length that is not a number. After that the
framer takes nothing more (``broken`` is set): the stream cannot be resynchronised,
so the connection is closed (after a 513 when the headers are readable).

Sans-IO: bytes in, frames out; the buffer never exceeds the limits by more than
one ``feed``.
"""

import re
import typing

__all__ = ["StreamFramer", "PING", "Broken", "MAX_HEADER_OCTETS", "MAX_BODY_OCTETS"]

MAX_HEADER_OCTETS = 16384
MAX_BODY_OCTETS = 65536

PING = "ping"

_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$",
                             re.I | re.M)
_HEAD_END = re.compile(rb"\r?\n\r?\n")


class Broken(typing.NamedTuple):
    """The stream broke a limit: ``reason`` (a drop counter's name) and the head so far."""

    reason: str
    head: bytes


class StreamFramer:
    def __init__(self, max_header_octets=MAX_HEADER_OCTETS, max_body_octets=MAX_BODY_OCTETS):
        self.max_header_octets = max_header_octets
        self.max_body_octets = max_body_octets
        self.buffer = bytearray()
        self.broken = None
        self._head_length = None    # octets of head + empty line of the message in progress
        self._body_length = None

    def feed(self, data):
        """The frames that ``data`` completes, in order."""
        if self.broken is not None:
            return []
        self.buffer += data
        frames = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)
            if isinstance(frame, Broken):
                self.broken = frame
                self.buffer = bytearray()
                return frames

    def _next(self):
        buffer = self.buffer
        if self._head_length is None:
            # Between messages: a ping, or CRLFs to skip (§7.5).
            while buffer[:2] == b"\r\n" or buffer[:1] == b"\n":
                if buffer[:4] == b"\r\n\r\n":
                    del buffer[:4]
                    return PING
                if buffer == b"\r\n" or buffer == b"\r\n\r":
                    return None         # perhaps the start of a ping: wait
                del buffer[:2 if buffer[:2] == b"\r\n" else 1]
            match = _HEAD_END.search(buffer, 0, self.max_header_octets + 4)
            if match is None:
                if len(buffer) > self.max_header_octets:
                    return Broken("too_large", bytes(buffer[:self.max_header_octets]))
                return None
            head = bytes(buffer[:match.start()])
            lengths = _CONTENT_LENGTH.findall(head)
            if not lengths:
                body_length = 0
            elif len(set(lengths)) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 9:
                return Broken("malformed", head)
            else:
                body_length = int(lengths[0])
            if body_length > self.max_body_octets:
                return Broken("too_large", head)
            self._head_length = match.end()
            self._body_length = body_length
        end = self._head_length + self._body_length
        if len(buffer) < end:
            return None
        message = bytes(buffer[:end])
        del buffer[:end]
        self._head_length = self._body_length = None
        return message
