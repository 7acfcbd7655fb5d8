"""The access log's budget per client (sans-IO: clients and times)."""

from gateway.web.site import AccessLogBudget


def test_a_client_gets_its_burst_then_its_rate_and_the_rest_is_summarised():
    budget = AccessLogBudget(per_second=1.0, burst=5, interval=10.0)
    assert [budget.admit("198.51.100.1", 0.0) for _ in range(8)] == [True] * 5 + [False] * 3
    assert budget.admit("198.51.100.2", 0.0)              # another client has its own
    assert budget.admit("198.51.100.1", 1.0)              # a second later: one more line
    assert not budget.admit("198.51.100.1", 1.0)
    assert budget.due_summaries(9.9) == []
    assert budget.due_summaries(10.0) == [("198.51.100.1", 4)]
    assert budget.due_summaries(30.0) == []               # said once
