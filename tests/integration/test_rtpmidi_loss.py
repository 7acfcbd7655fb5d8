"""The recovery journal end to end: 10% RTP loss between our peer and a real twistd.

Two of our peers (tests/rtpmidi_peer.py) join the gateway's 'demo' session:
``lossy`` through :class:`LossyProxy`, which drops a seeded 10% of the RTP
datagrams on the data ports in each direction (AppleMIDI control packets,
FF FF ..., pass so the session sets up), and ``clean`` directly. Each plays a
seeded 1,000-event performance at the same time:

(a) lossy -> proxy (loss) -> gateway -> clean: the gateway's JournalReceiver
    must repair what the proxy dropped before it publishes;
(b) clean -> gateway -> proxy (loss) -> lossy: our peer's JournalReceiver must
    repair from the gateway's journal.

At the end, with nothing sent after the performances but the senders' guard
packets, what each receiver heard equals what the other side played: sounding
notes (none), controllers, program, pitch and pressures.
"""

import random
import select
import socket
import threading
import time

import pytest

from tests.conftest import free_port
from tests.rtpmidi.test_journal import performance
from tests.rtpmidi_peer import RtpMidiPeer, bind_port_pair, wait_until

LOSS = 0.10
PACKET_INTERVAL = 0.003
APPLEMIDI_SIGNATURE = b"\xff\xff"


class LossyProxy:
    """A UDP relay for one AppleMIDI peer that drops RTP on the data ports.

    The peer talks to ``port``/``port + 1``; the proxy talks to the gateway
    from its own pair, so the gateway sees the proxy as the peer. The first
    datagram on each peer-facing socket tells the proxy where the peer is.
    """

    def __init__(self, gateway_port, seed, loss=LOSS):
        self.loss = loss
        # One generator per direction keeps the drops independent of thread timing.
        self._rngs = {"upstream": random.Random(seed), "downstream": random.Random(seed + 1)}
        peer_side = bind_port_pair()
        gateway_side = bind_port_pair()
        self.port = peer_side[0].getsockname()[1]
        self._routes = {}
        for index in (0, 1):
            self._routes[peer_side[index]] = [gateway_side[index],
                                              ("127.0.0.1", gateway_port + index), "upstream"]
            self._routes[gateway_side[index]] = [peer_side[index], None, "downstream"]
        self._peer_side = peer_side
        self._data_sockets = {peer_side[1], gateway_side[1]}
        self.forwarded = {"upstream": 0, "downstream": 0}
        self.dropped = {"upstream": 0, "downstream": 0}
        self._running = True
        self._thread = threading.Thread(target=self._run, name="lossy proxy", daemon=True)
        self._thread.start()

    def _run(self):
        sockets = list(self._routes)
        while self._running:
            readable, _, _ = select.select(sockets, [], [], 0.02)
            for sock in readable:
                data, addr = sock.recvfrom(65535)
                out, target, direction = self._routes[sock]
                if direction == "upstream":
                    # Replies from the gateway go back to whoever spoke on this port.
                    self._routes[out][1] = addr
                if target is None:
                    continue
                if (sock in self._data_sockets and not data.startswith(APPLEMIDI_SIGNATURE)
                        and self._rngs[direction].random() < self.loss):
                    self.dropped[direction] += 1
                    continue
                self.forwarded[direction] += 1
                out.sendto(data, target)

    def close(self):
        self._running = False
        self._thread.join(5.0)
        for sock in self._routes:
            sock.close()


def demo_members(gateway):
    demo = next(s for s in gateway.status()["sessions"] if s["name"] == "demo")
    return [member for member in demo["members"] if member["door"] == "rtpmidi"]


def play(peer, packets, rng):
    for messages in packets:
        peer.send(messages)
        time.sleep(PACKET_INTERVAL * rng.uniform(0.5, 1.5))


# The installed build runs the hot path compiled (setup.py): the journal must work there too.
@pytest.mark.parametrize("installed", [False, True], ids=["source", "installed build"])
def test_thousand_events_each_way_through_ten_percent_rtp_loss(gateway_factory, installed):
    port = free_port(socket.SOCK_DGRAM, even=True)
    gateway = gateway_factory({
        "limits": {"events_per_second": 100000},
        "logging": {"level": "info"},
        "rtpmidi": {"sessions": [{"session": "demo", "port": port}]},
    }, installed=installed)
    proxy = LossyProxy(port, seed=6295)
    lossy = RtpMidiPeer("lossy peer", random.Random(1))
    clean = RtpMidiPeer("clean peer", random.Random(2))
    try:
        lossy.invite(("127.0.0.1", proxy.port))
        clean.invite(("127.0.0.1", port))
        wait_until(lambda: len(demo_members(gateway)) == 2, 10.0, "two rtpmidi members")

        performances = {lossy: performance(random.Random(11)),
                        clean: performance(random.Random(12))}
        events = {peer: sum(len(messages) for messages in packets[:-1])
                  for peer, packets in performances.items()}
        assert all(count >= 1000 for count in events.values())
        players = [threading.Thread(target=play, args=(peer, packets, random.Random(index)))
                   for index, (peer, packets) in enumerate(performances.items())]
        for player in players:
            player.start()
        for player in players:
            player.join(60.0)
        # Nothing more is played: the journal-only guard packets that follow each
        # sender's last MIDI (ours and the gateway's) repair a lost final packet.
        def settled():
            return (clean.heard_snapshot() == lossy.sent_snapshot()
                    and lossy.heard_snapshot() == clean.sent_snapshot())
        try:
            wait_until(settled, 5.0, "both receivers matching their senders")
        except TimeoutError:
            pass  # the asserts below show the difference
        # (a) lossy sender -> gateway (repairs) -> clean receiver
        assert clean.heard_snapshot() == lossy.sent_snapshot()
        # (b) clean sender -> gateway -> loss -> our peer's JournalReceiver
        assert lossy.heard_snapshot() == clean.sent_snapshot()
        for peer in (lossy, clean):
            assert all(not channel["notes"] for channel in peer.heard_snapshot()), "stuck notes"

        assert proxy.dropped["upstream"] > 30 and proxy.dropped["downstream"] > 30
        gateway_view = next(member for member in demo_members(gateway)
                            if member["name"] == "lossy peer")
        # Drops before the first or after the last arrival are not gaps.
        assert 0 < gateway_view["packets_lost"] <= proxy.dropped["upstream"]
        assert gateway_view["gaps_repaired"] > 20
        receiver = lossy.journal_receiver
        assert 0 < receiver.lost_packets <= proxy.dropped["downstream"]
        assert receiver.repaired_gaps > 20 and receiver.unrecoverable_gaps == 0
        print(f"\nevents {events[lossy]} up / {events[clean]} down;"
              f" RTP dropped {proxy.dropped}; gateway repaired {gateway_view['gaps_repaired']}"
              f" gaps of {gateway_view['packets_lost']} lost; peer repaired"
              f" {receiver.repaired_gaps} gaps of {receiver.lost_packets} lost")
    finally:
        lossy.close()
        clean.close()
        proxy.close()
