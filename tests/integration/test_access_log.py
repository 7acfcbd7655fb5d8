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
