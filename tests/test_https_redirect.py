"""The http -> https redirect's Location: the host the client named, or nothing."""

import pytest

from gateway.web.redirect import host_of, https_location


@pytest.mark.parametrize("header, host", [
    ("jam.example.org", "jam.example.org"),
    ("jam.example.org:80", "jam.example.org"),
    ("JAM.example.org.", "JAM.example.org."),
    ("203.0.113.7:8080", "203.0.113.7"),
    ("[2001:db8::1]:80", "[2001:db8::1]"),
])
def test_the_host_part_of_a_host_header_is_kept(header, host):
    assert host_of(header) == host


@pytest.mark.parametrize("header", [
    "", ":80", "evil.example/path", "user@evil.example", "evil.example?x", "a b",
    "[not-v6]", "2001:db8::1", "-dash.example", "evil.example:80:80", "evil..example",
])
def test_anything_else_is_refused(header):
    assert host_of(header) is None


def test_the_location_keeps_path_and_query_and_leaves_out_port_443():
    assert https_location("jam.example.org", 8443, "/x?y=1") == \
        "https://jam.example.org:8443/x?y=1"
    assert https_location("jam.example.org", 443, "/") == "https://jam.example.org/"
    assert https_location("jam.example.org", 443, "http://elsewhere.example/x") == \
        "https://jam.example.org/"
