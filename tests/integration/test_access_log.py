"""A GET flood writes a bounded access log on a real twistd (logging.access_line_*)."""

import http.client
import os
import re

BURST = 20


def test_a_get_flood_writes_its_burst_then_one_summary(gateway_factory):
    gateway = gateway_factory({"logging": {"access_line_burst": BURST,
                                           "access_lines_per_second": 0.01,
                                           "drop_log_interval": 1.0}})
    port = gateway.config["web"]["port"]
    before = os.path.getsize(gateway.log_path)
    requests = 400
    flood = http.client.HTTPConnection("127.0.0.1", port, timeout=5,
                                       source_address=("127.0.0.2", 0))
    for _ in range(requests):
        flood.request("GET", "/jam.css")
        assert flood.getresponse().read()
    flood.close()
    page = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    page.request("GET", "/")
    assert page.getresponse().status == 200            # another client is logged as ever
    page.close()

    summary = re.compile(r'"127\.0\.0\.2" - - \[.*\] (\d+) more requests not logged')
    gateway.wait_for_status(lambda status: summary.search(gateway.log), timeout=5.0)
    lines = gateway.log.splitlines()
    logged = [line for line in lines if '"127.0.0.2" - - ' in line and "GET /jam.css" in line]
    assert len(logged) == BURST
    assert int(summary.search(gateway.log).group(1)) == requests - BURST
    assert any('"GET / HTTP/1.1" 200' in line for line in lines)
    grown = os.path.getsize(gateway.log_path) - before
    assert grown < 200 * (BURST + 10), grown


def test_twisted_webs_own_line_per_request_is_bounded(gateway_factory):
    """twisted.web warns once per HEAD request answered with a body (a 404, /status):
    a HEAD flood gets that line once per interval and a summary."""
    gateway = gateway_factory({"logging": {"drop_log_interval": 1.0}})
    port = gateway.config["web"]["port"]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(100):
        connection.request("HEAD", "/no/such/page")
        response = connection.getresponse()
        response.read()
        assert response.status == 404
    connection.close()
    summary = re.compile(r"I think I'll eat it\. \((\d+) more like this not logged\)")
    gateway.wait_for_status(lambda status: summary.search(gateway.log), timeout=5.0)
    warnings = [line for line in gateway.log.splitlines() if "I think I'll eat it" in line]
    assert len(warnings) == 2, warnings
    assert int(summary.search(gateway.log).group(1)) == 99
