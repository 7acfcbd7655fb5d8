"""CPU time of the RTP-MIDI door, the bus and the codecs per received packet, in one process.

What a compiled build can speed up is the Python the gateway runs per packet;
bench/rtpmidi_fanout.py measures it together with the kernel, the sockets
and Twisted's reactor, and on these shared machines its maxima move by more
than the compiled code changes. Here the real door runs on ``task.Clock``
with in-memory UDP ports: one AppleMIDI sender and ``--fanout`` receivers in
one session (4, as each session of rtpmidi_fanout.py's 8x5), the recovery
journal on, NoteOn/NoteOff 60 and a pitch bend per packet with a journal
acknowledged up to the previous packet. Every packet is handed to the data
port's protocol as Twisted would; what the door sends is counted, not sent.
Printed: the process CPU time per received packet, minimum and median over
``--batches`` batches.

Each build runs in a child process of its own interpreter: the installed
build of the one running this script, of each ``--python`` (interleaved,
with the ratios of their minima to the first one's), or with ``--source``
the checkout's sources.

Run: .venv/bin/python bench/hot_path_cpu.py [--python A/bin/python --python B/bin/python]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PASSPHRASE = "in-process benchmark passphrase"
PORT = 5004
SENDER_SSRC = 0x1000


def measure(fanout, packets, batches):
    """In the child: CPU microseconds per received packet, one figure per batch."""
    from prometheus_client import CollectorRegistry
    from twisted.internet import task

    from gateway import build, config as gatewayconfig
    from gateway.protocols.rtpmidi import door as rtpmidi_door
    from gateway.protocols.rtpmidi.applemidi import SessionExchange
    from gateway.protocols.rtpmidi.journal_sender import JournalSender
    from gateway.protocols.rtpmidi.payload import RtpMidiPacket
    from gateway.service import GatewayContext

    class Socket:
        sent = 0

        def setsockopt(self, level, option, value):
            pass

        def sendto(self, data, addr):
            Socket.sent += 1

    class Port:
        def __init__(self, protocol):
            self.protocol = protocol
            self.socket = Socket()

        def write(self, data, addr):
            self.socket.sendto(data, addr)

        def stopListening(self):
            pass

    class Reactor(task.Clock):
        ports = {}

        def listenUDP(self, number, protocol, interface="", maxPacketSize=8192):
            port = self.ports[number] = Port(protocol)
            protocol.makeConnection(port)
            return port

    config = gatewayconfig.parse({
        "sessions": [{"name": "bench", "passphrase": PASSPHRASE,
                      "allow_addresses": ["127.0.0.0/8"]}],
        "limits": {"events_per_second": 1000000, "max_members_per_session": fanout + 1},
        "web": {"enabled": False},
        "rtpmidi": {"sessions": [{"session": "bench", "port": PORT}], "journal": True,
                    "latetime": 60.0},
    })
    reactor = Reactor()
    context = GatewayContext(config, reactor)
    context.metrics = CollectorRegistry(auto_describe=True)
    service = rtpmidi_door.make_service(config.doors["rtpmidi"], context)
    service.startService()
    control, data = reactor.ports[PORT].protocol, reactor.ports[PORT + 1].protocol
    for number in range(fanout + 1):
        invitation = bytes(SessionExchange(b"IN", 0x7070, SENDER_SSRC + number, f"peer {number}"))
        control.datagramReceived(invitation, ("127.0.0.1", 7000 + 2 * number))
        data.datagramReceived(invitation, ("127.0.0.1", 7001 + 2 * number))
    journal_sender = JournalSender()
    built = []
    for index in range(packets):
        sequence, timestamp = (1000 + index) & 0xFFFF, 5000 + index
        messages = [bytes((0x90, 60, 100)) if index % 2 == 0 else bytes((0x80, 60, 0)),
                    bytes((0xE0, index & 0x7F, (index >> 7) & 0x7F))]
        journal = journal_sender.journal_for(sequence, timestamp)
        built.append(bytes(RtpMidiPacket(sequence, timestamp, SENDER_SSRC,
                                         [(0, message) for message in messages], journal)))
        journal_sender.record(sequence, timestamp, messages)
        journal_sender.acknowledge(sequence)
    source = ("127.0.0.1", 7001)
    size = packets // batches
    figures = []
    for number in range(batches):
        sent_before = Socket.sent
        start = time.process_time()
        for packet in built[number * size:(number + 1) * size]:
            reactor.advance(0.0001)
            data.datagramReceived(packet, source)
        figures.append((time.process_time() - start) / size * 1e6)
        if Socket.sent - sent_before < size * fanout:
            raise RuntimeError(f"the door sent {Socket.sent - sent_before} packets for"
                               f" {size} x {fanout}: the receivers did not all join")
    service.stopService()
    return {"compiled": build.compiled_modules(), "us_per_packet": figures}


def run_child(python, args):
    """The figures of one child: ``python`` (None: the checkout's sources)."""
    environ = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if python is None:
        python, environ["PYTHONPATH"] = sys.executable, REPO
    command = [python, os.path.abspath(__file__), "--child", "--fanout", str(args.fanout),
               "--packets", str(args.packets), "--batches", str(args.batches)]
    # cwd=/: the installed package, never the checkout, unless PYTHONPATH says so.
    result = subprocess.run(command, cwd="/", env=environ, capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{python}: {result.stderr[-3000:]}")
    return json.loads(result.stdout)


def shape_arguments(parser):
    parser.add_argument("--fanout", type=int, default=4)
    parser.add_argument("--packets", type=int, default=30000)
    parser.add_argument("--batches", type=int, default=10)


def child_main():
    # Not the checkout's benchlib: it needs the test extras, and a child only the package.
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    shape_arguments(parser)
    args = parser.parse_args()
    print(json.dumps(measure(args.fanout, args.packets, args.batches)))


def main():
    if "--child" in sys.argv:
        child_main()
        return
    sys.path.insert(0, REPO)
    from benchlib import add_source_argument, check_installed_build, gateway_pythons
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shape_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3,
                        help="children per build, interleaved; figures pooled")
    add_source_argument(parser)
    args = parser.parse_args()
    pythons = gateway_pythons(args)
    for python in pythons:
        if python is not None and not args.any_build:
            check_installed_build(python)
    figures = {python: [] for python in pythons}
    compiled = {}
    for _ in range(args.rounds):
        for python in pythons:
            result = run_child(python, args)
            figures[python] += result["us_per_packet"]
            compiled[python] = result["compiled"]
    print(f"CPU µs per received packet, 1 sender -> {args.fanout} receivers, journal on"
          f" ({args.rounds} x {args.batches} batches of {args.packets // args.batches}):")
    first = min(figures[pythons[0]])
    for python in pythons:
        names = ", ".join(name.rpartition(".")[2] for name in compiled[python]) or "none"
        best = min(figures[python])
        print(f"  min {best:6.1f}  median {statistics.median(figures[python]):6.1f}"
              f"  {first / best:5.2f}x the first  {python or 'checkout sources'}"
              f" (compiled: {names})", flush=True)


if __name__ == "__main__":
    main()
