"""TLS with a real chain: a leaf signed by an intermediate, the client trusting only the root."""

import shutil
import socket
import ssl
import subprocess

import pytest

from gateway.config import ConfigError, parse
from tests.certificates import Authority, self_signed
from tests.conftest import need_external


@pytest.fixture
def chain(tmp_path):
    """(root.pem, fullchain.pem, privkey.pem) the way a CA issues them."""
    authority = Authority()
    fullchain, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    authority.issue(fullchain, key)
    (tmp_path / "combined.pem").write_bytes(fullchain.read_bytes() + key.read_bytes())
    return authority.write_root(tmp_path / "root.pem"), str(fullchain), str(key)


def verified_handshake(port, root):
    context = ssl.create_default_context(cafile=root)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as secure:
        return secure.getpeercert()["subject"]


def openssl_verification(port, root):
    """``(exit status, output)`` of ``openssl s_client`` trusting only ``root``, checking
    the chain and that the leaf names 127.0.0.1."""
    need_external(shutil.which("openssl"), "openssl (Debian package openssl) is not installed")
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", root,
         "-verify_return_error", "-verify_ip", "127.0.0.1"],
        input="", capture_output=True, text=True, timeout=20)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("combined", [False, True], ids=["separate key", "key in the chain"])
def test_the_whole_chain_is_served_so_a_client_that_trusts_the_root_verifies(
        gateway_factory, chain, combined):
    root, fullchain, key = chain
    if combined:
        fullchain, key = fullchain.replace("fullchain", "combined"), None
    gateway = gateway_factory({"web": {"tls": {"certificate": fullchain, "key": key}}}, ca=root)
    port = gateway.config["web"]["port"]
    assert verified_handshake(port, root) == ((("commonName", "127.0.0.1"),),)
    status, output = openssl_verification(port, root)
    assert status == 0 and "Verify return code: 0 (ok)" in output, output


def test_a_key_that_is_not_the_leafs_is_one_config_line(chain, tmp_path):
    _, fullchain, _ = chain
    _, other_key = self_signed(tmp_path)
    with pytest.raises(ConfigError) as raised:
        parse({"web": {"tls": {"certificate": fullchain, "key": other_key}}})
    (line,) = raised.value.problems
    assert line.startswith("web.tls.certificate: expected a PEM certificate chain and its key")
    assert "is not the key of the first certificate" in line


def test_a_file_without_a_certificate_is_one_config_line(chain):
    _, _, key = chain
    with pytest.raises(ConfigError) as raised:
        parse({"web": {"tls": {"certificate": key, "key": key}}})
    (line,) = raised.value.problems
    assert "no PEM certificate in" in line
