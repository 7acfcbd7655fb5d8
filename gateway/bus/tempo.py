"""A session's tempo: the gateway as the session's MIDI beat clock (thin scheduler).

:class:`SessionTempo` is the gateway as a member of a session declared with a
``tempo``, like the mirror (:class:`~gateway.bus.local._MirrorMember`) but
speaking first: it sleeps until the clock core (:class:`gateway.beatclock.BeatClock`)
says a clock is due, wakes, and hands every member what is due. The core
keeps the grid, so how late the reactor wakes never adds up.

Two clocks: the grid runs on ``bus.monotonic`` (``time.monotonic`` in the
gateway, which nothing steps), while the times members see (event times, a
tempo's ``beat_time``) are on the bus clock (``bus.clock.seconds()``, the time
base of every event and of the WebSocket door's ``server_time``). The
difference of the two is kept, not read anew for every clock: NTP slews both
alike, so it changes only when the wall clock is stepped, and two reads that
a busy machine pulls apart would move a clock off the grid members see.

The clock runs only while the session has members: nobody hears it
otherwise. The first member starts the song when the tempo is running
(Start, then clock 0); a member joining a running song is relocated (Song
Position Pointer and Continue, just before the next sixteenth's clock) so
that a follower that missed Start comes in on the right beat.

It delivers to the members of this node itself rather than through the
bus's fan-out: the clock is not a player, it is never echoed by a mirror, and
in a bus of several nodes each node clocks its own members.

Who may change it: a member that shows the session's ``tempo.control_passphrase``
(a second secret; the session passphrase lets one play, not conduct). Wrong
ones count towards the bus's join throttle for that source and session, so
the control passphrase cannot be guessed faster than a session passphrase.

Players' own beat clock (F8, FA, FB, FC, F2) in a session with a tempo is
dropped and counted (``clock_from_player``): two masters would make every
follower jump between them.
"""

import hmac

from gateway import beatclock
from gateway.bus import values
from gateway.bus.values import Delivery, Refusal, RosterEntry, TempoState
from gateway.midi import MidiEvent

CLOCK_MEMBER_ID = -1
CLOCK_ENTRY = RosterEntry(CLOCK_MEMBER_ID, "clock", "clock")


class SessionTempo:
    """The beat clock of one session, its schedule and the right to change it."""

    def __init__(self, session, config):
        self.session = session
        self.bus = session.bus
        self.config = config
        self.core = beatclock.BeatClock(config.bpm, config.beats_per_bar)
        self.wants_running = config.running
        self.clocks_sent = 0
        self.changed_by = None
        self._call = None
        self._wall_offset = None    # bus clock minus monotonic clock (see _offset)
        self._owed = []             # a Start not yet delivered (see member_joined)
        self._joiners = []          # members to relocate at the next sixteenth

    # What members see --------------------------------------------------------

    def state(self):
        beat, due = self.core.next_beat()
        # An empty session's clock sleeps: it says whether the song plays once one joins.
        running = self.core.running if self.session.members else self.wants_running
        return TempoState(self.core.bpm, running, self.core.beats_per_bar, beat,
                          None if due is None else self._server_time(due), self.changed_by)

    def describe(self):
        info = self.state().as_dict()
        info.update(position=self.core.position, clocks_sent=self.clocks_sent,
                    relocations=self.core.relocations, clocks_skipped=self.core.clocks_skipped,
                    controllable=self.config.control_passphrase is not None)
        return info

    # Membership --------------------------------------------------------------

    def member_joined(self, membership):
        """Start the song for the first member; bring a later one in on the beat."""
        now = self._now()
        if len(self.session.members) == 1:
            if self.wants_running:
                # Started now (its welcome says so), heard on the next turn: the
                # door has not taken the membership yet.
                self._owed = self.core.start(now)
                self._cancel()
                self._call = self.bus.clock.callLater(0, self._wake)
        elif self.core.running:
            self._joiners.append(membership)

    def member_left(self, membership):
        if membership in self._joiners:
            self._joiners.remove(membership)
        if not self.session.members:
            # Nobody hears it: sleep; the next first member starts the song anew.
            self.core.stop(self._now())
            self._owed = []
            self._joiners = []
            self._cancel()

    def filter_players(self, events):
        """A player's events without beat clock, and how many that took out."""
        kept = [event for event in events if event.data[0] not in beatclock.BEAT_CLOCK_STATUSES]
        return kept, len(events) - len(kept)

    # The right to change it --------------------------------------------------

    def change(self, membership, change):
        """Apply ``change`` (a TempoChange) from ``membership``; the Refusal, or None."""
        bus = self.bus
        now = bus.clock.seconds()
        key = ("tempo", change.source, self.session.name)
        wait = bus.throttle.blocked_for(key, now)
        if wait > 0:
            return Refusal(values.THROTTLED,
                           f"too many wrong control passphrases; try again in {wait:.0f} s")
        secret = self.config.control_passphrase
        if secret is None:
            return Refusal(values.WRONG_PASSPHRASE,
                           f"nobody may change the tempo of session {self.session.name!r}")
        if not hmac.compare_digest(str(change.control_passphrase).encode("utf-8"),
                                   secret.encode("utf-8")):
            bus.throttle.failed(key, now)
            bus.drops.count(membership.door, "tempo_wrong_passphrase")
            return Refusal(values.WRONG_PASSPHRASE, "wrong control passphrase")
        bus.throttle.succeeded(key)
        problem = self._problem(change)
        if problem is not None:
            return Refusal(values.BAD_TEMPO, problem)
        mono = self._now()
        messages, self._owed = self._owed, []
        if change.bpm is not None:
            messages += self.core.set_bpm(change.bpm, mono)
        if change.transport == values.STOP:
            self.wants_running = False
            messages += self.core.stop(mono)
        if change.position is not None:
            located = self.core.locate(change.position, mono)
            if change.transport != values.CONTINUE:
                messages += located     # Continue says the position itself
        if change.transport == values.START:
            self.wants_running = True
            messages += self.core.start(mono) + self.core.advance(mono)
        elif change.transport == values.CONTINUE:
            self.wants_running = True
            messages += self.core.resume(mono) + self.core.advance(mono)
        self.changed_by = membership.entry
        if bus.log is not None:
            bus.log.info("tempo of session {session!r}: {bpm:g} bpm, {run} (by {door} member"
                         " {name!r})", session=self.session.name, bpm=self.core.bpm,
                         run="running" if self.core.running else "stopped",
                         door=membership.door, name=membership.name)
        self._send(messages, tempo=True)
        self._schedule()
        return None

    def _problem(self, change):
        """Why ``change`` cannot be done (checked whole, before any of it is), or None."""
        if change.transport not in (None, *values.TRANSPORTS):
            return f"transport must be one of {', '.join(values.TRANSPORTS)}"
        if change.bpm is not None:
            try:
                beatclock.check_bpm(change.bpm)
            except ValueError as error:
                return str(error)
        position = change.position
        if position is not None:
            if type(position) is not int or not 0 <= position < beatclock.SONG_POSITION_MODULUS:
                return (f"position must be a whole number of sixteenths from 0 to"
                        f" {beatclock.SONG_POSITION_MODULUS - 1}")
            if change.transport == values.START:
                return "start plays from the beginning; give a position with continue"
            if self.core.running and change.transport != values.STOP:
                return "the song position can move only while stopped (or with stop)"
        return None

    # The schedule ------------------------------------------------------------

    def _now(self):
        return self.bus.monotonic()

    def _server_time(self, monotonic_time):
        return monotonic_time + self._offset()

    def _offset(self):
        """The bus clock minus the monotonic clock, changed only when the wall clock steps.

        Each sample reads the bus clock on both sides of the monotonic one; the
        tightest of a few is trusted, and moves the kept offset only by more than
        a reactor's jitter.
        """
        wall, monotonic = self.bus.clock.seconds, self.bus.monotonic
        gap, sample = min((after - before, (before + after) / 2 - middle)
                          for before, middle, after in
                          ((wall(), monotonic(), wall()) for _ in range(3)))
        kept = self._wall_offset
        if kept is None or (gap < _STEP and abs(sample - kept) > _STEP):
            self._wall_offset = kept = sample
        return kept

    def _schedule(self):
        self._cancel()
        due = self.core.next_due()
        if due is None or not self.session.members:
            return
        self._call = self.bus.clock.callLater(max(0.0, due - self._now()), self._wake)

    def _cancel(self):
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _wake(self):
        self._call = None
        owed, self._owed = self._owed, []
        self._send(owed + self.core.advance(self._now()), tempo=bool(owed))
        self._schedule()

    def _send(self, messages, tempo=False):
        """Deliver ``messages`` (core times) to every member; ``tempo``: say the new state."""
        if not messages and not tempo:
            return
        offset = self._offset()
        events = tuple(MidiEvent(data, due + offset) for due, data in messages)
        self.clocks_sent += sum(1 for event in events if event.data == _CLOCK)
        state = self.state() if tempo else None
        if any(event.data in _RESTARTS for event in events):
            self._joiners = []      # Start or Continue reaches them with everyone else
        joiners = self._relocations(events, state) if self._joiners else {}
        delivery = Delivery(events, CLOCK_ENTRY, tempo=state)
        session = self.session
        for membership in session.members:
            if membership.active:
                session.deliver_to(membership, joiners.get(membership, delivery))

    def _relocations(self, events, state):
        """Deliveries for members waiting to be relocated, if ``events`` reach a sixteenth.

        A follower that joined a running song never saw Start; it is told the
        position and Continue right before the clock of the next sixteenth, so
        that clock is the first it counts.
        """
        position = self.core.position - sum(1 for event in events if event.data == _CLOCK)
        for index, event in enumerate(events):
            if event.data != _CLOCK:
                continue
            if position % beatclock.CLOCKS_PER_SIXTEENTH == 0:
                sixteenth = position // beatclock.CLOCKS_PER_SIXTEENTH
                relocate = (MidiEvent(beatclock.song_position_pointer(sixteenth), event.time),
                            MidiEvent(_CONTINUE, event.time))
                own = Delivery(events[:index] + relocate + events[index:], CLOCK_ENTRY,
                               tempo=state)
                joiners, self._joiners = self._joiners, []
                return {membership: own for membership in joiners}
            position += 1
        return {}


# How far the wall clock must move against the monotonic one to count as stepped.
_STEP = 0.0005
_CLOCK = bytes((beatclock.TIMING_CLOCK,))
_CONTINUE = bytes((beatclock.CONTINUE,))
_RESTARTS = frozenset((bytes((beatclock.START,)), _CONTINUE))
