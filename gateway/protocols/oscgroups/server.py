"""OSCgroups rendezvous server as a sans-IO state machine.

Implements shared/protocols/oscgroups.md §5.1 (users, groups, user_alive and
get_group_users_info semantics, purge) with the replies of §4.2 and the
compatibility notes of §6. Hand-written because no maintained library speaks
OSCgroups; OSC itself goes through :mod:`.wire` (python-osc).

Where the original breaks, this one does better on purpose:

* malformed, truncated, empty or oversized datagrams are dropped and counted
  in :attr:`RendezvousServer.counters` by reason instead of killing the server
  (§7.1);
* a group of any size is listed in full: the reply is split over several
  bundles of at most 1536 bytes each (§6.6, §7.2), which the C++ client
  handles one datagram at a time;
* names, passwords and group names are capped at 64 bytes and a user at 16
  groups, so that every single reply message fits one such datagram.

* an empty, blank or control-character user name (the bus's name rule,
  :func:`gateway.bus.values.name_problem`) is refused with the status ``bad user
  name``, which the original never sends and its client prints;
* a user whose registration is refused (``wrong password``, ``user limit
  reached``, ``bad user name``) gets its status and nothing else: no user list,
  not even from the query that follows its user_alive, and no list for queries
  from that source address until it registers or has been silent for ``timeout``
  seconds (§5.1 has the original answer any holder of the group password,
  which hands an impostor the endpoints it needs). :attr:`RendezvousServer.refused`
  holds those sources, so the relay ignores their pings too.

Everything else (status strings, takeover, group leave, no re-check of a
member's group password, answering others who hold the group password, silence
on an unknown group) follows the notes, because clients observe it.

Hooks for the gateway: ``authorize_group(group_name, password_md5_hex, addr)``
returns True/False to decide a group password itself (``addr`` is the
asker's, for throttling guesses), or None to leave it to OSCgroups' own rule;
``group_full(group_name, user_name)`` returns True when a user that is not
yet a member may not join (the group's session is full),
which answers ``user limit reached``, OSCgroups' own busy reply;
``listed_endpoints(user, viewer, actions)`` returns the (private, public)
endpoints, each an (ip, port), to show ``viewer`` (the member whose query it
is, or None for a non-member) instead of the user's own (e.g. a relay,
:mod:`.relay`), or None to keep them; actions it appends to ``actions`` (the
relay's :class:`.relay.OpenPort`) go out with the server's.

The server does no I/O and calls nothing back for it:
:meth:`RendezvousServer.receive` and :meth:`RendezvousServer.purge` return
actions (:mod:`gateway.actions`)
for the adapter to carry out, in order: Send (from the server socket), Drop
(a dropped or refused request; its reason is the :attr:`counters` key just
incremented, less a ``dropped_`` prefix, so an adapter can count and log per
peer), this core's :class:`Purged` (users the purge removed) and whatever
``listed_endpoints`` added.

Time is a parameter (seconds, float); like the original, ages are whole seconds.
"""

import collections
from typing import NamedTuple

from gateway.actions import Drop, Send
from gateway.bus.values import name_problem

from . import wire

DEFAULT_MAX_USERS = 100
DEFAULT_MAX_GROUPS = 50
DEFAULT_TIMEOUT = 60
# The C++ client reads into a 4098-byte buffer; no legitimate request is near it.
MAX_REQUEST_SIZE = 4096
MAX_STRING_BYTES = 64
MAX_GROUPS_PER_USER = 16
# Sources of refused registrations remembered at once (the oldest go first).
MAX_REFUSED_SOURCES = 1024


class Purged(NamedTuple):
    """The purge removed these users (their registrations ended)."""

    names: list


class User:
    __slots__ = ("name", "password", "private_endpoint", "public_endpoint",
                 "last_alive", "groups")

    def __init__(self, name, password):
        self.name = name
        self.password = password
        self.private_endpoint = None
        self.public_endpoint = None
        self.last_alive = 0
        self.groups = {}          # name -> Group, in join order

    def __repr__(self):
        return f"User({self.name!r}, private={self.private_endpoint}, public={self.public_endpoint})"


class Group:
    __slots__ = ("name", "password", "members")

    def __init__(self, name, password):
        self.name = name
        self.password = password
        self.members = {}         # name -> User, in join order


class RendezvousServer:
    """Feed it datagrams and the time; it answers with datagrams to send."""

    def __init__(self, *, max_users=DEFAULT_MAX_USERS, max_groups=DEFAULT_MAX_GROUPS,
                 timeout=DEFAULT_TIMEOUT, authorize_group=None, group_full=None,
                 listed_endpoints=None, public_aliases=None, now=0.0):
        self.max_users = max_users
        self.max_groups = max_groups
        self.timeout = timeout
        self.authorize_group = authorize_group
        self.group_full = group_full
        self.listed_endpoints = listed_endpoints
        # observed source -> the endpoint listed instead: the gateway's own bridge
        # reaches its server over loopback or a private address, but peers reach it
        # at the public one.
        self.public_aliases = dict(public_aliases or {})
        self.users = {}
        self.groups = {}
        # (host, port) -> (user name, until): sources whose registration was refused.
        self.refused = {}
        self.counters = collections.Counter()
        self._next_purge = now + self.purge_interval
        self._actions = []        # what the request being handled asks of the adapter

    @property
    def purge_interval(self):
        """The original sweeps every tenth of the timeout (§5.1)."""
        return self.timeout / 10

    # ------------------------------------------------------------------
    # Requests

    def receive(self, data, addr, now):
        """Handle one request from ``addr`` (host, port); return the actions it asks for."""
        self._actions = actions = self.purge(now) if now >= self._next_purge else []
        try:
            self._request(data, addr, now)
        finally:
            self._actions = []
        return actions

    def _request(self, data, addr, now):
        self.counters["datagrams"] += 1
        if not data:
            return self._drop("empty", addr)
        if len(data) > MAX_REQUEST_SIZE:
            return self._drop("oversized", addr)
        if not wire.is_ipv4(addr[0]):
            return self._drop("not_ipv4_source", addr)
        try:
            messages = wire.parse_packet(data)
        except wire.MalformedPacket:
            return self._drop("malformed", addr)
        if not messages:
            return self._drop("no_messages", addr)      # a bundle of nothing
        replies = []
        for message in messages:
            replies.extend(self._handle_message(message, addr, now))
        if replies:
            bundles = wire.pack_bundles(replies)
            self.counters["reply_datagrams"] += len(bundles)
            self._actions.extend(Send(bundle, addr) for bundle in bundles)
        return []

    def _drop(self, reason, addr):
        self._count(f"dropped_{reason}", addr)
        return []

    def _count(self, counter, addr):
        self.counters[counter] += 1
        self._actions.append(Drop(counter.removeprefix("dropped_"), addr))

    def _handle_message(self, message, addr, now):
        try:
            request = wire.decode_message(message)
        except wire.MalformedPacket:
            return self._drop("bad_arguments", addr)
        if isinstance(request, wire.UserAlive):
            return self._user_alive(request, addr, now)
        if isinstance(request, wire.GroupUsersQuery):
            return self._group_users_info(request, addr, now)
        return self._drop("unknown_address", addr)

    def _user_alive(self, request, addr, now):
        strings = [request.user_name, request.user_password,
                   *(field for pair in request.groups for field in pair)]
        if any(len(s.encode("utf-8")) > MAX_STRING_BYTES for s in strings):
            return self._drop("string_too_long", addr)
        if len(request.groups) > MAX_GROUPS_PER_USER:
            return self._drop("too_many_groups", addr)

        def user_status(status):
            return wire.UserAliveStatus(request.user_name, request.user_password, status).encode()

        user = self.users.get(request.user_name)
        if user is None:
            if name_problem(request.user_name) is not None:
                # The user name becomes the member's name in every session, and
                # shows in logs and peers' user lists: the bus's name rule, at once.
                self._refuse(request.user_name, "refused_bad_user_name", addr, now)
                return [user_status(wire.STATUS_BAD_USER_NAME)]
            if len(self.users) >= self.max_users:
                self._refuse(request.user_name, "refused_user_limit", addr, now)
                return [user_status(wire.STATUS_USER_LIMIT_REACHED)]
            user = self.users[request.user_name] = User(request.user_name, request.user_password)
        elif user.password != request.user_password:
            self._refuse(request.user_name, "refused_wrong_user_password", addr, now)
            return [user_status(wire.STATUS_WRONG_PASSWORD)]
        self.refused.pop((addr[0], addr[1]), None)

        # Overwritten on every accepted alive: a takeover or a NAT re-mapping wins.
        user.private_endpoint = request.private_endpoint
        user.public_endpoint = (addr[0], addr[1])
        user.last_alive = int(now)
        replies = [user_status(wire.STATUS_OK)]

        listed = set()
        for group_name, group_password in request.groups:
            listed.add(group_name)
            status = self._join(user, group_name, group_password, addr)
            replies.append(wire.UserGroupStatus(
                request.user_name, request.user_password, group_name, group_password,
                status).encode())
        for group in [g for name, g in user.groups.items() if name not in listed]:
            self._leave(user, group)
        return replies

    def _refuse(self, user_name, counter, addr, now):
        """Count a refused registration and remember its source for ``timeout`` s."""
        self._count(counter, addr)
        source = (addr[0], addr[1])
        self.refused.pop(source, None)
        if len(self.refused) >= MAX_REFUSED_SOURCES:
            del self.refused[next(iter(self.refused))]
        self.refused[source] = (user_name, now + self.timeout)

    def _join(self, user, group_name, group_password, addr):
        group = self.groups.get(group_name)
        if group is not None and user.name in group.members:
            # The original never re-checks a member's group password (§7.10).
            return wire.STATUS_OK
        if not self._group_password_accepted(group, group_name, group_password, addr):
            self._count("refused_wrong_group_password", addr)
            return wire.STATUS_WRONG_PASSWORD
        if self.group_full is not None and self.group_full(group_name, user.name):
            self._count("refused_session_full", addr)
            return wire.STATUS_USER_LIMIT_REACHED
        if group is None:
            if len(self.groups) >= self.max_groups:
                self._count("refused_group_limit", addr)
                return wire.STATUS_USER_LIMIT_REACHED
            group = self.groups[group_name] = Group(group_name, group_password)
        group.members[user.name] = user
        user.groups[group_name] = group
        return wire.STATUS_OK

    def _group_password_accepted(self, group, group_name, group_password, addr):
        if self.authorize_group is not None:
            verdict = self.authorize_group(group_name, group_password, addr)
            if verdict is not None:
                return bool(verdict)
        # OSCgroups' own rule: the first joiner sets the password of a new group.
        return group is None or group.password == group_password

    def _leave(self, user, group):
        del group.members[user.name]
        del user.groups[group.name]
        if not group.members:
            del self.groups[group.name]

    def _group_users_info(self, request, addr, now):
        if (addr[0], addr[1]) in self.refused:
            # Refused users get nothing, whichever group password they hold.
            return self._drop("refused_source", addr)
        group = self.groups.get(request.group_name)
        if group is None:
            return self._drop("unknown_group", addr)
        if not self._group_password_accepted(group, request.group_name, request.group_password,
                                             addr):
            return self._drop("wrong_group_password", addr)
        # The C++ client sends its query right after its user_alive, which has
        # just stored the source as its public endpoint.
        viewer = next((member for member in group.members.values()
                       if member.public_endpoint == addr), None)
        return [self._user_info(member, viewer, now) for member in group.members.values()]

    def _user_info(self, user, viewer, now):
        private_endpoint = user.private_endpoint
        public_endpoint = self.public_aliases.get(user.public_endpoint, user.public_endpoint)
        if self.listed_endpoints is not None:
            listed = self.listed_endpoints(user, viewer, self._actions)
            if listed is not None:
                private_endpoint, public_endpoint = listed
        return wire.UserInfo(user.name, private_endpoint, public_endpoint,
                             int(now) - user.last_alive, tuple(user.groups)).encode()

    # ------------------------------------------------------------------
    # Timeouts

    def purge(self, now):
        """Forget users silent for ≥ timeout whole seconds, and refusals as old; return
        [:class:`Purged`] with the users' names, or [] when nobody went."""
        self._next_purge = now + self.purge_interval
        for source in [source for source, (_name, until) in self.refused.items()
                       if until <= now]:
            del self.refused[source]
        stale = [user for user in self.users.values()
                 if int(now) - user.last_alive >= self.timeout]
        for user in stale:
            for group in list(user.groups.values()):
                self._leave(user, group)
            del self.users[user.name]
        self.counters["purged_users"] += len(stale)
        return [Purged([user.name for user in stale])] if stale else []
