"""The jam protocol spoken over WebSocket frames (sans-IO).

# implements netgateway's WebSocket jam protocol (README.rst, "WebSocket protocol")

Text frames carry JSON control messages; MIDI travels either as JSON
(``{"type": "midi", "data": [144, 60, 100]}``) or as binary frames of raw
MIDI bytes. :func:`parse_text` and :func:`parse_binary` turn a received frame
into a request object (or :class:`BadRequest`); the ``encode_*`` functions
build the server's frames. No I/O, no clock: times are parameters.
"""

import json

from gateway import midi
from gateway.bus.values import TRANSPORTS

MIDI_JSON = "json"
MIDI_BINARY = "binary"
DEFAULT_NAME = "guest"
MAX_SESSION_LENGTH = 128


class Join:
    __slots__ = ("session", "passphrase", "name", "midi_mode")

    def __init__(self, session, passphrase, name, midi_mode):
        self.session = session
        self.passphrase = passphrase
        self.name = name
        self.midi_mode = midi_mode


class Midi:
    __slots__ = ("messages",)

    def __init__(self, messages):
        self.messages = messages


class Ping:
    __slots__ = ("id", "client_time")

    def __init__(self, ping_id, client_time):
        self.id = ping_id
        self.client_time = client_time


class Pong:
    __slots__ = ("id",)

    def __init__(self, ping_id):
        self.id = ping_id


class Leave:
    __slots__ = ()


class Tempo:
    """A member asks to change the session's tempo, with the control passphrase."""

    __slots__ = ("control_passphrase", "bpm", "transport", "position")

    def __init__(self, control_passphrase, bpm, transport, position=None):
        self.control_passphrase = control_passphrase
        self.bpm = bpm
        self.transport = transport
        self.position = position


class Record:
    """Start or stop this member's recording of the session."""

    __slots__ = ("start",)

    def __init__(self, start):
        self.start = start


class BadRequest:
    __slots__ = ("message",)

    def __init__(self, message):
        self.message = message


def _midi_messages(values):
    """Complete MIDI messages from JSON numbers; BadRequest if they are not bytes."""
    if not isinstance(values, list) or not values:
        return BadRequest("midi.data must be a non-empty list of byte values")
    if not all(type(value) is int and 0 <= value <= 255 for value in values):
        return BadRequest("midi.data values must be integers from 0 to 255")
    messages = midi.split_messages(bytes(values))
    if not messages:
        return BadRequest("midi.data holds no complete MIDI message")
    return Midi(messages)


def _text_field(message, key, limit):
    value = message.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValueError(f"{key} must be a string of 1 to {limit} characters")
    return value


def _parse_join(message):
    try:
        session = _text_field(message, "session", MAX_SESSION_LENGTH)
        passphrase = _text_field(message, "passphrase", 1024)
    except ValueError as error:
        return BadRequest(f"join: {error}")
    # The name goes to the bus as sent: its one name rule refuses empty,
    # blank and control-character names (bad_name) for every door alike.
    name = message.get("name")
    if name is None:
        name = DEFAULT_NAME
    elif not isinstance(name, str):
        return BadRequest("join: name must be a string")
    midi_mode = message.get("midi", MIDI_JSON)
    if midi_mode not in (MIDI_JSON, MIDI_BINARY):
        return BadRequest("join: midi must be 'json' or 'binary'")
    return Join(session, passphrase, name, midi_mode)


def _number(value):
    return type(value) in (int, float)


def _parse_tempo(message):
    try:
        secret = _text_field(message, "control_passphrase", 1024)
    except ValueError as error:
        return BadRequest(f"tempo: {error}")
    bpm = message.get("bpm")
    if bpm is not None and not _number(bpm):
        return BadRequest("tempo: bpm must be a number")
    transport = message.get("transport")
    if transport is not None and transport not in TRANSPORTS:
        return BadRequest(f"tempo: transport must be one of {', '.join(TRANSPORTS)}")
    position = message.get("position")
    if position is not None and type(position) is not int:
        return BadRequest("tempo: position must be a whole number of sixteenths")
    if bpm is None and transport is None and position is None:
        return BadRequest("tempo: give a bpm, a transport or a position")
    return Tempo(secret, bpm, transport, position)


def parse_text(text):
    """Turn one text frame into a request object."""
    try:
        message = json.loads(text)
    except ValueError:
        return BadRequest("text frames must hold JSON")
    if not isinstance(message, dict):
        return BadRequest("a message must be a JSON object")
    kind = message.get("type")
    if kind == "midi":
        return _midi_messages(message.get("data"))
    if kind == "ping":
        client_time = message.get("client_time")
        return Ping(message.get("id"), client_time if _number(client_time) else None)
    if kind == "pong":
        return Pong(message.get("id"))
    if kind == "join":
        return _parse_join(message)
    if kind == "leave":
        return Leave()
    if kind == "tempo":
        return _parse_tempo(message)
    if kind == "record":
        action = message.get("action")
        if action not in ("start", "stop"):
            return BadRequest("record: action must be 'start' or 'stop'")
        return Record(action == "start")
    return BadRequest(f"unknown message type {kind!r}" if isinstance(kind, str)
                      else "a message needs a string 'type'")


def parse_binary(payload):
    """A binary frame is raw MIDI bytes, possibly several messages."""
    messages = midi.split_messages(payload)
    if not messages:
        return BadRequest("binary frame holds no complete MIDI message")
    return Midi(messages)


def _dumps(message):
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def _entry(entry):
    """A roster entry (gateway.bus.values.RosterEntry) as the page knows members."""
    return {"id": entry.member_id, "name": entry.name, "door": entry.door,
            "rtt_ms": entry.latency_ms}


def _tempo(state):
    if state is None:
        return None
    return {"bpm": state.bpm, "running": state.running, "beats_per_bar": state.beats_per_bar,
            "beat": state.beat, "beat_time": state.beat_time,
            "changed_by": None if state.changed_by is None else _entry(state.changed_by)}


def encode_joined(welcome, server_time):
    tempo = _tempo(welcome.tempo)
    if tempo is not None:
        tempo["server_time"] = server_time
    return _dumps({"type": "joined", "session": welcome.session, "member": _entry(welcome.entry),
                   "members": [_entry(entry) for entry in welcome.roster],
                   "mirror": welcome.mirror, "tempo": tempo})


def encode_tempo(state, server_time):
    """The session's tempo (a TempoState) as it started, stopped or changed, sent at
    ``server_time``: beat number ``beat`` is due at ``beat_time`` and every
    ``60 / bpm`` seconds after, on the server's clock (the pings' ``server_time``)."""
    return _dumps({"type": "tempo", **_tempo(state), "server_time": server_time})


def encode_error(code, message):
    return _dumps({"type": "error", "code": code, "message": message})


def encode_members(notice):
    return _dumps({"type": "members", "change": notice.change, "member": _entry(notice.entry),
                   "members": [_entry(entry) for entry in notice.roster]})


def encode_recording(recording, url=None):
    """Where this member's recording stands: on since ``started_at`` (server time), or
    stopped, with its events and the ``url`` that downloads it (once per stop)."""
    message = {"type": "recording", "state": "off" if url else "on",
               "started_at": recording.started_at, "events": len(recording.events),
               "players": recording.players()}
    if url:
        message["url"] = url
    return _dumps(message)


def encode_ping(ping_id, server_time):
    return _dumps({"type": "ping", "id": ping_id, "server_time": server_time})


def encode_pong(ping, server_time):
    return _dumps({"type": "pong", "id": ping.id, "client_time": ping.client_time,
                   "server_time": server_time})


def encode_midi_json(events, source):
    """One text frame per event: [(payload, is_binary), ...]."""
    origin = {"id": source.member_id, "name": source.name, "door": source.door}
    return [(_dumps({"type": "midi", "from": origin, "data": list(event.data),
                     "time": event.time}), False)
            for event in events]


def encode_midi_binary(events, source):
    """All events in one binary frame of raw MIDI bytes."""
    return [(b"".join(event.data for event in events), True)]
