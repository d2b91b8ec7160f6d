"""deploy/k8s against the code it runs, without a cluster and without kustomize.

The base and each overlay are rendered here by a small kustomize that knows only the features our
kustomization files use (and refuses any other), then validated against the Kubernetes schemas and checked
against our settings classes, docker-compose.yml and the files the ConfigMaps copy. Where `kubectl` is installed,
one more test asserts that its kustomize renders exactly what ours does, so the checks hold for the real output.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

from gateway.routing.routes import load_routes
from gateway.settings import GatewaySettings
from meshserve.feature.registry import load_registry
from services.cache.settings import CacheSettings
from services.feature.settings import FeatureSettings
from services.inference.settings import InferenceSettings
from services.monitor.settings import MonitorSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
BUILDS = {"base": K8S / "base", "local": K8S / "overlays" / "local", "gpu": K8S / "overlays" / "gpu"}
ADAPTER_RULES = K8S / "monitoring" / "prometheus-adapter-rules.yaml"
NAMESPACE = "meshserve"
KUBERNETES_VERSION = (
    "1.30"  # the oldest we support: grpc probes are GA since 1.27, the preStop sleep since 1.30
)

# Deployment -> the settings class its `python -m` builds (the same names as in docker-compose.yml).
SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "feature": FeatureSettings,
    "cache": CacheSettings,
    "inference": InferenceSettings,
    "monitor": MonitorSettings,
}
# Copies kustomize may read (inside the kustomization root) -> the file each one must equal.
COPIES = {
    "base/envoy/envoy.yaml": "deploy/envoy/envoy.yaml",
    "base/config/routes.yaml": "meshserve/defaults/routes.yaml",
    "base/config/features.yaml": "meshserve/defaults/features.yaml",
}
NEED_DISRUPTION_BUDGETS = {"envoy", "gateway", "inference", "triton"}
TRITON_DEFAULTS = {
    "--http-port": 8000,
    "--grpc-port": 8001,
    "--metrics-port": 8002,
    "--exit-timeout-secs": 30,
}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"}
# cert-manager's kinds: kubernetes-validate has no schema for CRDs, so test_cert_manager_* check their structure.
CERT_MANAGER = "cert-manager.io/v1"
CERTS = Path("/certs")  # where every pod mounts its certificate Secret, as compose mounts the certs volume
# Who may open a connection to each gRPC port (NetworkPolicies), as Deployments; "*" = any pod in this
# namespace, "cluster" = any pod in any namespace, "outside" = addresses outside the cluster.
ANYONE = {"*", "cluster", "outside"}
REACHES = {
    ("envoy", 8080): ANYONE,
    ("gateway", 50051): ANYONE,
    ("gateway", 50056): ANYONE,
    ("gateway", 50055): {"*"},  # the admin API: this namespace only
    ("feature", 50052): {"gateway"},
    ("cache", 50053): {"gateway", "feature"},
    ("inference", 50054): {"gateway"},
    ("triton", 8001): {"inference"},
    ("triton", 8000): set(),  # HTTP without TLS: only the kubelet's probes
    ("redis", 6379): {"gateway", "feature", "cache"},  # the control store, and the services once they use it
    ("monitor", 50057): {"gateway"},  # the prediction log, labels, the judge's comparisons
    ("monitor-redis", 6379): {"monitor"},  # the monitor's store
}
REDIS = ("redis", "monitor-redis")  # Deployments of Redis: the control store, the monitor's store
METRICS_PORTS = {"envoy": None, "triton": 8002}  # others: 9464; Envoy's admin API stays on its loopback


# -- a small kustomize ---------------------------------------------------------------------------------------
KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "configMapGenerator",
    "patches",
    "replicas",
}
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name"}
MERGE_KEYS |= {"volumeMounts": "mountPath", "tolerations": None, "args": None, "command": None}


def inside(root: Path, relative: str) -> Path:
    """A file a kustomization names; like kustomize, refuse one outside its directory."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise PermissionError(f"{relative}: kustomize reads no file outside {root}")
    return path


def load_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes' strategic merge, as far as our patches need it: maps merge, null deletes, lists of named
    items merge by their key, other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if key.startswith("$"):
                raise NotImplementedError(f"patch directive {key} inside a resource")
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(merged[key], value, key) if key in merged else value
        return merged
    if isinstance(base, list) and isinstance(patch, list):
        key = MERGE_KEYS.get(field, "containerPort" if field == "ports" else None)
        if field == "ports" and not all("containerPort" in item for item in base + patch):
            key = "port"  # a Service's ports
        if key is None:
            return patch
        merged = list(base)
        for item in patch:
            at = [i for i, existing in enumerate(merged) if existing.get(key) == item.get(key)]
            if at:
                merged[at[0]] = strategic_merge(merged[at[0]], item)
            else:
                merged.append(item)
        return merged
    return patch


def api_group(api_version: str) -> str:
    return api_version.rpartition("/")[0]  # "apps/v1" -> "apps", "v1" -> "" (the core group)


def same_object(doc: dict, patch: dict) -> bool:
    """Whether `patch` targets `doc`: kustomize matches group, kind, name and (if the patch says) namespace."""
    return (
        doc["kind"] == patch["kind"]
        and api_group(doc["apiVersion"]) == api_group(patch["apiVersion"])
        and doc["metadata"]["name"] == patch["metadata"]["name"]
        and patch["metadata"].get("namespace", doc["metadata"].get("namespace"))
        == doc["metadata"].get("namespace")
    )


def kustomize(root: Path) -> list[dict]:
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    if unknown:
        raise NotImplementedError(f"{root}: this test's kustomize does not know {sorted(unknown)}")
    docs: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = (root / entry).resolve()
        docs += kustomize(path) if path.is_dir() else load_docs(inside(root, entry))
    for generator in kustomization.get("configMapGenerator", []):
        if set(generator) - {"name", "files"}:
            raise NotImplementedError(f"configMapGenerator {generator['name']}: only name and files")
        data = {}
        for spec in generator["files"]:
            key, _, relative = spec.rpartition("=")
            data[key or Path(relative).name] = inside(root, relative).read_text()
        docs.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
        )
    for entry in kustomization.get("patches", []):
        if set(entry) != {"path"}:
            raise NotImplementedError(f"patch {entry}: only `path` (a strategic-merge patch)")
        patch = yaml.safe_load(inside(root, entry["path"]).read_text())
        targets = [i for i, doc in enumerate(docs) if same_object(doc, patch)]
        assert len(targets) == 1, f"{root / entry['path']} matches {len(targets)} resources"
        if patch.get("$patch") == "delete":
            del docs[targets[0]]
        else:
            docs[targets[0]] = strategic_merge(docs[targets[0]], patch)
    for entry in kustomization.get("replicas", []):
        targets = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == entry["name"]]
        assert len(targets) == 1, f"{root}: replicas for {entry['name']}, which is no Deployment"
        targets[0]["spec"]["replicas"] = entry["count"]
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


def generator_names(root: Path) -> set[str]:
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    names = {g["name"] for g in kustomization.get("configMapGenerator", [])}
    for entry in kustomization.get("resources", []):
        if (root / entry).is_dir():
            names |= generator_names((root / entry).resolve())
    return names


# -- what a render holds -------------------------------------------------------------------------------------
class Render:
    def __init__(self, name: str, docs: list[dict]) -> None:
        self.name, self.docs = name, docs

    def of(self, kind: str) -> dict[str, dict]:
        found = {d["metadata"]["name"]: d for d in self.docs if d["kind"] == kind}
        assert len(found) == len([d for d in self.docs if d["kind"] == kind]), f"duplicate {kind} names"
        return found

    def deployment(self, name: str) -> dict:
        return self.of("Deployment")[name]

    def container(self, name: str) -> dict:
        (container,) = [
            c for c in self.deployment(name)["spec"]["template"]["spec"]["containers"] if c["name"] == name
        ]
        return container

    def selected(self, selector: dict[str, str]) -> list[str]:
        """The Deployments whose pods carry every label of `selector`."""
        assert selector, "an empty selector selects every pod"
        return [
            name
            for name, d in self.of("Deployment").items()
            if selector.items() <= d["spec"]["template"]["metadata"].get("labels", {}).items()
        ]


@pytest.fixture(scope="module", params=list(BUILDS))
def render(request) -> Render:
    return Render(request.param, kustomize(BUILDS[request.param]))


@pytest.fixture(scope="module")
def overlays() -> dict[str, Render]:
    return {name: Render(name, kustomize(BUILDS[name])) for name in ("local", "gpu")}


@pytest.fixture(scope="module")
def compose() -> dict[str, dict]:
    """docker-compose.yml with docker-compose.gpu.yml's Triton: the cluster runs NVIDIA's image, as that does."""
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    gpu = yaml.safe_load((REPO_ROOT / "docker-compose.gpu.yml").read_text())["services"]
    services["triton"] = {**services["triton"], **gpu["triton"]}
    return services


def environment(container: dict) -> dict[str, str]:
    env = {}
    for variable in container.get("env", []):
        assert "value" in variable, f"{variable['name']}: only literal values here"
        env[variable["name"]] = variable["value"]
    return env


def load_settings(deployment: str, render: Render) -> BaseSettings:
    """Build a service's settings from its container's environment alone, as its pod would."""
    env = environment(render.container(deployment))
    with pytest.MonkeyPatch.context() as patch:
        for variable in [v for v in os.environ if v.startswith("MESHSERVE_")]:
            patch.delenv(variable)
        for variable, value in env.items():
            patch.setenv(variable, value)
        return SETTINGS[deployment]()


def argv(container: dict) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def flag(args: list[str], name: str) -> int:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    return int(values[-1]) if values else TRITON_DEFAULTS[name]


def envoy_config() -> dict:
    return yaml.safe_load((K8S / "base" / "envoy" / "envoy.yaml").read_text())


def socket_addresses(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        if "socket_address" in node:
            yield node["socket_address"]
        for value in node.values():
            yield from socket_addresses(value)
    elif isinstance(node, list):
        for value in node:
            yield from socket_addresses(value)


def listening_port(name: str, render: Render) -> int:
    """The port the process of Deployment `name` serves on (gRPC; Redis's TLS port), by its own configuration."""
    if name in SETTINGS:
        return load_settings(name, render).port
    if name == "triton":
        return flag(argv(render.container("triton")), "--grpc-port")
    if name in REDIS:
        args = argv(render.container(name))
        return int(args[args.index("--tls-port") + 1])
    raise AssertionError(f"no known port for {name}")


def url_address(value: str) -> tuple[str, int]:
    """host and port of `host:port` or of a URL such as rediss://host:port/0."""
    if "://" in value:
        parts = urlsplit(value)
        assert parts.hostname and parts.port, value
        return parts.hostname, parts.port
    host, _, port = value.rpartition(":")
    return host, int(port)


def container_port(container: dict, port: int | str) -> int:
    """A port a probe or Service names, by number or name; it must be one the container declares."""
    declared = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if isinstance(port, str):
        assert port in declared, f"{container['name']}: no container port named {port!r}"
        return declared[port]
    assert port in declared.values(), f"{container['name']}: port {port} is not a declared container port"
    return port


def service_backend(render: Render, host: str, port: int) -> tuple[str, int]:
    """Follow `host:port` through a Service to (Deployment, container port)."""
    name, _, domain = host.partition(".")
    assert domain in ("", NAMESPACE, f"{NAMESPACE}.svc", f"{NAMESPACE}.svc.cluster.local"), f"{host}"
    assert name in render.of("Service"), f"{host}:{port} names no Service"
    service = render.of("Service")[name]
    ports = [p for p in service["spec"]["ports"] if p["port"] == port]
    assert ports, f"{host}:{port}: Service {name} has no port {port}"
    (deployment,) = render.selected(service["spec"]["selector"])
    return deployment, container_port(render.container(deployment), ports[0].get("targetPort", port))


QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
UNITS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
UNITS["Ti"] = 2**40


def quantity(value: str | int | float) -> float:
    match = QUANTITY.match(str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match.group(1)) * UNITS[match.group(2)]


# -- the renders are valid Kubernetes ------------------------------------------------------------------------
def test_every_object_validates_against_the_kubernetes_schema(render):
    for doc in render.docs:
        if doc["apiVersion"] == CERT_MANAGER:
            continue  # a CRD: checked by test_cert_manager_objects_have_the_structure_cert_manager_reads
        kubernetes_validate.validate(doc, desired_version=KUBERNETES_VERSION, strict=True)


def test_every_namespaced_object_lands_in_the_meshserve_namespace(render):
    assert render.of("Namespace").keys() == {NAMESPACE}
    for doc in render.docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def test_the_mesh_is_all_there(render):
    assert render.of("Deployment").keys() == {"envoy", "triton", *REDIS, *SETTINGS}
    assert render.of("Service").keys() == {"envoy", "triton", *REDIS, *SETTINGS}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its kustomize) is not installed")
@pytest.mark.parametrize("build", list(BUILDS))
def test_kubectl_kustomize_renders_what_this_test_checks(build):
    out = subprocess.run(
        ["kubectl", "kustomize", str(BUILDS[build])], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    hashed = re.compile(rf"^({'|'.join(map(re.escape, generator_names(BUILDS[build])))})-[a-z0-9]{{10}}$")

    def unhash(
        node: Any,
    ) -> Any:  # generated names carry a content hash that this test's kustomize leaves out
        if isinstance(node, dict):
            return {
                k: hashed.sub(r"\1", v) if k == "name" and isinstance(v, str) else unhash(v)
                for k, v in node.items()
            }
        return [unhash(v) for v in node] if isinstance(node, list) else node

    def by_identity(docs: list[dict]) -> dict[tuple[str, str], dict]:
        return {(d["kind"], d["metadata"]["name"]): d for d in docs}

    real = by_identity([unhash(d) for d in yaml.safe_load_all(out) if d])
    ours = by_identity(kustomize(BUILDS[build]))
    assert real.keys() == ours.keys()
    for identity, doc in ours.items():
        assert real[identity] == doc, identity


def test_this_kustomize_refuses_files_outside_the_kustomization(tmp_path):
    (tmp_path / "k").mkdir()
    (tmp_path / "envoy.yaml").write_text("admin: {}\n")
    (tmp_path / "k" / "kustomization.yaml").write_text(
        "configMapGenerator:\n  - name: envoy-config\n    files: [envoy.yaml=../envoy.yaml]\n"
    )
    with pytest.raises(PermissionError):
        kustomize(tmp_path / "k")


# -- the copies kustomize reads ------------------------------------------------------------------------------
@pytest.mark.parametrize("copy_path, source", list(COPIES.items()))
def test_each_configmap_copy_equals_its_source(copy_path, source):
    if not (REPO_ROOT / source).exists():
        pytest.skip(f"{source} does not exist yet; {copy_path} cannot be compared with it")
    assert (K8S / copy_path).read_text() == (REPO_ROOT / source).read_text(), (
        f"deploy/k8s/{copy_path} differs from {source}: cp {source} deploy/k8s/{copy_path}"
    )


def test_every_generated_configmap_file_is_a_checked_copy():
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    files = [spec.rpartition("=")[2] for g in kustomization["configMapGenerator"] for spec in g["files"]]
    for file in files:
        assert (K8S / "base" / file).is_file(), f"base/{file} is missing"
        assert f"base/{file}" in COPIES, (
            f"base/{file} is generated into a ConfigMap but compared with nothing"
        )


# -- our processes, as docker-compose.yml runs them ----------------------------------------------------------
# Compose runs Jaeger beside the mesh and publishes the admin API on the host; the cluster has neither, so
# tracing, the admin address and the audit log's path are the two stacks' own business.
# The admin token and API keys are files of the compose volumes there and Secrets you create here.
COMPOSE_ONLY = {"MESHSERVE_GATEWAY_ADMIN_HOST", "MESHSERVE_GATEWAY_ADMIN_PORT", "MESHSERVE_GATEWAY_AUDIT_LOG"}
COMPOSE_ONLY |= {"MESHSERVE_GATEWAY_ADMIN_TOKEN_FILE", "MESHSERVE_GATEWAY_AUTH_API_KEYS_FILE"}
# The monitor's store: SQLite on a volume of one machine there, its own Redis here (MESHSERVE_MONITOR_REDIS_URL).
COMPOSE_ONLY |= {"MESHSERVE_MONITOR_STORE_PATH"}


def _without_tracing(command: list[str]) -> list[str]:
    return [arg for arg in command if not arg.startswith("--trace-config")]


def test_each_process_runs_the_command_and_image_compose_gives_it(render, compose):
    for name in [*SETTINGS, "triton"]:
        container = render.container(name)
        expected = _without_tracing(compose[name]["command"])
        assert argv(container) == expected, f"{name}: not the command of docker-compose.yml"
        assert container["image"] == compose[name]["image"], name
    for name, cls in SETTINGS.items():
        assert argv(render.container(name)) == ["python", "-m", cls.__module__.removesuffix(".settings")], (
            name
        )


def test_the_environment_compose_sets_is_set_here_too(render, compose):
    for name in SETTINGS:
        env = environment(render.container(name))
        for variable, value in compose[name].get("environment", {}).items():
            if variable.startswith("OTEL_") or variable in COMPOSE_ONLY:
                continue
            assert env.get(variable) == str(value), f"{name}: {variable} is {env.get(variable)!r} here"


def test_every_meshserve_variable_is_a_field_of_that_service_settings(render):
    for name in render.of("Deployment"):
        for container in render.deployment(name)["spec"]["template"]["spec"]["containers"]:
            for variable in environment(container):
                if not variable.startswith("MESHSERVE_"):
                    continue
                assert name in SETTINGS, f"{name} is not a meshserve process but sets {variable}"
                prefix = SETTINGS[name].model_config["env_prefix"]
                assert variable.startswith(prefix), f"{name}: {variable} lacks the prefix {prefix}"
                field = variable.removeprefix(prefix).lower()
                assert field in SETTINGS[name].model_fields, f"{name}: {variable} is no setting of {name}"


def test_our_services_accept_their_environment_and_listen_on_every_interface(render):
    for name in SETTINGS:
        settings = load_settings(name, render)  # raises on a value of the wrong type
        assert settings.host == "0.0.0.0", f"{name} would be unreachable from other pods"
        assert settings.port != 0, f"{name} needs a fixed port"
        assert settings.port in {p["containerPort"] for p in render.container(name)["ports"]}, name


def test_every_url_names_a_service_that_reaches_the_port_its_process_serves(render):
    urls = 0
    for name in SETTINGS:
        for variable, value in environment(render.container(name)).items():
            if variable.endswith("_URL"):
                deployment, target = service_backend(render, *url_address(value))
                assert target == listening_port(deployment, render), f"{name}: {variable}={value}"
                urls += 1
    assert urls >= 6  # the gateway's four dependencies, the inference service's Triton, the monitor's Redis


def test_our_services_metrics_are_declared_and_announced_for_scraping(render):
    for name in SETTINGS:
        metrics_port = getattr(load_settings(name, render), "metrics_port", None)
        assert metrics_port, f"{name}: no metrics port, so Prometheus has nothing to scrape"
        assert container_port(render.container(name), "metrics") == metrics_port, name
        annotations = render.deployment(name)["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert annotations.get("prometheus.io/port") == str(metrics_port), name


def test_configured_files_are_mounted_from_a_configmap_and_load(render, tmp_path):
    loaders = {"ROUTES_PATH": load_routes, "REGISTRY_PATH": load_registry}
    checked = 0
    for name in SETTINGS:
        pod = render.deployment(name)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for variable, value in environment(render.container(name)).items():
            suffix = variable.removeprefix(SETTINGS[name].model_config["env_prefix"])
            if suffix not in loaders:
                continue
            path = Path(value)
            mounts = [
                m for m in render.container(name)["volumeMounts"] if Path(m["mountPath"]) == path.parent
            ]
            assert mounts, f"{name}: nothing is mounted at {path.parent} for {variable}"
            configmap = volumes[mounts[0]["name"]].get("configMap")
            assert configmap, f"{name}: {path.parent} is not a ConfigMap"
            data = render.of("ConfigMap")[configmap["name"]]["data"]
            assert path.name in data, f"{name}: ConfigMap {configmap['name']} has no {path.name}"
            (tmp_path / path.name).write_text(data[path.name])
            loaders[suffix](tmp_path / path.name)  # the service's own loader accepts it
            checked += 1
    assert checked >= 4  # the gateway's routes and registry, the feature service's and the monitor's registry


def test_files_our_services_write_are_on_writable_volumes(render):
    for name in SETTINGS:
        settings = load_settings(name, render)
        fields = ["audit_log", "db_path"]
        if getattr(settings, "redis_url", None) is None:  # the monitor's SQLite file, where it has no Redis
            fields.append("store_path")
        for field in fields:
            value = getattr(settings, field, None)
            if value is None or str(value) == ":memory:":
                continue
            path = Path(value)
            assert path.is_absolute(), f"{name}: {field}={value} is relative to a read-only working directory"
            writable = [
                m
                for m in render.container(name).get("volumeMounts", [])
                if path.is_relative_to(m["mountPath"]) and not m.get("readOnly")
            ]
            assert writable, f"{name}: {field}={value} is on the read-only root filesystem"


# -- health, probes, shutdown --------------------------------------------------------------------------------
def probed_port(probe: dict) -> int | str:
    """The port a probe asks: its handler's, or the HOST:PORT our healthcheck command is given."""
    for handler in ("grpc", "httpGet", "tcpSocket"):
        if handler in probe:
            return probe[handler]["port"]
    command = probe["exec"]["command"]
    assert command[:3] == ["python", "-m", "meshserve.core.healthcheck"], command
    host, _, port = command[3].rpartition(":")
    assert host in ("127.0.0.1", "localhost"), f"{command[3]}: a probe asks its own pod"
    return int(port)


def test_every_probe_port_is_a_declared_container_port(render):
    probes = 0
    for name in render.of("Deployment"):
        for container in render.deployment(name)["spec"]["template"]["spec"]["containers"]:
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if container.get(kind):
                    container_port(container, probed_port(container[kind]))
                    probes += 1
    assert probes >= 14


def test_our_services_are_probed_through_grpc_health_on_their_port(render):
    for name in SETTINGS:
        container, settings = render.container(name), load_settings(name, render)
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probed_port(container[kind]) == settings.port, f"{name}: {kind}"
            if settings.tls_cert_file is not None:
                # the kubelet's own gRPC probe speaks no TLS: our healthcheck, with the pod's certificate
                command = container[kind]["exec"]["command"]
                assert f"--ca={settings.tls_ca_file}" in command, f"{name}: {kind}"
                assert f"--cert={settings.tls_cert_file}" in command, f"{name}: {kind}"
                assert f"--key={settings.tls_key_file}" in command, f"{name}: {kind}"
                assert container[kind].get("timeoutSeconds", 1) >= 3, f"{name}: a Python start takes time"
        # NOT_SERVING until the dependencies are; the process gives up by itself after dependency_timeout_s,
        # and liveness must not kill it sooner.
        startup = container["startupProbe"]
        budget = startup.get("initialDelaySeconds", 0) + startup.get("periodSeconds", 10) * startup.get(
            "failureThreshold", 3
        )
        assert budget > settings.dependency_timeout_s, f"{name}: startup gives up after {budget}s"


def test_triton_is_ready_only_when_its_models_are(render):
    container = render.container("triton")
    http = flag(argv(container), "--http-port")
    readiness = container["readinessProbe"]
    if "grpc" in readiness:
        assert container_port(container, readiness["grpc"]["port"]) == flag(argv(container), "--grpc-port")
    else:
        assert readiness["httpGet"]["path"] == "/v2/health/ready"
        assert container_port(container, readiness["httpGet"]["port"]) == http
    assert "--strict-readiness=true" in argv(container)


def test_termination_grace_outlasts_prestop_and_drain(render):
    for name in [*SETTINGS, "triton"]:
        pod = render.deployment(name)["spec"]["template"]["spec"]
        pre_stop = (
            render.container(name).get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        )
        if name in SETTINGS:
            drain = load_settings(name, render).grace_s
        else:
            drain = flag(argv(render.container(name)), "--exit-timeout-secs")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        assert grace > pre_stop + drain, f"{name}: SIGKILL after {grace}s cuts {pre_stop}s + {drain}s short"


# -- security and resources ----------------------------------------------------------------------------------
def test_our_services_run_as_the_image_user_without_privileges(render):
    uid = int(re.search(r"--uid (\d+)", (REPO_ROOT / "Dockerfile").read_text()).group(1))
    for name in [*SETTINGS, "envoy"]:
        pod = render.deployment(name)["spec"]["template"]["spec"]
        security = {**pod.get("securityContext", {}), **render.container(name).get("securityContext", {})}
        assert security.get("runAsNonRoot") is True, name
        if name in SETTINGS:
            assert security.get("runAsUser") == uid, f"{name}: not the Dockerfile's user {uid}"
        assert security.get("allowPrivilegeEscalation") is False, name
        assert security.get("readOnlyRootFilesystem") is True, name
        assert "ALL" in security.get("capabilities", {}).get("drop", []), name


def test_every_container_has_requests_within_limits(render):
    for name, deployment in render.of("Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            resources = container.get("resources", {})
            for resource in ("cpu", "memory"):
                request = resources.get("requests", {}).get(resource)
                limit = resources.get("limits", {}).get(resource)
                assert request is not None and limit is not None, f"{name}: {resource} request and limit"
                assert quantity(request) <= quantity(limit), f"{name}: {resource} {request} > {limit}"


def test_the_gateway_admin_api_is_closed_to_other_pods(render):
    settings, container = load_settings("gateway", render), render.container("gateway")
    for name, service in render.of("Service").items():  # no Service leads to it, whatever it binds to
        if render.selected(service["spec"]["selector"]) == ["gateway"]:
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                assert container_port(container, target) != settings.admin_port, f"Service {name}"
    if settings.admin_host in ("127.0.0.1", "localhost"):  # only `kubectl port-forward` reaches it
        return
    graph = PolicyGraph(render)
    assert graph.who_reaches("gateway", settings.admin_port) == {"*"}, "only pods of this namespace"
    assert settings.admin_token_file is not None, "the admin API must require a credential"


# -- Services, disruption budgets, the autoscaler ------------------------------------------------------------
def test_deployment_selectors_match_their_own_pods(render):
    for name, deployment in render.of("Deployment").items():
        assert render.selected(deployment["spec"]["selector"]["matchLabels"]) == [name]


def test_every_service_selects_one_deployment_on_declared_ports(render):
    for name, service in render.of("Service").items():
        selected = render.selected(service["spec"]["selector"])
        assert len(selected) == 1, f"Service {name} selects {selected}"
        containers = render.deployment(selected[0])["spec"]["template"]["spec"]["containers"]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(
                target
                in [p.get("name") for p in c.get("ports", [])]
                + [p["containerPort"] for p in c.get("ports", [])]
                for c in containers
            ), f"Service {name}: targetPort {target} is no container port of {selected[0]}"


def test_disruption_budgets_cover_the_serving_path_and_allow_a_drain(render):
    covered = set()
    for name, budget in render.of("PodDisruptionBudget").items():
        selected = render.selected(budget["spec"]["selector"]["matchLabels"])
        assert len(selected) == 1, f"PodDisruptionBudget {name} selects {selected}"
        covered.add(selected[0])
        replicas = render.deployment(selected[0])["spec"].get("replicas", 1)
        if "minAvailable" in budget["spec"]:
            assert budget["spec"]["minAvailable"] < replicas, f"{name}: no pod may ever be evicted"
        else:
            assert budget["spec"]["maxUnavailable"] >= 1, f"{name}: no pod may ever be evicted"
    assert NEED_DISRUPTION_BUDGETS <= covered


def test_triton_serves_the_model_repository_claim_read_only(render):
    container = render.container("triton")
    repository = [a.split("=", 1)[1] for a in argv(container) if a.startswith("--model-repository=")]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == repository[0]]
    assert mount.get("readOnly") is True
    volumes = {v["name"]: v for v in render.deployment("triton")["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim in render.of("PersistentVolumeClaim")
    shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert shm and volumes[shm[0]["name"]]["emptyDir"]["medium"] == "Memory", (
        "the python backend needs /dev/shm"
    )


def adapter_rules() -> list[dict]:
    (configmap,) = load_docs(ADAPTER_RULES)
    kubernetes_validate.validate(configmap, desired_version=KUBERNETES_VERSION, strict=True)
    return yaml.safe_load(configmap["data"]["config.yaml"])["rules"]


def test_triton_autoscales_on_the_metric_the_adapter_rule_provides(render):
    autoscalers = render.of("HorizontalPodAutoscaler")
    if render.name == "local":
        assert not autoscalers
        return
    autoscaler = autoscalers["triton"]
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] in render.of("Deployment")
    assert "replicas" not in render.deployment(target["name"])["spec"], "the autoscaler owns the replicas"
    assert 1 <= autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["type"] == "Pods"
    provided = {rule["name"]["as"]: rule for rule in adapter_rules()}
    rule = provided[metric["pods"]["metric"]["name"]]
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"]
    for needed in ("nv_inference_queue_duration_us", "nv_inference_request_success", "<<.LabelMatchers>>"):
        assert needed in rule["metricsQuery"], needed
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}  # a per-pod metric, as `Pods` needs
    # Prometheus must scrape what the rule reads: Triton's metrics port, as its pods announce it.
    annotations = render.deployment(target["name"])["spec"]["template"]["metadata"]["annotations"]
    scraped = container_port(render.container("triton"), int(annotations["prometheus.io/port"]))
    assert scraped == flag(argv(render.container("triton")), "--metrics-port")


def test_gateway_pods_scale_on_cpu_and_spread_over_nodes(render):
    gateway = render.deployment("gateway")
    if render.name == "local":  # one node, maybe no metrics-server: one pod, no autoscaler
        assert "gateway" not in render.of("HorizontalPodAutoscaler") and gateway["spec"]["replicas"] == 1
        return
    autoscaler = render.of("HorizontalPodAutoscaler")["gateway"]
    spec = autoscaler["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert "replicas" not in gateway["spec"], "the autoscaler owns the replicas"
    assert 2 <= spec["minReplicas"] < spec["maxReplicas"]  # one pod can always be drained
    (metric,) = spec["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 90
    # utilisation is of the request: the container must ask for CPU
    assert render.container("gateway")["resources"]["requests"]["cpu"]
    (budget,) = [
        b for b in render.of("PodDisruptionBudget").values()
        if render.selected(b["spec"]["selector"]["matchLabels"]) == ["gateway"]
    ]  # fmt: skip
    assert (
        budget["spec"].get("maxUnavailable", 0) >= 1 or budget["spec"]["minAvailable"] < spec["minReplicas"]
    )
    (term,) = gateway["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()


def test_envoy_sees_every_gateway_pod_through_a_headless_service(render):
    service = render.of("Service")["gateway"]
    assert service["spec"]["clusterIP"] == "None"
    (gateway,) = [c for c in envoy_config()["static_resources"]["clusters"] if c["name"] == "gateway"]
    assert gateway["type"] == "STRICT_DNS" and gateway["lb_policy"] == "LEAST_REQUEST"
    assert gateway["outlier_detection"]["max_ejection_percent"] <= 50 and gateway["health_checks"]


# -- the Envoy edge ------------------------------------------------------------------------------------------
def test_envoy_mounts_its_config_and_declares_its_listeners(render):
    config, container = envoy_config(), render.container("envoy")
    listeners = {
        a["port_value"]
        for listener in config["static_resources"]["listeners"]
        for a in socket_addresses(listener)
    }
    assert listeners <= {p["containerPort"] for p in container["ports"]}, (
        "a listener without a container port"
    )
    config_path = Path(argv(container)[argv(container).index("-c") + 1])
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    volumes = {v["name"]: v for v in render.deployment("envoy")["spec"]["template"]["spec"]["volumes"]}
    assert config_path.name in render.of("ConfigMap")[volumes[mount["name"]]["configMap"]["name"]]["data"]


def test_envoy_upstreams_are_services_that_reach_the_gateway(render):
    """gRPC to the gateway's gRPC port, REST (the Open Inference Protocol over HTTP) to its REST port."""
    clusters = envoy_config()["static_resources"]["clusters"]
    gateway = load_settings("gateway", render)
    expected = {"gateway": gateway.port, "gateway_rest": gateway.http_port}
    assert {c["name"] for c in clusters} == set(expected) and gateway.http
    for cluster in clusters:
        upstreams = list(socket_addresses(cluster))
        assert upstreams
        for address in upstreams:
            deployment, port = service_backend(render, address["address"], address["port_value"])
            assert (deployment, port) == ("gateway", expected[cluster["name"]])
    # STRICT_DNS balances across the addresses DNS returns; only a headless Service returns every pod.
    if any(c.get("type") == "STRICT_DNS" for c in clusters):
        assert render.of("Service")["gateway"]["spec"].get("clusterIP") == "None"


# -- what each overlay changes -------------------------------------------------------------------------------
def gpus(container: dict) -> list:
    resources = container.get("resources", {})
    return [
        resources.get(kind, {}).get("nvidia.com/gpu")
        for kind in ("requests", "limits")
        if resources.get(kind, {}).get("nvidia.com/gpu")
    ]


def test_the_gpu_overlay_puts_triton_on_a_gpu_and_doubles_the_edge(overlays):
    gpu = overlays["gpu"]
    triton = gpu.deployment("triton")["spec"]["template"]["spec"]
    assert int(gpu.container("triton")["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert triton.get("nodeSelector") or triton.get("affinity"), "Triton may land on a node without a GPU"
    assert any(t.get("key") == "nvidia.com/gpu" for t in triton.get("tolerations", []))
    assert gpu.deployment("envoy")["spec"]["replicas"] >= 2
    assert gpu.of("HorizontalPodAutoscaler")["gateway"]["spec"]["minReplicas"] >= 2
    assert gpu.of("HorizontalPodAutoscaler")["triton"]["spec"]["minReplicas"] >= 2
    assert gpu.of("Service")["envoy"]["spec"].get("type") == "LoadBalancer"


def test_the_local_overlay_asks_for_no_gpu_and_one_replica_each(overlays):
    local = overlays["local"]
    for name, deployment in local.of("Deployment").items():
        assert deployment["spec"].get("replicas") == 1, name
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert not gpus(container), f"{name} asks for a GPU"
        assert "nodeSelector" not in deployment["spec"]["template"]["spec"], name
    assert "ReadOnlyMany" not in local.of("PersistentVolumeClaim")["triton-models"]["spec"]["accessModes"]


def test_the_base_stays_neutral_about_gpus():
    base = Render("base", kustomize(BUILDS["base"]))
    for deployment in base.of("Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert not gpus(container), deployment["metadata"]["name"]


def test_strategic_merge_merges_named_lists_and_replaces_others():
    base = {
        "containers": [{"name": "a", "resources": {"limits": {"cpu": "1"}}}],
        "tolerations": [{"key": "x"}],
    }
    patch = {
        "containers": [{"name": "a", "resources": {"limits": {"nvidia.com/gpu": 1}}}],
        "tolerations": [{"key": "y"}],
    }
    merged = strategic_merge(copy.deepcopy(base), patch)
    assert merged["containers"] == [{"name": "a", "resources": {"limits": {"cpu": "1", "nvidia.com/gpu": 1}}}]
    assert merged["tolerations"] == [{"key": "y"}]
    assert strategic_merge({"a": 1, "b": 2}, {"b": None}) == {"a": 1}


# -- security: certificates, mTLS and authentication on by default -------------------------------------------
def test_cert_manager_objects_have_the_structure_cert_manager_reads(render):
    issuers = {n: d for n, d in render.of("Issuer").items() if d["apiVersion"] == CERT_MANAGER}
    certificates = render.of("Certificate")
    assert issuers.keys() == {"meshserve-ca"}
    assert set(issuers["meshserve-ca"]["spec"]) == {"ca"}  # signs with the CA in a Secret you create
    assert set(issuers["meshserve-ca"]["spec"]["ca"]) == {"secretName"}
    known = {"secretName", "commonName", "dnsNames", "ipAddresses", "duration", "renewBefore", "privateKey"}
    known |= {"usages", "issuerRef"}
    usages = {"digital signature", "key encipherment", "server auth", "client auth"}  # cert-manager's names
    for name, certificate in certificates.items():
        assert certificate["apiVersion"] == CERT_MANAGER, name
        spec = certificate["spec"]
        assert set(spec) <= known and {"secretName", "dnsNames", "issuerRef"} <= set(spec), name
        assert spec["issuerRef"] == {"name": "meshserve-ca", "kind": "Issuer", "group": "cert-manager.io"}
        assert all(isinstance(n, str) and n for n in spec["dnsNames"]), name
        assert set(spec["usages"]) <= usages and {"server auth", "client auth"} <= set(spec["usages"]), name
        assert spec["privateKey"]["algorithm"] in ("ECDSA", "RSA", "Ed25519"), name
        for field in ("duration", "renewBefore"):
            assert re.fullmatch(r"\d+h", spec[field]), f"{name}: {field}={spec[field]}"
        assert int(spec["renewBefore"][:-1]) < int(spec["duration"][:-1]), name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", spec["secretName"]), name


def certs_volume(render: Render, name: str) -> dict:
    """The Secret volume a Deployment mounts at /certs."""
    container = render.container(name)
    (mount,) = [m for m in container.get("volumeMounts", []) if Path(m["mountPath"]) == CERTS]
    assert mount.get("readOnly") is True and "subPath" not in mount, f"{name}: renewals must reach the pod"
    volumes = {v["name"]: v for v in render.deployment(name)["spec"]["template"]["spec"]["volumes"]}
    return volumes[mount["name"]]["secret"]


def test_every_process_gets_a_certificate_naming_itself_first_then_its_service(render):
    certificates = {c["spec"]["secretName"]: c for c in render.of("Certificate").values()}
    for name in [*SETTINGS, "triton", "envoy"]:
        secret = certs_volume(render, name)
        certificate = certificates[secret["secretName"]]
        dns = certificate["spec"]["dnsNames"]
        assert dns[0] == name, f"{name}: its identity (first DNS SAN) is {dns[0]}"
        assert certificate["spec"].get("commonName", name) == name
        service = f"{name}.{NAMESPACE}.svc"
        assert {name, f"{name}.{NAMESPACE}", service, f"{service}.cluster.local"} <= set(dns), name
        assert name in render.of("Service"), f"{name}: the certificate names a Service that does not exist"
        # its own probes ask 127.0.0.1, and verify the certificate they are answered with
        assert "127.0.0.1" in certificate["spec"].get("ipAddresses", []), name
        items = {i["key"]: i["path"] for i in secret["items"]}
        assert items == {"tls.crt": f"{name}.pem", "tls.key": f"{name}-key.pem", "ca.crt": "ca.pem"}, name
        pod = render.deployment(name)["spec"]["template"]["spec"]
        user = {**pod.get("securityContext", {}), **render.container(name).get("securityContext", {})}
        if user.get("runAsUser", 0) != 0:  # the key (0440) must be readable through the pod's group
            assert secret["defaultMode"] & 0o040 and pod["securityContext"].get("fsGroup"), name


def test_tls_settings_name_files_of_the_mounted_certificate(render):
    for name in SETTINGS:
        settings = load_settings(name, render)
        mounted = {CERTS / i["path"] for i in certs_volume(render, name)["items"]}
        for field in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
            assert getattr(settings, field) in mounted, f"{name}: {field}={getattr(settings, field)}"
    triton = argv(render.container("triton"))
    mounted = {str(CERTS / i["path"]) for i in certs_volume(render, "triton")["items"]}
    for option in ("--grpc-server-cert", "--grpc-server-key", "--grpc-root-cert"):
        (value,) = [a.split("=", 1)[1] for a in triton if a.startswith(f"{option}=")]
        assert value in mounted, f"triton: {option}={value}"
    assert "--grpc-use-ssl-mutual=true" in triton


def test_every_gateway_pod_shares_one_control_store_over_mtls(render):
    assert load_settings("gateway", render).control_store == "rediss://redis:6379/0"
    args = render.container("redis")["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags["--port"] == "0" and flags["--tls-port"] == "6379"  # no plaintext port at all
    assert flags["--tls-auth-clients"] == "yes" and flags["--tls-ca-cert-file"] == str(CERTS / "ca.pem")


def test_the_monitor_keeps_its_log_in_its_own_redis_on_disk_over_mtls(render):
    monitor = load_settings("monitor", render)
    assert monitor.redis_url == "rediss://monitor-redis:6379/0"  # TLS, with the monitor's certificate
    assert load_settings("gateway", render).monitor_url == f"monitor:{monitor.port}"
    args = argv(render.container("monitor-redis"))
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags["--port"] == "0" and flags["--tls-port"] == "6379"  # no plaintext port at all
    assert flags["--tls-auth-clients"] == "yes" and flags["--tls-ca-cert-file"] == str(CERTS / "ca.pem")
    assert (
        flags["--appendonly"] == "yes" and flags["--maxmemory-policy"] == "noeviction"
    )  # nothing dropped at random
    assert quantity(flags["--maxmemory"].replace("gb", "Gi").replace("mb", "Mi")) < quantity(
        render.container("monitor-redis")["resources"]["limits"]["memory"]
    )
    pod = render.deployment("monitor-redis")["spec"]
    (data,) = [
        m for m in render.container("monitor-redis")["volumeMounts"] if m["mountPath"] == flags["--dir"]
    ]
    volumes = {v["name"]: v for v in pod["template"]["spec"]["volumes"]}
    claim = volumes[data["name"]]["persistentVolumeClaim"]["claimName"]  # the log outlives the pod
    assert "ReadWriteOnce" in render.of("PersistentVolumeClaim")[claim]["spec"]["accessModes"]
    assert pod["strategy"]["type"] == "Recreate" and pod.get("replicas", 1) == 1
    certificates = {c["spec"]["secretName"]: c for c in render.of("Certificate").values()}
    secret = volumes["certs"]["secret"]["secretName"]
    assert certificates[secret]["spec"]["dnsNames"][0] == "monitor-redis"
    assert render.deployment("monitor")["spec"].get("replicas", 1) == 1, "one pod exports each quality gauge"


def test_mtls_and_authentication_are_on_by_default(render):
    callers = {"feature": {"gateway"}, "cache": {"gateway", "feature"}, "inference": {"gateway"},
               "monitor": {"gateway"}}  # fmt: skip
    for name, calling in callers.items():
        settings = load_settings(name, render)
        assert settings.tls_client_auth is True, name
        assert set(settings.tls_allowed_peers) == {*calling, "admin", name}, name
    assert load_settings("inference", render).triton_tls_name == "triton"
    gateway = load_settings("gateway", render)
    assert gateway.auth_required is True and gateway.tls_cert_file is not None
    for path in (gateway.admin_token_file, gateway.auth_api_keys_file):
        assert path is not None
        (mount,) = [
            m for m in render.container("gateway")["volumeMounts"] if Path(m["mountPath"]) == path.parent
        ]
        volumes = {v["name"]: v for v in render.deployment("gateway")["spec"]["template"]["spec"]["volumes"]}
        assert "secret" in volumes[mount["name"]] and mount.get("readOnly") is True, path
    volumes = {v["name"]: v for v in render.deployment("gateway")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["admin-token"]["secret"].get("optional") is not True, "no gateway without an admin token"


def test_envoy_verifies_the_gateway_with_the_ca_it_mounts():
    for gateway in envoy_config()["static_resources"]["clusters"]:  # its gRPC and REST ports alike
        context = gateway["transport_socket"]["typed_config"]
        assert context["sni"] == "gateway"
        assert context["common_tls_context"]["validation_context"]["trusted_ca"]["filename"] == str(
            CERTS / "ca.pem"
        )


class PolicyGraph:
    """Who may open a connection to a pod's port, from the NetworkPolicies alone (Kubernetes' semantics: a pod
    selected by no Ingress policy admits everyone; once selected, the union of its policies' rules)."""

    SOURCES = ("*", "cluster", "outside")

    def __init__(self, render: Render) -> None:
        self.render = render
        self.policies = [
            p
            for p in render.of("NetworkPolicy").values()
            if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        ]
        self.labels = {
            name: d["spec"]["template"]["metadata"]["labels"] for name, d in render.of("Deployment").items()
        }
        self.labels.setdefault("redis", {"app.kubernetes.io/name": "redis"})  # a Redis you may add

    @staticmethod
    def _selects(selector: dict, labels: dict[str, str]) -> bool:
        assert set(selector) <= {"matchLabels"}, f"selector {selector}: only matchLabels here"
        return selector.get("matchLabels", {}).items() <= labels.items()

    def _admits(self, peer: dict, source: str) -> bool:
        """Whether one `from` entry admits `source` (a Deployment of this namespace, or a SOURCES name)."""
        assert set(peer) <= {"podSelector", "namespaceSelector"}, f"peer {peer}: no ipBlock expected"
        if "namespaceSelector" in peer:
            # only an empty one is used: every namespace (this one included), but no address outside
            assert peer["namespaceSelector"] == {} and "podSelector" not in peer, peer
            return source != "outside"
        if source in ("cluster", "outside"):
            return False
        selector = peer["podSelector"]
        return selector == {} or (source != "*" and self._selects(selector, self.labels[source]))

    def who_reaches(self, target: str, port: int) -> set[str]:
        selecting = [p for p in self.policies if self._selects(p["spec"]["podSelector"], self.labels[target])]
        sources = [*self.labels, *self.SOURCES]
        if not selecting:
            return set(sources)
        admitted = set()
        for policy in selecting:
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("ports"), (
                    f"{policy['metadata']['name']}: a rule without ports admits every port"
                )
                if not any(p["port"] == port and p.get("protocol", "TCP") == "TCP" for p in rule["ports"]):
                    continue
                peers = rule.get("from")
                admitted |= (
                    set(sources)
                    if peers is None
                    else {s for s in sources if any(self._admits(peer, s) for peer in peers)}
                )
        # a rule admitting any pod of this namespace admits each Deployment: report it once, as "*"
        if "*" in admitted:
            admitted -= set(self.labels)
        return admitted


def test_network_policies_admit_exactly_the_mesh_hops(render):
    graph = PolicyGraph(render)
    for (target, port), expected in REACHES.items():
        assert graph.who_reaches(target, port) == expected, f"{target}:{port}"
    # and no other port of our pods is open: each declared container port is either a hop above or metrics
    for name in render.of("Deployment"):
        for declared in render.container(name).get("ports", []):
            port = declared["containerPort"]
            if (name, port) in REACHES:
                continue
            metrics = METRICS_PORTS.get(name, 9464)
            assert port == metrics, f"{name}:{port} is declared but no hop of the mesh"
            assert graph.who_reaches(name, port) == {"*", "cluster"}, f"{name}:{port}: metrics, in-cluster"


def test_every_pod_is_under_a_default_deny(render):
    (deny,) = [
        p
        for p in render.of("NetworkPolicy").values()
        if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
    ]
    assert deny["spec"]["policyTypes"] == ["Ingress"]
    graph = PolicyGraph(render)
    assert graph.who_reaches("feature", 12345) == set(), "a port no policy names must be closed"


def test_the_urls_each_process_calls_are_hops_the_policies_admit(render):
    """The policy graph and the settings agree: every _URL a process is given is a connection it may open."""
    graph = PolicyGraph(render)
    for name in SETTINGS:
        for variable, value in environment(render.container(name)).items():
            if variable.endswith("_URL"):
                target, target_port = service_backend(render, *url_address(value))
                admitted = graph.who_reaches(target, target_port)
                assert name in admitted or "*" in admitted, f"{name} -> {target}:{target_port} is blocked"
    for gateway in envoy_config()["static_resources"][
        "clusters"
    ]:  # Envoy reaches the gateway's gRPC and REST
        address = next(socket_addresses(gateway))
        target, port = service_backend(render, address["address"], address["port_value"])
        assert "*" in PolicyGraph(render).who_reaches(target, port)
