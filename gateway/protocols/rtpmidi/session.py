"""One AppleMIDI session endpoint and its remote peers, as a sans-IO state machine.

Implements the session side of Apple's MIDI Network Driver Protocol
("AppleMIDI"): invitation on the control and data ports (IN/OK/NO), ending
(BY), three-way clock synchronisation (CK) and receiver feedback (RS), for
both roles, with many peers sharing one local endpoint. One SSRC is used
everywhere (IN/OK on both ports, CK, RS and the RTP header), as RFC 6295 §2.1
requires of an RTP stream. Not every peer does: pymidi picks one SSRC per
port, so a peer may answer our data-port IN, or send its own data-port IN, with
a second SSRC. The session keeps that SSRC as an alias of the same peer; a
data-port IN with an SSRC of its own is accepted only when its initiator token
matches a control-port invitation from the same host that still waits for its
data port.

Written by hand because no maintained Python library implements AppleMIDI.
The behaviour follows shared/protocols/rtpmidi.md §8, including the defences
against the bugs of real peers recorded there: a repeated IN is answered
again (a lost OK must not lock the initiator out), a CK2 is never answered
and never starts a new exchange (node-rtpmidi's CK storm), and a CK0 from a
peer we invited is answered (node needs its own sync before it will send).

In the style of h11/wsproto, with the shape and actions of every core
(:mod:`gateway.actions`): no sockets, clocks or Twisted; ``receive``,
``timer``, ``invite``, ``kick`` and ``close`` carry ``now`` (seconds, any
monotonic epoch) where it matters and return a list of actions for the
adapter to carry out: Send (``via`` is CONTROL or DATA), Drop, PeerJoined,
PeerLeft, Feedback, ClockSynced, and this core's own InvitationFailed and
RtpReceived.
"""

import random
from collections import Counter
from dataclasses import dataclass

from gateway.actions import ClockSynced, Drop, Feedback, PeerJoined, PeerLeft, Send
from gateway.protocols.rtpmidi.applemidi import (
    END_SESSION,
    INVITATION,
    INVITATION_ACCEPTED,
    INVITATION_REJECTED,
    PROTOCOL_VERSION,
    BitrateLimit,
    MalformedPacket,
    ReceiverFeedback,
    SessionExchange,
    Sync,
    is_applemidi,
    parse_control,
)

CONTROL = "control"
DATA = "data"

INITIATOR = "initiator"
RESPONDER = "responder"

CLOCK_RATE = 10_000
"""CK timestamps and RTP timestamps count 100 µs ticks."""

INVITATION_INTERVAL = 1.0
INVITATION_ATTEMPTS = 12
DATA_INVITATION_TIMEOUT = 10.0
"""How long a responder waits for the data-port IN after accepting on control.

rtpmidid allows 5 s; we are more patient because initiators retry each port
independently at about 1 s intervals."""

SYNC_BURST_INTERVAL = 1.5
SYNC_BURST_COUNT = 6
SYNC_INTERVAL = 10.0
SYNC_TIMEOUT = 60.0
"""A peer that sent no CK at all for this long is gone (rtpmidid and the
Arduino library use the same limit; as initiator it means six missed syncs)."""

FEEDBACK_INTERVAL = 1.0

_MIN_RTP_HEADER = 12
_RTP_VERSION_2 = 0x80


class PeerState:
    INVITING_CONTROL = "inviting control port"
    INVITING_DATA = "inviting data port"
    AWAITING_DATA_INVITATION = "awaiting data-port invitation"
    JOINED = "joined"
    GONE = "gone"


class Peer:
    """What the session knows about one remote endpoint.

    ``local_role`` is our role towards this peer: INITIATOR if we invited it.
    ``rtt`` (seconds) and ``clock_offset`` (seconds, the peer's CK clock minus
    ours, so ``their_ticks ≈ our_ticks + clock_offset * CLOCK_RATE``) are
    None until a CK exchange completes. ``highest_rtp_seq`` is the highest
    RTP sequence number received from the peer, in 16-bit serial order.
    ``data_port_ssrc`` is set when the peer's data port used an SSRC other than
    its control port's (pymidi): in its OK to our IN, or in its own data-port
    IN (matched to its control-port IN by token and host). Both then name it.
    """

    def __init__(self, local_role, token, control_addr, now):
        self.local_role = local_role
        self.token = token
        self.control_addr = control_addr
        self.data_addr = None
        self.ssrc = None
        self.data_port_ssrc = None
        self.name = None
        self.state = None
        self.rtt = None
        self.clock_offset = None
        self.last_sync_time = now
        self.highest_rtp_seq = None
        self._feedback_due = False
        self._next_feedback_time = 0.0
        self._attempts = 0
        self._next_attempt_time = None
        self._state_since = now
        self._syncs_started = 0
        self._next_sync_time = None
        self._outstanding_sync_ts1 = None

    @property
    def joined(self):
        return self.state == PeerState.JOINED

    def __repr__(self):
        ssrc = "?" if self.ssrc is None else f"{self.ssrc:#010x}"
        return (f"<Peer {self.name!r} ssrc={ssrc} control={self.control_addr} "
                f"data={self.data_addr} {self.local_role} {self.state}>")


@dataclass(frozen=True)
class InvitationFailed:
    """A peer that never joined is dropped: 'refused' (NO), 'no answer',
    'timeout' (no data-port IN), 'bye', 'kicked', 'closed' or 'rejoined'."""
    peer: Peer
    reason: str


@dataclass(frozen=True)
class RtpReceived:
    """An RTP packet (raw bytes, header included) from a joined peer."""
    peer: Peer
    data: bytes


class AppleMidiSession:
    """One local endpoint: control port P (even) and data port P+1.

    ``accept(addr, name)`` decides incoming invitations (``name`` is the one the
    invitation gives, or None): True admits, False or a reason string refuses
    (answered with NO; AppleMIDI has no authentication, so the adapter's
    address allow-list, member cap and name rule live there).
    ``clock_base`` is the ``now`` at which our CK clock reads zero.
    """

    def __init__(self, name, ssrc, now, accept=lambda addr, name: True,
                 clock_base=None, rng=None):
        self.name = name
        self.ssrc = ssrc
        self.accept = accept
        self.clock_base = now if clock_base is None else clock_base
        self.counters = Counter()
        self.closed = False
        self._rng = rng or random.SystemRandom()
        self._peers = []
        self._joined_by_ssrc = {}
        self._joined_by_data_port_ssrc = {}

    # -- public inputs --------------------------------------------------

    def ticks(self, now):
        """Our CK clock at ``now``: 100 µs ticks since ``clock_base``, as u64."""
        return int((now - self.clock_base) * CLOCK_RATE) & 0xFFFFFFFFFFFFFFFF

    @property
    def peers(self):
        """Joined peers, in the order they joined."""
        return list(self._joined_by_ssrc.values())

    def receive(self, data, addr, now, port):
        """A datagram from ``addr`` that arrived on our ``port`` (CONTROL or DATA)."""
        if port == DATA and not is_applemidi(data):
            return self._rtp_received(data, addr)
        if self.closed:
            return [self._drop("session closed", addr)]
        try:
            packet = parse_control(data)
        except MalformedPacket as error:
            return [self._drop("malformed", addr, str(error))]
        if isinstance(packet, SessionExchange):
            if packet.command == INVITATION:
                return self._invitation_received(port, packet, addr, now)
            if packet.command == END_SESSION:
                return self._bye_received(packet, addr)
            return self._answer_received(port, packet, addr, now)
        if isinstance(packet, Sync):
            return self._sync_received(port, packet, addr, now)
        if isinstance(packet, ReceiverFeedback):
            peer = self._joined_peer(packet.ssrc)
            if peer is None:
                return [self._drop("feedback from unknown peer", addr)]
            return [Feedback(peer, packet.seq)]
        assert isinstance(packet, BitrateLimit)
        return [self._drop("bitrate limit not supported", addr, f"{packet.limit} bit/s")]

    def invite(self, addr, now):
        """Invite the session whose control port is at ``addr``; return ``(peer, actions)``.

        The same Peer object later appears in PeerJoined, PeerLeft or
        InvitationFailed, so the caller can tell its own invitations apart.
        """
        if self.closed:
            raise RuntimeError("session is closed")
        peer = Peer(INITIATOR, self._rng.getrandbits(32), addr, now)
        self._peers.append(peer)
        return peer, self._enter_inviting(peer, PeerState.INVITING_CONTROL, now)

    def timer(self, now):
        """Retries, clock syncs, receiver feedback and timeouts due by ``now``."""
        actions = []
        for peer in list(self._peers):
            if peer.state in (PeerState.INVITING_CONTROL, PeerState.INVITING_DATA):
                if now >= peer._next_attempt_time:
                    actions += self._retry_invitation(peer, now)
            elif peer.state == PeerState.AWAITING_DATA_INVITATION:
                if now - peer._state_since >= DATA_INVITATION_TIMEOUT:
                    actions += self._remove(peer, "timeout", say_bye=True)
            elif now - peer.last_sync_time >= SYNC_TIMEOUT:
                actions += self._remove(peer, "timeout", say_bye=True)
            else:
                if peer.local_role == INITIATOR and now >= peer._next_sync_time:
                    actions.append(self._start_sync(peer, now))
                if peer._feedback_due and now >= peer._next_feedback_time:
                    actions.append(self._send_feedback(peer, now))
        return actions

    def send_rtp(self, rtp_bytes, peers=None):
        """Send one RTP packet to ``peers`` (default: every joined peer)."""
        targets = self._joined_by_ssrc.values() if peers is None else peers
        return [Send(rtp_bytes, peer.data_addr, DATA) for peer in targets if peer.joined]

    def kick(self, peer):
        """End ``peer``'s membership, telling it with BY on both ports."""
        if peer.state == PeerState.GONE:
            return []
        return self._remove(peer, "kicked", say_bye=True)

    def close(self):
        """End every peer with BY on both ports; the session then ignores input."""
        actions = []
        for peer in list(self._peers):
            actions += self._remove(peer, "closed", say_bye=True)
        self.closed = True
        return actions

    # -- invitation -----------------------------------------------------

    def _exchange(self, command, token):
        return bytes(SessionExchange(command, token, self.ssrc, self.name))

    def _bye(self, peer):
        return bytes(SessionExchange(END_SESSION, peer.token, self.ssrc))

    def _enter_inviting(self, peer, state, now):
        peer.state = state
        peer._state_since = now
        peer._attempts = 0
        return self._retry_invitation(peer, now)

    def _retry_invitation(self, peer, now):
        if peer._attempts >= INVITATION_ATTEMPTS:
            return self._remove(peer, "no answer",
                                say_bye=peer.state == PeerState.INVITING_DATA)
        peer._attempts += 1
        peer._next_attempt_time = now + INVITATION_INTERVAL
        if peer.state == PeerState.INVITING_CONTROL:
            return [Send(self._exchange(INVITATION, peer.token), peer.control_addr, CONTROL)]
        return [Send(self._exchange(INVITATION, peer.token), peer.data_addr, DATA)]

    def _invitation_received(self, port, packet, addr, now):
        existing = self._peer_by_ssrc(packet.ssrc)
        if packet.version != PROTOCOL_VERSION:
            return [Send(self._exchange(INVITATION_REJECTED, packet.token), addr, port),
                    self._drop("unsupported protocol version", addr, str(packet.version))]
        if packet.ssrc == self.ssrc:
            # Our own invitation reflected back, or an SSRC collision (RFC 3550 §8).
            return [Send(self._exchange(INVITATION_REJECTED, packet.token), addr, port),
                    self._drop("invitation with our own SSRC", addr)]
        if port == DATA:
            return self._data_invitation_received(existing, packet, addr, now)
        if existing is not None and existing.token == packet.token:
            # Our OK was lost; the initiator retries with the same token.
            return [Send(self._exchange(INVITATION_ACCEPTED, packet.token), addr, CONTROL)]
        verdict = self.accept(addr, packet.name)
        if verdict is not True:
            return [Send(self._exchange(INVITATION_REJECTED, packet.token), addr, CONTROL),
                    self._drop("invitation refused", addr,
                               verdict if isinstance(verdict, str) and verdict else None)]
        actions = []
        if existing is not None:
            # Same SSRC, new token: the peer restarted; end the old session cleanly.
            actions += self._remove(existing, "rejoined", say_bye=False)
        peer = Peer(RESPONDER, packet.token, addr, now)
        peer.ssrc = packet.ssrc
        peer.name = packet.name
        peer.state = PeerState.AWAITING_DATA_INVITATION
        self._peers.append(peer)
        actions.append(Send(self._exchange(INVITATION_ACCEPTED, packet.token), addr, CONTROL))
        return actions

    def _data_invitation_received(self, existing, packet, addr, now):
        peer = existing
        if (peer is None or peer.local_role != RESPONDER or peer.token != packet.token
                or peer.state not in (PeerState.AWAITING_DATA_INVITATION, PeerState.JOINED)):
            # Not the SSRC of a control-port IN: perhaps a pymidi-style initiator
            # whose data port has an SSRC of its own. The token names the
            # invitation; it must come from the host that sent it.
            peer = self._awaiting_data_invitation(packet.token, addr)
            if peer is None:
                return [Send(self._exchange(INVITATION_REJECTED, packet.token), addr, DATA),
                        self._drop("data invitation without control invitation", addr)]
            if existing is not None:
                return [Send(self._exchange(INVITATION_REJECTED, packet.token), addr, DATA),
                        self._drop("data-port SSRC belongs to another peer", addr,
                                   f"{packet.ssrc:#010x}")]
            peer.data_port_ssrc = packet.ssrc
        actions = [Send(self._exchange(INVITATION_ACCEPTED, packet.token), addr, DATA)]
        if peer.state == PeerState.AWAITING_DATA_INVITATION:
            peer.data_addr = addr
            actions += self._join(peer, now)
        return actions

    def _awaiting_data_invitation(self, token, addr):
        """The peer that invited us with ``token`` from ``addr``'s host (IP) and still
        waits for its data-port IN, or None."""
        for peer in self._peers:
            if (peer.local_role == RESPONDER and peer.token == token
                    and peer.state == PeerState.AWAITING_DATA_INVITATION
                    and peer.control_addr[0] == addr[0]):
                return peer
        return None

    def _answer_received(self, port, packet, addr, now):
        peer = self._invitation_by_token(packet.token)
        expected_state = (PeerState.INVITING_CONTROL if port == CONTROL
                          else PeerState.INVITING_DATA)
        if peer is None or peer.state != expected_state:
            if peer is not None and packet.command == INVITATION_ACCEPTED:
                # A late answer to an IN we had already repeated.
                return []
            return [self._drop("answer to no invitation", addr,
                               packet.command.decode("ascii"))]
        if packet.command == INVITATION_REJECTED:
            return self._remove(peer, "refused", say_bye=False)
        if port == CONTROL:
            peer.ssrc = packet.ssrc
            peer.name = packet.name
            peer.control_addr = addr
            # node-rtpmidi and rtpmidid expect the data port at control + 1.
            peer.data_addr = (addr[0], addr[1] + 1) + tuple(addr[2:])
            return self._enter_inviting(peer, PeerState.INVITING_DATA, now)
        if packet.ssrc != peer.ssrc:
            if packet.ssrc == self.ssrc or self._joined_peer(packet.ssrc) is not None:
                return [self._drop("data-port SSRC belongs to another peer", addr,
                                   f"{packet.ssrc:#010x}")]
            peer.data_port_ssrc = packet.ssrc
        peer.data_addr = addr
        actions = self._join(peer, now)
        actions.append(self._start_sync(peer, now))
        return actions

    def _join(self, peer, now):
        previous = self._joined_by_ssrc.get(peer.ssrc)
        actions = []
        if previous is not None:
            actions += self._remove(previous, "rejoined", say_bye=False)
        peer.state = PeerState.JOINED
        peer._state_since = now
        peer.last_sync_time = now
        peer._next_sync_time = now
        self._joined_by_ssrc[peer.ssrc] = peer
        if peer.data_port_ssrc is not None:
            self._joined_by_data_port_ssrc[peer.data_port_ssrc] = peer
        actions.append(PeerJoined(peer))
        return actions

    def _bye_received(self, packet, addr):
        peer = self._peer_by_ssrc(packet.ssrc)
        if peer is None or addr not in (peer.control_addr, peer.data_addr):
            return [self._drop("bye from unknown peer", addr)]
        return self._remove(peer, "bye", say_bye=False)

    def _remove(self, peer, reason, say_bye):
        actions = []
        if say_bye:
            bye = self._bye(peer)
            actions.append(Send(bye, peer.control_addr, CONTROL))
            # rtpmidid only lets go of a peer after BY on both of its ports.
            if peer.data_addr is not None and peer.state != PeerState.INVITING_CONTROL:
                actions.append(Send(bye, peer.data_addr, DATA))
        if peer.joined:
            del self._joined_by_ssrc[peer.ssrc]
            if peer.data_port_ssrc is not None:
                del self._joined_by_data_port_ssrc[peer.data_port_ssrc]
            actions.append(PeerLeft(peer, reason))
        else:
            actions.append(InvitationFailed(peer, reason))
        self._peers.remove(peer)
        peer.state = PeerState.GONE
        return actions

    def _joined_peer(self, ssrc):
        peer = self._joined_by_ssrc.get(ssrc)
        if peer is None:
            return self._joined_by_data_port_ssrc.get(ssrc)
        return peer

    def _peer_by_ssrc(self, ssrc):
        peer = self._joined_peer(ssrc)
        if peer is not None:
            return peer
        for peer in self._peers:
            if peer.ssrc == ssrc:
                return peer
        return None

    def _invitation_by_token(self, token):
        for peer in self._peers:
            if peer.local_role == INITIATOR and peer.token == token:
                return peer
        return None

    # -- clock synchronisation ------------------------------------------

    def _start_sync(self, peer, now):
        peer._syncs_started += 1
        interval = (SYNC_BURST_INTERVAL if peer._syncs_started < SYNC_BURST_COUNT
                    else SYNC_INTERVAL)
        peer._next_sync_time = now + interval
        peer._outstanding_sync_ts1 = self.ticks(now)
        return Send(bytes(Sync(self.ssrc, 0, peer._outstanding_sync_ts1)), peer.data_addr, DATA)

    def _sync_received(self, port, packet, addr, now):
        peer = self._joined_peer(packet.ssrc)
        if peer is None:
            return [self._drop("sync from unknown peer", addr)]
        peer.last_sync_time = now
        if packet.count == 0:
            answer = Sync(self.ssrc, 1, packet.ts1, self.ticks(now))
            return [Send(bytes(answer), addr, port)]
        if packet.count == 1:
            ts1 = peer._outstanding_sync_ts1
            # node-rtpmidi echoes only the low 32 bits of ts1.
            if ts1 is None or (ts1 ^ packet.ts1) & 0xFFFFFFFF:
                return [self._drop("CK1 answers no CK0 of ours", addr)]
            peer._outstanding_sync_ts1 = None
            ts3 = self.ticks(now)
            answer = Sync(self.ssrc, 2, packet.ts1, packet.ts2, ts3)
            their_clock_ahead = packet.ts2 - (ts1 + ts3) / 2
            return [Send(bytes(answer), addr, port),
                    self._sync_completed(peer, ts3 - ts1, their_clock_ahead)]
        # CK2 ends the peer's exchange: never answered, never a reason to start ours.
        rtt_ticks = (packet.ts3 - packet.ts1) & 0xFFFFFFFF
        their_clock_ahead = (packet.ts1 + packet.ts3) / 2 - packet.ts2
        return [self._sync_completed(peer, rtt_ticks, their_clock_ahead)]

    def _sync_completed(self, peer, rtt_ticks, offset_ticks):
        peer.rtt = rtt_ticks / CLOCK_RATE
        peer.clock_offset = offset_ticks / CLOCK_RATE
        return ClockSynced(peer, peer.rtt, peer.clock_offset)

    # -- RTP and receiver feedback --------------------------------------

    def rtp_source(self, ssrc, sequence, addr):
        """The joined peer that sent packet ``sequence`` of ``ssrc`` from ``addr``, or a Drop.

        The data port's per-packet path: the adapter parses the packet once
        and calls this directly (after ruling out AppleMIDI with
        :func:`is_applemidi`) so that a valid packet costs no action list. It
        also notes the sequence number that the next receiver feedback (RS)
        reports.
        """
        if self.closed:
            return self._drop("session closed", addr)
        peer = self._joined_by_ssrc.get(ssrc)
        if peer is None:
            peer = self._joined_by_data_port_ssrc.get(ssrc)
            if peer is None:
                return self._drop("RTP from non-member", addr)
        if addr != peer.data_addr:
            return self._drop("RTP from unexpected address", addr, f"ssrc {ssrc:#010x}")
        highest = peer.highest_rtp_seq
        if highest is None or 0 < (sequence - highest) & 0xFFFF < 0x8000:
            peer.highest_rtp_seq = sequence
            peer._feedback_due = True
        return peer

    def _rtp_received(self, data, addr):
        if len(data) < _MIN_RTP_HEADER or data[0] & 0xC0 != _RTP_VERSION_2:
            return [self._drop("not RTP", addr)]
        source = self.rtp_source(int.from_bytes(data[8:12], "big"), (data[2] << 8) | data[3],
                                 addr)
        return [RtpReceived(source, data) if type(source) is Peer else source]

    def _send_feedback(self, peer, now):
        peer._feedback_due = False
        peer._next_feedback_time = now + FEEDBACK_INTERVAL
        packet = ReceiverFeedback(self.ssrc, peer.highest_rtp_seq)
        return Send(bytes(packet), peer.control_addr, CONTROL)

    def _drop(self, reason, addr, detail=None):
        self.counters[reason] += 1
        return Drop(reason, addr, detail)
