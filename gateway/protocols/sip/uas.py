"""The SIP server core for standard user agents: softphones, SIP libraries, phones.

# implements RFC 3261 §8.2 (UAS behaviour: method, header and Require checks, 405/501 with
#   Allow, 415 with Accept, 420 with Unsupported, a To tag on every non-100 response)
# implements RFC 3261 §17.2 through gateway.protocols.sip.transactions (server
#   transactions, retransmissions absorbed, Timers G, H, I, J, L) and §17.1.2 for our BYE
# implements RFC 3261 §12.1.1 and §12.2.2 (UAS dialogs: our To tag, the caller's Contact
#   as remote target; no route set: the gateway takes no calls through proxies)
# implements RFC 3261 §13.3.1.4 (2xx retransmitted until the ACK; no ACK in 64*T1 ends
#   the call with a BYE), §9.2 (CANCEL: 200, and 487 to the INVITE), §14.2 (re-INVITE),
#   §15.1.2 (BYE from either side), §11.2 (OPTIONS: Allow, Accept, Supported)
# implements RFC 3261 §10.3 through gateway.protocols.sip.registrar, and §22 with
#   gateway.protocols.sip.digest (401 challenges, never 407)
# implements RFC 3581 §4 (received and rport in the top Via of every response; every
#   response goes back to the source address and port of its request)
# implements RFC 3311 (UPDATE in a dialog), RFC 6086 (INFO in a dialog), RFC 3428 §7
#   (MESSAGE in a dialog), RFC 5626 §3.5.1 (CRLF keep-alives, through framing)
# implements RFC 3261 §13.2.1 and RFC 3264 §5 for an INVITE without an offer: the
#   adapter's answer() is then our offer (in the 200, and its retransmissions), and
#   the ACK's body is the answer (CallConfirmed.sdp; None when the caller sent none)

Which session, and who (README "SIP phones"): an INVITE's Request-URI user is the
session (``sip:demo@gateway``); a REGISTER's To user is (its Request-URI names only
the domain, §10.2). The digest username is the player's name, the digest password
the session's passphrase. The core never sees a passphrase: it asks its adapter to
check a :class:`~gateway.protocols.sip.digest.DigestProof` with :class:`Authenticate`,
and the adapter answers with :meth:`UserAgentServer.authenticated` or
:meth:`UserAgentServer.refused` (a bus refusal code), which become:

=================== ============================================================
wrong passphrase    403 Forbidden (after the 401 the proof answered)
unknown session     404 Not Found
session full        486 Busy Here
gateway full        503 Service Unavailable with Retry-After
throttled           503 Service Unavailable with Retry-After (the throttle's wait)
=================== ============================================================

A call, step by step (each line is one input and what it returns):

1. ``INVITE`` -> 100 Trying if nothing else is sent within 200 ms (§17.2.1; a
   retransmission before any answer gets it at once); no (or a stale) Authorization -> 401 with one
   challenge per algorithm. The client ACKs the 401 (absorbed by its transaction) and
   sends the INVITE again with credentials -> :class:`Authenticate`.
2. :meth:`~UserAgentServer.authenticated` -> :class:`CallOffered` (the :class:`Call`
   and the SDP offer); the adapter joins the bus and prepares media, then calls
   :meth:`~UserAgentServer.answer` with the SDP answer (200, retransmitted until the
   ACK) or :meth:`~UserAgentServer.reject` with a refusal code or a status (488).
3. ``ACK`` -> :class:`CallConfirmed`. It is matched to the call by Call-ID and CSeq,
   not by To tag: pyVoIP acknowledges with a tag of its own.
   An INVITE without a body wants our offer: :class:`CallOffered` has ``offer``
   None, the SDP given to :meth:`~UserAgentServer.answer` is our offer, and the
   answer arrives in the ACK (:class:`CallConfirmed`'s ``sdp``; an ACK without
   one is counted, ``acks_without_answer``, and the adapter hangs up).
4. ``BYE`` (even before the ACK: pjsua2), ``CANCEL``, no ACK in 64*T1, a lost TCP
   connection, or :meth:`~UserAgentServer.hang_up` -> :class:`CallEnded`, once per
   offered call that the adapter did not reject itself.

Messages of dialogs that are not the server's (the calls the gateway makes itself,
``sip.invite``, whose responses and in-dialog requests arrive on the same ports):
when ``foreign`` is set, a predicate on Call-IDs, such a message is handed back
parsed in a :class:`Foreign` action for the client core.

Inputs are :meth:`~UserAgentServer.receive` (one datagram or framed message, or a
parsed message), :meth:`~UserAgentServer.receive_stream` (stream octets through a
:class:`~gateway.protocols.sip.framing.StreamFramer`), :meth:`~UserAgentServer.timer`
and the verbs above; each returns a list of actions: :class:`~gateway.actions.Send`
(``via`` is the transport name: UDP, TCP or TLS; the address is the peer's, on TCP
and TLS the connection's), :class:`~gateway.actions.Drop`, the actions below, and
:class:`CloseConnection`. Arbitrary bytes never raise out of it.

Tolerated, for the clients measured in shared/protocols/sip-clients.md: in-dialog
requests are matched by Call-ID and the caller's From tag, and a wrong To tag is
counted, not refused; CSeq order inside a dialog is not enforced (pyVoIP numbers its
BYEs from 1 whatever its INVITE's CSeq was); a CRLF keep-alive datagram (pjsip) is
skipped without a drop.
"""

import collections
import random
import re
import typing
import urllib.parse

from gateway.actions import Drop, Send
from gateway.bus.values import (
    ADDRESS_NOT_ALLOWED, GATEWAY_FULL, NAME_TAKEN, SESSION_FULL, THROTTLED, UNKNOWN_SESSION,
    WRONG_PASSPHRASE,
)
from gateway.protocols.sip import digest
from gateway.protocols.sip.framing import PING, Broken, StreamFramer
from gateway.protocols.sip.message import (
    RFC3261, MalformedMessage, Request, Response, Via, long_name, parse,
)
from gateway.protocols.sip.registrar import Registrar, contact_uri
from gateway.protocols.sip.sdp import MalformedSdp, Sdp, same_media
from gateway.protocols.sip.transactions import (
    MAGIC_COOKIE, RELIABLE, T1, TransactionTable, header_param, server_key,
)

__all__ = ["UserAgentServer", "Limits", "Call", "Authenticate", "CallOffered",
           "CallConfirmed", "CallEnded", "CallInfo", "CloseConnection", "Foreign", "ALLOW",
           "StreamFramer"]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, MESSAGE"
"""Every method the core serves (OPTIONS, 501)."""
ALLOW_OUTSIDE_DIALOG = "INVITE, ACK, CANCEL, OPTIONS, REGISTER"
"""What a request outside a dialog may be (405 for the others we know)."""
_KNOWN_REFUSED = frozenset(("SUBSCRIBE", "NOTIFY", "PUBLISH", "REFER"))
_NEEDS_DIALOG = frozenset(("BYE", "INFO", "UPDATE", "PRACK"))
_HEAD_END = re.compile(rb"\r?\n\r?\n")
TRYING_DELAY = 0.2
"""RFC 3261 §17.2.1: an INVITE not answered within 200 ms gets a 100 Trying."""


class Authenticate(typing.NamedTuple):
    """Check ``proof`` (a DigestProof) as ``player`` joining ``session``; answer with
    ``authenticated(ticket)`` or ``refused(ticket, reason)``. ``source`` is the peer's
    host, for the throttle; ``method`` is INVITE or REGISTER."""

    ticket: typing.Any
    session: str
    player: str
    proof: typing.Any
    source: str
    method: str


class CallOffered(typing.NamedTuple):
    """An authenticated INVITE: ``answer(call, sdp)`` or ``reject(call, reason)``.
    ``offer`` is the SDP body (None: the caller wants our offer, its answer comes
    in the ACK)."""

    call: typing.Any
    offer: typing.Optional[bytes]


class CallConfirmed(typing.NamedTuple):
    """The ACK for our 200 arrived; ``sdp`` is its body (the answer to an offer we made)."""

    call: typing.Any
    sdp: typing.Optional[bytes]


class CallEnded(typing.NamedTuple):
    """``call`` is over: 'bye', 'cancelled', 'no_ack', 'unanswered', 'closed' or the
    reason given to hang_up."""

    call: typing.Any
    reason: str


class CallInfo(typing.NamedTuple):
    """An INFO or MESSAGE inside ``call`` (SIP INFO DTMF, ``application/dtmf-relay``)."""

    call: typing.Any
    method: str
    content_type: typing.Optional[str]
    body: bytes


class CloseConnection(typing.NamedTuple):
    """Close the stream connection to ``address``: it broke a limit (``reason``)."""

    transport: str
    address: typing.Any
    reason: str


class Foreign(typing.NamedTuple):
    """``message`` (parsed) belongs to a dialog of the client core (``foreign``):
    hand it over with its ``transport`` and ``source``."""

    message: typing.Any
    transport: str
    source: typing.Any


class Limits(typing.NamedTuple):
    max_datagram_octets: int = 65535
    max_stream_header_octets: int = 16384
    max_body_octets: int = 65536
    max_headers: int = 64
    max_transactions: int = 4096
    max_dialogs: int = 256
    max_ended_remembered: int = 4096
    max_nonces: int = 4096


_REFUSALS = {
    WRONG_PASSPHRASE: (403, "Forbidden", False),
    UNKNOWN_SESSION: (404, "Not Found", False),
    SESSION_FULL: (486, "Busy Here", False),
    GATEWAY_FULL: (503, "Service Unavailable (gateway full)", True),
    THROTTLED: (503, "Service Unavailable (too many failed attempts)", True),
    ADDRESS_NOT_ALLOWED: (403, "Forbidden", False),
    # The digest user name is the player's name: the phrase says which to change.
    NAME_TAKEN: (403, "Forbidden (name already in the session)", False),
}
_REASON_PHRASES = {180: "Ringing", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
                   405: "Method Not Allowed", 415: "Unsupported Media Type",
                   480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
                   486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
                   500: "Server Internal Error", 501: "Not Implemented",
                   503: "Service Unavailable", 603: "Decline"}


class Call:
    """One call: an INVITE the adapter was offered, then its dialog (RFC 3261 §12)."""

    __slots__ = ("call_id", "session", "player", "transport", "source", "local_tag",
                 "remote_tag", "local_uri", "remote_uri", "remote_target", "invite_cseq",
                 "local_cseq", "offer", "answer", "state", "invite_transaction",
                 "ack_waits", "hangup_pending", "created_at")

    def __init__(self, request, transaction, session, player, now, local_cseq):
        self.call_id = request.call_id
        self.session = session
        self.player = player
        self.transport = transaction.transport
        self.source = transaction.source
        self.local_tag = transaction.tag
        self.remote_tag = header_param(request.get("from"), "tag")
        self.local_uri = request.get("to")          # as the caller wrote it, without our tag
        self.remote_uri = request.get("from")
        contact = request.get("contact")
        try:
            self.remote_target = contact_uri(contact)[0] if contact else None
        except ValueError:
            self.remote_target = None
        if not self.remote_target:
            self.remote_target = contact_uri(self.remote_uri)[0]
        self.invite_cseq = request.cseq[0]
        self.local_cseq = local_cseq
        self.offer = request.body or None
        self.answer = None
        self.state = "offered"          # -> answered -> confirmed -> ended
        self.invite_transaction = transaction
        self.ack_waits = {}             # CSeq number -> INVITE transaction whose 2xx awaits ACK
        self.hangup_pending = None
        self.created_at = now

    def describe(self):
        return {"session": self.session, "player": self.player, "transport": self.transport,
                "state": self.state}

    def __repr__(self):
        return f"Call({self.player!r} in {self.session!r}, {self.state})"


class _Pending:
    """A request waiting for the adapter's verdict on its credentials."""

    __slots__ = ("transaction", "request", "session", "player", "nonce", "nc", "done")

    def __init__(self, transaction, request, session, player, nonce, nc):
        self.transaction = transaction
        self.request = request
        self.session = session
        self.player = player
        self.nonce = nonce
        self.nc = nc
        self.done = False

    def __repr__(self):
        return f"Pending({self.request.method} {self.player!r} -> {self.session!r})"


class UserAgentServer:
    """The sans-IO RFC 3261 server: transactions, dialogs, registrar, digest.

    ``realm`` is the digest realm; ``host`` and ``ports`` (transport name -> port)
    are where clients reach the gateway, written in our Contact and Via.
    """

    def __init__(self, realm, host, ports, *, now, agent="netgateway", limits=Limits(),
                 registrar=None, nonce_key=None, nonce_lifetime=300.0, rng=None,
                 retry_after=30):
        self.realm = realm
        self.host = host
        self.ports = dict(ports)
        self.agent = agent
        self.limits = limits
        self.rng = rng or random.SystemRandom()
        self.retry_after = retry_after
        self.transactions = TransactionTable(max_live=limits.max_transactions)
        self.registrar = registrar or Registrar()
        self.nonces = digest.NonceSigner(nonce_key, nonce_lifetime, rng)
        self.nonce_counts = digest.NonceCounts(limits.max_nonces)
        self.calls = {}                                 # Call-ID -> Call
        self.ended = collections.OrderedDict()          # Call-ID -> until (late ACK, BYE)
        self.counts = collections.Counter()             # for /status and /metrics
        self._trying = collections.OrderedDict()        # INVITE transaction -> 100 due
        self.started_at = now
        self._next_sweep = now
        self.foreign = None         # Call-ID -> bool: messages the client core takes

    # Inputs ------------------------------------------------------------------------------

    def receive(self, data, transport, source, now):
        """Actions for one message (bytes, or a parsed Request/Response) from ``source``."""
        try:
            return self._receive(data, transport, source, now)
        except Exception as error:      # a bug must not take the door down (DESIGN rule 6)
            return [Drop("internal_error", source, f"{type(error).__name__}: {error}"[:200])]

    def receive_stream(self, framer, data, transport, source, now):
        """Actions for octets from a stream connection, framed by its ``framer``."""
        actions = []
        try:
            frames = framer.feed(data)
        except Exception as error:
            return [Drop("internal_error", source, f"{type(error).__name__}: {error}"[:200]),
                    CloseConnection(transport, source, "internal_error")]
        for frame in frames:
            if frame is PING:
                actions.append(Send(b"\r\n", source, transport))
            elif isinstance(frame, Broken):
                actions += self._refuse_oversized(frame.head, transport, source, frame.reason)
                actions.append(CloseConnection(transport, source, frame.reason))
            else:
                actions += self.receive(frame, transport, source, now)
        return actions

    def new_framer(self):
        """A :class:`StreamFramer` for one new TCP or TLS connection, with our limits."""
        return StreamFramer(self.limits.max_stream_header_octets, self.limits.max_body_octets)

    def connection_lost(self, transport, source, now):
        """A stream connection closed: the calls that lived on it are over."""
        actions = []
        for call in [call for call in self.calls.values()
                     if call.transport == transport and call.source == source]:
            actions += self._end(call, "closed", now)
        return actions

    def timer(self, now):
        """Retransmissions, timeouts, expired bindings and memories."""
        try:
            return self._timer(now)
        except Exception as error:
            return [Drop("internal_error", None, f"{type(error).__name__}: {error}"[:200])]

    # Verbs of the adapter ----------------------------------------------------------------

    def authenticated(self, ticket, now):
        """The proof of ``ticket`` (from :class:`Authenticate`) is good."""
        if ticket.done or ticket.transaction.answered or ticket.transaction.state == "terminated":
            return []
        ticket.done = True
        if ticket.nc is not None:
            self.nonce_counts.accepted(ticket.nonce, ticket.nc)
        transaction, request = ticket.transaction, ticket.request
        if request.method == "REGISTER":
            outcome = self.registrar.register((ticket.session, ticket.player), request,
                                              transaction.transport, transaction.source, now)
            self.counts["registrations" if outcome.status == 200 else "registrations_refused"] += 1
            return self._final(transaction, outcome.status, outcome.reason, now,
                               outcome.headers)
        if len(self.calls) >= self.limits.max_dialogs:
            return self._final(transaction, 503, "Service Unavailable (too many calls)", now,
                               [("Retry-After", str(self.retry_after))])
        call = Call(request, transaction, ticket.session, ticket.player, now,
                    self.rng.randrange(1, 2 ** 30))
        transaction.owner = call
        self.calls[call.call_id] = call
        self.counts[f"calls_{transaction.transport.lower()}"] += 1
        return [CallOffered(call, call.offer)]

    def refused(self, ticket, reason, now, retry_after=None):
        """The proof of ``ticket`` was refused for ``reason`` (a bus refusal code)."""
        if ticket.done or ticket.transaction.answered:
            return []
        ticket.done = True
        status, phrase, wait = _REFUSALS.get(reason, (403, "Forbidden", False))
        if reason == WRONG_PASSPHRASE:
            self.counts["digest_failures"] += 1
        self.counts[f"refused_{reason}"] += 1
        headers = [("Retry-After", str(int(retry_after or self.retry_after)))] if wait else []
        return self._final(ticket.transaction, status, phrase, now, headers)

    def answer(self, call, sdp, now):
        """Accept ``call`` with SDP ``sdp``: 200, resent until the ACK."""
        if call.state != "offered":
            return []
        call.state = "answered"
        call.answer = sdp
        transaction = call.invite_transaction
        call.ack_waits[call.invite_cseq] = transaction
        return self._final(transaction, 200, "OK", now, self._dialog_headers(call), sdp,
                           "application/sdp")

    def reject(self, call, reason, now, retry_after=None, headers=()):
        """Refuse an offered ``call`` with a bus refusal code or a status code (488, 480);
        ``headers`` are added to the response (a Warning that says why)."""
        if call.state != "offered":
            return []
        if isinstance(reason, int):
            status, phrase, wait = reason, _REASON_PHRASES.get(reason, ""), reason == 503
        else:
            status, phrase, wait = _REFUSALS.get(reason, (403, "Forbidden", False))
            self.counts[f"refused_{reason}"] += 1
        headers = list(headers)
        if wait:
            headers.append(("Retry-After", str(int(retry_after or self.retry_after))))
        actions = self._final(call.invite_transaction, status, phrase, now, headers)
        self._end(call, "rejected", now, notify=False)
        return actions

    def ringing(self, call, now):
        """Tell the caller its call is being set up (180), while the adapter gets ready."""
        if call.state != "offered":
            return []
        transaction = call.invite_transaction
        data = self._response_bytes(transaction.request, transaction.source, 180, "Ringing",
                                    call.local_tag, [("Contact", self._contact(call))])
        return self.transactions.respond(transaction, 180, data, now)

    def hang_up(self, call, now, reason="hung_up"):
        """The gateway ends ``call``: BYE (resent until answered), and :class:`CallEnded`.

        Before the answer this is a 480; before the ACK the BYE waits for it (§15).
        """
        if call.state == "offered":
            actions = self._final(call.invite_transaction, 480, "Temporarily Unavailable", now)
            return actions + self._end(call, reason, now)
        if call.state == "answered":
            call.hangup_pending = reason
            return [CallEnded(call, reason)]
        if call.state == "confirmed":
            return self._send_bye(call, now) + self._end(call, reason, now)
        return []

    # Status ------------------------------------------------------------------------------

    def totals(self):
        return {"calls": len(self.calls), "transactions": len(self.transactions),
                "registrations": self.registrar.count, **dict(self.counts)}

    # Receiving -----------------------------------------------------------------------------

    def _receive(self, data, transport, source, now):
        if isinstance(data, (Request, Response)):
            message = data
        else:
            if not data.strip(b"\r\n\0 \t"):
                self.counts["keepalives"] += 1
                return []           # a CRLF keep-alive datagram (pjsip sends them)
            problem = self._beyond_limits(data, transport)
            if problem is not None:
                return self._refuse_oversized(data, transport, source, problem)
            try:
                message = parse(data)
            except MalformedMessage as error:
                return [Drop("malformed", source, str(error))]
        foreign = self.foreign
        if foreign is not None and message.call_id and foreign(message.call_id):
            return [Foreign(message, transport, source)]
        if isinstance(message, Response):
            return self._response(message, source, now)
        return self._request(message, transport, source, now)

    def _beyond_limits(self, data, transport):
        limits = self.limits
        if len(data) > limits.max_datagram_octets:
            return "too_large"
        match = _HEAD_END.search(data)
        head_length = match.start() if match else len(data)
        if transport in RELIABLE and head_length > limits.max_stream_header_octets:
            return "too_large"
        if data.count(b"\n", 0, head_length) > limits.max_headers:
            return "header_flood"
        if match is not None and len(data) - match.end() > limits.max_body_octets:
            return "too_large"
        return None

    def _refuse_oversized(self, data, transport, source, reason):
        """513 Message Too Large when the essential headers can be read (§21.5.14)."""
        actions = [Drop(reason, source, f"{len(data)} octets")]
        request = _salvage(data)
        if request is not None:
            self.counts["too_large_refused"] += 1
            actions.append(self._stateless(request, transport, source, 513, "Message Too Large"))
        return actions

    def _request(self, request, transport, source, now):
        via_values = request.values("via")
        try:
            top = Via.parse(via_values[0]) if via_values else None
        except ValueError:
            top = None
        if top is None:
            return [Drop("malformed", source, "no readable Via")]
        method = request.method
        cseq = request.cseq
        missing = [name for name in ("from", "to", "call-id") if not request.get(name)]
        if missing or cseq is None or (cseq[1] or "").upper() != method:
            if method == "ACK":
                return [Drop("malformed", source, "ACK without From, To, Call-ID or CSeq")]
            detail = f"missing {', '.join(missing)}" if missing else "bad CSeq"
            return [Drop("malformed", source, detail),
                    self._stateless(request, transport, source, 400, f"Bad Request ({detail})")]
        self.counts[f"requests_{method}" if method in _COUNTED_METHODS else "requests_other"] += 1
        key = server_key(request, top)
        if method == "ACK":
            return self._ack(request, key, now, source)
        existing = self.transactions.find(key)
        if existing is not None:
            if existing.request.cseq[0] == cseq[0]:
                self.counts["retransmissions"] += 1
                if existing.is_invite and existing.last_response is None:
                    return self._trying_now(existing, now)
                return self.transactions.retransmission(existing)
            # The same branch with a new CSeq is a new request from a client that reuses
            # its branch (sipsak -i -f sends a file's Via as written): the old one is over.
            self.counts["branch_reused"] += 1
            self.transactions.terminate(existing)
        if self.transactions.full():
            return [Drop("transactions_full", source),
                    self._stateless(request, transport, source, 503,
                                    "Service Unavailable (busy)",
                                    [("Retry-After", str(self.retry_after))])]
        transaction = self.transactions.create(key, request, transport, source, now)
        transaction.tag = self._tag()
        scheme = request.uri.partition(":")[0].lower()
        if scheme not in ("sip", "sips"):
            return self._final(transaction, 416, "Unsupported URI Scheme", now)
        if method == "CANCEL":
            return self._cancel(transaction, key, now)
        actions = []
        if method == "INVITE":
            # §17.2.1: 100 Trying only if nothing else is sent within 200 ms (timer).
            # sipsak over TCP reads one message per read: a 100 written with the 401
            # or 200 right behind it would hide them from it.
            self._trying[transaction] = now + TRYING_DELAY
        required = request.get("require")
        if required and method != "CANCEL":
            return actions + self._final(transaction, 420, "Bad Extension", now,
                                         [("Unsupported", required)])
        return actions + self._dispatch(transaction, request, now)

    def _dispatch(self, transaction, request, now):
        method = request.method
        in_dialog = header_param(request.get("to"), "tag") is not None
        if method == "INVITE":
            return self._reinvite(transaction, request, now) if in_dialog \
                else self._invite(transaction, request, now)
        if method == "REGISTER":
            return self._register(transaction, request, now)
        if method == "OPTIONS":
            return self._final(transaction, 200, "OK", now, self._capabilities())
        if method == "BYE":
            return self._bye(transaction, request, now)
        if method in ("INFO", "UPDATE", "MESSAGE"):
            call = self._dialog_of(request)
            if call is None:
                if method == "MESSAGE":
                    return self._final(transaction, 405, "Method Not Allowed", now,
                                       [("Allow", ALLOW_OUTSIDE_DIALOG)])
                return self._final(transaction, 481, "Call/Transaction Does Not Exist", now)
            transaction.tag = call.local_tag
            if method == "UPDATE":
                return self._update(transaction, request, call, now)
            return self._final(transaction, 200, "OK", now) + [
                CallInfo(call, method, request.get("content-type"), request.body)]
        if method == "PRACK":
            return self._final(transaction, 481, "Call/Transaction Does Not Exist", now)
        if method in _KNOWN_REFUSED:
            return self._final(transaction, 405, "Method Not Allowed", now, [("Allow", ALLOW)])
        return self._final(transaction, 501, "Not Implemented", now, [("Allow", ALLOW)])

    # INVITE ------------------------------------------------------------------------------------

    def _invite(self, transaction, request, now):
        if request.call_id in self.calls:
            return self._final(transaction, 482, "Loop Detected", now)
        if len(self.calls) >= self.limits.max_dialogs:
            return [Drop("dialogs_full", transaction.source)] + self._final(
                transaction, 503, "Service Unavailable (too many calls)", now,
                [("Retry-After", str(self.retry_after))])
        session = uri_user(request.uri)
        if session is None:
            return self._final(transaction, 404, "Not Found (no session in the Request-URI)", now)
        problem = self._unacceptable_body(request)
        if problem is not None:
            return self._final(transaction, problem[0], problem[1], now, problem[2])
        return self._authenticate(transaction, request, session, now)

    def _unacceptable_body(self, request):
        """``(status, phrase, headers)`` when an SDP body cannot be read, else None."""
        if not request.body:
            return None
        content_type = (request.get("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/sdp" or request.get("content-encoding"):
            return 415, "Unsupported Media Type", [("Accept", "application/sdp")]
        try:
            Sdp.parse(request.body)
        except MalformedSdp:
            return 400, "Bad Request (SDP)", []
        return None

    def _reinvite(self, transaction, request, now):
        call = self._dialog_of(request)
        if call is None:
            return self._final(transaction, 481, "Call/Transaction Does Not Exist", now)
        transaction.tag = call.local_tag
        if call.state not in ("answered", "confirmed") or call.hangup_pending:
            return self._final(transaction, 500, "Server Internal Error (call not set up)",
                               now, [("Retry-After", "1")])
        problem = self._unacceptable_body(request)
        if problem is not None:
            return self._final(transaction, problem[0], problem[1], now, problem[2])
        if request.body and not same_media(request.body, call.offer):
            self.counts["reoffers_refused"] += 1
            return self._final(transaction, 488, "Not Acceptable Here", now,
                               [("Warning", f'304 {self.host} "media changes are not supported"')])
        transaction.owner = call
        call.ack_waits[request.cseq[0]] = transaction
        return self._final(transaction, 200, "OK", now, self._dialog_headers(call),
                           call.answer, "application/sdp")

    def _update(self, transaction, request, call, now):
        problem = self._unacceptable_body(request)
        if problem is not None:
            return self._final(transaction, problem[0], problem[1], now, problem[2])
        if not request.body:
            return self._final(transaction, 200, "OK", now, self._dialog_headers(call))
        if not same_media(request.body, call.offer) or call.answer is None:
            return self._final(transaction, 488, "Not Acceptable Here", now)
        return self._final(transaction, 200, "OK", now, self._dialog_headers(call),
                           call.answer, "application/sdp")

    def _ack(self, request, key, now, source):
        call = self.calls.get(request.call_id)
        if call is not None:
            transaction = call.ack_waits.pop(request.cseq[0], None)
            if transaction is not None:
                self.transactions.acknowledged(transaction, now)
                if header_param(request.get("to"), "tag") != call.local_tag:
                    self.counts["ack_to_tag_mismatch"] += 1
                actions = []
                if call.state == "answered":
                    call.state = "confirmed"
                    if call.offer is None:      # we offered in the 200: the answer
                        if request.body:
                            call.offer = request.body
                        else:
                            self.counts["acks_without_answer"] += 1
                    if call.hangup_pending is not None:
                        actions += self._send_bye(call, now)
                        self._end(call, call.hangup_pending, now, notify=False)
                    else:
                        actions.append(CallConfirmed(call, request.body or None))
                return actions
        transaction = self.transactions.find(key)
        if transaction is not None:
            # The ACK for a non-2xx final: it only stops the retransmissions (§17.2.1).
            self.transactions.acknowledged(transaction, now)
            return []
        if request.call_id in self.ended:
            return []               # late: after a BYE that crossed it (pjsua2), or ours
        return [Drop("unmatched_ack", source, f"Call-ID {request.call_id[:40]}")]

    def _cancel(self, transaction, key, now):
        invite = self.transactions.find(key[:-1] + ("INVITE",))
        if invite is None:
            return self._final(transaction, 481, "Call/Transaction Does Not Exist", now)
        transaction.tag = invite.tag
        actions = self._final(transaction, 200, "OK", now)
        if invite.answered:
            return actions          # too late: the call goes on, the caller sends BYE
        owner = invite.owner
        if isinstance(owner, _Pending):
            owner.done = True
        actions += self._final(invite, 487, "Request Terminated", now)
        if isinstance(owner, Call):
            actions += self._end(owner, "cancelled", now)
        return actions

    def _bye(self, transaction, request, now):
        call = self._dialog_of(request)
        if call is None:
            if request.call_id in self.ended:
                return self._final(transaction, 200, "OK", now)     # BYEs that crossed
            return self._final(transaction, 481, "Call/Transaction Does Not Exist", now)
        transaction.tag = call.local_tag
        actions = self._final(transaction, 200, "OK", now)
        if call.state == "offered":
            actions += self._final(call.invite_transaction, 487, "Request Terminated", now)
        if call.hangup_pending is not None:
            self._end(call, call.hangup_pending, now, notify=False)
            return actions
        return actions + self._end(call, "bye", now)

    def _dialog_of(self, request):
        """The call an in-dialog request belongs to: Call-ID and the caller's tag."""
        call = self.calls.get(request.call_id)
        if call is None or header_param(request.get("from"), "tag") != call.remote_tag:
            return None
        if header_param(request.get("to"), "tag") != call.local_tag:
            self.counts["to_tag_mismatch"] += 1
        return call

    # REGISTER ----------------------------------------------------------------------------

    def _register(self, transaction, request, now):
        try:
            session = uri_user(contact_uri(request.get("to"))[0])
        except ValueError:
            session = None
        if session is None:
            return self._final(transaction, 404, "Not Found (To names no session)", now)
        return self._authenticate(transaction, request, session, now)

    # Digest --------------------------------------------------------------------------------

    def _authenticate(self, transaction, request, session, now):
        values = request.values("authorization")
        if not values:
            return self._challenge(transaction, now, stale=False)
        credentials, problem = None, None
        for value in values:
            try:
                parsed = digest.parse_credentials(value)
            except digest.DigestError as error:
                problem = str(error)
                continue
            if credentials is None or parsed["realm"] == self.realm:
                credentials = parsed
        if credentials is None:
            return [Drop("bad_credentials", transaction.source, problem)] + self._challenge(
                transaction, now, stale=False)
        nonce = credentials["nonce"]
        verdict = self.nonces.check(nonce, now)
        if verdict == digest.FORGED:
            return [Drop("unknown_nonce", transaction.source)] + self._challenge(
                transaction, now, stale=False)
        if verdict == digest.STALE:
            return self._challenge(transaction, now, stale=True)
        nc = None
        if credentials["qop"] is not None:
            nc = int(credentials["nc"], 16)
            if not self.nonce_counts.acceptable(nonce, nc):
                return [Drop("nonce_count_replayed", transaction.source, f"nc {nc}")] + \
                    self._challenge(transaction, now, stale=True)
        player = credentials["username"]
        proof = digest.DigestProof(player, self.realm, request.method, credentials)
        ticket = _Pending(transaction, request, session, player, nonce, nc)
        transaction.owner = ticket
        return [Authenticate(ticket, session, player, proof, str(transaction.source[0]),
                             request.method)]

    def _challenge(self, transaction, now, stale):
        self.counts["challenges"] += 1
        nonce = self.nonces.issue(now)
        algorithms = digest.algorithms_for(transaction.request.get("user-agent"))
        headers = [("WWW-Authenticate", value)
                   for value in digest.challenges(self.realm, nonce, stale, algorithms)]
        return self._final(transaction, 401, "Unauthorized", now, headers)

    # Our BYE -------------------------------------------------------------------------------

    def _send_bye(self, call, now):
        call.local_cseq += 1
        branch = f"{MAGIC_COOKIE}{self.rng.getrandbits(64):016x}"
        transport = call.transport
        port = self.ports.get(transport)
        sent_by = self.host if port is None else f"{self.host}:{port}"
        request = Request("BYE", call.remote_target, [
            ("Via", f"SIP/2.0/{transport} {sent_by};branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", f"{call.local_uri};tag={call.local_tag}"),
            ("To", call.remote_uri),
            ("Call-ID", call.call_id),
            ("CSeq", f"{call.local_cseq} BYE"),
            ("User-Agent", self.agent),
        ])
        transaction, sends = self.transactions.send_request(
            branch, "BYE", request.to_bytes(RFC3261), transport, call.source, now)
        transaction.owner = call
        self.counts["byes_sent"] += 1
        return sends

    def _response(self, response, source, now):
        try:
            via = Via.parse(response.get("via") or "")
        except ValueError:
            return [Drop("malformed", source, "response without a readable Via")]
        transaction = self.transactions.match_response(response, via)
        if transaction is None:
            return [Drop("unexpected_response", source, f"status {response.status}")]
        if self.transactions.response_received(transaction, response.status, now):
            self.counts[f"bye_answered_{response.status // 100}xx"] += 1
        return []

    # Time ----------------------------------------------------------------------------------

    def _trying_now(self, transaction, now):
        self._trying.pop(transaction, None)
        if transaction.last_response is not None or transaction.state == "terminated":
            return []
        data = self._response_bytes(transaction.request, transaction.source, 100, "Trying")
        return self.transactions.respond(transaction, 100, data, now)

    def _timer(self, now):
        sends, expired = self.transactions.timer(now)
        actions = list(sends)
        trying = self._trying
        while trying:
            transaction, due = next(iter(trying.items()))
            if due > now:
                break
            actions += self._trying_now(transaction, now)
        for transaction, why in expired:
            owner = transaction.owner
            if why == "tu_timeout":
                if isinstance(owner, _Pending):
                    owner.done = True
                if isinstance(owner, Call) and owner.state == "offered":
                    actions += self._final(transaction, 480, "Temporarily Unavailable", now)
                    actions += self._end(owner, "unanswered", now)
                else:
                    actions += self._final(transaction, 500,
                                           "Server Internal Error (no answer in time)", now,
                                           [("Retry-After", "5")])
            elif why == "no_ack" and isinstance(owner, Call) and owner.state == "answered" \
                    and owner.ack_waits.get(owner.invite_cseq) is transaction:
                # §13.3.1.4: a 2xx never ACKed ends the call with a BYE.
                del owner.ack_waits[owner.invite_cseq]
                owner.state = "confirmed"
                actions += self._send_bye(owner, now)
                if owner.hangup_pending is not None:
                    self._end(owner, owner.hangup_pending, now, notify=False)
                else:
                    actions += self._end(owner, "no_ack", now)
            elif why == "timeout":
                self.counts["bye_timeouts"] += 1
        while self.ended and next(iter(self.ended.values())) <= now:
            self.ended.popitem(last=False)
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            self.registrar.expire(now)
        return actions

    # Bookkeeping -------------------------------------------------------------------------------

    def _end(self, call, reason, now, notify=True):
        if call.state == "ended":
            return []
        call.state = "ended"
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]
        for transaction in call.ack_waits.values():
            self.transactions.terminate(transaction)
        call.ack_waits.clear()
        if not call.invite_transaction.answered:
            self.transactions.terminate(call.invite_transaction)
        self.ended.pop(call.call_id, None)
        self.ended[call.call_id] = now + 64 * T1
        while len(self.ended) > self.limits.max_ended_remembered:
            self.ended.popitem(last=False)
        self.counts[f"calls_ended_{reason}"] += 1
        return [CallEnded(call, reason)] if notify else []

    def _tag(self):
        return f"{self.rng.getrandbits(48):012x}"

    def _contact(self, call):
        user = urllib.parse.quote(call.session, safe="-_.!~*'()&=+$,;?/")
        port = self.ports.get(call.transport)
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = host if port is None else f"{host}:{port}"
        if call.transport == "UDP":
            return f"<sip:{user}@{where}>"
        return f"<sip:{user}@{where};transport={call.transport.lower()}>"

    def _dialog_headers(self, call):
        return [("Contact", self._contact(call)), ("Allow", ALLOW), ("Supported", "")]

    def _capabilities(self):
        return [("Allow", ALLOW), ("Accept", "application/sdp"), ("Accept-Encoding", "identity"),
                ("Accept-Language", "en"), ("Supported", "")]

    def _final(self, transaction, status, phrase, now, headers=(), body=b"",
               content_type=None):
        if transaction.answered:
            return []
        if content_type is not None and body:
            headers = list(headers) + [("Content-Type", content_type)]
        data = self._response_bytes(transaction.request, transaction.source, status, phrase,
                                    transaction.tag, headers, body or b"")
        return self.transactions.respond(transaction, status, data, now)

    def _stateless(self, request, transport, source, status, phrase, headers=()):
        data = self._response_bytes(request, source, status, phrase, self._tag(), headers)
        return Send(data, source, transport)

    def _response_bytes(self, request, source, status, phrase, to_tag=None, headers=(),
                        body=b""):
        return response_bytes(request, source, status, phrase, to_tag, headers, body,
                              self.agent)


_COUNTED_METHODS = frozenset(ALLOW.replace(" ", "").split(","))


def response_bytes(request, source, status, phrase, to_tag, headers, body, agent):
    """A response to ``request``: its Vias (the top one with received/rport), From,
    To (with ``to_tag`` unless it has one, or on a 100), Call-ID and CSeq (§8.2.6.2),
    then ``headers`` and our Server header."""
    copied = []
    top = True
    for name, value in request.headers:
        long = long_name(name)
        if long == "via":
            if top:
                value = _via_returned(value, source)
                top = False
        elif long == "to":
            if to_tag and status != 100 and header_param(value, "tag") is None:
                value = f"{value};tag={to_tag}"
        elif long not in ("from", "call-id", "cseq"):
            continue
        copied.append((name, value))
    copied += list(headers)
    copied.append(("Server", agent))
    return Response(status, phrase, copied, body or b"").to_bytes(RFC3261)


def uri_user(uri):
    """The user part of a sip: or sips: URI, unescaped, or None."""
    if not uri:
        return None
    scheme, colon, rest = uri.strip().partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        return None
    at = rest.find("@")
    if at <= 0:
        return None
    user = urllib.parse.unquote(rest[:at].split(":", 1)[0])
    if not user or len(user) > 128 or not user.isprintable():
        return None
    return user


def _via_returned(value, source):
    """The top Via value as a response returns it (RFC 3261 §18.2.1, RFC 3581 §4):
    received when the source host is not the sent-by, and always with rport, whose
    value is then the source port. The client's parameters keep their order."""
    first, comma, rest = value.partition(",")
    try:
        via = Via.parse(first)
    except ValueError:
        return value
    host, port = source[0], source[1]
    wants_rport = via.has("rport")
    params = []
    for name, param in via.params:
        if name == "received":
            continue
        params.append(("rport", str(port)) if name == "rport" else (name, param))
    if wants_rport or via.host != host:
        params.append(("received", host))
    returned = str(Via(via.transport, via.host, via.port, params))
    return f"{returned}, {rest.strip()}" if comma else returned


def _salvage(data):
    """The start line and essential headers of an oversized request, or None (to answer 513)."""
    head = data[:65536]
    match = _HEAD_END.search(head)
    if match is not None:
        head = head[:match.start()]
    lines = head.decode("latin-1").split("\n")
    parts = lines[0].strip().split(" ")
    if len(parts) != 3 or parts[2] != "SIP/2.0" or not parts[0].isalpha():
        return None
    headers, seen = [], set()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        long = long_name(name.strip())
        if not colon or long not in ("via", "from", "to", "call-id", "cseq"):
            continue
        if long in seen and (long != "via" or len(headers) > 16):
            continue
        seen.add(long)
        headers.append((name.strip(), value.strip()))
    if not {"via", "cseq"} <= seen:
        return None
    return Request(parts[0], parts[1], headers)
