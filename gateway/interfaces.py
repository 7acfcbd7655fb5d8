"""The session bus contract between doors and sessions (README, "Writing a door").

A door turns each remote peer into an :class:`IMember`, asks the
:class:`ISessionBus` to join it to a session with a
:class:`~gateway.bus.values.JoinRequest`, publishes what the peer plays
through the :class:`IMembership` it gets back, and encodes for its own wire
whatever the bus delivers. Only values (:mod:`gateway.bus.values`) cross the
bus; a door never sees another door's member or a session's internals, and
doors never talk to each other.
"""

from zope.interface import Attribute, Interface


class IMember(Interface):
    """The door's side of one remote peer (or the gateway itself) in a session."""

    def deliver(delivery):
        """Send ``delivery.events`` (played by ``delivery.source``) to the peer.

        Must not block: encode (once per fan-out, with ``delivery.memo``) and
        write, or queue within a bound and drop (counting) when the peer
        cannot keep up. It may leave, join or publish re-entrantly; if it
        raises, the bus counts ``deliver_error`` and removes the member.
        """

    def roster_changed(notice):
        """A :class:`~gateway.bus.values.RosterNotice`: someone joined, left or changed."""

    def disconnect(reason):
        """The bus ends this member (kicked, expired, failed, gateway stopping).

        The door tells the peer in its protocol's own way where it can and
        closes the connection. The bus has already removed the member.
        """

    def describe():
        """A JSON-friendly dict of door-specific details for the operator's /status."""


class IMembership(Interface):
    """The bus's handle for one joined member, held by its door."""

    entry = Attribute("The member's RosterEntry as others see it.")
    welcome = Attribute("The Welcome value: session name, own entry, roster, mirror.")
    active = Attribute("False once the member has left.")

    def publish(events, encodings=None):
        """Fan ``events`` (MidiEvents) out to every other member; fire and forget.

        ``encodings`` optionally maps a wire name to these very events
        already encoded for that wire (see Delivery.encodings).
        """

    def touch():
        """The peer is alive (any traffic, a ping, a keep-alive)."""

    def change_tempo(change):
        """Ask for a :class:`~gateway.bus.values.TempoChange` (it carries the session's
        ``tempo.control_passphrase``): the Refusal (no_tempo, wrong_passphrase,
        throttled, bad_tempo), or None once every member has been sent the new tempo."""

    def report_latency(latency_ms):
        """The door measured the peer's latency; everyone gets an 'update' notice."""

    def leave(reason):
        """Take the member out; the others get note-offs for what it left sounding."""


class ISessionBus(Interface):
    """Where sessions live: in this process today, in a shared store later."""

    def join(request, member):
        """A Deferred firing with an IMembership, or failing with JoinRefused."""

    def check(request):
        """The Refusal a join would get now, or None; for protocols that must answer
        at once (AppleMIDI invitations, OSCgroups registration). Failures count
        towards throttling exactly as failed joins do."""

    def refused(request, refusal):
        """Record a refusal the door decided with its protocol's own check (sfront's
        keyed session names and signatures, which stand for a passphrase the bus never
        sees): counted, fed to the throttle and logged exactly like the bus's own."""

    def session_view(name):
        """A SessionView of session ``name`` as this node knows it, or None."""


class IDropSink(Interface):
    """Where everything dropped is counted (by door and reason)."""

    def count(door, reason, amount=1):
        """Count ``amount`` drops."""


class IDoor(Interface):
    """A protocol front door: a Twisted service that admits members."""

    name = Attribute("Short name used in config sections, /status and metrics.")

    def status():
        """A JSON-friendly dict with the door's listeners and counters."""
