"""SIP transactions: the server side for every request, the client side for the BYEs we send.

# implements RFC 3261 §17.2.1 (INVITE server transaction: Proceeding, Completed, Confirmed;
#   Timer G retransmits a non-2xx final over UDP until the ACK, Timer H gives up on it,
#   Timer I absorbs ACK retransmissions)
# implements RFC 6026 §7.1 (the Accepted state: after a 2xx the transaction stays to absorb
#   retransmitted INVITEs while the 2xx is retransmitted, RFC 3261 §13.3.1.4, until the
#   ACK or 64*T1, Timer L)
# implements RFC 3261 §17.2.2 (non-INVITE server transaction: Trying, Completed; a
#   retransmitted request gets the last response again; Timer J)
# implements RFC 3261 §17.2.3 (matching a request to a server transaction: the top Via's
#   branch with the magic cookie, sent-by and method, ACK and CANCEL as INVITE; the
#   RFC 2543 fallback for branches without the cookie)
# implements RFC 3261 §17.1.2 (non-INVITE client transaction: Timer E retransmits over
#   UDP, doubling up to T2, Timer F gives up, Timer K absorbs response retransmissions)
#   and §17.1.3 (matching a response to a client transaction)

The table holds the transactions and their timers; the UAS core
(:mod:`gateway.protocols.sip.uas`) decides what to answer. Answers are bytes
already written; the table only stores, sends and resends them. Time passes by
:meth:`TransactionTable.timer`, which returns what to send again and which
transactions ended how (:class:`Expired`).

Bounded: at most ``max_live`` transactions still waiting for an answer or an ACK;
transactions that only absorb retransmissions (Completed non-INVITE ones, kept
32 s on UDP) are pushed out oldest first when the table is full, which costs no
more than answering one late retransmission afresh.

Sans-IO: nothing here reads the clock; ``now`` is a parameter.
"""

import collections
import heapq
import itertools
import typing

from gateway.actions import Send

__all__ = ["T1", "T2", "T4", "MAGIC_COOKIE", "ServerTransaction", "ClientTransaction",
           "TransactionTable", "Expired", "server_key", "RELIABLE"]

T1 = 0.5
T2 = 4.0
T4 = 5.0
MAGIC_COOKIE = "z9hG4bK"
RELIABLE = frozenset(("TCP", "TLS", "WS", "WSS", "SCTP"))

# States (the RFC's names).
TRYING = "trying"
PROCEEDING = "proceeding"
COMPLETED = "completed"
CONFIRMED = "confirmed"
ACCEPTED = "accepted"
TERMINATED = "terminated"


class Expired(typing.NamedTuple):
    """``transaction`` ended for ``why``: 'no_ack' (a final response never ACKed),
    'tu_timeout' (the core never answered the request), 'timeout' (a client
    transaction got no final response, Timer F), 'done' (it ended normally)."""

    transaction: typing.Any
    why: str


def server_key(request, via):
    """The key that matches ``request`` (top Via ``via``) to its server transaction.

    ACK and CANCEL take INVITE's method so that a CANCEL finds the INVITE it
    cancels through ``server_key(cancel, via)[:-1] + ("INVITE",)``, and an ACK for a
    non-2xx final finds its INVITE. The CANCEL's own transaction is keyed with
    method CANCEL.
    """
    method = request.method
    if method == "ACK":
        method = "INVITE"
    branch = via.param("branch")
    if branch and branch.startswith(MAGIC_COOKIE):
        return ("3261", branch, via.host.lower(), via.port, method)
    # RFC 2543 peers: Call-ID, From tag, CSeq number and the top Via identify it. The
    # Request-URI and To tag are left out: an ACK carries the tag of our response,
    # which the INVITE did not have.
    from_tag = header_param(request.get("from") or "", "tag")
    cseq = request.cseq
    return ("2543", request.call_id, from_tag, cseq[0] if cseq else None,
            str(via.host).lower(), via.port, branch, method)


def header_param(value, name):
    """Parameter ``name`` of a From/To/Contact-like header value (after the URI), or None."""
    if "<" in value:
        close = value.find(">", value.find("<"))
        params = value[close + 1:] if close >= 0 else ""
    else:
        semicolon = value.find(";")
        params = value[semicolon:] if semicolon >= 0 else ""
    for part in params.split(";")[1:]:
        key, equals, param = part.partition("=")
        if key.strip().lower() == name:
            return param.strip().strip('"') if equals else ""
    return None


class ServerTransaction:
    """One request as the server handles it, and the responses it sent."""

    __slots__ = ("key", "method", "transport", "source", "reliable", "state", "request",
                 "last_response", "final_status", "retransmit_at", "interval", "ends_at",
                 "tu_deadline", "owner", "created_at", "live", "tag")

    def __init__(self, key, request, transport, source, now, tu_limit):
        self.key = key
        self.method = request.method
        self.transport = transport
        self.source = source
        self.reliable = transport in RELIABLE
        self.state = PROCEEDING if self.method == "INVITE" else TRYING
        self.request = request
        self.last_response = None
        self.final_status = None
        self.retransmit_at = None
        self.interval = T1
        self.ends_at = None
        self.tu_deadline = now + tu_limit
        self.owner = None           # what the core keeps about it (a call, a pending auth)
        self.created_at = now
        self.live = True            # counted in TransactionTable.live
        self.tag = None             # the To tag of our responses on it (none on a 100)

    @property
    def is_invite(self):
        return self.method == "INVITE"

    @property
    def answered(self):
        return self.final_status is not None

    def due(self):
        times = [t for t in (self.retransmit_at, self.ends_at) if t is not None]
        if self.final_status is None:
            times.append(self.tu_deadline)
        return min(times) if times else None

    def __repr__(self):
        return f"ServerTransaction({self.method}, {self.state})"


class ClientTransaction:
    """A non-INVITE request we sent (a BYE): resent on Timer E until a final response."""

    __slots__ = ("key", "method", "data", "transport", "destination", "reliable", "state",
                 "retransmit_at", "interval", "ends_at", "owner", "final_status")

    def __init__(self, branch, method, data, transport, destination, now):
        self.key = ("client", branch, method)
        self.method = method
        self.data = data
        self.transport = transport
        self.destination = destination
        self.reliable = transport in RELIABLE
        self.state = TRYING
        self.retransmit_at = None if self.reliable else now + T1
        self.interval = T1
        self.ends_at = now + 64 * T1        # Timer F
        self.owner = None
        self.final_status = None

    def due(self):
        times = [t for t in (self.retransmit_at, self.ends_at) if t is not None]
        return min(times) if times else None

    def __repr__(self):
        return f"ClientTransaction({self.method}, {self.state})"


class TransactionTable:
    """Every live transaction, keyed; their timers in one heap."""

    def __init__(self, max_live=4096, max_absorbing=16384, invite_tu_limit=32.0,
                 non_invite_tu_limit=16.0):
        self.max_live = max_live
        self.max_absorbing = max_absorbing
        self.invite_tu_limit = invite_tu_limit
        self.non_invite_tu_limit = non_invite_tu_limit
        self.server = {}
        self.client = {}
        # Completed non-INVITE transactions in the order they completed: evicted first.
        self._absorbing = collections.OrderedDict()
        self._heap = []
        self._order = itertools.count()
        self.live = 0
        self.evicted = 0

    def __len__(self):
        return len(self.server) + len(self.client)

    # Server side ---------------------------------------------------------------------

    def find(self, key):
        return self.server.get(key)

    def full(self):
        return self.live >= self.max_live

    def create(self, key, request, transport, source, now):
        """A new server transaction (the caller checked :meth:`full`)."""
        limit = self.invite_tu_limit if request.method == "INVITE" else self.non_invite_tu_limit
        transaction = ServerTransaction(key, request, transport, source, now, limit)
        self.server[key] = transaction
        self.live += 1
        self._schedule(transaction)
        return transaction

    def respond(self, transaction, status, data, now):
        """Send ``data`` (the response with ``status``) on ``transaction``; the state moves on."""
        if transaction.state in (TERMINATED, CONFIRMED) or (
                transaction.final_status is not None and status >= 200):
            return []           # a final was sent already: the first one stands
        transaction.last_response = data
        if status >= 200:
            transaction.final_status = status
            if transaction.is_invite:
                # Non-2xx: wait for the ACK (Timer G/H). 2xx: retransmit until the
                # end-to-end ACK (§13.3.1.4), give up after 64*T1 (Timer L).
                transaction.state = ACCEPTED if status < 300 else COMPLETED
                if not transaction.reliable:
                    transaction.retransmit_at = now + T1
                    transaction.interval = T1
                transaction.ends_at = now + 64 * T1
            else:
                transaction.state = COMPLETED
                transaction.ends_at = now + (0 if transaction.reliable else 64 * T1)  # Timer J
                self._absorb(transaction)
            self._schedule(transaction)
        return [Send(data, transaction.source, transaction.transport)]

    def retransmission(self, transaction):
        """A retransmitted request arrived: what to send again (§17.2.1, §17.2.2)."""
        if transaction.last_response is None or transaction.state in (CONFIRMED, TERMINATED):
            return []
        return [Send(transaction.last_response, transaction.source, transaction.transport)]

    def acknowledged(self, transaction, now):
        """The ACK for ``transaction``'s final response arrived."""
        if transaction.state == COMPLETED:
            transaction.state = CONFIRMED
            transaction.retransmit_at = None
            transaction.ends_at = now + (0 if transaction.reliable else T4)   # Timer I
            self._schedule(transaction)
            self._leave_live(transaction)
            return True
        if transaction.state == ACCEPTED:
            self._terminate(transaction)
            return True
        return False

    def terminate(self, transaction):
        """Stop ``transaction`` now (its 2xx need not be resent: the call ended)."""
        self._terminate(transaction)

    # Client side ---------------------------------------------------------------------

    def send_request(self, branch, method, data, transport, destination, now):
        """Start a client non-INVITE transaction; returns it and the first Send."""
        transaction = ClientTransaction(branch, method, data, transport, destination, now)
        self.client[transaction.key] = transaction
        self._schedule(transaction)
        return transaction, [Send(data, destination, transport)]

    def match_response(self, response, via):
        """The client transaction ``response`` answers (§17.1.3), or None."""
        cseq = response.cseq
        branch = via.param("branch")
        if cseq is None or not branch:
            return None
        return self.client.get(("client", branch, cseq[1]))

    def response_received(self, transaction, status, now):
        """A response on a client transaction: True when it is the (first) final one."""
        if transaction.state in (COMPLETED, TERMINATED):
            return False            # a retransmitted final, absorbed (Timer K)
        if status < 200:
            transaction.state = PROCEEDING
            if transaction.retransmit_at is not None:
                transaction.interval = T2
                transaction.retransmit_at = now + T2
                self._schedule(transaction)
            return False
        transaction.state = COMPLETED
        transaction.final_status = status
        transaction.retransmit_at = None
        transaction.ends_at = now + (0 if transaction.reliable else T4)       # Timer K
        self._schedule(transaction)
        return True

    # Time ------------------------------------------------------------------------------

    def timer(self, now):
        """``(sends, expired)``: retransmissions due by ``now``, and transactions that ended."""
        sends, expired = [], []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, transaction = heapq.heappop(heap)
            if transaction.state == TERMINATED or transaction.due() != due:
                continue            # rescheduled or gone: a stale heap entry
            if isinstance(transaction, ClientTransaction):
                self._client_timer(transaction, now, sends, expired)
            else:
                self._server_timer(transaction, now, sends, expired)
            if transaction.state != TERMINATED:
                self._schedule(transaction)
        return sends, expired

    def _server_timer(self, transaction, now, sends, expired):
        if transaction.final_status is None:
            if now >= transaction.tu_deadline:
                expired.append(Expired(transaction, "tu_timeout"))
                transaction.tu_deadline = float("inf")      # the core answers it now
            return
        if transaction.ends_at is not None and now >= transaction.ends_at:
            waiting_for_ack = transaction.is_invite and transaction.state in (COMPLETED, ACCEPTED)
            self._terminate(transaction)
            expired.append(Expired(transaction, "no_ack" if waiting_for_ack else "done"))
            return
        if transaction.retransmit_at is not None and now >= transaction.retransmit_at:
            sends.append(Send(transaction.last_response, transaction.source,
                              transaction.transport))
            transaction.interval = min(2 * transaction.interval, T2)       # Timer G
            transaction.retransmit_at = now + transaction.interval

    def _client_timer(self, transaction, now, sends, expired):
        if now >= transaction.ends_at:
            timed_out = transaction.state in (TRYING, PROCEEDING)
            self._terminate(transaction)
            expired.append(Expired(transaction, "timeout" if timed_out else "done"))
            return
        if transaction.retransmit_at is not None and now >= transaction.retransmit_at:
            sends.append(Send(transaction.data, transaction.destination, transaction.transport))
            transaction.interval = min(2 * transaction.interval, T2)       # Timer E
            transaction.retransmit_at = now + transaction.interval

    def next_due(self):
        """When :meth:`timer` next has something to do (None: nothing pending)."""
        while self._heap and (self._heap[0][2].state == TERMINATED
                              or self._heap[0][2].due() != self._heap[0][0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    # Bookkeeping -------------------------------------------------------------------------

    def _schedule(self, transaction):
        due = transaction.due()
        if due is not None and due != float("inf"):
            heapq.heappush(self._heap, (due, next(self._order), transaction))

    def _absorb(self, transaction):
        """A non-INVITE transaction that only absorbs retransmissions now."""
        self._leave_live(transaction)
        self._absorbing[transaction.key] = transaction
        while len(self._absorbing) > self.max_absorbing:
            _, oldest = self._absorbing.popitem(last=False)
            self._terminate(oldest)
            self.evicted += 1

    def _terminate(self, transaction):
        if transaction.state == TERMINATED:
            return
        if isinstance(transaction, ClientTransaction):
            self.client.pop(transaction.key, None)
        else:
            if self.server.get(transaction.key) is transaction:
                del self.server[transaction.key]
            if self._absorbing.get(transaction.key) is transaction:
                del self._absorbing[transaction.key]
            self._leave_live(transaction)
        transaction.state = TERMINATED

    def _leave_live(self, transaction):
        if transaction.live:
            transaction.live = False
            self.live -= 1
