"""OscGroupClient-compatible console program: a thin Twisted adapter over :mod:`.client`.

Usage (same positional arguments as the C++ OscGroupClient, see
shared/protocols/oscgroups.md §2.1 and §5.6)::

    python -m gateway.protocols.oscgroups.client_main \\
        serveraddress serverport localtoremoteport localtxport localrxport \\
        username password groupname grouppassword [--bind ADDR] [--tx-interface ADDR]
        [--relay HOST:FIRST-LAST]

Passwords are sent as lower-case MD5 hex, like the C++ client. Sockets, the
600-ms LoopingCall and printing live here; every decision is in
:class:`.client.GroupClient`. Unlike the C++ client the local tx port listens
on 127.0.0.1 by default (``--tx-interface``), so strangers cannot inject into
the group (§7.4).
"""

import argparse
import socket
import sys

from twisted.internet import protocol, task

from gateway.actions import Send

from . import client, wire

LOCALHOST = "127.0.0.1"


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        prog="oscgroupclient", description="OSCgroups client (OscGroupClient-compatible).")
    parser.add_argument("serveraddress")
    parser.add_argument("serverport", type=int)
    parser.add_argument("localtoremoteport", type=int)
    parser.add_argument("localtxport", type=int)
    parser.add_argument("localrxport", type=int)
    parser.add_argument("username")
    parser.add_argument("password")
    parser.add_argument("groupname")
    parser.add_argument("grouppassword")
    parser.add_argument("--bind", default="0.0.0.0",
                        help="interface of the socket facing server and peers (default 0.0.0.0)")
    parser.add_argument("--tx-interface", default=LOCALHOST,
                        help="interface the local application sends to (default 127.0.0.1)")
    parser.add_argument("--relay", type=_relay_ports, default=None,
                        help="HOST:FIRST-LAST (or HOST:PORT) of the gateway's relay ports,"
                             " to label paths through them 'relay'")
    return parser.parse_args(argv)


def _relay_ports(text):
    host, _, ports = text.rpartition(":")
    first, _, last = ports.partition("-")
    try:
        return socket.gethostbyname(host), int(first), int(last or first)
    except (OSError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected HOST:FIRST-LAST or HOST:PORT, got {text!r}") from None


def _local_address_towards(server):
    """The source address the kernel would use to reach ``server`` (§4.1)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(server)
        return probe.getsockname()[0]
    finally:
        probe.close()


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self, on_datagram):
        self._on_datagram = on_datagram

    def datagramReceived(self, data, addr):
        self._on_datagram(data, addr)


class ClientProgram:
    """Owns the sockets and the timer; moves bytes between them and the core."""

    def __init__(self, reactor, options, output=sys.stdout):
        self.reactor = reactor
        self.options = options
        self.output = output
        server = (socket.gethostbyname(options.serveraddress), options.serverport)
        private_endpoint = (_local_address_towards(server), options.localtoremoteport)
        self.core = client.GroupClient(
            options.username, wire.password_hash(options.password),
            options.groupname, wire.password_hash(options.grouppassword),
            server, private_endpoint, relay=options.relay)
        self._app_address = (LOCALHOST, options.localrxport)
        self._print(f"using server at {server[0]}:{server[1]}, private endpoint "
                    f"{private_endpoint[0]}:{private_endpoint[1]}")
        self._external = reactor.listenUDP(
            options.localtoremoteport, _Datagrams(self._from_network), interface=options.bind)
        reactor.listenUDP(
            options.localtxport, _Datagrams(self._from_app), interface=options.tx_interface)
        self._to_app = reactor.listenUDP(0, protocol.DatagramProtocol(), interface=LOCALHOST)
        self._timer = task.LoopingCall(self._tick)
        self._timer.clock = reactor
        self._timer.start(client.TICK_INTERVAL, now=True)

    def _tick(self):
        self._perform(self.core.timer(self.reactor.seconds()))

    def _from_network(self, data, addr):
        self._perform(self.core.receive(data, addr, self.reactor.seconds()))

    def _from_app(self, data, addr):
        self._perform(self.core.send_from_app(data, self.reactor.seconds()))

    def _perform(self, actions):
        for action in actions:
            if type(action) is Send:
                self._write(self._external, action.data, action.address)
            else:
                self._write(self._to_app, action.data, self._app_address)
        for line in self.core.take_events():
            self._print(line)

    def _write(self, port, data, address):
        try:
            port.write(data, address)
        except OSError as exc:
            # A peer's unreachable endpoint or an oversized datagram must not stop us.
            self._print(f"send to {address[0]}:{address[1]} failed: {exc}")

    def _print(self, line):
        print(line, file=self.output, flush=True)


def main(argv=None):
    options = parse_arguments(sys.argv[1:] if argv is None else argv)
    from twisted.internet import reactor
    ClientProgram(reactor, options)
    reactor.run()


if __name__ == "__main__":
    main()
