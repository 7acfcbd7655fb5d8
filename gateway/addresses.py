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


def peer_address(host):
    """``host`` as an address object, an IPv4-mapped IPv6 one (what a dual-stack "::"
    socket shows for IPv4 peers) as the IPv4 address; None if not an address."""
    try:
        address = ipaddress.ip_address(host)
    except (TypeError, ValueError):
        return None
    return getattr(address, "ipv4_mapped", None) or address
