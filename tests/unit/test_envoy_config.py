"""The Envoy edge config: the committed file is what the generator writes, and Envoy itself accepts it.

`envoy --mode validate` loads the whole config offline (listeners, clusters, certificate files) without opening
a socket, so these stay unit tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from gateway.settings import GatewaySettings
from meshserve.deploy.envoy import (
    CERTS_DIR,
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


def clusters(config: dict) -> dict[str, dict]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def cluster(config: dict, name: str = "gateway") -> dict:
    """The gateway's gRPC cluster, or another by name (`gateway_rest`: its REST port)."""
    return clusters(config)[name]


def routes(config: dict) -> list[dict]:
    (listener,) = config["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["route_config"]["virtual_hosts"][0]["routes"]


def route(config: dict) -> dict:
    return routes(config)[0]


def self_signed(directory: Path, name: str = "edge") -> tuple[Path, Path]:
    """A throwaway certificate and key (the openssl CLI). `envoy --mode validate` loads PEM files but checks no
    chain, so one self-signed certificate serves as CA, server and client certificate alike."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def certs_dir(directory: Path) -> Path:
    """What the compose `certs` step (or cert-manager) puts in /certs, enough for Envoy to load."""
    cert, key = self_signed(directory)
    for name in ("ca", "client", "gateway"):
        (directory / f"{name}.pem").write_bytes(cert.read_bytes())
        (directory / f"{name}-key.pem").write_bytes(key.read_bytes())
    return directory


def jwks_file(directory: Path) -> Path:
    """A JWKS with one ES256 public key, as an identity provider publishes it."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    jwk = json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key()))
    path = directory / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]}))
    return path


def http_filters(config: dict) -> list[dict]:
    (listener,) = config["static_resources"]["listeners"]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]


def secured(directory: Path, **overrides: object) -> EnvoySettings:
    """TLS downstream, mTLS to the gateway and JWTs checked at the edge, all on."""
    certs = certs_dir(directory)
    values: dict[str, object] = {
        "tls_cert_file": certs / "gateway.pem",
        "tls_key_file": certs / "gateway-key.pem",
        "gateway_ca_file": certs / "ca.pem",
        "gateway_cert_file": certs / "client.pem",
        "gateway_key_file": certs / "client-key.pem",
        "jwt_jwks": str(jwks_file(directory)),
        "jwt_issuer": "https://idp.example.com/",
        "jwt_audiences": ["meshserve"],
    }
    return EnvoySettings(**{**values, **overrides})


def test_committed_file_is_what_the_generator_writes():
    assert COMMITTED.read_text() == render_envoy_yaml(EnvoySettings()), (
        f"{DEFAULT_OUT} is stale: run `meshserve deploy envoy`"
    )


def test_committed_file_says_it_is_generated_and_how():
    header = COMMITTED.read_text().splitlines()[:2]
    assert header[0].startswith("# Generated") and "meshserve deploy envoy" in header[1]


def test_envoy_accepts_the_committed_file(tmp_path):
    """With the certificate files it names (/certs in its containers) put in a temporary directory."""
    text = COMMITTED.read_text()
    assert f"{CERTS_DIR}/ca.pem" in text, "the committed edge no longer verifies the gateway"
    config = tmp_path / "envoy.yaml"
    config.write_text(text.replace(f"{CERTS_DIR}/", f"{certs_dir(tmp_path)}/"))
    result = validate(config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validate_commands_in_docs_deploy_md_work_as_written(tmp_path):
    """The docs' bash block that runs `envoy --mode validate`, run as a reader would (from the checkout, with the
    venv's tools), so the documented check and this test cannot drift apart."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (REPO_ROOT / "docs" / "deploy.md").read_text(), re.M | re.S)
    (block,) = [b for b in blocks if "envoy --mode validate" in b]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSERVE_")}
    env |= {"TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}  # mktemp -d inside tmp_path
    script = block.replace(".venv/bin/", f"{ENVOY.parent}/")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(r"configuration '.*/envoy\.yaml' OK\n", result.stdout), result.stdout
    assert list(tmp_path.iterdir()) == []  # and it cleaned up after itself


def test_envoy_accepts_the_tls_listener(tmp_path):
    cert, key = self_signed(tmp_path)
    settings = EnvoySettings(tls_cert_file=cert, tls_key_file=key, gateway_ca_file=cert)
    (listener,) = envoy_config(settings)["static_resources"]["listeners"]
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["common_tls_context"]["alpn_protocols"] == ["h2", "http/1.1"]  # REST may come as HTTP/1.1
    result = validate(deploy_envoy(tmp_path / "envoy.yaml", settings))
    assert result.returncode == 0, result.stdout + result.stderr
    grpc_only = EnvoySettings(
        tls_cert_file=cert, tls_key_file=key, gateway_ca_file=cert, gateway_http_port=None
    )
    (listener,) = envoy_config(grpc_only)["static_resources"]["listeners"]
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["common_tls_context"]["alpn_protocols"] == ["h2"]
    result = validate(deploy_envoy(tmp_path / "grpc-only.yaml", grpc_only))
    assert result.returncode == 0, result.stdout + result.stderr


def test_validation_fails_for_a_broken_config(tmp_path):
    """Proves the checks above can fail: a route naming a cluster that does not exist, and a missing cert."""
    config = envoy_config(EnvoySettings())
    route(config)["route"]["cluster"] = "no-such-cluster"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    assert validate(broken).returncode != 0
    missing = local_settings(tls_cert_file=tmp_path / "none.crt", tls_key_file=tmp_path / "none.key")
    assert validate(deploy_envoy(tmp_path / "no-cert.yaml", missing)).returncode != 0
    no_ca = EnvoySettings(gateway_ca_file=tmp_path / "none.pem")
    assert validate(deploy_envoy(tmp_path / "no-ca.yaml", no_ca)).returncode != 0
    (tmp_path / "empty.json").write_text("{}")
    no_keys = secured(tmp_path, jwt_jwks=str(tmp_path / "empty.json"))
    result = validate(deploy_envoy(tmp_path / "no-keys.yaml", no_keys))
    assert result.returncode != 0 and "jwks" in (result.stdout + result.stderr).lower()


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
    (limits,) = gateway["circuit_breakers"]["thresholds"]
    assert set(limits) == {"max_connections", "max_pending_requests", "max_requests", "retry_budget"}
    # a dead gateway's calls all need their retry at once, as they stop counting as in flight: a floor covers
    # them, and beyond it retries never outnumber the calls in flight
    assert limits["retry_budget"] == {"budget_percent": {"value": 100.0}, "min_retry_concurrency": 256}
    assert route(config)["route"]["cluster"] == "gateway"


def test_rest_goes_to_the_gateways_rest_port_as_grpc_goes_to_its_grpc_port():
    """One listener: content-type application/grpc to the gRPC port, everything else to the REST port (HTTP/1.1,
    uvicorn's protocol), each cluster balanced, limited, health-checked and ejected alike."""
    config = envoy_config(EnvoySettings())
    grpc_route, rest_route = routes(config)
    assert grpc_route["match"] == {"prefix": "/", "grpc": {}} and grpc_route["route"]["cluster"] == "gateway"
    assert rest_route["match"] == {"prefix": "/"} and rest_route["route"]["cluster"] == "gateway_rest"
    # the same retries (only of calls no gateway answered); no fixed timeout: the gateway's route timeout rules
    assert rest_route["route"]["retry_policy"] == grpc_route["route"]["retry_policy"]
    assert rest_route["route"]["timeout"] == "0s"
    grpc_cluster, rest = cluster(config), cluster(config, "gateway_rest")
    (lb,) = rest["load_assignment"]["endpoints"][0]["lb_endpoints"]
    port = GatewaySettings.model_fields["http_port"].default
    assert lb["endpoint"]["address"]["socket_address"] == {"address": "gateway", "port_value": port}
    options = rest["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert options["explicit_http_config"] == {"http_protocol_options": {}}
    (check,) = rest["health_checks"]
    assert check["http_health_check"] == {"path": "/v2/health/ready"}  # 400 while the gateway cannot serve
    assert check["no_traffic_interval"] == check["interval"]
    for same in ("type", "lb_policy", "least_request_lb_config", "outlier_detection", "circuit_breakers",
                 "common_lb_config"):  # fmt: skip
        assert rest[same] == grpc_cluster[same], same
    context = rest["transport_socket"]["typed_config"]
    assert context["sni"] == "gateway" and context["common_tls_context"]["alpn_protocols"] == ["http/1.1"]
    validation = context["common_tls_context"]["validation_context"]
    assert (
        validation
        == grpc_cluster["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
    )


def test_without_a_rest_port_the_edge_serves_grpc_only(tmp_path):
    settings = local_settings(gateway_http_port=None)
    config = envoy_config(settings)
    (only,) = routes(config)
    assert only["match"]["grpc"] == {}  # anything else: 404 at the edge
    assert list(clusters(config)) == ["gateway"]
    result = validate(deploy_envoy(tmp_path / "envoy.yaml", settings))
    assert result.returncode == 0, result.stdout + result.stderr


def test_gateway_pods_are_balanced_by_least_request_over_every_address_dns_gives():
    gateway = cluster(envoy_config(EnvoySettings()))
    assert gateway["type"] == "STRICT_DNS"  # every pod behind the headless Service
    assert gateway["lb_policy"] == "LEAST_REQUEST"
    assert gateway["least_request_lb_config"]["choice_count"] == 2
    assert gateway["health_checks"], "active health checks take a draining pod out first"


def test_outlier_detection_ejects_a_pod_for_its_own_failures_and_never_empties_the_pool():
    detection = cluster(envoy_config(EnvoySettings()))["outlier_detection"]
    assert detection["split_external_local_origin_errors"] is True
    assert detection["consecutive_local_origin_failure"] == 5
    assert detection["enforcing_consecutive_local_origin_failure"] == 100
    assert detection["consecutive_gateway_failure"] == 5  # 502-504: UNAVAILABLE, DEADLINE_EXCEEDED
    # a caller's errors (any other 5xx) and success-rate statistics eject nobody; Envoy's own field names
    assert detection["enforcing_consecutive_5xx"] == 0 and detection["enforcing_success_rate"] == 0
    assert not any("_5_xx" in key for key in detection)
    assert 0 < detection["max_ejection_percent"] <= 50
    assert detection["successful_active_health_check_uneject_host"] is True


def test_outlier_settings_reach_envoy_and_envoy_accepts_them(tmp_path):
    settings = local_settings(
        outlier_max_ejection_percent=34, outlier_base_ejection_s=3, least_request_choices=3
    )
    gateway = cluster(envoy_config(settings))
    assert gateway["outlier_detection"]["max_ejection_percent"] == 34
    assert gateway["outlier_detection"]["base_ejection_time"] == "3s"
    assert gateway["least_request_lb_config"]["choice_count"] == 3
    result = validate(deploy_envoy(tmp_path / "envoy.yaml", settings))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_callers_deadline_is_honoured_up_to_the_gateways_ceiling_and_none_is_invented():
    """grpc-timeout capped at the gateway's max_deadline_s; a call without one gets no stream timer, which Envoy
    would send on as a grpc-timeout in place of the gateway's own route timeout_ms."""
    action = route(envoy_config(EnvoySettings()))["route"]
    assert action["max_stream_duration"] == {
        "grpc_timeout_header_max": f"{GatewaySettings.model_fields['max_deadline_s'].default:g}s"
    }
    assert action["timeout"] == "0s"  # the router's fixed timeout, which ignored grpc-timeout, is off
    assert "per_try_timeout" not in action["retry_policy"]  # it would cut a caller's deadline short
    (listener,) = envoy_config(EnvoySettings())["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["stream_idle_timeout"] == "305s" and "common_http_protocol_options" not in hcm


def test_envoy_retries_only_calls_no_gateway_answered():
    """The gateway retries inside the mesh and answers UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED
    after its own retries and fallback: retrying those here would multiply an outage's load."""
    policy = route(envoy_config(EnvoySettings()))["route"]["retry_policy"]
    assert set(policy["retry_on"].split(",")) == {"connect-failure", "refused-stream", "reset"}
    assert policy["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    # LEAST_REQUEST favours a dead gateway (nothing in flight): enough picks that a retry avoids it
    assert int(policy["host_selection_retry_max_attempts"]) >= 10
    assert "retriable_status_codes" not in policy


def test_grpc_stats_count_each_method_the_gateway_serves_and_lump_the_rest():
    (stats, router) = http_filters(envoy_config(EnvoySettings()))
    assert (stats["name"], router["name"]) == ("envoy.filters.http.grpc_stats", "envoy.filters.http.router")
    config = stats["typed_config"]
    methods = {s["name"]: s["method_names"] for s in config["individual_method_stats_allowlist"]["services"]}
    assert methods["meshserve.gateway.v1.PredictionService"] == ["Predict"]
    assert {"ModelInfer", "ModelMetadata", "ServerReady"} <= set(methods["inference.GRPCInferenceService"])
    assert methods["grpc.health.v1.Health"] == ["Check", "Watch"]
    # an allowlist, never stats_for_all_methods: a caller inventing paths must not grow Envoy's stats
    assert "stats_for_all_methods" not in config and config["enable_upstream_stats"] is True
    assert "emit_filter_state" not in config
    assert (
        http_filters(envoy_config(EnvoySettings(grpc_stats=False)))[0]["name"] == "envoy.filters.http.router"
    )


@pytest.mark.parametrize(
    "stat",
    [
        "cluster.gateway.grpc.meshserve.gateway.v1.PredictionService.Predict.success",
        "cluster.gateway.grpc.inference.GRPCInferenceService.ModelInfer.upstream_rq_time",
        "cluster.gateway.grpc.grpc.health.v1.Health.Check.14",
    ],
)
def test_grpc_stats_are_labelled_by_whole_service_and_method(stat):
    """Envoy's regexes (ECMAScript, which Python's `re` reads alike for these) on the names grpc_stats makes."""
    stats_config = envoy_config(EnvoySettings())["stats_config"]
    tags = {t["tag_name"]: re.match(t["regex"], stat) for t in stats_config["stats_tags"]}
    service, method = stat.split(".grpc.", 1)[1].rsplit(".", 2)[:2]
    assert tags["grpc_service"].group(2) == service and tags["grpc_method"].group(2) == method
    # the unlabelled rest, cluster.gateway.grpc.success for paths outside the allowlist, matches neither
    assert not any(re.match(t["regex"], "cluster.gateway.grpc.success") for t in stats_config["stats_tags"])


def test_cli_writes_the_file_and_refuses_a_bad_setting_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from meshserve.cli.app import app

    out = tmp_path / "envoy.yaml"
    ok = CliRunner().invoke(
        app, ["deploy", "envoy", "--out", str(out), "--tracing-otlp-endpoint", "http://jaeger:4317"]
    )
    assert ok.exit_code == 0 and "otlp" in out.read_text()
    bad = CliRunner().invoke(
        app, ["deploy", "envoy", "--out", str(out), "--tracing-otlp-endpoint", "jaeger:4317"]
    )
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert "--tracing-otlp-endpoint: expected an http(s) URL" in bad.output  # the flag the user typed


def test_a_metrics_listener_reaches_only_the_admin_apis_prometheus_page(tmp_path):
    settings = local_settings(metrics_port=9902)
    config = envoy_config(settings)
    edge, metrics = config["static_resources"]["listeners"]
    assert metrics["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9902}
    manager = metrics["filter_chains"][0]["filters"][0]["typed_config"]
    (only,) = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert only == {"match": {"path": "/stats/prometheus"}, "route": {"cluster": "envoy_admin"}}
    admin = config["static_resources"]["clusters"][-1]
    (lb,) = admin["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert lb["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    # off by default: the committed file keeps one listener, and its admin API stays private
    assert len(envoy_config(EnvoySettings())["static_resources"]["listeners"]) == 1
    result = validate(deploy_envoy(tmp_path / "envoy.yaml", settings))
    assert result.returncode == 0, result.stdout + result.stderr


def test_tracing_is_off_unless_a_collector_is_named():
    """The committed file (compose, and its Kubernetes copy) has the gateway's two ports as upstreams only."""
    config = envoy_config(EnvoySettings())
    (listener,) = config["static_resources"]["listeners"]
    assert "tracing" not in listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert [c["name"] for c in config["static_resources"]["clusters"]] == ["gateway", "gateway_rest"]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_tracing_exports_otlp_to_the_collector_and_envoy_accepts_it(tmp_path, protocol):
    settings = local_settings(tracing_otlp_endpoint="http://jaeger:4317", tracing_otlp_protocol=protocol)
    config = envoy_config(settings)
    (listener,) = config["static_resources"]["listeners"]
    tracing = listener["filter_chains"][0]["filters"][0]["typed_config"]["tracing"]
    assert tracing["provider"]["name"] == "envoy.tracers.opentelemetry"
    assert tracing["random_sampling"] == {"value": 100.0}
    tracer = tracing["provider"]["typed_config"]
    assert tracer["service_name"] == "envoy"
    if protocol == "grpc":
        assert tracer["grpc_service"]["envoy_grpc"] == {"cluster_name": "otlp"}
    else:
        assert tracer["http_service"]["http_uri"]["uri"] == "http://jaeger:4317/v1/traces"
    otlp = cluster(config, "otlp")
    (lb,) = otlp["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert lb["endpoint"]["address"]["socket_address"] == {"address": "jaeger", "port_value": 4317}
    assert ("typed_extension_protocol_options" in otlp) == (protocol == "grpc")  # OTLP/gRPC is HTTP/2
    result = validate(deploy_envoy(tmp_path / "envoy.yaml", settings))
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_https_collector_is_verified_by_name(tmp_path):
    cert, _ = self_signed(tmp_path)
    settings = local_settings(tracing_otlp_endpoint="https://otel.example.com", jwt_jwks_ca_file=cert)
    otlp = cluster(envoy_config(settings), "otlp")
    assert otlp["transport_socket"]["typed_config"]["sni"] == "otel.example.com"
    lb = otlp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert lb["endpoint"]["address"]["socket_address"]["port_value"] == 443
    result = validate(deploy_envoy(tmp_path / "envoy.yaml", settings))
    assert result.returncode == 0, result.stdout + result.stderr


def test_by_default_the_hop_to_the_gateway_is_tls_verified_by_name_without_a_client_certificate():
    """The gateway would take the edge's certificate for the caller: no identity of its own unless asked."""
    socket = cluster(envoy_config(EnvoySettings()))["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    context = socket["typed_config"]
    assert context["@type"].endswith("tls.v3.UpstreamTlsContext") and context["sni"] == "gateway"
    common = context["common_tls_context"]
    assert common["validation_context"]["trusted_ca"] == {"filename": f"{CERTS_DIR}/ca.pem"}
    assert common["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "gateway"}}
    ]
    assert common["alpn_protocols"] == ["h2"] and "tls_certificates" not in common
    assert [f["name"] for f in http_filters(envoy_config(EnvoySettings()))] == [
        "envoy.filters.http.grpc_stats",
        "envoy.filters.http.router",
    ]


def test_tls_mtls_and_jwt_authn_together_are_accepted_by_envoy(tmp_path):
    settings = secured(tmp_path)
    config = envoy_config(settings)
    (listener,) = config["static_resources"]["listeners"]
    downstream = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert downstream["tls_certificates"] == [
        {
            "certificate_chain": {"filename": str(settings.tls_cert_file)},
            "private_key": {"filename": str(settings.tls_key_file)},
        }
    ]
    upstream = cluster(config)["transport_socket"]["typed_config"]["common_tls_context"]
    assert upstream["tls_certificates"][0]["certificate_chain"] == {
        "filename": str(settings.gateway_cert_file)
    }
    stats, jwt, router = http_filters(config)  # stats first: calls jwt_authn refuses are counted too
    assert [f["name"] for f in (stats, jwt, router)] == [
        "envoy.filters.http.grpc_stats",
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.router",
    ]
    (provider,) = jwt["typed_config"]["providers"].values()
    assert provider["issuer"] == "https://idp.example.com/" and provider["audiences"] == ["meshserve"]
    assert provider["local_jwks"] == {"filename": settings.jwt_jwks}
    # the token goes on to the gateway, which authenticates the caller from it; the payload is for logs
    assert provider["forward"] is True and provider["forward_payload_header"] == "x-jwt-payload"
    assert provider["clock_skew_seconds"] == 30
    health, live, ready, everything = jwt["typed_config"]["rules"]
    assert health == {"match": {"prefix": "/grpc.health.v1.Health/"}}  # probes carry no token
    assert (live, ready) == ({"match": {"path": "/v2/health/live"}}, {"match": {"path": "/v2/health/ready"}})
    assert everything == {"match": {"prefix": "/"}, "requires": {"provider_name": "meshserve"}}
    rest = cluster(config, "gateway_rest")["transport_socket"]["typed_config"]["common_tls_context"]
    assert rest["tls_certificates"] == upstream["tls_certificates"]  # REST goes over the same mTLS
    result = validate(deploy_envoy(tmp_path / "envoy.yaml", settings))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_remote_jwks_gets_its_own_verified_cluster(tmp_path):
    url = "https://idp.example.com/.well-known/jwks.json"
    settings = secured(tmp_path, jwt_jwks=url, jwt_jwks_ca_file=tmp_path / "ca.pem")
    config = envoy_config(settings)
    (provider,) = http_filters(config)[1]["typed_config"]["providers"].values()
    remote = provider["remote_jwks"]
    assert remote["http_uri"] == {"uri": url, "cluster": "jwks", "timeout": "5s"}
    assert remote["cache_duration"] == "300s" and "async_fetch" in remote
    jwks = cluster(config, "jwks")
    assert jwks["type"] == "LOGICAL_DNS"
    (lb,) = jwks["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert lb["endpoint"]["address"]["socket_address"] == {"address": "idp.example.com", "port_value": 443}
    assert jwks["transport_socket"]["typed_config"]["sni"] == "idp.example.com"
    result = validate(deploy_envoy(tmp_path / "envoy.yaml", settings))
    assert result.returncode == 0, result.stdout + result.stderr
    plain = cluster(envoy_config(secured(tmp_path, jwt_jwks="http://idp:8080/jwks")), "jwks")
    assert "transport_socket" not in plain
    assert plain["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ] == {"address": "idp", "port_value": 8080}


def test_local_variant_stays_on_loopback():
    config = envoy_config(local_settings(gateway_port=6000))
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["address"] == "127.0.0.1"
    (endpoint,) = cluster(config)["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 6000}
    (rest,) = cluster(config, "gateway_rest")["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert rest["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 50056}
    assert "transport_socket" not in cluster(config)  # `meshserve up` without --tls speaks plaintext


@pytest.mark.parametrize(
    "values",
    [
        {"tls_cert_file": "edge.crt"},
        {"gateway_cert_file": "client.pem"},
        {"gateway_cert_file": "c.pem", "gateway_key_file": "k.pem", "gateway_ca_file": None},
        {"jwt_issuer": "https://idp.example.com/"},
        {"jwt_jwks": "ftp://idp.example.com/jwks"},
        {"tracing_otlp_endpoint": "jaeger:4317"},
        {"tracing_otlp_protocol": "http/json"},
        {"max_grpc_timeout_s": 0},
        {"metrics_port": 9901},
        {"listen_port": 0},
    ],
)
def test_inconsistent_settings_are_refused(values):
    with pytest.raises(ValidationError):
        EnvoySettings(**values)


def test_the_benchmark_peer_is_a_plain_proxy_that_envoy_accepts(tmp_path):
    config = grpc_proxy_config(("127.0.0.1", 9000), ("127.0.0.1", 9001), ("127.0.0.1", 9002))
    upstream = cluster(config, "upstream")
    assert "health_checks" not in upstream and "circuit_breakers" not in upstream
    assert "retry_policy" not in route(config)["route"]
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    result = validate(path)
    assert result.returncode == 0, result.stderr
