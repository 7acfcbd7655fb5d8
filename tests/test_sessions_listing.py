"""``GET /sessions``: the public sessions the jam page offers, and nothing secret about them."""

import json
import os
import types

import pytest

from twisted.internet import task
from twisted.web.test.requesthelper import DummyRequest

from gateway.bus.local import DropCounters, LocalBus
from gateway.bus.values import JoinRequest, Passphrase
from gateway.config import ConfigError, load, parse
from tests.conftest import REPO
from gateway.web.site import SessionsResource
from tests.members import RecordingMember, result_of

OPEN = "the open jam of this gateway"
HIDDEN = "a session nobody should list"
MIRRORED = "mirror mirror on the wall"


def listing(config):
    bus = LocalBus(config, task.Clock(), DropCounters())
    sessions = SessionsResource(types.SimpleNamespace(config=config, bus=bus))
    request = DummyRequest([b""])

    def get():
        body = sessions.render_GET(request)
        return request, json.loads(body)
    return bus, get


def test_only_public_sessions_are_listed_with_players_and_never_a_passphrase():
    config = parse({"sessions": [
        {"name": "open", "passphrase": OPEN, "public": True, "max_members": 4},
        {"name": "hidden", "passphrase": HIDDEN},
        {"name": "mirror", "passphrase": MIRRORED, "public": True, "mirror": {}}]})
    bus, get = listing(config)
    for name in ("ann", "ben"):
        result_of(bus.join(JoinRequest("open", name, "test", Passphrase(OPEN)),
                           RecordingMember(name)))
    result_of(bus.join(JoinRequest("hidden", "cy", "test", Passphrase(HIDDEN)),
                       RecordingMember("cy")))
    request, body = get()
    assert body == {"sessions": [
        {"name": "open", "players": 2, "max_players": 4, "mirror": False, "tempo": None},
        # The mirror's echo is no player.
        {"name": "mirror", "players": 0, "max_players": 8, "mirror": True, "tempo": None}]}
    text = json.dumps(body)
    for secret in (OPEN, HIDDEN, MIRRORED, "hidden", "ann", "ben"):
        assert secret not in text
    assert request.responseHeaders.getRawHeaders(b"cache-control") == [b"no-store"]
    assert request.responseHeaders.getRawHeaders(b"access-control-allow-origin") == [b"*"]


def test_a_public_session_with_a_tempo_lists_it_and_never_its_control_passphrase():
    control = "the conductor's own secret"
    config = parse({"sessions": [
        {"name": "band", "passphrase": OPEN, "public": True,
         "tempo": {"bpm": 96, "running": False, "beats_per_bar": 3,
                   "control_passphrase": control}}]})
    _, get = listing(config)
    _, body = get()
    assert body["sessions"][0]["tempo"] == {"bpm": 96.0, "running": False, "beats_per_bar": 3}
    assert control not in json.dumps(body)


def test_sessions_are_unlisted_unless_public_and_public_must_be_true_or_false():
    assert parse({"sessions": [{"name": "x", "passphrase": OPEN}]}).sessions[0].public is False
    with pytest.raises(ConfigError) as refused:
        parse({"sessions": [{"name": "x", "passphrase": OPEN, "public": "yes"}]})
    assert refused.value.problems == ["sessions[0].public: expected true or false, got the string 'yes'"]


def test_the_default_config_lists_demo_and_mirror_for_the_page():
    _, get = listing(load(os.path.join(REPO, "config", "config.yaml")))
    _, body = get()
    assert [session["name"] for session in body["sessions"]] == ["demo", "mirror", "metronome"]
    assert [session["tempo"] is not None for session in body["sessions"]] == [False, False, True]
