"""An independent, deliberately naive OSC writer for exact-byte expectations in tests."""

import struct


def osc_string(text):
    raw = text.encode("utf-8") + b"\x00"
    return raw + b"\x00" * (-len(raw) % 4)


def osc_int(value):
    return struct.pack(">i", value)


def osc_message(address, type_tags, *args):
    body = b"".join(osc_string(a) if t == "s" else osc_int(a) for t, a in zip(type_tags, args))
    return osc_string(address) + osc_string("," + type_tags) + body


def osc_bundle(*elements, time_tag=1):
    framed = b"".join(osc_int(len(e)) + e for e in elements)
    return b"#bundle\x00" + struct.pack(">Q", time_tag) + framed
