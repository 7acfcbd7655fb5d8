"""Bus members and helpers for unit tests."""

from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.bus.values import JoinRequest, Passphrase
from gateway.interfaces import IMember


@implementer(IMember)
class RecordingMember:
    """Records every delivery, roster notice and disconnect it is given."""

    def __init__(self, name="recorder", door="test"):
        self.name = name
        self.door = door
        self.received = []       # (message bytes, source name)
        self.deliveries = []
        self.changes = []        # (change, member name)
        self.notices = []
        self.disconnected = None

    @property
    def heard(self):
        return [data for data, _ in self.received]

    def deliver(self, delivery):
        self.deliveries.append(delivery)
        self.received.extend((bytes(event.data), delivery.source.name)
                             for event in delivery.events)

    def roster_changed(self, notice):
        self.notices.append(notice)
        self.changes.append((notice.change, notice.entry.name))

    def disconnect(self, reason):
        self.disconnected = reason

    def describe(self):
        return {}


def result_of(deferred):
    """The result of a Deferred that has already fired; raises what it failed with."""
    outcome = []
    deferred.addBoth(outcome.append)
    assert outcome, f"{deferred!r} has not fired"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def join_now(bus, member, session="demo", passphrase=None, credential=None, source=None):
    """Join ``member`` (a RecordingMember) and return its membership at once."""
    credential = credential if credential is not None else Passphrase(passphrase)
    return result_of(bus.join(JoinRequest(session, member.name, member.door, credential,
                                          source), member))


def roster_names(bus, session="demo"):
    return [entry.name for entry in bus.session_view(session).roster]
