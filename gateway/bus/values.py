"""The values that cross the session bus.

Everything a door hands the bus or gets back from it is one of these: plain,
immutable, and made of strings, numbers and tuples, so that a bus backed by a
remote store can serialize it. No value carries a network address except
:attr:`JoinRequest.source`, which the bus uses for throttling and allow-lists
and never passes on to other members.

The one exception is :class:`Delivery`, the envelope of one fan-out: its
events and source are values, and its :meth:`Delivery.memo` lets every member
of a door share one encoding of them.
"""

import hmac
import itertools
import typing
import unicodedata

from gateway.beatclock import BEAT_CLOCK_STATUSES

# A credential is any value with ``passphrase`` (the text, or None when the joiner
# does not bring it), ``matches(secret)``, and ``proves_passphrase``: whether a match
# shows that the joiner knows the session's passphrase. Credentials that prove it
# may join sessions created at run time; the others (AllowedAddress, Verified) only
# declared ones. Only a credential carrying the passphrase itself can create a
# session: the bus needs the text to keep. A SIP digest response
# (gateway.protocols.sip.digest.DigestProof) proves the passphrase without
# carrying it.

# Why a join was refused: stable codes that each door maps to its own wire.
WRONG_PASSPHRASE = "wrong_passphrase"
SESSION_FULL = "session_full"
GATEWAY_FULL = "gateway_full"
UNKNOWN_SESSION = "unknown_session"
PASSPHRASE_TOO_SHORT = "passphrase_too_short"
ADDRESS_NOT_ALLOWED = "address_not_allowed"
THROTTLED = "throttled"
BAD_NAME = "bad_name"
NAME_TAKEN = "name_taken"
# Why a tempo change was refused (the same codes where they mean the same).
NO_TEMPO = "no_tempo"
BAD_TEMPO = "bad_tempo"
REFUSAL_REASONS = (WRONG_PASSPHRASE, SESSION_FULL, GATEWAY_FULL, UNKNOWN_SESSION,
                   PASSPHRASE_TOO_SHORT, ADDRESS_NOT_ALLOWED, THROTTLED, BAD_NAME, NAME_TAKEN)

MAX_NAME_LENGTH = 64
# Characters no player name may hold, by Unicode category: controls (newline,
# NUL, escape), format characters (bidi overrides, zero-width joiners), lone
# surrogates, and line and paragraph separators. They forge lines in logs and
# rosters, or make one name look like another.
_UNSHOWN_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))


def name_problem(name):
    """Why ``name`` cannot be a player's name (a member's, an OSCgroups user's), or None.

    The one rule for names, whatever door they come through: at least one
    visible character, at most :data:`MAX_NAME_LENGTH`, and none of the
    characters above. Names are refused, never repaired: a repaired name would
    let two peers look alike.
    """
    if not name.strip():
        return "a name needs a visible character"
    if len(name) > MAX_NAME_LENGTH:
        return f"a name may have at most {MAX_NAME_LENGTH} characters"
    for character in name:
        if unicodedata.category(character) in _UNSHOWN_CATEGORIES:
            return f"a name may not hold the character U+{ord(character):04X}"
    return None


def name_key(name):
    """What two names must share to count as the same player's: ``Alice``, ``alice `` and
    ``ＡＬＩＣＥ`` (full-width) are one name in a roster, so no player can pass for another."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


def unused_name(name, view):
    """``name``, or ``name 2``, ``name 3``... : the first no member of the session has.

    ``view`` is the session's :class:`SessionView` (``bus.session_view``), or
    None while the session does not exist. For the names a door makes up
    itself (a default for a protocol that sends none, sfront's
    ``login@host``): their peers cannot choose another, so the door numbers
    them instead of having the bus refuse them as taken.
    """
    if view is None:
        return name
    taken = {name_key(entry.name) for entry in view.roster}
    if name_key(name) not in taken:
        return name
    for number in itertools.count(2):
        suffix = f" {number}"
        candidate = name[:MAX_NAME_LENGTH - len(suffix)] + suffix
        if name_key(candidate) not in taken:
            return candidate

# What changed in a session's roster.
JOINED = "join"
LEFT = "leave"
UPDATED = "update"


class Passphrase(typing.NamedTuple):
    """The joiner brings the passphrase itself (WebSocket, RTMP)."""

    passphrase: str
    proves_passphrase = True

    def matches(self, secret):
        return hmac.compare_digest(self.passphrase.encode("utf-8"), secret.encode("utf-8"))


class AllowedAddress(typing.NamedTuple):
    """No secret: the session's ``allow_addresses`` must list the request's source.

    For doors whose protocol has no authentication (AppleMIDI). Declared
    sessions only.
    """

    passphrase = None
    proves_passphrase = False

    def matches(self, secret):
        return True


class Verified(typing.NamedTuple):
    """The door has checked the peer itself (a configured invitation, OSCgroups'
    group password checked with :meth:`SessionBus.check`). Declared sessions only."""

    passphrase = None
    proves_passphrase = False

    def matches(self, secret):
        return True


class JoinRequest(typing.NamedTuple):
    """Who wants to join which session, with what credential, from where.

    ``source`` is the peer's host (an IP address string) or None; it keys the
    join throttle and is checked against allow-lists, and is never shown to
    other members.
    """

    session: str
    name: str
    door: str
    credential: typing.Any
    source: typing.Optional[str] = None


class Refusal(typing.NamedTuple):
    """A join refused: ``reason`` is one of :data:`REFUSAL_REASONS`."""

    reason: str
    message: str


class JoinRefused(Exception):
    """The failure a refused join's Deferred fires with; it carries the :class:`Refusal`."""

    def __init__(self, refusal):
        super().__init__(refusal.message)
        self.refusal = refusal

    @property
    def reason(self):
        return self.refusal.reason

    @property
    def message(self):
        return self.refusal.message


class RosterEntry(typing.NamedTuple):
    """One member as every other member sees it: never an address."""

    member_id: int
    name: str
    door: str
    latency_ms: typing.Optional[float] = None

    def as_dict(self):
        return {"id": self.member_id, "name": self.name, "door": self.door,
                "latency_ms": self.latency_ms}


class RosterNotice(typing.NamedTuple):
    """``entry`` joined, left or was updated; ``roster`` is the session afterwards."""

    change: str
    entry: RosterEntry
    roster: typing.Tuple[RosterEntry, ...]


class TempoState(typing.NamedTuple):
    """A session's tempo as members see it (gateway.beatclock keeps the clock).

    ``running``: the song plays (in a session nobody is in: it will once one joins).
    ``beat`` is the next quarter note, counted from Start, not yet clocked, and
    ``beat_time`` when it is due, in the bus clock's seconds (the time base of
    event times and of the WebSocket door's ``server_time``); None while stopped.
    ``changed_by`` is the RosterEntry of the member whose change this is, or None.
    """

    bpm: float
    running: bool
    beats_per_bar: int
    beat: int
    beat_time: typing.Optional[float]
    changed_by: typing.Optional[RosterEntry] = None

    def as_dict(self):
        return {"bpm": self.bpm, "running": self.running, "beats_per_bar": self.beats_per_bar,
                "beat": self.beat, "beat_time": self.beat_time,
                "changed_by": None if self.changed_by is None else self.changed_by.as_dict()}


# What a tempo change may ask for besides a bpm.
START = "start"
STOP = "stop"
CONTINUE = "continue"
TRANSPORTS = (START, STOP, CONTINUE)


class TempoChange(typing.NamedTuple):
    """A member asks to change its session's tempo: ``bpm`` (or None to keep it),
    ``transport`` (:data:`TRANSPORTS` or None) and/or ``position`` (sixteenths from the
    start, while stopped or with stop: the Song Position Pointer), proving the right
    with the session's ``tempo.control_passphrase``. ``source`` is the member's host,
    for the throttle."""

    control_passphrase: str
    bpm: typing.Optional[float] = None
    transport: typing.Optional[str] = None
    source: typing.Optional[str] = None
    position: typing.Optional[int] = None


class Welcome(typing.NamedTuple):
    """What a member learns when its join succeeds."""

    session: str
    entry: RosterEntry
    roster: typing.Tuple[RosterEntry, ...]
    mirror: bool
    tempo: typing.Optional[TempoState] = None


class SessionView(typing.NamedTuple):
    """What a door may know about a session before or without joining it."""

    name: str
    declared: bool
    mirror: bool
    max_members: int
    roster: typing.Tuple[RosterEntry, ...]
    tempo: typing.Optional[TempoState] = None

    @property
    def member_count(self):
        return len(self.roster)

    @property
    def full(self):
        return len(self.roster) >= self.max_members


class Delivery:
    """One fan-out as each member receives it.

    ``events`` is a tuple of :class:`~gateway.midi.MidiEvent`; ``source`` the
    publisher's :class:`RosterEntry`; ``released`` is true for the note-offs
    and pedal releases the bus sends for a member that left. ``encodings``
    maps a wire name to the events already encoded for that wire, exactly as
    the publisher received them (an RTP-MIDI packet's MIDI list), or is empty;
    a bus that changes the events (rate limit, velocity cap) drops it.
    ``tempo`` is the session's new :class:`TempoState` on a delivery from the
    gateway's clock that starts, stops or changes the tempo (None otherwise):
    doors whose peers hear tempo as such (the page, OSC's ``/tempo``) send it.

    ``memo(key, compute, *args)`` returns ``compute(*args)``, computed once
    for this fan-out whichever member asks first: a door encodes once for all
    its members. Keys are the door's own (a tuple starting with its name).
    """

    __slots__ = ("events", "source", "released", "encodings", "tempo", "_memo")

    def __init__(self, events, source, released=False, encodings=None, tempo=None):
        self.events = events
        self.source = source
        self.released = released
        self.encodings = encodings or {}
        self.tempo = tempo
        self._memo = {}

    def memo(self, key, compute, *args):
        try:
            return self._memo[key]
        except KeyError:
            value = self._memo[key] = compute(*args)
            return value

    def without_beat_clock(self):
        """This delivery for a door whose peers do not follow MIDI beat clock (sfront, SIP,
        RTMP): itself when it holds none, one shared copy without it, or None when
        nothing else is left. A session clock's 48 messages a second at 120 bpm would
        be a flood to them, and a player's clock means nothing there either."""
        return self.memo(_WITHOUT_BEAT_CLOCK, self._strip_beat_clock)

    def _strip_beat_clock(self):
        kept = tuple(event for event in self.events
                     if event.data[0] not in BEAT_CLOCK_STATUSES)
        if not kept:
            return None     # a tempo change alone says nothing to them either
        if len(kept) == len(self.events):
            return self
        return Delivery(kept, self.source, self.released)

    def __repr__(self):
        return (f"Delivery({len(self.events)} events from {self.source.name!r}"
                f"{', released' if self.released else ''})")


_WITHOUT_BEAT_CLOCK = ("bus", "without beat clock")
