"""Churn soak: members join, leave and vanish for minutes while every one of them plays notes.

A real ``twistd netgateway`` with one session reached through two doors: the
WebSocket door (tests/wsclient.py members) and the RTP-MIDI door (AppleMIDI
peers of tests/rtpmidi_peer.py, with the recovery journal). Each of
``--websocket-slots`` and ``--applemidi-slots`` runs one member after another:
it joins, plays 1-10 notes (note-on, then note-off), and ends in one of three
ways, chosen at random: it leaves cleanly (WebSocket close, AppleMIDI BY), it
vanishes between notes, or it vanishes while its last note sounds (the
connection is dropped or the sockets closed, with no goodbye). A vanished
WebSocket member's connection is lost at once; a vanished AppleMIDI peer
sends nothing more and is kicked by the bus's idle expiry
(``limits.idle_timeout``, 3 s here; AppleMIDI's own clock-sync timeout is
60 s). Either way the bus must send the note-offs of what it left sounding.

An observer member hears everything and keeps the set of notes sounding per
publisher (member id, channel, note). Every few seconds the gateway's RSS
(VmRSS) and member count (/status) are sampled. At the end every player has
left or vanished; the soak waits for the idle expiry, then counts:

- stuck notes: note-ons the observer heard without their note-off;
- leaked members: members /status still lists once the observer has left too;
- RSS first/last and, over the last half of the samples, the change and the
  least-squares slope (%/minute), which is what a leak would show.

It passes (exit status 0) with 0 stuck notes, 0 leaked members, the gateway
alive with no Traceback in its log, and notes heard from both doors.

Run: .venv/bin/python bench/churn_soak.py [--minutes 10] [--quick]
"""

import argparse
import asyncio
import collections
import os
import random
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, HERE]

from benchlib import (add_source_argument, gateway_failures, rss_bytes,  # noqa: E402
                      run_generator_on_cpu1, start_gateway, verdict)
from tests.conftest import free_port  # noqa: E402
from tests.rtpmidi_peer import RtpMidiPeer  # noqa: E402
from tests.wsclient import JamClient  # noqa: E402

LOOPBACK = "127.0.0.1"
SESSION = ("soak", "churn soak passphrase 0123")
IDLE_TIMEOUT = 3.0
NOTE_SECONDS = 0.02
"""How long a note sounds, and the pause after it."""
ENDINGS = ("leave", "vanish", "vanish mid-note")
NOTE_ON, NOTE_OFF = 0x90, 0x80


class WebSocketPlayer:
    door = "websocket"

    def __init__(self, client):
        self.client = client

    @classmethod
    async def join(cls, gateway, name, rng):
        client = await JamClient.connect(gateway.ws_url)
        reply = await client.join(*SESSION, name)
        if reply["type"] != "joined":
            client.abort()
            raise RuntimeError(f"{name} was refused: {reply}")
        return cls(client)

    def send(self, message):
        self.client.send_midi(message)

    async def leave(self):
        self.client.close()
        await self.client.closed()

    async def vanish(self):
        self.client.abort()


class AppleMidiPlayer:
    door = "rtpmidi"

    def __init__(self, peer):
        self.peer = peer

    @classmethod
    async def join(cls, gateway, name, rng):
        peer = RtpMidiPeer(name, rng)
        try:
            await asyncio.to_thread(peer.invite, (LOOPBACK, gateway.rtpmidi_port))
        except Exception:
            await asyncio.to_thread(peer.vanish)
            raise
        return cls(peer)

    def send(self, message):
        self.peer.send([bytes(message)])

    async def leave(self):
        await asyncio.to_thread(self.peer.close)

    async def vanish(self):
        await asyncio.to_thread(self.peer.vanish)


class Tally:
    def __init__(self):
        self.events_sent = 0
        self.joined = collections.Counter()
        self.endings = collections.Counter()


class Observer:
    """The member that hears every note and keeps what still sounds, per publisher."""

    def __init__(self, client):
        self.client = client
        self.sounding = set()
        self.heard = collections.Counter()      # events heard, per door

    async def listen(self):
        while True:
            message = await self.client.expect(lambda m: m.get("type") == "midi", timeout=3600)
            status, note, velocity = (message["data"] + [0, 0])[:3]
            origin = message["from"]
            key = (origin["id"], status & 0x0F, note)
            kind = status & 0xF0
            if kind == NOTE_ON and velocity:
                self.sounding.add(key)
            elif kind in (NOTE_ON, NOTE_OFF):
                self.sounding.discard(key)
            self.heard[origin["door"]] += 1


async def play_one(player, rng, tally):
    """Notes, then one of :data:`ENDINGS`."""
    ending = rng.choice(ENDINGS)
    notes = rng.randint(1, 10)
    for index in range(notes):
        note = rng.randint(36, 96)
        player.send([NOTE_ON, note, 100])
        tally.events_sent += 1
        await asyncio.sleep(NOTE_SECONDS)
        if ending == "vanish mid-note" and index == notes - 1:
            break
        player.send([NOTE_OFF, note, 0])
        tally.events_sent += 1
        await asyncio.sleep(NOTE_SECONDS)
    await (player.leave() if ending == "leave" else player.vanish())
    tally.endings[ending] += 1


async def slot(kind, number, gateway, deadline, max_members, rng, tally):
    """Member after member through one door until ``deadline`` or ``max_members``."""
    count = 0
    while time.monotonic() < deadline and count < max_members:
        player = await kind.join(gateway, f"{kind.door}{number}.{count}", rng)
        tally.joined[kind.door] += 1
        await play_one(player, rng, tally)
        count += 1


async def sample(gateway, interval, samples):
    """(seconds since start, RSS bytes, members) every ``interval`` seconds."""
    start = time.monotonic()
    while True:
        status = await asyncio.to_thread(gateway.status)
        samples.append((time.monotonic() - start, rss_bytes(gateway.process.pid),
                        status["members"]))
        await asyncio.sleep(interval)


async def members_settle(gateway, expected, timeout):
    """The member count once it is ``expected``, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        members = (await asyncio.to_thread(gateway.status))["members"]
        if members == expected or time.monotonic() > deadline:
            return members
        await asyncio.sleep(0.2)


def rss_trend(samples):
    """(change %, least-squares slope %/minute) of RSS over the last half of ``samples``."""
    half = [(seconds, rss) for seconds, rss, _ in samples[len(samples) // 2:]]
    if len(half) < 2:
        return float("nan"), float("nan")
    first = half[0][1]
    mean_t = sum(seconds for seconds, _ in half) / len(half)
    mean_rss = sum(rss for _, rss in half) / len(half)
    spread = sum((seconds - mean_t) ** 2 for seconds, _ in half)
    slope = sum((seconds - mean_t) * (rss - mean_rss) for seconds, rss in half) / spread
    return (half[-1][1] - first) / first * 100, slope * 60 / first * 100


async def soak(gateway, args):
    rng = random.Random(args.seed)
    tally = Tally()
    observer = Observer(await JamClient.connect(gateway.ws_url))
    if (await observer.client.join(*SESSION, "observer"))["type"] != "joined":
        raise RuntimeError("the observer was refused")
    listening = asyncio.create_task(observer.listen())
    samples = []
    sampling = asyncio.create_task(sample(gateway, args.sample_seconds, samples))
    start = time.monotonic()
    deadline = start + args.minutes * 60
    slots = [slot(WebSocketPlayer, number, gateway, deadline, args.max_members, rng, tally)
             for number in range(args.websocket_slots)]
    slots += [slot(AppleMidiPlayer, number, gateway, deadline, args.max_members, rng, tally)
              for number in range(args.applemidi_slots)]
    await asyncio.gather(*slots)
    played = time.monotonic() - start
    # Vanished AppleMIDI peers go at the next idle expiry; their note-offs come then.
    before_leaving = await members_settle(gateway, 1, IDLE_TIMEOUT * 3 + 5)
    await asyncio.sleep(0.5)
    sampling.cancel()
    listening.cancel()
    stuck = len(observer.sounding)
    await WebSocketPlayer(observer.client).leave()
    leaked = await members_settle(gateway, 0, 5)
    return {"tally": tally, "observer": observer, "samples": samples, "played": played,
            "stuck": stuck, "leaked": leaked, "before_leaving": before_leaving}


def report(result, gateway):
    tally, samples = result["tally"], result["samples"]
    played = result["played"]
    joined = sum(tally.joined.values())
    print(f"played {played:.0f} s: {joined} members joined"
          f" ({', '.join(f'{door} {n}' for door, n in sorted(tally.joined.items()))}),"
          f" {joined / played:.1f}/s; endings: "
          + ", ".join(f"{ending} {tally.endings[ending]}" for ending in ENDINGS))
    heard = result["observer"].heard
    print(f"events: {tally.events_sent} sent ({tally.events_sent / played:.0f}/s), observer heard"
          f" {sum(heard.values())} ({', '.join(f'{d} {n}' for d, n in sorted(heard.items()))};"
          " released note-offs included)")
    print(f"stuck notes: {result['stuck']}; leaked members: {result['leaked']}"
          f" (members before the observer left: {result['before_leaving']}, expected 1)")
    change, slope = rss_trend(samples)
    members = sorted(count for _, _, count in samples)
    print(f"RSS: first {samples[0][1] / 2**20:.1f} MB, last {samples[-1][1] / 2**20:.1f} MB;"
          f" last half: {change:+.2f}%, slope {slope:+.3f}%/min ({len(samples)} samples);"
          f" members sampled: median {members[len(members) // 2]}, max {members[-1]}")
    failures = gateway_failures(gateway)
    if result["stuck"]:
        failures.append(f"{result['stuck']} stuck notes")
    if result["leaked"]:
        failures.append(f"{result['leaked']} leaked members")
    for door in ("websocket", "rtpmidi"):
        if not heard[door]:
            failures.append(f"the observer heard nothing from the {door} door")
    return failures


def soak_gateway(args):
    rtpmidi_port = free_port(socket.SOCK_DGRAM, even=True)
    config = {
        "sessions": [{"name": SESSION[0], "passphrase": SESSION[1],
                      "allow_addresses": ["127.0.0.0/8"]}],
        # Room for vanished AppleMIDI peers waiting for the idle expiry.
        "limits": {"events_per_second": 100000, "max_members_per_session": 256,
                   "idle_timeout": IDLE_TIMEOUT},
        "web": {"host": LOOPBACK, "port": free_port()},
        "websocket": {"ping_interval": 1.0},
        "rtpmidi": {"host": LOOPBACK,
                    "sessions": [{"session": SESSION[0], "port": rtpmidi_port, "name": "soak"}]},
        "logging": {"level": "info"},
    }
    gateway = start_gateway(config, "bench-churn-", args)
    gateway.rtpmidi_port = rtpmidi_port
    return gateway


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="20 seconds, samples every 2 s")
    parser.add_argument("--websocket-slots", type=int, default=6)
    parser.add_argument("--applemidi-slots", type=int, default=2)
    parser.add_argument("--max-members", type=int, default=100_000,
                        help="at most this many members per slot, whatever the time")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=16)
    add_source_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.sample_seconds = 20 / 60, 2.0
    run_generator_on_cpu1()
    gateway = soak_gateway(args)
    try:
        result = asyncio.run(soak(gateway, args))
        failures = report(result, gateway)
    finally:
        gateway.stop()
    return verdict(failures)


if __name__ == "__main__":
    sys.exit(main())
