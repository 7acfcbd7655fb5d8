"""Operating a public gateway, through a real twistd: who sees /status in full, /metrics
on a port of its own."""

import asyncio
import json
import socket
import urllib.error
import urllib.request

from tests.conftest import ADMIN_TOKEN, BASE_CONFIG, GatewayProcess, free_port, merge
from tests.integration.test_operating import fail2ban_hosts
from tests.wsclient import JamClient

DEMO = ("demo", "play along with netgateway demo")


def fetch(url, authorization=None):
    """``(status code, headers, body)`` of ``GET url``, error answers included."""
    headers = {"Authorization": authorization} if authorization else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def with_alice_in_demo(gateway, look):
    """``look()`` while a WebSocket member named alice is in demo."""
    async def scenario():
        alice = await JamClient.connect(gateway.ws_url)
        assert (await alice.join(*DEMO, "alice"))["type"] == "joined"
        try:
            return await asyncio.to_thread(look)
        finally:
            alice.close()

    return asyncio.run(asyncio.wait_for(scenario(), 30))


def test_status_without_a_token_is_a_summary_without_members(gateway):
    code, headers, body = with_alice_in_demo(gateway, lambda: fetch(gateway.web_url + "/status"))
    assert code == 200 and headers["content-type"].startswith("application/json")
    summary = json.loads(body)
    assert summary["sessions"] == [{"name": "demo", "members": 1},
                                   {"name": "mirror", "members": 0}]
    assert summary["doors"] == ["websocket"]
    assert set(summary) == {"sessions", "doors", "uptime"}
    assert b"alice" not in body and b"127.0.0.1" not in body


def test_status_with_the_admin_token_is_in_full(gateway):
    full = with_alice_in_demo(gateway, lambda: json.loads(fetch(
        gateway.web_url + "/status", f"Bearer {ADMIN_TOKEN}")[2]))
    demo = next(session for session in full["sessions"] if session["name"] == "demo")
    [alice] = demo["members"]
    assert alice["name"] == "alice" and "127.0.0.1" in alice["peer"]
    assert {"drops", "refusals", "version", "compiled_modules"} <= set(full)
    assert full["doors"]["websocket"] is not None


def test_a_wrong_token_is_answered_401_counted_and_logged_for_fail2ban(gateway_factory):
    gateway = gateway_factory({"logging": {"drop_log_interval": 0}})
    for authorization in ["Bearer not-the-admin-token-at-all", f"Basic {ADMIN_TOKEN}",
                          "Bearer"]:
        code, headers, body = fetch(gateway.web_url + "/status", authorization)
        assert code == 401, authorization
        assert headers["www-authenticate"].startswith("Bearer ")
        assert json.loads(body)["error"] == "invalid_token"
    assert gateway.status()["drops"]["web"] == {"wrong_admin_token": 3}
    gateway.stop()
    refused = [line for line in gateway.log.splitlines() if "refused /status" in line]
    assert len(refused) == 3 and refused[0].endswith(
        "netgateway: refused /status from 127.0.0.1 reason=wrong_admin_token")
    assert "not-the-admin-token-at-all" not in gateway.log
    assert fail2ban_hosts(gateway.log_path) == ["127.0.0.1"] * 3


def test_without_an_admin_token_nobody_sees_full_status(gateway_factory):
    gateway = gateway_factory({"status": {"admin_token": None}})
    code, _, body = fetch(gateway.web_url + "/status", f"Bearer {ADMIN_TOKEN}")
    assert code == 401 and json.loads(body)["error"] == "invalid_token"
    assert set(gateway.status()) == {"sessions", "doors", "uptime"}


def test_the_admin_token_can_come_from_a_file(gateway_factory, tmp_path):
    token_file = tmp_path / "admin-token"
    token_file.write_text("a-token-only-root-can-read\n")
    gateway = gateway_factory({"status": {"admin_token": None,
                                          "admin_token_file": str(token_file)}})
    code, _, body = fetch(gateway.web_url + "/status", "Bearer a-token-only-root-can-read")
    assert code == 200 and "drops" in json.loads(body)


def test_metrics_on_their_own_port_leave_the_web_site(gateway_factory):
    metrics_port = free_port()
    gateway = gateway_factory({"metrics": {"host": "127.0.0.1", "port": metrics_port}})
    code, headers, body = fetch(f"http://127.0.0.1:{metrics_port}/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain")
    assert b"netgateway_sessions 2.0" in body
    assert fetch(gateway.web_url + "/metrics")[0] == 404
    assert fetch(f"http://127.0.0.1:{metrics_port}/status")[0] == 404
    # The start-up block says where to scrape.
    assert f"  metrics    http://127.0.0.1:{metrics_port}/metrics (metrics.port)" in gateway.log


def test_metrics_stay_on_the_web_site_by_default(gateway):
    code, _, body = fetch(gateway.web_url + "/metrics")
    assert code == 200 and b"netgateway_sessions 2.0" in body


class MetricsOnlyGateway(GatewayProcess):
    """A gateway without a web site: it is up when metrics.port answers."""

    def status(self):
        return fetch(f"http://127.0.0.1:{self.config['metrics']['port']}/metrics")


def test_metrics_port_serves_the_doors_metrics_without_a_web_site(tmp_path):
    config = merge(BASE_CONFIG, {
        # GatewayProcess reads a web port; the disabled site never opens it.
        "web": {"enabled": False, "port": free_port()}, "websocket": {"enabled": False},
        "metrics": {"port": free_port()},
        "oscgroups": {"host": "127.0.0.1", "port": free_port(socket.SOCK_DGRAM),
                      "bridge": {"port": free_port(socket.SOCK_DGRAM), "groups": ["demo"]}},
    })
    gateway = MetricsOnlyGateway(config, str(tmp_path)).start()
    try:
        code, _, body = gateway.status()
    finally:
        gateway.stop()
    assert code == 200 and b"netgateway_sessions 2.0" in body
    assert b"netgateway_oscgroups_users 1.0" in body            # the bridge's own user
