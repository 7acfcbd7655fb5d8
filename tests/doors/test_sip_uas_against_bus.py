"""The SIP door's standard user agents against a recording bus: what goes on the wire.

The door runs on the in-memory network of tests/rtpmidi/test_door.py (UDP
datagrams recorded, TCP connections opened by the test over StringTransports)
with the user agent doubles of tests/sip/uas_agents.py. A digest response is
checked with ``bus.check`` and an answered RTP-MIDI call joins with ``bus.join``;
the recording bus answers as each test says.
"""

import types

import pytest

from gateway.bus import values
from gateway.bus.local import DropCounters
from gateway.bus.values import Refusal, RosterEntry
from gateway.config import parse
from gateway.midi import MidiEvent
from gateway.protocols.rtpmidi.payload import RtpMidiPacket, command_section, rtp_header
from gateway.protocols.rtpmidi.stream import RTP_MIDI_LIST
from gateway.protocols.sip import door as sipdoor, metrics, rtcp
from gateway.protocols.sip.digest import DigestProof
from gateway.protocols.sip.framing import StreamFramer
from gateway.protocols.sip.message import parse as parse_sip
from gateway.protocols.sip.sdp import Sdp
from tests.bus.recording import RecordingBus
from tests.rtpmidi.test_door import MemoryReactor
from tests.sip.rtcp_peer import receiver_report, sender_report_time
from tests.sip.sfront_double import DEMO_PASSPHRASE, SfrontDouble
from tests.sip.uas_agents import PCMU_OFFER, Agent, PyVoip

NOW = 1_800_000_000.0
SIP_PORT = 5060
AGENT = ("127.0.0.1", 5070)
CALLER_RTP = ("127.0.0.1", 42000)
CALLER_RTCP = ("127.0.0.1", 42001)
MEDIA_MIN = 6200
ALICE = RosterEntry(7, "alice-ws", "websocket")


def midi_offer(fmtp="", extra="", encoding="rtp-midi/44100", payload_type=96):
    body = ("v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=midi\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio 42000 RTP/AVP {payload_type}\r\n"
            f"a=rtpmap:{payload_type} {encoding}\r\n")
    if fmtp:
        body += f"a=fmtp:{payload_type} {fmtp}\r\n"
    return (body + extra).encode()


class Gateway:
    """A SipDoor with standard user agents on, its bus a RecordingBus."""

    def __init__(self, uas=None):
        self.reactor = MemoryReactor()
        self.reactor.advance(NOW)
        self.bus = RecordingBus()
        section = {"media": {"host": "127.0.0.5", "port_min": 6000, "port_max": 6001},
                   "uas": dict({"media": {"port_min": MEDIA_MIN, "port_max": MEDIA_MIN + 3},
                                "media_timeout": 30}, **(uas or {}))}
        config = parse({"sessions": [{"name": "demo", "passphrase": DEMO_PASSPHRASE}],
                        "web": {"enabled": False}, "sip": section})
        self.drops = DropCounters()
        context = types.SimpleNamespace(config=config, reactor=self.reactor, bus=self.bus,
                                        drops=self.drops, metrics=None)
        self.door = sipdoor.make_service(config.doors["sip"], context)
        self.door.startService()

    def send(self, data, source=AGENT, port=SIP_PORT):
        self.reactor.inject(port, data, source)

    def replies(self, destination=AGENT):
        return [parse_sip(data) for data in self.reactor.take(destination)]

    def register(self, agent, check=None):
        """REGISTER, the 401, the REGISTER with credentials; return the final response."""
        if check is not None:
            self.bus.answer_checks(check)
        uri = "sip:127.0.0.1"
        self.send(agent.request("REGISTER", uri))
        [challenge] = self.replies()
        assert challenge.status == 401
        self.send(agent.request("REGISTER", uri, [agent.authorization(challenge, "REGISTER",
                                                                       uri)]))
        return self.replies()[-1]

    def invite(self, agent, body, source=AGENT):
        """INVITE, its 401 (and our ACK of it), the INVITE with credentials; the responses
        to the second INVITE so far."""
        uri = "sip:demo@127.0.0.1"
        self.send(agent.request("INVITE", uri, body=body), source)
        [challenge] = self.replies(source)     # no 100 Trying before an answer at once
        assert challenge.status == 401
        self.send(agent.ack(uri, agent.cseq, _tag(challenge), agent.last_branch), source)
        self.send(agent.request("INVITE", uri, [agent.authorization(challenge, "INVITE", uri)],
                                body=body), source)
        return self.replies(source)

    def call(self, agent=None, body=None, roster=()):
        """An answered, acknowledged RTP-MIDI call; ``(agent, membership, 200 response)``."""
        agent = agent or Agent()
        self.invite(agent, body or midi_offer())
        [pending] = self.bus.pending()
        membership = pending.accept(roster)
        [ok] = self.replies()
        assert ok.status == 200, ok
        self.send(agent.ack("sip:demo@127.0.0.1", agent.cseq, _tag(ok)))
        return agent, membership, ok

    def midi_to_caller(self):
        packets = [RtpMidiPacket.parse(data) for data in self.reactor.take(CALLER_RTP)]
        return packets


def _tag(response):
    return response.get("to").split("tag=")[1].split(";")[0]


def media_port(ok):
    return Sdp.parse(ok.body).media().port


def caller_rtp(messages, sequence=1, ssrc=0xCA11, timestamp=1000, payload_type=96):
    return (rtp_header(sequence, timestamp, ssrc, True, payload_type)
            + command_section([(0, message) for message in messages], journal_follows=False))


# --- registration ---------------------------------------------------------------------

def test_register_is_challenged_then_checked_with_the_bus_as_a_digest_proof(gateway):
    ok = gateway.register(Agent(user="alice"))
    assert ok.status == 200 and "expires=" in ok.get("contact")
    [request] = gateway.bus.checks
    assert (request.session, request.name, request.door, request.source) == (
        "demo", "alice", "sip", "127.0.0.1")
    assert isinstance(request.credential, DigestProof)
    assert request.credential.matches(DEMO_PASSPHRASE)
    assert gateway.bus.joins == []          # registering is not joining
    assert "received=127.0.0.1" in ok.get("via") and "rport=5070" in ok.get("via")


@pytest.mark.parametrize("reason, status", [
    (values.WRONG_PASSPHRASE, 403), (values.UNKNOWN_SESSION, 404),
    (values.THROTTLED, 503), (values.GATEWAY_FULL, 503)])
def test_a_refused_check_is_answered_the_sip_way(gateway, reason, status):
    final = gateway.register(Agent(), check=Refusal(reason, "no"))
    assert final.status == status
    assert (final.get("retry-after") is not None) == (status == 503)
    if reason == values.WRONG_PASSPHRASE:
        assert gateway.door.agents.core.counts["digest_failures"] == 1


def test_pyvoip_registers_without_qop(gateway):
    assert gateway.register(PyVoip(user="demo")).status == 200


# --- calls ------------------------------------------------------------------------------

def test_an_rtp_midi_offer_joins_the_bus_and_is_answered_when_the_membership_arrives(gateway):
    agent = Agent(user="ann")
    gateway.invite(agent, midi_offer())
    [pending] = gateway.bus.joins
    assert (pending.request.session, pending.request.name, pending.request.door) == (
        "demo", "ann", "sip")
    assert isinstance(pending.request.credential, DigestProof)
    assert gateway.replies() == []          # no answer before the bus's
    pending.accept()
    [ok] = gateway.replies()
    assert ok.status == 200 and ok.get("content-type") == "application/sdp"
    sdp = Sdp.parse(ok.body)
    assert sdp.connection() == "127.0.0.1"
    media = sdp.media()
    assert (media.kind, media.protocol, media.formats) == ("audio", "RTP/AVP", ("96",))
    assert MEDIA_MIN <= media.port <= MEDIA_MIN + 2 and media.port % 2 == 0
    assert sdp.rtpmap() == (96, "rtp-midi", 44100)
    assert sdp.attribute("sendrecv") == "" and sdp.attribute("rtcp") == str(media.port + 1)


def test_midi_flows_both_ways_with_the_journal_and_rtcp_trims_it(gateway):
    agent, membership, ok = gateway.call()
    port = media_port(ok)
    gateway.send(caller_rtp([b"\x90\x3c\x64"]), CALLER_RTP, port)
    [(events, encodings)] = membership.published
    assert [event.data for event in events] == [b"\x90\x3c\x64"]
    assert encodings == {RTP_MIDI_LIST: b"\x90\x3c\x64"}
    gateway.bus.fan_out([MidiEvent(b"\x90\x40\x50", NOW)], ALICE)
    gateway.bus.fan_out([MidiEvent(b"\x90\x43\x50", NOW)], ALICE)
    first, second = gateway.midi_to_caller()
    assert [m for _, m in first.commands] == [b"\x90\x40\x50"]
    assert first.payload_type == 96 and second.journal is not None   # the first is journalled
    assert second.journal.checkpoint == first.sequence
    # The caller's receiver report names our second packet: it becomes the checkpoint.
    report = rtcp.compound(0xCA11, NOW, first.ssrc, second.sequence)
    gateway.send(report, CALLER_RTCP, port + 1)
    gateway.reactor.advance(0.3)
    guards = gateway.midi_to_caller()
    assert guards and all(guard.journal.checkpoint == second.sequence for guard in guards)
    assert gateway.door.agents.media_counts()["feedback_in"] == 1


def test_beat_clock_never_reaches_a_sip_caller(gateway):
    gateway.call()
    clock = RosterEntry(-1, "clock", "clock")
    for _ in range(48):
        gateway.bus.fan_out([MidiEvent(b"\xf8", NOW)], clock)
    assert gateway.midi_to_caller() == []
    gateway.bus.fan_out([MidiEvent(b"\xfc", NOW), MidiEvent(b"\x90\x40\x50", NOW)], ALICE)
    [packet] = gateway.midi_to_caller()
    assert [m for _, m in packet.commands] == [b"\x90\x40\x50"]


def test_the_callers_receiver_reports_give_the_members_round_trip(gateway):
    agent, membership, ok = gateway.call()
    port = media_port(ok)
    gateway.bus.fan_out([MidiEvent(b"\x90\x40\x50", NOW)], ALICE)
    [first] = gateway.midi_to_caller()
    gateway.reactor.advance(6.0)              # a report is due, an SR: we sent RTP
    [sr] = [data for data in gateway.reactor.take(CALLER_RTCP) if data[1] == rtcp.SR]
    sent_at, last_sr = sender_report_time(sr)
    gateway.reactor.advance(0.05)
    gateway.send(receiver_report(0xCA11, first.ssrc, last_sr, held=0.01), CALLER_RTCP,
                 port + 1)
    [latency] = membership.latencies
    expected = (gateway.reactor.seconds() - sent_at - 0.01) * 1000
    assert expected > 0 and abs(latency - expected) < 0.1


def test_guard_packets_repair_what_the_caller_may_have_lost(gateway):
    gateway.call()
    gateway.bus.fan_out([MidiEvent(b"\x90\x40\x50", NOW)], ALICE)
    gateway.midi_to_caller()
    gateway.reactor.advance(0.3)
    guards = gateway.midi_to_caller()
    assert guards and all(p.commands == [] and p.journal is not None for p in guards)


def test_bye_leaves_with_an_rtcp_bye_and_gives_the_media_ports_back(gateway):
    agent, membership, ok = gateway.call()
    gateway.send(agent.request("BYE", "sip:demo@127.0.0.1", to_tag=_tag(ok)))
    assert [r.status for r in gateway.replies()] == [200]
    assert membership.left == ["bye"]
    assert rtcp.read(gateway.reactor.take(CALLER_RTCP)[-1], 0).bye
    assert gateway.door.agents.members == {}
    # The same pair serves the next call.
    _, _, again = gateway.call(Agent(user="bob"))
    assert media_port(again) in (MEDIA_MIN, MEDIA_MIN + 2)


def test_the_bus_kicking_the_caller_sends_our_bye(gateway):
    agent, membership, ok = gateway.call()
    gateway.bus.kick(membership, "kicked")
    [bye] = gateway.replies()
    assert bye.method == "BYE" and bye.uri == f"sip:alice@{AGENT[0]}:{AGENT[1]}"
    assert gateway.door.agents.members == {}


def test_media_silence_hangs_up(gateway):
    _, membership, _ = gateway.call()
    gateway.reactor.advance(31)
    assert membership.left == ["media_timeout"]
    assert any(r.method == "BYE" for r in gateway.replies() if hasattr(r, "method"))


def test_a_full_session_is_busy_here(gateway):
    gateway.invite(Agent(), midi_offer())
    gateway.bus.joins[0].refuse(values.SESSION_FULL)
    [busy] = gateway.replies()
    assert busy.status == 486 and gateway.door.agents.members == {}


def test_a_membership_that_arrives_after_cancel_is_left(gateway):
    agent = Agent()
    gateway.invite(agent, midi_offer())
    gateway.send(agent.request("CANCEL", "sip:demo@127.0.0.1", cseq=agent.cseq,
                               branch=agent.last_branch))
    assert sorted(r.status for r in gateway.replies()) == [200, 487]
    membership = gateway.bus.joins[0].accept()
    assert membership.left == ["left while joining"]


def test_an_audio_only_offer_goes_to_the_phone_side(gateway):
    # The phone side's own suite is tests/doors/test_sip_phone_against_bus.py.
    assert gateway.invite(Agent(), PCMU_OFFER) == []
    [pending] = gateway.bus.joins
    pending.accept()
    [ok] = gateway.replies()
    assert ok.status == 200 and Sdp.parse(ok.body).media().formats == ("0", "101")


@pytest.mark.parametrize("fmtp, words", [
    ("tsmode=buffer", "tsmode"), ("j_update=anchor", "j_update"),
    ("ch_never=N", "ch_never"), ("ch_anchor=P", "ch_anchor"), ("cm_unused=ABC", "cm_unused")])
def test_rfc_6295_parameters_it_cannot_honour_are_refused_with_a_warning(gateway, fmtp, words):
    [refused] = gateway.invite(Agent(), midi_offer(fmtp))
    assert refused.status == 488
    assert refused.get("warning").startswith("305 127.0.0.1 ") and words in refused.get("warning")
    assert gateway.bus.joins == []


def test_j_sec_none_and_guardtime_are_honoured(gateway):
    _, _, ok = gateway.call(body=midi_offer("j_sec=none; guardtime=4410; linerate=320000"))
    assert Sdp.parse(ok.body).attribute("fmtp") == "96 j_sec=none; guardtime=4410"
    gateway.bus.fan_out([MidiEvent(b"\x90\x40\x50", NOW)], ALICE)
    [packet] = gateway.midi_to_caller()
    assert packet.journal is None
    gateway.reactor.advance(0.12)           # guardtime 4410 ticks = 0.1 s: a keep-alive
    [keepalive] = gateway.midi_to_caller()
    assert keepalive.commands == [] and keepalive.journal is None


def test_the_mpeg4_generic_form_is_answered_in_kind(gateway):
    offer = midi_offer("streamtype=5; mode=rtp-midi; config=\"\"; profile-level-id=12",
                       encoding="mpeg4-generic/44100", payload_type=97)
    _, _, ok = gateway.call(body=offer)
    sdp = Sdp.parse(ok.body)
    assert sdp.rtpmap() == (97, "mpeg4-generic", 44100)
    assert "mode=rtp-midi" in sdp.attribute("fmtp")


def test_only_the_first_rtp_midi_line_is_taken_and_the_others_get_port_zero(gateway):
    offer = midi_offer(extra="m=video 5000 RTP/AVP 31\r\n")
    _, _, ok = gateway.call(body=offer)
    lines = [value for kind, value in Sdp.parse(ok.body).lines if kind == "m"]
    assert lines[1] == "video 0 RTP/AVP 31"


def test_media_from_another_host_is_refused_and_counted(gateway):
    _, membership, ok = gateway.call()
    gateway.send(caller_rtp([b"\x90\x3c\x64"]), ("10.9.9.9", 4000), media_port(ok))
    assert membership.published == [] and gateway.drops.get("sip", "unknown_source") == 1


# --- transports ----------------------------------------------------------------------------

def test_sfront_and_standard_agents_share_the_udp_port(gateway):
    sfront = SfrontDouble(port=5004, call_id=6869619084028907834)
    gateway.send(sfront.invite(0, NOW), sfront.rtp_source)
    [challenge] = gateway.reactor.take(sfront.rtp_source)
    assert b"SignSDP" in challenge          # sfront's own challenge, in its dialect
    gateway.send(Agent().request("OPTIONS", "sip:demo@127.0.0.1"))
    [options] = gateway.replies()
    assert options.status == 200 and "INVITE" in options.get("allow")


def test_a_call_over_tcp_ends_when_its_connection_is_lost(gateway):
    agent = Agent(transport="TCP", address=("127.0.0.1", 40123))
    stream, transport = gateway.reactor.stream_ports[5060].connect(agent.address)

    framer = StreamFramer()

    def responses():
        data, _ = transport.value(), transport.clear()
        return [parse_sip(frame) for frame in framer.feed(data)]
    uri = "sip:demo@127.0.0.1;transport=tcp"
    stream.dataReceived(agent.request("INVITE", uri, body=midi_offer()))
    [challenge] = responses()
    stream.dataReceived(agent.request("INVITE", uri,
                                      [agent.authorization(challenge, "INVITE", uri)],
                                      body=midi_offer()))
    membership = gateway.bus.joins[0].accept()
    [ok] = [r for r in responses() if r.status == 200]
    assert "transport=tcp" in ok.get("contact")
    assert gateway.door.agents.calls_by_transport()["TCP"] == 1
    stream.connectionLost(None)
    assert membership.left == ["closed"] and gateway.door.agents.members == {}


def test_stopping_says_bye_to_every_caller(gateway):
    _, membership, _ = gateway.call()
    gateway.door.stopService()
    assert [r.method for r in gateway.replies()] == ["BYE"]
    assert membership.left == ["shutdown"]


# --- operator's view --------------------------------------------------------------------------

def test_status_and_metrics_show_calls_digest_failures_and_media_packets(gateway):
    _, _, ok = gateway.call()
    gateway.send(caller_rtp([b"\x90\x3c\x64"]), CALLER_RTP, media_port(ok))
    gateway.register(Agent(user="eve"), check=Refusal(values.WRONG_PASSPHRASE, "no"))
    status = gateway.door.status()["user_agents"]
    assert status["calls_by_transport"] == {"UDP": 1, "TCP": 0}
    assert status["udp_shared_with_sfront"] and status["media_packets"]["rtp_in"] == 1
    assert status["core"]["digest_failures"] == 1
    samples = {(family.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in metrics.SipCollector(gateway.door).collect()
               for sample in family.samples}
    assert samples[("netgateway_sip_uas_calls", (("transport", "UDP"),))] == 1
    assert samples[("netgateway_sip_uas_calls_answered", (("transport", "UDP"),))] == 1
    assert samples[("netgateway_sip_uas_digest_failures", ())] == 1
    assert samples[("netgateway_sip_uas_media_packets", (("kind", "rtp_in"),))] == 1
