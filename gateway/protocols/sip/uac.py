"""The SIP client core: the gateway calls a user agent itself (``sip.invite``).

# implements RFC 3261 §17.1.1 (INVITE client transaction: Calling, Proceeding,
#   Completed; Timer A resends the INVITE over UDP, doubling; Timer B gives up after
#   64*T1; a 300-699 final is ACKed by the transaction itself, on the INVITE's branch,
#   and Timer D absorbs its retransmissions for 32 s on UDP)
# implements RFC 6026 §7.2 (Accepted: for Timer M, 64*T1, every retransmitted 2xx
#   goes to the core, which sends its ACK again)
# implements RFC 3261 §13.2.2.4 (the ACK of a 2xx is the core's: end to end, on a new
#   branch, to the dialog's remote target, with the INVITE's credentials; a 2xx whose
#   answer cannot be used is ACKed and then ended with a BYE)
# implements RFC 3261 §12.1.2 (UAC dialogs: the To tag of the 2xx, its Contact as the
#   remote target, its Record-Route reversed as the route set, loose routing) and
#   §12.2.1.1 (requests inside the dialog: CSeq counted up from the INVITE's)
# implements RFC 3261 §22.2, §22.3 and RFC 8760 through digest.authorization (401 and
#   407 challenges answered on a new INVITE with CSeq + 1: MD5 or SHA-256, qop=auth or
#   none; stale=true answered again; a second challenge that is not stale fails)
# implements RFC 3261 §9.1 (CANCEL only after a provisional response, on the INVITE's
#   branch; the INVITE is given up 64*T1 later without a final response), §15.1 (BYE
#   from either side; a BYE of ours is a non-INVITE client transaction, Timer E/F, and
#   a challenge to it is answered once), §14.2 (a re-INVITE or UPDATE from the callee
#   with the same media gets our offer again, other media 488)
# implements RFC 3581 (rport in our Via) and, on the server transactions of requests
#   from the callee, RFC 3261 §17.2 through TransactionTable

The SDP is the adapter's: :meth:`UserAgentClient.invite` takes our offer (an
RTP-MIDI one, gateway.protocols.sip.midi_sdp.offer) and :class:`Answered` hands
back the 2xx's body, the answer. Each call ends with exactly one of
:class:`Failed` (it was never answered) or :class:`Ended` (it was), whoever
ended it; :class:`Ringing` reports provisional responses.

Inputs: :meth:`~UserAgentClient.invite`, :meth:`~UserAgentClient.receive` (a
datagram, a framed stream message or a parsed message: responses to our
requests, and the callee's requests inside our dialogs),
:meth:`~UserAgentClient.timer`, :meth:`~UserAgentClient.hang_up` and
:meth:`~UserAgentClient.connection_lost`. Outputs are actions:
:class:`~gateway.actions.Send` (``via`` is the transport name), ``Drop`` and the
events above. Arbitrary bytes never raise out of it.

Requests inside a dialog go, over UDP, to the first route or else the remote
target when its host is an IP address, and otherwise to where the 2xx came
from; over TCP and TLS, down the connection the INVITE went on. Strict routers
(a route without ``;lr``) are treated as loose ones.

Sans-IO: nothing here reads the clock or touches a socket; ``now`` is a parameter.
"""

import collections
import ipaddress
import random
import typing
import urllib.parse

from gateway.actions import Drop, Send
from gateway.protocols.sip import digest
from gateway.protocols.sip.message import (
    RFC3261, MalformedMessage, Request, Response, Via, long_name, parse,
)
from gateway.protocols.sip.registrar import contact_uri, split_header_list
from gateway.protocols.sip.sdp import same_media
from gateway.protocols.sip.transactions import (
    MAGIC_COOKIE, RELIABLE, T1, TransactionTable, header_param, server_key,
)
from gateway.protocols.sip.uas import response_bytes

__all__ = ["UserAgentClient", "Target", "OutgoingCall", "Ringing", "Answered", "Failed",
           "Ended", "UacLimits", "parse_target", "ALLOW", "TIMER_D"]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"
TIMER_D = 32.0
"""RFC 3261 §17.1.1.2: at least 32 s on UDP absorbing retransmitted non-2xx finals."""
MAX_CHALLENGES = 3
"""Challenges answered per call (a stale nonce may be answered again, not forever)."""

# INVITE client transaction states (RFC 3261 §17.1.1, RFC 6026 §7.2).
CALLING = "calling"
PROCEEDING = "proceeding"
COMPLETED = "completed"
ACCEPTED = "accepted"
TERMINATED = "terminated"


class Target(typing.NamedTuple):
    """Whom to call: ``uri`` (Request-URI and To), ``transport`` (UDP, TCP, TLS),
    ``address`` (host, port) the INVITE goes to, ``user`` our From user and the
    digest user name, ``password`` for challenges (None: a challenge fails)."""

    uri: str
    transport: str
    address: tuple
    user: str = "netgateway"
    password: typing.Optional[str] = None
    display: typing.Optional[str] = None

    def __repr__(self):         # never the password
        return f"Target({self.uri!r}, {self.transport}, user={self.user!r})"


class Ringing(typing.NamedTuple):
    """A provisional response (180 Ringing, 183 Session Progress, ...) to ``call``."""

    call: typing.Any
    status: int
    reason: str


class Answered(typing.NamedTuple):
    """``call`` was answered (2xx, ACKed): ``sdp`` is the answer (None: there was none)."""

    call: typing.Any
    sdp: typing.Optional[bytes]


class Failed(typing.NamedTuple):
    """``call`` was never answered: ``status`` (None: no final response) and why;
    ``retry_after`` in seconds when the callee said (503, 486, 480...)."""

    call: typing.Any
    status: typing.Optional[int]
    reason: str
    retry_after: typing.Optional[float] = None


class Ended(typing.NamedTuple):
    """An answered ``call`` is over: 'bye' (the callee's), 'closed' (its connection),
    or the reason given to hang_up."""

    call: typing.Any
    reason: str


class UacLimits(typing.NamedTuple):
    max_calls: int = 256
    max_transactions: int = 1024
    max_ended_remembered: int = 1024


class OutgoingCall:
    """One call we make: its INVITE transactions, then its dialog (RFC 3261 §12)."""

    __slots__ = ("target", "call_id", "local_tag", "remote_tag", "local_uri", "remote_uri",
                 "local_cseq", "invite_cseq", "state", "offer", "answer", "remote_target",
                 "route_set", "transaction", "credentials", "challenge", "challenges", "nc",
                 "cnonce", "ack", "ack_to", "answered_from", "hangup_reason", "ring_deadline",
                 "created_at", "answered_at", "notified", "last_status", "ack_waits",
                 "bye_challenged", "_display_and_scheme")

    def __init__(self, target, call_id, local_tag, local_cseq, offer, now, ring_timeout):
        self.target = target
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = None
        scheme = "sips" if target.uri.lower().startswith("sips:") else "sip"
        display = f'"{_quoted(target.display)}" ' if target.display else ""
        self.local_uri = None           # set by the core (our host)
        self.remote_uri = f"<{target.uri}>"
        self.local_cseq = local_cseq
        self.invite_cseq = local_cseq
        self.state = "calling"          # -> ringing -> confirmed -> ended; cancelling
        self.offer = offer
        self.answer = None
        self.remote_target = target.uri
        self.route_set = []
        self.transaction = None         # the INVITE client transaction in progress
        self.credentials = None         # (header, value) sent on the last INVITE
        self.challenge = None
        self.challenges = 0
        self.nc = 0
        self.cnonce = None
        self.ack = None                 # our ACK of the 2xx, sent again on retransmissions
        self.ack_to = None
        self.answered_from = None
        self.hangup_reason = None
        self.ring_deadline = now + ring_timeout
        self.created_at = now
        self.answered_at = None
        self.notified = False           # Failed or Ended was returned
        self.last_status = None
        self.ack_waits = {}             # CSeq -> server transaction of a re-INVITE's 200
        self.bye_challenged = False
        self._display_and_scheme = (display, scheme)

    @property
    def transport(self):
        return self.target.transport

    @property
    def source(self):
        """Where the call's signalling goes (for status and drops)."""
        return self.target.address

    def describe(self):
        return {"state": self.state, "transport": self.transport,
                "last_status": self.last_status}

    def __repr__(self):
        return f"OutgoingCall({self.target.uri!r}, {self.state})"



class _InviteTransaction:
    """An INVITE we sent (§17.1.1): resent on Timer A until a response, given up on B."""

    __slots__ = ("branch", "data", "cseq", "call", "transport", "destination", "reliable",
                 "state", "retransmit_at", "interval", "timeout_at", "ends_at", "ack",
                 "final_status", "cancel", "cancelled_at", "request")

    def __init__(self, branch, request, data, cseq, call, destination, now):
        self.branch = branch
        self.request = request
        self.data = data
        self.cseq = cseq
        self.call = call
        self.transport = call.transport
        self.destination = destination
        self.reliable = self.transport in RELIABLE
        self.state = CALLING
        self.retransmit_at = None if self.reliable else now + T1     # Timer A
        self.interval = T1
        self.timeout_at = now + 64 * T1                               # Timer B
        self.ends_at = None
        self.ack = None
        self.final_status = None
        self.cancel = None              # the CANCEL's client transaction, once sent
        self.cancelled_at = None

    def __repr__(self):
        return f"InviteTransaction({self.cseq}, {self.state})"


def parse_target(uri, transport=None):
    """``(scheme, user, host, port, transport)`` of a ``sip:``/``sips:`` URI to call.

    ``transport`` (udp, tcp, tls; None: the URI's ``transport`` parameter, else
    TLS for sips: and UDP for sip:) comes back upper case; the port defaults to
    5061 for TLS and 5060 otherwise. ValueError when the URI cannot be called: not
    sip:/sips:, headers in it, no host, a host that is not an IP address (no DNS
    here), or a transport that contradicts the scheme.
    """
    if not isinstance(uri, str) or not uri or len(uri) > 512:
        raise ValueError(f"expected a sip: or sips: URI, got {uri!r}")
    scheme, colon, rest = uri.strip().partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("sip", "sips"):
        raise ValueError(f"expected a sip: or sips: URI, got {uri!r}")
    if "?" in rest:
        raise ValueError(f"URI headers (?...) are not supported, got {uri!r}")
    user, at, hostport = rest.rpartition("@")
    if not at:
        user, hostport = "", rest
    hostport, *params = hostport.split(";")
    user = urllib.parse.unquote(user.split(":", 1)[0])
    try:
        via = Via.parse(f"SIP/2.0/UDP {hostport}")
    except ValueError:
        raise ValueError(f"expected host[:port] in {uri!r}") from None
    host = via.host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected an IP address as the host (no DNS), got {host!r}") \
            from None
    uri_transport = None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "transport":
            uri_transport = value.strip().lower()
    chosen = (transport or uri_transport or ("tls" if scheme == "sips" else "udp")).lower()
    if chosen not in ("udp", "tcp", "tls"):
        raise ValueError(f"expected transport udp, tcp or tls, got {chosen!r}")
    if scheme == "sips" and chosen != "tls":
        raise ValueError(f"a sips: URI needs transport tls, got {chosen}")
    port = via.port or (5061 if chosen == "tls" else 5060)
    return scheme, user, host, port, chosen.upper()


class UserAgentClient:
    """The sans-IO RFC 3261 client: our INVITEs, their transactions and dialogs.

    ``host`` and ``ports`` (transport name -> port) are where the gateway is
    reached, written in our Via, From and Contact.
    """

    def __init__(self, host, ports, *, now, agent="netgateway", limits=UacLimits(),
                 rng=None):
        self.host = host
        self.ports = dict(ports)
        self.agent = agent
        self.limits = limits
        self.rng = rng or random.SystemRandom()
        self.calls = {}                                 # Call-ID -> OutgoingCall
        self.invites = {}                               # branch -> _InviteTransaction
        self.transactions = TransactionTable(max_live=limits.max_transactions)
        self.ended = collections.OrderedDict()          # Call-ID -> until (late messages)
        self.counts = collections.Counter()
        self.started_at = now

    # Verbs --------------------------------------------------------------------------

    def owns(self, call_id):
        """Whether messages with ``call_id`` are this core's (a call it made)."""
        return call_id in self.calls or call_id in self.ended

    def invite(self, target, offer, now, ring_timeout=60.0):
        """Call ``target`` with SDP ``offer``: ``(call, actions)``; the call is None (and
        the actions a Drop) when the core already carries ``max_calls``."""
        if len(self.calls) >= self.limits.max_calls:
            return None, [Drop("calls_full", target.address, "too many outgoing calls")]
        call_id = f"{self.rng.getrandbits(96):024x}@{self.host}"
        call = OutgoingCall(target, call_id, self._tag(), self.rng.randrange(1, 2 ** 30),
                            offer, now, ring_timeout)
        display, scheme = call._display_and_scheme
        user = urllib.parse.quote(target.user, safe="-_.!~*'()&=+$,;?/")
        call.local_uri = f"{display}<{scheme}:{user}@{self._host()}>"
        self.calls[call_id] = call
        self.counts["invites"] += 1
        self.counts[f"calls_{target.transport.lower()}"] += 1
        return call, self._send_invite(call, now)

    def hang_up(self, call, now, reason="hung_up"):
        """End ``call``: BYE once answered, CANCEL while ringing (or as soon as the
        callee says anything); :class:`Ended` or :class:`Failed` at once."""
        if call.state == "confirmed":
            return self._send_bye(call, now) + self._end(call, reason, now)
        if call.state in ("calling", "ringing"):
            call.hangup_reason = reason
            actions = []
            if call.state == "ringing":
                actions += self._send_cancel(call, now)
            call.state = "cancelling"
            return actions + self._notify(call, Failed(call, None, reason))
        return []

    def connection_lost(self, transport, address, now):
        """The stream connection to ``address`` closed: its calls are over."""
        actions = []
        for call in [call for call in self.calls.values()
                     if call.transport == transport and call.target.address == address]:
            if call.transaction is not None:
                self._terminate_invite(call.transaction)
            if call.state == "confirmed":
                actions += self._end(call, "closed", now)
            else:
                actions += self._notify(call, Failed(call, None, "connection lost"))
                actions += self._end(call, "closed", now)
        return actions

    # Inputs -------------------------------------------------------------------------

    def receive(self, data, transport, source, now):
        """Actions for one message (bytes, or a parsed Request/Response) from ``source``."""
        try:
            if isinstance(data, (Request, Response)):
                message = data
            else:
                if not data.strip(b"\r\n\0 \t"):
                    return []           # a CRLF keep-alive
                try:
                    message = parse(data)
                except MalformedMessage as error:
                    return [Drop("malformed", source, str(error))]
            if isinstance(message, Response):
                return self._response(message, source, now)
            return self._request(message, transport, source, now)
        except Exception as error:      # a bug must not take the door down
            return [Drop("internal_error", source, f"{type(error).__name__}: {error}"[:200])]

    def timer(self, now):
        """Retransmissions, Timers B, D and M, ring timeouts, and the server side's timers."""
        try:
            return self._timer(now)
        except Exception as error:
            return [Drop("internal_error", None, f"{type(error).__name__}: {error}"[:200])]

    def totals(self):
        return {"calls": len(self.calls), "transactions": len(self.transactions)
                + len(self.invites), **dict(self.counts)}

    # Our INVITE ---------------------------------------------------------------------

    def _send_invite(self, call, now):
        branch = self._branch()
        cseq = call.local_cseq
        call.invite_cseq = cseq
        headers = self._common(call, "INVITE", cseq, branch, in_dialog=False)
        headers += [("Contact", self._contact(call)), ("Allow", ALLOW),
                    ("User-Agent", self.agent)]
        if call.credentials is not None:
            headers.append(call.credentials)
        headers.append(("Content-Type", "application/sdp"))
        request = Request("INVITE", call.target.uri, headers, call.offer)
        data = request.to_bytes(RFC3261)
        transaction = _InviteTransaction(branch, request, data, cseq, call,
                                         call.target.address, now)
        self.invites[branch] = transaction
        call.transaction = transaction
        return [Send(data, transaction.destination, call.transport)]

    def _common(self, call, method, cseq, branch, in_dialog=True):
        to = call.remote_uri
        if in_dialog and call.remote_tag:
            to = f"{to};tag={call.remote_tag}"
        headers = [("Via", self._via(call.transport, branch)), ("Max-Forwards", "70"),
                   ("From", f"{call.local_uri};tag={call.local_tag}"), ("To", to),
                   ("Call-ID", call.call_id), ("CSeq", f"{cseq} {method}")]
        if in_dialog:
            headers += [("Route", route) for route in call.route_set]
        return headers

    def _send_cancel(self, call, now):
        """CANCEL the INVITE in progress (§9.1): its Request-URI, Call-ID, To, From,
        CSeq number and the top Via (its branch)."""
        transaction = call.transaction
        if transaction is None or transaction.state != PROCEEDING or transaction.cancel:
            return []
        invite = transaction.request
        headers = [(name, value) for name, value in invite.headers
                   if long_name(name) in ("via", "max-forwards", "from", "to", "call-id", "route")]
        headers.append(("CSeq", f"{transaction.cseq} CANCEL"))
        data = Request("CANCEL", invite.uri, headers).to_bytes(RFC3261)
        cancel, sends = self.transactions.send_request(
            transaction.branch, "CANCEL", data, call.transport, transaction.destination, now)
        cancel.owner = call
        transaction.cancel = cancel
        transaction.cancelled_at = now
        self.counts["cancels_sent"] += 1
        return sends

    def _non_2xx_ack(self, transaction, response):
        """The transaction's ACK of a 300-699 final (§17.1.1.3)."""
        invite = transaction.request
        headers = []
        for name, value in invite.headers:
            long = long_name(name)
            if long == "via" and not headers:
                headers.append((name, value))
            elif long in ("max-forwards", "from", "call-id", "route"):
                headers.append((name, value))
        headers.append(("To", response.get("to") or invite.get("to")))
        headers.append(("CSeq", f"{transaction.cseq} ACK"))
        return Request("ACK", invite.uri, headers).to_bytes(RFC3261)

    # Responses ------------------------------------------------------------------------

    def _response(self, response, source, now):
        try:
            via = Via.parse(response.get("via") or "")
        except ValueError:
            return [Drop("malformed", source, "response without a readable Via")]
        cseq = response.cseq
        if cseq is None:
            return [Drop("malformed", source, "response without CSeq")]
        branch = via.param("branch") or ""
        if (cseq[1] or "").upper() == "INVITE":
            transaction = self.invites.get(branch)
            if transaction is None or transaction.cseq != cseq[0]:
                return self._stray_invite_response(response, source, now)
            return self._invite_response(transaction, response, source, now)
        client = self.transactions.match_response(response, via)
        if client is None:
            return [Drop("unexpected_response", source, f"status {response.status}")]
        if not self.transactions.response_received(client, response.status, now):
            return []
        method = client.method
        self.counts[f"{method.lower()}_answered_{response.status // 100}xx"] += 1
        call = client.owner
        if method == "BYE" and response.status in (401, 407) and isinstance(
                call, OutgoingCall) and not call.bye_challenged:
            return self._bye_again(call, response, now)
        return []

    def _stray_invite_response(self, response, source, now):
        """A 2xx that no transaction is waiting for: retransmitted after Timer M, or a
        fork. ACK it again when it is our dialog's; otherwise drop it."""
        call = self.calls.get(response.call_id)
        if call is not None and 200 <= response.status < 300 and call.ack is not None \
                and response.cseq[0] == call.invite_cseq:
            self.counts["2xx_retransmissions"] += 1
            return [Send(call.ack, call.ack_to, call.transport)]
        return [Drop("unexpected_response", source, f"status {response.status}")]

    def _invite_response(self, transaction, response, source, now):
        status = response.status
        call = transaction.call
        if status < 200:
            if transaction.state != CALLING and transaction.state != PROCEEDING:
                return []
            transaction.state = PROCEEDING
            transaction.retransmit_at = None
            actions = []
            if call.state == "calling":
                call.state = "ringing"
            if call.state == "cancelling" and transaction.cancel is None:
                actions += self._send_cancel(call, now)
            if status > 100 and call.state == "ringing":
                call.last_status = status
                actions.append(Ringing(call, status, response.reason))
            return actions
        if status < 300:
            return self._invite_2xx(transaction, response, source, now)
        # 300-699: the transaction ACKs it; retransmissions are absorbed (Timer D).
        if transaction.state == COMPLETED:
            return [Send(transaction.ack, transaction.destination, transaction.transport)]
        if transaction.state not in (CALLING, PROCEEDING):
            return []
        transaction.state = COMPLETED
        transaction.final_status = status
        transaction.retransmit_at = None
        transaction.ack = self._non_2xx_ack(transaction, response)
        transaction.ends_at = now + (0 if transaction.reliable else TIMER_D)
        actions = [Send(transaction.ack, transaction.destination, transaction.transport)]
        if call.transaction is transaction:
            call.transaction = None
        call.last_status = status
        self.counts[f"invite_answered_{status // 100}xx"] += 1
        if status in (401, 407) and call.state in ("calling", "ringing"):
            again = self._challenged(call, response, now)
            if again is not None:
                return actions + again
        if call.state == "cancelling":
            return actions + self._end(call, call.hangup_reason or "cancelled", now)
        reason = response.reason or str(status)
        if status in (401, 407):
            reason = self._challenge_failure(call, response)
        return actions + self._notify(call, Failed(call, status, reason,
                                                   _retry_after(response))) \
            + self._end(call, "failed", now)

    def _invite_2xx(self, transaction, response, source, now):
        call = transaction.call
        tag = header_param(response.get("to") or "", "tag")
        if transaction.state == ACCEPTED:
            if tag == call.remote_tag and call.ack is not None:
                self.counts["2xx_retransmissions"] += 1
                return [Send(call.ack, call.ack_to, call.transport)]
            return self._fork(call, response, source, now)
        if transaction.state not in (CALLING, PROCEEDING):
            return []
        transaction.state = ACCEPTED
        transaction.final_status = response.status
        transaction.retransmit_at = None
        transaction.ends_at = now + 64 * T1                           # Timer M
        if call.transaction is transaction:
            call.transaction = None
        self.counts["invite_answered_2xx"] += 1
        call.last_status = response.status
        if call.state == "ended":
            return self._fork(call, response, source, now)
        # §12.1.2: the dialog.
        call.remote_tag = tag
        contact = response.get("contact")
        try:
            call.remote_target = contact_uri(contact)[0] if contact else call.target.uri
        except ValueError:
            call.remote_target = call.target.uri
        call.route_set = list(reversed([route for value in response.values("record-route")
                                        for route in split_header_list(value)]))
        call.answered_from = source
        call.answered_at = now
        call.answer = response.body or None
        actions = self._send_ack(call, now)
        if call.state == "cancelling":
            # Answered as we hung up (the CANCEL crossed the 2xx): ACK, then BYE.
            call.state = "confirmed"
            return actions + self._send_bye(call, now) + self._end(
                call, call.hangup_reason or "cancelled", now, notify=False)
        call.state = "confirmed"
        return actions + [Answered(call, call.answer)]

    def _send_ack(self, call, now):
        """The ACK of the 2xx (§13.2.2.4): in the dialog, a new branch, the INVITE's
        CSeq number and credentials; kept to answer retransmitted 2xx."""
        branch = self._branch()
        headers = self._common(call, "ACK", call.invite_cseq, branch)
        if call.credentials is not None:
            headers.append(call.credentials)
        headers.append(("User-Agent", self.agent))
        call.ack = Request("ACK", call.remote_target, headers).to_bytes(RFC3261)
        call.ack_to = self._dialog_destination(call)
        return [Send(call.ack, call.ack_to, call.transport)]

    def _fork(self, call, response, source, now):
        """A 2xx from another dialog than ours (forking), or after the call ended:
        ACK and BYE it (§13.2.2.4)."""
        self.counts["2xx_other_dialog"] += 1
        tag = header_param(response.get("to") or "", "tag")
        other = OutgoingCall(call.target, call.call_id, call.local_tag, call.invite_cseq,
                             call.offer, now, 0)
        other.local_uri = call.local_uri
        other.remote_tag = tag
        other.credentials = call.credentials
        contact = response.get("contact")
        try:
            other.remote_target = contact_uri(contact)[0] if contact else call.target.uri
        except ValueError:
            other.remote_target = call.target.uri
        other.route_set = list(reversed([route for value in response.values("record-route")
                                         for route in split_header_list(value)]))
        other.answered_from = source
        other.notified = True
        other.state = "ended"
        return self._send_ack(other, now) + self._send_bye(other, now)

    def _challenged(self, call, response, now):
        """A new INVITE answering a 401/407 (None: it cannot or must not be answered)."""
        target = call.target
        if target.password is None or call.challenges >= MAX_CHALLENGES:
            return None
        challenge = digest.pick_challenge(response)
        if challenge is None:
            return None
        if call.credentials is not None and not challenge.stale:
            return None                 # our credentials were refused
        call.challenges += 1
        if call.challenge is None or call.challenge.nonce != challenge.nonce:
            call.nc = 0
        call.challenge = challenge
        call.nc += 1
        call.cnonce = f"{self.rng.getrandbits(64):016x}"
        call.credentials = digest.authorization(challenge, target.user, target.password,
                                                "INVITE", target.uri, call.nc, call.cnonce)
        call.local_cseq += 1
        call.state = "calling"
        self.counts["challenges_answered"] += 1
        return self._send_invite(call, now)

    def _challenge_failure(self, call, response):
        if call.target.password is None:
            return "challenged, and no password is configured"
        if call.credentials is not None:
            return "our credentials were refused"
        if digest.pick_challenge(response) is None:
            return "no digest challenge we can answer (MD5 or SHA-256, qop auth or none)"
        return "challenged too often"

    # Our BYE ------------------------------------------------------------------------------

    def _send_bye(self, call, now, credentials=None):
        call.local_cseq += 1
        branch = self._branch()
        headers = self._common(call, "BYE", call.local_cseq, branch)
        if credentials is not None:
            headers.append(credentials)
        headers.append(("User-Agent", self.agent))
        data = Request("BYE", call.remote_target, headers).to_bytes(RFC3261)
        transaction, sends = self.transactions.send_request(
            branch, "BYE", data, call.transport, self._dialog_destination(call), now)
        transaction.owner = call
        self.counts["byes_sent"] += 1
        return sends

    def _bye_again(self, call, response, now):
        call.bye_challenged = True
        challenge = digest.pick_challenge(response)
        if challenge is None or call.target.password is None:
            return []
        nc = call.nc + 1 if call.challenge is not None and \
            call.challenge.nonce == challenge.nonce else 1
        call.nc = nc
        credentials = digest.authorization(challenge, call.target.user, call.target.password,
                                           "BYE", call.remote_target, nc,
                                           f"{self.rng.getrandbits(64):016x}")
        self.counts["bye_challenges_answered"] += 1
        return self._send_bye(call, now, credentials)

    # Requests from the callee ---------------------------------------------------------------

    def _request(self, request, transport, source, now):
        via_values = request.values("via")
        try:
            top = Via.parse(via_values[0]) if via_values else None
        except ValueError:
            top = None
        cseq = request.cseq
        if top is None or cseq is None or (cseq[1] or "").upper() != request.method \
                or not request.get("from") or not request.get("to"):
            return [Drop("malformed", source, "request without Via, From, To or CSeq")]
        method = request.method
        self.counts[f"requests_{method}"] += 1
        call = self.calls.get(request.call_id)
        in_dialog = call is not None and call.remote_tag is not None \
            and header_param(request.get("from"), "tag") == call.remote_tag
        key = server_key(request, top)
        if method == "ACK":
            if in_dialog:
                waiting = call.ack_waits.pop(cseq[0], None)
                if waiting is not None:
                    self.transactions.acknowledged(waiting, now)
                    return []
            existing = self.transactions.find(key)
            if existing is not None:
                self.transactions.acknowledged(existing, now)
            return []
        existing = self.transactions.find(key)
        if existing is not None and existing.request.cseq[0] == cseq[0]:
            return self.transactions.retransmission(existing)
        if self.transactions.full():
            return [Drop("transactions_full", source)]
        transaction = self.transactions.create(key, request, transport, source, now)
        transaction.tag = call.local_tag if call is not None else self._tag()
        if method == "BYE":
            if not in_dialog:
                if request.call_id in self.ended:
                    return self._answer(transaction, 200, "OK", now)    # BYEs that crossed
                return self._answer(transaction, 481, "Call/Transaction Does Not Exist", now)
            actions = self._answer(transaction, 200, "OK", now)
            return actions + self._end(call, "bye", now)
        if not in_dialog or call.state != "confirmed":
            return self._answer(transaction, 481, "Call/Transaction Does Not Exist", now)
        if method in ("INVITE", "UPDATE"):
            return self._reoffer(transaction, request, call, now)
        if method in ("OPTIONS", "INFO", "MESSAGE"):
            headers = [("Allow", ALLOW), ("Accept", "application/sdp")] \
                if method == "OPTIONS" else []
            return self._answer(transaction, 200, "OK", now, headers)
        if method == "CANCEL":
            return self._answer(transaction, 200, "OK", now)        # its INVITE is answered
        return self._answer(transaction, 501, "Not Implemented", now, [("Allow", ALLOW)])

    def _reoffer(self, transaction, request, call, now):
        """A re-INVITE or UPDATE: the same media (a session refresh) or none gets our
        offer again; other media 488 (§14.2)."""
        if request.body and not same_media(request.body, call.answer):
            self.counts["reoffers_refused"] += 1
            return self._answer(transaction, 488, "Not Acceptable Here", now,
                                [("Warning", f'304 {self.host} "media changes are not'
                                             ' supported"')])
        if request.method == "INVITE":
            call.ack_waits[request.cseq[0]] = transaction
        return self._answer(transaction, 200, "OK", now,
                            [("Contact", self._contact(call)), ("Allow", ALLOW),
                             ("Content-Type", "application/sdp")], call.offer)

    def _answer(self, transaction, status, phrase, now, headers=(), body=b""):
        data = response_bytes(transaction.request, transaction.source, status, phrase,
                               transaction.tag, headers, body, self.agent)
        return self.transactions.respond(transaction, status, data, now)

    # Time ----------------------------------------------------------------------------------

    def _timer(self, now):
        actions = []
        for transaction in list(self.invites.values()):
            call = transaction.call
            state = transaction.state
            if state == CALLING:
                if now >= transaction.timeout_at:                     # Timer B
                    self._terminate_invite(transaction)
                    self.counts["invite_timeouts"] += 1
                    actions += self._notify(call, Failed(call, None, "no response"))
                    actions += self._end(call, "failed", now)
                    continue
                if transaction.retransmit_at is not None and now >= transaction.retransmit_at:
                    actions.append(Send(transaction.data, transaction.destination,
                                        transaction.transport))
                    transaction.interval *= 2                         # Timer A
                    transaction.retransmit_at = max(
                        now, transaction.retransmit_at + transaction.interval)
                    self.counts["invite_retransmissions"] += 1
            elif state == PROCEEDING:
                if transaction.cancelled_at is not None \
                        and now >= transaction.cancelled_at + 64 * T1:
                    self._terminate_invite(transaction)               # §9.1
                    actions += self._end(call, call.hangup_reason or "cancelled", now)
                elif call.state == "ringing" and now >= call.ring_deadline:
                    self.counts["ring_timeouts"] += 1
                    call.hangup_reason = "no answer"
                    actions += self._send_cancel(call, now)
                    call.state = "cancelling"
                    actions += self._notify(call, Failed(call, None, "no answer"))
            elif transaction.ends_at is not None and now >= transaction.ends_at:
                self._terminate_invite(transaction)                   # Timers D and M
        sends, expired = self.transactions.timer(now)
        actions += sends
        for transaction, why in expired:
            if why == "timeout":
                self.counts[f"{transaction.method.lower()}_timeouts"] += 1
            elif why == "no_ack":
                self.counts["reinvite_no_ack"] += 1
        while self.ended and next(iter(self.ended.values())) <= now:
            self.ended.popitem(last=False)
        return actions

    # Bookkeeping ----------------------------------------------------------------------------

    def _terminate_invite(self, transaction):
        transaction.state = TERMINATED
        if self.invites.get(transaction.branch) is transaction:
            del self.invites[transaction.branch]
        if transaction.call.transaction is transaction:
            transaction.call.transaction = None

    def _notify(self, call, event):
        if call.notified:
            return []
        call.notified = True
        return [event]

    def _end(self, call, reason, now, notify=True):
        """The call is over (it stays known for 64*T1, for late messages)."""
        actions = []
        if notify and call.state == "confirmed":
            actions = self._notify(call, Ended(call, reason))
        call.notified = True
        call.state = "ended"
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]
        for waiting in call.ack_waits.values():
            self.transactions.terminate(waiting)
        call.ack_waits.clear()
        transaction = call.transaction
        if transaction is not None and transaction.state == CALLING and not transaction.cancel:
            # Nothing came back yet: a CANCEL may not be sent (§9.1); stop resending,
            # and a late 2xx is ACKed and ended through _stray_invite_response's Drop.
            self._terminate_invite(transaction)
        self.ended.pop(call.call_id, None)
        self.ended[call.call_id] = now + 64 * T1
        while len(self.ended) > self.limits.max_ended_remembered:
            self.ended.popitem(last=False)
        self.counts[f"calls_ended_{reason.replace(' ', '_')}"] += 1
        return actions

    def _dialog_destination(self, call):
        if call.transport in RELIABLE:
            return call.target.address
        uri = call.route_set[0] if call.route_set else call.remote_target
        try:
            address = _uri_address(contact_uri(uri)[0] if "<" in uri else uri)
        except ValueError:
            address = None
        if address is not None:
            return address
        return call.answered_from or call.target.address

    def _branch(self):
        return f"{MAGIC_COOKIE}{self.rng.getrandbits(64):016x}"

    def _tag(self):
        return f"{self.rng.getrandbits(48):012x}"

    def _host(self):
        return f"[{self.host}]" if ":" in self.host else self.host

    def _via(self, transport, branch):
        port = self.ports.get(transport)
        sent_by = self._host() if port is None else f"{self._host()}:{port}"
        return f"SIP/2.0/{transport} {sent_by};branch={branch};rport"

    def _contact(self, call):
        display, scheme = call._display_and_scheme
        user = urllib.parse.quote(call.target.user, safe="-_.!~*'()&=+$,;?/")
        port = self.ports.get(call.transport)
        where = self._host() if port is None else f"{self._host()}:{port}"
        if call.transport == "UDP":
            return f"<{scheme}:{user}@{where}>"
        return f"<{scheme}:{user}@{where};transport={call.transport.lower()}>"


def _quoted(text):
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _uri_address(uri):
    """``(host, port)`` of a sip: URI whose host is an IP address, else None."""
    scheme, colon, rest = uri.strip().partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        return None
    hostport = rest.rpartition("@")[2].split(";", 1)[0].split("?", 1)[0]
    try:
        via = Via.parse(f"SIP/2.0/UDP {hostport}")
        ipaddress.ip_address(via.host)
    except ValueError:
        return None
    return via.host, via.port or (5061 if scheme.lower() == "sips" else 5060)


def _retry_after(response):
    value = response.get("retry-after")
    if not value:
        return None
    digits = value.strip().split(None, 1)[0].split(";", 1)[0].split("(", 1)[0]
    return float(digits) if digits.isdigit() and len(digits) < 8 else None
