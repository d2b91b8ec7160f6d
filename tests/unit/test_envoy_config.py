"""The Envoy edge config: the committed file is what the generator writes, and Envoy itself accepts it.

`envoy --mode validate` loads the whole config offline (listeners, clusters, certificate files) without opening
a socket, so these stay unit tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from gateway.routes import Route as GatewayRoute
from meshserve.deploy.envoy import (
    DEFAULT_OUT,
    EnvoySettings,
    deploy_envoy,
    envoy_config,
    grpc_proxy_config,
    local_settings,
    render_envoy_yaml,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / DEFAULT_OUT
ENVOY = Path(sys.executable).parent / "envoy"


@pytest.fixture(autouse=True)
def _no_envoy_env(monkeypatch):
    """The committed file comes from the defaults; a developer's MESHSERVE_ENVOY_* must not leak in."""
    for name in os.environ:
        if name.startswith("MESHSERVE_ENVOY_"):
            monkeypatch.delenv(name)


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(config), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def cluster(config: dict) -> dict:
    (gateway,) = config["static_resources"]["clusters"]
    return gateway


def route(config: dict) -> dict:
    (listener,) = config["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["route_config"]["virtual_hosts"][0]["routes"][0]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key (the openssl CLI: the venv has no `cryptography`)."""
    cert, key = directory / "edge.crt", directory / "edge.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_committed_file_is_what_the_generator_writes():
    assert COMMITTED.read_text() == render_envoy_yaml(EnvoySettings()), (
        f"{DEFAULT_OUT} is stale: run `meshserve deploy envoy`"
    )


def test_committed_file_says_it_is_generated_and_how():
    header = COMMITTED.read_text().splitlines()[:2]
    assert header[0].startswith("# Generated") and "meshserve deploy envoy" in header[1]


def test_envoy_accepts_the_committed_file():
    result = validate(COMMITTED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_accepts_the_tls_listener(tmp_path):
    cert, key = self_signed(tmp_path)
    settings = EnvoySettings(tls_cert_path=cert, tls_key_path=key)
    (listener,) = envoy_config(settings)["static_resources"]["listeners"]
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["common_tls_context"]["alpn_protocols"] == ["h2"]
    result = validate(deploy_envoy(tmp_path / "envoy.yaml", settings))
    assert result.returncode == 0, result.stdout + result.stderr


def test_validation_fails_for_a_broken_config(tmp_path):
    """Proves the checks above can fail: a route naming a cluster that does not exist, and a missing cert."""
    config = envoy_config(EnvoySettings())
    route(config)["route"]["cluster"] = "no-such-cluster"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    assert validate(broken).returncode != 0
    missing = EnvoySettings(tls_cert_path=tmp_path / "none.crt", tls_key_path=tmp_path / "none.key")
    assert validate(deploy_envoy(tmp_path / "no-cert.yaml", missing)).returncode != 0


def test_settings_change_the_output(monkeypatch):
    monkeypatch.setenv("MESHSERVE_ENVOY_GATEWAY_PORT", "6001")
    config = envoy_config(EnvoySettings(gateway_host="10.0.0.7", num_retries=4, max_requests=64))
    (endpoint,) = cluster(config)["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "10.0.0.7", "port_value": 6001}
    assert route(config)["route"]["retry_policy"]["num_retries"] == 4
    assert cluster(config)["circuit_breakers"]["thresholds"][0]["max_requests"] == 64


def test_defaults_proxy_grpc_over_http2_with_health_checks_retries_and_limits():
    config = envoy_config(EnvoySettings())
    gateway = cluster(config)
    options = gateway["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    (check,) = gateway["health_checks"]
    assert check["grpc_health_check"] == {}  # service "": the gateway's overall status
    assert set(gateway["circuit_breakers"]["thresholds"][0]) == {
        "max_connections",
        "max_pending_requests",
        "max_requests",
        "max_retries",
    }
    action = route(config)["route"]
    assert action["cluster"] == "gateway" and action["timeout"] == "5s"
    assert "unavailable" in action["retry_policy"]["retry_on"].split(",")
    assert "resource-exhausted" not in action["retry_policy"]["retry_on"]  # the gateway's "request too big"


def test_an_attempt_outlasts_the_gateways_own_route_budget():
    """Else Envoy would cut off the gateway's fallback or default answer and retry a call already answered."""
    budget_s = GatewayRoute.model_fields["timeout_ms"].default / 1000
    settings = EnvoySettings()
    assert budget_s < settings.per_try_timeout_s <= settings.route_timeout_s


def test_local_variant_stays_on_loopback():
    config = envoy_config(local_settings(gateway_port=6000))
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["address"] == "127.0.0.1"
    (endpoint,) = cluster(config)["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 6000}


@pytest.mark.parametrize(
    "values",
    [{"tls_cert_path": "edge.crt"}, {"per_try_timeout_s": 9.0, "route_timeout_s": 5.0}, {"listen_port": 0}],
)
def test_inconsistent_settings_are_refused(values):
    with pytest.raises(ValidationError):
        EnvoySettings(**values)


def test_the_benchmark_peer_is_a_plain_proxy_that_envoy_accepts(tmp_path):
    config = grpc_proxy_config(("127.0.0.1", 9000), ("127.0.0.1", 9001), ("127.0.0.1", 9002))
    upstream = cluster(config)
    assert "health_checks" not in upstream and "circuit_breakers" not in upstream
    assert "retry_policy" not in route(config)["route"]
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    result = validate(path)
    assert result.returncode == 0, result.stderr
