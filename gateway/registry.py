"""The session registry: sessions, members, all-to-all fan-out, limits, expiry.

Doors join peers as members with :meth:`Registry.join` and get a
:class:`Membership` handle back; ``handle.publish(events)`` fans the events out
to every other member of the session (never back to the sender) and
``handle.leave(reason)`` takes the member out, sending everyone else the
note-offs and pedal releases for whatever it left sounding.

A session declared with ``mirror`` has, as its only other member, the
gateway itself: whatever a player plays comes back to that player transposed
(sfront's mirror session), so a newcomer can test any door alone.

No Twisted import: the clock is any object with ``seconds()`` and
``callLater()`` (a reactor, or ``task.Clock`` in tests).
"""

import collections
import hmac
import ipaddress
import itertools

from zope.interface import implementer

from gateway import midi
from gateway.interfaces import IMember


class JoinRefused(Exception):
    """A join was refused; ``reason`` is a stable code doors map to their wire."""

    WRONG_PASSPHRASE = "wrong_passphrase"
    SESSION_FULL = "session_full"
    GATEWAY_FULL = "gateway_full"
    UNKNOWN_SESSION = "unknown_session"
    PASSPHRASE_TOO_SHORT = "passphrase_too_short"

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason
        self.message = message


class Passphrase:
    """A credential that carries the passphrase itself (WebSocket, RTMP)."""

    def __init__(self, passphrase):
        self.passphrase = passphrase

    def matches(self, secret):
        return hmac.compare_digest(self.passphrase.encode("utf-8"), secret.encode("utf-8"))


class TrustedPeer:
    """A credential for doors that check peers without a secret (AppleMIDI allow-lists).

    It can join declared sessions only; the door has made its own check.
    """

    passphrase = None

    def matches(self, secret):
        return True


class DropCounters:
    """Counts what was dropped, by door and reason, for /status and /metrics."""

    def __init__(self):
        self._counts = collections.Counter()

    def count(self, door, reason, amount=1):
        self._counts[(door, reason)] += amount

    def get(self, door, reason):
        return self._counts[(door, reason)]

    def items(self):
        return sorted(self._counts.items())

    def as_dict(self):
        nested = collections.defaultdict(dict)
        for (door, reason), value in self._counts.items():
            nested[door][reason] = value
        return dict(nested)


class FanOutCache:
    """Computes something once per fan-out and reuses it for every member.

    The registry hands the same ``events`` list to every member a fan-out
    reaches, so a door can encode it once: the cache remembers the last list
    by identity, and holds a reference so a later list cannot reuse its id.
    """

    __slots__ = ("_events", "_value")

    def __init__(self):
        self._events = None
        self._value = None

    def get(self, events, compute, *args):
        """``compute(*args)``, computed once for the fan-out of ``events``."""
        if events is not self._events:
            self._value = compute(*args)
            self._events = events
        return self._value


class _RateLimit:
    """Token bucket: ``rate`` events per second with a burst of one second."""

    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate, now):
        self.rate = rate
        self.tokens = float(rate)
        self.stamp = now

    def refill(self, now):
        """The tokens available at ``now``; the caller stores what it leaves in ``tokens``."""
        tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return tokens


# How a status octet can end sound, so that the message is never rate-limited
# and nothing sticks; every such message is also one a NoteTracker follows.
_NEVER_RELEASES, _RELEASES, _RELEASES_IF_SILENT, _RELEASES_IF_CONTROL_SAYS = range(4)
_RELEASE_KIND = bytes(
    _RELEASES if status & 0xF0 == midi.NOTE_OFF
    else _RELEASES_IF_SILENT if status & 0xF0 == midi.NOTE_ON
    else _RELEASES_IF_CONTROL_SAYS if status & 0xF0 == midi.CONTROL_CHANGE
    else _NEVER_RELEASES
    for status in range(0x100))


def _control_releases(data):
    """All Sound Off, All Notes Off, or a sustain/sostenuto pedal lifted."""
    number = data[1]
    return number in (120, 123) or (number in (midi.CC_SUSTAIN, midi.CC_SOSTENUTO)
                                    and data[2] < 64)


class Membership:
    """A member's place in a session: the door's handle for publish and leave."""

    def __init__(self, registry, session, member, member_id, now):
        self.registry = registry
        self.session = session
        self.member = member
        self.id = member_id
        self.joined_at = now
        self.last_seen = now
        self.notes = midi.NoteTracker()
        self.active = True
        self._limit = _RateLimit(registry.limits.events_per_second, now)

    @property
    def name(self):
        return self.member.name

    @property
    def door(self):
        return self.member.door

    def touch(self):
        """Record that the peer is alive (any traffic, a ping, a keep-alive)."""
        self.last_seen = self.registry.clock.seconds()

    def publish(self, events):
        """Send the member's MIDI events to the rest of the session."""
        if not self.active:
            return
        registry = self.registry
        now = registry.clock.seconds()
        self.last_seen = now
        cap = registry.limits.velocity_cap
        limit = self._limit
        tokens = limit.refill(now)
        accepted = []
        changed = False
        for event in events:
            data = event.data
            release = _RELEASE_KIND[data[0]]
            if (release == _NEVER_RELEASES or (release == _RELEASES_IF_SILENT and data[2])
                    or (release == _RELEASES_IF_CONTROL_SAYS and not _control_releases(data))):
                if tokens < 1.0:
                    registry.drops.count(self.door, "rate_limited")
                    changed = True
                    continue
                tokens -= 1.0
            if cap is not None:
                capped = midi.cap_velocity(data, cap)
                if capped is not data:
                    event = midi.MidiEvent(capped, event.time)
                    data = capped
                    changed = True
            if release != _NEVER_RELEASES:
                self.notes.observe(data)
            accepted.append(event)
        limit.tokens = tokens
        if accepted:
            registry.events_published += len(accepted)
            # Unchanged, the door's own list goes on: it may carry its wire encoding.
            self.session.fan_out(self, accepted if changed else events)

    def leave(self, reason="left"):
        """Take the member out of its session; safe to call more than once."""
        if self.active:
            self.registry._remove(self, reason)

    def describe(self):
        info = {"id": self.id, "name": self.name, "door": self.door}
        info.update(self.member.describe())
        return info


@implementer(IMember)
class _MirrorMember:
    """The gateway as the only other member of a mirror session."""

    door = "mirror"

    def __init__(self, session, interval, delay, clock):
        self.name = "mirror"
        self.session = session
        self.interval = interval
        self.delay = delay
        self.clock = clock
        self.pending = collections.defaultdict(set)  # membership -> delayed calls

    def deliver(self, events, source):
        echo = []
        for event in events:
            data = event.data
            kind = data[0] & 0xF0
            if data[0] >= 0xF0 or kind not in (midi.NOTE_ON, midi.NOTE_OFF, midi.POLY_PRESSURE):
                continue
            moved = midi.transpose(data, self.interval)
            if moved is None:
                self.session.registry.drops.count("mirror", "out_of_range")
                continue
            echo.append(midi.MidiEvent(moved, event.time + self.delay))
        if not echo:
            return
        if self.delay <= 0:
            self._echo(source, echo, None)
            return
        calls = self.pending[source]
        call = self.clock.callLater(self.delay, lambda: self._echo(source, echo, call))
        calls.add(call)

    def _echo(self, source, echo, call):
        if call is not None:
            self.pending[source].discard(call)
        if source.active:
            source.member.deliver(echo, self.session.mirror)

    def forget(self, membership):
        for call in self.pending.pop(membership, ()):
            if call.active():
                call.cancel()

    def membership_changed(self, change, member, session):
        pass

    def disconnect(self, reason):
        pass

    def describe(self):
        return {"interval": self.interval, "delay": self.delay}


class Session:
    """A named jam: its members, passphrase and limits."""

    def __init__(self, registry, name, passphrase, max_members, declared,
                 mirror=None, allow_addresses=()):
        self.registry = registry
        self.name = name
        self._passphrase = passphrase
        self.max_members = max_members
        self.declared = declared
        self.members = []
        self.allowed_networks = [ipaddress.ip_network(cidr, strict=False)
                                 for cidr in allow_addresses]
        self.mirror = None
        if mirror is not None:
            echo = _MirrorMember(self, mirror.interval, mirror.delay, registry.clock)
            self.mirror = Membership(registry, self, echo, 0, registry.clock.seconds())

    def accepts(self, credential):
        return credential.matches(self._passphrase)

    def allows_address(self, host):
        """Whether ``host`` is in the session's allow-list (empty list: nobody)."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.allowed_networks)

    def fan_out(self, source, events):
        if self.mirror is not None:
            self.mirror.member.deliver(events, source)
            return
        for membership in self.members:
            if membership is not source:
                membership.member.deliver(events, source)

    def roster(self):
        """Members as JSON-friendly dicts, the mirror first when there is one."""
        everyone = ([self.mirror] if self.mirror else []) + self.members
        return [membership.describe() for membership in everyone]

    def describe(self):
        return {"name": self.name, "declared": self.declared,
                "mirror": self.mirror is not None, "max_members": self.max_members,
                "members": self.roster()}


class Registry:
    """All sessions of the gateway and the rules for joining them."""

    def __init__(self, config, clock, log=None):
        self.limits = config.limits
        self.clock = clock
        self.log = log
        self.drops = DropCounters()
        self.events_published = 0
        self.refusals = collections.Counter()
        self.sessions = {}
        self._ids = itertools.count(1)
        for declared in config.sessions:
            self.sessions[declared.name] = Session(
                self, declared.name, declared.passphrase,
                declared.max_members or self.limits.max_members_per_session,
                declared=True, mirror=declared.mirror,
                allow_addresses=declared.allow_addresses)

    def session(self, name):
        return self.sessions.get(name)

    def join(self, session_name, member, credential):
        """Admit ``member`` to ``session_name``; return its Membership.

        Raises JoinRefused. A session that does not exist is created with the
        joiner's passphrase when the limits allow it.
        """
        session = self.sessions.get(session_name)
        if session is None:
            session = self._create(session_name, credential, member)
        elif not session.accepts(credential):
            self._refuse(JoinRefused.WRONG_PASSPHRASE, member,
                         f"wrong passphrase for session {session_name!r}")
        if len(session.members) >= session.max_members:
            self._refuse(JoinRefused.SESSION_FULL, member,
                         f"session {session_name!r} is full"
                         f" ({session.max_members} members)")
        membership = Membership(self, session, member, next(self._ids), self.clock.seconds())
        session.members.append(membership)
        self._info("{door} member {name!r} joined session {session!r}",
                   door=member.door, name=member.name, session=session.name)
        for other in session.members:
            if other is not membership:
                other.member.membership_changed("join", membership, session)
        return membership

    def _create(self, name, credential, member):
        if not self.limits.allow_session_creation or credential.passphrase is None:
            self._refuse(JoinRefused.UNKNOWN_SESSION, member, f"no session {name!r}")
        if not name or len(name) > 128:
            self._refuse(JoinRefused.UNKNOWN_SESSION, member,
                         "a session name must have 1 to 128 characters")
        if len(credential.passphrase) < self.limits.min_passphrase_length:
            self._refuse(JoinRefused.PASSPHRASE_TOO_SHORT, member,
                         f"a new session needs a passphrase of at least"
                         f" {self.limits.min_passphrase_length} characters")
        if len(self.sessions) >= self.limits.max_sessions:
            self._refuse(JoinRefused.GATEWAY_FULL, member,
                         f"the gateway is full ({self.limits.max_sessions} sessions)")
        session = Session(self, name, credential.passphrase,
                          self.limits.max_members_per_session, declared=False)
        self.sessions[name] = session
        self._info("session {session!r} created by a {door} member", session=name,
                   door=member.door)
        return session

    def _refuse(self, reason, member, message):
        self.refusals[reason] += 1
        self.drops.count(member.door, f"join_{reason}")
        if self.log is not None:
            # The credential is never logged, only the outcome.
            self.log.warn("refused {door} member {name!r}: {message}",
                          door=member.door, name=member.name, message=message)
        raise JoinRefused(reason, message)

    def _remove(self, membership, reason):
        membership.active = False
        session = membership.session
        session.members.remove(membership)
        if session.mirror is not None:
            session.mirror.member.forget(membership)
        releases = membership.notes.release_messages()
        if releases:
            now = self.clock.seconds()
            events = [midi.MidiEvent(data, now) for data in releases]
            for other in session.members:
                other.member.deliver(events, membership)
        self._info("{door} member {name!r} left session {session!r} ({reason};"
                   " {released} notes/pedals released)", door=membership.door,
                   name=membership.name, session=session.name, reason=reason,
                   released=len(releases))
        for other in session.members:
            other.member.membership_changed("leave", membership, session)
        if not session.declared and not session.members:
            del self.sessions[session.name]

    def kick(self, membership, reason):
        """End a member from the gateway's side and tell its door to close it."""
        membership.leave(reason)
        membership.member.disconnect(reason)

    def expire_idle(self):
        """Kick members silent for longer than ``limits.idle_timeout``."""
        deadline = self.clock.seconds() - self.limits.idle_timeout
        stale = [membership for session in self.sessions.values()
                 for membership in session.members if membership.last_seen < deadline]
        for membership in stale:
            self.drops.count(membership.door, "idle_timeout")
            self.kick(membership, "idle")
        return len(stale)

    def close_all(self, reason="shutdown"):
        for session in list(self.sessions.values()):
            for membership in list(session.members):
                self.kick(membership, reason)

    def member_count(self):
        return sum(len(session.members) for session in self.sessions.values())

    def snapshot(self):
        return {"sessions": [session.describe() for session in self.sessions.values()],
                "members": self.member_count(),
                "events_published": self.events_published,
                "refusals": dict(self.refusals),
                "drops": self.drops.as_dict()}

    def _info(self, text, **fields):
        if self.log is not None:
            self.log.info(text, **fields)
