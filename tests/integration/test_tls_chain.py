"""TLS with a real chain: a leaf signed by an intermediate, the client trusting only the root."""

import datetime
import ipaddress
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import ConfigError, parse
from tests.certificates import self_signed


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject, issuer, key, signer, ca, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(san))]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def pem(*items):
    out = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            out += item.public_bytes(serialization.Encoding.PEM)
        else:
            out += item.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    return out


@pytest.fixture
def chain(tmp_path):
    """(root.pem, fullchain.pem, privkey.pem) the way a CA issues them."""
    root_key, middle_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _certificate("test root", "test root", root_key, root_key, ca=True)
    middle = _certificate("test intermediate", "test root", middle_key, root_key, ca=True)
    leaf = _certificate("127.0.0.1", "test intermediate", leaf_key, middle_key, ca=False,
                        san="127.0.0.1")
    paths = tmp_path / "root.pem", tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    paths[0].write_bytes(pem(root))
    paths[1].write_bytes(pem(leaf, middle))
    paths[2].write_bytes(pem(leaf_key))
    (tmp_path / "combined.pem").write_bytes(pem(leaf, middle, leaf_key))
    return tuple(str(path) for path in paths)


def verified_handshake(port, root):
    context = ssl.create_default_context(cafile=root)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as secure:
        return secure.getpeercert()["subject"]


@pytest.mark.parametrize("combined", [False, True], ids=["separate key", "key in the chain"])
def test_the_whole_chain_is_served_so_a_client_that_trusts_the_root_verifies(
        gateway_factory, chain, combined):
    root, fullchain, key = chain
    if combined:
        fullchain, key = fullchain.replace("fullchain", "combined"), None
    gateway = gateway_factory({"web": {"tls": {"certificate": fullchain, "key": key}}}, ca=root)
    port = gateway.config["web"]["port"]
    assert verified_handshake(port, root) == ((("commonName", "127.0.0.1"),),)


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
