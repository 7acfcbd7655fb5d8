"""Per-source connection limits at accept time, on a real twistd (limits.connections_*).

Flooders connect from other loopback addresses than the test's /status
reads (127.0.0.1, exempt here), so each address has its own budget while
all share the 127.0.0.0/24 network's. A refused connection is closed at
once, before a byte of RTMP handshake; an admitted one waits for its
handshake.
"""

import socket

from tests.conftest import free_port

LIMITS = {"connections_per_second": 0.01, "connection_burst": 5,
          "network_connections_per_second": 0.01, "network_connection_burst": 15,
          "concurrent_connections_per_source": 3, "source_limits_exempt": ["127.0.0.1/32"]}


def connect(source, port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(source, 0))
    sock.settimeout(0.4)
    return sock


def refused(sock):
    """Closed by the gateway at once (True), or left open waiting for a handshake (False)."""
    try:
        return sock.recv(1) == b""
    except (socket.timeout, TimeoutError):
        return False
    except ConnectionResetError:
        return True


def test_rate_network_and_concurrency_limits_refuse_early_and_are_counted(gateway_factory):
    port = free_port()
    gateway = gateway_factory({"limits": LIMITS, "rtmp": {"port": port}})

    held = [connect("127.0.0.4", port) for _ in range(4)]
    assert [refused(sock) for sock in held] == [False, False, False, True]
    held.pop(0).close()
    held[-1].close()
    held[-1] = connect("127.0.0.4", port)
    assert not refused(held[-1])            # one closed, so one more may come in

    answers = []
    for _ in range(8):                      # a source over its burst
        with connect("127.0.0.2", port) as sock:
            answers.append(refused(sock))
    assert answers == [False] * 5 + [True] * 3

    answers = []
    for host in range(10, 21):              # one connection from each of 11 addresses
        with connect(f"127.0.0.{host}", port) as sock:
            answers.append(refused(sock))
    assert answers == [False] * 6 + [True] * 5   # the /24 had 15: 4 + 5 spent above
    for sock in held:
        sock.close()

    status = gateway.status()
    assert status["connections"]["refused"] == {
        "concurrent_connections": 1, "connection_rate": 3, "network_connection_rate": 5}
    assert status["drops"]["rtmp"] == {
        "concurrent_connections": 1, "connection_rate": 3, "network_connection_rate": 5}
    assert "rtmp: refused a connection from 127.0.0.2: connection_rate" in gateway.log
