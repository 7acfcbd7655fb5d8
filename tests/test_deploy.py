"""deploy/: the fail2ban filter reads the bus's real lines; systemd accepts the unit."""

import os
import shutil
import subprocess

from twisted.internet import task
from twisted.logger import Logger, textFileLogObserver

from gateway.bus.local import DropCounters, LocalBus
from gateway.bus.values import JoinRequest, Passphrase
from gateway.config import parse
from tests.conftest import REPO, need_external, twistd_command
from tests.members import RecordingMember

DEPLOY = os.path.join(REPO, "deploy")
DEMO_PASS = "twenty characters or more"
WRONG_PASS = "a wrong guess that is long"


def test_fail2ban_filter_reads_ipv4_and_ipv6_peers_and_only_guesses(tmp_path):
    need_external(shutil.which("fail2ban-regex"), "fail2ban-regex is not installed (Debian"
                                                   " fail2ban)")
    config = parse({"sessions": [{"name": "demo", "passphrase": DEMO_PASS, "max_members": 1}],
                    "limits": {"allow_session_creation": False,
                               "join_failures_before_throttle": 1},
                    "logging": {"drop_log_interval": 0}})
    clock = task.Clock()
    log_path = tmp_path / "netgateway.log"
    with open(log_path, "w") as stream:
        bus = LocalBus(config, clock, DropCounters(),
                       log=Logger(namespace="netgateway", observer=textFileLogObserver(stream)))

        def join(source, passphrase=DEMO_PASS, session="demo"):
            bus.join(JoinRequest(session, "player", "websocket", Passphrase(passphrase),
                                 source), RecordingMember("player")).addErrback(lambda _: None)

        join("203.0.113.5", WRONG_PASS)       # a free guess
        join("203.0.113.5", WRONG_PASS)       # a guess that starts a back-off
        join("203.0.113.5")                   # throttled: still guessing
        join("2001:db8::5", session="nope")   # a guess at a session name
        join("2001:db8::6")                   # joins: no line to match
        join("198.51.100.7")                  # session full: a refusal, not a guess
    text = log_path.read_text()
    assert text.count("refused join from") == 5 and "throttled join from" in text
    result = subprocess.run(["fail2ban-regex", "-o", "ip", str(log_path),
                             os.path.join(DEPLOY, "fail2ban", "filter.d", "netgateway.conf")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["203.0.113.5"] * 3 + ["2001:db8::5"]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    need_external(shutil.which("systemd-analyze"), "systemd-analyze is not installed (systemd)")
    with open(os.path.join(DEPLOY, "netgateway.service")) as stream:
        unit = stream.read()
    # verify checks that ExecStart's binary exists: point it at this venv's twistd.
    assert "ExecStart=/opt/netgateway/.venv/bin/twistd " in unit
    tested = tmp_path / "netgateway.service"
    tested.write_text(unit.replace("/opt/netgateway/.venv/bin/twistd", twistd_command()[0]))
    result = subprocess.run(["systemd-analyze", "verify", str(tested)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "netgateway.service" not in result.stdout + result.stderr
