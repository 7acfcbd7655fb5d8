"""The registrar: where a player's user agents can be reached, for as long as they say.

# implements RFC 3261 §10.3 (processing REGISTER: Contact and its expires parameter or
#   the Expires header, 423 Interval Too Brief with Min-Expires, "Contact: *" with
#   Expires 0 removes every binding, Call-ID and CSeq order per binding, a 200 listing
#   the current bindings) and §20.10 (Contact: name-addr or addr-spec, parameters)

Whose bindings: the gateway's AOR is ``sip:SESSION@HOST`` (the REGISTER's To), and
each player registers their own contacts under it: bindings are keyed by
``(session, player)``, the player being the digest username the core verified.
A 200 lists only that player's contacts, never another player's address (the bus
rule: members never learn each other's addresses). Bindings live in memory only;
a restart forgets them and clients register again at their next refresh.

Sans-IO: the core passes the parsed request and ``now``.
"""

import typing

__all__ = ["Registrar", "Binding", "split_header_list", "contact_uri"]

MAX_CONTACTS_PER_REQUEST = 16


class Binding:
    __slots__ = ("uri", "params", "expires_at", "call_id", "cseq", "transport", "source")

    def __init__(self, uri, params, expires_at, call_id, cseq, transport, source):
        self.uri = uri
        self.params = params            # the contact's parameters but expires, as written
        self.expires_at = expires_at
        self.call_id = call_id
        self.cseq = cseq
        self.transport = transport
        self.source = source            # where the REGISTER came from (NAT: reach it there)

    def contact(self, now):
        """This binding as a 200's Contact value."""
        remaining = max(0, int(round(self.expires_at - now)))
        return f"<{self.uri}>{self.params};expires={remaining}"

    def __repr__(self):
        return f"Binding({self.uri!r})"


class Outcome(typing.NamedTuple):
    status: int
    reason: str
    headers: list


def split_header_list(value):
    """The comma-separated elements of a header value, commas in quotes and <> kept."""
    parts, current, quoted, angle, escaped = [], [], False, False, False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            angle = True
        elif not quoted and char == ">":
            angle = False
        elif char == "," and not quoted and not angle:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts if part]


def contact_uri(value):
    """``(uri, params)`` of a Contact/To/From value: the URI and what follows it."""
    if "<" in value:
        start = value.index("<") + 1
        end = value.find(">", start)
        if end < 0:
            raise ValueError(f"no '>' in {value[:40]!r}")
        return value[start:end].strip(), value[end + 1:].strip()
    # addr-spec: every ';' parameter is the header's, not the URI's (§20.10).
    uri, semicolon, params = value.strip().partition(";")
    return uri.strip(), semicolon + params


def _params(text):
    """``[(name, value or None)]`` of ``;a=b;c``."""
    result = []
    for part in text.split(";")[1:]:
        name, equals, value = part.partition("=")
        if name.strip():
            result.append((name.strip().lower(), value.strip() if equals else None))
    return result


def _seconds(text):
    text = (text or "").strip()
    if not text.isdigit() or len(text) > 10:
        return None
    return min(int(text), 2 ** 32 - 1)


def _same_uri(first, second):
    """URI equality, loosely (§19.1.4): scheme and host case-insensitive, the rest exact."""
    def canonical(uri):
        scheme, _, rest = uri.partition(":")
        user, at, host = rest.rpartition("@")
        return (scheme.lower(), user, at, host.lower())
    return canonical(first) == canonical(second)


class Registrar:
    def __init__(self, min_expires=60, max_expires=3600, default_expires=3600,
                 max_bindings=4096, max_per_player=8):
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.max_bindings = max_bindings
        self.max_per_player = max_per_player
        self.bindings = {}          # (session, player) -> [Binding]
        self.count = 0

    def register(self, key, request, transport, source, now):
        """Apply REGISTER ``request`` for ``key`` = (session, player): an :class:`Outcome`."""
        header_expires = _seconds(request.get("expires"))
        contacts = []
        for value in request.values("contact"):
            contacts += split_header_list(value)
        if len(contacts) > MAX_CONTACTS_PER_REQUEST:
            return Outcome(400, "Bad Request (too many contacts)", [])
        current = self.contacts(key, now)
        if "*" in contacts:
            if contacts != ["*"] or header_expires != 0:
                return Outcome(400, "Bad Request (Contact: * needs Expires: 0 alone)", [])
            for binding in current:
                if binding.call_id == request.call_id and binding.cseq >= request.cseq[0]:
                    return Outcome(500, "Server Internal Error (out-of-order REGISTER)", [])
            self._set(key, [])
            return Outcome(200, "OK", [])
        changes = []
        for contact in contacts:
            try:
                uri, params_text = contact_uri(contact)
            except ValueError:
                return Outcome(400, "Bad Request (bad Contact)", [])
            params = _params(params_text)
            expires = _seconds(dict(params).get("expires"))
            if expires is None:
                expires = header_expires if header_expires is not None else self.default_expires
            if 0 < expires < self.min_expires:
                return Outcome(423, "Interval Too Brief",
                               [("Min-Expires", str(self.min_expires))])
            kept = "".join(f";{name}" if value is None else f";{name}={value}"
                           for name, value in params if name != "expires")
            changes.append((uri, kept, min(expires, self.max_expires)))
        updated = list(current)
        for uri, kept, expires in changes:
            existing = next((b for b in updated if _same_uri(b.uri, uri)), None)
            if existing is not None:
                if existing.call_id == request.call_id and existing.cseq >= request.cseq[0]:
                    return Outcome(500, "Server Internal Error (out-of-order REGISTER)", [])
                updated.remove(existing)
            if expires:
                updated.append(Binding(uri, kept, now + expires, request.call_id,
                                       request.cseq[0], transport, source))
        if len(updated) > self.max_per_player:
            return Outcome(403, f"Forbidden (at most {self.max_per_player} contacts)", [])
        if self.count - len(current) + len(updated) > self.max_bindings:
            return Outcome(503, "Service Unavailable (registrar full)", [("Retry-After", "60")])
        self._set(key, updated)
        return Outcome(200, "OK", [("Contact", binding.contact(now)) for binding in updated])

    def contacts(self, key, now):
        """The live bindings of ``(session, player)``."""
        return [binding for binding in self.bindings.get(key, ()) if binding.expires_at > now]

    def expire(self, now):
        for key in [key for key, bindings in self.bindings.items()
                    if any(binding.expires_at <= now for binding in bindings)]:
            self._set(key, [b for b in self.bindings[key] if b.expires_at > now])

    def _set(self, key, bindings):
        self.count += len(bindings) - len(self.bindings.get(key, ()))   # expired ones too
        if bindings:
            self.bindings[key] = bindings
        else:
            self.bindings.pop(key, None)
