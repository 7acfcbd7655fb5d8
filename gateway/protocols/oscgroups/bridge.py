"""The gateway's OSCgroups bridge as a sans-IO core: OSCgroups peers <-> session MIDI.

The bridge is an ordinary OSCgroups user (shared/protocols/oscgroups.md §4,
§5.3–§5.5) in every bridged group at once: a :class:`.client.GroupClient`
registers it, learns the peers from user_info, punches holes and keeps
pinging them, exactly as for OscGroupClient. What a C++ client would hand to
its local application comes here instead, and :class:`.mapping.OscMidiMapping`
turns it into MIDI; MIDI for a peer goes back as OSC on the path the client
core chose for that peer (private, public, ping endpoint or relay).

A peer belongs to the gateway while the server lists it in a bridged group:
the core reports :class:`PeerListed` after every server reply and
PeerLeft once the server has stopped listing it for
:data:`FORGET_UNLISTED_AFTER` seconds (two missed alive replies), so a peer
the server purged leaves its sessions within seconds of the purge.

Feed :meth:`Bridge.timer` every :data:`.client.TICK_INTERVAL` seconds and
:meth:`Bridge.receive` every datagram the bridge socket receives; act on the
returned actions (:mod:`gateway.actions`: Send, PeerLeft, PeerAlive,
PeerMidi, Drop; and this core's own :class:`PeerListed`). A peer is named
by its OSCgroups user name. No I/O, no Twisted.
"""

import collections
from typing import NamedTuple

from gateway.actions import Drop, PeerAlive, PeerLeft, PeerMidi, Send

from . import client, wire

FORGET_UNLISTED_AFTER = 2 * client.ALIVE_INTERVAL + 1
# The C++ client dies on datagrams above 4098 bytes (§6.6, §7.3); the
# server's own bound leaves a margin.
MAX_PEER_DATAGRAM = wire.MAX_SERVER_DATAGRAM
_BUNDLE_OVERHEAD = 20         # bundle header + one element size prefix
_PING_MARKER = wire.PING.encode("ascii")


class PeerListed(NamedTuple):
    """The server lists peer ``name`` in these bridged ``groups`` (sent every reply)."""

    name: str
    groups: frozenset


class Bridge:
    """One OSCgroups user in several groups, speaking MIDI to the gateway."""

    def __init__(self, user_name, user_password_md5, groups, server, private_endpoint,
                 mapping, relay=None):
        (first_group, *extra_groups) = groups
        self.client = client.GroupClient(
            user_name, user_password_md5, *first_group, server, private_endpoint,
            relay=relay, extra_groups=extra_groups,
            forget_unlisted_after=FORGET_UNLISTED_AFTER)
        self.mapping = mapping
        self.counters = collections.Counter()
        self._known = set()
        # Peer names by source address, valid until the client core's state
        # changes (a server reply or a ping): data datagrams never change it.
        self._peer_by_source = {}

    # ------------------------------------------------------------------
    # Inputs

    def timer(self, now):
        self._peer_by_source.clear()
        return self.client.timer(now) + self._forgotten()

    def receive(self, data, source, now):
        core = self.client
        source = (source[0], source[1])
        pings = []
        if source == core.server:
            self._peer_by_source.clear()
            actions = [action for action in core.receive(data, source, now)
                       if type(action) is Send]
        elif _PING_MARKER in data:
            self._peer_by_source.clear()
            pings = core.pings_in(data)
            actions = [action for action in core.pinged(pings, source, now)
                       if type(action) is Send]
        else:
            actions = []      # the core would only hand it to the application: us
        if source == core.server:
            for name, peer in core.peers.items():
                self._known.add(name)
                actions.append(PeerListed(name, peer.groups))
            return actions
        name = self._peer_by_source.get(source)
        if name is None:
            name = core.peer_at(source)
            if name is not None:
                self._peer_by_source[source] = name
        if name is None:
            # A ping from a user we have not learnt yet is normal while peers meet
            # (the client core re-registers to learn it); anything else is a drop.
            if not pings:
                actions.append(Drop("unknown_peer", source))
            return actions
        self.counters["datagrams_from_peers"] += 1
        try:
            messages = wire.parse_packet(data)
        except wire.MalformedPacket:
            actions.append(PeerAlive(name))
            actions.append(Drop("malformed", source))
            return actions
        events = []
        unmapped = 0
        for message in messages:
            if message.address == wire.PING:
                continue
            mapped = self.mapping.osc_to_midi(message)
            if mapped is None:
                unmapped += 1
            else:
                events.extend(mapped)
        if unmapped:
            actions.append(Drop("unmapped", source, count=unmapped))
        if events:
            self.counters["midi_from_peers"] += len(events)
            actions.append(PeerMidi(name, events))
        else:
            actions.append(PeerAlive(name))
        return actions

    # ------------------------------------------------------------------
    # Output

    def encode_midi(self, messages, tempo=None):
        """(datagrams, messages too large to send) for MIDI messages going to peers,
        after ``/tempo bpm`` when ``tempo`` (a TempoState) is given.

        One message goes as a plain OSC message, several as bundles of at most
        :data:`MAX_PEER_DATAGRAM` bytes. Encode once per fan-out and share the
        result among peers.
        """
        elements = [self.mapping.midi_to_osc(data) for data in messages]
        if tempo is not None:
            elements.insert(0, self.mapping.tempo_to_osc(tempo.bpm))
        fitting = [element for element in elements
                   if len(element) + _BUNDLE_OVERHEAD <= MAX_PEER_DATAGRAM]
        too_large = len(elements) - len(fitting)
        if len(fitting) == 1:
            return fitting, too_large
        return wire.pack_bundles(fitting, MAX_PEER_DATAGRAM), too_large

    def send_to_peer(self, name, datagrams, now):
        """Send actions for encoded datagrams, or a Drop while ``name`` has no path."""
        actions = []
        for datagram in datagrams:
            actions.extend(self.client.send_to_peer(name, datagram, now))
        if datagrams and not actions:
            return [Drop("no_path_to_peer", None, count=len(datagrams))]
        self.counters["datagrams_to_peers"] += len(actions)
        return actions

    # ------------------------------------------------------------------

    def path(self, name):
        """``"kind ip:port"`` of the path to peer ``name``, or None before it pinged."""
        path = self.client.paths().get(name)
        if path is None:
            return None
        kind, (host, port) = path
        return f"{kind} {host}:{port}"

    def status(self):
        core = self.client
        return {"user": core.user_name,
                "groups": [name for name, _password in core.groups],
                "peers": {name: {"groups": sorted(peer.groups), "path": self.path(name)}
                          for name, peer in core.peers.items()},
                "counters": dict(self.counters + core.counters)}

    def _forgotten(self):
        gone = self._known.difference(self.client.peers)
        self._known.difference_update(gone)
        return [PeerLeft(name, "no longer listed") for name in sorted(gone)]
