"""A member's recording as a Standard MIDI File, read back with mido."""

import io

import mido

from gateway.recording import TICKS_PER_BEAT, Recording, RecordingStore


def read(data):
    return mido.MidiFile(file=io.BytesIO(data))


def test_one_track_per_player_with_names_tempo_and_times():
    recording = Recording("demo", started_at=100.0, bpm=90.0)
    recording.add(100.5, "ann", bytes((0x90, 60, 100)))
    recording.add(101.0, "bob", bytes((0x91, 64, 80)))
    recording.add(101.0, "bob", bytes((0xF8,)))               # the beat clock: left out
    recording.add(101.5, "ann", bytes((0x80, 60, 0)))
    recording.add(102.0, "bob", bytes((0xB1, 64, 127)))
    song = read(recording.midi_file())
    assert song.type == 1 and song.ticks_per_beat == TICKS_PER_BEAT
    conductor, ann, bob = song.tracks
    assert conductor.name == "demo"
    assert [m.tempo for m in conductor if m.type == "set_tempo"] == [mido.bpm2tempo(90.0)]
    assert (ann.name, bob.name) == ("ann", "bob")
    # 90 bpm: 720 ticks a second; ann's note at 0.5 s, its end a second later.
    assert [(m.type, m.note, m.time) for m in ann if m.type.startswith("note")] == [
        ("note_on", 60, 360), ("note_off", 60, 720)]
    assert [(m.type, m.channel, m.time) for m in bob if not m.is_meta] == [
        ("note_on", 1, 720), ("control_change", 1, 720)]
    assert recording.left_out == 1
    # Absolute times come back as they were played.
    assert abs(mido.tick2second(360, TICKS_PER_BEAT, mido.bpm2tempo(90.0)) - 0.5) < 1e-6


def test_sysex_is_kept_and_incomplete_bytes_are_not():
    recording = Recording("demo", 0.0)
    recording.add(0.1, "ann", bytes((0xF0, 0x7E, 0x7F, 0x09, 0x01, 0xF7)))
    recording.add(0.2, "ann", bytes((0x90, 60)))                # a note-on missing its velocity
    [_, ann] = read(recording.midi_file()).tracks
    assert [m.type for m in ann if not m.is_meta] == ["sysex"]


def test_a_kept_recording_is_fetched_by_its_token_and_session_only_until_it_expires():
    store = RecordingStore(keep_seconds=60.0)
    recording = Recording("demo", 0.0)
    recording.add(0.0, "ann", bytes((0x90, 60, 1)))
    token = store.keep(recording, now=10.0)
    assert read(store.fetch("demo", token, now=20.0)).tracks[1].name == "ann"
    assert store.fetch("other", token, now=20.0) is None
    assert store.fetch("demo", token + "x", now=20.0) is None
    assert store.fetch("demo", token, now=70.0) is None


def test_tempo_changes_heard_during_the_recording_are_its_tempo_map():
    recording = Recording("metronome", started_at=10.0, bpm=100.0, beats_per_bar=3)
    recording.add(11.0, "ann", bytes((0x90, 60, 100)))
    recording.set_tempo(12.0, 100.0)                          # no change: no entry
    recording.set_tempo(12.0, 150.0)
    recording.add(13.0, "ann", bytes((0x80, 60, 0)))
    song = read(recording.midi_file())
    conductor = song.tracks[0]
    assert [(m.numerator, m.denominator) for m in conductor if m.type == "time_signature"] \
        == [(3, 4)]
    tempos = [(m.tempo, m.time) for m in conductor if m.type == "set_tempo"]
    # 100 bpm is 800 ticks a second: the change two seconds in sits at tick 1600.
    assert tempos == [(mido.bpm2tempo(100.0), 0), (mido.bpm2tempo(150.0), 1600)]
    # mido plays the file back through its tempo map: the note's times are as heard.
    heard = [(round(seconds, 4), message.type) for seconds, message in played(song)
             if message.type.startswith("note")]
    assert heard == [(1.0, "note_on"), (3.0, "note_off")]


def played(song):
    now = 0.0
    for message in song:            # mido applies the set_tempo messages as it goes
        now += message.time
        yield now, message
