"""Real RTMP clients against the handshake and chunk reader, up to their ``connect`` command.

ffmpeg as a player checks the server digest in S1 and the signature of S2
(shared/protocols/rtmp-clients.md §1.3) and sends no C2 if either is wrong,
so reaching ``connect`` proves both; rtmpdump ``-w/-x`` checks them too.
rtmpdump without them sends a plain C1, and ``rtmpe://`` a C0 of 6.

The server here is a blocking socket in a thread around the sans-IO cores:
enough to watch a client's first message, no door involved.
"""

import shutil
import socket
import subprocess
import threading

import pytest

from gateway.protocols.rtmp.chunks import COMMAND_AMF0, ChunkReader, Message
from gateway.protocols.rtmp.handshake import HandshakeDone, HandshakeError, Reply, ServerHandshake
from tests.conftest import need_external

CONNECT_COMMAND = b"\x02\x00\x07connect"     # AMF0 string "connect", the command's first value
SWF_HASH = "ab" * 32                         # rtmpdump -w: any SHA-256 turns on its FP9 handshake


class FirstCommandServer:
    """Accepts one connection, completes the handshake, reads chunks until a command arrives."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(20)
        self.port = self.listener.getsockname()[1]
        self.done = None
        self.command = None
        self.error = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            connection, _ = self.listener.accept()
        except OSError as error:
            self.error = error
            return
        with connection:
            connection.settimeout(20)
            handshake, reader = ServerHandshake(), None
            try:
                while self.command is None:
                    data = connection.recv(65536)
                    if not data:
                        return
                    if reader is None:
                        for event in handshake.receive(data, 0.0):
                            if isinstance(event, Reply):
                                connection.sendall(event.data)
                            elif isinstance(event, HandshakeDone):
                                self.done, reader = event, ChunkReader()
                                data = event.leftover
                        if reader is None:
                            continue
                    for event in reader.receive(data):
                        if isinstance(event, Message) and event.type_id == COMMAND_AMF0:
                            self.command = event
            except (HandshakeError, OSError) as error:
                self.error = error

    def wait(self, client):
        self.thread.join(25)
        client.kill()
        client.communicate()
        self.listener.close()


def run_client(argv):
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


CLIENTS = {
    "ffmpeg play": (["ffmpeg", "-hide_banner", "-nostdin", "-i", "rtmp://127.0.0.1:{port}/live/t",
                     "-t", "1", "-f", "null", "-"], 0),
    "ffmpeg publish": (["ffmpeg", "-hide_banner", "-nostdin", "-f", "lavfi",
                        "-i", "sine=frequency=440", "-t", "1", "-c:a", "aac", "-f", "flv",
                        "rtmp://127.0.0.1:{port}/live/t"], 0),
    "rtmpdump plain": (["rtmpdump", "-r", "rtmp://127.0.0.1:{port}/live/t", "--live",
                        "-o", "/dev/null"], None),
    "rtmpdump fp9": (["rtmpdump", "-r", "rtmp://127.0.0.1:{port}/live/t", "--live",
                      "-w", SWF_HASH, "-x", "12345", "-o", "/dev/null"], 0),
}


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_real_client_reaches_connect(name):
    argv, expected_scheme = CLIENTS[name]
    need_external(shutil.which(argv[0]), f"{argv[0]} is not installed")
    server = FirstCommandServer()
    client = run_client([part.format(port=server.port) for part in argv])
    server.wait(client)
    assert server.error is None, server.error
    assert server.done is not None and server.done.digest_scheme == expected_scheme
    assert server.command is not None and server.command.payload.startswith(CONNECT_COMMAND)
    assert server.command.stream_id == 0


def test_rtmpdump_rtmpe_is_refused_by_name():
    need_external(shutil.which("rtmpdump"), "rtmpdump is not installed")
    server = FirstCommandServer()
    client = run_client(["rtmpdump", "-r", f"rtmpe://127.0.0.1:{server.port}/live/t",
                         "--live", "-o", "/dev/null"])
    server.wait(client)
    assert isinstance(server.error, HandshakeError)
    assert "RTMPE is not supported" in str(server.error)
