"""Real sfront 0.98 clients and a real ``twistd`` in network namespaces: the SIP door end to end.

The clients are unmodified sfront networking programs built from
shared/peers/sfront by tests/sfront_peer.py: ``stream`` plays the
distribution's bach.mid, ``listen`` renders what it hears to a WAV,
``duplex`` does both (its WAV holds only what the network played), ``organ``
listens with an instrument that holds each note until its note-off. They
find their own address through the namespace's hosts file (127.0.0.2), so
the gateway runs in the same namespace, with SIP on 127.0.0.1:5060/5061
and media on 127.0.0.5. WebSocket members are the test's own asyncio
clients, their sockets created inside the namespace.

Loss is made by iptables in the namespace, ``statistic --mode nth --every 10``:
exactly every tenth packet of one direction dropped, the same in every run.
"""

import asyncio
import base64
import contextlib
import os
import time

import mido
import pytest

from tests import sfront_peer as peer
from tests.wsclient import JamClient

pytestmark = pytest.mark.external

DEMO = ("demo", "play along with netgateway demo")
ECHO = ("echo", "echo echo echo a fifth up")
SIP = ("127.0.0.1", 5060)
MEDIA_HOST = "127.0.0.5"
DEMO_MEDIA = 6000
OVERRIDE = {
    "sessions": [{"name": DEMO[0], "passphrase": DEMO[1]},
                 {"name": ECHO[0], "passphrase": ECHO[1],
                  "mirror": {"interval": 7, "delay": 0.0}}],
    "sip": {"host": SIP[0], "port": SIP[1],
            "media": {"host": MEDIA_HOST, "port_min": DEMO_MEDIA, "port_max": DEMO_MEDIA + 3}},
}
IN = r"^Network status: SIP INVITE accepted from netgateway@netgateway:60[0-9][0-9]"
CONTACT = "Network status: SIP server contact successful, awaiting client SIP"
# A melody of 8 quarter notes (0.25 s on, 0.25 s off), C major.
MELODY = [60, 62, 64, 65, 67, 69, 71, 72]


def bach_note_ons():
    """The note numbers of bach.mid's note-ons, in the file's order."""
    path = os.path.join(os.path.dirname(peer.translator()), os.pardir, "examples", "rtime",
                        "network", "nmp_stream", "bach.mid")
    return [message.note for message in mido.MidiFile(path)
            if message.type == "note_on" and message.velocity]


@contextlib.contextmanager
def jam(tmp_path, hint, override=None):
    """A namespace with the gateway (SIP door on) running in it."""
    peer.need_sfront()
    peer.need_namespaces()
    with peer.namespace(hint) as ns:
        gateway = peer.start_gateway(ns, tmp_path / "gateway", peer_override(override))
        try:
            yield ns, gateway
        finally:
            gateway.stop()


def peer_override(extra):
    merged = dict(OVERRIDE)
    merged.update(extra or {})
    return merged


def in_namespace(ns, scenario, timeout=90):
    """Runs coroutine function ``scenario`` on an event loop whose sockets live in ``ns``."""
    with ns.entered():
        return asyncio.run(asyncio.wait_for(scenario(), timeout))


async def member(gateway, session=DEMO, name="browser"):
    client = await JamClient.connect(gateway.ws_url)
    joined = await client.join(*session, name)
    assert joined["type"] == "joined", joined
    return client


async def collect(client, seconds):
    """Every MIDI message ``client`` receives within ``seconds``: (time, bytes)."""
    heard = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            message = await client.expect(lambda m: m.get("type") == "midi", remaining)
        except (TimeoutError, asyncio.TimeoutError):
            break
        heard.append((time.monotonic(), bytes(message["data"])))
    return heard


async def play_melody(client, chord=(0,)):
    """MELODY on channel 1, each note with the notes ``chord`` semitones above it."""
    for note in MELODY:
        for offset in chord:
            client.send_midi([0x90, note + offset, 100])
        await asyncio.sleep(0.25)
        for offset in chord:
            client.send_midi([0x80, note + offset, 0])
        await asyncio.sleep(0.25)


def melody_heard(ns, gateway, program, workdir, chord=(0,)):
    """A listening client runs ``program``; 3 s after it started, a browser member plays
    the melody. Returns the client and when the melody began and ended on its clock."""
    async def scenario():
        browser = await member(gateway)
        client = peer.run_client(ns, program, workdir)
        started = time.monotonic()
        with client:
            await wait_line(client, IN)
            await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
            begun = time.monotonic() - started
            await play_melody(browser, chord)
            ended = time.monotonic() - started
            await asyncio.get_running_loop().run_in_executor(None, client.wait, 30)
        return client, begun, ended
    return in_namespace(ns, scenario)


async def wait_line(client, pattern, timeout=15):
    await asyncio.get_running_loop().run_in_executor(
        None, lambda: client.wait_for_line(pattern, timeout=timeout))


def sip_members(gateway, session="demo"):
    [entry] = [entry for entry in gateway.status()["sessions"] if entry["name"] == session]
    return [member for member in entry["members"] if member["door"] == "sip"]


def drop_every_tenth(ns, *match):
    """iptables in ``ns``: drop every 10th UDP packet matching ``match`` on its way in
    (in OUTPUT the sender's sendto would fail with EPERM, and sfront exits on that)."""
    ns.run("iptables", "-A", "INPUT", "-p", "udp", *match, "-m", "statistic", "--mode", "nth",
           "--every", "10", "--packet", "0", "-j", "DROP")


def dropped_by_iptables(ns):
    listing = ns.run("iptables", "-L", "INPUT", "-v", "-x", "-n")
    return sum(int(line.split()[0]) for line in listing.splitlines()
               if "statistic" in line)


# --- an sfront client plays into a session --------------------------------------------------

def test_a_streaming_clients_bach_reaches_a_websocket_member_in_order(tmp_path):
    program = peer.build_client("stream", *DEMO, *SIP)
    expected = bach_note_ons()
    with jam(tmp_path, "bach") as (ns, gateway):
        async def scenario():
            browser = await member(gateway)
            client = peer.run_client(ns, program, tmp_path)
            with client:
                await wait_line(client, IN)
                heard = await collect(browser, 12)
                client.stop()
            left = await browser.expect(lambda m: m.get("type") == "members"
                                        and m["change"] == "leave", 10)
            return client, heard, left
        client, heard, left = in_namespace(ns, scenario)
        status = gateway.status()
        log = gateway.log
    key = peer.session_key(DEMO[1])
    for secret in (DEMO[1], key.hex(), base64.b64encode(key).decode()):
        assert secret not in log, "the passphrase and key never reach the log"
    assert "sip member 'unknown@vm' joined session 'demo'" in log
    assert CONTACT in client.lines and "Network status: Shutdown completed" in client.lines
    assert not [line for line in client.advisories() if "SIP" in line]
    ons = [data[1] for _, data in heard if data[0] & 0xF0 == 0x90 and data[2]]
    print(f"WebSocket member heard {len(heard)} messages, {len(ons)} note-ons of"
          f" {len(expected)} in bach.mid; sfront said {client.statuses()}")
    assert len(ons) >= 40
    assert ons == expected[:len(ons)], "every note arrives, in the order it was played"
    assert left["member"]["door"] == "sip"
    assert status["doors"]["sip"]["packets_verified"] >= len(ons)
    assert "bad_signature" not in status["drops"].get("sip", {})


def test_a_websocket_melody_sounds_in_a_listening_clients_wav_and_nothing_else(tmp_path):
    program = peer.build_client("organ", *DEMO, *SIP, seconds=10)
    with jam(tmp_path, "listen") as (ns, gateway):
        client, begun, ended = melody_heard(ns, gateway, program, tmp_path)
    peaks = peer.wav_peaks(client.wav)
    print(f"melody from {begun:.2f} s to {ended:.2f} s; WAV peaks per 0.5 s: {peaks}")
    peer.assert_sound_between(peaks, begun, ended, margin=1.5)


def test_two_sfront_clients_hear_each_other_through_the_gateway(tmp_path):
    program = peer.build_client("duplex", *DEMO, *SIP, seconds=10)
    with jam(tmp_path, "pair") as (ns, gateway):
        first_dir, second_dir = tmp_path / "first", tmp_path / "second"
        first_dir.mkdir(), second_dir.mkdir()
        with peer.run_client(ns, program, first_dir) as first, \
                peer.run_client(ns, program, second_dir) as second:
            for client in (first, second):
                client.wait_for_line(IN, timeout=15)
            members = sip_members(gateway)
            first.wait(40), second.wait(40)
    for client in (first, second):
        peaks = peer.wav_peaks(client.wav)
        print(f"{client.wav}: {peaks}")
        sounding = sum(1 for peak in peaks if peak > 100)
        assert sounding >= 6, f"heard the other's Bach in only {sounding} windows: {peaks}"
    assert len(members) == 2


def test_a_client_with_the_wrong_passphrase_is_refused_and_hears_nothing(tmp_path):
    program = peer.build_client("listen", "demo", "not the passphrase of demo at all", *SIP,
                                seconds=8)
    with jam(tmp_path, "wrong") as (ns, gateway):
        async def scenario():
            browser = await member(gateway)
            client = peer.run_client(ns, program, tmp_path)
            with client:
                await play_melody(browser)
                await asyncio.get_running_loop().run_in_executor(None, client.wait, 30)
            return client
        client = in_namespace(ns, scenario)
        status = gateway.status()
        members = sip_members(gateway)
    refused = [line for line in client.lines if "too out-of-date" in line]
    print(f"client said: {client.lines[:6]}")
    assert refused, client.lines
    assert not [line for line in client.lines if "INVITE accepted" in line]
    assert status["doors"]["sip"]["refused"].get("unknown_session", 0) >= 1
    assert members == []
    if os.path.exists(client.wav):
        assert peer.is_silent(peer.wav_peaks(client.wav))


def test_a_full_session_makes_the_client_say_the_server_is_overloaded(tmp_path):
    program = peer.build_client("listen", *DEMO, *SIP, seconds=8)
    full = {"sessions": [{"name": DEMO[0], "passphrase": DEMO[1], "max_members": 1}]}
    with jam(tmp_path, "full", full) as (ns, gateway):
        async def scenario():
            browser = await member(gateway)
            client = peer.run_client(ns, program, tmp_path)
            with client:
                await asyncio.get_running_loop().run_in_executor(None, client.wait, 30)
            browser.close()
            return client
        client = in_namespace(ns, scenario)
        status = gateway.status()
    print(f"client said: {client.lines[:4]}")
    assert [line for line in client.lines if "SIP server is overloaded" in line], client.lines
    assert status["doors"]["sip"]["refused"] == {"session_full": 1}


def test_stopping_the_gateway_removes_its_member_from_a_client_with_rtcp_bye(tmp_path):
    program = peer.build_client("listen", *DEMO, *SIP, seconds=12)
    with jam(tmp_path, "stop") as (ns, gateway):
        with peer.run_client(ns, program, tmp_path) as client:
            client.wait_for_line(IN, timeout=15)
            gateway.stop()
            client.wait_for_line(r"RTCP BYE received, deleting netgateway@netgateway:6000",
                                 timeout=10)
            client.wait(30)
    assert client.advisories() == [], client.advisories()


# --- loss -----------------------------------------------------------------------------

def test_loss_towards_a_listening_client_leaves_no_note_sounding(tmp_path):
    """Every 10th packet from the gateway's media port to the client is lost; the recovery
    journal and guard packets end every note: the WAV is silent once the melody is over.
    The client's orchestra (tests/sfront_peer.py ORGAN) holds a note until its note-off,
    so a lost note-off would sound to the end of the file: with ``sip.journal: false``
    this test fails."""
    program = peer.build_client("organ", *DEMO, *SIP, seconds=12)
    with jam(tmp_path, "lossout") as (ns, gateway):
        drop_every_tenth(ns, "-s", MEDIA_HOST, "--sport", str(DEMO_MEDIA))
        # Chords of three, so that a lost packet takes several notes with it.
        client, begun, ended = melody_heard(ns, gateway, program, tmp_path, chord=(0, 4, 7))
        dropped = dropped_by_iptables(ns)
    peaks = peer.wav_peaks(client.wav)
    print(f"{dropped} packets dropped; melody {begun:.2f}-{ended:.2f} s; peaks {peaks}")
    assert dropped >= 3
    peer.assert_sound_between(peaks, begun, ended, margin=1.5)


def test_loss_from_a_streaming_client_is_repaired_no_note_stuck_at_a_websocket_member(tmp_path):
    """Every 10th packet from the client to the gateway is lost; the gateway repairs from the
    client's journal, so every note-on the member hears is ended within a few seconds."""
    program = peer.build_client("stream", *DEMO, *SIP)
    with jam(tmp_path, "lossin") as (ns, gateway):
        drop_every_tenth(ns, "-d", MEDIA_HOST, "--dport", str(DEMO_MEDIA))

        async def scenario():
            browser = await member(gateway)
            client = peer.run_client(ns, program, tmp_path)
            with client:
                await wait_line(client, IN)
                heard = await collect(browser, 14)
                [sfront] = sip_members(gateway)
                drops = gateway.status()["drops"]
                client.stop()
            return heard, sfront, drops, client
        heard, sfront, drops, client = in_namespace(ns, scenario)
        print(f"drops {drops}; client said {client.lines}")
        dropped = dropped_by_iptables(ns)
    sounding = {}
    stuck = []
    last = heard[-1][0] if heard else 0
    for at, data in heard:
        key = (data[0] & 0x0F, data[1])
        if data[0] & 0xF0 == 0x90 and data[2]:
            sounding[key] = at
        elif data[0] & 0xF0 in (0x80, 0x90):
            sounding.pop(key, None)
    stuck = [key for key, at in sounding.items() if last - at > 3.0]
    print(f"{dropped} dropped; member heard {len(heard)} messages; sfront member {sfront};"
          f" held over 3 s: {stuck}")
    assert dropped >= 5 and sfront["packets_lost"] >= 5 and sfront["gaps_repaired"] >= 5
    assert stuck == []


# --- mirror -----------------------------------------------------------------------------

def echoed(tmp_path, interval):
    """What a duplex client in the mirror session ``echo`` (``interval`` semitones) hears."""
    program = peer.build_client("duplex", *ECHO, *SIP, seconds=8)
    sessions = {"sessions": [{"name": DEMO[0], "passphrase": DEMO[1]},
                             {"name": ECHO[0], "passphrase": ECHO[1],
                              "mirror": {"interval": interval, "delay": 0.0}}]}
    workdir = tmp_path / f"interval{interval}"
    workdir.mkdir()
    with jam(workdir, "echo", sessions) as (ns, gateway):
        with peer.run_client(ns, program, workdir) as client:
            client.wait_for_line(IN, timeout=15)
            client.wait(40)
    return client.wav


def test_a_declared_mirror_session_echoes_an_sfront_clients_notes_back_a_fifth_up(tmp_path):
    """The client hears its own Bach from the echo session. A fifth up sounds 2^(7/12) = 1.5
    times higher than the same echo at unison: the zero-crossing rate of its WAV (a rough
    pitch measure; it measured 1.8 times) must rise by well over a semitone's 6%."""
    fifth, unison = echoed(tmp_path, 7), echoed(tmp_path, 0)
    peaks = peer.wav_peaks(fifth)
    rates = peer.zero_crossing_rate(fifth), peer.zero_crossing_rate(unison)
    print(f"echo a fifth up: {peaks}; zero crossings/s {rates[0]:.0f} against {rates[1]:.0f}"
          f" at unison, ratio {rates[0] / rates[1]:.2f}")
    assert sum(1 for peak in peaks if peak > 100) >= 6, peaks
    assert rates[0] / rates[1] > 1.3


# --- NAT --------------------------------------------------------------------------------

@pytest.mark.parametrize("symmetric", [False, True], ids=["cone", "symmetric"])
def test_a_client_behind_nat_plays_into_the_session(tmp_path, symmetric):
    """Behind a home router's NAT: the gateway's replies carry received/rport, the client
    adds a=nat, and media goes where its packets come from. Behind a symmetric NAT its
    media arrive from other ports than its SIP: the gateway learns them by signature."""
    rig_ip = "198.18.0.1"
    program = peer.build_client("stream", *DEMO, rig_ip, SIP[1])
    peer.need_sfront()
    peer.need_namespaces()
    with peer.nat_rig(clients=1, symmetric=symmetric) as rig:
        override = peer_override({"sip": {"host": rig_ip, "port": SIP[1],
                                          "media": {"host": rig_ip, "port_min": DEMO_MEDIA,
                                                    "port_max": DEMO_MEDIA + 3}}})
        gateway = peer.start_gateway(rig.server, tmp_path / "gateway", override)
        try:
            async def scenario():
                browser = await member(gateway)
                client = peer.run_client(rig.clients[0], program, tmp_path)
                with client:
                    await wait_line(client, r"^Network status: SIP INVITE accepted from"
                                            r" netgateway@netgateway:6000")
                    heard = await collect(browser, 8)
                    # Our receiver reports reach it through the NAT too.
                    await wait_line(client, r"Media \(RTCP\) flowing from netgateway@", 15)
                    if not symmetric:
                        # Behind NAT it sends a SIP INFO keep-alive every 6th RTCP tick (~30 s).
                        await asyncio.get_running_loop().run_in_executor(None, lambda: (
                            peer.wait_until(lambda: sip_members(gateway)[0]["keepalives"],
                                            "an INFO keep-alive", timeout=40)))
                    [sfront] = sip_members(gateway)
                    client.stop()
                return client, heard, sfront
            client, heard, sfront = in_namespace(rig.server, scenario)
        finally:
            gateway.stop()
    ons = [data for _, data in heard if data[0] & 0xF0 == 0x90 and data[2]]
    print(f"behind NAT: {sfront}; {len(ons)} note-ons heard; client said {client.statuses()}")
    assert sfront["nat"] is True and sfront["peer"].startswith(rig.wan_ip)
    assert sfront["accepted"] is True       # its RTCP reached us, and so did our member
    assert len(ons) >= 20
