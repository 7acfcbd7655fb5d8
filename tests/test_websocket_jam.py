"""The WebSocket jam protocol core (sans-IO)."""

import json

from hypothesis import given, strategies as st

from gateway.bus.values import RosterEntry, RosterNotice, TempoState, Welcome
from gateway.midi import MidiEvent
from gateway.protocols.websocket import jam

BOB = RosterEntry(4, "bob", "rtpmidi")


def test_join_defaults():
    request = jam.parse_text('{"type":"join","session":"demo","passphrase":"p"}')
    assert isinstance(request, jam.Join)
    assert (request.session, request.name, request.midi_mode) == ("demo", "guest", "json")


def test_join_needs_session_and_passphrase():
    request = jam.parse_text('{"type":"join","session":"demo"}')
    assert isinstance(request, jam.BadRequest) and "passphrase" in request.message


def test_join_midi_mode_is_checked():
    request = jam.parse_text('{"type":"join","session":"d","passphrase":"p","midi":"xml"}')
    assert isinstance(request, jam.BadRequest)


def test_midi_json_with_running_status():
    request = jam.parse_text('{"type":"midi","data":[144,60,100,62,90]}')
    assert request.messages == [bytes([144, 60, 100]), bytes([144, 62, 90])]


def test_midi_json_rejects_non_bytes():
    for data in ("[300]", "[1.5]", "[]", '"x"', "[true]", "[60, 100]"):
        assert isinstance(jam.parse_text('{"type":"midi","data":%s}' % data), jam.BadRequest)


def test_binary_frames_are_midi():
    assert jam.parse_binary(b"\xc0\x05\xd0\x7f").messages == [b"\xc0\x05", b"\xd0\x7f"]
    assert isinstance(jam.parse_binary(b"\x05"), jam.BadRequest)


def test_ping_and_pong():
    ping = jam.parse_text('{"type":"ping","id":7,"client_time":12.5}')
    assert json.loads(jam.encode_pong(ping, 99.0)) == {
        "type": "pong", "id": 7, "client_time": 12.5, "server_time": 99.0}
    assert jam.parse_text('{"type":"pong","id":3}').id == 3


def test_unknown_and_malformed_messages():
    assert "unknown message type" in jam.parse_text('{"type":"dance"}').message
    assert isinstance(jam.parse_text("not json"), jam.BadRequest)
    assert isinstance(jam.parse_text("[1,2]"), jam.BadRequest)
    assert isinstance(jam.parse_text('{"type":5}'), jam.BadRequest)


def test_midi_encodings():
    events = [MidiEvent(b"\x90\x3c\x64", 1.5), MidiEvent(b"\x80\x3c\x40", 1.6)]
    frames = jam.encode_midi_json(events, BOB)
    assert [binary for _, binary in frames] == [False, False]
    assert json.loads(frames[0][0]) == {"type": "midi", "data": [144, 60, 100], "time": 1.5,
                                        "from": {"id": 4, "name": "bob", "door": "rtpmidi"}}
    assert jam.encode_midi_binary(events, BOB) == [(b"\x90\x3c\x64\x80\x3c\x40", True)]


def test_error_and_members_frames():
    assert json.loads(jam.encode_error("session_full", "full")) == {
        "type": "error", "code": "session_full", "message": "full"}
    bob = RosterEntry(1, "bob", "rtpmidi", 3.5)
    members = json.loads(jam.encode_members(RosterNotice("join", bob, (bob,))))
    entry = {"id": 1, "name": "bob", "door": "rtpmidi", "rtt_ms": 3.5}
    assert members == {"type": "members", "change": "join", "member": entry,
                       "members": [entry]}


def test_joined_frame_lists_the_roster_without_addresses():
    solo = RosterEntry(2, "solo", "websocket")
    joined = json.loads(jam.encode_joined(Welcome("mirror", solo, (RosterEntry(0, "mirror",
                                                                                 "mirror"), solo),
                                                  True), 10.0))
    assert joined["session"] == "mirror" and joined["mirror"] is True
    assert joined["tempo"] is None
    assert [member["door"] for member in joined["members"]] == ["mirror", "websocket"]


@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(text):
    jam.parse_text(text)


@given(st.binary(max_size=300))
def test_arbitrary_binary_never_raises(data):
    jam.parse_binary(data)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                    max_leaves=20))
def test_arbitrary_json_values_never_raise(value):
    for kind in ("join", "midi", "ping", "pong", "tempo"):
        message = {"type": kind, "session": value, "passphrase": value, "name": value,
                   "data": value, "id": value, "client_time": value, "midi": value,
                   "control_passphrase": value, "bpm": value, "transport": value,
                   "position": value}
        jam.parse_text(json.dumps(message))


def test_a_tempo_request_and_the_tempo_frame():
    request = jam.parse_text(json.dumps({"type": "tempo", "control_passphrase": "conduct",
                                         "bpm": 96.5, "transport": "stop", "position": 8}))
    assert (request.control_passphrase, request.bpm, request.transport, request.position) == (
        "conduct", 96.5, "stop", 8)
    state = TempoState(96.5, False, 3, 2, None, RosterEntry(4, "carol", "websocket", 2.5))
    assert json.loads(jam.encode_tempo(state, 12.5)) == {
        "type": "tempo", "bpm": 96.5, "running": False, "beats_per_bar": 3, "beat": 2,
        "beat_time": None, "server_time": 12.5,
        "changed_by": {"id": 4, "name": "carol", "door": "websocket", "rtt_ms": 2.5}}
