"""A renewed certificate serves after SIGHUP, without a restart; plain HTTP redirects to https.

Real twistd, real files replaced the way certbot replaces them, real TLS clients
(Python ssl, autobahn over asyncio) that trust only the test CA's root.
"""

import asyncio
import http.client
import os
import signal
import socket
import ssl
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.certificates import Authority
from tests.conftest import free_port
from tests.integration.test_sip_ua_e2e import free_udp_block
from tests.wsclient import JamClient

DEMO = ("demo", "play along with netgateway demo")
RELOADED = "netgateway: web.tls: certificate reloaded"
NOT_RELOADED = "netgateway: web.tls: certificate not reloaded"


class Files:
    """A test CA and the web.tls files it issued, at the paths the config names."""

    def __init__(self, directory, authority="test root"):
        directory.mkdir(exist_ok=True)
        self.authority = Authority(authority)
        self.root = self.authority.write_root(directory / "root.pem")
        self.fullchain, self.key = directory / "fullchain.pem", directory / "privkey.pem"
        self.leaf = self.renew()

    def renew(self, key=None):
        """Write a new leaf and key over the old files; return the new leaf's DER."""
        leaf = self.authority.issue(self.fullchain, self.key, key=key)
        return leaf.public_bytes(serialization.Encoding.DER)

    def section(self):
        return {"certificate": str(self.fullchain), "key": str(self.key)}

    def context(self):
        return ssl.create_default_context(cafile=self.root)


def served_leaf(port, files):
    """The DER leaf a new handshake that verifies against the root alone gets on ``port``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            files.context().wrap_socket(raw, server_hostname="127.0.0.1") as secure:
        return secure.getpeercert(binary_form=True)


def wait_for_line(gateway, text, timeout=10.0):
    deadline = time.monotonic() + timeout
    while text not in gateway.log:
        assert gateway.process.poll() is None, f"the gateway exited:\n{gateway.log}"
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{gateway.log}"
        time.sleep(0.05)
    return [line for line in gateway.log.splitlines() if text in line]


def peer_leaf(client):
    return client.protocol.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)


def test_after_sighup_new_handshakes_get_the_new_certificate_and_members_play_on(
        gateway_factory, tmp_path):
    files = Files(tmp_path)
    rtmps_port = free_port()
    gateway = gateway_factory({"web": {"tls": files.section()},
                               "rtmp": {"port": free_port(), "tls_port": rtmps_port}},
                              ca=files.root)
    old_leaf = files.leaf
    assert served_leaf(gateway.config["web"]["port"], files) == old_leaf

    async def scenario():
        alice = await JamClient.connect(gateway.ws_url, ssl=files.context())
        assert (await alice.join(*DEMO, "alice"))["type"] == "joined"

        new_leaf = files.renew()
        os.kill(gateway.process.pid, signal.SIGHUP)
        [line] = await asyncio.to_thread(wait_for_line, gateway, RELOADED)
        assert "now serving CN=127.0.0.1 (valid until 20" in line
        assert new_leaf != old_leaf
        assert served_leaf(gateway.config["web"]["port"], files) == new_leaf
        assert served_leaf(rtmps_port, files) == new_leaf

        bob = await JamClient.connect(gateway.ws_url, ssl=files.context())
        assert peer_leaf(bob) == new_leaf and peer_leaf(alice) == old_leaf
        assert (await bob.join(*DEMO, "bob"))["type"] == "joined"
        alice.send_midi([0x90, 60, 100])
        assert (await bob.midi())["data"] == [0x90, 60, 100]
        bob.send_midi([0x90, 67, 90])
        heard = await alice.midi()
        assert heard["data"] == [0x90, 67, 90] and heard["from"]["name"] == "bob"
        alice.close(), bob.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert gateway.process.poll() is None


def test_sip_over_tls_with_a_certificate_of_its_own_reloads_on_the_same_sighup(
        gateway_factory, tmp_path):
    web, sip = Files(tmp_path / "web"), Files(tmp_path / "sip", authority="sip test root")
    tls_port, media = free_port(), free_udp_block(8)
    gateway = gateway_factory({"web": {"tls": web.section()}, "sip": {
        "host": "127.0.0.1", "port": free_udp_block(2),
        "media": {"port_min": media, "port_max": media + 3},
        "uas": {"tls_port": tls_port, "tls": sip.section(),
                "media": {"port_min": media + 4, "port_max": media + 7}}}}, ca=web.root)
    assert served_leaf(tls_port, sip) == sip.leaf
    renewed = sip.renew()
    os.kill(gateway.process.pid, signal.SIGHUP)
    wait_for_line(gateway, "netgateway: sip.uas.tls: certificate reloaded")
    assert served_leaf(tls_port, sip) == renewed
    assert served_leaf(gateway.config["web"]["port"], web) == web.leaf
    assert len(wait_for_line(gateway, RELOADED)) == 1     # the web site's files, unchanged


def test_files_that_cannot_serve_keep_the_old_certificate_with_one_error_line(
        gateway_factory, tmp_path):
    files = Files(tmp_path)
    gateway = gateway_factory({"web": {"tls": files.section()}}, ca=files.root)
    port = gateway.config["web"]["port"]
    good_key = files.key.read_bytes()
    new_leaf = files.renew()
    renewed_key = files.key.read_bytes()
    files.key.write_bytes(good_key)         # a half-done renewal: the new leaf, the old key

    os.kill(gateway.process.pid, signal.SIGHUP)
    [line] = wait_for_line(gateway, NOT_RELOADED)
    assert "web.tls.certificate: expected a PEM certificate chain and its key" in line
    assert "is not the key of the first certificate" in line
    assert served_leaf(port, files) == files.leaf
    assert gateway.status()["sessions"] is not None

    files.key.write_bytes(renewed_key)      # the renewal finishes; the next SIGHUP takes it
    os.kill(gateway.process.pid, signal.SIGHUP)
    wait_for_line(gateway, RELOADED)
    assert served_leaf(port, files) == new_leaf
    assert len(wait_for_line(gateway, NOT_RELOADED)) == 1
    assert gateway.process.poll() is None


def weak_key_openssl_refuses(files):
    """A 1024-bit RSA key, which Debian's OpenSSL (security level 2) refuses to serve."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    directory = files.fullchain.parent / "probe"
    directory.mkdir()
    Authority().issue(directory / "chain.pem", directory / "key.pem", key=key)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(directory / "chain.pem",
                                                                directory / "key.pem")
    except ssl.SSLError:
        return key
    pytest.skip("this OpenSSL serves 1024-bit RSA keys (security level below 2)")


def test_a_key_openssl_refuses_is_refused_at_reload_not_at_each_handshake(
        gateway_factory, tmp_path):
    files = Files(tmp_path)
    gateway = gateway_factory({"web": {"tls": files.section()}}, ca=files.root)
    files.renew(key=weak_key_openssl_refuses(files))
    os.kill(gateway.process.pid, signal.SIGHUP)
    [line] = wait_for_line(gateway, NOT_RELOADED)
    assert "web.tls.certificate: expected a certificate and key OpenSSL accepts" in line
    assert served_leaf(gateway.config["web"]["port"], files) == files.leaf


def test_a_key_openssl_refuses_stops_start_up_with_a_config_error(gateway_factory, tmp_path):
    files = Files(tmp_path)
    files.renew(key=weak_key_openssl_refuses(files))
    with pytest.raises(RuntimeError) as failed:
        gateway_factory({"web": {"tls": files.section()}}, ca=files.root)
    assert "twistd exited with 2" in str(failed.value)
    assert "netgateway: config error: web.tls.certificate: expected a certificate and key" \
        " OpenSSL accepts" in str(failed.value)
    assert "Traceback" not in str(failed.value)


def redirect(port, target, host=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        headers = {} if host is None else {"Host": host}
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("location")
    finally:
        connection.close()


def test_plain_http_is_sent_to_the_same_path_over_https_on_the_host_the_client_named(
        gateway_factory, tmp_path):
    files = Files(tmp_path)
    plain = free_port()
    gateway = gateway_factory({"web": {"tls": files.section(), "redirect_http_port": plain}},
                              ca=files.root)
    port = gateway.config["web"]["port"]
    assert redirect(plain, "/x?y") == (301, f"https://127.0.0.1:{port}/x?y")
    assert redirect(plain, "/", host=f"jam.example.org:{plain}") == (
        301, f"https://jam.example.org:{port}/")
    assert redirect(plain, "/", host="[::1]") == (301, f"https://[::1]:{port}/")
    assert redirect(plain, "/", host="elsewhere.example/steal?") == (400, None)
    assert redirect(plain, "/", host="user@elsewhere.example") == (400, None)
    assert (f"  web        tcp {port} (web.port) on 127.0.0.1, TLS on, http to https from tcp"
            f" {plain} (web.redirect_http_port)") in gateway.log


def test_sighup_without_tls_is_logged_and_the_gateway_keeps_running(gateway):
    # systemctl reload sends SIGHUP whatever the config; its default action would end us.
    os.kill(gateway.process.pid, signal.SIGHUP)
    wait_for_line(gateway, "netgateway: reload asked for, but no TLS certificate is served")
    assert gateway.status()["sessions"] is not None
