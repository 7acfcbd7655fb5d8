"""Start-up through the real twistd: bad config, --help, the default config."""

import os
import socket
import subprocess

import yaml

from gateway.config import ConfigError, parse
from tests.conftest import REPO, free_port, twistd_command


def run_twistd(args, cwd, timeout=30):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(twistd_command()[:-1] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_bad_config_stops_startup_with_one_line_per_problem(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({
        "web": {"port": 99999, "hots": "127.0.0.1"},
        "sessions": [{"name": "demo", "passphrase": "too short"}],
    }))
    result = run_twistd(["netgateway", "-c", str(config)], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "netgateway: config error: web.hots: unknown key (did you mean 'host'?)",
        "netgateway: config error: web.port: expected a value from 1 to 65535, got 99999",
        "netgateway: config error: sessions[0].passphrase: expected at least 20 characters"
        " (limits.min_passphrase_length), got 9",
        f"netgateway: 3 problem(s) in {config}; not starting",
    ]
    assert "Traceback" not in result.stderr + result.stdout
    assert "too short" not in result.stderr + result.stdout


def test_an_unwritable_log_file_stops_startup_with_one_line(tmp_path):
    log_file = tmp_path / "no such directory" / "netgateway.log"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"logging": {"file": str(log_file)}}))
    result = run_twistd(["netgateway", "-c", str(config)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"netgateway: logging.file: cannot write {log_file} (No such file or directory);"
        " not starting"]
    assert "Traceback" not in result.stderr + result.stdout


def test_help_documents_the_options(tmp_path):
    result = run_twistd(["netgateway", "--help"], cwd=tmp_path)
    assert result.returncode == 0
    assert "--config=" in result.stdout and "YAML configuration file" in result.stdout


def test_development_checkout_lists_the_plugin(tmp_path):
    result = run_twistd(["--help"], cwd=tmp_path)
    assert "netgateway" in result.stdout


def move_to_free_ports(config):
    """The default config's ports, moved to ones free now (keeps tests off 5004, 22242...).

    Picked one by one, a port can land inside a range picked before it (the
    relay's 64 ports): the config would then refuse the duplicate, so pick again.
    """
    for _ in range(20):
        _pick_free_ports(config)
        try:
            parse(config)
            return
        except ConfigError:
            continue
    raise RuntimeError("no set of free ports found for the default config")


def _pick_free_ports(config):
    config["web"]["port"] = free_port()
    for session in config["rtpmidi"]["sessions"]:
        session["port"] = free_port(socket.SOCK_DGRAM, even=True)
    oscgroups = config["oscgroups"]
    oscgroups["port"] = free_port(socket.SOCK_DGRAM)
    oscgroups["bridge"]["port"] = free_port(socket.SOCK_DGRAM)
    relay_base = free_port(socket.SOCK_DGRAM)
    span = oscgroups["relay"]["port_max"] - oscgroups["relay"]["port_min"]
    oscgroups["relay"]["port_min"], oscgroups["relay"]["port_max"] = relay_base, min(
        65535, relay_base + span)
    sip = config["sip"]
    sip["port"] = free_port(socket.SOCK_DGRAM, even=True)
    sip["uas"]["tcp_port"] = free_port()
    uas_media = free_port(socket.SOCK_DGRAM, even=True)
    sip["uas"]["media"]["port_min"], sip["uas"]["media"]["port_max"] = uas_media, uas_media + 1
    config["rtmp"]["port"] = free_port()
    media = free_port(socket.SOCK_DGRAM, even=True)
    sip["media"]["port_min"], sip["media"]["port_max"] = media, media + 2 * len(
        config["sessions"]) - 1


def test_a_busy_port_stops_startup_with_one_line_naming_its_key(tmp_path):
    with open(os.path.join(REPO, "config", "config.yaml")) as stream:
        config = yaml.safe_load(stream)
    move_to_free_ports(config)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", config["sip"]["port"]))
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        result = run_twistd(["netgateway", "-c", str(path)], cwd=tmp_path)
    port = config["sip"]["port"]
    output = result.stderr + result.stdout      # twistd -n logs stderr to stdout by now
    assert result.returncode == 2
    [line] = [line for line in output.splitlines() if "cannot listen" in line]
    assert line.endswith(f"netgateway: sip.port: cannot listen on 127.0.0.1:{port} (Address"
                         f" already in use); not starting")
    assert "Traceback" not in output


def test_default_config_starts_every_door(tmp_path):
    """The shipped config/config.yaml, with only its ports moved to free ones."""
    with open(os.path.join(REPO, "config", "config.yaml")) as stream:
        config = yaml.safe_load(stream)
    move_to_free_ports(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    from tests.conftest import GatewayProcess
    process = GatewayProcess(config, str(tmp_path))
    process.config_path = str(path)
    process.start()
    try:
        status = process.status()
        assert {session["name"] for session in status["sessions"]} >= {"demo", "mirror"}
        # The public summary names a session's tempo, if it has one.
        tempos = {session["name"]: session.get("tempo") for session in status["sessions"]}
        assert tempos["demo"] is None
        assert tempos["metronome"] == {"bpm": 120.0, "running": True, "beats_per_bar": 4}
        assert set(status["doors"]) == {name for name, section in config.items()
                                        if isinstance(section, dict)
                                        and "enabled" in section and name != "web"}
    finally:
        process.stop()
    # Where to go, in one block: the page and the sessions (never a passphrase), the
    # WebSocket, then each door's ports with their keys.
    port = config["web"]["port"]
    lines = process.log.splitlines()
    (first,) = [index for index, line in enumerate(lines) if "jam page at" in line]
    assert lines[first].endswith(f"netgateway: jam page at http://127.0.0.1:{port}/"
                                 " (sessions: demo, mirror, echo, metronome)")
    block = [line.lstrip("\t") for line in lines[first + 1:first + 7]]   # twistd indents
    assert block[0] == f"  websocket  ws://127.0.0.1:{port}/ws", block
    assert block[1] == f"  web        tcp {port} (web.port) on 127.0.0.1, TLS off", block
    doors = {line.split()[0]: line for line in block[2:]}
    assert set(doors) == {"oscgroups", "rtpmidi", "sip", "rtmp"}, block
    assert doors["rtmp"] == (f"  rtmp       tcp {config['rtmp']['port']} (rtmp.port)"
                             " on 127.0.0.1"), block
    assert f"udp {config['oscgroups']['port']} (oscgroups.port)" in doors["oscgroups"], block
    assert not any(session["passphrase"] in "\n".join(lines) for session in config["sessions"])


def test_a_busy_metrics_port_stops_startup_with_one_line_naming_its_key(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({"web": {"port": free_port()},
                                        "metrics": {"port": port}}))
        result = run_twistd(["netgateway", "-c", str(path)], cwd=tmp_path)
    output = result.stderr + result.stdout
    assert result.returncode == 2
    [line] = [line for line in output.splitlines() if "cannot listen" in line]
    assert line.endswith(f"netgateway: metrics.port: cannot listen on 127.0.0.1:{port}"
                         " (Address already in use); not starting")
    assert "Traceback" not in output


def test_check_says_a_good_config_is_valid_and_opens_no_port(tmp_path):
    with open(os.path.join(REPO, "config", "config.yaml")) as stream:
        config = yaml.safe_load(stream)
    path = tmp_path / "config.yaml"
    with socket.socket() as squatter:
        # --check listens on nothing: a taken web port does not matter to it.
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        config["web"]["port"] = squatter.getsockname()[1]
        path.write_text(yaml.safe_dump(config))
        result = run_twistd(["netgateway", "--check", "-c", str(path)], cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (f"netgateway: {path} is valid (4 sessions, doors: websocket,"
                             " oscgroups, rtpmidi, sip, rtmp)\n")
    assert os.listdir(tmp_path) == ["config.yaml"]      # no twistd.log, no twistd.pid


def test_check_reports_a_bad_config_as_start_up_does(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "web": {"port": 99999},
        "status": {"admin_token_file": str(tmp_path / "no-such-token")},
    }))
    checked = run_twistd(["netgateway", "--check", "-c", str(path)], cwd=tmp_path)
    started = run_twistd(["netgateway", "-c", str(path)], cwd=tmp_path)
    problems = [
        "netgateway: config error: web.port: expected a value from 1 to 65535, got 99999",
        "netgateway: config error: status.admin_token_file: cannot read"
        f" {str(tmp_path / 'no-such-token')!r} (No such file or directory)",
    ]
    assert checked.returncode == started.returncode == 2
    assert checked.stderr.splitlines() == problems + [
        f"netgateway: 2 problem(s) in {path}; not valid"]
    assert started.stderr.splitlines()[:-1] == problems
    assert checked.stdout == ""


def test_check_finds_a_key_openssl_refuses_as_start_up_does(tmp_path):
    from tests.integration.test_tls_reload import Files, weak_key_openssl_refuses
    files = Files(tmp_path / "tls")
    files.renew(key=weak_key_openssl_refuses(files))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"web": {"port": free_port(), "tls": files.section()}}))
    result = run_twistd(["netgateway", "--check", "-c", str(path)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("netgateway: config error: web.tls.certificate: expected"
                                    " a certificate and key OpenSSL accepts")
    assert result.stdout == "" and "Traceback" not in result.stderr
