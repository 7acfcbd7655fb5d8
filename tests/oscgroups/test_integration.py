"""Two real client programs (subprocesses) meet through our server on 127.0.0.1.

The server core is hosted by a tiny Twisted UDP adapter on a reactor thread;
everything is real UDP on loopback, ports chosen by the OS.
"""

import contextlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from pythonosc.udp_client import SimpleUDPClient
from twisted.internet import protocol, reactor, threads

from gateway.actions import Send
from gateway.protocols.oscgroups import server as server_core
from gateway.protocols.oscgroups import wire

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
DEADLINE = 25.0


class ServerAdapter(protocol.DatagramProtocol):
    def __init__(self, core):
        self.core = core

    def datagramReceived(self, data, addr):
        for action in self.core.receive(data, addr, reactor.seconds()):
            if type(action) is Send:
                self.transport.write(action.data, action.address)


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def receiving_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(0.2)
    return sock


def start_client(server_port, name, rx_port):
    external_port, tx_port = free_udp_port(), free_udp_port()
    command = [sys.executable, "-m", "gateway.protocols.oscgroups.client_main",
               LOOPBACK, str(server_port), str(external_port), str(tx_port), str(rx_port),
               name, name + "-pw", "jam", "jam-pw", "--bind", LOOPBACK]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    return process, external_port, tx_port


def received_test_message(sock):
    """True once ``sock`` got /test/hello (peer pings reach the app too, §7.4)."""
    with contextlib.suppress(socket.timeout):
        while True:
            data, _ = sock.recvfrom(65536)
            with contextlib.suppress(wire.MalformedPacket):
                if any(m.address == "/test/hello" for m in wire.parse_packet(data)):
                    return True
    return False


def test_datagram_sent_to_alice_tx_arrives_at_bob_rx():
    core = server_core.RendezvousServer(now=time.time())
    reactor_thread = threading.Thread(
        target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
    reactor_thread.start()
    processes = []
    alice_rx, bob_rx = receiving_socket(), receiving_socket()
    try:
        listening = threads.blockingCallFromThread(
            reactor, reactor.listenUDP, 0, ServerAdapter(core), interface=LOOPBACK)
        server_port = listening.getHost().port
        alice, alice_external, alice_tx = start_client(
            server_port, "alice", alice_rx.getsockname()[1])
        bob, bob_external, _ = start_client(server_port, "bob", bob_rx.getsockname()[1])
        processes = [alice, bob]

        sender = SimpleUDPClient(LOOPBACK, alice_tx)
        arrived = False
        deadline = time.monotonic() + DEADLINE
        while not arrived and time.monotonic() < deadline:
            assert all(p.poll() is None for p in processes), "a client exited"
            sender.send_message("/test/hello", ["hi from alice", 42, 3.5])
            arrived = received_test_message(bob_rx)
        assert arrived, f"nothing reached bob within {DEADLINE} s; server {dict(core.counters)}"
    finally:
        outputs = []
        for process in processes:
            process.terminate()
            outputs.append(process.communicate(timeout=10)[0])
        alice_rx.close()
        bob_rx.close()
        reactor.callFromThread(reactor.stop)
        reactor_thread.join(10)

    alice_output, bob_output = outputs
    assert "ok: user 'alice' is registered with server" in alice_output
    assert "ok: user 'bob' is a member of group 'jam'" in bob_output
    assert f"path to 'bob': private {LOOPBACK}:{bob_external}" in alice_output
    assert f"path to 'alice': private {LOOPBACK}:{alice_external}" in bob_output
