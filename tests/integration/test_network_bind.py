"""``network.bind: 0.0.0.0`` and ``network.public_address`` on a real twistd.

The gateway runs in a network namespace of the test's own, so "every
address" is that namespace's loopback (127.0.0.0/8) and nothing else. A
client there writes from 127.0.0.1 to the gateway's 127.0.0.2. A plain
wildcard socket would answer from 127.0.0.1 (the kernel routes the reply;
the test shows that first), and OscGroupClient, sfront and AppleMIDI peers
drop answers from an address they did not write to: every UDP door must
answer from 127.0.0.2 (SIP too: with a public address to write in its headers and
SDP it may listen on every address). Every door listens on every address, and what
OSCgroups advertises (the bridge's endpoint, relay ports) is
``public_address``, 127.0.0.3.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from tests.conftest import BASE_CONFIG, merge, need_external
from tests.integration.test_oscgroups_nat import Rig

pytestmark = pytest.mark.external

PUBLIC = "127.0.0.3"
WRITTEN_TO = "127.0.0.2"
WEB, RTMP, SERVER, BRIDGE, RTPMIDI, SIP = 8080, 1935, 22242, 22241, 5004, 5060
RELAY = (22300, 22303)
DEMO_PASSPHRASE = BASE_CONFIG["sessions"][0]["passphrase"]

CLIENT = textwrap.dedent("""
    import json, socket, struct, sys, urllib.request
    from gateway.protocols.oscgroups import wire

    written_to, web, rtmp, server, rtpmidi, sip_port, passphrase, bind = sys.argv[1:]
    web, rtmp, server, rtpmidi, sip_port = (int(web), int(rtmp), int(server), int(rtpmidi),
                                            int(sip_port))
    found = {}

    def answers(sock, seconds=2.0):
        sock.settimeout(seconds)
        got = []
        try:
            while True:
                got.append(sock.recvfrom(65536))
                sock.settimeout(0.3)
        except socket.timeout:
            return got

    # What a plain wildcard socket does: answers from the address the route picks.
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.bind(("0.0.0.0", 0))
    asker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    asker.bind(("127.0.0.1", 0))
    asker.sendto(b"?", (written_to, plain.getsockname()[1]))
    _, where = plain.recvfrom(16)
    plain.sendto(b"!", where)
    found["plain_wildcard_answer_from"] = asker.recvfrom(16)[1][0]

    with urllib.request.urlopen(f"http://{written_to}:{web}/", timeout=5) as page:
        found["web"] = page.status
    with socket.create_connection((written_to, rtmp), timeout=5):
        found["rtmp_connects"] = True
    if bind == "::":
        with urllib.request.urlopen(f"http://[::1]:{web}/", timeout=5) as page:
            found["web_ipv6"] = page.status
        with socket.create_connection(("::1", rtmp), timeout=5):
            found["rtmp_ipv6_connects"] = True

    def register(name):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        group = (("demo", wire.password_hash(passphrase)),)
        sock.sendto(wire.encode_bundle([
            wire.UserAlive(name, wire.password_hash(name), sock.getsockname(), group).encode(),
            wire.GroupUsersQuery(*group[0]).encode()]), (written_to, server))
        return sock, answers(sock)

    register("bob")
    alice, replies = register("alice")
    found["oscgroups_sources"] = sorted({f"{a[0]}:{a[1]}" for _, a in replies})
    listed = {}
    for data, _ in replies:
        for message in wire.parse_packet(data):
            decoded = wire.decode_message(message)
            if isinstance(decoded, wire.UserInfo):
                listed[decoded.user_name] = [list(decoded.private_endpoint),
                                             list(decoded.public_endpoint)]
    found["listed"] = listed

    applemidi = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    applemidi.bind(("127.0.0.1", 0))
    applemidi.sendto(struct.pack(">HHIII", 0xFFFF, 0x494E, 2, 7, 0x1234) + b"probe\\0",
                     (written_to, rtpmidi))
    found["rtpmidi_sources"] = sorted({f"{a[0]}:{a[1]}" for _, a in answers(applemidi)})

    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip.bind(("127.0.0.1", 0))
    port = sip.getsockname()[1]
    sip.sendto((f"OPTIONS sip:demo@{written_to} SIP/2.0\\r\\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-bind;rport\\r\\n"
                "Max-Forwards: 70\\r\\nFrom: <sip:probe@127.0.0.1>;tag=1\\r\\n"
                f"To: <sip:demo@{written_to}>\\r\\nCall-ID: bind-test\\r\\n"
                "CSeq: 1 OPTIONS\\r\\nContent-Length: 0\\r\\n\\r\\n").encode(),
               (written_to, sip_port))
    replies = answers(sip)
    found["sip_sources"] = sorted({f"{a[0]}:{a[1]}" for _, a in replies})
    found["sip_reply"] = replies[0][0].decode() if replies else ""
    print(json.dumps(found))
""")


@pytest.fixture
def rig():
    need_external(shutil.which("ip") is not None and os.geteuid() == 0,
                  "network namespaces need iproute2 and root")
    made = Rig()
    try:
        yield made
    finally:
        made.close()


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_every_door_on_every_address_answers_from_the_address_written_to(rig, tmp_path, bind):
    """With ``::`` the TCP doors and AppleMIDI take IPv6 and IPv4 (dual stack); OSCgroups,
    IPv4 only, listens on 0.0.0.0."""
    namespace = rig.namespace("bind")
    config = merge(BASE_CONFIG, {
        "network": {"bind": bind, "public_address": PUBLIC},
        "web": {"host": None, "port": WEB},
        "logging": {"level": "info"},
        "rtmp": {"port": RTMP},
        "sip": {"port": SIP, "media": {"host": "0.0.0.0"}},
        "rtpmidi": {"sessions": [{"session": "demo", "port": RTPMIDI}]},
        "oscgroups": {"port": SERVER, "bridge": {"port": BRIDGE, "groups": ["demo"]},
                      "relay": {"policy": "always", "port_min": RELAY[0],
                                "port_max": RELAY[1]}},
    })
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "twistd.log"
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    with open(log_path, "w") as log:
        rig.spawn(namespace, [twistd, "-n", "--pidfile=", "netgateway", "-c", str(config_path)],
                  cwd=str(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while "jam page at" not in log_path.read_text():
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)

    found = json.loads(rig.ns(namespace, sys.executable, "-c", CLIENT, WRITTEN_TO, str(WEB),
                              str(RTMP), str(SERVER), str(RTPMIDI), str(SIP), DEMO_PASSPHRASE,
                              bind))

    log = log_path.read_text()
    assert found["plain_wildcard_answer_from"] == "127.0.0.1", found
    assert found["web"] == 200 and found["rtmp_connects"], found
    if bind == "::":
        assert found["web_ipv6"] == 200 and found["rtmp_ipv6_connects"], found
    assert found["oscgroups_sources"] == [f"{WRITTEN_TO}:{SERVER}"], (found, log)
    assert found["rtpmidi_sources"] == [f"{WRITTEN_TO}:{RTPMIDI}"], (found, log)
    assert found["sip_sources"] == [f"{WRITTEN_TO}:{SIP}"], (found, log)
    assert found["sip_reply"].startswith("SIP/2.0 200 OK"), found["sip_reply"]
    # Peers are told where they reach the gateway: its bridge and a relay port on the
    # public address; bob, relayed (policy always), is listed at a relay port too.
    assert found["listed"]["netgateway"][1] == [PUBLIC, BRIDGE], found["listed"]
    bob_private, bob_public = found["listed"]["bob"]
    assert bob_public[0] == bob_private[0] == PUBLIC, found["listed"]
    assert RELAY[0] <= bob_public[1] <= RELAY[1], found["listed"]
    assert "Traceback" not in log, log
