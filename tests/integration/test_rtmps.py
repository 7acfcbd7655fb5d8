"""rtmps: the RTMP door over TLS with the web site's certificate, with real ffmpeg."""

import socket
import ssl

import pytest

from tests.certificates import self_signed
from tests.conftest import free_port
from tests.rtmp_peer import ffmpeg_play, ffmpeg_publish_sine, ffprobe, need_rtmp_tools, \
    stop_process

pytestmark = pytest.mark.external

QUERY = "passphrase=play%20along%20with%20netgateway%20demo"


def test_ffmpeg_publishes_and_plays_over_rtmps_with_the_web_certificate(gateway_factory,
                                                                         tmp_path):
    need_rtmp_tools()
    cert, key = self_signed(tmp_path)
    port, tls_port = free_port(), free_port()
    gateway = gateway_factory({"web": {"tls": {"certificate": cert, "key": key}},
                               "rtmp": {"port": port, "tls_port": tls_port}})
    context = ssl.create_default_context(cafile=cert)
    with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as secure:
        assert secure.getpeercert()["subject"] == ((("commonName", "127.0.0.1"),),)
    url = f"rtmps://127.0.0.1:{tls_port}/jam/demo"
    publisher = ffmpeg_publish_sine(f"{url}?{QUERY}&name=secure", 6)
    try:
        returncode, stderr, _ = ffmpeg_play(f"{url}?{QUERY}&name=listener",
                                            tmp_path / "heard.flv", 3, timeout=20)
    finally:
        stop_process(publisher)
    assert returncode == 0, stderr
    probe = ffprobe(tmp_path / "heard.flv")
    assert probe["codec"] == "aac" and abs(probe["duration"] - 3) < 0.3, probe
    assert "listening on rtmp://127.0.0.1" in gateway.log and f"rtmps://127.0.0.1:{tls_port}" \
        in gateway.log
