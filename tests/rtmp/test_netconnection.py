"""The RTMP connection core: connect, join, streams, MIDI and refusals, without sockets.

The client side here is the door's own chunk writer and reader (already
tested against real clients in test_real_clients.py); real ffmpeg, rtmpdump
and librtmp sessions are in tests/integration/test_rtmp_e2e.py.
"""

import os
import typing

import pytest

from gateway.actions import RoundTrip
from gateway.protocols.rtmp import amf0, netconnection as nc
from gateway.protocols.rtmp.chunks import (
    AUDIO, COMMAND_AMF0, COMMAND_AMF3, DATA_AMF0, VIDEO, ChunkReader, ChunkWriter, Message,
    PingRequest, PingResponse, SetChunkSize, StreamBegin, StreamEOF, WindowAckSize)
from gateway.protocols.rtmp.handshake import PACKET_SIZE

PASSPHRASE = "play along with netgateway demo"


class Sent(typing.NamedTuple):
    """A command or data message the connection wrote, decoded."""

    stream_id: int
    values: list

    def __getitem__(self, index):       # (stream id, values) like a pair
        return (self.stream_id, self.values)[index]


class Client:
    """Drives a Connection the way a client would, and decodes what it answers."""

    def __init__(self, now=0.0):
        self.connection = nc.Connection("jam", now)
        self.writer = ChunkWriter()
        self.reader = ChunkReader()
        self.actions = self._feed(b"\x03" + bytes(8) + os.urandom(PACKET_SIZE - 8), now)
        assert [type(action) for action in self.actions] == [nc.Alive, nc.Write]
        assert len(self.actions[1].data) == 1 + 2 * PACKET_SIZE
        self.handshake_leftover = bytes(PACKET_SIZE)    # C2, sent with the first command

    def _feed(self, data, now):
        return self.connection.receive(data, now)

    def send(self, message, now=0.0):
        data = self.handshake_leftover + self.writer.write(message)
        self.handshake_leftover = b""
        return self.decode(self._feed(data, now))

    def command(self, name, transaction, *values, stream_id=0, now=0.0):
        return self.send(Message(COMMAND_AMF0, stream_id, 0,
                                 amf0.encode(name, float(transaction), *values)), now)

    def decode(self, actions):
        """``(other actions, [decoded messages and control values written])``."""
        others, written = [], []
        for action in actions:
            if type(action) is nc.Write:
                for event in self.reader.receive(action.data):
                    if type(event) is Message and event.type_id in (COMMAND_AMF0, DATA_AMF0):
                        written.append(Sent(event.stream_id, amf0.decode_all(event.payload)))
                    else:
                        written.append(event)
            elif type(action) is not nc.Alive:
                others.append(action)
        return others, written

    def connect(self, app="jam/demo", *arguments, tc_url=None):
        command_object = {"app": app, "flashVer": "LNX 9,0,124,2",
                          "tcUrl": tc_url or f"rtmp://127.0.0.1/{app}"}
        return self.command("connect", 1, command_object, *arguments)


def statuses(written):
    return [values[3]["code"] for item in written if type(item) is Sent
            for values in [item[1]] if values[0] in ("onStatus", "_error", "_result")
            and len(values) > 3 and isinstance(values[3], dict) and "code" in values[3]]


def joined_client(app="jam/demo", *arguments):
    client = Client()
    actions, written = client.connect(app, *arguments)
    assert actions == [nc.Join("demo", "alice", PASSPHRASE)]
    assert WindowAckSize(nc.WINDOW_ACK_SIZE) in written and SetChunkSize(4096) in written
    _, written = client.decode(client.connection.joined(0.0))
    assert statuses(written) == ["NetConnection.Connect.Success"]
    return client


def create_stream(client):
    _, written = client.command("createStream", 2, None)
    return int(written[-1][1][3])


def test_connect_with_string_arguments_joins_and_succeeds_only_after_the_bus_admits():
    client = Client()
    actions, written = client.connect("jam/demo", PASSPHRASE, "alice")
    assert actions == [nc.Join("demo", "alice", PASSPHRASE)]
    assert statuses(written) == []          # the answer waits for the bus
    _, written = client.decode(client.connection.joined(0.0))
    assert StreamBegin(0) in written
    result = [values for item in written if type(item) is Sent for values in [item[1]]]
    assert result[0][:2] == ["_result", 1.0] and result[0][2]["fmsVer"].startswith("FMS/")


@pytest.mark.parametrize("arguments, app, tc_url", [
    (({"passphrase": PASSPHRASE, "name": "alice"},), "jam/demo", None),
    ((), "jam/demo", "rtmp://127.0.0.1/jam/demo?passphrase=play+along+with+netgateway+demo"
                     "&name=alice"),
    (({"session": "demo"}, PASSPHRASE, "alice"), "jam", None),
])
def test_passphrase_name_and_session_as_an_object_a_query_or_a_session_argument(
        arguments, app, tc_url):
    client = Client()
    actions, _ = client.connect(app, *arguments, tc_url=tc_url)
    assert actions == [nc.Join("demo", "alice", PASSPHRASE)]


@pytest.mark.parametrize("name, joins_as", [
    ("  ", "  "), ("alice\nnetgateway: forged", "alice\nnetgateway: forged"),
    ("x" * 100, "x" * 100), ("", nc.DEFAULT_PLAYER_NAME)])
def test_a_player_name_goes_to_the_bus_as_sent_and_only_a_missing_one_is_defaulted(
        name, joins_as):
    client = Client()
    actions, _ = client.connect("jam/demo", PASSPHRASE, name)
    # The bus's name rule refuses bad names for every door (bad_name): no repair here.
    assert actions == [nc.Join("demo", joins_as, PASSPHRASE)]


def test_wrong_passphrase_at_connect_is_connect_rejected_with_the_bus_words_then_close():
    client = Client()
    client.connect("jam/demo", "guess", "mallory")
    actions, written = client.decode(client.connection.refused(
        "wrong passphrase for session 'demo'", "wrong_passphrase"))
    assert actions == [nc.Close("wrong_passphrase")]
    (error,) = [item[1] for item in written if type(item) is Sent]
    assert error[:3] == ["_error", 1.0, None]
    assert error[3] == {"level": "error", "code": "NetConnection.Connect.Rejected",
                        "description": "wrong passphrase for session 'demo'"}
    assert client.command("createStream", 2, None) == ([], [])     # closed: nothing more


def test_unknown_application_is_rejected_without_asking_the_bus():
    client = Client()
    actions, written = client.connect("live/demo", PASSPHRASE)
    assert [(type(action), action.reason) for action in actions] == [
        (nc.Dropped, "unknown_app"), (nc.Close, "unknown_app")]
    assert statuses(written) == ["NetConnection.Connect.Rejected"]


def test_session_in_the_playpath_joins_at_publish_and_then_publishes_the_default_stream():
    client = Client()
    actions, written = client.connect("jam")
    assert actions == [] and statuses(written) == ["NetConnection.Connect.Success"]
    stream_id = create_stream(client)
    actions, _ = client.command("publish", 3, None,
                                "demo?passphrase=play%20along%20with%20netgateway%20demo"
                                "&name=obs", "live", stream_id=stream_id)
    assert actions == [nc.Join("demo", "obs", PASSPHRASE)]
    actions, _ = client.decode(client.connection.joined(0.0))
    assert actions == [nc.Publish(stream_id, "live")]


def test_refusal_after_connect_comes_as_on_status_on_the_stream_then_close():
    client = Client()
    client.connect("jam")
    stream_id = create_stream(client)
    client.command("play", 3, None, "demo?passphrase=nope", stream_id=stream_id)
    actions, written = client.decode(client.connection.refused(
        "session 'demo' is full (8 members)", "session_full"))
    assert actions == [nc.Close("session_full")]
    (status,) = [item for item in written if type(item) is Sent]
    assert status[0] == stream_id and status[1][0] == "onStatus"
    assert status[1][3]["code"] == "NetConnection.Connect.Rejected"
    assert status[1][3]["description"] == "session 'demo' is full (8 members)"


def test_no_passphrase_anywhere_is_rejected_at_the_first_stream_saying_how_to_give_one():
    client = Client()
    client.connect("jam")
    stream_id = create_stream(client)
    actions, written = client.command("publish", 3, None, "demo", stream_id=stream_id)
    assert [(type(action), action.reason) for action in actions] == [
        (nc.Dropped, "no_passphrase"), (nc.Close, "no_passphrase")]
    assert "-rtmp_conn S:PASSPHRASE" in written[-1][1][3]["description"]


def test_commands_that_arrive_while_the_bus_decides_are_held_then_run_in_order():
    client = Client()
    client.connect("jam/demo", PASSPHRASE, "alice")
    assert client.command("createStream", 2, None) == ([], [])
    actions, written = client.decode(client.connection.joined(0.0))
    results = [item[1] for item in written if type(item) is Sent]
    assert [values[0] for values in results] == ["_result", "_result"]
    assert results[1][:4] == ["_result", 2.0, None, 1.0]


def test_too_many_held_messages_close_the_connection():
    client = Client()
    client.connect("jam/demo", PASSPHRASE, "alice")
    for transaction in range(nc.MAX_HELD_MESSAGES):
        assert client.command("getStreamLength", transaction + 2, None, "x") == ([], [])
    actions, _ = client.command("getStreamLength", 99, None, "x")
    assert actions[-1] == nc.Close("too_many_messages")


def test_publish_relays_media_metadata_and_data_and_turns_onmidi_into_session_midi():
    client = joined_client("jam/demo", PASSPHRASE, "alice")
    stream_id = create_stream(client)
    assert client.command("releaseStream", 3, None, "live")[0] == []
    _, written = client.command("FCPublish", 4, None, "live")
    assert [item[1][0] for item in written] == ["onFCPublish"]
    actions, _ = client.command("publish", 5, None, "live", "live", stream_id=stream_id)
    assert actions == [nc.Publish(stream_id, "live")]
    _, written = client.decode(client.connection.publish_started(stream_id, "live"))
    assert statuses(written) == ["NetStream.Publish.Start"]

    metadata = Message(DATA_AMF0, stream_id, 0, amf0.encode(
        "@setDataFrame", "onMetaData", amf0.EcmaArray(audiocodecid=10.0)))
    (action,), _ = client.send(metadata)
    assert type(action) is nc.Metadata
    assert amf0.decode_all(action.frame.payload) == ["onMetaData", {"audiocodecid": 10.0}]
    (action,), _ = client.send(Message(AUDIO, stream_id, 23, b"\xaf\x00\x12\x10"))
    assert type(action) is nc.Media and action.frame.sequence_header
    assert action.frame.timestamp == 23
    (action,), _ = client.send(Message(VIDEO, stream_id, 40, b"\x17\x01\x00\x00\x00rest"))
    assert action.frame.key and not action.frame.sequence_header
    (action,), _ = client.send(Message(DATA_AMF0, stream_id, 50, amf0.encode(
        "@setDataFrame", "onCuePoint", {"name": "x"})))
    assert amf0.decode_all(action.frame.payload) == ["onCuePoint", {"name": "x"}]

    for values in (["onMidi", {"seq": 0.0, "hex": "903c64"}],
                   ["@setDataFrame", "onMidi", {"bytes": [144.0, 60.0, 100.0]}]):
        actions, _ = client.send(Message(DATA_AMF0, stream_id, 60, amf0.encode(*values)))
        assert actions == [nc.PlayedMidi([b"\x90\x3c\x64"])]


def test_call_midi_plays_and_answers_and_bad_midi_is_dropped_with_an_error():
    client = joined_client("jam/demo", PASSPHRASE, "alice")
    actions, written = client.command("midi", 7, None, "90 3c 64 3e 64")
    assert actions == [nc.PlayedMidi([b"\x90\x3c\x64", b"\x90\x3e\x64"])]
    assert written[-1][1][:2] == ["_result", 7.0]
    actions, written = client.command("midi", 8, None, [300.0])
    assert [type(action) for action in actions] == [nc.Dropped]
    assert statuses(written) == ["NetConnection.Call.BadValue"]
    actions, written = client.command("midi", 0, None, "zz")
    assert [action.reason for action in actions] == ["bad_midi"] and written == []


def test_second_publisher_hears_bad_name_and_keeps_its_connection():
    client = joined_client("jam/demo", PASSPHRASE, "alice")
    stream_id = create_stream(client)
    client.command("publish", 3, None, "live", "live", stream_id=stream_id)
    _, written = client.decode(client.connection.publish_refused(stream_id, "live"))
    assert statuses(written) == ["NetStream.Publish.BadName"]
    assert client.connection.state == nc.OPEN
    (action,), _ = client.send(Message(AUDIO, stream_id, 0, b"\xaf\x01\x00"))
    assert action.reason == "not_publishing"


def test_play_sends_begin_reset_start_and_sample_access_and_later_publisher_changes():
    client = joined_client("jam/demo", PASSPHRASE, "alice")
    stream_id = create_stream(client)
    actions, _ = client.command("play", 3, None, "live", -2000.0, stream_id=stream_id)
    assert actions == [nc.Play(stream_id, "live")]
    _, written = client.decode(client.connection.play_started(stream_id, "live", 5.0, False))
    assert written[0] == StreamBegin(stream_id)
    assert statuses(written) == ["NetStream.Play.Reset", "NetStream.Play.Start",
                                 "NetStream.Play.PublishNotify"]
    assert written[-1] == Sent(stream_id, ["|RtmpSampleAccess", True, True])
    ended = list(client.reader.receive(client.connection.publisher_changed(stream_id, False)))
    assert ended[-1] == StreamEOF(stream_id)
    assert amf0.decode_all(ended[0].payload)[3]["code"] == "NetStream.Play.UnpublishNotify"


def test_midi_stream_players_get_on_midi_with_timestamps_from_their_play_start():
    client = joined_client("jam/demo", PASSPHRASE, "alice")
    stream_id = create_stream(client)
    client.command("play", 3, None, "midi", stream_id=stream_id)
    client.decode(client.connection.play_started(stream_id, "midi", 10.0, False))
    assert client.connection.plays_midi
    body = amf0.encode("onMidi", {"hex": "903c64"})
    data = client.connection.midi_data([(10.25, body), (10.5, body)])
    messages = client.reader.receive(data)
    assert [(m.stream_id, m.timestamp, m.type_id) for m in messages] == [
        (stream_id, 250, DATA_AMF0), (stream_id, 500, DATA_AMF0)]


def test_stream_commands_close_delete_fcunpublish_and_limits():
    client = joined_client("jam/demo", PASSPHRASE, "alice")
    ids = [create_stream(client) for _ in range(nc.MAX_STREAMS)]
    assert ids == list(range(1, nc.MAX_STREAMS + 1))
    _, written = client.command("createStream", 9, None)
    assert statuses(written) == ["NetConnection.Call.Failed"]
    client.command("publish", 10, None, "live", "live", stream_id=1)
    client.decode(client.connection.publish_started(1, "live"))
    actions, written = client.command("FCUnpublish", 11, None, "live")
    assert actions == [nc.StopStream(1)]
    client.command("play", 12, None, "other", stream_id=2)
    client.decode(client.connection.play_started(2, "other", 0.0, True))
    assert client.command("closeStream", 0, None, stream_id=2)[0] == [nc.StopStream(2)]
    assert client.command("deleteStream", 0, None, 3.0)[0] == []
    assert 3 not in client.connection.streams and create_stream(client) == 3
    assert client.command("getStreamLength", 13, None, "live")[1][-1][1][3] == 0.0
    assert client.command("_checkbw", 14, None)[1][-1][1][:2] == ["_result", 14.0]
    _, written = client.command("frobnicate", 15, None)
    assert written[-1][1][3]["description"] == "Method not found (frobnicate)."


def test_amf3_commands_are_read_after_their_leading_zero():
    client = Client()
    command = b"\x00" + amf0.encode("connect", 1.0, {"app": "jam/demo",
                                                     "objectEncoding": 3.0}, PASSPHRASE)
    actions, _ = client.send(Message(COMMAND_AMF3, 0, 0, command))
    assert actions == [nc.Join("demo", nc.DEFAULT_PLAYER_NAME, PASSPHRASE)]


def test_pings_are_answered_and_silence_pings_then_closes():
    client = joined_client("jam/demo", PASSPHRASE, "alice")
    _, written = client.send(PingRequest(1234))
    assert written == [PingResponse(1234)]
    connection = client.connection
    connection.timer(0.0, 10.0, 60.0)                 # the first latency ping
    (ping,) = connection.timer(25.0, 10.0, 60.0)
    assert type(client.reader.receive(ping.data)[0]) is PingRequest
    assert connection.timer(61.0, 10.0, 60.0) == [nc.Close("idle")]


def test_a_joined_member_is_pinged_every_few_seconds_and_its_answer_is_its_round_trip():
    client = joined_client("jam/demo", PASSPHRASE, "alice")
    connection = client.connection
    (ping,) = connection.timer(2.0, 10.0, 60.0)
    [request] = client.reader.receive(ping.data)
    assert request == PingRequest(2000)
    assert connection.timer(3.0, 10.0, 60.0) == []    # one awaits its answer
    actions, _ = client.send(PingResponse(1999), now=2.01)        # not ours: nothing
    assert actions == []
    actions, _ = client.send(PingResponse(2000), now=2.04)
    assert actions == [RoundTrip(connection, pytest.approx(0.04))]
    assert len(connection.timer(2.0 + nc.LATENCY_PING_INTERVAL, 10.0, 60.0)) == 1


def test_an_undecodable_connect_closes_at_once():
    client = Client()
    actions, _ = client.send(Message(COMMAND_AMF0, 0, 0, b"\x02\x00\x07conn"))
    assert [(type(action), action.reason) for action in actions] == [
        (nc.Dropped, "bad_amf"), (nc.Close, "bad_amf")]


def test_a_silent_or_slow_handshake_times_out():
    client = Client()
    actions = client.connection.timer(11.0, 10.0, 60.0)
    assert [type(action) for action in actions] == [nc.Dropped, nc.Close]
    assert actions[1] == nc.Close("handshake_timeout")


@pytest.mark.parametrize("garbage, reason", [
    (b"\x06" + bytes(1536), "bad_handshake"),
    (b"GET / HTTP/1.1\r\n\r\n", "bad_handshake"),
])
def test_refused_handshakes_are_dropped_and_closed(garbage, reason):
    connection = nc.Connection("jam", 0.0)
    actions = connection.receive(garbage, 0.0)
    assert [type(action) for action in actions] == [nc.Alive, nc.Dropped, nc.Close]
    assert actions[1].reason == reason and connection.state == nc.CLOSED
    assert connection.receive(b"more", 0.0) == []


def test_a_broken_chunk_stream_closes_and_media_before_connect_is_dropped():
    client = Client()
    (dropped,), _ = client.send(Message(AUDIO, 1, 0, b"\xaf\x01"))
    assert dropped == nc.Dropped("before_connect", "message type 8 before connect")
    # A command message claiming 16 MiB, past the per-message bound.
    actions = client.connection.receive(b"\x03\x00\x00\x00\xff\xff\xff\x14\x00\x00\x00\x00",
                                        0.0)
    assert [type(action) for action in actions] == [nc.Alive, nc.Dropped, nc.Close]
    assert actions[1].reason == "bad_chunk_stream"


def test_aggregate_messages_are_split_into_their_frames():
    client = joined_client("jam/demo", PASSPHRASE, "alice")
    client.command("publish", 3, None, "live", "live", stream_id=create_stream(client))
    client.decode(client.connection.publish_started(1, "live"))
    tags = b"".join(bytes((AUDIO,)) + len(body).to_bytes(3, "big") + ts.to_bytes(3, "big")
                    + b"\x00\x00\x00\x00" + body + (11 + len(body)).to_bytes(4, "big")
                    for ts, body in ((100, b"\xaf\x01\x01"), (123, b"\xaf\x01\x02")))
    actions, _ = client.send(Message(22, 1, 100, tags))
    assert [(a.frame.timestamp, a.frame.payload) for a in actions] == [
        (100, b"\xaf\x01\x01"), (123, b"\xaf\x01\x02")]
    (dropped,), _ = client.send(Message(22, 1, 0, tags[:-6]))
    assert dropped.reason == "bad_aggregate"
