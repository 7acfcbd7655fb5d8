"""The one vocabulary of actions that every sans-IO core returns.

Every protocol core has the same shape, in the style of h11/wsproto: its
inputs are method calls carrying ``now`` (``receive(data, source, now)``
for a datagram or message, ``timer(now)`` for time passing, and verbs of its
own such as ``invite`` or ``kick``), and every output is a returned list of
actions. A door's adapter is then a loop that carries the actions out
(:func:`dispatcher`): it writes what a core says to :class:`Send`, counts
what it says to :class:`Drop`, and hands peers and their MIDI to the bus.

The actions every door shares live here; one that only a protocol has (an
AppleMIDI invitation that failed, an OSCgroups listing, a relay port to open)
is defined beside its core, in the same style.

No Twisted, no I/O.
"""

import typing


class Send(typing.NamedTuple):
    """Send ``data`` to ``address`` through the socket ``via`` names (None: the core's one)."""

    data: bytes
    address: tuple
    via: typing.Any = None


class Drop(typing.NamedTuple):
    """Input from ``source`` was dropped for ``reason`` (the counter's name)."""

    reason: str
    source: typing.Any
    detail: typing.Optional[str] = None
    count: int = 1


class PeerJoined(typing.NamedTuple):
    """``peer`` is connected: MIDI from and to it now flows."""

    peer: typing.Any


class PeerLeft(typing.NamedTuple):
    """``peer`` is gone, for ``reason`` ('bye', 'timeout', 'kicked', 'closed', ...)."""

    peer: typing.Any
    reason: str


class PeerAlive(typing.NamedTuple):
    """``peer`` showed it is alive (a keep-alive, a ping, a sync)."""

    peer: typing.Any


class PeerMidi(typing.NamedTuple):
    """``peer`` played ``messages`` (complete MIDI messages as bytes)."""

    peer: typing.Any
    messages: list


class Feedback(typing.NamedTuple):
    """``peer`` reports having received our packets up to ``sequence`` (RTP-MIDI journal)."""

    peer: typing.Any
    sequence: int


class ClockSynced(typing.NamedTuple):
    """A clock sync with ``peer`` finished: round trip and clock offset, in seconds."""

    peer: typing.Any
    rtt: float
    offset: float


class RoundTrip(typing.NamedTuple):
    """A round trip to ``peer`` that the protocol's own reports gave (RTCP), in seconds."""

    peer: typing.Any
    rtt: float


def dispatcher(handlers):
    """A function that carries out a list of actions: ``handlers`` maps each type to a callable.

    An action of a type with no handler is a bug in the door and raises KeyError.
    """
    def carry_out(actions):
        for action in actions:
            handlers[type(action)](action)
    return carry_out
