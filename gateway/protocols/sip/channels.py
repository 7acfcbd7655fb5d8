"""How every other player of a session reaches an sfront client on its one set of 16 channels.

With the media anchored at the gateway (sfront.md §4, design A) a client has
one member, the gateway, so all remote players arrive on the same 16 MIDI
channels. Two policies (``sip.channels``):

* ``keep``: every player's messages keep their channels. Players on the
  same channel share its program, controllers and pitch bend, and the same
  note from two players is one note to the client.
* ``per_player``: each remote player gets a channel of its own, the lowest
  free one, for as long as it is in the session; all its channel messages
  are moved there (a seventeenth player shares). Players no longer collide,
  at the price of their own channel layout (a drum part on channel 10 moves).

Sans-IO: events in, events out.
"""

from gateway.midi import MidiEvent

__all__ = ["KEEP", "PER_PLAYER", "POLICIES", "PlayerChannels"]

KEEP = "keep"
PER_PLAYER = "per_player"
POLICIES = (KEEP, PER_PLAYER)

_CHANNELS = 16


class PlayerChannels:
    """The ``per_player`` assignment of channels to the members of one session."""

    def __init__(self):
        self.assigned = {}          # member id -> channel
        self.departed = set()       # their channel is free; kept for their last releases

    def channel_of(self, member_id):
        channel = self.assigned.get(member_id)
        if channel is not None:
            return channel
        taken = {channel for member, channel in self.assigned.items()
                 if member not in self.departed}
        free = [channel for channel in range(_CHANNELS) if channel not in taken]
        channel = free[0] if free else member_id % _CHANNELS
        for member in [member for member in self.departed if self.assigned[member] == channel]:
            self.departed.discard(member)
            del self.assigned[member]
        self.assigned[member_id] = channel
        return channel

    def left(self, member_id):
        """``member_id`` left: its channel may go to the next player that arrives."""
        if member_id in self.assigned:
            self.departed.add(member_id)

    def remap(self, events, member_id):
        """``events`` with every channel message moved to ``member_id``'s channel."""
        channel = self.channel_of(member_id)
        moved = []
        for event in events:
            data = event.data
            status = data[0]
            if status < 0xF0 and status & 0x0F != channel:
                event = MidiEvent(bytes((status & 0xF0 | channel,)) + data[1:], event.time)
            moved.append(event)
        return moved
