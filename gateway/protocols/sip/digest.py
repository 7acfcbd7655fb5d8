"""SIP digest authentication, the server's side: challenges, credentials, stateless nonces.

# implements RFC 3261 §22.1 and §22.4 (a UAS challenges with 401 and WWW-Authenticate,
#   the client answers with Authorization)
# implements RFC 8760 §2.3-§2.5 (SHA-256 beside MD5 in SIP; one challenge per algorithm,
#   the client uses the first one it supports)
# implements RFC 7616 §3.3 (challenge: realm, nonce, algorithm, qop, stale), §3.4 (response
#   with qop=auth, nc and cnonce; A1 of the -sess algorithms) and §5.4 (nc against replay)
# implements RFC 2617 §3.2.2.1 (RFC 2069 compatibility): a response without qop,
#   H(H(A1):nonce:H(A2)), which pyVoIP sends (shared/protocols/sip-clients.md §2.3)

Who a credential names is the UAS core's business (:mod:`gateway.protocols.sip.uas`):
the digest username is a player's name and the password a session's passphrase.
Nothing here ever holds a passphrase: a :class:`DigestProof` is what the client
sent, and ``proof.matches(secret)`` says whether the client knew ``secret``. It
has the shape of the bus's credentials (``passphrase`` and ``matches``), so a door
can hand it to the bus, which compares it with the session's passphrase and
counts a wrong one towards the join throttle.

Nonces are stateless: the issue time, a random salt and an HMAC of both under a
key of the core's, so any nonce that comes back is known to be ours and how old
it is without a table of issued nonces. Only the highest ``nc`` seen per nonce is
remembered, for nonces used with qop, in a bounded table.

Choices made for real clients, and why:

* The challenges list MD5 first, then SHA-256, with one nonce: old clients take the
  first challenge; pyVoIP keeps the last header it parses but always computes MD5,
  and the shared nonce makes its answer verify.
* Agents built on libre (baresip) are challenged with MD5 alone
  (:data:`MD5_ONLY_AGENTS`, matched in the User-Agent): libre reads every
  WWW-Authenticate header and gives up the whole request, "Function not
  implemented" (ENOSYS), at the first whose algorithm is not MD5, even after an
  MD5 one it could answer (measured with Debian's baresip 1.0.0).
* The ``uri`` of the credentials is hashed as the client wrote it and not compared
  with the Request-URI: pyVoIP writes ``sip:HOST;transport=UDP`` there whatever it
  requests. The session comes from the Request-URI (or To), and the password is that
  session's passphrase, so a response made for one session verifies for no other.
* The ``realm`` of the credentials is not compared either, for the same kind of
  client; HA1 is always made with our realm, so a client that hashed another realm
  fails anyway.
* A response whose length is that of an MD5 digest is checked as MD5 even when the
  client named another algorithm (a client that echoes the last challenge's
  algorithm but only knows MD5). MD5 is offered anyway, so this admits nothing new.

Sans-IO: nothing here reads the clock; ``now`` is a parameter.
"""

import collections
import hashlib
import hmac
import os
import re

__all__ = ["ALGORITHMS", "OFFERED", "DigestError", "Credentials", "DigestProof",
           "NonceSigner", "NonceCounts", "FRESH", "STALE", "FORGED",
           "parse_credentials", "challenges", "response_digest"]


def _hasher(name):
    def digest(text):
        return hashlib.new(name, text.encode("utf-8")).hexdigest()
    return digest


ALGORITHMS = {"MD5": _hasher("md5"), "MD5-SESS": _hasher("md5"),
              "SHA-256": _hasher("sha256"), "SHA-256-SESS": _hasher("sha256")}
"""Algorithms a response may use (upper case), each the hex digest function it names."""

OFFERED = ("MD5", "SHA-256")
"""The challenges sent, in this order (see the module docstring for why MD5 first)."""

MD5_ONLY_AGENTS = ("baresip", "libre")
"""User-Agent words (lower case) of clients challenged with MD5 only (see above)."""


def algorithms_for(user_agent):
    """The algorithms to challenge a client with, by its User-Agent header (or None)."""
    if user_agent:
        lowered = user_agent.lower()
        if any(word in lowered for word in MD5_ONLY_AGENTS):
            return ("MD5",)
    return OFFERED

_HEX_LENGTH = {"MD5": 32, "MD5-SESS": 32, "SHA-256": 64, "SHA-256-SESS": 64}

MAX_CREDENTIALS_LENGTH = 4096
MAX_PARAMETERS = 32
MAX_USERNAME_LENGTH = 128

FRESH = "fresh"
STALE = "stale"
FORGED = "forged"


class DigestError(ValueError):
    """Credentials that are not a usable digest response."""


def response_digest(algorithm, username, realm, password, method, uri, nonce,
                    nc=None, cnonce=None, qop=None):
    """The ``response`` value a client that knows ``password`` computes (RFC 7616 §3.4.1).

    Without ``qop`` it is RFC 2069's ``H(H(A1):nonce:H(A2))``.
    """
    hash_ = ALGORITHMS[algorithm.upper()]
    ha1 = hash_(f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = hash_(f"{ha1}:{nonce}:{cnonce}")
    ha2 = hash_(f"{method}:{uri}")
    if qop is None:
        return hash_(f"{ha1}:{nonce}:{ha2}")
    return hash_(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# Credentials -------------------------------------------------------------------------

_PARAMETER = re.compile(r'\s*([A-Za-z0-9_.!%*+`\'~-]+)\s*=\s*'
                        r'(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(,|$)', re.S)


class Credentials:
    """One ``Authorization: Digest ...`` value, its parameters by lower-case name."""

    __slots__ = ("params",)

    def __init__(self, params):
        self.params = params

    def __getitem__(self, name):
        return self.params.get(name)

    @property
    def algorithm(self):
        return (self.params.get("algorithm") or "MD5").upper()

    def __repr__(self):
        # Never the response: it is not the passphrase, but it is an offline guess's target.
        return f"Credentials(username={self.params.get('username')!r})"


def _digest_parameters(value, what):
    """The parameters of a ``Digest a=b, c="d"`` header value, names lower-cased."""
    if value is None or len(value) > MAX_CREDENTIALS_LENGTH:
        raise DigestError(f"no {what}, or too long")
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestError(f"scheme {scheme[:16]!r} is not Digest")
    params = {}
    position, rest = 0, rest.strip()
    while position < len(rest):
        match = _PARAMETER.match(rest, position)
        if match is None or match.end() == position:
            raise DigestError(f"bad parameter at {rest[position:position + 24]!r}")
        quoted = match.group(2)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) \
            if quoted is not None else match.group(3)
        if len(params) > MAX_PARAMETERS:
            raise DigestError("too many parameters")
        position = match.end()
    return params


def parse_credentials(value):
    """The :class:`Credentials` of an Authorization header value; DigestError if bad.

    Checks what every response needs (username, nonce, uri, response; nc and cnonce
    with qop) and that the algorithm and qop are ones the server accepts.
    """
    params = _digest_parameters(value, "credentials")
    credentials = Credentials(params)
    for required in ("username", "nonce", "uri", "response"):
        if not params.get(required):
            raise DigestError(f"no {required}")
    username = params["username"]
    if len(username) > MAX_USERNAME_LENGTH or not username.isprintable():
        raise DigestError("unusable username")
    if credentials.algorithm not in ALGORITHMS:
        raise DigestError(f"algorithm {credentials.algorithm[:16]!r} is not supported")
    qop = params.get("qop")
    if qop is not None:
        if qop.lower() != "auth":
            raise DigestError(f"qop {qop[:16]!r} is not supported (auth only)")
        nc = params.get("nc") or ""
        if len(nc) != 8 or not all(c in "0123456789abcdefABCDEF" for c in nc):
            raise DigestError("qop=auth needs an nc of 8 hex digits")
        if not params.get("cnonce"):
            raise DigestError("qop=auth needs a cnonce")
    elif credentials.algorithm.endswith("-SESS"):
        raise DigestError("a -sess algorithm needs qop and cnonce")
    response = params["response"]
    if not all(c in "0123456789abcdefABCDEF" for c in response) or len(response) > 128:
        raise DigestError("response is not hex")
    return credentials


class DigestProof:
    """What a client sent to prove it knows a secret; ``matches(secret)`` checks it.

    Shaped like the bus's credentials: ``passphrase`` is None because the
    passphrase itself never travels in digest authentication, and
    ``proves_passphrase`` is true because a response that matches could only be
    computed by someone who knows it. So the bus admits a digest to a session
    created at run time, but never creates one from it (it has no passphrase
    to give the new session).
    """

    passphrase = None
    proves_passphrase = True
    __slots__ = ("username", "realm", "method", "credentials")

    def __init__(self, username, realm, method, credentials):
        self.username = username
        self.realm = realm              # ours, not the one the client wrote
        self.method = method
        self.credentials = credentials

    def matches(self, secret):
        params = self.credentials.params
        algorithm = self.credentials.algorithm
        response = params["response"].lower()
        if len(response) != _HEX_LENGTH[algorithm] and len(response) == _HEX_LENGTH["MD5"]:
            algorithm = "MD5"           # a client that names one algorithm and computes MD5
        expected = response_digest(algorithm, self.username, self.realm, secret, self.method,
                                   params["uri"], params["nonce"], params.get("nc"),
                                   params.get("cnonce"), params.get("qop") and "auth")
        return hmac.compare_digest(expected.encode("ascii"), response.encode("ascii"))

    def __repr__(self):
        return f"DigestProof({self.username!r}, {self.method})"


# Challenges --------------------------------------------------------------------------

def challenges(realm, nonce, stale=False, algorithms=OFFERED):
    """The WWW-Authenticate values of one 401: one per offered algorithm, one nonce."""
    quoted_realm = realm.replace("\\", "\\\\").replace('"', '\\"')
    tail = ", stale=true" if stale else ""
    return [f'Digest realm="{quoted_realm}", nonce="{nonce}", algorithm={algorithm},'
            f' qop="auth"{tail}' for algorithm in algorithms]


class NonceSigner:
    """Issues nonces that carry their own issue time, and tells ours from others.

    A nonce is ``TIME.SALT.MAC`` in hex and dots: no ``=``, ``,`` or quote, which
    naive clients split on.
    """

    def __init__(self, key=None, lifetime=300.0, rng=None):
        self.key = key if key is not None else os.urandom(32)
        self.lifetime = lifetime
        self._random = rng.getrandbits if rng is not None else None

    def _mac(self, payload):
        return hmac.new(self.key, payload.encode("ascii"), hashlib.sha256).hexdigest()[:24]

    def issue(self, now):
        salt = self._random(48) if self._random is not None else int.from_bytes(
            os.urandom(6), "big")
        payload = f"{int(now):x}.{salt:012x}"
        return f"{payload}.{self._mac(payload)}"

    def check(self, nonce, now):
        """:data:`FRESH`, :data:`STALE` (ours, but expired or from the future) or :data:`FORGED`."""
        parts = nonce.split(".")
        if len(parts) != 3 or len(nonce) > 64:
            return FORGED
        payload = f"{parts[0]}.{parts[1]}"
        try:
            issued = int(parts[0], 16)
            expected = self._mac(payload)
        except (ValueError, UnicodeEncodeError):
            return FORGED
        if not hmac.compare_digest(expected, parts[2]):
            return FORGED
        age = now - issued
        if age < -5 or age > self.lifetime:
            return STALE
        return FRESH


class NonceCounts:
    """The highest ``nc`` accepted per nonce (RFC 7616 §5.4), for at most ``max_nonces``.

    A nonce pushed out of the table is refused as stale when it comes back with an
    nc above 1 (the client is asked for a new nonce): forgetting never lets a replay in.
    """

    def __init__(self, max_nonces=4096):
        self.max_nonces = max_nonces
        self._highest = collections.OrderedDict()

    def acceptable(self, nonce, nc):
        """Whether ``nc`` (an int) may be used with ``nonce`` now."""
        highest = self._highest.get(nonce)
        if highest is None:
            return nc == 1
        return nc > highest

    def accepted(self, nonce, nc):
        """``nc`` verified with ``nonce``: remember it."""
        if nc > self._highest.get(nonce, 0):
            self._highest[nonce] = nc
        self._highest.move_to_end(nonce)
        while len(self._highest) > self.max_nonces:
            self._highest.popitem(last=False)

    def __len__(self):
        return len(self._highest)


# The client's side: answering a challenge (the gateway calling out, sip.invite) -------
#
# implements RFC 3261 §22.2 and §22.3 (a 401's WWW-Authenticate is answered with
#   Authorization, a 407's Proxy-Authenticate with Proxy-Authorization, on a new request)
# implements RFC 8760 §2.4 (the topmost challenge whose algorithm the client supports:
#   MD5, SHA-256 and their -sess forms) and RFC 7616 §3.4 (qop=auth with nc and cnonce
#   when offered; RFC 2069's response when the challenge has no qop; opaque echoed)

class Challenge:
    """One ``Digest ...`` challenge a server sent (``header``: which header it came in)."""

    __slots__ = ("header", "realm", "nonce", "algorithm", "qop", "opaque", "stale")

    def __init__(self, header, realm, nonce, algorithm, qop, opaque, stale):
        self.header = header            # "www-authenticate" or "proxy-authenticate"
        self.realm = realm
        self.nonce = nonce
        self.algorithm = algorithm      # upper case
        self.qop = qop                  # the offered qop options, lower case (a tuple)
        self.opaque = opaque
        self.stale = stale

    @property
    def answer_header(self):
        """The header that carries the answer: Authorization or Proxy-Authorization."""
        return "Proxy-Authorization" if self.header == "proxy-authenticate" else "Authorization"

    def __repr__(self):
        return f"Challenge({self.realm!r}, {self.algorithm}, qop={self.qop})"


def parse_challenge(value, header="www-authenticate"):
    """The :class:`Challenge` of one WWW-/Proxy-Authenticate value; DigestError if it is
    not a digest challenge this client can answer."""
    params = _digest_parameters(value, "challenge")
    if not params.get("nonce") or params.get("realm") is None:
        raise DigestError("a challenge needs a realm and a nonce")
    algorithm = (params.get("algorithm") or "MD5").upper()
    if algorithm not in ALGORITHMS:
        raise DigestError(f"algorithm {algorithm[:16]!r} is not supported")
    qop = tuple(option.strip().lower() for option in params["qop"].split(",")
                if option.strip()) if params.get("qop") is not None else ()
    if qop and "auth" not in qop:
        raise DigestError(f"qop {params['qop'][:24]!r} offers no auth")
    if not qop and algorithm.endswith("-SESS"):
        raise DigestError("a -sess algorithm needs qop")
    return Challenge(header, params["realm"], params["nonce"], algorithm, qop,
                     params.get("opaque"), (params.get("stale") or "").lower() == "true")


def pick_challenge(message):
    """The challenge of a 401 or 407 ``message`` to answer (RFC 8760 §2.4: the topmost
    one this client supports), or None."""
    header = "proxy-authenticate" if message.status == 407 else "www-authenticate"
    for value in message.values(header):
        try:
            return parse_challenge(value, header)
        except DigestError:
            continue
    return None


def _quoted(text):
    return text.replace("\\", "\\\\").replace('"', '\\"')


def authorization(challenge, username, password, method, uri, nc=1, cnonce=None):
    """``(header name, value)`` answering ``challenge`` for ``method`` on ``uri``.

    With qop offered the answer uses qop=auth, nonce count ``nc`` and ``cnonce``
    (random when not given); without, RFC 2069's response.
    """
    qop = "auth" if challenge.qop else None
    nc_text = f"{nc:08x}" if qop else None
    if qop and cnonce is None:
        cnonce = os.urandom(8).hex()
    response = response_digest(challenge.algorithm, username, challenge.realm, password,
                               method, uri, challenge.nonce, nc_text, cnonce, qop)
    parts = [f'username="{_quoted(username)}"', f'realm="{_quoted(challenge.realm)}"',
             f'nonce="{_quoted(challenge.nonce)}"', f'uri="{_quoted(uri)}"',
             f'response="{response}"', f"algorithm={challenge.algorithm}"]
    if qop:
        parts += [f'cnonce="{cnonce}"', f"qop={qop}", f"nc={nc_text}"]
    if challenge.opaque is not None:
        parts.append(f'opaque="{_quoted(challenge.opaque)}"')
    return challenge.answer_header, "Digest " + ", ".join(parts)


__all__ += ["Challenge", "parse_challenge", "pick_challenge", "authorization"]
