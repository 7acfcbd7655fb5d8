"""Test doubles of the SIP user agents measured in shared/protocols/sip-clients.md.

Each writes its requests the way the real client does (header order and forms,
Via parameters, digest quirks); the tests feed them to the sans-IO core.
"""

import hashlib
import itertools
import re

from gateway.actions import Send
from gateway.protocols.sip.digest import response_digest
from gateway.protocols.sip.message import parse
from gateway.protocols.sip.uas import Authenticate, UserAgentServer

NOW = 1_800_000_000.0
GATEWAY = ("127.0.0.1", 5060)
REALM = "jam"
PASSPHRASES = {"demo": "play along with netgateway demo", "jam": "another passphrase of twenty"}

PCMU_OFFER = (b"v=0\r\no=- 1234 1234 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
              b"m=audio 40002 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
              b"a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
              b"a=fmtp:101 0-15\r\na=sendrecv\r\n")
MIDI_OFFER = (b"v=0\r\no=sipsak 1 1 IN IP4 127.0.0.1\r\ns=midi\r\nc=IN IP4 127.0.0.1\r\n"
              b"t=0 0\r\nm=audio 42000 RTP/AVP 96\r\na=rtpmap:96 rtp-midi/44100\r\n")
ANSWER = (b"v=0\r\no=netgateway 1 1 IN IP4 127.0.0.1\r\ns=netgateway\r\nc=IN IP4 127.0.0.1\r\n"
          b"t=0 0\r\nm=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
          b"a=rtpmap:101 telephone-event/8000\r\n")

_counter = itertools.count(1)


def make_core(**options):
    options.setdefault("now", NOW)
    import random
    options.setdefault("rng", random.Random(7))
    options.setdefault("nonce_key", b"k" * 32)
    return UserAgentServer(REALM, GATEWAY[0], {"UDP": 5060, "TCP": 5060, "TLS": 5061},
                           **options)


def sends(actions):
    return [action for action in actions if type(action) is Send]


def responses(actions):
    return [parse(action.data) for action in sends(actions)]


def only(actions, kind):
    found = [action for action in actions if type(action) is kind]
    assert len(found) == 1, actions
    return found[0]


def verify(core, actions, now=NOW, passphrases=PASSPHRASES):
    """Do what the adapter does with Authenticate: the bus's check, by passphrase."""
    out = []
    for action in actions:
        if type(action) is not Authenticate:
            out.append(action)
            continue
        secret = passphrases.get(action.session)
        if secret is None:
            out += core.refused(action.ticket, "unknown_session", now)
        elif action.proof.matches(secret):
            out += core.authenticated(action.ticket, now)
        else:
            out += core.refused(action.ticket, "wrong_passphrase", now)
    return out


def _challenge_params(response, algorithm="MD5"):
    for value in response.values("www-authenticate"):
        params = dict(re.findall(r'(\w+)="?([^",]*)"?', value))
        if params.get("algorithm", "MD5").upper() == algorithm:
            return params
    raise AssertionError(f"no {algorithm} challenge in {response.values('www-authenticate')}")


class Agent:
    """A UDP (or TCP) user agent at ``address``, named ``user``, calling the gateway."""

    user_agent = "test agent"
    rport = True
    qop = True
    algorithm = "MD5"

    def __init__(self, user="alice", password=None, address=("127.0.0.1", 5070),
                 transport="UDP", session="demo"):
        self.user = user
        self.session = session
        self.password = PASSPHRASES[session] if password is None else password
        self.address = address
        self.transport = transport
        self.tag = f"{next(_counter):08x}"
        self.call_id = f"{next(_counter):016x}@{address[0]}"
        self.cseq = 0
        self.cnonce = "0a4f113b"
        self.nc = 0
        self.last_branch = None
        self.last_nonce = None

    def branch(self):
        self.last_branch = f"z9hG4bK{next(_counter):010x}"
        return self.last_branch

    def via(self, branch=None):
        branch = branch or self.branch()
        host, port = self.address
        return f"SIP/2.0/{self.transport} {host}:{port};branch={branch}" + (
            ";rport" if self.rport else "")

    def request(self, method, uri, headers=(), body=b"", cseq=None, branch=None, to_tag=None,
                call_id=None):
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        host, port = self.address
        # A REGISTER's To is the AOR, sip:SESSION@HOST; other requests are to their URI.
        to = f"<sip:{self.session}@{GATEWAY[0]}>" if method == "REGISTER" \
            else f"<{uri.split(';')[0]}>"
        if to_tag:
            to += f";tag={to_tag}"
        lines = [f"{method} {uri} SIP/2.0", f"Via: {self.via(branch)}", "Max-Forwards: 70",
                 f"From: <sip:{self.user}@{host}>;tag={self.tag}", f"To: {to}",
                 f"Call-ID: {call_id or self.call_id}", f"CSeq: {cseq} {method}",
                 f"User-Agent: {self.user_agent}"]
        if not any(name.lower() == "contact" for name, _ in headers):
            lines.append(f"Contact: <sip:{self.user}@{host}:{port}>")
        lines += [f"{name}: {value}" for name, value in headers]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def authorization(self, challenge, method, uri, algorithm=None, password=None):
        algorithm = algorithm or self.algorithm
        params = _challenge_params(challenge, algorithm)
        nonce = params["nonce"]
        password = self.password if password is None else password
        if self.qop:
            if nonce != self.last_nonce:
                self.nc, self.last_nonce = 0, nonce     # a new nonce counts from 1
            self.nc += 1
            nc = f"{self.nc:08x}"
            response = response_digest(algorithm, self.user, params["realm"], password,
                                       method, uri, nonce, nc, self.cnonce, "auth")
            return ("Authorization", f'Digest username="{self.user}", realm="{params["realm"]}",'
                                     f' nonce="{nonce}", uri="{uri}", response="{response}",'
                                     f' algorithm={algorithm}, cnonce="{self.cnonce}",'
                                     f' qop=auth, nc={nc}')
        response = response_digest("MD5", self.user, params["realm"], password, method,
                                   uri, nonce)
        return ("Authorization", f'Digest username="{self.user}",realm="{params["realm"]}",'
                                 f'nonce="{nonce}",uri="{uri}",response="{response}",'
                                 f'algorithm=MD5')

    def ack(self, uri, cseq, to_tag, branch=None, body=b""):
        return self.request("ACK", uri, cseq=cseq, to_tag=to_tag, branch=branch, body=body)


class Sipsak(Agent):
    """sipsak 0.9.8.1: ``;rport;alias`` Vias, qop=auth, uri = the Request-URI."""

    user_agent = "sipsak 0.9.8.1"

    def via(self, branch=None):
        return super().via(branch) + ";alias"


class PyVoip(Agent):
    """pyVoIP 1.6.8: no qop, digest uri ``sip:HOST;transport=UDP``, MD5 whatever was offered,
    its own To tag on the ACK, BYE CSeq counted from 1; To user = username = session."""

    user_agent = "pyVoIP 1.6.8"
    qop = False

    def authorization(self, challenge, method, uri, algorithm=None, password=None):
        # pyVoIP keeps the last WWW-Authenticate it parses (SHA-256) but hashes MD5.
        params = _challenge_params(challenge, "SHA-256")
        digest_uri = f"sip:{GATEWAY[0]};transport=UDP"
        password = self.password if password is None else password
        ha1 = hashlib.md5(f"{self.user}:{params['realm']}:{password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"{method}:{digest_uri}".encode()).hexdigest()
        response = hashlib.md5(f"{ha1}:{params['nonce']}:{ha2}".encode()).hexdigest()
        return ("Authorization", f'Digest username="{self.user}",realm="{params["realm"]}",'
                                 f'nonce="{params["nonce"]}",uri="{digest_uri}",'
                                 f'response="{response}",algorithm=MD5')


class Pjsua2(Agent):
    user_agent = "PJSUA v2.15.1 Linux"
    algorithm = "SHA-256"


class Baresip(Agent):
    user_agent = "baresip v1.0.0 (x86_64/linux)"
