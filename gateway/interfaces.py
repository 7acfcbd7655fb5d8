"""Contracts between the session registry and the protocol doors.

A door turns each remote peer into an :class:`IMember`, joins it to a session
through the registry, publishes what the peer plays, and encodes for its own
wire whatever the registry delivers. Doors never talk to each other.
"""

from zope.interface import Attribute, Interface


class IMember(Interface):
    """One remote peer (or the gateway itself) taking part in a session."""

    name = Attribute("Display name chosen by the peer (not unique).")
    door = Attribute("Short name of the door it came through, e.g. 'websocket'.")

    def deliver(events, source):
        """Send MIDI events published by ``source`` (another IMember) to the peer.

        Must not block: encode and write, or queue within a bound and drop
        (counting) when the peer cannot keep up.
        """

    def membership_changed(change, member, session):
        """Someone joined or left ``session``; ``change`` is 'join' or 'leave'."""

    def disconnect(reason):
        """The registry ends this member (kicked, expired, gateway stopping).

        The door tells the peer in its protocol's own way where it can and
        closes the connection. The registry has already removed the member.
        """

    def describe():
        """A JSON-friendly dict of door-specific details for /status (latency…)."""


class IDoor(Interface):
    """A protocol front door: a Twisted service that admits members."""

    name = Attribute("Short name used in config sections, /status and metrics.")

    def status():
        """A JSON-friendly dict with the door's listeners and counters."""
