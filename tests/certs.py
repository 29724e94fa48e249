"""A throwaway CA, server and client certificates for TLS tests (nothing leaves tmp_path)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class CertFiles:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key, path: Path) -> str:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def _issue(subject: str, issuer_name, issuer_key, usage, path: Path, san=None, ca=False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    signer = (issuer_key or key).public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        # key identifiers: Python 3.13 verifies with X509_STRICT, which requires them
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer), False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def make_ca_and_certs(directory: Path) -> CertFiles:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    ca_key, ca_cert = _issue(
        "consul-results test CA", None, None, None, directory / "ca.pem", ca=True
    )
    san = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
        x509.DNSName("server.dc1.consul"),
    ]
    server_key, _ = _issue(
        "server.dc1.consul",
        ca_cert.subject,
        ca_key,
        ExtendedKeyUsageOID.SERVER_AUTH,
        directory / "server.pem",
        san,
    )
    client_key, _ = _issue(
        "client", ca_cert.subject, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH, directory / "client.pem"
    )
    return CertFiles(
        ca=str(directory / "ca.pem"),
        server_cert=str(directory / "server.pem"),
        server_key=_write_key(server_key, directory / "server-key.pem"),
        client_cert=str(directory / "client.pem"),
        client_key=_write_key(client_key, directory / "client-key.pem"),
    )
