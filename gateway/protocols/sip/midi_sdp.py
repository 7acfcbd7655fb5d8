"""RTP-MIDI by SDP offer/answer: what a standard SIP caller's offer asks for, and our answer.

# implements RFC 3264 §5 and §6 (the answer has one m= line per offered one, the ones
#   not taken with port 0; direction attributes answered in kind; payload type and
#   clock rate as offered)
# implements RFC 4566 §5 (session- and media-level c=, m=, a= lines) and RFC 3605
#   (a=rtcp), RFC 5761 §5.1.1 (a=rtcp-mux answered in kind)
# implements RFC 6295 §6.1 (audio/rtp-midi) and §6.2 (audio/mpeg4-generic with
#   mode=rtp-midi, and sfront's pre1-mpeg4-generic) and Appendix C's session
#   configuration parameters, each honoured or refused (see PARAMETERS below)

Which offers are RTP-MIDI: an ``m=audio`` line over RTP/AVP or RTP/AVPF whose
formats include one mapped to ``rtp-midi/RATE``, or to ``mpeg4-generic/RATE`` (or
sfront's ``pre1-mpeg4-generic``) with ``mode=rtp-midi`` in its ``a=fmtp``. The
first such format of the first such line is taken; every other m= line is
refused with port 0. An offer without one, but with audio codecs a phone speaks
(PCMU, PCMA), is a :class:`PhoneOffer`: the door hands it to the phone side.

The RFC 6295 parameters of the chosen format, and what the gateway does with them
(the offer's parameters describe the stream the caller wants to receive; our
answer repeats the ones we honour, so both directions agree):

=================== ===================================================================
``j_sec``           ``recj`` (default): we send the recovery journal; ``none``: we send
                    none (and need none: a journal-less stream is read as it comes)
``j_update``        ``closed-loop`` (default): our journal is trimmed by the caller's
                    RTCP receiver reports. ``anchor``, ``open-loop``: refused (488)
``ch_never``        accepted when it names none of the chapters we write (P C W N T A)
``ch_default``      accepted (our chapters use the default semantics)
``ch_anchor``       refused when it names a chapter (no anchor semantics here)
``tsmode``          ``comex`` (default): delta times are when commands were played.
                    ``async``, ``buffer``: refused
``octpos``,         only mean something with tsmode async or buffer: refused when
``mperiod``         given with them (never reached), ignored otherwise
``linerate``        accepted: with comex timing it changes nothing we send
``guardtime``       honoured: we send a packet (journal only, or empty) at least every
                    guardtime RTP ticks while the call is quiet (at least 50 ms)
``rtp_ptime``,      accepted: we never hold MIDI back to fill a packet
``rtp_maxptime``
rendering ones      ``render``, ``musicport``, ``smf_*``, ``url``, ``cid``, ``inline``,
                    ``chanmask``, ``subrender``, ``rinit``: accepted and ignored (the
                    gateway does not render; the caller's synthesizer is its own)
``cm_unused``,      refused when given (we do not filter commands per call)
``cm_used``
=================== ===================================================================

A refusal is a :class:`Refused` with status 488 and a Warning value (RFC 3261
§20.43, code 305 "incompatible media format", 301 for addresses, 304 for media
types) that says which parameter and why.

Sans-IO: bytes in, values out.
"""

import typing

from gateway.protocols.sip.sdp import MalformedSdp, Sdp

__all__ = ["MidiOffer", "PhoneOffer", "Refused", "read_offer", "answer", "MIDI_ENCODINGS",
           "WRITTEN_CHAPTERS", "MIN_GUARD_SECONDS"]

MIDI_ENCODINGS = ("rtp-midi", "mpeg4-generic", "pre1-mpeg4-generic")
_MPEG4 = ("mpeg4-generic", "pre1-mpeg4-generic")
PHONE_ENCODINGS = ("pcmu", "pcma")
_STATIC_PHONE_TYPES = {"0": "pcmu", "8": "pcma"}
RTP_PROFILES = ("RTP/AVP", "RTP/AVPF")
WRITTEN_CHAPTERS = frozenset("PCWNTA")
"""The channel journal chapters our journal sender writes (journal_sender.py)."""
MIN_GUARD_SECONDS = 0.05
MAX_CLOCK_RATE = 1_000_000
_DIRECTIONS = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly",
               "inactive": "inactive"}
_IGNORED = frozenset(("render", "musicport", "url", "cid", "inline", "chanmask", "subrender",
                      "rinit", "rtp_ptime", "rtp_maxptime", "linerate", "ch_default",
                      "streamtype", "mode", "config", "profile-level-id", "octpos", "mperiod",
                      "sizelength", "indexlength", "indexdeltalength", "objecttype"))


class Refused(typing.NamedTuple):
    """The offer cannot be served: answer ``status`` with a Warning of ``warning``."""

    status: int
    code: int
    text: str

    def warning(self, host):
        """The Warning header value (RFC 3261 §20.43): ``code agent "text"``."""
        return f'{self.code} {host} "{self.text}"'


class PhoneOffer(typing.NamedTuple):
    """An audio offer without RTP-MIDI that a phone would make (PCMU/PCMA)."""

    sdp: Sdp


class MidiOffer(typing.NamedTuple):
    """The RTP-MIDI stream a caller offered, as we will run it."""

    payload_type: int
    encoding: str                   # as offered, for the answer's rtpmap
    clock_rate: int
    address: tuple                  # where our RTP goes
    rtcp_address: tuple             # where our RTCP goes (the same with rtcp-mux)
    journal: bool                   # j_sec: we send the recovery journal
    guard_seconds: typing.Optional[float]   # guardtime, in seconds
    guardtime: typing.Optional[int]         # as offered, in ticks, for the answer
    send: bool                      # we send MIDI to the caller
    receive: bool                   # the caller sends MIDI to us
    direction: str                  # our answer's direction attribute
    rtcp_mux: bool
    mpeg4: bool                     # the mpeg4-generic form: its fmtp keys are repeated
    media_index: int
    media_lines: tuple              # every offered m= value, for the refused lines
    origin_id: str


class _Media:
    __slots__ = ("kind", "port", "protocol", "formats", "attributes", "connection", "value")

    def __init__(self, value):
        parts = value.split()
        if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
            raise MalformedSdp(f"bad m= line {value[:60]!r}")
        self.value = value
        self.kind = parts[0].lower()
        self.port = int(parts[1].split("/")[0])
        self.protocol = parts[2]
        self.formats = parts[3:]
        self.attributes = []
        self.connection = None

    def attribute(self, name):
        for attribute_name, value in self.attributes:
            if attribute_name == name:
                return value
        return None

    def rtpmaps(self):
        found = {}
        for name, value in self.attributes:
            if name == "rtpmap":
                number, _, encoding = value.partition(" ")
                found.setdefault(number.strip(), encoding.strip())
        return found

    def fmtp(self, payload_type):
        for name, value in self.attributes:
            if name == "fmtp":
                number, _, params = value.partition(" ")
                if number.strip() == payload_type:
                    return params
        return None


def _attribute(value):
    name, colon, rest = value.partition(":")
    return name.strip().lower(), (rest.strip() if colon else "")


def _connection(value):
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN":
        raise MalformedSdp(f"bad c= line {value[:60]!r}")
    return parts[1], parts[2].split("/", 1)[0]


def fmtp_parameters(text):
    """``{name: value}`` of an fmtp parameter list (``a; b=c; d="e f"``), names lowered."""
    params = {}
    for item in (text or "").split(";"):
        name, equals, value = item.strip().partition("=")
        name = name.strip().lower()
        if name:
            params[name] = value.strip().strip('"') if equals else ""
    return params


def read_offer(body):
    """A :class:`MidiOffer`, :class:`PhoneOffer` or :class:`Refused` for an SDP offer."""
    try:
        sdp = Sdp.parse(body)
        return _read(sdp)
    except MalformedSdp as error:
        return Refused(488, 399, f"unreadable SDP: {error}"[:120])


class _Described(typing.NamedTuple):
    """An SDP body read into its media descriptions and the session-level values."""

    session_connection: typing.Any
    direction: str
    media: list
    origin_id: str


def stream_connection(line, session_connection, what):
    """The IPv4 ``c=`` a media line is reached at (its own, else the session's), or the
    :class:`Refused` that says why there is none."""
    connection = line.connection or session_connection
    if connection is None:
        return Refused(488, 399, f"no c= line for the {what} stream")
    if connection[0] != "IP4":
        return Refused(488, 301, f"address type {connection[0]} is not supported"
                                 " (IPv4 only)")
    return connection


def describe(sdp):
    """The :class:`_Described` of an SDP body: phones' and RTP-MIDI offers alike."""
    session_connection = None
    direction = "sendrecv"
    media = []
    origin_id = "0"
    for kind, value in sdp.lines:
        if kind == "m":
            media.append(_Media(value))
        elif kind == "c":
            if media:
                media[-1].connection = _connection(value)
            else:
                session_connection = _connection(value)
        elif kind == "a":
            name, rest = _attribute(value)
            if media:
                media[-1].attributes.append((name, rest))
            elif name in _DIRECTIONS:
                direction = name
        elif kind == "o":
            parts = value.split()
            if len(parts) >= 2:
                origin_id = parts[1][:20]
    return _Described(session_connection, direction, media, origin_id)


def _read(sdp):
    session_connection, direction, media, origin_id = describe(sdp)
    if not media:
        return Refused(488, 304, "no m= line in the offer")
    phone = False
    unusable = None
    for index, line in enumerate(media):
        if line.kind != "audio" or line.port == 0:
            continue
        if line.protocol.upper() not in RTP_PROFILES:
            unusable = unusable or Refused(488, 302, f"transport {line.protocol} is not"
                                                      " supported (RTP/AVP only)")
            continue
        rtpmaps = line.rtpmaps()
        for payload_type in line.formats:
            encoding = rtpmaps.get(payload_type)
            if encoding is None:
                if _STATIC_PHONE_TYPES.get(payload_type):
                    phone = True
                continue
            name, _, rest = encoding.partition("/")
            name = name.strip().lower()
            if name in PHONE_ENCODINGS:
                phone = True
                continue
            if name not in MIDI_ENCODINGS:
                continue
            params = fmtp_parameters(line.fmtp(payload_type))
            if name in _MPEG4 and params.get("mode", "").lower() != "rtp-midi":
                continue
            connection = stream_connection(line, session_connection, "rtp-midi")
            if type(connection) is Refused:
                return connection
            rate = rest.split("/", 1)[0].strip()
            if not rate.isdigit() or not 0 < int(rate) <= MAX_CLOCK_RATE:
                return Refused(488, 305, f"clock rate {rate[:12]!r} of {name} is not usable")
            return _midi(line, index, media, payload_type, name, int(rate), params,
                         connection[1], _direction(line, direction), origin_id)
    if phone:
        return PhoneOffer(sdp)
    return unusable or Refused(488, 304, "no rtp-midi (RFC 6295) or phone audio in the offer")


def _direction(line, session_direction):
    for name in _DIRECTIONS:
        if line.attribute(name) is not None:
            return name             # the media level overrides the session level
    return session_direction


def _midi(line, index, media, payload_type, name, rate, params, host, direction, origin_id):
    refusal = _refused_parameter(params)
    if refusal is not None:
        return refusal
    guardtime = params.get("guardtime")
    guard_seconds = None
    if guardtime is not None:
        if not guardtime.isdigit() or int(guardtime) == 0:
            return Refused(488, 305, f"guardtime={guardtime[:12]} is not a positive number"
                                     " of RTP ticks")
        guard_seconds = max(MIN_GUARD_SECONDS, int(guardtime) / rate)
        guardtime = int(guardtime)
    rtcp_mux = line.attribute("rtcp-mux") is not None
    rtcp_port = line.port + 1
    rtcp_host = host
    rtcp = line.attribute("rtcp")
    if rtcp and not rtcp_mux:
        parts = rtcp.split()
        if parts and parts[0].isdigit() and 0 < int(parts[0]) < 65536:
            rtcp_port = int(parts[0])
            if len(parts) == 4 and parts[1] == "IN" and parts[2] == "IP4":
                rtcp_host = parts[3]
    if line.port >= 65535:
        return Refused(488, 399, f"media port {line.port} is not usable")
    answered = _DIRECTIONS[direction]
    return MidiOffer(
        payload_type=int(payload_type), encoding=name, clock_rate=rate,
        address=(host, line.port),
        rtcp_address=(host, line.port) if rtcp_mux else (rtcp_host, rtcp_port),
        journal=params.get("j_sec", "recj").lower() != "none",
        guard_seconds=guard_seconds, guardtime=guardtime,
        send=answered in ("sendrecv", "sendonly"), receive=answered in ("sendrecv", "recvonly"),
        direction=answered, rtcp_mux=rtcp_mux, mpeg4=name in _MPEG4, media_index=index,
        media_lines=tuple(item.value for item in media), origin_id=origin_id)


def _refused_parameter(params):
    j_sec = params.get("j_sec", "recj").lower()
    if j_sec not in ("recj", "none"):
        return Refused(488, 305, f"j_sec={j_sec[:16]} is not supported (recj or none)")
    j_update = params.get("j_update", "closed-loop").lower()
    if j_update != "closed-loop":
        return Refused(488, 305, f"j_update={j_update[:16]} is not supported (closed-loop:"
                                 " the journal is trimmed by RTCP receiver reports)")
    never = set(params.get("ch_never", "").upper())
    if never & WRITTEN_CHAPTERS:
        return Refused(488, 305, "ch_never names chapters the journal needs: "
                                 + "".join(sorted(never & WRITTEN_CHAPTERS)))
    if params.get("ch_anchor", "").strip():
        return Refused(488, 305, "ch_anchor is not supported (no anchor journal semantics)")
    tsmode = params.get("tsmode", "comex").lower()
    if tsmode != "comex":
        return Refused(488, 305, f"tsmode={tsmode[:16]} is not supported (comex only)")
    for name in ("cm_unused", "cm_used"):
        if name in params:
            return Refused(488, 305, f"{name} is not supported (commands are not filtered)")
    return None


def answer_body(offer, host, port, session_id, agent, stream_lines):
    """An SDP answer (RFC 3264 §6): every offered m= line refused with port 0 but the
    chosen one, which gets ``stream_lines`` (its m= line and attributes), then RTCP
    (a=rtcp-mux or a=rtcp) and the answered direction."""
    lines = [("v", "0"), ("o", f"{agent} {session_id} {session_id} IN IP4 {host}"),
             ("s", agent), ("c", f"IN IP4 {host}"), ("t", "0 0")]
    for index, value in enumerate(offer.media_lines):
        if index != offer.media_index:
            kind, _, rest = value.partition(" ")
            _, _, after_port = rest.partition(" ")
            lines.append(("m", f"{kind} 0 {after_port}"))
            continue
        lines += stream_lines
        lines.append(("a", "rtcp-mux") if offer.rtcp_mux else ("a", f"rtcp:{port + 1}"))
        lines.append(("a", offer.direction))
    return Sdp(lines).to_bytes()


def answer(offer, host, port, session_id, agent="netgateway"):
    """The SDP answer to ``offer`` (a :class:`MidiOffer`) with our media at ``host:port``."""
    pt = offer.payload_type
    stream = [("m", f"audio {port} RTP/AVP {pt}"),
              ("a", f"rtpmap:{pt} {offer.encoding}/{offer.clock_rate}")]
    params = []
    if offer.mpeg4:
        params += ["streamtype=5", "mode=rtp-midi", 'config=""', "profile-level-id=12"]
    if not offer.journal:
        params.append("j_sec=none")
    if offer.guardtime is not None:
        params.append(f"guardtime={offer.guardtime}")
    if params:
        stream.append(("a", f"fmtp:{pt} {'; '.join(params)}"))
    return answer_body(offer, host, port, session_id, agent, stream)


# Our offer, and the answer to it ----------------------------------------------------------
#
# implements RFC 3264 §5 (the offer: one m= line, our media address, sendrecv) and §6
#   read from the other side (the answer has as many m= lines as the offer, port 0 for a
#   refused one, the same encoding and clock rate), RFC 6295 §6.1 (audio/rtp-midi with
#   the default parameters: recovery journal, closed-loop, comex) and RFC 3605 (a=rtcp)
#
# Used when the gateway offers: in the INVITEs of sip.invite (RFC 3261 §13.2.1) and in
# the 200 to an INVITE without an offer (the answer then comes in the ACK).

OFFER_PAYLOAD_TYPE = 96
OFFER_CLOCK_RATE = 44100


def offer(host, port, session_id, agent="netgateway"):
    """Our SDP offer: one RTP-MIDI stream (``rtp-midi/44100``, payload type 96) at
    ``host:port``, RTCP on ``port + 1``, both directions."""
    pt = OFFER_PAYLOAD_TYPE
    return Sdp([("v", "0"), ("o", f"{agent} {session_id} {session_id} IN IP4 {host}"),
                ("s", agent), ("c", f"IN IP4 {host}"), ("t", "0 0"),
                ("m", f"audio {port} RTP/AVP {pt}"),
                ("a", f"rtpmap:{pt} rtp-midi/{OFFER_CLOCK_RATE}"),
                ("a", f"rtcp:{port + 1}"), ("a", "sendrecv")]).to_bytes()


def read_answer(body):
    """The stream an SDP answer to :func:`offer` sets up, or :class:`Refused`.

    The answer describes the answerer's side as an offer does (where its media
    goes, what it wants to receive, its direction), so it is read as one: the
    result is a :class:`MidiOffer` to run a call's media with. Refused: no answer,
    not one m= line, the stream refused (port 0), no rtp-midi in it, or another
    clock rate than offered.
    """
    if not body:
        return Refused(488, 304, "no SDP answer to our offer")
    try:
        media_lines = sum(1 for kind, _ in Sdp.parse(body).lines if kind == "m")
    except MalformedSdp as error:
        return Refused(488, 399, f"unreadable SDP answer: {error}"[:120])
    if media_lines != 1:
        return Refused(488, 304, f"the answer has {media_lines} m= lines; our offer had one")
    stream = read_offer(body)
    if isinstance(stream, PhoneOffer):
        return Refused(488, 304, "the answer has no rtp-midi stream")
    if isinstance(stream, Refused):
        if stream.code == 304:
            return Refused(488, 304, "the answer refused the rtp-midi stream (or has none)")
        return stream
    if stream.clock_rate != OFFER_CLOCK_RATE:
        return Refused(488, 305, f"the answer's clock rate {stream.clock_rate} is not the"
                                 f" offered {OFFER_CLOCK_RATE}")
    return stream


__all__ += ["offer", "read_answer", "OFFER_PAYLOAD_TYPE", "OFFER_CLOCK_RATE"]
