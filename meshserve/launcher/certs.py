"""`meshserve certs DIR`: a private CA and one certificate per process, for TLS and mTLS on every hop.

Each certificate (EC P-256) names its process first (`DNS:<name>`, the identity peers check), then `localhost`,
`127.0.0.1` and every `--host`, and serves for server and client authentication alike. Existing files are kept
unless `force`: a CA replaced behind the mesh's back would orphan every certificate it signed.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_NAMES", "Issued", "issue_certificates"]

DEFAULT_NAMES = ("gateway", "feature", "cache", "inference", "monitor", "triton", "redis", "admin", "client")
DEFAULT_DAYS = 825  # the longest validity clients commonly accept for a leaf


@dataclass
class Issued:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write atomically; a key is 0600 from its first byte."""
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(staging, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _san(name: str, hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in dict.fromkeys([name, "localhost", "127.0.0.1", *hosts]):  # ordered, no repeats
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _new_ca(days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshserve CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    name: str, hosts: Iterable[str], days: int, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(_san(name, hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, True, False, False, False, False), critical=True
        )  # digital signature, key encipherment, key agreement (ECDHE)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def issue_certificates(
    directory: Path,
    names: Iterable[str] = DEFAULT_NAMES,
    hosts: Iterable[str] = (),
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> Issued:
    """Write `ca.pem`/`ca-key.pem` and `<name>.pem`/`<name>-key.pem` for each name into `directory` (created
    0700). Files that exist are kept unless `force`; a new CA (forced) reissues every certificate."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    hosts = list(hosts)
    issued = Issued()
    ca_path, ca_key_path = directory / "ca.pem", directory / "ca-key.pem"
    if force or not (ca_path.exists() and ca_key_path.exists()):
        ca_key, ca = _new_ca(days)
        _write(ca_key_path, _key_pem(ca_key), private=True)
        _write(ca_path, ca.public_bytes(serialization.Encoding.PEM), private=False)
        issued.written += [ca_path, ca_key_path]
        force = True  # certificates from another CA would no longer verify
    else:
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path}: expected an EC private key")
        ca_key, ca = loaded, x509.load_pem_x509_certificate(ca_path.read_bytes())
        issued.kept += [ca_path, ca_key_path]
    for name in dict.fromkeys(names):
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
        if not force and cert_path.exists() and key_path.exists():
            issued.kept += [cert_path, key_path]
            continue
        key, cert = _leaf(name, hosts, days, ca_key, ca)
        _write(
            key_path, _key_pem(key), private=True
        )  # key first: a server reloading sees a matching pair last
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
        issued.written += [cert_path, key_path]
    return issued
