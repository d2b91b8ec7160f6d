"""meshserve.core.tls without a network: who a peer is, the peer guard, settings, and reloading on rotation."""

from __future__ import annotations

import os
import shutil

import pytest
from pydantic import ValidationError

from meshserve.core.errors import ErrorCode, PermissionDenied
from meshserve.core.settings import ServiceSettings
from meshserve.core.tls import (
    ClientTls,
    _CertificateFiles,
    peer_guard,
    peer_identity,
    redis_options,
    requires_client_certificate,
)
from meshserve.launcher.certs import issue_certificates


def _auth(*sans: bytes, cn: bytes = b"") -> dict[str, list[bytes]]:
    """An auth context as grpc.aio gives it for a verified client certificate."""
    context = {"transport_security_type": [b"ssl"], "x509_pem_cert": [b"-----BEGIN CERTIFICATE-----..."]}
    if sans:
        context["x509_subject_alternative_name"] = list(sans)
    if cn:
        context["x509_common_name"] = [cn]
    return context


class FakeContext:
    def __init__(self, auth: dict) -> None:
        self.auth = auth

    def auth_context(self) -> dict:
        return self.auth


def test_identity_is_the_first_dns_san_never_an_ip():
    assert peer_identity(_auth(b"gateway", b"localhost", b"127.0.0.1", cn=b"other")) == "gateway"
    assert peer_identity(_auth(b"127.0.0.1", b"cache")) == "cache"
    assert peer_identity(_auth(cn=b"admin")) == "admin"  # no SAN: the common name


def test_no_certificate_no_identity():
    assert peer_identity({"transport_security_type": [b"ssl"]}) is None
    assert peer_identity({}) is None


def test_peer_guard_admits_listed_identities_only_and_names_the_refused_one():
    guard = peer_guard(["gateway", "admin"], "feature")
    assert (
        guard(FakeContext(_auth(b"gateway", b"localhost")), "/meshserve.feature.v1.FeatureService/Get")
        is None
    )
    assert guard(FakeContext(_auth(b"admin")), "/meshserve.feature.v1.FeatureService/Get") is None
    with pytest.raises(PermissionDenied) as refused:
        guard(FakeContext(_auth(b"cache", b"localhost")), "/meshserve.feature.v1.FeatureService/Get")
    assert refused.value.code is ErrorCode.PERMISSION_DENIED
    assert refused.value.message == "peer 'cache' may not call feature"
    with pytest.raises(PermissionDenied, match="without a client certificate"):
        guard(FakeContext({}), "/meshserve.feature.v1.FeatureService/Get")


def test_peer_guard_lets_health_checks_through():
    assert peer_guard(["gateway"], "feature")(FakeContext({}), "/grpc.health.v1.Health/Check") is None


def test_settings_need_cert_and_key_together_and_a_ca_for_client_auth(tmp_path):
    cert, key, ca = tmp_path / "a.pem", tmp_path / "a-key.pem", tmp_path / "ca.pem"
    with pytest.raises(ValidationError, match="go together"):
        ServiceSettings(tls_cert_file=cert)
    with pytest.raises(ValidationError, match="need"):
        ServiceSettings(tls_cert_file=cert, tls_key_file=key, tls_client_auth=True)
    with pytest.raises(ValidationError, match="need"):
        ServiceSettings(tls_allowed_peers=["gateway"])
    s = ServiceSettings(tls_cert_file=cert, tls_key_file=key, tls_ca_file=ca, tls_allowed_peers=["gateway"])
    assert requires_client_certificate(s)  # a peer check needs a certificate to check
    assert s.tls_fields()["tls_allowed_peers"] == ["gateway"]


def test_settings_from_the_environment(monkeypatch, tmp_path):
    class FeatureLike(ServiceSettings):
        model_config = {**ServiceSettings.model_config, "env_prefix": "MESHSERVE_FEATURE_"}

    monkeypatch.setenv("MESHSERVE_FEATURE_TLS_CERT_FILE", str(tmp_path / "f.pem"))
    monkeypatch.setenv("MESHSERVE_FEATURE_TLS_KEY_FILE", str(tmp_path / "f-key.pem"))
    monkeypatch.setenv("MESHSERVE_FEATURE_TLS_CA_FILE", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("MESHSERVE_FEATURE_TLS_ALLOWED_PEERS", '["gateway", "admin"]')
    s = FeatureLike()
    assert s.tls_allowed_peers == ["gateway", "admin"] and s.tls_cert_file == tmp_path / "f.pem"
    assert ClientTls.from_settings(s) == ClientTls(
        tmp_path / "ca.pem", tmp_path / "f.pem", tmp_path / "f-key.pem"
    )
    assert ClientTls.from_settings(ServiceSettings()) is None  # no CA: plaintext hops


def test_server_files_are_reloaded_only_when_they_change_and_never_as_a_mismatched_pair(tmp_path):
    issue_certificates(tmp_path, ["feature", "cache"])
    files = _CertificateFiles(tmp_path / "feature.pem", tmp_path / "feature-key.pem", tmp_path / "ca.pem")
    assert files.fetch() is None  # unchanged: keep the configuration in use

    shutil.copy(tmp_path / "cache.pem", tmp_path / "feature.pem")  # half a rotation: cert new, key old
    _bump(tmp_path / "feature.pem")
    assert files.fetch() is None
    shutil.copy(tmp_path / "cache-key.pem", tmp_path / "feature-key.pem")  # the rotation completes
    _bump(tmp_path / "feature-key.pem")
    assert files.fetch() is not None
    assert files.fetch() is None


def _bump(path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_redis_options_only_for_rediss_urls(tmp_path):
    tls = ClientTls(tmp_path / "ca.pem", tmp_path / "cache.pem", tmp_path / "cache-key.pem")
    assert redis_options("redis://127.0.0.1:6379/0", tls) == {}
    assert redis_options("rediss://redis:6380/0", None) == {}
    options = redis_options("rediss://redis:6380/0", tls)
    assert options["ssl_ca_certs"] == str(tmp_path / "ca.pem") and options["ssl_check_hostname"] is True
    assert options["ssl_certfile"] == str(tmp_path / "cache.pem")


def _planned(tmp_path, **settings):
    from meshserve.launcher.mesh import LocalMesh, MeshSettings

    mesh = LocalMesh(
        MeshSettings(gateway_port=0, admin_port=0, gateway_http_port=0, run_dir=tmp_path, **settings)
    )
    mesh.plan()
    return mesh


def test_a_tls_mesh_issues_its_certificates_once_and_gives_every_process_its_own(tmp_path):
    import json

    from meshserve.cli.up import start_hint

    mesh = _planned(tmp_path, tls=True)
    certs = tmp_path / "certs"
    ca = (certs / "ca.pem").read_bytes()
    for name, peers in {"feature": ["gateway", "admin"], "cache": ["gateway", "feature", "admin"],
                        "inference": ["gateway", "admin"], "monitor": ["gateway", "admin"],
                        "gateway": []}.items():  # fmt: skip
        env = mesh.children[name].env
        prefix = f"MESHSERVE_{name.upper()}_TLS_"
        assert env[prefix + "CERT_FILE"] == str(certs.resolve() / f"{name}.pem")
        assert (certs / f"{name}.pem").is_file() and (certs / f"{name}-key.pem").is_file()
        assert env[prefix + "CA_FILE"] == str(certs.resolve() / "ca.pem")
        assert env[prefix + "CLIENT_AUTH"] == "true"
        assert json.loads(env[prefix + "ALLOWED_PEERS"]) == peers
    argv = mesh.children["triton"].argv
    assert "--grpc-use-ssl-mutual=true" in argv
    assert f"--grpc-server-cert={certs.resolve() / 'triton.pem'}" in argv
    assert "--tls" in start_hint(mesh, mesh.endpoints)
    assert mesh.client_tls() == ClientTls.from_dir(certs.resolve(), "admin")

    _planned(tmp_path, tls=True)  # a second run keeps the CA every certificate chains to
    assert (certs / "ca.pem").read_bytes() == ca


def test_a_plain_mesh_has_no_tls_anywhere(tmp_path):
    mesh = _planned(tmp_path)
    assert not (tmp_path / "certs").exists() and mesh.client_tls() is None
    assert not any(
        "TLS" in key for child in mesh.children.values() for key in child.env if key.startswith("MESHSERVE_")
    )
    assert not any("ssl" in arg for arg in mesh.children["triton"].argv)


def test_an_auth_mesh_requires_callers_to_authenticate_at_the_gateway_only(tmp_path):
    from gateway.settings import GatewaySettings

    env = _planned(tmp_path, auth=True).children["gateway"].env
    prefix = "MESHSERVE_GATEWAY_"
    settings = GatewaySettings(
        **{k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
    )
    assert settings.auth_required is True and settings.auth_api_keys_file == tmp_path / "api-keys.json"
    plain = _planned(tmp_path / "plain").children["gateway"].env
    assert GatewaySettings(auth_required=plain[prefix + "AUTH_REQUIRED"]).auth_required is False
