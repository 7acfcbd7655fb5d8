"""Operating a real gateway: fail2ban reads its refusals, its own log file stays bounded."""

import asyncio
import glob
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request

from tests.conftest import REPO, free_port, need_external
from tests.wsclient import JamClient

DEMO = ("demo", "play along with netgateway demo")
WRONG = "a wrong guess that is long enough"
FILTER = os.path.join(REPO, "deploy", "fail2ban", "filter.d", "netgateway.conf")


def fail2ban_hosts(log_path):
    """The address of every line Debian's fail2ban-regex matches with the filter, in order."""
    need_external(shutil.which("fail2ban-regex"), "fail2ban-regex is not installed (Debian"
                                                   " fail2ban)")
    result = subprocess.run(["fail2ban-regex", "-o", "ip", log_path, FILTER],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def listen_to_rtmp_stream(gateway, passphrase):
    """GET the demo session's HTTP-FLV stream (rtmp door): the HTTP status."""
    query = urllib.parse.urlencode({"passphrase": passphrase})
    try:
        with urllib.request.urlopen(f"{gateway.web_url}/live/demo/x.flv?{query}", timeout=5):
            pass
    except urllib.error.HTTPError as error:
        return error.code
    return 200


def test_fail2ban_matches_wrong_passphrases_of_every_door_and_no_correct_join(gateway_factory,
                                                                              tmp_path):
    gateway = gateway_factory({"rtmp": {"port": free_port()},
                               "logging": {"drop_log_interval": 0}})

    async def websocket_joins():
        client = await JamClient.connect(gateway.ws_url)
        codes = [(await client.join(DEMO[0], WRONG, "mallory")).get("code") for _ in range(2)]
        codes.append((await client.join(*DEMO, "alice"))["type"])
        return codes

    assert asyncio.run(asyncio.wait_for(websocket_joins(), 30)) == [
        "wrong_passphrase", "wrong_passphrase", "joined"]
    # A listener's passphrase is checked like a join; 404: right passphrase, nobody publishing.
    assert [listen_to_rtmp_stream(gateway, passphrase)
            for passphrase in (WRONG, WRONG, DEMO[1])] == [403, 403, 404]
    gateway.stop()

    lines = gateway.log.splitlines()
    refused = [line for line in lines if "refused join from 127.0.0.1" in line]
    assert [line.split(" door=")[1].split()[0] for line in refused] == [
        "websocket", "websocket", "rtmp", "rtmp"]
    assert not any(WRONG in line or DEMO[1] in line for line in lines)
    assert fail2ban_hosts(gateway.log_path) == ["127.0.0.1"] * 4

    joined = [line for line in lines if "joined session" in line]
    assert joined
    correct_joins = tmp_path / "joins.log"
    correct_joins.write_text("\n".join(joined) + "\n")
    assert fail2ban_hosts(str(correct_joins)) == []


def test_logging_file_is_rotated_keeping_at_most_max_files(gateway_factory, tmp_path):
    log_file = tmp_path / "logs" / "netgateway.log"
    log_file.parent.mkdir()
    gateway = gateway_factory({"logging": {"file": str(log_file), "rotate_bytes": 1000,
                                           "max_files": 2, "drop_log_interval": 0}})
    guesses = 60           # about 150 bytes a line: a dozen rotations

    async def guess():
        # Ten a connection: the eleventh would close it (limits.pre_join_message_burst).
        for first in range(0, guesses, 10):
            client = await JamClient.connect(gateway.ws_url)
            for attempt in range(first, first + 10):
                await client.join(DEMO[0], f"{WRONG} {attempt}", "mallory")
            client.close()

    asyncio.run(asyncio.wait_for(guess(), 60))
    gateway.stop()

    files = sorted(glob.glob(str(log_file) + "*"))
    assert files == [str(log_file), f"{log_file}.1", f"{log_file}.2"]
    for path in files[1:]:
        assert 1000 <= os.path.getsize(path) < 1000 + 400     # rotated at the first line past
    newest = log_file.read_text() + open(f"{log_file}.1").read()
    assert "refused join from 127.0.0.1 door=websocket" in newest
    # twistd's own log (stdout here) still has everything the file had.
    assert gateway.log.count("refused join from 127.0.0.1") == guesses
