"""OSCgroups wire format: OSC packets and the OSCgroups messages carried in them.

Implements shared/protocols/oscgroups.md §3 (OSC 1.0 encoding, time tag 1,
nested bundles, exact address matching, inverted IPv4 addresses, MD5-hex
passwords) and the message catalogue of §4.1–§4.3 with the strict type tags
the C++ programs insist on (``s`` for strings, ``i`` for ints).

Addresses and type tags are read here; argument values by python-osc's
``OscMessage``, except int-only messages (every MIDI message the bridge sees),
which a precompiled ``struct`` reads directly. Bundle *framing* is walked here
by hand on purpose: python-osc 1.10's ``OscBundle`` loops forever on a
negative element size (measured: ``#bundle`` + time tag + ``ff ff ff fc``
never returns and logs a warning per iteration), accepts element sizes that
are not multiples of four, logs unidentifiable elements instead of failing,
and recurses without a depth limit. Arbitrary bytes must end in
:class:`MalformedPacket` and nothing else, so the walk below bounds all of it.

Encoding is written here too, for the type tags OSCgroups and the bridge
send (``i``, ``s``, ``f``, ``b``, ``m``): python-osc 1.10's builders take
25–75 µs per message because they re-parse what they built, which made them
the largest cost of the OSC -> session -> OSC path in bench/oscgroups_relay.py;
the ``struct`` version takes about 1 µs.

Pure functions, no I/O, no Twisted.
"""

import hashlib
import ipaddress
import struct
from typing import NamedTuple

from pythonosc import osc_message

# The original server never sends more; the C++ client survives up to 4098 (§6.6).
MAX_SERVER_DATAGRAM = 1536
MAX_BUNDLE_DEPTH = 8

_BUNDLE_PREFIX = b"#bundle\x00"
_BUNDLE_HEADER_SIZE = 16      # prefix + 64-bit time tag
_ELEMENT_SIZE_PREFIX = 4
# Type tags python-osc decodes; anything else it would skip with a warning,
# silently misaligning the arguments that follow.
_DECODABLE_TAGS = frozenset("ihfdsbrmtTFN[]")
_TIME_TAG_IMMEDIATELY = struct.pack(">q", 1)
_INT_ARGUMENTS = {}           # count -> struct.Struct of that many big-endian int32
_HEADS = {}                   # (address, type tags) -> their encoded strings
_MAX_HEADS = 256

USER_ALIVE = "/groupserver/user_alive"
GET_GROUP_USERS_INFO = "/groupserver/get_group_users_info"
USER_ALIVE_STATUS = "/groupclient/user_alive_status"
USER_GROUP_STATUS = "/groupclient/user_group_status"
USER_INFO = "/groupclient/user_info"
PING = "/groupclient/ping"

STATUS_OK = "ok"
STATUS_WRONG_PASSWORD = "wrong password"
STATUS_USER_LIMIT_REACHED = "user limit reached"
STATUS_BAD_USER_NAME = "bad user name"     # netgateway's own: the original has no name rule


class MalformedPacket(ValueError):
    """The datagram is not OSC, or not the OSCgroups message it claims to be."""


class Message(NamedTuple):
    """One OSC message: ``type_tags`` without the leading comma.

    ``args`` is None when a type tag is one python-osc cannot decode.
    """

    address: str
    type_tags: str
    args: tuple


# --------------------------------------------------------------------------
# Generic OSC


def parse_packet(data):
    """All messages of a datagram in order, nested bundles flattened.

    Time tags are ignored, as the C++ programs do. Raises MalformedPacket.
    """
    messages = []
    _parse_element(bytes(data), 0, messages)
    return messages


def _parse_element(data, depth, messages):
    if data.startswith(_BUNDLE_PREFIX):
        if depth >= MAX_BUNDLE_DEPTH:
            raise MalformedPacket("bundles nested too deeply")
        _parse_bundle(data, depth, messages)
    elif data.startswith(b"/"):
        messages.append(_parse_message(data))
    else:
        raise MalformedPacket("neither an OSC message nor a bundle")


def _parse_bundle(data, depth, messages):
    if len(data) < _BUNDLE_HEADER_SIZE:
        raise MalformedPacket("bundle shorter than its header")
    index = _BUNDLE_HEADER_SIZE
    while index < len(data):
        if index + _ELEMENT_SIZE_PREFIX > len(data):
            raise MalformedPacket("bundle element size cut short")
        (size,) = struct.unpack_from(">i", data, index)
        index += _ELEMENT_SIZE_PREFIX
        if size <= 0 or size % 4 or index + size > len(data):
            raise MalformedPacket(f"bad bundle element size {size}")
        _parse_element(data[index:index + size], depth + 1, messages)
        index += size


def _read_string(data, start):
    """(text, index after its padding) of the OSC string at ``start``."""
    end = data.find(b"\x00", start)
    if end < 0:
        raise MalformedPacket("unterminated OSC string")
    after = end + 4 - (end % 4)
    if after > len(data):
        raise MalformedPacket("OSC string padding cut short")
    try:
        return data[start:end].decode("utf-8"), after
    except UnicodeDecodeError:
        raise MalformedPacket("OSC string is not UTF-8") from None


def _parse_message(data):
    try:
        address, index = _read_string(data, 0)
        type_tags = ""
        if index < len(data):
            type_tags, arguments_at = _read_string(data, index)
            if not type_tags.startswith(","):
                raise MalformedPacket("type tag string does not start with ','")
            type_tags = type_tags[1:]
            if not _DECODABLE_TAGS.issuperset(type_tags):
                # Valid OSC (e.g. an ``S`` symbol) that no OSCgroups message
                # uses: keep it so callers can refuse it message by message.
                return Message(address, type_tags, None)
            if type_tags and type_tags == "i" * len(type_tags):
                return Message(address, type_tags,
                               _parse_ints(data, arguments_at, len(type_tags)))
        args = tuple(osc_message.OscMessage(data).params)
    except (osc_message.ParseError, UnicodeDecodeError) as exc:
        raise MalformedPacket(f"bad OSC message: {exc}") from None
    return Message(address, type_tags, args)


def _int_arguments(count):
    layout = _INT_ARGUMENTS.get(count)
    if layout is None:
        layout = _INT_ARGUMENTS[count] = struct.Struct(">" + "i" * count)
    return layout


def _parse_ints(data, start, count):
    layout = _int_arguments(count)
    if len(data) < start + layout.size:
        raise MalformedPacket("int arguments cut short")
    return layout.unpack_from(data, start)


def _osc_string(text):
    encoded = text.encode("utf-8")
    if b"\x00" in encoded:
        raise ValueError(f"an OSC string cannot contain NUL: {text!r}")
    return encoded + b"\x00" * (4 - len(encoded) % 4)


def _osc_blob(data):
    return struct.pack(">i", len(data)) + bytes(data) + b"\x00" * (-len(data) % 4)


def encode_message(address, type_tags, args):
    """OSC message bytes with exactly the given type tags (i, s, f, b, m; no inference)."""
    head = _HEADS.get((address, type_tags))
    if head is None:
        head = _osc_string(address) + _osc_string("," + type_tags)
        if len(_HEADS) >= _MAX_HEADS:
            _HEADS.clear()
        _HEADS[(address, type_tags)] = head
    if type_tags == "i" * len(type_tags):
        try:
            return head + _int_arguments(len(type_tags)).pack(*args)
        except (struct.error, TypeError) as exc:
            raise ValueError(f"cannot encode {address}: {exc}") from None
    parts = [head]
    try:
        for tag, value in zip(type_tags, args, strict=True):
            if tag == "i":
                parts.append(struct.pack(">i", value))
            elif tag == "s":
                parts.append(_osc_string(value))
            elif tag == "f":
                parts.append(struct.pack(">f", value))
            elif tag == "b":
                parts.append(_osc_blob(value))
            elif tag == "m":
                parts.append(struct.pack(">4B", *value))
            else:
                raise ValueError(f"type tag {tag!r} is not one the gateway sends")
    except (struct.error, TypeError) as exc:
        raise ValueError(f"cannot encode {address}: {exc}") from None
    return b"".join(parts)


def encode_bundle(elements):
    """A bundle with time tag 1 ("immediately") holding encoded messages."""
    parts = [_BUNDLE_PREFIX, _TIME_TAG_IMMEDIATELY]
    for element in elements:
        parts.append(struct.pack(">i", len(element)))
        parts.append(element)
    return b"".join(parts)


def pack_bundles(elements, max_size=MAX_SERVER_DATAGRAM):
    """Split encoded messages, in order, over as few bundles ≤ max_size as possible."""
    bundles = []
    current = []
    current_size = _BUNDLE_HEADER_SIZE
    for element in elements:
        element_size = _ELEMENT_SIZE_PREFIX + len(element)
        if _BUNDLE_HEADER_SIZE + element_size > max_size:
            raise ValueError(f"a {len(element)}-byte message cannot fit in {max_size} bytes")
        if current_size + element_size > max_size:
            bundles.append(encode_bundle(current))
            current = []
            current_size = _BUNDLE_HEADER_SIZE
        current.append(element)
        current_size += element_size
    if current:
        bundles.append(encode_bundle(current))
    return bundles


# --------------------------------------------------------------------------
# OSCgroups field encodings (§3)


def invert_ipv4(dotted):
    """Dotted IPv4 → the bit-inverted address as a signed int32 (§3)."""
    value = int(ipaddress.IPv4Address(dotted)) ^ 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def uninvert_ipv4(value):
    """Signed or unsigned 32-bit inverted address → dotted IPv4 string."""
    return str(ipaddress.IPv4Address((value ^ 0xFFFFFFFF) & 0xFFFFFFFF))


def is_ipv4(host):
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def password_hash(password):
    """What the C++ client sends instead of a typed password: lower-case MD5 hex."""
    return hashlib.md5(password.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------
# OSCgroups messages (§4)


def _require(condition, what):
    if not condition:
        raise MalformedPacket(what)


def _check_port(port):
    _require(0 <= port <= 0xFFFF, f"port {port} out of range")
    return port


class UserAlive(NamedTuple):
    user_name: str
    user_password: str
    private_endpoint: tuple   # (dotted ip, port)
    groups: tuple             # ((group name, group password), ...)

    @classmethod
    def from_message(cls, message):
        tags = message.type_tags
        pairs = tags[4:]
        _require(tags[:4] == "ssii" and set(pairs) <= {"s"} and len(pairs) % 2 == 0,
                 f"user_alive needs ,ssii + ss*N, got ,{tags}")
        name, password, inverted_ip, port, *group_fields = message.args
        groups = tuple(zip(group_fields[0::2], group_fields[1::2]))
        return cls(name, password, (uninvert_ipv4(inverted_ip), _check_port(port)), groups)

    def encode(self):
        ip, port = self.private_endpoint
        group_fields = [field for pair in self.groups for field in pair]
        return encode_message(
            USER_ALIVE, "ssii" + "ss" * len(self.groups),
            [self.user_name, self.user_password, invert_ipv4(ip), port, *group_fields])


class GroupUsersQuery(NamedTuple):
    group_name: str
    group_password: str

    @classmethod
    def from_message(cls, message):
        _require(message.type_tags == "ss", f"get_group_users_info needs ,ss, got ,{message.type_tags}")
        return cls(*message.args)

    def encode(self):
        return encode_message(GET_GROUP_USERS_INFO, "ss", list(self))


class UserAliveStatus(NamedTuple):
    user_name: str
    user_password: str
    status: str

    @classmethod
    def from_message(cls, message):
        _require(message.type_tags == "sss", f"user_alive_status needs ,sss, got ,{message.type_tags}")
        return cls(*message.args)

    def encode(self):
        return encode_message(USER_ALIVE_STATUS, "sss", list(self))


class UserGroupStatus(NamedTuple):
    user_name: str
    user_password: str
    group_name: str
    group_password: str
    status: str

    @classmethod
    def from_message(cls, message):
        _require(message.type_tags == "sssss",
                 f"user_group_status needs ,sssss, got ,{message.type_tags}")
        return cls(*message.args)

    def encode(self):
        return encode_message(USER_GROUP_STATUS, "sssss", list(self))


class UserInfo(NamedTuple):
    user_name: str
    private_endpoint: tuple
    public_endpoint: tuple
    seconds_since_alive: int
    groups: tuple             # group names

    @classmethod
    def from_message(cls, message):
        tags = message.type_tags
        _require(tags[:6] == "siiiii" and len(tags) > 6 and set(tags[6:]) == {"s"},
                 f"user_info needs ,siiiii + s*G (G>=1), got ,{tags}")
        name, private_ip, private_port, public_ip, public_port, age, *groups = message.args
        return cls(name,
                   (uninvert_ipv4(private_ip), _check_port(private_port)),
                   (uninvert_ipv4(public_ip), _check_port(public_port)),
                   age, tuple(groups))

    def encode(self):
        private_ip, private_port = self.private_endpoint
        public_ip, public_port = self.public_endpoint
        return encode_message(
            USER_INFO, "siiiii" + "s" * len(self.groups),
            [self.user_name, invert_ipv4(private_ip), private_port,
             invert_ipv4(public_ip), public_port, self.seconds_since_alive, *self.groups])


class Ping(NamedTuple):
    user_name: str

    @classmethod
    def from_message(cls, message):
        _require(message.type_tags == "s", f"ping needs ,s, got ,{message.type_tags}")
        return cls(*message.args)

    def encode(self):
        return encode_message(PING, "s", list(self))


_MESSAGE_TYPES = {
    USER_ALIVE: UserAlive,
    GET_GROUP_USERS_INFO: GroupUsersQuery,
    USER_ALIVE_STATUS: UserAliveStatus,
    USER_GROUP_STATUS: UserGroupStatus,
    USER_INFO: UserInfo,
    PING: Ping,
}


def decode_message(message):
    """The OSCgroups message for ``message``, or None for an address we don't know.

    Address matching is exact (no OSC patterns). Wrong type tags or counts
    raise MalformedPacket.
    """
    message_type = _MESSAGE_TYPES.get(message.address)
    if message_type is None:
        return None
    return message_type.from_message(message)
