"""Per-source limits on a real twistd: connections at accept time (limits.connections_*)
and datagrams before a UDP door reads them (limits.datagrams_*).

Flooders connect from other loopback addresses than the test's /status
reads (127.0.0.1, exempt here), so each address has its own budget while
all share the 127.0.0.0/24 network's. A refused connection is closed at
once, before a byte of RTMP handshake; an admitted one waits for its
handshake.
"""

import random
import socket
import ssl

import pytest

from gateway.protocols.rtpmidi.applemidi import SessionExchange, parse_control
from tests.certificates import self_signed
from tests.conftest import free_port
from tests.rtmp_peer import plain_handshake, rtmp_chunks

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


DATAGRAM_LIMITS = {"datagrams_per_second": 0.01, "datagram_burst": 10,
                   "network_datagrams_per_second": 0.01, "network_datagram_burst": 25,
                   "source_limits_exempt": ["127.0.0.1/32"]}


def invite(source, port):
    """An AppleMIDI invitation from ``source``: the gateway's answer, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(1.0)
        sock.sendto(bytes(SessionExchange(b"IN", 7, 0x1234, "limits test")), ("127.0.0.1", port))
        try:
            return parse_control(sock.recv(2048))
        except (socket.timeout, TimeoutError):
            return None


def test_datagrams_over_a_source_rate_are_dropped_unread_and_counted(gateway_factory):
    port = free_port(socket.SOCK_DGRAM, even=True)
    gateway = gateway_factory({"limits": DATAGRAM_LIMITS, "rtpmidi": {
        "sessions": [{"session": "demo", "port": port, "name": "limits"}]}})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flooder:
        flooder.bind(("127.0.0.2", 0))
        for number in range(60):
            flooder.sendto(b"not applemidi %d" % number, ("127.0.0.1", port))
    # The flooder's own address is spent: its invitation is dropped unread.
    assert invite("127.0.0.2", port) is None
    # Another address has its budget, and the exempt one is never limited.
    assert invite("127.0.0.3", port).command == b"OK"
    assert invite("127.0.0.1", port).command == b"OK"

    drops = gateway.wait_for_status(
        lambda status: sum(status["drops"].get("rtpmidi", {}).values()) >= 61)["drops"]["rtpmidi"]
    assert drops.pop("datagram_rate") == 51          # 60 + 1 invitation, 10 read
    assert sum(drops.values()) == 10                 # the garbage it read, by its own reasons
    assert "rtpmidi: refused datagrams from 127.0.0.2: datagram_rate" in gateway.log

    # The /24 had 25: 10 + 1 spent above; 14 more from other addresses, then none.
    for host in range(10, 30):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((f"127.0.0.{host}", 0))
            sock.sendto(b"garbage", ("127.0.0.1", port))
    drops = gateway.wait_for_status(
        lambda status: status["drops"]["rtpmidi"].get("network_datagram_rate", 0) >= 6
    )["drops"]["rtpmidi"]
    assert drops["network_datagram_rate"] == 6


def closed_after(port, data, wait=3.0):
    """Send ``data`` on a new connection: whether the gateway closes it within ``wait`` s."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            sock.sendall(data)
            while sock.recv(65536):      # the RTMP handshake's answer, then the close
                pass
        except (BrokenPipeError, ConnectionResetError):
            return True
        except (socket.timeout, TimeoutError):
            return False
        return True


def test_rtmp_and_sip_connections_sending_too_much_before_joining_are_closed(gateway_factory):
    """limits.pre_join_byte_burst: an RTMP client that never connects to a session, and a
    SIP connection (signalling only), are closed once over it, and counted; under it
    they stay open."""
    rtmp_port, sip_port = free_port(), free_port()
    burst = 20000
    gateway = gateway_factory({
        "limits": {"pre_join_byte_burst": burst, "pre_join_bytes_per_second": 1.0},
        "rtmp": {"port": rtmp_port},
        "sip": {"host": "127.0.0.1", "port": free_port(socket.SOCK_DGRAM),
                "uas": {"tcp_port": sip_port, "tls_port": None}}})
    # A metadata message on stream 0, over and over: well-formed, but no connect.
    metadata = rtmp_chunks(4, 18, 0, b"\x02\x00\x0aonMetaData" + bytes(1000))
    handshake = plain_handshake(random.Random(5))
    assert not closed_after(rtmp_port, handshake + metadata * 10, wait=1.5)
    assert closed_after(rtmp_port, handshake + metadata * 25)
    # CRLF keep-alives (RFC 5626 §4.4.1), the smallest thing a SIP connection sends.
    assert not closed_after(sip_port, b"\r\n\r\n" * 2000, wait=1.5)
    assert closed_after(sip_port, b"\r\n\r\n" * 6000)
    drops = gateway.wait_for_status(lambda status: "pre_join_bytes" in status["drops"].get(
        "sip", {}) and "pre_join_bytes" in status["drops"].get("rtmp", {}))["drops"]
    assert drops["rtmp"]["pre_join_bytes"] == 1
    assert drops["sip"]["pre_join_bytes"] == 1


UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_upgraded_connections_are_released_when_they_end(gateway_factory, tmp_path, tls):
    """A WebSocket upgrade hands the connection from twisted.web to autobahn (inside
    the TLS layer, with TLS): the gate must still hear it end, or a source is refused
    forever after concurrent_connections_per_source upgrades (found by bench/flood.py)."""
    override = {"limits": {
        "concurrent_connections_per_source": 2, "connection_burst": 1000,
        "network_connection_burst": 1000, "source_limits_exempt": ["127.0.0.1/32"]}}
    wrap = lambda sock: sock                                      # noqa: E731
    if tls:
        certificate, key = self_signed(tmp_path)
        override["web"] = {"tls": {"certificate": certificate, "key": key}}
        context = ssl.create_default_context(cafile=certificate)
        wrap = lambda sock: context.wrap_socket(sock, server_hostname="127.0.0.1")  # noqa: E731
    gateway = gateway_factory(override)
    port = gateway.config["web"]["port"]
    for request, answer in [(UPGRADE, b"HTTP/1.1 101")] * 10 + [
            (b"GET /jam.css HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"HTTP/1.1 200")] * 10:
        with wrap(connect("127.0.0.2", port)) as sock:
            sock.settimeout(2)
            sock.sendall(request)
            assert sock.recv(4096).startswith(answer)
    status = gateway.wait_for_status(lambda status: status["connections"]["open"] == 0)
    assert status["connections"]["refused"] == {}


def test_failed_tls_handshakes_are_counted_and_logged_once(gateway_factory, tmp_path):
    certificate, key = self_signed(tmp_path)
    gateway = gateway_factory({"web": {"tls": {"certificate": certificate, "key": key}}})
    port = gateway.config["web"]["port"]
    for garbage in [random.Random(seed).randbytes(300) for seed in range(10)] + [
            b"\x16\x03\x01\x00\x05hello"] * 10 + [b"GET / HTTP/1.1\r\n\r\n"] * 10:
        with connect("127.0.0.1", port) as sock:
            sock.sendall(garbage)
            try:
                sock.recv(4096)
            except (socket.timeout, TimeoutError, ConnectionResetError):
                pass
    drops = gateway.wait_for_status(
        lambda status: status["drops"].get("web", {}).get("tls_error", 0) >= 30)["drops"]
    assert drops["web"]["tls_error"] == 30
    lines = [line for line in gateway.log.splitlines() if "tls_error" in line]
    assert len(lines) == 1 and "web: refused a TLS connection from 127.0.0.1" in lines[0]
    metrics = gateway.get("/metrics")[2].decode()
    assert 'netgateway_dropped_total{door="web",reason="tls_error"} 30.0' in metrics
    assert "netgateway_connections_open 0.0" in metrics        # loopback is exempt
