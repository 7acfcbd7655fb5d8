"""The session server sfront 0.98 clients expect, with every client's media anchored here.

# implements RFC 3261 §8.2.6 and §17.2.1 (a UAS answers every request, and answers a
#   retransmitted request with the response it already sent), §18.2.1 (received; RFC 3581
#   rport) and §15 (BYE ends the call)
# follows sfront 0.98 networking (shared/protocols/sfront.md): §2.2 the replies the client
#   accepts (401 SignSDP challenge, 200, 403 and 503 refusals), §2.3 the INVITE that
#   introduces a member, §2.4 NAT and INFO keep-alives, §2.5 shutdown, §3 media, and §4
#   design A: one gateway member per client, every client's RTP-MIDI received here and
#   re-signed as that member towards the others
# implements RFC 6295 (RTP-MIDI with the recovery journal, through
#   gateway.protocols.rtpmidi.media) and RFC 3550 §6.4 receiver reports both ways

How a client joins (each step is one datagram in, one or two out):

1. Its RTP and RTCP sockets each send an INVITE whose ``s=`` is the session
   name keyed with the passphrase. An ``s=`` that no declared session has is
   refused with 403 (the client exits); a known one is challenged with a
   401 carrying a fresh one-time nonce.
2. The signed resend must carry that nonce (header and ``a=nonce``), an SDP
   digest made with the session's key, and a fresh ``t=``. Anything else is
   refused with 403 and counts towards the source's throttle, which then
   answers 503 without looking.
3. The RTP side's verified INVITE yields :class:`Admit`: the adapter asks
   the bus; :meth:`SessionServer.admitted` answers 200 and introduces the
   gateway's member to the client (an INVITE signed with a computed nonce),
   :meth:`SessionServer.refused` answers 503 (full) or 403.
4. Media: the client sends its RTP-MIDI to the session's media port, every
   packet signed; the server identifies the client by source address
   (its SSRC is 0 on 64-bit builds), verifies, and hands the MIDI on as
   :class:`Played`. What the session plays reaches the client from the
   same port, signed, on the client's own
   :class:`~gateway.protocols.rtpmidi.media.RtpMidiStream` (own sequence
   numbers and recovery journal). Receiver reports go both ways every
   :data:`REPORT_INTERVAL`: ours let the client trim its journal, the
   client's trim ours.
5. A SIP BYE, an RTCP BYE or :data:`RTCP_TIMEOUT` without RTCP ends the
   client (:class:`~gateway.actions.PeerLeft`); the gateway ends its member
   at a client with a signed RTCP BYE.

Sans-IO: datagrams, the local port they arrived on and ``now`` in; actions out.
``now`` is Unix time in seconds (the reactor's clock): SDP ``t=`` values are
compared with it and made from it.
"""

import hmac
import ipaddress
import random
import typing

from gateway.actions import Drop, PeerAlive, PeerLeft, Send
from gateway.bus.throttle import JoinThrottle
from gateway.bus.values import (GATEWAY_FULL, MAX_NAME_LENGTH, SESSION_FULL, THROTTLED,
                                UNKNOWN_SESSION, WRONG_PASSPHRASE)
from gateway.protocols.rtpmidi.media import RtpMidiStream
from gateway.protocols.rtpmidi.payload import MalformedPacket, RtpMidiPacket
from gateway.protocols.sip import sfront
from gateway.protocols.sip.message import MalformedMessage, Request, Response, Via, parse
from gateway.protocols.sip.sdp import NTP_UNIX_OFFSET, MalformedSdp, Sdp

__all__ = ["SessionServer", "DeclaredSession", "Client", "Admit", "Played", "Refused",
           "REPORT_INTERVAL", "RTCP_TIMEOUT"]

REPORT_INTERVAL = 4.0
"""Seconds between our receiver reports to a client (sfront's own are every 5 s)."""

RTCP_TIMEOUT = 25.0
"""A client silent on RTCP this long is gone (sfront uses the same for its members)."""

INVITE_RETRY = 5.0
INVITE_TRIES = 4
"""Our member INVITE is resent until the client's RTCP shows it accepted the member."""

NONCE_LIFETIME = 60.0
# How long the bus may take to answer a join before the client is told to come back later.
ADMIT_TIMEOUT = 10.0
JOIN_TIMEOUT = "join_timeout"
MAX_PENDING_LEGS = 512
MAX_FUTURE = 5400
MAX_PAST = 21600
"""``t=`` freshness, the client's own limits (sfront.md §2.3)."""

SIP_RTP = "sip"
SIP_RTCP = "sip-rtcp"
MEDIA_RTP = "media"
MEDIA_RTCP = "media-rtcp"

_REFUSAL_STATUS = {SESSION_FULL: (503, "Service Unavailable (session full)"),
                   GATEWAY_FULL: (503, "Service Unavailable (gateway full)"),
                   THROTTLED: (503, "Service Unavailable (too many failed attempts)"),
                   JOIN_TIMEOUT: (503, "Service Unavailable (the session did not answer)")}
_FORBIDDEN = (403, "Forbidden")
_U32 = 0xFFFFFFFF


class Admit(typing.NamedTuple):
    """A client proved it knows ``client.session``'s passphrase: join it to the bus."""

    client: typing.Any


class Played(typing.NamedTuple):
    """``client`` played ``events`` (MidiEvents); ``midi_list`` is their RTP-MIDI list as it came."""

    client: typing.Any
    events: list
    midi_list: typing.Optional[bytes]


class Refused(typing.NamedTuple):
    """A join this server's own check refused, for the bus to count, throttle and log.

    The keyed name and the signature stand for the passphrase, so the bus
    never sees the credential; ``session`` is the declared name, or "" when
    the keyed ``s=`` names no declared session (it is made from the passphrase
    tried, so it is never logged); ``reason`` is a bus refusal code.
    """

    source: typing.Any
    session: str
    reason: str


class DeclaredSession:
    """A declared session as sfront clients reach it: its key, keyed name and media port."""

    __slots__ = ("name", "key", "signer", "keyed_name", "media_port")

    def __init__(self, name, passphrase, media_port):
        self.name = name
        self.key = sfront.session_key(passphrase)
        self.signer = sfront.Signer(self.key)
        # sfront names a session called "mirror" by a fixed hash, not by its key (§1).
        self.keyed_name = (sfront.MIRROR_KEYED_NAME if name == sfront.MIRROR_NAME
                           else sfront.keyed_name(self.key, name))
        self.media_port = media_port

    def __repr__(self):
        return f"DeclaredSession({self.name!r}, media port {self.media_port})"


class _Leg:
    """One of a client's two SIP sockets, as the server sees it (§2.1)."""

    __slots__ = ("call_id", "source", "nonce", "issued_at", "last_request", "last_reply")

    def __init__(self, call_id, source, now):
        self.call_id = call_id
        self.source = source
        self.nonce = None
        self.issued_at = now
        self.last_request = None
        self.last_reply = None


class Client:
    """One sfront client: its SIP legs, where its media comes from and goes, its stream."""

    __slots__ = ("call_id", "session", "name", "admitting_since", "advertised", "clock_rate",
                 "payload_type", "rtp_source", "rtcp_source", "rtp_to", "rtcp_to", "nat", "state",
                 "member_ssrc", "member_call_id", "member_cseq", "member_nonce",
                 "invite_due", "invite_tries", "accepted", "rtcp_deadline", "report_due",
                 "reported_highest", "stream", "packets_verified", "packets_refused",
                 "joined_at", "rtp_confirmed", "rtcp_confirmed", "created_at", "keepalives")

    def __init__(self, call_id, session, rng, now):
        self.call_id = call_id
        self.created_at = now
        self.session = session
        self.name = None
        self.advertised = None
        self.clock_rate = None
        self.payload_type = None
        self.rtp_source = None
        self.rtcp_source = None
        self.rtp_to = None
        self.rtcp_to = None
        self.nat = False
        self.state = "verifying"        # -> admitting -> joined -> gone
        self.admitting_since = None
        ssrc = rng.getrandbits(32)
        while ssrc == call_id & _U32 or ssrc == 0:
            ssrc = rng.getrandbits(32)
        self.member_ssrc = ssrc
        self.member_call_id = rng.getrandbits(32)
        self.member_cseq = 0
        self.member_nonce = None
        self.invite_due = None
        self.invite_tries = 0
        self.accepted = False
        self.rtcp_deadline = None
        self.report_due = None
        self.reported_highest = None
        self.stream = None
        self.packets_verified = 0
        self.packets_refused = 0
        self.joined_at = None
        self.rtp_confirmed = False
        self.rtcp_confirmed = False
        self.keepalives = 0

    @property
    def rtcp_ssrc(self):
        """The SSRC the client's RTCP carries: the low 32 bits of its Call-ID (§3.3)."""
        return self.call_id & _U32

    def rtp_packet(self, prepared, timestamp, now):
        """The signed datagram carrying ``prepared`` to this client."""
        return self.session.signer.sign(self.stream.packet(prepared, timestamp, now))

    def guard_packet(self, timestamp, now):
        data = self.stream.guard_packet(timestamp, now)
        return None if data is None else self.session.signer.sign(data)

    def describe(self):
        receiver = self.stream.journal_receiver if self.stream is not None else None
        host, port = self.rtp_source
        return {"peer": f"{host}:{port}", "nat": self.nat, "accepted": self.accepted,
                "keepalives": self.keepalives,
                "clock_rate": self.clock_rate,
                "packets_verified": self.packets_verified,
                "packets_refused": self.packets_refused,
                "packets_lost": receiver.lost_packets if receiver else 0,
                "gaps_repaired": receiver.repaired_gaps if receiver else 0}

    def __repr__(self):
        return f"Client({self.name!r} in {self.session.name!r}, {self.state})"


class SessionServer:
    """The sans-IO session server: declared sessions, clients, their SIP and media.

    ``sessions`` are :class:`DeclaredSession`; ``sip_host``/``sip_port`` the
    address the clients were built with (the RTCP side is ``sip_port + 1``);
    ``media_host`` the address of the media ports (not 127.0.0.1: sfront
    refuses it). ``latetime`` and ``journal`` are the RTP-MIDI media options.
    """

    def __init__(self, sessions, sip_host, sip_port, media_host, *, now, latetime=1.0,
                 journal=True, max_clients=64, throttle=None, rng=None, agent="netgateway"):
        self.sessions = {session.keyed_name: session for session in sessions}
        self.sip_host = sip_host
        self.sip_port = sip_port
        self.media_host = media_host
        self.latetime = latetime
        self.journal = journal
        self.max_clients = max_clients
        self.throttle = throttle or JoinThrottle()
        self.rng = rng or random.SystemRandom()
        self.agent = agent
        self.clock_base = now
        self.roles = {sip_port: (SIP_RTP, None), sip_port + 1: (SIP_RTCP, None)}
        for session in sessions:
            self.roles[session.media_port] = (MEDIA_RTP, session)
            self.roles[session.media_port + 1] = (MEDIA_RTCP, session)
        self.legs = {}              # (source, Call-ID) -> _Leg
        self.clients = {}           # the client's RTP-side Call-ID -> Client
        self.by_rtp_source = {}     # (host, port) -> Client
        self.by_rtcp_source = {}
        self.refusals = {}          # reason -> count, for /status and /metrics
        self.refused_calls = {}     # refused client's Call-ID -> (status, phrase, until)
        self.packets_verified = 0

    # Inputs ------------------------------------------------------------------

    def receive(self, data, source, port, now):
        """Actions for one datagram from ``source`` that arrived on local ``port``."""
        role, session = self.roles[port]
        if role == MEDIA_RTP:
            return self._rtp(data, source, session, now)
        if role == MEDIA_RTCP:
            return self._rtcp(data, source, session, now)
        try:
            message = parse(data)
        except MalformedMessage as error:
            return [Drop("malformed", source, str(error))]
        if isinstance(message, Response):
            return self._response(message, source, now)
        method = message.method
        if method == "INVITE":
            return self._invite(message, data, source, port, role, now)
        if method == "ACK":
            return []
        if method == "BYE":
            return self._bye(message, source, port, now)
        if method in ("INFO", "OPTIONS"):
            client = self._client_of(message.call_id, role)
            actions = [self._reply(message, source, port, 200, "OK")]
            if client is not None and client.state == "joined" and source in (
                    client.rtp_source, client.rtcp_source):
                client.keepalives += 1
                actions.append(PeerAlive(client))
            return actions
        return [self._reply(message, source, port, 501, "Not Implemented")]

    def timer(self, now):
        """Reports, resent member INVITEs, guard packets, silent clients, stale nonces."""
        actions = []
        timestamp_cache = {}
        for client in list(self.clients.values()):
            if client.state != "joined":
                if client.state == "verifying" and now - client.created_at > NONCE_LIFETIME:
                    self._forget(client)        # its RTP socket never completed
                elif client.state == "admitting" and now - client.admitting_since > ADMIT_TIMEOUT:
                    actions += self._refuse(client, JOIN_TIMEOUT, now)
                    actions.append(PeerLeft(client, JOIN_TIMEOUT))
                continue
            if now >= client.rtcp_deadline:
                actions += self._remove(client, "timeout", now, notify=True)
                continue
            if now >= client.report_due:
                client.report_due = now + REPORT_INTERVAL
                actions.append(self._report(client))
            if not client.accepted and client.invite_due is not None and now >= client.invite_due:
                actions += self._introduce(client, now)
            if self.journal:
                rate = client.clock_rate
                timestamp = timestamp_cache.get(rate)
                if timestamp is None:
                    timestamp = timestamp_cache[rate] = self.ticks(now, rate)
                data = client.guard_packet(timestamp, now)
                if data is not None:
                    actions.append(Send(data, client.rtp_to, client.session.media_port))
        stale = [key for key, leg in self.legs.items() if now - leg.issued_at > NONCE_LIFETIME
                 and self.clients.get(key[1]) is None and self.clients.get(key[1] - 1) is None]
        for key in stale:
            del self.legs[key]
        for call_id in [call_id for call_id, (_, _, until) in self.refused_calls.items()
                        if now >= until]:
            del self.refused_calls[call_id]
        return actions

    def admitted(self, client, now):
        """The bus joined ``client``: answer its INVITE and introduce our member to it."""
        if client.state != "admitting":
            return []
        client.state = "joined"
        client.joined_at = now
        client.stream = RtpMidiStream(client.member_ssrc, self.rng.getrandbits(16),
                                      client.clock_rate, self.clock_base, self.latetime,
                                      journal=self.journal, payload_type=client.payload_type,
                                      marker=True)
        client.rtcp_deadline = now + RTCP_TIMEOUT
        client.report_due = now + REPORT_INTERVAL
        self.by_rtp_source[client.rtp_to] = client
        actions = self._answer_invite(client, 200, "OK")
        return actions + self._introduce(client, now)

    def refused(self, client, reason, now):
        """The bus refused ``client`` for ``reason`` (a refusal code): tell it and forget it."""
        if client.state != "admitting":
            return []
        return self._refuse(client, reason, now)

    def _refuse(self, client, reason, now):
        status, phrase = _REFUSAL_STATUS.get(reason, _FORBIDDEN)
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        actions = self._answer_invite(client, status, phrase)
        self._forget(client)
        # Its other socket's INVITE, and resends, get the same answer.
        self.refused_calls[client.call_id] = (status, phrase, now + NONCE_LIFETIME)
        return actions

    def remove(self, client, reason, now):
        """End ``client`` from our side (kicked, shut down): RTCP BYE from our member."""
        return self._remove(client, reason, now, notify=False)

    def close(self, now):
        """Shutting down: every client hears our member say BYE."""
        actions = []
        for client in list(self.clients.values()):
            actions += self._remove(client, "shutdown", now, notify=False)
        return actions

    def ticks(self, now, rate):
        """Our RTP clock at ``rate`` Hz at ``now`` (32 bits)."""
        return int((now - self.clock_base) * rate) & _U32

    # SIP -----------------------------------------------------------------------

    def _invite(self, message, data, source, port, role, now):
        call_id = _number(message.call_id)
        cseq = message.cseq
        if call_id is None or cseq is None:
            return [Drop("malformed", source, "INVITE without a numeric Call-ID and CSeq")]
        base = call_id if role == SIP_RTP else call_id - 1
        refused = self.refused_calls.get(base)
        if refused is not None and now < refused[2]:
            return [self._reply(message, source, port, refused[0], refused[1])]
        key = (source, call_id)
        leg = self.legs.get(key)
        if leg is not None and leg.last_request == data:
            # A resend: the answer we gave, or none yet while the bus decides.
            return [] if leg.last_reply is None else [Send(leg.last_reply, source, port)]
        try:
            sdp = Sdp.parse(message.body)
            keyed = sdp.first("s")
        except MalformedSdp as error:
            return [Drop("malformed", source, str(error)),
                    self._reply(message, source, port, 400, "Bad Request")]
        host = source[0]
        session = self.sessions.get(keyed)
        if self.throttle.blocked_for(host, now) > 0:
            self.refusals[THROTTLED] = self.refusals.get(THROTTLED, 0) + 1
            status, phrase = _REFUSAL_STATUS[THROTTLED]
            return [Drop("throttled", source),
                    Refused(source, session.name if session else "", THROTTLED),
                    self._reply(message, source, port, status, phrase)]
        if session is None:
            return self._auth_failed(message, source, port, now, "unknown_session",
                                     "no declared session has this keyed name",
                                     Refused(source, "", UNKNOWN_SESSION))
        authorization = sfront.SignSdp.parse(message.get("authorization"))
        if authorization is None:
            return self._challenge(message, data, source, port, key, leg, now)
        if leg is None or leg.nonce is None or not hmac.compare_digest(leg.nonce,
                                                                       authorization.nonce):
            return self._auth_failed(message, source, port, now, "stale_nonce",
                                     "a nonce this server did not issue to this socket")
        expected = sfront.digest(session.key, message.body)
        if not hmac.compare_digest(expected, authorization.digest):
            return self._auth_failed(message, source, port, now, "bad_digest",
                                     "SDP digest does not verify with the session's key",
                                     Refused(source, session.name, WRONG_PASSPHRASE))
        if sdp.attribute("nonce") != f'"{leg.nonce}"':
            return self._auth_failed(message, source, port, now, "stale_nonce",
                                     "the signed SDP does not carry the nonce")
        try:
            origin = sdp.origin()
            media = sdp.media()
            rtpmap = sdp.rtpmap()
            start = sdp.start_time()
        except MalformedSdp as error:
            return [Drop("malformed", source, str(error)),
                    self._reply(message, source, port, 400, "Bad Request")]
        if not -MAX_PAST <= start - now <= MAX_FUTURE:
            return self._auth_failed(message, source, port, now, "stale_time",
                                     "t= is outside the freshness window")
        leg.nonce = None                # one use: a replayed resend cannot pass again
        self.throttle.succeeded(host)
        leg.last_request, leg.last_reply = data, None
        if rtpmap.encoding.lower() != sfront.PAYLOAD_NAME:
            return self._refuse_leg(message, leg, source, port, "unsupported_payload",
                                    488, "Not Acceptable Here")
        client = self.clients.get(base)
        if client is not None and client.session is not session:
            return self._refuse_leg(message, leg, source, port, "session_mismatch", 403,
                                    "Forbidden")
        if client is None:
            if len(self.clients) >= self.max_clients:
                self.refusals[GATEWAY_FULL] = self.refusals.get(GATEWAY_FULL, 0) + 1
                return self._refuse_leg(message, leg, source, port, "gateway_full",
                                        *_REFUSAL_STATUS[GATEWAY_FULL])
            client = self.clients[base] = Client(base, session, self.rng, now)
        client.nat = client.nat or sdp.attribute("nat") is not None
        actions = []
        if role == SIP_RTCP:
            client.rtcp_source = client.rtcp_to = source
            self.by_rtcp_source[source] = client
            actions.append(self._store_reply(leg, message, source, port, 200, "OK"))
            return actions
        if client.state != "verifying":
            return actions      # a re-INVITE of a known client: sfront sends none
        previous = self.by_rtp_source.get(source)
        if previous is not None and previous is not client:
            actions += self._remove(previous, "restarted", now, notify=True)
        # What the client itself calls a member: login@host (sfront.md §2.3), cut
        # to the length the bus's name rule allows; the bus checks the rest.
        client.name = f"{origin.username}@{origin.address}"[:MAX_NAME_LENGTH]
        client.advertised = (sdp.connection(), media.port)
        client.clock_rate = rtpmap.clock_rate or 44100
        client.payload_type = rtpmap.payload_type
        client.rtp_source = client.rtp_to = source
        client.rtcp_to = client.rtcp_to or (source[0], source[1] + 1)
        client.state = "admitting"
        client.admitting_since = now
        actions.append(Admit(client))
        return actions

    def _challenge(self, message, data, source, port, key, leg, now):
        if leg is None:
            if len(self.legs) >= MAX_PENDING_LEGS:
                del self.legs[next(iter(self.legs))]    # the oldest: dicts keep insertion order
            leg = self.legs[key] = _Leg(key[1], source, now)
        if leg.nonce is None:
            leg.nonce = sfront.digest(self.rng.getrandbits(128).to_bytes(16, "big"), b"nonce")
            leg.issued_at = now
        leg.last_request = data
        return [self._store_reply(leg, message, source, port, 401, "Unauthorized",
                                  [("WWW-Authenticate", sfront.challenge(leg.nonce))])]

    def _auth_failed(self, message, source, port, now, reason, detail, refused=None):
        """Answer 403 and count towards the throttle; ``refused``: what the bus is told
        (None for a stale nonce or time, a client's clock rather than a guess)."""
        self.throttle.failed(source[0], now)
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        told = [refused] if refused is not None else []
        return [Drop(reason, source, detail)] + told + [
            self._reply(message, source, port, *_FORBIDDEN)]

    def _refuse_leg(self, message, leg, source, port, reason, status, phrase):
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        return [Drop(reason, source),
                self._store_reply(leg, message, source, port, status, phrase)]

    def _answer_invite(self, client, status, phrase):
        """Answer the RTP-side INVITE that ``client`` is waiting on."""
        leg = self.legs.get((client.rtp_source, client.call_id))
        if leg is None or leg.last_request is None:
            return []
        message = parse(leg.last_request)
        return [self._store_reply(leg, message, client.rtp_source, self.sip_port, status, phrase)]

    def _store_reply(self, leg, message, source, port, status, phrase, extra=()):
        send = self._reply(message, source, port, status, phrase, extra)
        leg.last_reply = send.data
        return send

    def _reply(self, request, source, port, status, phrase, extra=()):
        """A response to ``request``: its Via (with received/rport if translated),
        From, To, Call-ID and CSeq, as sfront writes them (§2.2)."""
        headers = []
        for name, value in request.headers:
            long = name.lower()
            if long in ("v", "via"):
                value = self._via_seen_at(value, source)
            elif long not in ("f", "from", "t", "to", "i", "call-id", "cseq"):
                continue
            headers.append((name, value))
        headers += extra
        headers.append(("User-Agent", self.agent))
        response = Response(status, phrase, headers)
        return Send(response.to_bytes(sfront.DIALECT), source, port)

    @staticmethod
    def _via_seen_at(value, source):
        """The Via as returned: with received and rport when the source is not the sent-by."""
        try:
            via = Via.parse(value)
        except ValueError:
            return value
        host, port = source[:2]
        if via.host == host and via.port == port:
            return value
        if via.port == port and _both_loopback(via.host, host):
            return value        # one machine: the kernel picked another loopback source
        return str(via.with_received(host, port))

    def _bye(self, message, source, port, now):
        actions = [self._reply(message, source, port, 200, "OK")]
        client = self._client_of(message.call_id, self.roles[port][0])
        if client is not None and source in (client.rtp_source, client.rtcp_source):
            actions += self._remove(client, "bye", now, notify=True)
        return actions

    def _client_of(self, call_id, role):
        number = _number(call_id)
        if number is None:
            return None
        return self.clients.get(number if role == SIP_RTP else number - 1)

    def _response(self, message, source, now):
        """The client's answer to our member INVITE (§2.3): 200, or 401 with its nonce."""
        call_id = _number(message.call_id)
        client = next((client for client in self.clients.values()
                       if client.member_call_id == call_id and client.state == "joined"), None)
        if client is None:
            return [Drop("unexpected_response", source, f"status {message.status}")]
        if message.status == 401:
            nonce = sfront.challenged_nonce(message.get("www-authenticate"))
            if nonce is not None and sfront.is_digest(nonce) and nonce != client.member_nonce:
                client.member_nonce = nonce
                return self._introduce(client, now, nonce)
        return []

    def _introduce(self, client, now, nonce=None):
        """The INVITE that presents our member to ``client`` (§2.3, §4 step 3)."""
        session = client.session
        client.member_cseq += 1
        client.invite_tries += 1
        client.invite_due = now + INVITE_RETRY if client.invite_tries < INVITE_TRIES else None
        if nonce is None:
            nonce = sfront.member_nonce(session.key, client.member_call_id, client.call_id,
                                        self.sip_host, self.sip_port)
        target_host, target_port = client.advertised
        uri = f"sip:{session.keyed_name}@{target_host}:{target_port}"
        sdp = Sdp([
            ("v", "0"),
            ("o", f"{self.agent} {client.member_ssrc} 0 IN IP4 {self.agent}"),
            ("s", session.keyed_name),
            ("a", f"tool:{self.agent}"),
            ("t", f"{int(now) + NTP_UNIX_OFFSET} 0"),
            ("m", f"audio {session.media_port} RTP/AVP {client.payload_type}"),
            ("c", f"IN IP4 {self.media_host}"),
            ("a", f"rtpmap:{client.payload_type} {sfront.PAYLOAD_NAME}/{client.clock_rate}"),
            ("a", f"fmtp:{client.payload_type} streamtype=5; mode=rtp-midi;"
                  f" guardtime={client.clock_rate}"),
        ]).to_bytes(sfront.DIALECT.line_end)
        signature = sfront.SignSdp(nonce, sfront.digest(session.key, sdp))
        request = Request("INVITE", uri, [
            ("i", str(client.member_call_id)),
            ("In-Reply-To", str(client.call_id)),
            ("v", f"SIP/2.0/UDP {self.sip_host}:{self.sip_port}"),
            ("c", "application/sdp"),
            ("f", f"sip:{self.agent}@{self.sip_host}"),
            ("t", uri),
            ("CSeq", str(client.member_cseq)),
            ("Authorization", str(signature)),
        ], sdp)
        return [Send(request.to_bytes(sfront.DIALECT), client.rtp_source, self.sip_port)]

    # Media ---------------------------------------------------------------------

    def _media_client(self, table, confirmed, source, session, data):
        """The joined client of ``session`` that ``data`` (signed) came from, and the packet.

        Known source first. Otherwise a client on the same host whose media
        has not come from its expected source yet, and whose key verifies
        the packet: a NAT gave the media another port than the SIP, so the
        source is learnt, and sending goes there. ``confirmed`` names the
        client's flag for this kind of packet.
        """
        client = table.get(source)
        if client is not None:
            if client.session is not session or client.state != "joined":
                return None, None
            packet = session.signer.verified(data)
            if packet is not None:
                setattr(client, confirmed, True)
            return client, packet
        packet = session.signer.verified(data)
        if packet is None:
            return None, None
        for candidate in self.clients.values():
            if (candidate.session is session and candidate.state == "joined"
                    and not getattr(candidate, confirmed)
                    and candidate.rtp_source[0] == source[0]):
                for known in [known for known, owner in table.items() if owner is candidate]:
                    del table[known]
                table[source] = candidate
                setattr(candidate, confirmed, True)
                return candidate, packet
        return None, None

    def _rtp(self, data, source, session, now):
        client, packet = self._media_client(self.by_rtp_source, "rtp_confirmed", source,
                                            session, data)
        if client is None:
            return [Drop("unknown_source", source, "RTP from no joined client")]
        client.rtp_to = source
        if packet is None:
            client.packets_refused += 1
            return [Drop("bad_signature", source, "RTP signature does not verify")]
        client.packets_verified += 1
        self.packets_verified += 1
        client.accepted = True          # it sends to our member: it took our INVITE
        client.invite_due = None
        try:
            rtp = RtpMidiPacket.parse(packet, lazy_journal=True)
            if rtp.payload_type != client.payload_type:
                return [Drop("wrong_payload_type", source, f"payload type {rtp.payload_type}")]
            receiver = client.stream.journal_receiver
            late_before = receiver.late_packets
            received = client.stream.receive(rtp, now)
        except MalformedPacket as error:
            return [Drop("malformed", source, str(error))]
        actions = []
        if receiver.late_packets != late_before:
            actions.append(Drop("replayed_or_late", source, "RTP sequence number already seen"))
        if received.late:
            actions.append(Drop("late", source, "note-on later than latetime", received.late))
        if received.events:
            actions.append(Played(client, received.events, received.midi_list))
        return actions

    def _rtcp(self, data, source, session, now):
        client, packet = self._media_client(self.by_rtcp_source, "rtcp_confirmed", source,
                                            session, data)
        if client is None:
            return [Drop("unknown_source", source, "RTCP from no joined client")]
        if packet is None:
            client.packets_refused += 1
            return [Drop("bad_signature", source, "RTCP signature does not verify")]
        try:
            report = sfront.read_rtcp(packet)
        except ValueError as error:
            return [Drop("malformed", source, str(error))]
        client.packets_verified += 1
        self.packets_verified += 1
        if report.highest is not None:
            if client.reported_highest is not None and report.highest < client.reported_highest:
                return [Drop("replayed_or_late", source, "RTCP report went backwards")]
            client.reported_highest = report.highest
            client.stream.feedback(report.highest & 0xFFFF)
        client.rtcp_to = source
        client.accepted = True
        client.invite_due = None
        client.rtcp_deadline = now + RTCP_TIMEOUT
        if report.bye:
            return self._remove(client, "bye", now, notify=True)
        return [PeerAlive(client)]

    def _report(self, client):
        highest = client.stream.journal_receiver.highest
        packet = sfront.receiver_report(client.member_ssrc, client.rtcp_ssrc, highest)
        return Send(client.session.signer.sign(packet), client.rtcp_to,
                    client.session.media_port + 1)

    # Leaving -------------------------------------------------------------------

    def _remove(self, client, reason, now, notify):
        if client.state == "gone":
            return []
        actions = []
        if client.state == "joined":
            if reason != "bye":
                packet = sfront.receiver_report(client.member_ssrc, bye=True)
                actions.append(Send(client.session.signer.sign(packet), client.rtcp_to,
                                    client.session.media_port + 1))
            if notify:
                actions.append(PeerLeft(client, reason))
        self._forget(client)
        return actions

    def _forget(self, client):
        client.state = "gone"
        if self.clients.get(client.call_id) is client:
            del self.clients[client.call_id]
        for table in (self.by_rtp_source, self.by_rtcp_source):
            for source in [source for source, known in table.items() if known is client]:
                del table[source]
        for call_id in (client.call_id, client.call_id + 1):
            for key in [key for key in self.legs if key[1] == call_id]:
                del self.legs[key]

    # Status --------------------------------------------------------------------

    def joined_clients(self):
        return [client for client in self.clients.values() if client.state == "joined"]

    def totals(self):
        return {"clients": len(self.joined_clients()), "packets_verified": self.packets_verified,
                "refused": dict(self.refusals)}


def _number(text):
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() and len(text) <= 20 else None


def _both_loopback(first, second):
    try:
        return ipaddress.ip_address(first).is_loopback and ipaddress.ip_address(second).is_loopback
    except ValueError:
        return False
