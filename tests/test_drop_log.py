"""DropLog: one line per peer per interval, and a bound on lines from many peers."""

from twisted.internet import task

from gateway.log import DropLog


class Lines:
    def __init__(self):
        self.lines = []

    def warn(self, text, **fields):
        self.lines.append(text.format(**fields))


def test_one_line_per_peer_per_interval_then_a_summary():
    clock, log = task.Clock(), Lines()
    drops = DropLog(log, 10.0, clock)
    for _ in range(5):
        drops.dropped("198.51.100.1", clock.seconds(), "dropped from {peer}", peer="198.51.100.1")
    assert log.lines == ["dropped from 198.51.100.1"]
    clock.advance(10)
    assert log.lines[1:] == ["dropped from 198.51.100.1 (4 more like this not logged)"]


def test_a_flood_from_many_peers_gets_max_lines_and_one_line_for_the_rest():
    clock, log = task.Clock(), Lines()
    drops = DropLog(log, 10.0, clock, max_lines=3)
    for host in range(1, 101):
        drops.dropped(host, clock.seconds(), "dropped from {peer}", peer=f"198.51.100.{host}")
    assert log.lines == [f"dropped from 198.51.100.{host}" for host in (1, 2, 3)]
    clock.advance(10)
    assert log.lines[3:] == ["netgateway: 97 more drops or refusals from other peers not logged"
                             " (more than 3 peers in 10.0 s)"]
    drops.dropped(200, clock.seconds(), "dropped from {peer}", peer="198.51.100.200")
    assert log.lines[-1] == "dropped from 198.51.100.200"     # a new interval has room
    clock.advance(10)
    assert len(log.lines) == 5
