"""What a member records of its session, kept as a Standard MIDI File (sans-IO).

# implements the Standard MIDI File 1.0 format through mido (type 1: one track per player)

A member that starts a recording keeps every MIDI event it hears and plays,
with the time it was heard and the player's name, until it stops (or
:data:`MAX_EVENTS`). Stopped, the recording is written with mido: track 0
holds the session's name, its tempo map (the session's tempo when the
recording started and each change heard since; 120 bpm for a session
without a tempo) and its time signature (the session's beats a bar over 4); each player
gets a track named after them, in the order they were first heard. Only
what a Standard MIDI File holds is kept: channel messages and SysEx; the
beat clock and other real-time and system common bytes are left out (the
tempo map says where the beats are).

:class:`RecordingStore` keeps stopped recordings for their member to
download, each under a token that only that member is told, for
``keep_seconds``. Times are parameters (seconds); no Twisted.
"""

import io
import secrets

import mido

TICKS_PER_BEAT = 480
DEFAULT_BPM = 120.0
MAX_EVENTS = 200_000


class Recording:
    """One member's recording of ``session``, started at ``started_at`` (seconds)."""

    def __init__(self, session, started_at, bpm=None, beats_per_bar=4):
        self.session = session
        self.started_at = started_at
        self.beats_per_bar = beats_per_bar
        self.tempo_map = [(0.0, bpm or DEFAULT_BPM)]    # (seconds since the start, bpm)
        self.events = []            # (seconds since the start, player, bytes)
        self.left_out = 0           # events a file cannot hold, or past MAX_EVENTS

    def set_tempo(self, time, bpm):
        """The session's tempo became ``bpm`` at ``time``."""
        if bpm != self.tempo_map[-1][1]:
            self.tempo_map.append((max(self.tempo_map[-1][0], time - self.started_at), bpm))

    def add(self, time, player, data):
        status = data[0] if data else 0
        if not 0x80 <= status <= 0xF0 or len(self.events) >= MAX_EVENTS:
            self.left_out += 1      # real-time, system common, or past the bound
            return
        self.events.append((max(0.0, time - self.started_at), player, bytes(data)))

    def players(self):
        """The players heard, in the order they were first heard."""
        return list(dict.fromkeys(player for _, player, _ in self.events))

    def midi_file(self):
        """The recording as the bytes of a type 1 Standard MIDI File."""
        ticks_at = self._ticks_at()
        song = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
        conductor = [mido.MetaMessage("track_name", name=self.session, time=0),
                     mido.MetaMessage("time_signature", numerator=self.beats_per_bar,
                                      denominator=4, time=0)]
        last_tick = 0
        for seconds, bpm in self.tempo_map:
            tick = ticks_at(seconds)
            conductor.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm),
                                              time=tick - last_tick))
            last_tick = tick
        song.tracks.append(mido.MidiTrack(conductor + [mido.MetaMessage("end_of_track", time=0)]))
        for player in self.players():
            track = mido.MidiTrack([mido.MetaMessage("track_name", name=player, time=0)])
            last_tick = 0
            for seconds, who, data in self.events:
                if who != player:
                    continue
                try:
                    message = mido.Message.from_bytes(data)
                except ValueError:
                    continue        # an incomplete message: not one a file can hold
                tick = ticks_at(seconds)
                track.append(message.copy(time=tick - last_tick))
                last_tick = tick
            track.append(mido.MetaMessage("end_of_track", time=0))
            song.tracks.append(track)
        out = io.BytesIO()
        song.save(file=out)
        return out.getvalue()

    def _ticks_at(self):
        """Seconds since the start to ticks, through the tempo map. Each tempo counts as
        the file stores it (whole microseconds a beat), so a reader's ticks-to-seconds
        gives back the times as they were heard, to within a tick a change."""
        segments = []               # (start seconds, start tick, ticks a second)
        for seconds, bpm in self.tempo_map:
            tick = 0 if not segments else segments[-1][1] + round(
                (seconds - segments[-1][0]) * segments[-1][2])
            segments.append((seconds, tick, TICKS_PER_BEAT * 1e6 / mido.bpm2tempo(bpm)))

        def ticks_at(seconds):
            start, start_tick, rate = next(segment for segment in reversed(segments)
                                           if segment[0] <= seconds)
            return start_tick + round((seconds - start) * rate)
        return ticks_at


class RecordingStore:
    """Stopped recordings, each kept for ``keep_seconds`` under a token for its member."""

    def __init__(self, keep_seconds=600.0, max_recordings=64):
        self.keep_seconds = keep_seconds
        self.max_recordings = max_recordings
        self._kept = {}             # token -> (session, file bytes, until)

    def keep(self, recording, now):
        """Write ``recording`` and keep it; return the token that fetches it."""
        self._forget_old(now)
        while len(self._kept) >= self.max_recordings:
            del self._kept[next(iter(self._kept))]
        token = secrets.token_urlsafe(18)
        self._kept[token] = (recording.session, recording.midi_file(), now + self.keep_seconds)
        return token

    def fetch(self, session, token, now):
        """The file kept for ``session`` under ``token``, or None."""
        self._forget_old(now)
        kept = self._kept.get(token)
        if kept is None or kept[0] != session:
            return None
        return kept[1]

    def _forget_old(self, now):
        for token in [token for token, (_, _, until) in self._kept.items() if until <= now]:
            del self._kept[token]
