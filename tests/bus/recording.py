"""A session bus that records what a door asks of it and answers when the test says.

:class:`RecordingBus` implements :class:`~gateway.interfaces.ISessionBus` with
no sessions of its own, so that a door's member adapter can be driven through
every value of the contract one at a time:

* ``join(request, member)`` records a :class:`PendingJoin` and returns its
  Deferred unfired; the test fires it later with :meth:`PendingJoin.accept`
  (a :class:`RecordingMembership`) or :meth:`PendingJoin.refuse` (a
  :class:`~gateway.bus.values.JoinRefused`), possibly after the peer went
  away, as a bus on a network would;
* ``check(request)`` records the request and returns what
  :meth:`RecordingBus.answer_checks` set (a Refusal, None, or a function of
  the request);
* ``session_view(name)`` returns the :class:`~gateway.bus.values.SessionView`
  set with :meth:`RecordingBus.set_view`, or None;
* ``refused(request, refusal)`` records the pair in ``refusals``.

The test plays the bus's other half itself: :meth:`RecordingBus.fan_out`
hands one :class:`~gateway.bus.values.Delivery` to several members (so that
they share its memo), :meth:`RecordingBus.announce` a roster notice, and
:meth:`RecordingBus.kick` ends a member the way the bus does (removed first,
then told to disconnect).

Cancelling a join's Deferred is recorded, and does not withdraw the join: a
bus that has already asked a remote store cannot take the request back, so
:meth:`PendingJoin.accept` still creates the membership, which then belongs
to nobody unless the door leaves it.
"""

import itertools

from twisted.internet import defer
from zope.interface import implementer

from gateway.bus import values
from gateway.bus.values import (
    Delivery, JoinRefused, Refusal, RosterEntry, RosterNotice, SessionView, Welcome,
)
from gateway.interfaces import IMembership, ISessionBus


@implementer(IMembership)
class RecordingMembership:
    """A joined member's handle that keeps every call the door makes on it."""

    def __init__(self, bus, entry, welcome, member):
        self.bus = bus
        self.entry = entry
        self.welcome = welcome
        self.member = member
        self.active = True
        self.calls = []            # (method name, arguments) in call order
        self.tempo_answer = None   # what change_tempo returns: a Refusal or None

    # IMembership ------------------------------------------------------

    def publish(self, events, encodings=None):
        self.calls.append(("publish", (tuple(events), encodings)))

    def touch(self):
        self.calls.append(("touch", ()))

    def report_latency(self, latency_ms):
        self.calls.append(("report_latency", (latency_ms,)))

    def change_tempo(self, change):
        self.calls.append(("change_tempo", (change,)))
        return self.tempo_answer

    def leave(self, reason):
        self.calls.append(("leave", (reason,)))
        self.active = False

    # What the test reads ------------------------------------------------

    def _arguments(self, method):
        return [arguments for name, arguments in self.calls if name == method]

    @property
    def published(self):
        """``[(events tuple, encodings), ...]``."""
        return self._arguments("publish")

    @property
    def published_data(self):
        """The MIDI bytes of every published event, in order."""
        return [bytes(event.data) for events, _ in self.published for event in events]

    @property
    def touches(self):
        return len(self._arguments("touch"))

    @property
    def latencies(self):
        return [latency for (latency,) in self._arguments("report_latency")]

    @property
    def tempo_changes(self):
        return [change for (change,) in self._arguments("change_tempo")]

    @property
    def left(self):
        """The reasons of every ``leave`` call."""
        return [reason for (reason,) in self._arguments("leave")]


class PendingJoin:
    """One ``join`` call: its request, member and the Deferred the test fires."""

    def __init__(self, bus, request, member):
        self.bus = bus
        self.request = request
        self.member = member
        self.membership = None
        self.refusal = None
        self.cancelled = False
        self.deferred = defer.Deferred(self._cancel)

    def _cancel(self, deferred):
        # Recorded only: the join is not withdrawn, and Twisted fails the
        # Deferred with CancelledError since this canceller does not fire it.
        self.cancelled = True

    @property
    def answered(self):
        return self.membership is not None or self.refusal is not None

    def accept(self, roster=(), mirror=False, tempo=None):
        """Admit the member: fire the Deferred with a new RecordingMembership.

        ``roster`` lists the other members already there. If the door
        cancelled the Deferred the membership is created all the same (and
        returned) but the door never hears of it.
        """
        assert not self.answered, f"{self!r} was answered already"
        request = self.request
        entry = RosterEntry(next(self.bus._ids), request.name, request.door)
        welcome = Welcome(request.session, entry, tuple(roster) + (entry,), mirror, tempo)
        self.membership = RecordingMembership(self.bus, entry, welcome, self.member)
        self.bus.memberships.append(self.membership)
        if not self.deferred.called:
            self.deferred.callback(self.membership)
        return self.membership

    def refuse(self, reason, message=None):
        """Fail the Deferred with JoinRefused(Refusal(reason, message))."""
        assert not self.answered, f"{self!r} was answered already"
        assert reason in values.REFUSAL_REASONS, reason
        self.refusal = Refusal(reason, message if message is not None else f"refused: {reason}")
        if not self.deferred.called:
            self.deferred.errback(JoinRefused(self.refusal))
        return self.refusal

    def __repr__(self):
        return f"PendingJoin({self.request.name!r} to {self.request.session!r})"


@implementer(ISessionBus)
class RecordingBus:
    """An ISessionBus whose answers the test gives, call by call."""

    def __init__(self):
        self.joins = []            # PendingJoin, in call order
        self.checks = []           # JoinRequest given to check(), in call order
        self.refusals = []         # (JoinRequest, Refusal) a door reported, in call order
        self.view_requests = []    # names given to session_view()
        self.views = {}            # name -> SessionView
        self.memberships = []      # every RecordingMembership accept() made
        self._ids = itertools.count(1)
        self._check_answer = lambda request: None

    # ISessionBus ------------------------------------------------------

    def join(self, request, member):
        pending = PendingJoin(self, request, member)
        self.joins.append(pending)
        return pending.deferred

    def check(self, request):
        self.checks.append(request)
        return self._check_answer(request)

    def session_view(self, name):
        self.view_requests.append(name)
        return self.views.get(name)

    def refused(self, request, refusal):
        self.refusals.append((request, refusal))

    # What the test sets -------------------------------------------------

    def answer_checks(self, answer):
        """From now on ``check`` returns ``answer``: a Refusal, None, or ``answer(request)``."""
        self._check_answer = answer if callable(answer) else (lambda request: answer)

    def set_view(self, name, max_members=8, roster=(), declared=True, mirror=False):
        view = self.views[name] = SessionView(name, declared, mirror, max_members, tuple(roster))
        return view

    def pending(self, name=None):
        """The joins not answered yet (of member ``name`` only, when given)."""
        return [join for join in self.joins
                if not join.answered and (name is None or join.request.name == name)]

    def accept_all(self):
        """Accept every join not answered yet; return their memberships in call order."""
        return [join.accept() for join in self.pending()]

    # The bus's other half, played by the test ------------------------------

    def active(self):
        return [membership for membership in self.memberships if membership.active]

    def fan_out(self, events, source, released=False, encodings=None, to=None, tempo=None):
        """Give one Delivery to the members ``to`` (default: every active membership's)."""
        delivery = Delivery(tuple(events), source, released, encodings, tempo)
        members = to if to is not None else [membership.member for membership in self.active()]
        for member in members:
            member.deliver(delivery)
        return delivery

    def announce(self, change, entry, roster, to=None):
        notice = RosterNotice(change, entry, tuple(roster))
        members = to if to is not None else [membership.member for membership in self.active()]
        for member in members:
            member.roster_changed(notice)
        return notice

    def kick(self, membership, reason):
        """End a member as the bus does: take it out, then tell its door to disconnect it."""
        membership.active = False
        membership.member.disconnect(reason)
