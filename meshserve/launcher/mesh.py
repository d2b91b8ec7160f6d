"""The whole mesh on one machine: Triton, the feature, cache, inference and monitor services and the gateway, as
supervised child processes.

`meshserve up` and the integration tests start it the same way, so the tests exercise what users run. Once every
process is healthy, one that exits without being asked to is restarted with backoff (`Supervisor`); `wait()`
returns when one keeps crashing.

Triton serves one repository prepared in the run directory from the configured ones (meshserve.launcher.repository), so
ONNX models run on the bundled Triton too. The embedded routes name the sample model; serving other repositories
without a routes file gives the gateway an empty table, and it serves each model under its own name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import grpc
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from tritonclient.grpc import service_pb2

from meshserve.core.channels import open_channel, wait_until_serving
from meshserve.core.process import ChildProcess, free_ports
from meshserve.core.restart_policy import RestartPolicy
from meshserve.core.supervision import ChildExited, SupervisionEvent, Supervisor
from meshserve.core.telemetry import tracing_enabled
from meshserve.core.tls import ClientTls
from meshserve.inference import triton_control
from meshserve.launcher.listen_hosts import ListenHosts, plan_listen_hosts
from meshserve.launcher.repository import ServedRepository, prepare_served_repository
from meshserve.launcher.repository_follow import RepositoryFollower
from meshserve.launcher.run_logs import readable_tail, start_run_logs, triton_load_failures
from meshserve.launcher.startup_checks import (
    PortUse,
    StartupError,
    check_ports,
    check_routes,
    foreign_listeners,
    port_taken_message,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_REPOSITORY = REPO_ROOT / "model_repository"
SERVED_REPOSITORY = (
    "served_repository"  # in the run directory: what Triton serves (meshserve.launcher.repository)
)
LOGS_DIR = "logs"  # in the run directory: one directory per run (meshserve.launcher.run_logs)
EMPTY_ROUTES = "routes: {}\n"
PATH_LIST_EXPECTED = (
    f"expected a directory, several separated by ',' or {os.pathsep!r}, or a JSON list of directories"
)


def parse_path_list(value: object) -> list[Path]:
    """Directories from a setting: a path, a ','- or os.pathsep-separated list, a JSON list, or a list.
    ValueError saying what is expected otherwise."""
    items: object = value
    if isinstance(value, Path):
        items = [value]
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "{")):  # JSON (an object is not a list, and says so below)
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f"{PATH_LIST_EXPECTED}; {value!r} is not valid JSON") from None
        else:
            items = [part for chunk in text.split(",") for part in chunk.split(os.pathsep)]
    if not isinstance(items, list | tuple) or not all(isinstance(item, str | Path) for item in items):
        raise ValueError(f"{PATH_LIST_EXPECTED}, not {value!r}")
    paths = [Path(item.strip() if isinstance(item, str) else item) for item in items if str(item).strip()]
    if not paths:
        raise ValueError(f"{PATH_LIST_EXPECTED}, not {value!r}")
    return paths


def serves_sample(repositories: Iterable[Path]) -> bool:
    """Whether the sample `fraud` model is among these repositories: the embedded routes only serve it."""
    return SAMPLE_REPOSITORY.resolve() in {Path(p).resolve() for p in repositories}


class MeshSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_", extra="ignore")

    host: str = Field(
        "127.0.0.1",
        description="address the gateway's gRPC and REST ports listen on; the other processes and every /metrics "
        "stay on loopback, except the feature, cache, inference and monitor services with tls (mTLS and peer "
        "checks), which follow it (meshserve.launcher.listen_hosts)",
    )
    admin_host: str | None = Field(
        None,
        description="address the gateway's admin API listens on (`meshserve up --admin-host`); default: loopback "
        "whatever host says. It changes routes: keep it off public networks",
    )
    gateway_port: int = Field(50051, ge=0, le=65535, description="the gateway's port; 0 = any free port")
    admin_port: int = Field(50055, ge=0, le=65535, description="the gateway's admin port; 0 = any free port")
    gateway_http_port: int = Field(
        50056, ge=0, le=65535, description="the gateway's REST port (Triton's HTTP API); 0 = any free port"
    )
    monitor_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="the monitor service's port (`meshserve up --monitor-port`): the prediction log, labels and "
        "quality; 0 = a free port chosen afresh each start (CLI commands find it in endpoints.json)",
    )
    gateways: int = Field(
        1,
        ge=1,
        le=64,
        description="gateway processes (`meshserve up --gateways N`): more than one share the client, admin and "
        "REST ports (SO_REUSEPORT), each supervised on its own, and share their control state through "
        "run_dir/control.db; 1: one process, as always",
    )
    model_repositories: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [SAMPLE_REPOSITORY],
        description="Triton model repositories to serve (`meshserve up --model-repository DIR`): a path, several "
        "separated by ',' or os.pathsep, or a JSON list; default: the sample `fraud` repository",
    )
    routes_path: Path | None = Field(
        None,
        description="the gateway's routes YAML; default: the embedded sample routes while the sample repository "
        "is served, else none (the gateway serves every model under its own name)",
    )
    registry_path: Path | None = None
    run_dir: Path = Field(
        Path(".meshserve"),
        description="logs (logs/<UTC start time>/<process>.log, logs/latest the newest), Triton's backend "
        "directory, the repository Triton serves, the gateway's routes.yaml",
    )
    grace_s: float = Field(10.0, ge=0, description="drain time for each process on shutdown")
    shutdown_settle_s: float = Field(
        0.5,
        ge=0,
        description="how long each process says NOT_SERVING before it refuses new calls on SIGTERM "
        "(each process's own MESHSERVE_<PROCESS>_SHUTDOWN_SETTLE_S)",
    )
    restart_max_crashes: int = Field(
        5,
        ge=0,
        description="crashes of one process within restart_window_s that are restarted; one more stops the "
        "mesh (exit code 1)",
    )
    restart_window_s: float = Field(
        60.0, gt=0, description="the sliding window restart_max_crashes counts in"
    )
    restart_backoff_s: float = Field(
        0.5,
        ge=0,
        description="wait before restarting a crashed process; doubles with each crash in the window",
    )
    restart_backoff_max_s: float = Field(8.0, ge=0, description="the longest wait before a restart")
    repository_poll_s: float = Field(
        2.0,
        ge=0,
        description="how often the model repositories are looked at while the mesh runs: a version directory or a "
        "model added is prepared and loaded without a restart (meshserve.launcher.repository_follow); 0 = never",
    )
    startup_timeout_s: float = Field(180.0, gt=0)
    log_level: str = "INFO"
    triton_args: list[str] = Field(default_factory=list, description="extra tritonserver arguments")
    triton_trace_url: str | None = Field(
        None,
        description="OTLP/HTTP URL Triton sends its spans to; default: derived from OTEL_EXPORTER_OTLP_* "
        "when those select http/protobuf",
    )
    extra_env: dict[str, str] = Field(default_factory=dict, description="environment added to every child")
    auth: bool = Field(
        False,
        description="callers must authenticate at the gateway (API keys of `meshserve keys`, JWTs, or with tls "
        "the client certificates); the admin API needs its token either way",
    )
    tls: bool = Field(
        False,
        description="mTLS on every hop (Triton's, the gateway's REST and admin ports included), with the "
        "certificates in certs_dir, created once; CLI commands then dial the mesh with the `admin` certificate",
    )

    @property
    def certs_dir(self) -> Path:
        """Where `up --tls` keeps the CA and every process's certificate (`meshserve certs`)."""
        return self.run_dir / "certs"

    @field_validator("model_repositories", mode="before")
    @classmethod
    def _repositories_from_text(cls, value: object) -> list[Path]:
        return parse_path_list(value)

    @model_validator(mode="after")
    def _backoff_cap_above_start(self) -> MeshSettings:
        if self.restart_backoff_max_s < self.restart_backoff_s:
            raise ValueError("restart_backoff_max_s must be at least restart_backoff_s")
        return self


ADMIN_TOKEN_FILE = "admin-token"  # in the run directory
API_KEYS_FILE = "api-keys.json"  # in the run directory


def admin_token_file(run_dir: Path) -> Path:
    """run_dir/admin-token, created (32 random bytes, 0600) on the first run and kept."""
    from meshserve.core.auth import ensure_admin_token

    path = run_dir / ADMIN_TOKEN_FILE
    ensure_admin_token(path)
    return path


def describe_settings_error(
    exc: ValidationError, prefix: str = "MESHSERVE_", flags: Mapping[str, str] | None = None
) -> str:
    """One line for a user: each bad setting by where its value came from, and what is wrong with it. `flags`
    maps the settings a command took from its command line to the flag the user typed (`gateway_port` ->
    `--port`); any other setting is named by its environment variable."""
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        if loc and flags and loc[0] in flags:
            name = flags[str(loc[0])]
        elif loc:
            name = prefix + "_".join(str(part) for part in loc).upper()
        else:
            name = "settings"
        if "error" in error.get("ctx", {}):  # our validators' own ValueError says it all, value included
            problems.append(f"{name}: {error['ctx']['error']}")
        else:
            problems.append(f"{name}: {error['msg']} (got {error['input']!r})")
    return "; ".join(problems)


def triton_trace_args(url: str | None, env: dict[str, str]) -> list[str]:
    """Triton's OpenTelemetry trace mode, pointed at the same collector as our processes, so its own spans
    (queue, compute) join the caller's trace. Triton exports OTLP over HTTP only."""
    if url is None and tracing_enabled(env):
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
        )
        if protocol.startswith("http"):
            traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            url = traces or env["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    if url is None:
        return []
    return [
        "--trace-config=mode=opentelemetry",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=rate=1",
        f"--trace-config=opentelemetry,url={url}",
        "--trace-config=opentelemetry,resource=service.name=triton",
        f"--trace-config=opentelemetry,bsp_schedule_delay={env.get('OTEL_BSP_SCHEDULE_DELAY', '5000')}",
    ]


# Who may call whom when the mesh runs with TLS (the identity is a certificate's first DNS SAN). `admin` is the
# certificate of `meshserve up` itself (health checks) and of the CLI's tools; Triton checks only that a client
# certificate comes from the CA, and only the inference service holds one besides them.
ALLOWED_PEERS: dict[str, list[str]] = {
    "feature": ["gateway", "admin"],
    "cache": ["gateway", "feature", "admin"],  # the feature service invalidates cached answers
    "inference": ["gateway", "admin"],
    "monitor": [
        "gateway",
        "admin",
    ],  # the gateways log and forward labels; `admin`: quality, export, the judge's CLI
    "gateway": [],  # any certificate from the mesh's CA (`client`, `admin`...); callers are part B's concern
}


def client_tls(settings: MeshSettings, name: str = "admin") -> ClientTls | None:
    """How a tool dials this mesh (`name`'s certificate from certs_dir), or None when it runs without TLS."""
    return ClientTls.from_dir(settings.certs_dir.resolve(), name) if settings.tls else None


TRITON_EXIT_TIMEOUT_S = 30.0  # Triton's own default --exit-timeout-secs


def cli_channel(target: str, server_name: str = "gateway", tls: bool | None = None) -> grpc.aio.Channel:
    """A channel for CLI commands to `target`: with TLS when MESHSERVE_TLS (or `tls`) says the mesh runs with
    it, presenting the `admin` certificate from MESHSERVE_RUN_DIR/certs and checking `server_name`."""
    settings = MeshSettings() if tls is None else MeshSettings(tls=tls)
    return open_channel(target, tls=client_tls(settings), server_name=server_name)


CONTROL_STORE_FILE = "control.db"  # in the run directory: what several gateway processes share
MONITOR_STORE_FILE = "monitor.db"  # in the run directory: the prediction log and labels, kept between runs


def gateway_names(count: int) -> list[str]:
    """The gateway processes' child names: the first is `gateway` whatever the count, then gateway-2, ..."""
    return ["gateway", *(f"gateway-{i}" for i in range(2, count + 1))]


@dataclass
class Endpoints:
    gateway: str
    gateway_http: str  # the Open Inference Protocol over HTTP/REST
    admin: str
    gateway_metrics: str
    service_metrics: dict[str, str]  # Prometheus endpoint of each of our processes
    feature: str
    cache: str
    inference: str
    monitor: str  # the prediction log, labels and quality (services.monitor)
    triton_grpc: str
    triton_metrics: str
    triton_http: str = ""  # Triton's own REST port, for comparisons ("" on a TLS mesh, where it is off)


@dataclass(frozen=True)
class _MeshCertificates:
    """The files of `meshserve certs` in one directory, as each process's settings name them."""

    directory: Path

    def files(self, name: str) -> tuple[Path, Path, Path]:
        d = self.directory
        return d / f"{name}.pem", d / f"{name}-key.pem", d / "ca.pem"

    def settings(self, process: str) -> dict[str, object]:
        cert, key, ca = self.files(process)
        return {
            "tls_cert_file": cert,
            "tls_key_file": key,
            "tls_ca_file": ca,
            "tls_client_auth": "true",
            "tls_allowed_peers": json.dumps(ALLOWED_PEERS[process]),
        }


# Started only once these are SERVING. The feature service seeds its store at start-up and tells the cache to
# drop answers for the seeded entities (right after a restart of the feature service, whose in-memory store
# comes back as the seed); with the cache not yet listening that invalidation could only fail.
# The gateways start once the monitor serves, so that the prediction log of their first answers is not dropped
# (the log never waits for the monitor: records it cannot hand over are counted as dropped).
START_AFTER: dict[str, tuple[str, ...]] = {"feature": ("cache",), "gateway": ("monitor",)}


# Who calls whom inside the mesh (gateway-2... count as the gateway). Stopping, a process is signalled only once
# every process that calls it has exited, so what each one drains can still finish: the gateway's Predicts need the
# feature, cache and inference services and its prediction log and labels go to the monitor, the feature
# service's writes invalidate the cache, and the inference service's calls go to Triton. Processes apart from one
# another stop side by side.
CALLERS: dict[str, tuple[str, ...]] = {
    "feature": ("gateway",),
    "cache": ("gateway", "feature"),
    "inference": ("gateway",),
    "monitor": ("gateway",),
    "triton": ("inference",),
}


def role_of(process: str) -> str:
    """A child's role: gateway-2... are gateways."""
    return "gateway" if process.startswith("gateway") else process


def stop_after(name: str, names: Iterable[str]) -> list[str]:
    """Those of `names` that must have exited before `name` is stopped (CALLERS)."""
    callers = CALLERS.get(role_of(name), ())
    return [other for other in names if role_of(other) in callers]


def start_after(name: str) -> tuple[str, ...]:
    """The children that must be SERVING before `name` starts (START_AFTER)."""
    return START_AFTER.get(role_of(name), ())


class StartupFailure(RuntimeError):
    """A process failed while the mesh started: `lines` say what, one per problem; `tail` holds its log's last
    lines where nothing more precise was found; `log_path` is its log."""

    def __init__(self, name: str, lines: list[str], log_path: Path, tail: str = "") -> None:
        super().__init__("\n".join(lines))
        self.name, self.lines, self.log_path, self.tail = name, lines, log_path, tail


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@dataclass
class LocalMesh:
    settings: MeshSettings
    children: dict[str, ChildProcess] = field(default_factory=dict)
    endpoints: Endpoints | None = None
    supervisor: Supervisor | None = None
    served: ServedRepository | None = None  # what Triton serves, once planned
    sample_routes: bool = False  # the gateway serves the embedded sample routes
    log_dir: Path | None = None  # this run's logs (meshserve.launcher.run_logs), once planned
    ports: dict[str, list[PortUse]] = field(default_factory=dict)  # what each child listens on, once planned
    port_hosts: dict[int, str] = field(default_factory=dict)  # the address each of those ports listens on
    backends: frozenset[str] = frozenset()  # the bundled Triton's backends, once planned
    follower: RepositoryFollower | None = None  # what is added to the repositories, once planned
    following: asyncio.Task[None] | None = None  # the follower at work, once started

    def _python(self, name: str, module: str, env: dict[str, str]) -> ChildProcess:
        return self._child(name, [sys.executable, "-m", module], env)

    def _child(self, name: str, argv: list[str], env: dict[str, str]) -> ChildProcess:
        full_env = {**os.environ, **self.settings.extra_env, **env, "PYTHONUNBUFFERED": "1"}
        assert self.log_dir is not None, "plan() first"
        return ChildProcess(name, argv, full_env, self.log_dir / f"{name}.log")

    def plan(self) -> Endpoints:
        """Choose the ports, prepare the served repository and the gateway's routes, check them (every model and
        version the routes name is served, the fixed ports are free), make this run's log directory and build
        every child's command; nothing starts. RepositoryError when a model repository cannot be read,
        StartupError (one line per problem) when something else would stop the mesh from starting."""
        from services.inference.tritonserver import BIND_ADDRESS as TRITON_HOST
        from services.inference.tritonserver import prepare_backend_dir, triton_command, triton_tls_args

        s = self.settings
        hosts = self.listen_hosts()
        services = ("gateway", "feature", "cache", "inference", "monitor")
        gateways = gateway_names(s.gateways)
        names = (
            "admin",
            "gateway_http",
            "grpc",
            "http",
            "metrics",
            *services,
            *(f"{name}_metrics" for name in (*services, *gateways[1:])),
        )
        fixed_ports = {s.gateway_port, s.admin_port, s.gateway_http_port, s.monitor_port} - {0, None}
        port = dict(zip(names, free_ports(len(names), hosts.probe_host(), avoid=fixed_ports), strict=True))
        gateway_port = s.gateway_port or port["gateway"]
        port["admin"] = s.admin_port or port["admin"]
        port["gateway_http"] = s.gateway_http_port or port["gateway_http"]
        port["monitor"] = s.monitor_port or port["monitor"]
        scheme = "https" if s.tls else "http"  # our /metrics serve TLS with each process's certificate
        # each address is where that process really listens (meshserve.launcher.listen_hosts)
        ep = Endpoints(
            gateway=f"{hosts.gateway}:{gateway_port}",
            gateway_http=f"{hosts.gateway}:{port['gateway_http']}",
            admin=f"{hosts.admin}:{port['admin']}",
            gateway_metrics=f"{scheme}://{hosts.metrics}:{port['gateway_metrics']}/metrics",
            service_metrics={
                name: f"{scheme}://{hosts.metrics}:{port[name + '_metrics']}/metrics"
                for name in (*services, *gateways[1:])
            },
            feature=f"{hosts.services}:{port['feature']}",
            cache=f"{hosts.services}:{port['cache']}",
            inference=f"{hosts.services}:{port['inference']}",
            monitor=f"{hosts.services}:{port['monitor']}",
            triton_grpc=f"{TRITON_HOST}:{port['grpc']}",
            triton_metrics=f"http://{TRITON_HOST}:{port['metrics']}/metrics",
            triton_http="" if s.tls else f"{TRITON_HOST}:{port['http']}",
        )
        run_dir = s.run_dir.resolve()
        fixed = [
            (host, PortUse(number, what, flag))
            for host, number, what, flag in (
                (hosts.gateway, s.gateway_port, "gateway", "--port"),
                (hosts.admin, s.admin_port, "admin", "--admin-port"),
                (hosts.gateway, s.gateway_http_port, "REST", "--http-port"),
                (hosts.services, s.monitor_port, "monitor", "--monitor-port"),
            )
            if number
        ]
        backend_dir = prepare_backend_dir(run_dir)
        self.backends = frozenset(d.name for d in backend_dir.iterdir() if d.is_dir())
        # what the repositories hold is taken before they are prepared: whatever is added from now on is followed
        self.follower = RepositoryFollower(
            s.model_repositories,
            run_dir / SERVED_REPOSITORY,
            self.backends,
            self.load_model,
            s.repository_poll_s,
        )
        self.served = prepare_served_repository(
            s.model_repositories, run_dir / SERVED_REPOSITORY, self.backends
        )
        routes_path = s.routes_path
        self.sample_routes = routes_path is None and serves_sample(s.model_repositories)
        problems = [] if self.served.models else self._nothing_to_serve()
        if routes_path is not None or self.sample_routes:
            problems += check_routes(routes_path, self.served)
        problems += [line for host, use in fixed for line in check_ports(host, [use])]
        if problems:
            raise StartupError(problems)
        if routes_path is None and not self.sample_routes:  # routes only name the sample model
            routes_path = run_dir / "routes.yaml"
            routes_path.write_text(EMPTY_ROUTES)
        self.log_dir = start_run_logs(run_dir / LOGS_DIR)
        gateway_ports = [
            PortUse(gateway_port, "gateway", "--port"),
            PortUse(port["admin"], "admin", "--admin-port"),
            PortUse(port["gateway_http"], "REST", "--http-port"),
        ]
        self.ports = {
            "triton": [PortUse(port["grpc"], "triton gRPC", None)],
            **{name: [PortUse(port[name], name, None)] for name in ("feature", "cache", "inference")},
            "monitor": [PortUse(port["monitor"], "monitor", "--monitor-port" if s.monitor_port else None)],
            **{name: gateway_ports for name in gateways},
        }
        self.port_hosts = {
            _port_of(address): address.rsplit(":", 1)[0]
            for address in (
                ep.gateway,
                ep.gateway_http,
                ep.admin,
                ep.feature,
                ep.cache,
                ep.inference,
                ep.monitor,
                ep.triton_grpc,
            )
        }
        certs = self._certificates(run_dir)
        triton_tls = triton_tls_args(*certs.files("triton")) if certs else []
        argv, triton_env = triton_command(
            [self.served.path],
            port["grpc"],
            port["http"],
            port["metrics"],
            backend_dir,
            [
                *triton_tls,
                *s.triton_args,
                *triton_trace_args(s.triton_trace_url, {**os.environ, **s.extra_env}),
            ],
        )
        common = {"LOG_LEVEL": s.log_level, "GRACE_S": str(s.grace_s),
                  "SHUTDOWN_SETTLE_S": str(s.shutdown_settle_s), "METRICS_HOST": hosts.metrics}  # fmt: skip

        def env(prefix: str, **values: object) -> dict[str, str]:
            values.setdefault("host", hosts.services)
            values.setdefault("metrics_port", port[f"{prefix.lower()}_metrics"])
            if certs is not None:
                values |= certs.settings(prefix.lower())
            items = {**common, **{k.upper(): v for k, v in values.items() if v is not None}}
            return {f"MESHSERVE_{prefix}_{k}": str(v) for k, v in items.items()}

        gateway = dict(
            host=hosts.gateway,
            port=gateway_port,
            feature_url=ep.feature,
            cache_url=ep.cache,
            inference_url=ep.inference,
            monitor_url=ep.monitor,
            routes_path=routes_path,
            registry_path=s.registry_path,
            admin_host=hosts.admin,
            admin_port=port["admin"],
            http_port=port["gateway_http"],
            audit_log=s.run_dir / "audit.jsonl",
            # the admin API's credential (kept between runs; the CLI sends it) and `meshserve keys`' file
            admin_token_file=admin_token_file(run_dir),
            auth_api_keys_file=run_dir / API_KEYS_FILE,
            auth_required=s.auth,
        )
        if s.gateways > 1:  # one port set, shared; live routes, rollouts and audit agreed through one store
            gateway |= {"reuse_port": "true", "control_store": f"sqlite:///{run_dir / CONTROL_STORE_FILE}"}
        self.children = {
            "triton": self._child("triton", argv, {**triton_env}),
            "feature": self._python(
                "feature",
                "services.feature",
                env("FEATURE", port=port["feature"], registry_path=s.registry_path, cache_url=ep.cache),
            ),
            "cache": self._python("cache", "services.cache", env("CACHE", port=port["cache"])),
            "inference": self._python(
                "inference",
                "services.inference",
                env("INFERENCE", port=port["inference"], triton_url=ep.triton_grpc),
            ),
            # SQLite in the run directory: the log and its labels outlive a restart of the monitor or the mesh
            "monitor": self._python(
                "monitor",
                "services.monitor",
                env(
                    "MONITOR",
                    port=port["monitor"],
                    store_path=run_dir / MONITOR_STORE_FILE,
                    registry_path=s.registry_path,  # the order of the features an export writes
                ),
            ),
            # the first keeps its name (tools and tests address mesh.children["gateway"]); each has its metrics
            **{
                name: self._python(
                    name, "gateway", env("GATEWAY", **gateway, metrics_port=port[f"{name}_metrics"])
                )
                for name in gateways
            },
        }
        self.endpoints = ep
        return ep

    def listen_hosts(self) -> ListenHosts:
        """Where each process listens: the gateway's client ports at `host`, the rest on loopback unless every
        internal service runs with mTLS and a peer check (meshserve.launcher.listen_hosts)."""
        s = self.settings
        peer_checked = s.tls and all(
            ALLOWED_PEERS[name] for name in ("feature", "cache", "inference", "monitor")
        )
        return plan_listen_hosts(s.host, s.admin_host, peer_checked)

    def _nothing_to_serve(self) -> list[str]:
        assert self.served is not None
        where = ", ".join(str(r) for r in self.settings.model_repositories)
        return [
            f"no model of {where} can be served",
            *(f"skipped {m.name} ({m.source}): {m.reason}" for m in self.served.skipped),
        ]

    def _certificates(self, run_dir: Path) -> _MeshCertificates | None:
        """With TLS: the mesh's certificates, issued into certs_dir the first time (kept afterwards)."""
        if not self.settings.tls:
            return None
        from meshserve.launcher.certs import DEFAULT_NAMES, issue_certificates

        directory = run_dir / "certs"
        # clients check a process's name (`feature`...), not its address; another host serves outside callers
        local = self.settings.host in ("127.0.0.1", "localhost", "0.0.0.0", "::")
        issue_certificates(directory, DEFAULT_NAMES, [] if local else [self.settings.host])
        return _MeshCertificates(directory)

    def client_tls(self, name: str = "admin") -> ClientTls | None:
        """How a client dials this mesh's processes: `name`'s certificate, or None without TLS."""
        return client_tls(self.settings, name)

    def targets(self) -> dict[str, str]:
        """The grpc.health.v1 endpoint of each child (Triton serves it too)."""
        ep = self.endpoints
        assert ep is not None, "plan() first"
        return {
            "triton": ep.triton_grpc,
            "feature": ep.feature,
            "cache": ep.cache,
            "inference": ep.inference,
            "monitor": ep.monitor,
            # gateways sharing the port: whichever answers; _until_healthy also awaits each one's own port
            **{name: ep.gateway for name in gateway_names(self.settings.gateways)},
        }

    async def start(
        self,
        on_ready: Callable[[str], None] = lambda name: None,
        on_event: Callable[[SupervisionEvent], None] = lambda event: None,
    ) -> Endpoints:
        """Start every process (each once those in START_AFTER are healthy) and wait until each is healthy, then
        supervise them; on failure, stop them all and raise. `on_event` hears of every exit and recovery. Plans
        first unless plan() has been called."""
        endpoints = self.endpoints if self.endpoints is not None else self.plan()
        try:
            healthy = {name: asyncio.Event() for name in self.children}
            try:
                async with asyncio.TaskGroup() as group:  # the first failure cancels the others
                    for name in self.children:
                        group.create_task(self._start_one(name, healthy, on_ready), name=f"start-{name}")
            except BaseExceptionGroup as failures:
                raise failures.exceptions[0] from None
            s = self.settings
            self.supervisor = Supervisor(
                self.children,
                lambda: RestartPolicy(
                    s.restart_max_crashes, s.restart_window_s, s.restart_backoff_s, s.restart_backoff_max_s
                ),
                self._until_healthy,
                on_event,
            )
            self.supervisor.start()
            if self.follower is not None and s.repository_poll_s > 0:
                self.following = asyncio.create_task(self.follower.follow(), name="follow-repositories")
        except BaseException:
            await self.stop()
            raise
        return endpoints

    async def load_model(self, name: str) -> None:
        """Triton loads `name` from the served repository again, asked through the inference service (as the
        gateway asks it: every replica, and the load kept for one that comes back)."""
        assert self.endpoints is not None, "plan() first"
        tls = self.client_tls()
        async with open_channel(self.endpoints.inference, tls=tls, server_name="inference") as channel:
            load = channel.unary_unary(
                triton_control.path("RepositoryModelLoad"),
                request_serializer=service_pb2.RepositoryModelLoadRequest.SerializeToString,
                response_deserializer=service_pb2.RepositoryModelLoadResponse.FromString,
            )
            request = service_pb2.RepositoryModelLoadRequest(model_name=name)
            await load(request, timeout=self.settings.startup_timeout_s)

    async def _start_one(self, name: str, healthy: dict[str, asyncio.Event], on_ready) -> None:
        for first in start_after(name):
            await healthy[first].wait()  # bounded: `first` is healthy, or its failure cancels this
        await self.children[name].start()
        await self._until_healthy(name, during_start=True)
        healthy[name].set()
        on_ready(name)

    async def _until_healthy(self, name: str, during_start: bool = False) -> None:
        """Until `name` answers SERVING, from its own socket; TimeoutError after startup_timeout_s; during
        start-up, StartupFailure saying what went wrong instead."""
        child, timeout = self.children[name], self.settings.startup_timeout_s
        async with open_channel(self.targets()[name], tls=self.client_tls(), server_name=name) as channel:
            check = asyncio.ensure_future(wait_until_serving(channel, timeout_s=timeout))
            exited = asyncio.ensure_future(child.wait())
            try:
                await asyncio.wait({check, exited}, return_when=asyncio.FIRST_COMPLETED)
                if check.done():
                    try:
                        await check
                    except TimeoutError:
                        message = f"{name} not healthy after {timeout:.0f}s"
                        if during_start:
                            raise self._failure(name, message) from None
                        raise TimeoutError(message) from None
                    self._answered_by_us(name, during_start)
                elif during_start:
                    raise self._exit_failure(name)
                else:  # it exited again: not healthy, and the supervisor reports the exit
                    raise TimeoutError(f"{name} exited before it was healthy")
                if self.settings.gateways > 1 and name.startswith("gateway"):
                    try:
                        async with asyncio.timeout(timeout):
                            await self._until_listening(name, exited)
                    except TimeoutError:
                        raise TimeoutError(f"{name} not listening after {timeout:.0f}s") from None
            finally:
                for task in (check, exited):  # never leave one polling a closed channel
                    task.cancel()
                await asyncio.gather(check, exited, return_exceptions=True)

    def _own_pids(self) -> set[int]:
        return {child.pid for child in self.children.values() if child.pid is not None and not child.exited}

    def _taken(self, name: str) -> str | None:
        """A line for the first of `name`'s ports that another process listens on, if any does."""
        for use in self.ports.get(name, []):
            host = self._host_of(use.port)
            foreign = foreign_listeners(host, use.port, self._own_pids())
            if foreign:
                return port_taken_message(host, use, foreign)
        return None

    def _host_of(self, port: int) -> str:
        return self.port_hosts.get(port, self.settings.host)

    def _answered_by_us(self, name: str, during_start: bool) -> None:
        """SERVING came from the port `name` was given: make sure no other process listens there, else the
        answer may be another mesh's (its port taken after the start-up check)."""
        probed = PortUse(_port_of(self.targets()[name]), name, None)
        host = self._host_of(probed.port)
        foreign = foreign_listeners(host, probed.port, self._own_pids())
        if not foreign:  # None: /proc cannot say (not Linux); the child's own exit will tell
            return
        use = next((u for u in self.ports.get(name, []) if u.port == probed.port), probed)
        message = port_taken_message(host, use, foreign)
        if during_start:
            raise StartupFailure(name, [message], self.children[name].log_path)
        raise TimeoutError(message)

    def _failure(self, name: str, message: str) -> StartupFailure:
        child = self.children[name]
        text = ""
        with contextlib.suppress(OSError):
            text = child.log_path.read_text(errors="replace")
        return StartupFailure(name, [message], child.log_path, readable_tail(text))

    def _exit_failure(self, name: str) -> StartupFailure:
        """Why `name` exited while the mesh started, as precisely as can be told: a port someone else took, a
        model Triton would not load, else its exit status and the last lines of its log."""
        child = self.children[name]
        taken = self._taken(name)
        if taken:
            return StartupFailure(name, [taken], child.log_path)
        if name == "triton":
            with contextlib.suppress(OSError):
                failures = triton_load_failures(child.log_path.read_text(errors="replace"))
                if failures:
                    return StartupFailure(name, [f.summary() for f in failures], child.log_path)
        code = child.process.returncode if child.process is not None else None
        status = f"exit code {code}" if code is None or code >= 0 else f"killed by signal {-code}"
        return self._failure(name, f"{name} exited during start-up ({status})")

    async def _until_listening(self, name: str, exited: asyncio.Future) -> None:
        """A gateway sharing its port: SERVING on that port may be another process's answer, so also wait for
        this one's own metrics port, which it opens once its gRPC server is listening. Bound by the caller."""
        assert self.endpoints is not None
        url = self.endpoints.service_metrics[name]
        host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        while not exited.done():
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                await asyncio.sleep(0.05)  # a port opening has no event to await
                continue
            writer.close()
            return
        raise TimeoutError(f"{name} exited before it was healthy")

    async def wait(self) -> ChildExited:
        """Until a process keeps crashing; its last exit. The mesh is still running: stop() it."""
        assert self.supervisor is not None, "start() first"
        return await self.supervisor.wait()

    def crashed(self) -> list[str]:
        return [name for name, child in self.children.items() if child.exited]

    async def stop(
        self,
        grace: float | None = None,
        on_stopped: Callable[[str, int | None], None] = lambda name, code: None,
    ) -> None:
        """Every process at once by process group, except that each waits until every process that calls it
        (CALLERS) has exited: the gateways first (they drain their callers), then the feature, inference and
        monitor services, then the cache and Triton. `on_stopped(name, exit code)` hears of each started one as it exits.
        Supervision stops first, so these exits are not taken for crashes."""
        if self.following is not None:
            self.following.cancel()
            await asyncio.gather(self.following, return_exceptions=True)
        if self.supervisor is not None:
            await self.supervisor.stop()
        grace = self.settings.grace_s if grace is None else grace
        bound = grace + self.settings.shutdown_settle_s + 2.0
        tasks: dict[str, asyncio.Task[None]] = {}

        async def stop_one(name: str) -> None:
            callers = [tasks[other] for other in stop_after(name, tasks)]
            await asyncio.gather(*callers, return_exceptions=True)  # a caller's failure still lets this stop
            child = self.children[name]
            # Triton unloads every model (a python stub each) on the way out: slow on a busy box
            code = await child.stop(max(bound, TRITON_EXIT_TIMEOUT_S) if name == "triton" else bound)
            if child.pid is not None:
                on_stopped(name, code)

        for name in self.children:  # all created before any runs, so each finds its callers' tasks
            tasks[name] = asyncio.create_task(stop_one(name), name=f"stop-{name}")
        failures = [r for r in await asyncio.gather(*tasks.values(), return_exceptions=True) if r is not None]
        if failures:
            raise failures[0]
