"""The in-process session bus: sessions, members, all-to-all fan-out, limits, expiry.

Implements :class:`~gateway.interfaces.ISessionBus` for one process. Doors
join peers with :meth:`LocalBus.join` (a Deferred of a :class:`Membership`);
``membership.publish(events)`` fans the events out to every other member of
the session (never back to the sender) and ``membership.leave(reason)``
takes the member out, sending everyone else the note-offs and pedal releases
for whatever it left sounding.

A fan-out no member can break: it walks a snapshot of the session's members
(a tuple replaced, never changed, on join and leave), skips members that left
during it, and contains each member's ``deliver``: one that raises is counted
(``deliver_error``), removed with the usual release of its notes, and told
to disconnect, while the publisher and every other member carry on. What a
member publishes from inside ``deliver`` is fanned out after the current
fan-out, not inside it.

A session declared with ``mirror`` has, as its only other member, the
gateway itself: whatever a player plays comes back to that player transposed
(sfront's mirror session), so a newcomer can test any door alone.

No reactor: the clock is any object with ``seconds()`` and ``callLater()``
(a reactor, or ``task.Clock`` in tests); Deferreds are only the contract's
shape for a bus that may wait on a network.
"""

import collections
import ipaddress
import itertools

from twisted.internet import defer
from zope.interface import implementer

from gateway import log as gatewaylog
from gateway import midi
from gateway.addresses import peer_address
from gateway.bus import values
from gateway.bus.tempo import SessionTempo
from gateway.bus.throttle import JoinThrottle
from gateway.bus.values import Delivery, JoinRefused, Refusal, RosterEntry, RosterNotice
from gateway.interfaces import IDropSink, IMember, IMembership, ISessionBus

MIRROR_MEMBER_ID = 0
# Refusals that a guesser can learn from; they feed the join throttle.
_GUESSES = frozenset((values.WRONG_PASSPHRASE, values.UNKNOWN_SESSION))


@implementer(IDropSink)
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


def _peer(source):
    """The peer's address as one string whatever socket it came through, or None.

    A dual-stack ("::") socket shows IPv4 peers as mapped IPv6 addresses
    (::ffff:203.0.113.5): unmapped, the throttle, allow-lists and the log see
    one peer, and fail2ban bans the address its firewall sees.
    """
    address = peer_address(source)
    return source if address is None else str(address)


def _proves_passphrase(credential):
    """Whether a match of ``credential`` shows the joiner knows the passphrase."""
    return credential.passphrase is not None or getattr(credential, "proves_passphrase", False)


def _control_releases(data):
    """All Sound Off, All Notes Off, or a sustain/sostenuto pedal lifted."""
    number = data[1]
    return number in (120, 123) or (number in (midi.CC_SUSTAIN, midi.CC_SOSTENUTO)
                                    and data[2] < 64)


@implementer(IMembership)
class Membership:
    """A member's place in a session: the door's handle for publish and leave."""

    def __init__(self, bus, session, member, entry, now):
        self.bus = bus
        self.session = session
        self.member = member
        self.entry = entry
        self.joined_at = now
        self.last_seen = now
        self.notes = midi.NoteTracker()
        self.active = True
        self.welcome = None
        self._limit = _RateLimit(bus.limits.events_per_second, now)

    @property
    def id(self):
        return self.entry.member_id

    @property
    def name(self):
        return self.entry.name

    @property
    def door(self):
        return self.entry.door

    def touch(self):
        """Record that the peer is alive (any traffic, a ping, a keep-alive)."""
        self.last_seen = self.bus.clock.seconds()

    def publish(self, events, encodings=None):
        """Send the member's MIDI events to the rest of the session."""
        if not self.active:
            return
        bus = self.bus
        now = bus.clock.seconds()
        self.last_seen = now
        cap = bus.limits.velocity_cap
        limit = self._limit
        tokens = limit.refill(now)
        accepted = []
        changed = False
        rate_limited = 0
        tempo = self.session.tempo
        if tempo is not None:
            events, clocks = tempo.filter_players(events)
            if clocks:
                changed = True      # the publisher's encoding still holds them
                bus.events_dropped(self, "clock_from_player", clocks,
                                   "the session's tempo is the gateway's clock")
        for event in events:
            data = event.data
            release = _RELEASE_KIND[data[0]]
            if (release == _NEVER_RELEASES or (release == _RELEASES_IF_SILENT and data[2])
                    or (release == _RELEASES_IF_CONTROL_SAYS and not _control_releases(data))):
                if tokens < 1.0:
                    rate_limited += 1
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
        if rate_limited:
            changed = True
            bus.events_dropped(self, "rate_limited", rate_limited,
                               f"limits.events_per_second is {bus.limits.events_per_second}")
        if accepted:
            bus.events_published += len(accepted)
            # What the publisher encoded stays true only of the events as they came.
            bus.dispatch(self.session, self, Delivery(tuple(accepted), self.entry, False,
                                                      None if changed else encodings))

    def change_tempo(self, change):
        """Ask for a TempoChange; the Refusal, or None once it is done."""
        if not self.active:
            return Refusal(values.NO_TEMPO, "not in a session")
        if self.session.tempo is None:
            return Refusal(values.NO_TEMPO, f"session {self.session.name!r} has no tempo")
        return self.session.tempo.change(self, change)

    def report_latency(self, latency_ms):
        if self.active and latency_ms != self.entry.latency_ms:
            self.entry = self.entry._replace(latency_ms=latency_ms)
            self.session.announce(values.UPDATED, self, include_self=True)

    def leave(self, reason="left"):
        """Take the member out of its session; safe to call more than once."""
        if self.active:
            self.bus._remove(self, reason)

    def describe(self):
        info = self.entry.as_dict()
        info.update(self.member.describe())
        return info


@implementer(IMember)
class _MirrorMember:
    """The gateway as the only other member of a mirror session."""

    def __init__(self, session, interval, delay, clock):
        self.session = session
        self.interval = interval
        self.delay = delay
        self.clock = clock
        self.pending = collections.defaultdict(set)  # member id -> delayed calls

    def deliver(self, delivery):
        echo = []
        for event in delivery.events:
            data = event.data
            kind = data[0] & 0xF0
            if data[0] >= 0xF0 or kind not in (midi.NOTE_ON, midi.NOTE_OFF, midi.POLY_PRESSURE):
                continue
            moved = midi.transpose(data, self.interval)
            if moved is None:
                self.session.bus.drops.count("mirror", "out_of_range")
                continue
            echo.append(midi.MidiEvent(moved, event.time + self.delay))
        if not echo:
            return
        player = delivery.source.member_id
        if self.delay <= 0:
            self._echo(player, echo, None)
            return
        calls = self.pending[player]
        call = self.clock.callLater(self.delay, lambda: self._echo(player, echo, call))
        calls.add(call)

    def _echo(self, player, echo, call):
        if call is not None:
            self.pending[player].discard(call)
        membership = self.session.member_by_id(player)
        if membership is not None:
            self.session.deliver_to(membership, Delivery(tuple(echo), self.session.mirror.entry))

    def forget(self, member_id):
        for call in self.pending.pop(member_id, ()):
            if call.active():
                call.cancel()

    def roster_changed(self, notice):
        pass

    def disconnect(self, reason):
        pass

    def describe(self):
        return {"interval": self.interval, "delay": self.delay}


class Session:
    """A named jam: its members, passphrase and limits (internal to the bus)."""

    def __init__(self, bus, name, passphrase, max_members, declared,
                 mirror=None, allow_addresses=()):
        self.bus = bus
        self.name = name
        self._passphrase = passphrase
        self.max_members = max_members
        self.declared = declared
        self.members = ()        # replaced, never changed: a fan-out walks a snapshot
        self.allowed_networks = [ipaddress.ip_network(cidr, strict=False)
                                 for cidr in allow_addresses]
        self.mirror = None
        self.tempo = None           # a SessionTempo when the session is declared with one
        if mirror is not None:
            echo = _MirrorMember(self, mirror.interval, mirror.delay, bus.clock)
            self.mirror = Membership(bus, self, echo,
                                     RosterEntry(MIRROR_MEMBER_ID, "mirror", "mirror"),
                                     bus.clock.seconds())

    def accepts(self, credential):
        return credential.matches(self._passphrase)

    def allows_address(self, host):
        """Whether ``host`` (unmapped, see :func:`_peer`) is in the session's allow-list
        (empty list: nobody)."""
        try:
            address = ipaddress.ip_address(host)
        except (TypeError, ValueError):
            return False
        return any(address in network for network in self.allowed_networks)

    def member_by_id(self, member_id):
        for membership in self.members:
            if membership.entry.member_id == member_id:
                return membership
        return None

    def fan_out(self, source, delivery):
        if self.mirror is not None and not delivery.released:
            self.deliver_to(self.mirror, delivery)
            return
        for membership in self.members:
            if membership is not source and membership.active:
                self.deliver_to(membership, delivery)

    def deliver_to(self, membership, delivery):
        try:
            membership.member.deliver(delivery)
        except Exception:
            self.bus._deliver_failed(membership)

    def announce(self, change, subject, include_self=False):
        notice = RosterNotice(change, subject.entry, self.roster())
        for membership in self.members:
            if membership.active and (include_self or membership is not subject):
                try:
                    membership.member.roster_changed(notice)
                except Exception:
                    self.bus._deliver_failed(membership)

    def roster(self):
        """The roster as values, the mirror first when there is one."""
        entries = tuple(membership.entry for membership in self.members)
        return (self.mirror.entry,) + entries if self.mirror is not None else entries

    def view(self):
        return values.SessionView(self.name, self.declared, self.mirror is not None,
                                  self.max_members, self.roster(), self.tempo_state())

    def tempo_state(self):
        return None if self.tempo is None else self.tempo.state()

    def describe(self):
        everyone = ((self.mirror,) if self.mirror else ()) + self.members
        return {"name": self.name, "declared": self.declared,
                "mirror": self.mirror is not None, "max_members": self.max_members,
                "tempo": None if self.tempo is None else self.tempo.describe(),
                "members": [membership.describe() for membership in everyone]}


@implementer(ISessionBus)
class LocalBus:
    """All sessions of this gateway process and the rules for joining them.

    ``drops`` is the injected :class:`~gateway.interfaces.IDropSink`.
    """

    def __init__(self, config, clock, drops, log=None):
        self.limits = config.limits
        self.clock = clock
        # What a session's beat clock keeps its grid on (gateway.bus.tempo): the
        # gateway sets time.monotonic; tests keep the task.Clock's time.
        self.monotonic = clock.seconds
        self.log = log
        self.drops = drops
        self.events_published = 0
        self.refusals = collections.Counter()
        self.sessions = {}
        self.throttle = JoinThrottle(self.limits.join_failures_before_throttle,
                                     self.limits.join_throttle_seconds,
                                     self.limits.join_throttle_max_seconds)
        self._warnings = gatewaylog.DropLog(log, config.logging.drop_log_interval, clock) \
            if log is not None else None
        self._ids = itertools.count(MIRROR_MEMBER_ID + 1)
        self._pending = collections.deque()
        self._dispatching = False
        for declared in config.sessions:
            self.sessions[declared.name] = Session(
                self, declared.name, declared.passphrase,
                declared.max_members or self.limits.max_members_per_session,
                declared=True, mirror=declared.mirror,
                allow_addresses=declared.allow_addresses)
            if declared.tempo is not None:
                self.sessions[declared.name].tempo = SessionTempo(self.sessions[declared.name],
                                                                  declared.tempo)

    # ISessionBus ---------------------------------------------------------

    def session_view(self, name):
        session = self.sessions.get(name)
        return None if session is None else session.view()

    def check(self, request):
        """What a door must answer before it admits: name, throttle, session,
        passphrase, allow-list.

        A full session is not a refusal here: the door asks :meth:`session_view`.
        """
        refusal = self._name_refusal(request) or self._credential_refusal(request)
        if refusal is not None:
            self.refused(request, refusal)
        return refusal

    def join(self, request, member):
        refusal = self._name_refusal(request) or self._credential_refusal(request)
        if refusal is None:
            session = self.sessions.get(request.session)
            if session is not None and len(session.members) >= session.max_members:
                refusal = Refusal(values.SESSION_FULL, f"session {request.session!r} is full"
                                                       f" ({session.max_members} members)")
            elif session is not None:
                refusal = self._name_taken_refusal(request, session)
        if refusal is not None:
            self.refused(request, refusal)
            return defer.fail(JoinRefused(refusal))
        return defer.succeed(self._admit(request, member))

    # ---------------------------------------------------------------------

    @staticmethod
    def _name_refusal(request):
        """Whether the joiner's name breaks the name rule (:func:`values.name_problem`).

        Looked at before the credential: a refused name says nothing about the
        passphrase, and is no guess for the throttle.
        """
        problem = values.name_problem(request.name)
        return None if problem is None else Refusal(values.BAD_NAME, problem)

    @staticmethod
    def _name_taken_refusal(request, session):
        """Whether a member of ``session`` (its mirror included) already has the
        joiner's name, as :func:`values.name_key` compares names.

        The second half of the name check, looked at only after the
        credential: who is in a session is for those who may join it.
        """
        wanted = values.name_key(request.name)
        if any(values.name_key(entry.name) == wanted for entry in session.roster()):
            return Refusal(values.NAME_TAKEN,
                           f"the name {request.name!r} is already taken in session"
                           f" {session.name!r}")
        return None

    def _credential_refusal(self, request):
        """Why ``request``'s credential is refused now, or None.

        A throttled source is refused before its credential is even looked at.
        """
        now = self.clock.seconds()
        source = _peer(request.source)
        key = (source, request.session)
        if source is not None:
            wait = self.throttle.blocked_for(key, now)
            if wait > 0:
                return Refusal(values.THROTTLED,
                               f"too many failed joins; try again in {wait:.0f} s")
        session = self.sessions.get(request.session)
        credential = request.credential
        if session is None:
            refusal = self._creation_refusal(request)
        elif not session.declared and not _proves_passphrase(credential):
            # An allow-list or a door's own check proves nothing about a session
            # someone created with a passphrase: as if it did not exist.
            refusal = Refusal(values.UNKNOWN_SESSION, f"no session {request.session!r}")
        elif not session.accepts(credential):
            refusal = Refusal(values.WRONG_PASSPHRASE,
                              f"wrong passphrase for session {request.session!r}")
        elif (type(credential) is values.AllowedAddress
              and not session.allows_address(source)):
            refusal = Refusal(values.ADDRESS_NOT_ALLOWED,
                              f"{source} is not in the allow_addresses of session"
                              f" {session.name!r}")
        else:
            refusal = None
        if refusal is None and source is not None:
            self.throttle.succeeded(key)
        return refusal

    def _creation_refusal(self, request):
        name, passphrase = request.session, request.credential.passphrase
        if not self.limits.allow_session_creation or passphrase is None:
            return Refusal(values.UNKNOWN_SESSION, f"no session {name!r}")
        if not name or len(name) > 128:
            return Refusal(values.UNKNOWN_SESSION, "a session name must have 1 to 128 characters")
        if len(passphrase) < self.limits.min_passphrase_length:
            return Refusal(values.PASSPHRASE_TOO_SHORT,
                           f"a new session needs a passphrase of at least"
                           f" {self.limits.min_passphrase_length} characters")
        if len(self.sessions) >= self.limits.max_sessions:
            return Refusal(values.GATEWAY_FULL,
                           f"the gateway is full ({self.limits.max_sessions} sessions)")
        return None

    def refused(self, request, refusal):
        """Count a refusal, feed the throttle with guesses, and log both.

        Every door's refusals come here (the bus's own, and those a door
        decided itself, see ISessionBus.refused), so the lines fail2ban reads
        (deploy/fail2ban/filter.d/netgateway.conf) have one format: the
        peer's address first, then what only the gateway chose, then the
        peer's own text quoted (repr) so that it can forge neither a line nor
        an address. Never the credential.
        """
        self.refusals[refusal.reason] += 1
        self.drops.count(request.door, f"join_{refusal.reason}")
        now = self.clock.seconds()
        source = _peer(request.source)
        backoff = 0.0
        if source is not None and refusal.reason in _GUESSES:
            backoff = self.throttle.failed((source, request.session), now)
        if self._warnings is None:
            return
        source = source or "-"
        # Keyed by peer and reason, not session: a peer that varies the session
        # name it guesses still gets one line per interval.
        self._warnings.dropped(
            (source, "refused", refusal.reason), now,
            "netgateway: refused join from {source} door={door} session={session!r}"
            " reason={reason} name={name!r}",
            source=source, door=request.door, session=request.session,
            reason=refusal.reason, name=request.name)
        if backoff:
            self._warnings.dropped(
                (source, "throttled"), now,
                "netgateway: throttled join from {source} door={door} session={session!r}"
                " for {backoff:g}s",
                source=source, door=request.door, session=request.session, backoff=backoff)

    def _admit(self, request, member):
        session = self.sessions.get(request.session)
        if session is None:
            session = Session(self, request.session, request.credential.passphrase,
                              self.limits.max_members_per_session, declared=False)
            self.sessions[session.name] = session
            self._info("session {session!r} created by a {door} member",
                       session=session.name, door=request.door)
        now = self.clock.seconds()
        membership = Membership(self, session, member,
                                RosterEntry(next(self._ids), request.name, request.door), now)
        session.members += (membership,)
        if session.tempo is not None:
            session.tempo.member_joined(membership)
        membership.welcome = values.Welcome(session.name, membership.entry, session.roster(),
                                            session.mirror is not None, session.tempo_state())
        self._info("{door} member {name!r} joined session {session!r}",
                   door=request.door, name=request.name, session=session.name)
        session.announce(values.JOINED, membership)
        return membership

    def _remove(self, membership, reason):
        membership.active = False
        session = membership.session
        session.members = tuple(other for other in session.members if other is not membership)
        if session.tempo is not None:
            session.tempo.member_left(membership)
        if session.mirror is not None:
            session.mirror.member.forget(membership.id)
        releases = membership.notes.release_messages()
        if releases:
            now = self.clock.seconds()
            self.dispatch(session, membership,
                          Delivery(tuple(midi.MidiEvent(data, now) for data in releases),
                                   membership.entry, released=True))
        self._info("{door} member {name!r} left session {session!r} ({reason};"
                   " {released} notes/pedals released)", door=membership.door,
                   name=membership.name, session=session.name, reason=reason,
                   released=len(releases))
        session.announce(values.LEFT, membership)
        if not session.declared and not session.members and \
                self.sessions.get(session.name) is session:
            del self.sessions[session.name]

    def dispatch(self, session, source, delivery):
        """Fan ``delivery`` out now, or after the fan-out in progress when one is.

        A member that publishes from inside ``deliver`` (an echo, a bridge)
        thus never nests fan-outs: the stack stays flat and every member
        hears the events in the order they were published.
        """
        pending = self._pending
        pending.append((session, source, delivery))
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while pending:
                session, source, delivery = pending.popleft()
                session.fan_out(source, delivery)
        finally:
            self._dispatching = False

    def events_dropped(self, membership, reason, count, why):
        """Count events of ``membership`` the bus dropped; log it at most once per
        member and reason per ``logging.drop_log_interval``."""
        self.drops.count(membership.door, reason, count)
        if self._warnings is not None:
            self._warnings.dropped(
                (membership.id, reason), self.clock.seconds(),
                "netgateway: dropped {count} events from {door} member {name!r} in session"
                " {session!r}: {reason} ({why})", count=count, door=membership.door,
                name=membership.name, session=membership.session.name, reason=reason, why=why)

    def _deliver_failed(self, membership):
        """A member's own code raised: count it, take it out, tell its door to close it."""
        self.drops.count(membership.door, "deliver_error")
        if self.log is not None:
            self.log.failure("{door} member {name!r} failed to take a delivery; removed",
                             door=membership.door, name=membership.name)
        if membership.active and membership is not membership.session.mirror:
            self._remove(membership, "deliver error")
            try:
                membership.member.disconnect("error")
            except Exception:
                if self.log is not None:
                    self.log.failure("{door} member {name!r} failed to disconnect",
                                     door=membership.door, name=membership.name)

    def kick(self, membership, reason):
        """End a member from the gateway's side and tell its door to close it."""
        membership.leave(reason)
        membership.member.disconnect(reason)

    def expire_idle(self):
        """Kick members silent for longer than ``limits.idle_timeout``."""
        deadline = self.clock.seconds() - self.limits.idle_timeout
        stale = [membership for session in list(self.sessions.values())
                 for membership in session.members if membership.last_seen < deadline]
        for membership in stale:
            if membership.active:
                self.drops.count(membership.door, "idle_timeout")
                self.kick(membership, "idle")
        return len(stale)

    def close_all(self, reason="shutdown"):
        for session in list(self.sessions.values()):
            for membership in session.members:
                if membership.active:
                    self.kick(membership, reason)

    def member_count(self):
        return sum(len(session.members) for session in self.sessions.values())

    def members_by_door(self):
        counts = collections.Counter(membership.door for session in self.sessions.values()
                                     for membership in session.members)
        return dict(counts)

    def snapshot(self):
        """The operator's view for /status (door details included)."""
        return {"sessions": [session.describe() for session in self.sessions.values()],
                "members": self.member_count(),
                "events_published": self.events_published,
                "refusals": dict(self.refusals),
                "throttled_sources": len(self.throttle),
                "drops": self.drops.as_dict()}

    def _info(self, text, **fields):
        if self.log is not None:
            self.log.info(text, **fields)
