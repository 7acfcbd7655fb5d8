"""Records golden datagrams from a real sfront 0.98 client. Run by hand, as root:

    .venv/bin/python -m tests.sfront_capture [--out tests/sip/golden] [--seconds 14]

It plays a throwaway SIP session server per shared/protocols/sfront.md §2.2
(every INVITE gets a 401 with a fixed nonce, the signed resend a 200, both
echoing i:/CSeq:/v:/f:/t:) and introduces one member per §2.3 / §4 step 3,
inside a network namespace it creates, with a streaming client built for
session ``demo``. The member (127.0.0.5:6000/6001) sends the client a few
signed notes and receiver reports, so that the client's RTCP carries a
report block. After ``--seconds`` the client is stopped with SIGINT, which
makes it send its RTCP BYE and SIP BYEs. A second run (skip with ``--no-nat``)
answers the first INVITEs with ``;received=...;rport=...`` on the Via, so the
signed resends carry ``a=nat``; it uses a listen client that runs past the
first INFO keep-alive (about 30 s).

Every datagram is kept; a chosen few are written to ``--out`` as ``NAME.bin``
with ``golden.json`` (addresses, offsets, signature checks, the client's
stderr). ``--reflect`` (with a ``duplex`` client, no files written) instead
sends every note of the client back to it as the member, to show that a
duplex client's WAV holds what the network played.

This is test tooling; it is not, and must not become, the gateway's SIP door.
"""

import argparse
import base64
import contextlib
import datetime
import json
import os
import select
import struct
import sys
import tempfile
import threading
import time

from tests import sfront_peer as peer

SESSION, PASSPHRASE = "demo", "play along with netgateway demo"
SIP_IP, SIP_PORT = "127.0.0.1", 5060
MEDIA_IP, MEDIA_PORT = "127.0.0.5", 6000
NONCE = base64.b64encode(bytes(range(16))).decode()          # "AAECAwQFBgcICQoLDA0ODw=="
MEMBER_CALLID = 271828182
MEMBER_SSRC = 0x4E475731                                     # "NGW1"
MEMBER_NAME, MEMBER_HOST = "netgateway", "gateway"

KEY = peer.session_key(PASSPHRASE)
S64 = peer.session_name(SESSION, PASSPHRASE)


def headers(text):
    """{lower-case name: value} of a SIP message's header lines (first occurrence)."""
    found = {}
    for line in text.split("\n\n", 1)[0].split("\n")[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            found.setdefault(name.strip().lower(), value.strip())
    return found


def header_lines(text, names):
    """The message's own lines for ``names`` (compact or long), in its order."""
    lines = []
    for line in text.split("\n\n", 1)[0].split("\n")[1:]:
        name = line.split(":", 1)[0].strip().lower()
        if name in names:
            lines.append(line)
    return lines


ECHOED = ("v", "via", "f", "from", "t", "to", "i", "call-id", "cseq")


def reply(request, status, extra=(), via_suffix=""):
    lines = [f"SIP/2.0 {status}"]
    for line in header_lines(request, ECHOED):
        if via_suffix and line.split(":", 1)[0].strip().lower() in ("v", "via"):
            line += via_suffix
        lines.append(line)
    lines += list(extra)
    lines += ["Content-Length: 0", "", ""]
    return "\n".join(lines).encode() + b"\0"


def member_invite(client_callid, client_source, ssrc=MEMBER_SSRC, callid=MEMBER_CALLID):
    """The INVITE that introduces the member to the client (sfront.md §2.3)."""
    ntp = int(time.time()) + peer.NTP_OFFSET
    body = "\n".join([
        "v=0", f"o={MEMBER_NAME} {ssrc} 0 IN IP4 {MEMBER_HOST}", f"s={S64}",
        "a=tool:netgateway-golden-capture", f"t={ntp} 0", f"m=audio {MEDIA_PORT} RTP/AVP 96",
        f"c=IN IP4 {MEDIA_IP}", "a=rtpmap:96 pre1-mpeg4-generic/44100",
        "a=fmtp:96 streamtype=5; mode=rtp-midi; config=\"\"; profile-level-id=12;"
        " j_sec=none; guardtime=44100", ""])
    nonce = peer.member_nonce(KEY, callid, client_callid, SIP_IP, SIP_PORT)
    head = "\n".join([
        f"INVITE sip:{S64}@{client_source[0]}:{client_source[1]} SIP/2.0", f"i: {callid}",
        f"In-Reply-To: {client_callid}", f"v: SIP/2.0/UDP {SIP_IP}:{SIP_PORT}",
        "c: application/sdp", f"f: sip:{MEMBER_NAME}@{SIP_IP}",
        f"t: sip:{S64}@{client_source[0]}:{client_source[1]}", "CSeq: 1",
        f'Authorization: SignSDP nonce="{nonce}", digest="{peer.digest(KEY, body)}"'])
    return (head + "\n\n" + body).encode() + b"\0"


class Recorder:
    """Every datagram in or out, with its time from the start and its sockets."""

    def __init__(self):
        self.start = time.monotonic()
        self.packets = []
        self.lock = threading.Lock()

    def add(self, direction, local, remote, data):
        with self.lock:
            self.packets.append({"t": round(time.monotonic() - self.start, 4),
                                 "direction": direction, "local": list(local),
                                 "remote": list(remote), "data": data})


class MediaMember:
    """The member's RTP/RTCP sockets: records the client's media, sends notes and RRs."""

    def __init__(self, ns, recorder):
        self.recorder = recorder
        self.rtp = ns.socket(bind=(MEDIA_IP, MEDIA_PORT))
        self.rtcp = ns.socket(bind=(MEDIA_IP, MEDIA_PORT + 1))
        self.seq = 1000
        self.timestamp = 5000
        self.client_rtp = None          # where the client's RTP comes from
        self.client_rtcp = None
        self.client_hiseq = None
        self.client_ssrc32 = None
        self.reflect = False            # False, True, or until this many s from the start

    def send_rtp(self, commands, destination, flags=0):
        """Signed RTP as the member; ``flags``: the Z and P bits of the section header."""
        if len(commands) < 16:
            section = bytes([flags & 0x30 | len(commands)])
        else:
            section = bytes([0x80 | flags & 0x30 | len(commands) >> 8, len(commands) & 0xFF])
        header = struct.pack(">BBHII", 0x80, 0x80 | 96, self.seq & 0xFFFF,
                             self.timestamp & 0xFFFFFFFF, MEMBER_SSRC)
        self.seq += 1
        self.timestamp += 441
        data = peer.signed(KEY, header + section + bytes(commands))
        self.rtp.sendto(data, destination)
        self.recorder.add("out", self.rtp.getsockname(), destination, data)

    def send_rr(self, destination):
        if self.client_hiseq is None:
            packet = struct.pack(">BBHI", 0x80, 201, 1, MEMBER_SSRC)
        else:
            packet = struct.pack(">BBHIIIIIII", 0x81, 201, 7, MEMBER_SSRC, self.client_ssrc32,
                                 0, self.client_hiseq, 0, 0, 0)
        data = peer.signed(KEY, packet)
        self.rtcp.sendto(data, destination)
        self.recorder.add("out", self.rtcp.getsockname(), destination, data)

    def handle_rtp(self, data, source):
        self.client_rtp = source
        if len(data) >= 12:
            seq = struct.unpack(">H", data[2:4])[0]
            self.client_hiseq = seq if self.client_hiseq is None else seq
        reflecting = self.reflect is True or (
            self.reflect and time.monotonic() - self.recorder.start < self.reflect)
        if reflecting and len(data) > 17:
            commands = command_section(data)
            if commands:
                self.send_rtp(commands, source, flags=data[12])


def command_section(data):
    """The MIDI command list of an RTP MIDI packet (sfront's: 12-octet header, then the
    section; the 4-octet signature at the end), or b'' for a guard packet."""
    payload = data[12:-4]
    if not payload:
        return b""
    first = payload[0]
    if first & 0x80:                         # B: 12-bit length
        length = ((first & 0x0F) << 8) | payload[1]
        return payload[2:2 + length]
    return payload[1:1 + (first & 0x0F)]


def serve(ns, recorder, client, seconds, nat=False, notes=True, reflect=False):
    """Binds the server's sockets, then starts the client (``client()`` returns a
    sfront_peer.Client) and plays the session server until the client exits or ``seconds``
    pass (then SIGINT). ``reflect``: send the client's notes back to it as the member's,
    always (True) or for that many seconds; no notes of its own then. Returns what it
    learnt, and the client."""
    sip = {SIP_PORT: ns.socket(bind=(SIP_IP, SIP_PORT)),
           SIP_PORT + 1: ns.socket(bind=(SIP_IP, SIP_PORT + 1))}
    media = MediaMember(ns, recorder)
    media.reflect = reflect
    recorder.start = time.monotonic()
    client = client()
    callids, sources, introduced = {}, {}, False
    stopping_at = time.monotonic() + seconds
    next_rr, notes_sent, stopped = None, 0, False
    ending_at = None
    sockets = {sock: ("sip", port) for port, sock in sip.items()}
    sockets[media.rtp] = ("rtp", MEDIA_PORT)
    sockets[media.rtcp] = ("rtcp", MEDIA_PORT + 1)
    while True:
        now = time.monotonic()
        if not stopped and now >= stopping_at:
            client.interrupt()
            stopped, ending_at = True, now + 12
        if client.process.poll() is not None and ending_at is None:
            ending_at = now + 1.5               # collect the last datagrams
        if ending_at is not None and now >= ending_at:
            break
        readable, _, _ = select.select(list(sockets), [], [], 0.05)
        for sock in readable:
            kind, port = sockets[sock]
            data, source = sock.recvfrom(65535)
            recorder.add("in", sock.getsockname(), source, data)
            if kind == "sip":
                text = data.rstrip(b"\0").decode("latin-1")
                first = text.split("\n", 1)[0]
                found = headers(text)
                if first.startswith("INVITE"):
                    callids[port] = int(found.get("i") or found.get("call-id"))
                    sources[port] = source
                    if "authorization" not in found:
                        suffix = f";received={source[0]};rport={source[1]}" if nat else ""
                        answer = reply(text, "401 Unauthorized",
                                       [f'WWW-Authenticate: SignSDP nonce="{NONCE}"'],
                                       via_suffix=suffix)
                    else:
                        answer = reply(text, "200 OK")
                    sock.sendto(answer, source)
                    recorder.add("out", sock.getsockname(), source, answer)
                    if "authorization" in found and port == SIP_PORT and not introduced:
                        invite = member_invite(callids[port], source)
                        sock.sendto(invite, source)
                        recorder.add("out", sock.getsockname(), source, invite)
                        introduced = True
                        next_rr = time.monotonic() + 1.0
                elif first.startswith(("BYE", "INFO")):
                    answer = reply(text, "200 OK")
                    sock.sendto(answer, source)
                    recorder.add("out", sock.getsockname(), source, answer)
            elif kind == "rtp":
                media.handle_rtp(data, source)
                media.client_ssrc32 = callids.get(SIP_PORT, 0) & 0xFFFFFFFF
            elif kind == "rtcp":
                media.client_rtcp = source
        now = time.monotonic()
        if introduced and next_rr is not None and now >= next_rr and not stopped:
            destination = (media.client_rtcp
                           or (sources[SIP_PORT][0], sources[SIP_PORT][1] + 1))
            media.send_rr(destination)
            if notes and not reflect and notes_sent < 8:
                note = 60 + 2 * (notes_sent // 2)
                velocity = 0 if notes_sent % 2 else 100
                media.send_rtp([0x90, note, velocity], media.client_rtp or sources[SIP_PORT])
                notes_sent += 1
                next_rr = now + 0.5
            else:
                next_rr = now + 4.0
    for sock in list(sockets):
        sock.close()
    return {"callids": callids, "sources": {str(k): list(v) for k, v in sources.items()},
            "notes_sent": notes_sent}, client


# --------------------------------------------------------------------------------------------
# Picking the golden packets

def rtp_info(data):
    first = data[12] if len(data) > 12 else 0
    big = bool(first & 0x80)
    length = (((first & 0x0F) << 8) | data[13]) if big else first & 0x0F
    return {"seq": struct.unpack(">H", data[2:4])[0], "ssrc": struct.unpack(">I", data[8:12])[0],
            "marker": bool(data[1] & 0x80), "pt": data[1] & 0x7F, "journal": bool(first & 0x40),
            "z": bool(first & 0x20), "p": bool(first & 0x10), "length": length}


def rtcp_parts(data):
    parts, offset = [], 0
    body = data[:-4]
    while offset + 4 <= len(body):
        first, kind, words = struct.unpack(">BBH", body[offset:offset + 4])
        parts.append({"pt": kind, "count": first & 0x1F, "words": words})
        if words == 0 and kind == 0:
            break
        offset += 4 * (words + 1)
    return parts


def pick(packets, port_of_local, predicate, skip=0):
    matches = [packet for packet in packets
               if packet["direction"] == "in" and packet["local"][1] == port_of_local
               and predicate(packet["data"])]
    return matches[skip] if len(matches) > skip else None


def sip_first(data):
    return data.split(b"\n", 1)[0].decode("latin-1")


def is_sip(method):
    return lambda data: sip_first(data).startswith(method)


def describe(packet, what):
    data = packet["data"]
    entry = {"description": what, "t": packet["t"], "from": packet["remote"],
             "to": packet["local"], "length": len(data)}
    if packet["local"][1] in (MEDIA_PORT, MEDIA_PORT + 1):
        entry["signature_valid"] = peer.signature_ok(KEY, data)
    return entry


def choose(packets, nat=False):
    """{file stem: (packet, description)} of the datagrams worth keeping."""
    chosen = {}

    def keep(stem, packet, what):
        if packet is not None:
            chosen[stem] = (packet, what)

    prefix = "nat_" if nat else ""
    for port, side in ((SIP_PORT, "rtp"), (SIP_PORT + 1, "rtcp")):
        keep(f"{prefix}invite_unsigned_{side}", pick(
            packets, port, lambda d: is_sip("INVITE")(d) and b"Authorization:" not in d),
            f"first INVITE from the client's {side.upper()} socket to {SIP_IP}:{port}"
            " (unsigned)")
        keep(f"{prefix}invite_signed_{side}", pick(
            packets, port, lambda d: is_sip("INVITE")(d) and b"Authorization:" in d),
            f"the signed resend from the {side.upper()} socket after our 401 with nonce {NONCE}"
            + (" and a Via with ;received=;rport= (it carries a=nat)" if nat else ""))
        if nat:
            keep(f"nat_info_{side}", pick(packets, port, is_sip("INFO")),
                 f"INFO keep-alive from the {side.upper()} socket (behind NAT, ~30 s)")
            continue
        keep(f"ack_401_{side}", pick(packets, port, is_sip("ACK")),
             f"ACK of our 401, from the {side.upper()} socket")
        keep(f"ack_200_{side}", pick(packets, port, is_sip("ACK"), skip=1),
             f"ACK of our 200, from the {side.upper()} socket")
        keep(f"bye_{side}", pick(packets, port, is_sip("BYE")),
             f"SIP BYE from the {side.upper()} socket at shutdown")
    if nat:
        return chosen
    keep("member_invite_reply", pick(packets, SIP_PORT, is_sip("SIP/2.0 200")),
         "the client's answer to our member INVITE (SIP/2.0 200 plus the INVITE's header"
         " lines echoed)")
    out = [p for p in packets if p["direction"] == "out" and p["local"][1] == SIP_PORT
           and is_sip("INVITE")(p["data"])]
    if out:
        keep("member_invite_sent", dict(out[0], direction="in", local=out[0]["remote"],
                                        remote=out[0]["local"]),
             "OUR member INVITE (server-made, accepted by the client): not client output")

    def rtp(predicate):
        return lambda d: len(d) > 16 and predicate(rtp_info(d))
    keep("rtp_first", pick(packets, MEDIA_PORT, rtp(lambda i: True)),
         "the client's first RTP packet to the member")
    keep("rtp_note_journal", pick(packets, MEDIA_PORT,
                                  rtp(lambda i: i["journal"] and i["length"] > 0), skip=5),
         "an RTP packet with a MIDI command and the J flag (a recovery journal)")
    keep("rtp_note_journal_late", pick(packets, MEDIA_PORT,
                                       rtp(lambda i: i["journal"] and i["length"] > 0), skip=60),
         "a later journalled RTP packet (a longer journal)")
    keep("rtp_guard", pick(packets, MEDIA_PORT, rtp(lambda i: i["length"] == 0), skip=10),
         "a guard packet between notes (no MIDI command, journal only)")

    def rtcp(predicate):
        return lambda d: len(d) > 8 and predicate(rtcp_parts(d))
    keep("rtcp_sr", pick(packets, MEDIA_PORT + 1,
                         rtcp(lambda p: p[0]["pt"] == 200 and p[0]["count"] == 0)),
         "an RTCP SR without a report block (the member sent nothing since the last one)")
    keep("rtcp_sr_report_block", pick(packets, MEDIA_PORT + 1,
                                      rtcp(lambda p: p[0]["pt"] in (200, 201)
                                           and p[0]["count"] >= 1)),
         "an RTCP SR with a report block about the member (note the zeroed SDES header)")
    keep("rtcp_bye", pick(packets, MEDIA_PORT + 1,
                          rtcp(lambda p: any(part["pt"] == 203 for part in p))),
         "the client's RTCP at shutdown (RR + SDES + BYE)")
    return chosen


def write(out, chosen, runs):
    """Replaces the golden files: those of the previous manifest go, the chosen ones come."""
    os.makedirs(out, exist_ok=True)
    manifest_path = os.path.join(out, "golden.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as stream:
            for name in json.load(stream).get("files", {}):
                if os.path.basename(name) == name and name.endswith(".bin"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(out, name))
    manifest = {"files": {}, "runs": runs}
    for stem, (packet, what, run) in sorted(chosen.items()):
        with open(os.path.join(out, stem + ".bin"), "wb") as stream:
            stream.write(packet["data"])
        manifest["files"][stem + ".bin"] = dict(describe(packet, what), run=run)
    with open(manifest_path, "w") as stream:
        json.dump(manifest, stream, indent=1, sort_keys=True)
        stream.write("\n")


def run(args, mode, nat, reflect):
    seconds = args.seconds if not nat else 34
    build_seconds = 40 if nat else 20
    program = peer.build_client(mode, SESSION, PASSPHRASE, SIP_IP, SIP_PORT,
                                seconds=build_seconds)
    with peer.namespace("cap") as ns, tempfile.TemporaryDirectory() as cwd:
        recorder, started = Recorder(), []

        def launch():
            started.append(peer.run_client(ns, program, cwd))
            return started[0]
        try:
            state, client = serve(ns, recorder, launch, seconds, nat=nat, reflect=reflect)
            client.wait(15)
        finally:
            for client in started:
                client.stop(graceful=False)
        heard = peer.wav_peaks(client.wav) if os.path.exists(client.wav) else None
    return recorder, client, state, heard


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "sip",
                                                      "golden"))
    parser.add_argument("--seconds", type=float, default=14.0,
                        help="how long the streaming client runs before SIGINT")
    parser.add_argument("--no-nat", action="store_true", help="skip the a=nat run")
    parser.add_argument("--reflect", action="store_true",
                        help="duplex client, its notes sent back; prints its WAV peaks")
    parser.add_argument("--dump", help="also write every datagram of each run to this JSON")
    args = parser.parse_args(argv)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = [("duplex", False, True)] if args.reflect else (
        [("stream", False, False)] + ([] if args.no_nat else [("listen", True, False)]))
    chosen, metas = {}, {}
    for mode, nat, reflect in runs:
        name = ("reflect" if reflect else "nat" if nat else "plain")
        print(f"run {name}: {mode} client ...", flush=True)
        recorder, client, state, heard = run(args, mode, nat, reflect)
        for line in client.lines:
            print("  client:", line)
        counts = {}
        for packet in recorder.packets:
            key = (packet["direction"], packet["local"][1] if packet["direction"] == "in"
                   else packet["remote"][1])
            counts[key] = counts.get(key, 0) + 1
        print("  datagrams:", {f"{d} port {p}": n for (d, p), n in sorted(counts.items())})
        media = [p for p in recorder.packets if p["direction"] == "in"
                 and p["local"][1] in (MEDIA_PORT, MEDIA_PORT + 1)]
        valid = sum(peer.signature_ok(KEY, p["data"]) for p in media)
        print(f"  client media signatures valid: {valid}/{len(media)}")
        if heard is not None:
            print("  WAV peaks per 0.5 s:", heard)
        if args.dump:
            with open(f"{args.dump}.{name}.json", "w") as stream:
                json.dump([dict(p, data=p["data"].hex()) for p in recorder.packets], stream)
        if reflect:
            continue
        picked = choose(recorder.packets, nat=nat)
        chosen.update((stem, (packet, what, name)) for stem, (packet, what) in picked.items())
        metas[name] = {
            "run": name, "date": date, "client_mode": mode, "session": SESSION,
            "passphrase": PASSPHRASE, "s64": S64, "sip": f"{SIP_IP}:{SIP_PORT}", "nonce": NONCE,
            "member": {"ssrc": MEMBER_SSRC, "callid": MEMBER_CALLID,
                       "media": f"{MEDIA_IP}:{MEDIA_PORT}"},
            "client_callids": state["callids"], "client_sources": state["sources"],
            "nat_via": nat, "notes_sent_to_client": state["notes_sent"],
            "client_stderr": client.lines, "media_signatures_valid": [valid, len(media)],
            "wav_peaks": heard}
        print("  chosen:", ", ".join(sorted(stem + ".bin" for stem in picked)))
    if chosen:
        write(args.out, chosen, metas)
        print(f"wrote {len(chosen)} files and golden.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
