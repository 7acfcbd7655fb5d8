"""SIP door: Prometheus metrics (``netgateway_sip_*``).

Read from the door's session server at each scrape; registered by
:class:`~gateway.protocols.sip.door.SipDoor` when the web site serves
``/metrics``. Dropped packets, by reason (``bad_signature``,
``unknown_source``, ...), are in ``netgateway_dropped{door="sip"}``.

Standard user agents (``sip.uas``) add ``netgateway_sip_uas_*``: calls now and
calls answered, by transport; digest failures; registrations; media packets by
kind (``rtp_in``, ``rtp_out``, ``rtcp_in``, ``rtcp_out``, ``guard_out``,
``keepalive_out``, ``feedback_in``, ``malformed_in``, ``refused_in``, ``event_in``
for phones' telephone-events, ...); phones add ``netgateway_sip_uas_phone_calls``,
``netgateway_sip_uas_phone_frames{kind=sent|late|skipped}`` and
``netgateway_sip_uas_phone_digits``.
"""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class SipCollector:
    """Prometheus view of the sfront clients: members, packets verified, refusals."""

    def __init__(self, door):
        self.door = door

    def collect(self):
        server = self.door.server
        clients = GaugeMetricFamily("netgateway_sip_members", "sfront clients joined",
                                    labels=["session"])
        by_session = {}
        for client in server.joined_clients():
            by_session[client.session.name] = by_session.get(client.session.name, 0) + 1
        for session in self.door.sessions:
            clients.add_metric([session.name], by_session.get(session.name, 0))
        verified = CounterMetricFamily("netgateway_sip_packets_verified",
                                       "RTP and RTCP packets whose signature verified")
        verified.add_metric([], server.packets_verified)
        refused = CounterMetricFamily("netgateway_sip_refused",
                                      "INVITEs refused, by reason", labels=["reason"])
        for reason, count in sorted(server.refusals.items()):
            refused.add_metric([reason], count)
        yield from (clients, verified, refused)
        agents = self.door.agents
        if agents is not None:
            yield from _user_agents(agents)
        outbound = getattr(self.door, "outbound", None)
        if outbound is not None:
            yield from _invitations(outbound)


def _invitations(outbound):
    """``netgateway_sip_invite_*``: the calls the gateway makes (sip.invite)."""
    connected = GaugeMetricFamily("netgateway_sip_invite_connected",
                                  "sip.invite peers answered and joined now")
    connected.add_metric([], outbound.connected())
    attempts = CounterMetricFamily("netgateway_sip_invite_attempts",
                                   "Calls the gateway made (sip.invite)")
    attempts.add_metric([], outbound.counts.get("attempts", 0))
    outcomes = CounterMetricFamily("netgateway_sip_invite_outcomes",
                                   "How sip.invite calls went: answered, failed (never"
                                   " answered), answer_refused", labels=["outcome"])
    for outcome in ("answered", "failed", "answers_refused"):
        outcomes.add_metric([outcome.replace("answers_", "answer_")],
                            outbound.counts.get(outcome, 0))
    yield from (connected, attempts, outcomes)


def _user_agents(agents):
    core = agents.core.counts
    calls = GaugeMetricFamily("netgateway_sip_uas_calls",
                              "Calls of standard user agents joined now, by transport",
                              labels=["transport"])
    answered = CounterMetricFamily("netgateway_sip_uas_calls_answered",
                                   "Calls answered (200), by transport", labels=["transport"])
    for transport, count in sorted(agents.calls_by_transport().items()):
        calls.add_metric([transport], count)
        answered.add_metric([transport], agents.counts.get(
            f"calls_answered_{transport.lower()}", 0))
    failures = CounterMetricFamily("netgateway_sip_uas_digest_failures",
                                   "Digest responses that did not prove the passphrase")
    failures.add_metric([], core.get("digest_failures", 0))
    registrations = GaugeMetricFamily("netgateway_sip_uas_registrations",
                                      "Contacts registered now")
    registrations.add_metric([], agents.core.registrar.count)
    packets = CounterMetricFamily("netgateway_sip_uas_media_packets",
                                  "Call media packets, by kind", labels=["kind"])
    for kind, count in sorted(agents.media_counts().items()):
        packets.add_metric([kind], count)
    phones = agents.phone_counts()
    phone_calls = GaugeMetricFamily("netgateway_sip_uas_phone_calls",
                                    "Phone calls (audio: keypad in, the jam's sound out) now")
    phone_calls.add_metric([], agents.phone_calls())
    frames = CounterMetricFamily("netgateway_sip_uas_phone_frames",
                                 "20 ms audio frames sent to phones: sent, late (over 10 ms"
                                 " after due), skipped (a stalled reactor)", labels=["kind"])
    for kind in ("sent", "late", "skipped"):
        frames.add_metric([kind], phones.get(f"frames_{kind}", 0))
    digits = CounterMetricFamily("netgateway_sip_uas_phone_digits",
                                 "DTMF digits phones pressed")
    digits.add_metric([], phones.get("digits", 0))
    yield from (calls, answered, failures, registrations, packets, phone_calls, frames, digits)
