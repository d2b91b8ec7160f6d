"""docker-compose.yml against the code it runs: no Docker needed, every check reads the file and our settings.

The settings classes are the contract: a MESHSERVE_* variable they do not know, a URL naming a service or port
that does not exist, or a service left listening on 127.0.0.1 would each start fine and fail only at run time.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic_settings import BaseSettings

from gateway.settings import GatewaySettings
from meshserve.core import healthcheck
from services.cache.settings import CacheSettings
from services.feature.settings import FeatureSettings
from services.inference.settings import InferenceSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"

# Our processes: compose service -> the settings class its `command` builds.
SETTINGS: dict[str, type[BaseSettings]] = {
    "feature": FeatureSettings,
    "cache": CacheSettings,
    "inference": InferenceSettings,
    "gateway": GatewaySettings,
}
TRITON_DEFAULT_PORTS = {"grpc": 8001, "http": 8000, "metrics": 8002}  # unless its command says otherwise


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


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
    raise AssertionError(f"no known port for service {name!r}")


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
            host, _, port = value.removeprefix("http://").rpartition(":")
            assert host in services, f"{name}: {variable}={value} names no service"
            assert port.isdigit() and int(port) == listening_port(host, services, monkeypatch), (
                f"{name}: {variable}={value}, but {host} listens on {listening_port(host, services, monkeypatch)}"
            )
            urls += 1
    assert urls >= 4  # the gateway's three dependencies and the inference service's Triton


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
            assert services[target].get("healthcheck", {}).get("test"), f"{target} has no healthcheck"
            assert how.get("condition") == "service_healthy", (
                f"{name} does not wait for {target} to be healthy"
            )


def test_start_up_order(services):
    def waits_for(name: str) -> set[str]:
        return set(services[name].get("depends_on", {}))

    assert "triton" in waits_for("inference")
    assert {"feature", "cache", "inference"} <= waits_for("gateway")


def test_healthchecks_ask_each_process_on_its_own_port(services, monkeypatch):
    for name in SETTINGS:
        port = load_settings(name, services, monkeypatch).port
        test = argv(services[name]["healthcheck"]["test"])
        assert test[0] == "CMD" and test[1:4] == ["python", "-m", "meshserve.core.healthcheck"], name
        assert test[4] in (f"127.0.0.1:{port}", f"localhost:{port}"), f"{name}: checks {test[4]}"
    triton = argv(services["triton"]["healthcheck"]["test"])
    assert f":{triton_port(services['triton'], 'http')}/v2/health/ready" in " ".join(triton)


# -- what reaches the outside -------------------------------------------------------------------------------
def test_gateway_is_published_on_50051(services, monkeypatch):
    published = set()
    for port in services["gateway"].get("ports", []):
        if isinstance(port, dict):
            published.add((int(port["published"]), int(port["target"])))
        else:
            *host, target = str(port).split(":")
            published.add((int(host[-1]) if host else None, int(target)))
    gateway_port = load_settings("gateway", services, monkeypatch).port
    assert (50051, gateway_port) in published


def test_triton_reserves_the_gpus(services):
    devices = services["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


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


@pytest.mark.parametrize(
    "args", [[], ["50051"], ["gateway:"], ["gateway:http"], ["gateway:70000"], ["h:1", "--timeout", "0"]]
)
def test_healthcheck_misuse_is_unhealthy_not_dockers_reserved_status(args, capsys):
    with pytest.raises(SystemExit) as exited:
        healthcheck.main(args)
    assert exited.value.code == 1
    assert "usage:" in capsys.readouterr().err
