"""IP address facts the config and the adapters share (no Twisted here)."""

import ipaddress

WILDCARDS = ("", "0.0.0.0", "::")


def is_wildcard(host):
    """Whether listening on ``host`` means every address of the machine."""
    return host in WILDCARDS


def is_address(text):
    """Whether ``text`` is an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(text)
    except (TypeError, ValueError):
        return False
    return True


def is_loopback(host):
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except (TypeError, ValueError):
        return False
