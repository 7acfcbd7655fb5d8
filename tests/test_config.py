"""Config validation: every problem is one line naming the key path."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from gateway.config import ConfigError, load, parse
from tests.certificates import self_signed
from tests.conftest import REPO

DEMO = {"name": "demo", "passphrase": "twenty characters or more"}


def problems(data):
    with pytest.raises(ConfigError) as raised:
        parse(data)
    return raised.value.problems


def test_default_config_is_valid_and_everything_is_on():
    config = load(os.path.join(os.path.dirname(__file__), "..", "config", "config.yaml"))
    assert config.web.host == "127.0.0.1"
    assert set(config.enabled_doors()) >= {"websocket"}
    names = [session.name for session in config.sessions]
    assert "demo" in names and "mirror" in names
    assert next(s for s in config.sessions if s.name == "mirror").mirror.interval == 7
    # Only the metronome session has a clock: the demo session stays quiet.
    assert [s.name for s in config.sessions if s.tempo is not None] == ["metronome"]


def test_empty_config_gets_defaults_with_no_doors():
    config = parse({})
    assert config.limits.max_members_per_session == 8
    assert config.enabled_doors() == {}


def test_unknown_key_names_the_path_and_suggests():
    assert problems({"web": {"prot": 80}}) == ["web.prot: unknown key (did you mean 'port'?)"]


def test_unknown_section():
    (line,) = problems({"websockets": {}})
    assert line.startswith("websockets: unknown section (did you mean 'websocket'?)")


def test_wrong_type():
    assert problems({"web": {"port": "eighty"}}) == [
        "web.port: expected an integer, got the string 'eighty'"]


def test_boolean_is_not_an_integer():
    assert problems({"limits": {"max_sessions": True}}) == [
        "limits.max_sessions: expected an integer, got true"]


def test_port_out_of_range():
    assert problems({"web": {"port": 70000}}) == [
        "web.port: expected a value from 1 to 65535, got 70000"]


def test_choices():
    assert problems({"logging": {"level": "loud"}}) == [
        "logging.level: expected one of debug, info, warn, error, critical, got 'loud'"]


def test_log_rotation_is_bounded_and_off_by_default():
    logging = parse({}).logging
    assert (logging.file, logging.rotate_bytes, logging.max_files) == (None, 10_000_000, 5)
    assert problems({"logging": {"rotate_bytes": 10, "max_files": 0}}) == [
        "logging.rotate_bytes: expected a value from 1000 to 1000000000000, got 10",
        "logging.max_files: expected a value from 1 to 1000, got 0"]


def test_short_passphrase_is_refused_without_echoing_it():
    (line,) = problems({"sessions": [{"name": "demo", "passphrase": "secret"}]})
    assert line == ("sessions[0].passphrase: expected at least 20 characters"
                    " (limits.min_passphrase_length), got 6")
    assert "secret" not in line


def test_minimum_passphrase_length_is_configurable():
    config = parse({"limits": {"min_passphrase_length": 6},
                    "sessions": [{"name": "demo", "passphrase": "secret"}]})
    assert config.sessions[0].passphrase == "secret"


def test_missing_required_key():
    assert problems({"sessions": [{"name": "demo"}]}) == [
        "sessions[0].passphrase: missing; expected a string"]


def test_duplicate_session():
    assert problems({"sessions": [DEMO, DEMO]}) == [
        "sessions[1].name: session 'demo' is declared twice"]


def test_bad_cidr():
    (line,) = problems({"sessions": [dict(DEMO, allow_addresses=["10.0.0.0/33"])]})
    assert line.startswith("sessions[0].allow_addresses[0]: expected an address or CIDR")


def test_a_session_tempo_is_bounded_and_named_by_its_key():
    config = parse({"sessions": [dict(DEMO, tempo={"bpm": 96})]})
    tempo = config.sessions[0].tempo
    assert (tempo.bpm, tempo.running, tempo.beats_per_bar, tempo.control_passphrase) == (
        96.0, True, 4, None)
    assert parse({"sessions": [dict(DEMO, tempo=None)]}).sessions[0].tempo is None
    assert problems({"sessions": [dict(DEMO, tempo={"bpm": 400})]}) == [
        "sessions[0].tempo.bpm: expected a value from 20.0 to 300.0, got 400.0"]
    assert problems({"sessions": [dict(DEMO, tempo={"bmp": 100})]}) == [
        "sessions[0].tempo.bmp: unknown key (did you mean 'bpm'?)"]
    assert problems({"sessions": [dict(DEMO, tempo={"running": "yes"})]}) == [
        "sessions[0].tempo.running: expected true or false, got the string 'yes'"]


def test_the_tempo_right_is_a_second_secret_never_echoed():
    (line,) = problems({"sessions": [dict(DEMO, tempo={"control_passphrase": "conduct"})]})
    assert line == ("sessions[0].tempo.control_passphrase: expected at least 20 characters"
                    " (limits.min_passphrase_length), got 7")
    (line,) = problems({"sessions": [dict(DEMO, tempo={"control_passphrase":
                                                       DEMO["passphrase"]})]})
    assert line.startswith("sessions[0].tempo.control_passphrase: expected a secret other than")
    assert DEMO["passphrase"] not in line


def test_all_problems_are_reported_at_once():
    lines = problems({"web": {"port": 0, "hots": "x"}, "limits": {"idle_timeout": "soon"}})
    assert len(lines) == 3


def test_websocket_needs_the_web_site():
    (line,) = problems({"web": {"enabled": False}, "websocket": {}})
    assert line.startswith("websocket.enabled: the WebSocket door is served by the web site")


def test_disabled_door_is_kept_but_not_enabled():
    config = parse({"websocket": {"enabled": False}})
    assert "websocket" in config.doors and config.enabled_doors() == {}


def test_rtpmidi_invites_an_ip_address_v4_or_v6():
    def invite(host):
        return {"sessions": [DEMO],
                "rtpmidi": {"sessions": [{"session": "demo", "port": 5004}],
                            "invite": [{"session": "demo", "host": host, "port": 5004}]}}
    for host in ("192.168.1.20", "::1", "fe80::1%eth0"):
        assert parse(invite(host)).doors["rtpmidi"].invite[0].host == host
    for host in ("mac.local", "192.168.1", "01.2.3.4", "[::1]"):
        assert problems(invite(host)) == [
            f"rtpmidi.invite[0].host: expected an IP address, got {host!r}"]


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("web:\n  port: [8080\n")
    with pytest.raises(ConfigError) as raised:
        load(str(path))
    (line,) = raised.value.problems
    assert line.startswith(f"{path}: not valid YAML at line")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load(str(tmp_path / "nope.yaml"))
    assert "cannot read the configuration file" in raised.value.problems[0]


def test_top_level_must_be_a_mapping():
    assert problems(yaml.safe_load("- a\n- b\n")) == [
        "(top level): expected a mapping of sections, got a list"]


def test_tls_files_must_be_readable(tmp_path):
    (line, other) = problems({"web": {"tls": {"certificate": str(tmp_path / "c.pem"),
                                              "key": str(tmp_path / "k.pem")}}})
    assert line.startswith("web.tls.certificate: expected a readable PEM file")
    assert other.startswith("web.tls.key:")


def test_the_http_redirect_needs_tls():
    assert problems({"web": {"redirect_http_port": 8081}}) == [
        "web.redirect_http_port: the redirect leads to https; expected web.tls to be set"
        " (or redirect_http_port: null)"]


def test_the_http_redirect_port_is_named_when_it_collides(tmp_path):
    certificate, key = self_signed(tmp_path)
    assert problems({"web": {"port": 8443, "redirect_http_port": 8443,
                             "tls": {"certificate": certificate, "key": key}}}) == [
        "web.redirect_http_port: tcp port 8443 is already used by web.port; expected a free"
        " port"]


def test_the_oscgroups_bridge_user_follows_the_name_rule():
    assert problems({"sessions": [DEMO], "oscgroups": {"bridge": {"groups": ["demo"],
                                                                  "user": "gate\tway"}}}) == [
        "oscgroups.bridge.user: a name may not hold the character U+0009, got 'gate\\tway'"]


def test_duplicate_ports_across_doors_name_both_keys():
    lines = problems({"sessions": [DEMO],
                      "rtpmidi": {"sessions": [{"session": "demo", "port": 22242}]},
                      "oscgroups": {"port": 22243, "bridge": {"enabled": False}}})
    # 22243 is the RTP-MIDI data port (control port + 1).
    assert lines == ["rtpmidi.sessions[0].port: udp port 22243 is already used by"
                     " oscgroups.port; expected a free port"]



def test_full_status_is_off_without_an_admin_token():
    assert parse({}).status.admin_token is None


def test_admin_token_is_at_least_16_characters_and_never_echoed():
    assert problems({"status": {"admin_token": "fifteen-chars!!"}}) == [
        "status.admin_token: expected at least 16 characters, got 15"]


@pytest.mark.parametrize("token", ["sixteen and more characters", "tab\tinside-a-long-token",
                                   "sechzehn-zeichen-über"])
def test_admin_token_must_fit_an_http_header(token):
    assert problems({"status": {"admin_token": token}}) == [
        "status.admin_token: expected printable ASCII without spaces"]


def test_admin_token_file_is_read_without_its_line_end(tmp_path):
    path = tmp_path / "admin-token"
    path.write_text("a-token-from-a-file-0123\n")
    config = parse({"status": {"admin_token_file": str(path)}})
    assert config.status.admin_token == "a-token-from-a-file-0123"


def test_admin_token_file_that_cannot_be_read_names_the_key(tmp_path):
    missing = str(tmp_path / "missing")
    assert problems({"status": {"admin_token_file": missing}}) == [
        f"status.admin_token_file: cannot read {missing!r} (No such file or directory)"]


def test_empty_admin_token_file_names_the_key(tmp_path):
    path = tmp_path / "admin-token"
    path.write_text("\n")
    assert problems({"status": {"admin_token_file": str(path)}}) == [
        f"status.admin_token_file: {str(path)!r} is empty; expected the token"]


def test_a_short_token_in_the_file_names_the_file_key(tmp_path):
    path = tmp_path / "admin-token"
    path.write_text("short")
    assert problems({"status": {"admin_token_file": str(path)}}) == [
        "status.admin_token_file: expected at least 16 characters, got 5"]


def test_admin_token_and_admin_token_file_exclude_each_other(tmp_path):
    path = tmp_path / "admin-token"
    path.write_text("a-token-from-a-file-0123")
    assert problems({"status": {"admin_token": "a-token-in-the-config",
                                "admin_token_file": str(path)}}) == [
        "status.admin_token_file: expected admin_token or admin_token_file, not both"]


def test_metrics_stay_on_the_web_site_unless_given_a_port():
    config = parse({"metrics": {"port": 9464}})
    assert ("metrics.port", "tcp", 9464) in config.listening_ports()
    assert all(key != "metrics.port" for key, _, _ in parse({}).listening_ports())


def test_metrics_port_clashing_with_the_web_port_names_both_keys():
    assert problems({"web": {"port": 9464}, "metrics": {"port": 9464}}) == [
        "metrics.port: tcp port 9464 is already used by web.port; expected a free port"]

# Runs in a fresh interpreter (-I: no PYTHONPATH, no user site, no cwd on the path).
CLEAN_VALIDATION = """
import json, sys
repo, path = sys.argv[1:]
sys.path.insert(0, repo)
import yaml
from gateway import config, doors

config.load(path)
with open(path, encoding="utf-8") as stream:
    data = yaml.safe_load(stream)
for name in doors.config_classes():
    data[name] = dict(data.get(name) or {}, enabled=True)
data["rtpmidi"]["invite"] = [{"session": "demo", "host": "192.0.2.1", "port": 5004},
                             {"session": "demo", "host": "::1", "port": 5006}]
every = config.parse(data)
assert set(every.enabled_doors()) == set(doors.config_classes()), every.enabled_doors()
print(json.dumps(sorted(sys.modules)))
"""

NOT_FOR_VALIDATION = ("twisted.internet.reactor", "twisted.internet", "zeroconf",
                      "prometheus_client", "autobahn")


def test_validating_a_config_imports_no_reactor_zeroconf_prometheus_or_autobahn():
    """Checking a YAML file (every door on) must not pull in the service side."""
    path = os.path.join(REPO, "config", "config.yaml")
    result = subprocess.run([sys.executable, "-I", "-c", CLEAN_VALIDATION, REPO, path],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout)
    assert "gateway.config" in modules
    imported = sorted({banned for banned in NOT_FOR_VALIDATION for name in modules
                       if name == banned or name.startswith(banned + ".")})
    assert imported == []


SIP_SESSIONS = [{"name": "demo", "passphrase": "twenty characters or more"},
                {"name": "jam", "passphrase": "twenty characters or more"}]


@pytest.mark.parametrize("sip, expected", [
    ({"host": "0.0.0.0"}, "sip.host: expected the one IPv4 address clients were built with"),
    ({"media": {"host": "127.0.0.1"}}, "sip.media.host: expected an IPv4 address other than"
                                       " 127.0.0.1, 0.0.0.0, 255.255.255.255"),
    ({"media": {"port_min": 6001, "port_max": 6100}}, "sip.media.port_min: expected an even"),
    ({"media": {"port_min": 6000, "port_max": 6002}}, "sip.media.port_max: expected at least"
                                                      " 6003 (two ports for each of the 2"),
    ({"port": 6000}, "sip.media.port_min-port_max: udp port 6000 is already used by sip.port"),
    ({"channels": "mixed"}, "sip.channels: expected one of"),
])
def test_sip_section_problems_name_the_key(sip, expected):
    found = problems({"sessions": SIP_SESSIONS, "web": {"enabled": False}, "sip": sip})
    assert any(problem.startswith(expected) for problem in found), found


def test_sip_media_ports_follow_the_declared_sessions():
    config = parse({"sessions": SIP_SESSIONS, "web": {"enabled": False},
                    "sip": {"media": {"port_min": 7000, "port_max": 7003}}})
    section = config.doors["sip"]
    assert section.media_ports(config.sessions) == {"demo": 7000, "jam": 7002}
    assert config.port_key(5061) == "sip.port" and config.port_key(7003) == (
        "sip.media.port_min-port_max")
