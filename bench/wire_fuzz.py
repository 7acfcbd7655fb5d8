"""Wire fuzzer: mutated valid packets to every UDP port (and RTMP's TCP port) of a real gateway.

A real ``twistd netgateway`` with every door on (benchlib.every_door_config).
For each port, ``--count`` packets, each a mutation of a real valid packet of
the protocol spoken there: one to eight bit flips, a truncation, an extension
by random bytes, two 4-octet fields swapped, an octet set to 0x00, 0x7F, 0x80
or 0xFF, or (one in sixteen) the valid packet unchanged. The valid packets:

- OSCgroups server: user_alive + get_group_users_info bundles (right and
  wrong group password); bridge: a peer's ping bundle and ``/midi/note``;
- AppleMIDI control and data ports: IN, CK and RS, and on the data port
  RTP-MIDI packets with a recovery journal (benchlib.rtp_midi_packets);
- SIP: OPTIONS and INVITE with SDP, on the port shared by sfront clients and
  user agents; sfront's session media ports and the user agents' call media
  ports: RTP-MIDI, and an RTCP receiver report;
- RTMP (TCP, one connection per packet): C0+C1 of the handshake.

The accounting rule. Each datagram is sent on its own, from a fresh socket
(so a late answer can only reach the socket of the datagram it answers),
and the fuzzer waits for evidence of what the gateway made of it, polling
/status, for at most 0.25 s. It is then, in this order:

- answered: a datagram came back to its socket;
- dropped: the drop counters of the port's door rose, or the counters of
  what the OSCgroups bridge rejected (:data:`BRIDGE_REJECTIONS`, in /status
  beside the drops) for the bridge's port;
- refused: the bus's refusal counters rose (a join it refused);
- accepted: ``events_published`` rose (it carried MIDI the bus took);
- taken silently: none of these, and the gateway's own codec reads the
  datagram as a message its protocol takes without an answer from a sender
  the gateway knows: an OSCgroups ping to the bridge naming a user the
  server lists (/status), or an AppleMIDI RS with the SSRC of a peer the
  fuzzer's invitations (mutated or not) joined: an IN the gateway answered
  OK on the data port;
- unaccounted: none of these. Every unaccounted datagram is a failure.

Nothing else runs in the gateway meanwhile (idle expiry and the OSCgroups
purge are set out of reach), so a counter that rose did so for the datagram
just sent. Anything else a door takes silently is unaccounted: the rule says
the gateway must answer or count everything it receives, and a failure
names the packet.

An RTMP connection is answered (bytes came back), closed by the gateway, or
waiting: nothing within 0.3 s, which is only right when fewer than C0+C1's
1537 octets were sent (the server waits for the rest); a complete C0+C1 left
unanswered and open for 1 s is a failure.

It passes (exit status 0) when no datagram is unaccounted, no RTMP handshake
is left silent, and the gateway is alive with no Traceback in its log.

Run: .venv/bin/python bench/wire_fuzz.py [--count 1000] [--quick] [--seed 16]
"""

import argparse
import collections
import os
import random
import select
import socket
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, HERE]

from benchlib import (add_source_argument, bound_udp_ports, door_drops,  # noqa: E402
                      every_door_config, gateway_failures, rtp_midi_packets, start_gateway,
                      verdict)
from oscgroups_relay import NOTE_HEAD, alive_bundle, ping  # noqa: E402

from gateway.protocols.oscgroups import wire  # noqa: E402
from gateway.protocols.rtmp.handshake import PACKET_SIZE, RTMP_VERSION  # noqa: E402
from gateway.protocols.rtpmidi.applemidi import (MalformedPacket, ReceiverFeedback,  # noqa: E402
                                                 SessionExchange, Sync, parse_control)

LOOPBACK = "127.0.0.1"
SESSION = ("fuzz", "wire fuzzer passphrase 0123")
SSRC = 0x5EED0016
EVIDENCE_SECONDS = 0.25
RTMP_WAIT_SECONDS = 0.3
RTMP_SILENT_SECONDS = 1.0
BRIDGE_REJECTIONS = ("malformed_peer_datagrams", "bad_pings", "pings_from_unknown_users")
"""What the OSCgroups bridge counts in doors.oscgroups.bridge.counters instead of its drops."""
OUTCOMES = ("answered", "dropped", "refused", "accepted", "silently", "unaccounted")


def sip_request(method, port, body=b""):
    """A request from ``port``, where the gateway answers (Via, rport)."""
    content_type = "Content-Type: application/sdp\r\n" if body else ""
    return (f"{method} sip:{SESSION[0]}@{LOOPBACK} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{port};branch=z9hG4bK-fuzz;rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:fuzzer@{LOOPBACK}>;tag=fuzz\r\n"
            f"To: <sip:{SESSION[0]}@{LOOPBACK}>\r\nCall-ID: fuzz-{method}\r\n"
            f"CSeq: 1 {method}\r\nContact: <sip:fuzzer@{LOOPBACK}:{port}>\r\n"
            f"{content_type}Content-Length: {len(body)}\r\n\r\n").encode() + body


def rtcp_receiver_report():
    """RTCP RR (RFC 3550 §6.4.2) with no report blocks."""
    return struct.pack("!BBHI", 0x80, 201, 1, SSRC)


class NeverSilent:
    """What a port takes silently: nothing. Subclasses name what they may take."""

    def answered(self, port, data, reply):
        """``data`` sent to ``port`` got ``reply``: a subclass may learn who joined."""

    def taken_silently(self, data, status):
        return False


class KnownUserPings(NeverSilent):
    def taken_silently(self, data, status):
        """Whether ``data`` is OSCgroups pings only, each naming a user the server lists."""
        users = status["doors"]["oscgroups"]["server"]["users"]
        try:
            messages = [wire.decode_message(message) for message in wire.parse_packet(data)]
        except wire.MalformedPacket:
            return False
        return bool(messages) and all(isinstance(message, wire.Ping)
                                      and message.user_name in users for message in messages)


class JoinedPeerFeedback(NeverSilent):
    """AppleMIDI RS from an SSRC whose invitation the gateway answered OK on the data port.

    Mutated invitations join too (a flipped SSRC or token is as valid as the
    original), so the SSRCs are learnt from the answers, not assumed.
    """

    def __init__(self, data_port):
        self.data_port = data_port
        self.joined = set()

    def answered(self, port, data, reply):
        try:
            sent, answer = parse_control(data), parse_control(reply)
        except MalformedPacket:
            return
        if port == self.data_port and isinstance(sent, SessionExchange) \
                and isinstance(answer, SessionExchange) and sent.command == b"IN" \
                and answer.command == b"OK":
            self.joined.add(sent.ssrc)

    def taken_silently(self, data, status):
        try:
            packet = parse_control(data)
        except MalformedPacket:
            return False
        return isinstance(packet, ReceiverFeedback) and packet.ssrc in self.joined


def valid_packets(ports):
    """{target: (host, port, door, [valid packet builders], taken silently)} per UDP port.

    A builder takes the fuzzer socket (packets that name their sender's
    address name that one) and returns the packet's bytes. ``taken
    silently`` (a :class:`NeverSilent`) says whether the door may take a
    datagram without answering or counting (see the module docstring).
    """
    def fixed(*packets):
        return [lambda sock, packet=packet: packet for packet in packets]

    sdp = (f"v=0\r\no=fuzzer 1 1 IN IP4 {LOOPBACK}\r\ns=-\r\nc=IN IP4 {LOOPBACK}\r\nt=0 0\r\n"
           "m=audio 40000 RTP/AVP 96\r\na=rtpmap:96 rtp-midi/44100\r\n").encode()
    oscgroups = [lambda sock: alive_bundle(sock, "fuzzer", *SESSION),
                 lambda sock: alive_bundle(sock, "fuzzer", SESSION[0], "not the passphrase")]
    applemidi = fixed(bytes(SessionExchange(b"IN", 16, SSRC, "fuzzer")),
                      bytes(Sync(SSRC, 0, 16)), bytes(ReceiverFeedback(SSRC, 16)))
    rtp = fixed(*rtp_midi_packets(4, 1600, 16000, SSRC))
    sip = [lambda sock: sip_request("OPTIONS", sock.getsockname()[1]),
           lambda sock: sip_request("INVITE", sock.getsockname()[1], sdp)]
    media = rtp + fixed(rtcp_receiver_report())
    never = NeverSilent()
    applemidi_joins = JoinedPeerFeedback(ports["applemidi_data"])
    return {
        "oscgroups": (LOOPBACK, ports["oscgroups"], "oscgroups", oscgroups, never),
        "oscgroups bridge": (LOOPBACK, ports["oscgroups_bridge"], "oscgroups",
                             fixed(ping("fuzzer"), NOTE_HEAD + struct.pack(">iii", 1, 60, 100)),
                             KnownUserPings()),
        "applemidi control": (LOOPBACK, ports["applemidi_control"], "rtpmidi", applemidi,
                              applemidi_joins),
        "applemidi data": (LOOPBACK, ports["applemidi_data"], "rtpmidi", applemidi + rtp,
                           applemidi_joins),
        "sip": (LOOPBACK, ports["sip"], "sip", sip, never),
        "sfront rtcp side": (LOOPBACK, ports["sip"] + 1, "sip", fixed(rtcp_receiver_report()),
                             never),
        "sfront media rtp": ("127.0.0.5", ports["sfront_rtp"], "sip", media, never),
        "sfront media rtcp": ("127.0.0.5", ports["sfront_rtcp"], "sip", media, never),
        "sip call rtp": (LOOPBACK, ports["sip_uas_rtp"], "sip", media, never),
        "sip call rtcp": (LOOPBACK, ports["sip_uas_rtcp"], "sip", media, never),
    }


def mutate(packet, rng):
    """One mutation of ``packet`` (see the module docstring); never longer than 64 KB."""
    data = bytearray(packet)
    kind = rng.randrange(16)
    if kind == 0:
        return bytes(data)
    if kind < 6:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind < 9:
        del data[rng.randrange(len(data)):]
    elif kind < 11:
        data += rng.randbytes(rng.randint(1, 64))
    elif kind < 14 and len(data) >= 8:
        first, second = (rng.randrange(len(data) // 4) * 4 for _ in range(2))
        data[first:first + 4], data[second:second + 4] = data[second:second + 4], \
            data[first:first + 4]
    else:
        data[rng.randrange(len(data))] = rng.choice((0x00, 0x7F, 0x80, 0xFF))
    return bytes(data)


def counters(gateway, door):
    """(door's rejections, refusals, events published) in /status now."""
    status = gateway.status()
    rejected = door_drops(status, door)
    if door == "oscgroups":
        bridge = status["doors"]["oscgroups"]["bridge"]["counters"]
        rejected += sum(bridge.get(name, 0) for name in BRIDGE_REJECTIONS)
    return rejected, sum(status["refusals"].values()), status["events_published"]


def fuzz_datagram(gateway, host, port, door, build, silent, rng, before):
    """Send a mutation of ``build(sock)`` from a fresh socket; (outcome, data, counters after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        data = mutate(build(sock), rng)
        sock.sendto(data, (host, port))
        deadline = time.monotonic() + EVIDENCE_SECONDS
        while True:
            answered = bool(select.select([sock], [], [], 0.005)[0])
            after = counters(gateway, door)
            if answered or after != before or time.monotonic() > deadline:
                break
        if answered:
            silent.answered(port, data, sock.recv(65536))
    if answered:
        return "answered", data, counters(gateway, door)     # what it counted as well
    for outcome, was, now in zip(OUTCOMES[1:], before, after):
        if now > was:
            return outcome, data, after
    if silent.taken_silently(data, gateway.status()):
        return "silently", data, after
    return "unaccounted", data, after


def fuzz_rtmp(port, data):
    """One connection sending ``data``: answered, closed, waiting, or silent."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(data)
        complete = len(data) >= 1 + PACKET_SIZE
        readable = select.select([sock], [], [],
                                 RTMP_SILENT_SECONDS if complete else RTMP_WAIT_SECONDS)[0]
        if not readable:
            return "silent" if complete else "waiting"
        try:
            return "answered" if sock.recv(65536) else "closed"
        except ConnectionResetError:
            return "closed"


def rtmp_handshake(rng):
    """A plain C0+C1: version, time, zero, random (RTMP 1.0 §5.2.2-§5.2.3)."""
    return bytes((RTMP_VERSION,)) + struct.pack("!II", 0, 0) + rng.randbytes(PACKET_SIZE - 8)


def fuzz(gateway, ports, args):
    rng = random.Random(args.seed)
    failures = []
    print(f"{'target':<18} {'port':>6} {'sent':>6} " + " ".join(f"{o:>11}" for o in OUTCOMES),
          flush=True)
    listening = bound_udp_ports()
    for target, (host, port, door, builders, silent) in valid_packets(ports).items():
        if port not in listening:
            print(f"{target:<18} {port:>6} not listening (call media ports open with a call)")
            continue
        outcomes = collections.Counter()
        unaccounted = []
        before = counters(gateway, door)
        for _ in range(args.count):
            outcome, data, before = fuzz_datagram(gateway, host, port, door,
                                                  rng.choice(builders), silent, rng, before)
            outcomes[outcome] += 1
            if outcome == "unaccounted":
                unaccounted.append(data)
        print(f"{target:<18} {port:>6} {args.count:>6} "
              + " ".join(f"{outcomes[o]:>11}" for o in OUTCOMES), flush=True)
        if unaccounted:
            failures.append(f"{target}: {len(unaccounted)} datagrams unaccounted: "
                            + ", ".join(data[:48].hex() for data in unaccounted[:3]))
    rtmp = collections.Counter(fuzz_rtmp(ports["rtmp"], mutate(rtmp_handshake(rng), rng))
                               for _ in range(args.count))
    print(f"{'rtmp (tcp)':<18} {ports['rtmp']:>6} {args.count:>6} "
          + ", ".join(f"{kind} {rtmp[kind]}" for kind in ("answered", "closed", "waiting",
                                                           "silent")), flush=True)
    if rtmp["silent"]:
        failures.append(f"rtmp: {rtmp['silent']} complete handshakes neither answered nor closed")
    status = gateway.status()
    print("drops: " + "; ".join(f"{door} " + ", ".join(f"{reason} {count}"
                                                        for reason, count in sorted(drops.items()))
                                for door, drops in sorted(status["drops"].items())))
    print("refusals: " + ", ".join(f"{reason} {count}"
                                   for reason, count in sorted(status["refusals"].items())))
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="packets per port")
    parser.add_argument("--quick", action="store_true", help="100 packets per port")
    parser.add_argument("--seed", type=int, default=16)
    add_source_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.count = 100
    config, ports = every_door_config(SESSION[0], SESSION[1], idle_timeout=86400.0,
                                      max_members_per_session=1024)
    # Purges would count while the fuzzer attributes counters to its datagrams.
    config["oscgroups"]["timeout"] = 3600
    gateway = start_gateway(config, "bench-fuzz-", args)
    try:
        failures = fuzz(gateway, ports, args)
        failures += gateway_failures(gateway)
    finally:
        gateway.stop()
    return verdict(failures)


if __name__ == "__main__":
    sys.exit(main())
