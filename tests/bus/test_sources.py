"""The per-source connection gate's arithmetic (sans-IO: addresses and times)."""

from gateway.bus.sources import (CONCURRENT, DATAGRAM_RATE, NETWORK_DATAGRAM_RATE, NETWORK_RATE,
                                 PRE_JOIN_BYTES, PRE_JOIN_MESSAGES, RATE, TOTAL_RATE,
                                 ConnectionBudget,
                                 DatagramGate, SourceGate, TokenBuckets)
from gateway.config import LimitsConfig


def gate(**overrides):
    settings = dict(per_second=1.0, burst=3, network_per_second=10.0, network_burst=5,
                    max_concurrent=100, exempt=["127.0.0.0/8"])
    settings.update(overrides)
    return SourceGate(**settings)


def test_a_source_gets_its_burst_then_its_rate():
    source = gate()
    assert [source.admit("198.51.100.1", 0.0) for _ in range(4)] == [None, None, None, RATE]
    assert source.admit("198.51.100.1", 0.5) == RATE
    assert source.admit("198.51.100.1", 1.01) is None
    assert source.refused == {RATE: 2}


def test_walking_the_addresses_of_a_network_hits_the_network_limit():
    source = gate()
    answers = [source.admit(f"198.51.100.{host}", 0.0) for host in range(1, 8)]
    assert answers == [None] * 5 + [NETWORK_RATE] * 2
    # Another /24 has its own bucket; an IPv6 /64 is one network too.
    assert source.admit("198.51.101.1", 0.0) is None
    assert [source.admit(f"2001:db8::{host}", 0.0) for host in range(1, 7)] == (
        [None] * 5 + [NETWORK_RATE])


def test_concurrent_connections_are_held_until_closed():
    source = gate(max_concurrent=2, burst=100, network_burst=100)
    assert source.admit("198.51.100.1", 0.0) is None
    assert source.admit("198.51.100.1", 0.0) is None
    assert source.admit("198.51.100.1", 0.0) == CONCURRENT
    source.closed("198.51.100.1")
    assert source.admit("198.51.100.1", 0.0) is None
    assert source.open == {"198.51.100.1": 2}


def test_exempt_and_mapped_addresses():
    source = gate(burst=1)
    assert all(source.admit("127.0.0.1", 0.0) is None for _ in range(50))
    assert source.open == {}
    # A dual-stack socket's mapped IPv4 peer is that IPv4 address.
    assert source.admit("::ffff:198.51.100.9", 0.0) is None
    assert source.admit("198.51.100.9", 0.0) == RATE
    assert source.admit("not an address", 0.0) is None


def test_remembered_sources_are_bounded():
    source = gate(max_sources=10, network_burst=10**6)
    for host in range(100):
        source.admit(f"10.0.{host}.1", 0.0)
    assert len(source) == 10


def datagram_gate(**overrides):
    settings = dict(per_second=100.0, burst=10, network_per_second=1000.0, network_burst=15,
                    exempt=["127.0.0.0/8"])
    settings.update(overrides)
    return DatagramGate(**settings)


def test_a_datagram_source_gets_its_burst_then_its_rate():
    datagrams = datagram_gate()
    answers = [datagrams.admit("198.51.100.1", 0.0) for _ in range(12)]
    assert answers == [None] * 10 + [DATAGRAM_RATE] * 2
    # 100 a second: one more every 10 ms.
    assert datagrams.admit("198.51.100.1", 0.0101) is None
    assert datagrams.admit("198.51.100.1", 0.0102) == DATAGRAM_RATE


def test_a_network_of_datagram_sources_shares_one_bucket():
    datagrams = datagram_gate()
    answers = [datagrams.admit(f"198.51.100.{host}", 0.0) for host in range(1, 5) for _ in range(5)]
    assert answers.count(None) == 15
    assert answers[15:] == [NETWORK_DATAGRAM_RATE] * 5
    assert datagrams.admit("198.51.101.1", 0.0) is None


def test_exempt_datagram_sources_are_never_dropped():
    datagrams = datagram_gate(burst=1)
    assert all(datagrams.admit("127.0.0.2", 0.0) is None for _ in range(1000))
    assert datagrams.admit("::ffff:198.51.100.9", 0.0) is None
    assert datagrams.admit("198.51.100.9", 0.0) == DATAGRAM_RATE


def test_forgetting_sources_keeps_the_busy_ones():
    buckets = TokenBuckets(max_keys=4)
    for tick in range(4):
        buckets.take(f"idle {tick}", 1.0, 1, float(tick))
    assert not buckets.take("idle 3", 1.0, 1, 3.0)         # spent
    buckets.take("new", 1.0, 1, 10.0)                       # forgets idle 0 and idle 1
    assert len(buckets) == 3
    assert not buckets.take("idle 3", 1.0, 1, 3.5)          # remembered: still spent


def test_a_connection_budget_before_joining_refills_at_its_rates():
    limits = LimitsConfig(pre_join_messages_per_second=2.0, pre_join_message_burst=3,
                          pre_join_bytes_per_second=100.0, pre_join_byte_burst=1000)
    budget = ConnectionBudget(limits, 10.0)
    assert [budget.spend(10, 10.0) for _ in range(4)] == [None] * 3 + [PRE_JOIN_MESSAGES]
    budget = ConnectionBudget(limits, 10.0)
    assert [budget.spend(1, 10.0) for _ in range(3)] == [None] * 3
    assert budget.spend(1, 10.5) is None          # half a second: one message back
    assert budget.spend(1, 10.5) == PRE_JOIN_MESSAGES
    bytes_only = ConnectionBudget(limits, 0.0)
    assert bytes_only.spend(990, 0.0, messages=0) is None
    assert bytes_only.spend(20, 0.0, messages=0) == PRE_JOIN_BYTES
    assert bytes_only.spend(0, 1.0, messages=0) is None      # a second: 100 bytes back
    assert bytes_only.spend(95, 1.0, messages=0) == PRE_JOIN_BYTES


def test_many_networks_together_meet_the_total_rate():
    source = gate(total_per_second=1.0, total_burst=4)
    answers = [source.admit(f"198.51.{network}.1", 0.0) for network in range(6)]
    assert answers == [None] * 4 + [TOTAL_RATE] * 2
    assert source.admit("127.0.0.1", 0.0) is None           # exempt: not counted at all
    assert source.admit("198.51.7.1", 1.0) is None
