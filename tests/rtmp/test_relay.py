"""The live relay's core: frames, late joiners, one publisher per name, slow players."""

from gateway.protocols.rtmp import amf0
from gateway.protocols.rtmp.chunks import AUDIO, DATA_AMF0, VIDEO, ChunkReader, Message
from gateway.protocols.rtmp.relay import (
    LiveStreams, PlayerQueue, RELAY_CHUNK_SIZE, classify, data_frame, flv_header)
from tests.rtmp_peer import flv_tags

AAC_HEADER = b"\xaf\x00\x12\x10"
AVC_HEADER = b"\x17\x00\x00\x00\x00" + b"avcC" * 4
KEY = b"\x17\x01\x00\x00\x00" + b"k" * 5000
INTER = b"\x27\x01\x00\x00\x00" + b"i" * 900


def test_frames_are_chunked_once_per_stream_id_with_full_headers_any_player_can_read():
    frame = classify(VIDEO, 0x1234567, KEY)
    first = frame.chunks(1)
    assert frame.chunks(1) is first and frame.chunks(2) != first
    reader = ChunkReader()
    reader.chunk_size = RELAY_CHUNK_SIZE
    # A reader that has seen other messages on the chunk stream reads it the same.
    assert reader.receive(classify(VIDEO, 5, INTER).chunks(1) + first)[-1] == Message(
        VIDEO, 1, 0x1234567, KEY, 7)


def test_classify_knows_sequence_headers_and_key_frames():
    assert classify(AUDIO, 0, AAC_HEADER).sequence_header
    assert not classify(AUDIO, 0, b"\xaf\x01\x21").sequence_header
    header = classify(VIDEO, 0, AVC_HEADER)
    assert header.sequence_header and header.key
    assert classify(VIDEO, 0, KEY).key and not classify(VIDEO, 0, INTER).key
    assert not classify(VIDEO, 0, b"").key


def test_late_joiner_gets_metadata_and_headers_at_the_current_time_then_starts_at_a_key_frame():
    streams = LiveStreams()
    stream = streams.publish("demo", "live", "publisher")
    stream.set_metadata(data_frame(0, ["onMetaData", {"audiocodecid": 10.0}]))
    for frame in (classify(AUDIO, 0, AAC_HEADER), classify(VIDEO, 0, AVC_HEADER),
                  classify(VIDEO, 40, KEY), classify(VIDEO, 80, INTER)):
        stream.accept(frame)
    streams.play("demo", "live", "late")
    started = stream.start_frames()
    assert [(frame.type_id, frame.timestamp) for frame in started] == [
        (DATA_AMF0, 80), (AUDIO, 80), (VIDEO, 80)]
    assert amf0.decode_all(started[0].payload)[0] == "onMetaData"
    inter, audio = classify(VIDEO, 120, INTER), classify(AUDIO, 121, b"\xaf\x01\x21")
    assert stream.waits_for_key_frame("late", inter)
    assert stream.waits_for_key_frame("late", audio)        # audio waits for video too
    assert not stream.waits_for_key_frame("late", classify(VIDEO, 160, KEY))
    assert not stream.waits_for_key_frame("late", inter)


def test_audio_only_stream_starts_at_any_frame():
    streams = LiveStreams()
    stream = streams.publish("demo", "live", "publisher")
    stream.accept(classify(AUDIO, 0, AAC_HEADER))
    streams.play("demo", "live", "player")
    assert not stream.waits_for_key_frame("player", classify(AUDIO, 23, b"\xaf\x01\x21"))


def test_one_publisher_per_name_and_session_and_the_stream_lives_while_anyone_uses_it():
    streams = LiveStreams()
    first = streams.publish("demo", "live", "a")
    assert streams.publish("demo", "live", "b") is None
    assert streams.publish("other", "live", "b") is not None
    first.accept(classify(AUDIO, 0, AAC_HEADER))
    streams.play("demo", "live", "player")
    streams.unpublish(first, "a")
    assert first.audio_header is None and streams.get("demo", "live") is first
    assert streams.publish("demo", "live", "b") is first      # the player hears the next one
    streams.unpublish(first, "b")
    streams.stop(first, "player")
    assert streams.get("demo", "live") is None


def test_flv_tags_read_back_with_the_tests_own_reader(tmp_path):
    path = tmp_path / "out.flv"
    frames = [classify(AUDIO, 0, AAC_HEADER), classify(AUDIO, 0x1000023, b"\xaf\x01\x21")]
    path.write_bytes(flv_header(False) + b"".join(frame.flv_tag() for frame in frames))
    assert flv_tags(path) == [(AUDIO, 0, AAC_HEADER), (AUDIO, 0x1000023, b"\xaf\x01\x21")]


def test_player_queue_drops_video_first_then_audio_and_says_when_a_player_is_behind():
    queue = PlayerQueue(max_bytes=10_000, max_behind_seconds=5.0)
    assert not queue.behind(100.0)
    queue.pause(100.0)
    key, inter = classify(VIDEO, 0, KEY), classify(VIDEO, 40, INTER)
    audio = classify(AUDIO, 20, b"\xaf\x01" + b"a" * 3000)
    assert queue.offer(key, KEY) and queue.offer(audio, audio.payload)
    assert not queue.offer(key, KEY)            # no room: video dropped
    assert not queue.offer(inter, INTER)        # and video waits for a key frame
    assert queue.offer(audio, audio.payload)    # audio evicts the queued video
    assert queue.dropped == {"audio": 0, "video": 3, "data": 0}
    assert queue.offer(audio, audio.payload)
    assert not queue.offer(audio, audio.payload)
    assert queue.dropped["audio"] == 1
    assert not queue.behind(105.0) and queue.behind(105.1)
    assert queue.resume() == audio.payload * 3
    assert queue.queued_bytes == 0 and not queue.paused and not queue.behind(200.0)
    assert not queue.offer(inter, INTER) and queue.offer(key, KEY)
