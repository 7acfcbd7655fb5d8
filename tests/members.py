"""A registry member that records what it is given, for unit tests."""

from zope.interface import implementer

from gateway.interfaces import IMember


@implementer(IMember)
class RecordingMember:
    def __init__(self, name="recorder", door="test"):
        self.name = name
        self.door = door
        self.received = []       # (message bytes, source name)
        self.changes = []        # (change, member name)
        self.disconnected = None

    @property
    def heard(self):
        return [data for data, _ in self.received]

    def deliver(self, events, source):
        self.received.extend((bytes(event.data), source.name) for event in events)

    def membership_changed(self, change, member, session):
        self.changes.append((change, member.name))

    def disconnect(self, reason):
        self.disconnected = reason

    def describe(self):
        return {}
