"""The baseline for bench/sip_register.py: a minimal Twisted UDP registrar with MD5 digest.

The least a server does to answer REGISTER with digest (RFC 3261 §22): split the
header lines, answer one without Authorization with a 401 (a nonce from a counter),
and one with it by checking its MD5 response (qop=auth) against one password and
answering 200 or 403, the Via, From, To, Call-ID and CSeq copied. No transactions,
no bindings, no nonce lifetime, no bus, no logging.
Usage: python sip_register_baseline.py PASSWORD; prints "ready PORT" when listening.
"""

import hashlib
import re
import socket
import sys

from twisted.internet import protocol, reactor

REALM = "netgateway"
_PARAM = re.compile(r'(\w+)="?([^",]*)"?')
_COPIED = ("via", "from", "to", "call-id", "cseq")


def md5(text):
    return hashlib.md5(text.encode()).hexdigest()


class Registrar(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, password):
        self.password = password
        self.nonces = 0

    def startProtocol(self):
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def datagramReceived(self, data, addr):
        head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")
        method, uri = head[0].split(" ", 2)[:2]
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        copied = "".join(f"{name}: {headers.get(name, '')}\r\n" for name in _COPIED)
        authorization = headers.get("authorization")
        if authorization is None:
            self.nonces += 1
            reply = (f"SIP/2.0 401 Unauthorized\r\n{copied}WWW-Authenticate: Digest"
                     f' realm="{REALM}", nonce="{self.nonces:x}", algorithm=MD5, qop="auth"\r\n'
                     "Content-Length: 0\r\n\r\n")
        else:
            params = dict(_PARAM.findall(authorization))
            ha1 = md5(f"{params.get('username')}:{REALM}:{self.password}")
            ha2 = md5(f"{method}:{params.get('uri')}")
            expected = md5(f"{ha1}:{params.get('nonce')}:{params.get('nc')}:"
                           f"{params.get('cnonce')}:auth:{ha2}")
            if params.get("response") == expected:
                reply = (f"SIP/2.0 200 OK\r\n{copied}Contact: {headers.get('contact', '')}"
                         ";expires=300\r\nContent-Length: 0\r\n\r\n")
            else:
                reply = f"SIP/2.0 403 Forbidden\r\n{copied}Content-Length: 0\r\n\r\n"
        self.transport.write(reply.encode(), addr)


port = reactor.listenUDP(0, Registrar(sys.argv[1]), interface="127.0.0.1",
                         maxPacketSize=65535)
reactor.callWhenRunning(lambda: print("ready", port.getHost().port, flush=True))
reactor.run()
