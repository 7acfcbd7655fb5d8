"""Certificates for the TLS tests (wss, rtmps): self-signed, or a chain from a test CA."""

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


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


class Authority:
    """A test root and an intermediate that issue leaves, the way a public CA does."""

    def __init__(self, name="test root"):
        root_key, self._middle_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
        self.root = _certificate(name, name, root_key, root_key, ca=True)
        self._middle_name = f"{name} intermediate"
        self.middle = _certificate(self._middle_name, name, self._middle_key, root_key, ca=True)

    def write_root(self, path):
        path.write_bytes(pem(self.root))
        return str(path)

    def issue(self, fullchain_path, key_path=None, common_name="127.0.0.1", key=None,
              address="127.0.0.1"):
        """Write a new leaf for ``address`` and the intermediate to ``fullchain_path``, its key
        (``key``, None: a new P-256 key) to ``key_path`` (None: after the chain, in the same
        file); return the leaf."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        leaf = _certificate(common_name, self._middle_name, key, self._middle_key, ca=False,
                            san=address)
        if key_path is None:
            fullchain_path.write_bytes(pem(leaf, self.middle, key))
        else:
            fullchain_path.write_bytes(pem(leaf, self.middle))
            key_path.write_bytes(pem(key))
        return leaf
