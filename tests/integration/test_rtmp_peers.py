"""Smoke tests of the RTMP test harness (tests/rtmp_peer.py) against node-media-server.

No netgateway code: node-media-server 4.4.3 is the reference server, so these
show that the real clients and the helpers work here before the RTMP door is
tested with them. Players start before the publisher, so that each records
the stream from its first frame.
"""

import threading

import pytest

from tests.rtmp_peer import (
    FLV_AUDIO, FLV_SCRIPT, LibrtmpClient, amf0_decode, ffmpeg_play, ffmpeg_play_data,
    ffmpeg_publish_flv, ffmpeg_publish_sine, ffprobe, flv_tags, make_midi_flv, make_sine_flv,
    need_rtmp_tools, rtmpdump_play, run_nms, stop_process,
)

pytestmark = pytest.mark.external

SINE_SECONDS = 4
# ffmpeg ends by itself only when it has this much (see ffmpeg_play); rtmpdump is
# ended by PID after RTMPDUMP_SECONDS, once the publisher has finished.
PLAY_SECONDS = 3.5
RTMPDUMP_SECONDS = SINE_SECONDS + 2.5


@pytest.fixture(scope="module")
def nms(tmp_path_factory):
    need_rtmp_tools()
    with run_nms(tmp_path_factory.mktemp("nms")) as server:
        yield server


def in_thread(results, key, function, *args, **kwargs):
    def run():
        results[key] = function(*args, **kwargs)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_nms_listens_on_loopback_with_its_config_kept(nms):
    rtmp_port, http_port, pid = nms
    assert rtmp_port != http_port and pid > 0
    assert f"Rtmp Server listening on port 127.0.0.1:{rtmp_port}" in nms.log
    assert "Webadmin console is disabled" in nms.log
    assert "Config updated" not in nms.log  # NMS left its config file as written


def test_ffmpeg_sine_played_by_ffmpeg_and_rtmpdump_plain_and_fp9(nms, tmp_path):
    url = nms.url("sine")
    results, threads = {}, []
    outputs = {"ffmpeg": tmp_path / "ffmpeg.flv", "rtmpdump": tmp_path / "rtmpdump.flv",
               "rtmpdump_fp9": tmp_path / "rtmpdump_fp9.flv"}
    threads.append(in_thread(results, "ffmpeg", ffmpeg_play, url, outputs["ffmpeg"],
                             PLAY_SECONDS, timeout=SINE_SECONDS + 12))
    threads.append(in_thread(results, "rtmpdump", rtmpdump_play, url, outputs["rtmpdump"],
                             RTMPDUMP_SECONDS))
    threads.append(in_thread(results, "rtmpdump_fp9", rtmpdump_play, url,
                             outputs["rtmpdump_fp9"], RTMPDUMP_SECONDS, fp9=True))
    nms.wait_log("start play /live/sine", count=3)
    publisher = ffmpeg_publish_sine(url, SINE_SECONDS)
    try:
        assert publisher.wait(SINE_SECONDS + 10) == 0, publisher.stderr.read()
    finally:
        stop_process(publisher)
    for thread in threads:
        thread.join(SINE_SECONDS + 20)
    for name, path in outputs.items():
        assert name in results, f"{name} did not finish"
        returncode, stderr, _ = results[name]
        assert path.exists() and path.stat().st_size > 10_000, (name, returncode, stderr)
        probe = ffprobe(path)
        assert probe["codec"] == "aac", (name, probe)
        start = float(probe["format"].get("start_time") or 0)
        wanted = PLAY_SECONDS if name == "ffmpeg" else SINE_SECONDS
        assert abs(probe["duration"] - start - wanted) < 0.3, (
            name, probe["duration"], start, stderr)
    assert results["ffmpeg"][:1] == (0,), results["ffmpeg"]
    assert "Starting Live Stream" in results["rtmpdump_fp9"][1]


def test_make_midi_flv_through_ffmpeg_publisher_and_ffmpeg_data_player(nms, tmp_path):
    sine = make_sine_flv(tmp_path / "sine.flv", 3)
    notes = [(200 * n, bytes((0x90, 60 + n, 100))) for n in range(8)]
    written = make_midi_flv(sine, tmp_path / "midi.flv", notes)
    tags = flv_tags(tmp_path / "midi.flv")
    scripts = [(ts, amf0_decode(body)) for kind, ts, body in tags
               if kind == FLV_SCRIPT and amf0_decode(body)[0] == "onMidi"]
    assert [values for _, values in scripts] == [list(item) for item in written]
    assert [ts for ts, _ in scripts] == [ts for ts, _ in notes]
    timestamps = [ts for _, ts, _ in tags]
    assert timestamps == sorted(timestamps)
    assert sum(kind == FLV_AUDIO for kind, _, _ in tags) == sum(
        kind == FLV_AUDIO for kind, _, _ in flv_tags(sine))
    probe = ffprobe(tmp_path / "midi.flv")
    assert probe["codec"] == "aac"
    assert any(stream["codec_type"] == "data" for stream in probe["streams"])

    url = nms.url("fmidi")
    results = {}
    player = in_thread(results, "data", ffmpeg_play_data, url, 6)
    nms.wait_log("start play /live/fmidi")
    publisher = ffmpeg_publish_flv(tmp_path / "midi.flv", url)
    try:
        assert publisher.wait(15) == 0, publisher.stderr.read()
    finally:
        stop_process(publisher)
    player.join(15)
    raw, stderr = results["data"]
    values = amf0_decode(raw)
    hexes = [item["hex"] for name, item in zip(values, values[1:]) if name == "onMidi"]
    seqs = [item["seq"] for name, item in zip(values, values[1:]) if name == "onMidi"]
    # The player may miss the first note while it probes; the rest arrive in order.
    assert len(seqs) >= 6, (values, stderr)
    assert seqs == list(range(int(seqs[0]), 8))
    assert hexes == [message.hex() for _, message in notes[int(seqs[0]):]]


def test_librtmp_publishes_onmidi_both_ways_and_a_librtmp_player_receives_it(nms):
    url = nms.url("lmidi")
    with LibrtmpClient(url) as player:
        nms.wait_log("start play /live/lmidi")
        with LibrtmpClient(url, publish=True) as publisher:
            for seq in range(6):
                publisher.send_midi(seq, bytes((0x90, 60 + seq, 100)),
                                    set_data_frame=seq % 2 == 1)
                publisher.advance(50)
            publisher.call("midi", "903c64")  # NMS ignores custom invokes ("Unknown command")
            player.collect(5, until=lambda p: len(p.data_named("onMidi")) >= 6)
    received = [(ts, values) for ts, _, values in player.data if "onMidi" in values]
    assert [values[-1]["seq"] for _, values in received] == [0, 1, 2, 3, 4, 5]
    assert [values[-1]["hex"] for _, values in received] == [
        f"90{60 + seq:02x}64" for seq in range(6)]
    # NMS keeps the @setDataFrame prefix that librtmp's stream.write puts in front.
    assert [values[0] for _, values in received] == ["onMidi", "@setDataFrame"] * 3
    assert [ts for ts, _ in received] == [50 * seq for seq in range(6)]
