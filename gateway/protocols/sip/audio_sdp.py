"""Phone calls by SDP offer/answer: the audio a phone's offer proposes, and our answer.

# implements RFC 3264 §5 and §6 (one answer m= line per offered one, those not
#   taken with port 0; the chosen codec and telephone-event with the offered
#   payload types; direction attributes answered in kind)
# implements RFC 3551 §6 (static payload types 0 PCMU and 8 PCMA, also when the
#   offer has no a=rtpmap for them) and RFC 4733 §7.1.1 (telephone-event/8000,
#   its payload type as offered, a=fmtp:PT 0-15: the DTMF events we read)
# implements RFC 4566 §5 (session- and media-level c=, m=, a= lines), RFC 3605
#   (a=rtcp) and RFC 5761 §5.1.1 (a=rtcp-mux answered in kind)

An offer that :func:`gateway.protocols.sip.midi_sdp.read_offer` found to be a
phone's (audio without RTP-MIDI) is read here: the first ``m=audio`` line over
RTP/AVP(F) with PCMU or PCMA is taken; PCMU is preferred, then PCMA, whatever
their order in the offer (every phone speaks both; μ-law is the one our
synthesizer encodes first and the one RFC 3551 lists first). A
``telephone-event/8000`` format in the same line is answered with its offered
payload type (usually 101); without one the caller has no keys for us but
still hears the jam. We always send 20 ms frames (``a=ptime:20``; RFC 3551
§4.1's default, which every phone plays whatever ptime it asked for).

Sans-IO: bytes in, values out.
"""

import typing

from gateway.protocols.sip.midi_sdp import (
    _DIRECTIONS, RTP_PROFILES, Refused, answer_body, describe, stream_connection,
)
from gateway.protocols.sip.phone_audio import PCMA, PCMU
from gateway.protocols.sip.sdp import MalformedSdp, Sdp

__all__ = ["AudioOffer", "read_audio_offer", "audio_answer", "CODECS"]

CODECS = {"pcmu": PCMU, "pcma": PCMA}
_STATIC = {"0": "pcmu", "8": "pcma"}
_PREFERENCE = (PCMU, PCMA)
_ENCODING_NAMES = {PCMU: "PCMU", PCMA: "PCMA"}
TELEPHONE_EVENT = "telephone-event"
PTIME = 20


class AudioOffer(typing.NamedTuple):
    """The audio stream a phone offered, as we will run it."""

    payload_type: int               # PCMU (0) or PCMA (8)
    event_payload_type: typing.Optional[int]    # telephone-event/8000 as offered, or None
    address: tuple                  # where our RTP goes (until the phone's RTP comes)
    rtcp_address: tuple
    send: bool                      # we send the jam's audio to the phone
    receive: bool                   # the phone sends us its keys
    direction: str                  # our answer's direction attribute
    rtcp_mux: bool
    media_index: int
    media_lines: tuple              # every offered m= value, for the refused lines


def read_audio_offer(body):
    """An :class:`AudioOffer`, or a :class:`~gateway.protocols.sip.midi_sdp.Refused`, for
    an SDP offer (its bytes, or the :class:`~gateway.protocols.sip.sdp.Sdp` of a
    :class:`~gateway.protocols.sip.midi_sdp.PhoneOffer`)."""
    try:
        return _read(body if isinstance(body, Sdp) else Sdp.parse(body))
    except MalformedSdp as error:
        return Refused(488, 399, f"unreadable SDP: {error}"[:120])


def _read(sdp):
    session_connection, session_direction, media, _ = describe(sdp)
    for index, line in enumerate(media):
        if line.kind != "audio" or line.port == 0 or line.protocol.upper() not in RTP_PROFILES:
            continue
        rtpmaps = line.rtpmaps()
        codecs = {}
        event = None
        for payload_type in line.formats:
            encoding = rtpmaps.get(payload_type)
            if encoding is None:
                name = _STATIC.get(payload_type)
                if name is not None:
                    codecs.setdefault(CODECS[name], int(payload_type))
                continue
            name, _, rest = encoding.partition("/")
            name = name.strip().lower()
            rate = rest.split("/", 1)[0].strip()
            if name in CODECS and rate == "8000" and payload_type == str(CODECS[name]):
                codecs.setdefault(CODECS[name], int(payload_type))
            elif (name == TELEPHONE_EVENT and rate == "8000" and payload_type.isdigit()
                  and 96 <= int(payload_type) <= 127 and event is None):
                event = int(payload_type)
        chosen = next((codec for codec in _PREFERENCE if codec in codecs), None)
        if chosen is None:
            continue
        connection = stream_connection(line, session_connection, "audio")
        if type(connection) is Refused:
            return connection
        if line.port >= 65535:
            return Refused(488, 399, f"media port {line.port} is not usable")
        return _offer(line, index, media, chosen, event, connection[1],
                      _direction(line, session_direction))
    return Refused(488, 304, "no PCMU or PCMA audio (8000 Hz) in the offer")


def _direction(line, session_direction):
    for name in _DIRECTIONS:
        if line.attribute(name) is not None:
            return name
    return session_direction


def _offer(line, index, media, codec, event, host, direction):
    rtcp_mux = line.attribute("rtcp-mux") is not None
    rtcp_port, rtcp_host = line.port + 1, host
    rtcp = line.attribute("rtcp")
    if rtcp and not rtcp_mux:
        parts = rtcp.split()
        if parts and parts[0].isdigit() and 0 < int(parts[0]) < 65536:
            rtcp_port = int(parts[0])
            if len(parts) == 4 and parts[1] == "IN" and parts[2] == "IP4":
                rtcp_host = parts[3]
    answered = _DIRECTIONS[direction]
    return AudioOffer(
        payload_type=codec, event_payload_type=event, address=(host, line.port),
        rtcp_address=(host, line.port) if rtcp_mux else (rtcp_host, rtcp_port),
        send=answered in ("sendrecv", "sendonly"), receive=answered in ("sendrecv", "recvonly"),
        direction=answered, rtcp_mux=rtcp_mux, media_index=index,
        media_lines=tuple(item.value for item in media))


def audio_answer(offer, host, port, session_id, agent="netgateway"):
    """The SDP answer to ``offer`` (an :class:`AudioOffer`) with our media at ``host:port``."""
    codec, event = offer.payload_type, offer.event_payload_type
    formats = f"{codec}" if event is None else f"{codec} {event}"
    stream = [("m", f"audio {port} RTP/AVP {formats}"),
              ("a", f"rtpmap:{codec} {_ENCODING_NAMES[codec]}/8000")]
    if event is not None:
        stream.append(("a", f"rtpmap:{event} {TELEPHONE_EVENT}/8000"))
        stream.append(("a", f"fmtp:{event} 0-15"))
    stream.append(("a", f"ptime:{PTIME}"))
    return answer_body(offer, host, port, session_id, agent, stream)
