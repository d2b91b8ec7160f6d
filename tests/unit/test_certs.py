"""`meshserve certs`: files, permissions, SANs, the CA kept unless forced, certificates that verify."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from meshserve.cli.app import app
from meshserve.launcher.certs import DEFAULT_NAMES, issue_certificates


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> list[str]:
    return [
        str(name.value) for name in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ]


def test_writes_a_ca_and_one_certificate_per_default_name_with_private_keys_0600(tmp_path):
    issue_certificates(tmp_path / "certs")
    d = tmp_path / "certs"
    expected = {"ca.pem", "ca-key.pem"} | {f"{n}{s}" for n in DEFAULT_NAMES for s in (".pem", "-key.pem")}
    assert {p.name for p in d.iterdir()} == expected
    assert set(DEFAULT_NAMES) == {
        "gateway",
        "feature",
        "cache",
        "inference",
        "monitor",
        "triton",
        "redis",
        "admin",
        "client",
    }
    for path in d.glob("*-key.pem"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    key = _cert(d / "gateway.pem").public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"


def test_sans_name_the_process_first_then_localhost_and_every_host(tmp_path):
    issue_certificates(tmp_path, ["feature"], hosts=["feature.mesh.svc", "10.0.0.7"])
    cert = _cert(tmp_path / "feature.pem")
    assert _sans(cert) == ["feature", "localhost", "127.0.0.1", "feature.mesh.svc", "10.0.0.7"]
    ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.IPAddress
    )
    assert ipaddress.ip_address("127.0.0.1") in ips
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages and ExtendedKeyUsageOID.CLIENT_AUTH in usages


def test_every_certificate_verifies_against_the_ca(tmp_path):
    issue_certificates(tmp_path, ["gateway", "admin"], days=30)
    ca = _cert(tmp_path / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in ("gateway", "admin"):
        cert = _cert(tmp_path / f"{name}.pem")
        cert.verify_directly_issued_by(ca)  # raises if the signature or the issuer is wrong
        assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 30


def test_existing_files_and_the_ca_are_kept_unless_forced(tmp_path):
    issue_certificates(tmp_path, ["gateway"])
    ca_before, gateway_before = (tmp_path / "ca.pem").read_bytes(), (tmp_path / "gateway.pem").read_bytes()
    again = issue_certificates(tmp_path, ["gateway", "cache"])  # a new name is added under the same CA
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    assert (tmp_path / "gateway.pem").read_bytes() == gateway_before
    assert [p.name for p in again.written] == ["cache.pem", "cache-key.pem"]
    _cert(tmp_path / "cache.pem").verify_directly_issued_by(_cert(tmp_path / "ca.pem"))

    issue_certificates(tmp_path, ["gateway"], force=True)
    assert (tmp_path / "ca.pem").read_bytes() != ca_before
    _cert(tmp_path / "gateway.pem").verify_directly_issued_by(_cert(tmp_path / "ca.pem"))


def test_a_new_ca_reissues_every_certificate_so_none_is_left_from_the_old_one(tmp_path):
    issue_certificates(tmp_path, ["gateway"])
    (tmp_path / "ca-key.pem").unlink()  # the CA's key is lost: a new CA, and the old leaf no longer fits
    issue_certificates(tmp_path, ["gateway"])
    _cert(tmp_path / "gateway.pem").verify_directly_issued_by(_cert(tmp_path / "ca.pem"))


def test_cli_writes_the_names_asked_for_and_says_what_it_kept(tmp_path):
    runner = CliRunner()
    first = runner.invoke(app, ["certs", str(tmp_path), "--name", "gateway", "--host", "gw.example"])
    assert first.exit_code == 0, first.output
    assert "wrote" in first.output and sorted(p.name for p in tmp_path.iterdir()) == [
        "ca-key.pem", "ca.pem", "gateway-key.pem", "gateway.pem",
    ]  # fmt: skip
    assert "gw.example" in _sans(_cert(tmp_path / "gateway.pem"))
    second = runner.invoke(app, ["certs", str(tmp_path), "--name", "gateway"])
    assert second.exit_code == 0 and "wrote" not in second.output and "kept" in second.output


@pytest.mark.parametrize("days", ["0", "-1"])
def test_cli_refuses_a_validity_below_one_day(tmp_path, days):
    assert CliRunner().invoke(app, ["certs", str(tmp_path), "--days", days]).exit_code != 0
