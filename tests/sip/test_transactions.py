"""Transactions on a fake clock: Timers E, F, G, H, I, J, K, L, matching, bounds."""

from gateway.protocols.sip.message import Via, parse
from gateway.protocols.sip.transactions import (
    T1, T2, T4, TransactionTable, server_key,
)

NOW = 1000.0
SOURCE = ("127.0.0.1", 5070)


def request(method="INVITE", branch="z9hG4bKabc", cseq=1, via_host="127.0.0.1", tag="t1"):
    return parse(f"{method} sip:demo@127.0.0.1 SIP/2.0\r\n"
                 f"Via: SIP/2.0/UDP {via_host}:5070;branch={branch}\r\n"
                 f"From: <sip:a@b>;tag={tag}\r\nTo: <sip:demo@127.0.0.1>\r\n"
                 f"Call-ID: c1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n".encode())


def key_of(message):
    return server_key(message, Via.parse(message.get("via")))


def run(table, until, step=0.01, start=NOW):
    """Every send and expiry from ``start`` to ``until``, with their times."""
    sent, ended = [], []
    now = start
    while now <= until + 1e-9:
        sends, expired = table.timer(now)
        sent += [now for _ in sends]
        ended += [(now, event.why) for event in expired]
        now = round(now + step, 6)
    return sent, ended


def test_keys_rfc3261_and_the_2543_fallback():
    invite = request()
    assert key_of(invite) == key_of(request("ACK")) != key_of(request("CANCEL"))
    assert key_of(request("CANCEL"))[:-1] + ("INVITE",) == key_of(invite)
    assert key_of(invite) != key_of(request(branch="z9hG4bKother"))
    old = request(branch="1234")
    assert key_of(old)[0] == "2543"
    assert key_of(old) == key_of(request("ACK", branch="1234"))
    assert key_of(old) != key_of(request(branch="1234", tag="t2"))
    assert key_of(request(branch=None or "z9hG4bKabc", via_host="10.0.0.1")) != key_of(invite)


def test_a_non_2xx_final_is_resent_on_timer_g_until_timer_h():
    table = TransactionTable()
    invite = request()
    transaction = table.create(key_of(invite), invite, "UDP", SOURCE, NOW)
    table.respond(transaction, 100, b"100", NOW)
    table.respond(transaction, 486, b"486", NOW)
    assert table.respond(transaction, 200, b"200", NOW) == []      # the first final stands
    sent, ended = run(table, NOW + 64 * T1 + 1, step=0.05)
    gaps = [round(b - a, 2) for a, b in zip([NOW] + sent, sent)]
    assert gaps[:5] == [T1, 2 * T1, 4 * T1, T2, T2]
    assert ended == [(NOW + 64 * T1, "no_ack")]
    assert table.find(key_of(invite)) is None and table.live == 0


def test_the_ack_stops_retransmissions_and_timer_i_absorbs_its_copies():
    table = TransactionTable()
    invite = request()
    transaction = table.create(key_of(invite), invite, "UDP", SOURCE, NOW)
    table.respond(transaction, 401, b"401", NOW)
    assert table.acknowledged(transaction, NOW + 0.1)
    assert table.retransmission(transaction) == []
    assert table.find(key_of(request("ACK"))) is transaction       # absorbs ACK copies
    sent, ended = run(table, NOW + 10, step=0.05)
    assert sent == [] and ended == [(NOW + 0.1 + T4, "done")]
    assert table.live == 0 and len(table) == 0


def test_a_2xx_is_resent_until_the_ack_and_64_t1_without_it_is_no_ack():
    table = TransactionTable()
    invite = request()
    transaction = table.create(key_of(invite), invite, "UDP", SOURCE, NOW)
    table.respond(transaction, 200, b"200", NOW)
    sent, _ = run(table, NOW + 3.6, step=0.05)
    assert len(sent) == 3                                          # 0.5, 1.5, 3.5
    assert table.acknowledged(transaction, NOW + 3.6)
    assert table.find(key_of(invite)) is None
    table2 = TransactionTable()
    transaction = table2.create(key_of(invite), invite, "UDP", SOURCE, NOW)
    table2.respond(transaction, 200, b"200", NOW)
    _, ended = run(table2, NOW + 40, step=0.1)
    assert ended == [(NOW + 32.0, "no_ack")]


def test_over_tcp_nothing_is_resent():
    table = TransactionTable()
    invite = request()
    transaction = table.create(key_of(invite), invite, "TCP", SOURCE, NOW)
    table.respond(transaction, 486, b"486", NOW)
    sent, ended = run(table, NOW + 40, step=0.1)
    assert sent == [] and ended == [(NOW + 32.0, "no_ack")]
    register = request("REGISTER")
    transaction = table.create(key_of(register), register, "TCP", SOURCE, NOW)
    table.respond(transaction, 200, b"200", NOW)
    assert run(table, NOW, step=0.1)[1] == [(NOW, "done")]         # Timer J is 0


def test_a_non_invite_absorbs_retransmissions_for_timer_j():
    table = TransactionTable()
    register = request("REGISTER")
    transaction = table.create(key_of(register), register, "UDP", SOURCE, NOW)
    assert table.retransmission(transaction) == []                 # nothing sent yet
    table.respond(transaction, 200, b"200 OK", NOW)
    assert [send.data for send in table.retransmission(transaction)] == [b"200 OK"]
    assert table.live == 0
    _, ended = run(table, NOW + 33, step=0.5)
    assert ended == [(NOW + 64 * T1, "done")]


def test_the_core_is_told_when_it_never_answered():
    table = TransactionTable(non_invite_tu_limit=16.0)
    register = request("REGISTER")
    table.create(key_of(register), register, "UDP", SOURCE, NOW)
    _, ended = run(table, NOW + 20, step=0.5)
    assert ended == [(NOW + 16.0, "tu_timeout")]


def test_completed_transactions_are_evicted_oldest_first_and_live_ones_are_bounded():
    table = TransactionTable(max_live=2, max_absorbing=3)
    for number in range(5):
        message = request("OPTIONS", branch=f"z9hG4bK{number}")
        transaction = table.create(key_of(message), message, "UDP", SOURCE, NOW)
        table.respond(transaction, 200, b"200", NOW)
    assert len(table) == 3 and table.evicted == 2 and table.live == 0
    assert table.find(key_of(request("OPTIONS", branch="z9hG4bK0"))) is None
    for number in range(2):
        message = request("INVITE", branch=f"z9hG4bKi{number}")
        table.create(key_of(message), message, "UDP", SOURCE, NOW)
    assert table.full()


def test_a_client_bye_is_resent_on_timer_e_and_gives_up_on_timer_f():
    table = TransactionTable()
    transaction, first = table.send_request("z9hG4bKbye", "BYE", b"BYE", "UDP", SOURCE, NOW)
    assert [send.data for send in first] == [b"BYE"]
    sent, ended = run(table, NOW + 33, step=0.05)
    gaps = [round(b - a, 2) for a, b in zip([NOW] + sent, sent)]
    assert gaps[:5] == [T1, 2 * T1, 4 * T1, T2, T2]
    assert ended == [(NOW + 32.0, "timeout")]


def test_a_client_bye_stops_at_its_final_response_and_absorbs_copies():
    table = TransactionTable()
    transaction, _ = table.send_request("z9hG4bKbye", "BYE", b"BYE", "UDP", SOURCE, NOW)
    response = parse(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKbye\r\n"
                     b"CSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n")
    via = Via.parse(response.get("via"))
    assert table.match_response(response, via) is transaction
    assert table.response_received(transaction, 200, NOW + 0.2)
    assert not table.response_received(transaction, 200, NOW + 0.3)
    sent, ended = run(table, NOW + 10, step=0.05, start=NOW + 0.2)
    assert sent == [] and ended == [(NOW + 0.2 + T4, "done")]
    assert table.match_response(response, via) is None
