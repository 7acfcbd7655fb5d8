"""A stand-in for one sfront 0.98 client, written from shared/protocols/sfront.md.

It writes what the real client writes (§2.1: two INVITEs, the signed resend
after a 401, ACK, INFO, BYE; §3: signed RTP with SSRC 0 and signed RTCP) and
checks what the real client checks of the gateway's member INVITE (§2.3),
so the sans-IO server and the door can be driven without sockets. The
real client, in tests/integration, is the judge; this double is for speed
and for what a real client will not do (replays, forgeries, floods).
"""

import struct

from gateway.protocols.rtpmidi.payload import command_section
from gateway.protocols.sip import sfront
from gateway.protocols.sip.message import Request, Response, parse
from gateway.protocols.sip.sdp import NTP_UNIX_OFFSET, Sdp

DEMO_PASSPHRASE = "play along with netgateway demo"
DEMO_KEYED_NAME = "yYyUa/wTDUBMVnpUgiGNEw=="      # captured from a real client (sfront.md §1)


class SfrontDouble:
    """One client: RTP socket ``host:port``, RTCP socket ``host:port+1``, Call-ID ``call_id``."""

    def __init__(self, session="demo", passphrase=DEMO_PASSPHRASE, host="127.0.0.2", port=5004,
                 call_id=6869619084028907834, sip=("127.0.0.1", 5060), login="unknown",
                 source_host=None, rate=44100):
        self.key = sfront.session_key(passphrase)
        self.keyed = (sfront.MIRROR_KEYED_NAME if session == sfront.MIRROR_NAME
                      else sfront.keyed_name(self.key, session))
        self.host = host
        self.port = port
        self.call_id = call_id
        self.sip = sip
        self.login = login
        self.rate = rate
        # The UDP source the server sees: the kernel may pick another loopback address.
        self.rtp_source = (source_host or host, port)
        self.rtcp_source = (source_host or host, port + 1)
        self.cseq = {0: 1, 1: 1}
        self.sequence = 1000
        self.timestamp = 77
        self.member = None          # (ssrc, media address) once a member INVITE verified

    def sdp(self, now, nonce=None, nat=None):
        lines = [("v", "0"), ("o", f"{self.login} {self.call_id} 0 IN IP4 vm"),
                 ("s", self.keyed), ("a", "tool:sfront 0.98 07/21/10"),
                 ("t", f"{int(now) + NTP_UNIX_OFFSET} 0"), ("m", f"audio {self.port} RTP/AVP 96"),
                 ("c", f"IN IP4 {self.host}")]
        if nonce is not None:
            lines.append(("a", f'nonce:"{nonce}"'))
        if nat is not None:
            lines.append(("a", f"nat:{nat[0]} {nat[1]}"))
        lines += [("a", f"rtpmap:96 pre1-mpeg4-generic/{self.rate}"),
                  ("a", "fmtp:96 streamtype=5; mode=rtp-midi; config=\"\"; profile-level-id=12;"
                        " guardtime=44100")]
        return Sdp(lines).to_bytes("\n")

    def invite(self, leg, now, nonce=None, nat=None, key=None):
        """The INVITE from the RTP (leg 0) or RTCP (leg 1) socket; signed when ``nonce``."""
        port = self.sip[1] + leg
        body = self.sdp(now, nonce, nat)
        headers = [("i", str(self.call_id + leg)), ("v", f"SIP/2.0/UDP {self.host}:{self.port + leg}"),
                   ("c", "application/sdp"), ("f", f"sip:{self.login}@vm"),
                   ("t", f"sip:{self.keyed}@{self.sip[0]}:{port}"),
                   ("CSeq", str(self.cseq[leg])), ("User-Agent", "sfront/0.98 07/21/10")]
        if nonce is not None:
            digest = sfront.digest(key or self.key, body)
            headers.insert(6, ("Authorization", f'SignSDP nonce="{nonce}", digest="{digest}"'))
        return Request("INVITE", f"sip:{self.keyed}@{self.sip[0]}:{port}", headers,
                       body).to_bytes(sfront.DIALECT)

    def request(self, method, leg):
        port = self.sip[1] + leg
        self.cseq[leg] += 1
        return Request(method, f"sip:{self.keyed}@{self.sip[0]}:{port}", [
            ("i", str(self.call_id + leg)), ("v", f"SIP/2.0/UDP {self.host}:{self.port + leg}"),
            ("f", f"sip:{self.login}@vm"), ("t", f"sip:{self.keyed}@{self.sip[0]}:{port}"),
            ("CSeq", str(self.cseq[leg])), ("User-Agent", "sfront/0.98 07/21/10"),
        ]).to_bytes(sfront.DIALECT)

    def challenged(self, reply, leg):
        """The nonce of a 401 (and CSeq + 1 for the resend, as the client does)."""
        response = parse(reply)
        assert isinstance(response, Response) and response.status == 401, response
        assert response.call_id == str(self.call_id + leg)
        nonce = response.get("www-authenticate").split('"')[1]
        assert sfront.is_digest(nonce)
        self.cseq[leg] += 1
        return nonce

    def member_invite(self, data, source):
        """What the real client checks of an INVITE introducing a member (§2.3).

        Returns the member's ``(ssrc, (c=, m=))``; raises AssertionError for
        anything the client would discard.
        """
        request = parse(data)
        assert data.endswith(b"\0") and b"\r" not in data
        assert request.method == "INVITE"
        assert source == self.sip, "the client checks the SIP server's address"
        assert request.get("in-reply-to") == str(self.call_id)
        server_call_id = int(request.call_id)
        auth = sfront.SignSdp.parse(request.get("authorization"))
        text = struct.pack("<II", server_call_id & 0xFFFFFFFF, self.call_id & 0xFFFFFFFF) + \
            bytes(map(int, source[0].split("."))) + struct.pack(">H", source[1])
        assert auth.nonce == sfront.digest(self.key, text), "nonce"
        assert auth.digest == sfront.digest(self.key, request.body), "digest"
        sdp = Sdp.parse(request.body)
        assert sdp.first("s") == self.keyed
        origin, media, rtpmap = sdp.origin(), sdp.media(), sdp.rtpmap()
        assert origin.session_id < 2 ** 32
        assert sdp.connection() not in ("127.0.0.1", "0.0.0.0", "255.255.255.255")
        assert rtpmap.encoding.lower() == "pre1-mpeg4-generic" and rtpmap.clock_rate == self.rate
        assert str(rtpmap.payload_type) in media.formats
        self.member = (origin.session_id, (sdp.connection(), media.port))
        return self.member

    def rtp(self, commands, key=None, sequence=None):
        """A signed RTP-MIDI packet carrying ``commands`` [(delta, message)], SSRC 0 (§3.1)."""
        if sequence is None:
            self.sequence = (self.sequence + 1) & 0xFFFF
            sequence = self.sequence
        self.timestamp += 42
        packet = struct.pack("!BBHII", 0x80, 0x80 | 96, sequence, self.timestamp, 0)
        return sfront.sign(key or self.key, packet + command_section(commands, journal_follows=False))

    def rtcp(self, highest=None, bye=False, key=None):
        """A signed RR from the client's RTCP SSRC, with a report block when ``highest``."""
        packet = sfront.receiver_report(self.call_id & 0xFFFFFFFF,
                                        self.member[0] if self.member else 0, highest, bye)
        return sfront.sign(key or self.key, packet)
