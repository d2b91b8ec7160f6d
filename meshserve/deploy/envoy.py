"""The Envoy edge in front of the gateway, generated from meshserve's own settings.

The config is built from envoy-data-plane's typed messages, so a misspelt field or a wrong type fails here, in
Python, rather than when Envoy starts; it is then written in Envoy's own proto-JSON form (snake_case YAML).

Security at the edge (docs/security.md): the listener may terminate TLS, the hop to the gateway is TLS verified
against the mesh's CA (with a client certificate when one is given), and `envoy.filters.http.jwt_authn` may
reject calls without a valid JWT before they reach the gateway, which verifies the token again itself.

REST (the Open Inference Protocol over HTTP, the gateway's `http_port`) shares the listener: a request whose
content-type is application/grpc goes to the gateway's gRPC port, anything else to its REST port, each a cluster
of its own with the same TLS, JWT check, health checks, balancing, outlier detection and retries.

Observability and deadlines: per-method gRPC counters (grpc_stats) in /stats/prometheus, spans to the mesh's
OTLP collector when one is named, a caller's grpc-timeout honoured up to the gateway's own ceiling, and retries
only of calls no gateway answered (the gateway retries inside the mesh itself).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any as JSON
from typing import Literal
from urllib.parse import urlsplit

import yaml
from betterproto2 import Casing, Message
from envoy_data_plane.envoy.config.accesslog import v3 as accesslog
from envoy_data_plane.envoy.config.bootstrap import v3 as bootstrap
from envoy_data_plane.envoy.config.cluster import v3 as cluster
from envoy_data_plane.envoy.config.core import v3 as core
from envoy_data_plane.envoy.config.endpoint import v3 as endpoint
from envoy_data_plane.envoy.config.listener import v3 as listener
from envoy_data_plane.envoy.config.metrics import v3 as metrics
from envoy_data_plane.envoy.config.overload import v3 as overload
from envoy_data_plane.envoy.config.route import v3 as route
from envoy_data_plane.envoy.config.trace import v3 as trace
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import StdoutAccessLog
from envoy_data_plane.envoy.extensions.filters.http.grpc_stats.v3 import FilterConfig as GrpcStatsConfig
from envoy_data_plane.envoy.extensions.filters.http.jwt_authn import v3 as jwt_authn
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager import v3 as hcm
from envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections.v3 import (
    DownstreamConnectionsConfig,
)
from envoy_data_plane.envoy.extensions.retry.host.previous_hosts.v3 import PreviousHostsPredicate
from envoy_data_plane.envoy.extensions.transport_sockets.tls import v3 as tls
from envoy_data_plane.envoy.extensions.upstreams.http import v3 as upstream_http
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.envoy.type.v3 import Percent
from envoy_data_plane.google.protobuf import Any as AnyMessage
from envoy_data_plane.google.protobuf import Struct
from grpc_health.v1 import health_pb2
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from tritonclient.grpc import service_pb2 as triton_pb2

from gateway.settings import GatewaySettings
from meshserve.gateway.v1 import gateway_pb2

__all__ = [
    "EnvoySettings",
    "deploy_envoy",
    "envoy_config",
    "grpc_proxy_config",
    "local_settings",
    "render_envoy_yaml",
]

GATEWAY_CLUSTER = "gateway"
GATEWAY_REST_CLUSTER = "gateway_rest"
JWKS_CLUSTER = "jwks"
OTLP_CLUSTER = "otlp"
ADMIN_CLUSTER = "envoy_admin"
PROMETHEUS_PATH = "/stats/prometheus"
JWT_PROVIDER = "meshserve"
# Where the certificates live in every container: the compose `certs` volume, or a cert-manager Secret mounted
# with the same file names in Kubernetes (deploy/k8s/base/certificates.yaml).
CERTS_DIR = Path("/certs")
# Envoy's own gRPC health check and a Kubernetes probe through the listener carry no token.
HEALTH_PREFIX = "/grpc.health.v1.Health/"
RETRY_HOST_PICKS = 10  # host picks per retry before one already tried is taken (see _http_connection_manager)
# The REST probes the gateway answers without a credential too (gateway/api/http_api.py's _UNGUARDED).
REST_HEALTH_PATHS = ("/v2/health/live", "/v2/health/ready")
REST_READY_PATH = "/v2/health/ready"  # 200 once the gateway can serve, 400 again while it drains
DEFAULT_OUT = Path("deploy/envoy/envoy.yaml")
REGENERATE = f"meshserve deploy envoy --out {DEFAULT_OUT}"
_GATEWAY_PORT = GatewaySettings.model_fields["port"].default
_GATEWAY_HTTP_PORT = GatewaySettings.model_fields["http_port"].default
# The longest deadline the gateway honours; the edge caps a caller's grpc-timeout at the same value.
_GATEWAY_MAX_DEADLINE_S = GatewaySettings.model_fields["max_deadline_s"].default
# What the gateway serves on its public port: these methods get their own grpc_stats counters. Any other path
# a caller invents is counted under one shared name, so strangers cannot grow Envoy's stats without bound.
GRPC_SERVICES = (
    gateway_pb2.DESCRIPTOR.services_by_name["PredictionService"],
    triton_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
)


class EnvoySettings(BaseSettings):
    """The edge proxy. Defaults suit docker-compose, where the gateway is reachable as `gateway`."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_ENVOY_", extra="forbid")

    listen_host: str = Field("0.0.0.0", description="address clients connect to")
    listen_port: int = Field(8080, ge=1, le=65535)
    admin_host: str = Field(
        "127.0.0.1", description="admin API (/ready, /stats); it can stop Envoy: keep private"
    )
    admin_port: int = Field(9901, ge=1, le=65535)
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="a listener (on listen_host) serving only the admin API's /stats/prometheus, for Prometheus; "
        "unset: none",
    )
    gateway_host: str = Field(
        "gateway", description="the gateway's DNS name or IP; every address it resolves to"
    )
    gateway_port: int = Field(_GATEWAY_PORT, ge=1, le=65535)
    gateway_http_port: int | None = Field(
        _GATEWAY_HTTP_PORT,
        ge=1,
        le=65535,
        description="the gateway's REST port (its http_port): calls that are not gRPC go there; unset: the edge "
        "serves gRPC only and answers anything else 404",
    )
    connect_timeout_s: float = Field(1.0, gt=0)
    # Deadlines: a caller's grpc-timeout is honoured, capped, and goes on to the gateway (Envoy rewrites the
    # header when it caps it), which spends the same deadline. A call without one gets no deadline from the
    # edge: any stream timer Envoy ran would be sent on as a grpc-timeout and replace the route's timeout_ms
    # that the gateway applies to such calls (its fallback depends on it). stream_idle_timeout_s still ends a
    # call whose gateway went silent.
    max_grpc_timeout_s: float = Field(
        _GATEWAY_MAX_DEADLINE_S,
        gt=0,
        description="a caller's grpc-timeout is honoured up to this (the gateway's max_deadline_s); longer ones "
        "are cut to it, on the way to the gateway too",
    )
    stream_idle_timeout_s: float = Field(
        _GATEWAY_MAX_DEADLINE_S + 5,
        gt=0,
        description="a call with nothing sent either way for this long is reset (calls without a deadline)",
    )
    # Retries only where no gateway has done, or could still do, the work: the connection failed, the gateway
    # refused the stream unread (REFUSED_STREAM), or the stream was reset before an answer (a gateway that died
    # mid-call, which therefore retried nothing). Never on a gRPC status: a gateway's UNAVAILABLE, DEADLINE_EXCEEDED or
    # RESOURCE_EXHAUSTED comes after its own retries and fallback tiers (gateway/routing/dispatch.py), and retrying it
    # here would multiply the load of an outage. No per-try timeout either: it would cut a caller's deadline
    # short, and `reset` would then retry a call a gateway is still working on.
    retry_on: str = Field(
        "connect-failure,refused-stream,reset",
        description="Envoy's retry conditions (x-envoy-retry-on); see the comment before changing them",
    )
    num_retries: int = Field(2, ge=0, description="each on another gateway pod when there is one")
    # Envoy's circuit breakers, per cluster. Retries in flight are bounded by a budget rather than Envoy's default
    # count (3): a gateway that dies takes every call it holds with it, and each needs its retry in the same
    # instant, just as those calls stop counting as in flight. So the floor covers what one gateway may hold
    # (with Envoy's 3, killing one of two gateways under 8 callers failed 5 calls: compose-test's failover), and
    # under more load the budget grows with it: never more retries than calls in flight. Retries only follow calls
    # no gateway answered (retry_on), so they re-send work the dead gateway took along, nothing more.
    max_connections: int = Field(1024, ge=1)
    max_pending_requests: int = Field(1024, ge=1)
    max_requests: int = Field(1024, ge=1)
    retry_budget_percent: float = Field(
        100.0, gt=0, le=100, description="retries in flight at once, as a share of the calls in flight"
    )
    min_retry_concurrency: int = Field(
        256, ge=1, description="retries always allowed in flight, however few calls there are"
    )
    max_downstream_connections: int = Field(
        10_000, ge=1, description="client connections Envoy accepts at once"
    )
    health_check_interval_s: float = Field(2.0, gt=0)
    health_check_timeout_s: float = Field(1.0, gt=0)
    unhealthy_threshold: int = Field(2, ge=1)
    healthy_threshold: int = Field(1, ge=1)
    # Balancing across gateway pods: the least busy of two picked at random (in-flight requests), so a pod that
    # slows down (a noisy neighbour, a GC pause) gets less, rather than every pod the same share.
    least_request_choices: int = Field(2, ge=2, description="pods compared per pick (LEAST_REQUEST)")
    # Outlier detection: a pod whose own connections keep failing (refused, reset, timed out) is ejected, for
    # longer each time, never more than max_ejection_percent of the pods: a failure of Triton behind every
    # gateway must not empty the pool.
    outlier_consecutive_failures: int = Field(
        5, ge=1, description="consecutive failures of a pod's own connections before it is ejected"
    )
    outlier_consecutive_gateway_failures: int = Field(
        5, ge=1, description="consecutive UNAVAILABLE / DEADLINE_EXCEEDED answers (502-504) from one pod"
    )
    outlier_interval_s: float = Field(5.0, gt=0, description="how often ejections are decided")
    outlier_base_ejection_s: float = Field(10.0, gt=0, description="first ejection; longer each time again")
    outlier_max_ejection_s: float = Field(120.0, gt=0)
    outlier_max_ejection_percent: int = Field(50, ge=0, le=100)
    # Downstream: the listener terminates TLS when both are set (a certificate clients trust for the edge's name).
    tls_cert_file: Path | None = Field(
        None, description="PEM chain; with tls_key_file, the listener speaks TLS"
    )
    tls_key_file: Path | None = None
    # Upstream: TLS to the gateway, whose certificate must chain to this CA and name `gateway_tls_name`.
    gateway_ca_file: Path | None = Field(
        CERTS_DIR / "ca.pem", description="the mesh's CA; None speaks plaintext to the gateway"
    )
    gateway_tls_name: str = Field("gateway", description="SNI and the DNS SAN the gateway must present")
    # A client certificate makes the hop mTLS. Off by default: the gateway would see every call through the edge
    # as that identity, so present one only with jwt_authn on or with a gateway that requires client certs.
    gateway_cert_file: Path | None = None
    gateway_key_file: Path | None = None
    # JWTs verified at the edge (envoy.filters.http.jwt_authn), the same tokens the gateway accepts
    # (MESHSERVE_GATEWAY_AUTH_JWKS, _AUTH_JWT_ISSUER, _AUTH_JWT_AUDIENCE). On when jwt_jwks is set.
    jwt_jwks: str | None = Field(None, description="a local JWKS file or an http(s) URL serving one")
    jwt_issuer: str | None = Field(None, description="the `iss` tokens must carry")
    jwt_audiences: list[str] = Field(default_factory=list, description="`aud` values accepted; [] = any")
    jwt_clock_skew_s: int = Field(30, ge=0, description="the gateway's auth_jwt_leeway_s")
    jwt_jwks_cache_s: float = Field(300.0, gt=0, description="how long a fetched remote JWKS is kept")
    jwt_jwks_ca_file: Path = Field(
        Path("/etc/ssl/certs/ca-certificates.crt"),
        description="roots an https JWKS or OTLP URL is verified with",
    )
    jwt_payload_header: str = Field(
        "x-jwt-payload", description="the verified payload, forwarded for logs (the gateway trusts the token)"
    )
    access_log: bool = Field(True, description="one JSON line per call on stdout")
    grpc_stats: bool = Field(
        True,
        description="per-method gRPC counters (request, success, failure, by status) and upstream time in "
        "/stats/prometheus, for the gateway's own methods; other paths share one set",
    )
    # Tracing: Envoy's span joins the caller's trace (W3C traceparent) and the gateway's span becomes its child.
    tracing_otlp_endpoint: str | None = Field(
        None,
        description="OTLP collector URL, as OTEL_EXPORTER_OTLP_ENDPOINT (http://jaeger:4317); unset: no tracing",
    )
    tracing_otlp_protocol: Literal["grpc", "http/protobuf"] = Field(
        "grpc", description="as OTEL_EXPORTER_OTLP_PROTOCOL; http/protobuf posts to <endpoint>/v1/traces"
    )
    tracing_service_name: str = Field("envoy", min_length=1, description="service.name of Envoy's spans")
    tracing_sampling_percent: float = Field(
        100.0, ge=0, le=100, description="share of calls Envoy traces (its random_sampling)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> EnvoySettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if (self.gateway_cert_file is None) != (self.gateway_key_file is None):
            raise ValueError("gateway_cert_file and gateway_key_file go together")
        if self.gateway_cert_file is not None and self.gateway_ca_file is None:
            raise ValueError("a client certificate for the gateway needs gateway_ca_file (TLS) too")
        if self.metrics_port is not None and self.metrics_port in (self.listen_port, self.admin_port):
            raise ValueError("metrics_port must differ from listen_port and admin_port")
        if self.jwt_jwks is None and (self.jwt_issuer or self.jwt_audiences):
            raise ValueError("jwt_issuer and jwt_audiences need jwt_jwks to verify tokens with")
        if self.jwt_jwks is not None and "://" in self.jwt_jwks:
            url = urlsplit(self.jwt_jwks)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"jwt_jwks: expected a file or an http(s) URL, got {self.jwt_jwks!r}")
        return self

    @field_validator("tracing_otlp_endpoint")
    @classmethod
    def _collector_url(cls, value: str | None) -> str | None:
        if value is not None:
            url = urlsplit(value)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"expected an http(s) URL such as http://jaeger:4317, got {value!r}")
        return value


def local_settings(**overrides: object) -> EnvoySettings:
    """Envoy beside `meshserve up` on one machine: the gateway on 127.0.0.1 (plaintext), nothing exposed."""
    values = {"listen_host": "127.0.0.1", "gateway_host": "127.0.0.1", "gateway_ca_file": None, **overrides}
    return EnvoySettings(**values)


def _address(host: str, port: int) -> core.Address:
    return core.Address(socket_address=core.SocketAddress(address=host, port_value=port))


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _typed(message: Message) -> AnyMessage:
    """An `Any` with its type URL, from the message pool envoy-data-plane registers its types in."""
    return AnyMessage.pack(message)


# What each access-log line holds: enough to follow one call (x-request-id) and see how it ended.
_ACCESS_LOG_FIELDS = {
    "start_time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:PATH)%",
    "grpc_status": "%GRPC_STATUS%",
    "http_status": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream_host": "%UPSTREAM_HOST%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "downstream": "%DOWNSTREAM_REMOTE_ADDRESS%",
}


def _jwks_url(s: EnvoySettings) -> tuple[str, int, bool] | None:
    """(host, port, https) of a remote JWKS; None for a local file or no JWT at all."""
    if s.jwt_jwks is None or "://" not in s.jwt_jwks:
        return None
    url = urlsplit(s.jwt_jwks)
    https = url.scheme == "https"
    return str(url.hostname), url.port or (443 if https else 80), https


def _jwt_filter(s: EnvoySettings) -> hcm.HttpFilter:
    """Every call but health checks (gRPC's, and REST's live and ready) needs a valid JWT (401 otherwise, 403 for
    another audience). The token itself is forwarded: the gateway authenticates the caller from it (principal,
    roles), not from anything Envoy adds."""
    assert s.jwt_jwks is not None
    remote = _jwks_url(s)
    provider = jwt_authn.JwtProvider(
        issuer=s.jwt_issuer or "",
        audiences=s.jwt_audiences,
        forward=True,
        forward_payload_header=s.jwt_payload_header,
        clock_skew_seconds=s.jwt_clock_skew_s,
    )
    if remote is None:
        provider.local_jwks = core.DataSource(filename=s.jwt_jwks)
    else:
        provider.remote_jwks = jwt_authn.RemoteJwks(
            http_uri=core.HttpUri(uri=s.jwt_jwks, cluster=JWKS_CLUSTER, timeout=_seconds(5)),
            cache_duration=_seconds(s.jwt_jwks_cache_s),
            # fetched at start and refreshed in the background, so no caller waits on the identity provider
            async_fetch=jwt_authn.JwksAsyncFetch(),
        )
    config = jwt_authn.JwtAuthentication(
        providers={JWT_PROVIDER: provider},
        rules=[
            jwt_authn.RequirementRule(match=route.RouteMatch(prefix=HEALTH_PREFIX)),  # no requirement
            *(
                jwt_authn.RequirementRule(match=route.RouteMatch(path=path))
                for path in (REST_HEALTH_PATHS if s.gateway_http_port is not None else ())
            ),
            jwt_authn.RequirementRule(
                match=route.RouteMatch(prefix="/"),
                requires=jwt_authn.JwtRequirement(provider_name=JWT_PROVIDER),
            ),
        ],
    )
    return hcm.HttpFilter(name="envoy.filters.http.jwt_authn", typed_config=_typed(config))


def _grpc_stats_filter() -> hcm.HttpFilter:
    """cluster.gateway.grpc.<service>.<method>.{request_message_count,success,failure,total,<status code>} and
    an upstream_rq_time histogram, per method the gateway serves. No filter state: unary calls, nothing to log."""
    methods = core.GrpcMethodList(
        services=[
            core.GrpcMethodListService(name=service.full_name, method_names=list(service.methods_by_name))
            for service in GRPC_SERVICES
        ]
    )
    config = GrpcStatsConfig(individual_method_stats_allowlist=methods, enable_upstream_stats=True)
    return hcm.HttpFilter(name="envoy.filters.http.grpc_stats", typed_config=_typed(config))


# Envoy's own gRPC tags (envoy_grpc_bridge_service, _method) take the first dot-separated word after `grpc.` as
# the service and the next as the method, nonsense for a package-qualified service. These two label the whole
# service and the method, so /stats/prometheus says envoy_cluster_grpc_success{envoy_cluster_name="gateway",
# grpc_service="meshserve.gateway.v1.PredictionService", grpc_method="Predict"}. (Envoy's own tags still come
# along, and cannot be dropped alone; query these.)
_GRPC_STATS_TAGS = {
    "grpc_service": r"^cluster\.[^.]+\.grpc\.(([^.]+(?:\.[^.]+)*)\.)[^.]+\.[^.]+$",
    "grpc_method": r"^cluster\.[^.]+\.grpc\.(?:[^.]+\.)+(([^.]+)\.)[^.]+$",
}


def _stats_config(s: EnvoySettings) -> metrics.StatsConfig | None:
    if not s.grpc_stats:
        return None
    return metrics.StatsConfig(
        stats_tags=[
            metrics.TagSpecifier(tag_name=name, regex=regex) for name, regex in _GRPC_STATS_TAGS.items()
        ]
    )


def _otlp_traces_url(s: EnvoySettings) -> tuple[str, int, bool, str]:
    """(host, port, https, path) of the collector; the path is OTLP/HTTP's /v1/traces after the endpoint's."""
    assert s.tracing_otlp_endpoint is not None
    url = urlsplit(s.tracing_otlp_endpoint)
    https = url.scheme == "https"
    return str(url.hostname), url.port or (443 if https else 80), https, url.path.rstrip("/") + "/v1/traces"


def _tracing(s: EnvoySettings) -> hcm.HttpConnectionManagerTracing | None:
    """Envoy's OpenTelemetry tracer, exporting to the collector the mesh's processes use (OTLP over gRPC or
    HTTP). Its span joins the caller's trace (W3C traceparent) and is the parent the gateway's span names."""
    if s.tracing_otlp_endpoint is None:
        return None
    config = trace.OpenTelemetryConfig(service_name=s.tracing_service_name)
    if s.tracing_otlp_protocol == "grpc":
        config.grpc_service = core.GrpcService(
            envoy_grpc=core.GrpcServiceEnvoyGrpc(cluster_name=OTLP_CLUSTER), timeout=_seconds(5)
        )
    else:
        host, port, https, path = _otlp_traces_url(s)
        scheme = "https" if https else "http"
        config.http_service = core.HttpService(
            http_uri=core.HttpUri(
                uri=f"{scheme}://{host}:{port}{path}", cluster=OTLP_CLUSTER, timeout=_seconds(5)
            )
        )
    return hcm.HttpConnectionManagerTracing(
        provider=trace.TracingHttp(name="envoy.tracers.opentelemetry", typed_config=_typed(config)),
        random_sampling=Percent(value=s.tracing_sampling_percent),
    )


def _http_connection_manager(s: EnvoySettings) -> hcm.HttpConnectionManager:
    retry = route.RetryPolicy(
        retry_on=s.retry_on,
        num_retries=s.num_retries,
        # with several gateway replicas, retry on another one rather than the one that just failed
        retry_host_predicate=[
            route.RetryPolicyRetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=_typed(PreviousHostsPredicate()),
            )
        ],
        # A gateway that just died has no calls in flight, so LEAST_REQUEST favours it (3 picks in 4 with two
        # pods): only after this many picks of hosts already tried does a retry go to one of them anyway. Picks
        # cost nothing; with 3, one retry in three went back to a killed gateway (deploy/compose/test.sh).
        host_selection_retry_max_attempts=RETRY_HOST_PICKS,
    )
    grpc_route = route.Route(
        name="grpc",
        # content-type application/grpc*; anything else goes to the REST route, or without one is refused at the
        # edge with 404 rather than reaching the gateway
        match=route.RouteMatch(prefix="/", grpc=route.RouteMatchGrpcRouteMatchOptions()),
        route=route.RouteAction(
            cluster=GATEWAY_CLUSTER,
            # Stream durations replace the router's timeout (which ignores grpc-timeout and cut every call at a
            # fixed time with UNAVAILABLE): a call ends at its caller's deadline, capped. No offset: it would
            # only make Envoy answer DEADLINE_EXCEEDED before the gateway could give its own answer.
            timeout=_seconds(0),  # none: the stream duration below is what ends a call
            max_stream_duration=route.RouteActionMaxStreamDuration(
                grpc_timeout_header_max=_seconds(s.max_grpc_timeout_s)
            ),
            retry_policy=retry,
        ),
    )
    # REST: every other request, to the gateway's REST port. Same retries (a POST no gateway answered is as safe to
    # send again as a gRPC call). No timeout either, as for a gRPC call without a deadline: the gateway applies its
    # own, and stream_idle_timeout_s ends a call whose gateway went silent.
    rest_routes = []
    if s.gateway_http_port is not None:
        rest_routes.append(
            route.Route(
                name="rest",
                match=route.RouteMatch(prefix="/"),
                route=route.RouteAction(
                    cluster=GATEWAY_REST_CLUSTER, timeout=_seconds(0), retry_policy=retry
                ),
            )
        )
    access_log = [
        accesslog.AccessLog(
            name="envoy.access_loggers.stdout",
            typed_config=_typed(
                StdoutAccessLog(
                    log_format=core.SubstitutionFormatString(json_format=Struct.from_dict(_ACCESS_LOG_FIELDS))
                )
            ),
        )
    ]
    return hcm.HttpConnectionManager(
        stat_prefix="edge",
        route_config=route.RouteConfiguration(
            name="meshserve",
            virtual_hosts=[
                route.VirtualHost(name="gateway", domains=["*"], routes=[grpc_route, *rest_routes])
            ],
        ),
        http_filters=[
            # first, so calls jwt_authn refuses are counted too
            *([_grpc_stats_filter()] if s.grpc_stats else []),
            *([_jwt_filter(s)] if s.jwt_jwks is not None else []),
            hcm.HttpFilter(name="envoy.filters.http.router", typed_config=_typed(Router())),
        ],
        access_log=access_log if s.access_log else [],
        tracing=_tracing(s),
        stream_idle_timeout=_seconds(s.stream_idle_timeout_s),
        use_remote_address=True,  # this is the edge: the peer address is the client, not a forwarded header
        preserve_external_request_id=True,  # a caller's x-request-id travels on through every hop
    )


def _listener(s: EnvoySettings) -> listener.Listener:
    chain = listener.FilterChain(
        filters=[
            listener.Filter(
                name="envoy.filters.network.http_connection_manager",
                typed_config=_typed(_http_connection_manager(s)),
            )
        ]
    )
    if s.tls_cert_file is not None and s.tls_key_file is not None:
        context = tls.DownstreamTlsContext(
            common_tls_context=tls.CommonTlsContext(
                tls_certificates=[_certificate(s.tls_cert_file, s.tls_key_file)],
                # gRPC is HTTP/2 only; REST clients may speak HTTP/1.1 as well
                alpn_protocols=["h2"] if s.gateway_http_port is None else ["h2", "http/1.1"],
            )
        )
        chain.transport_socket = _tls_socket(context)
    return listener.Listener(
        name="edge", address=_address(s.listen_host, s.listen_port), filter_chains=[chain]
    )


def _metrics_listener(s: EnvoySettings, port: int) -> listener.Listener:
    """Prometheus's way in: /stats/prometheus of the admin API and nothing else (404), since the rest of that
    API can change Envoy's state or stop it."""
    manager = hcm.HttpConnectionManager(
        stat_prefix="metrics",
        route_config=route.RouteConfiguration(
            name="metrics",
            virtual_hosts=[
                route.VirtualHost(
                    name="metrics",
                    domains=["*"],
                    routes=[
                        route.Route(
                            match=route.RouteMatch(path=PROMETHEUS_PATH),
                            route=route.RouteAction(cluster=ADMIN_CLUSTER),
                        )
                    ],
                )
            ],
        ),
        http_filters=[hcm.HttpFilter(name="envoy.filters.http.router", typed_config=_typed(Router()))],
    )
    chain = listener.FilterChain(
        filters=[
            listener.Filter(
                name="envoy.filters.network.http_connection_manager", typed_config=_typed(manager)
            )
        ]
    )
    return listener.Listener(name="metrics", address=_address(s.listen_host, port), filter_chains=[chain])


def _admin_cluster(s: EnvoySettings) -> cluster.Cluster:
    host = "127.0.0.1" if s.admin_host in ("0.0.0.0", "") else s.admin_host
    admin = endpoint.LbEndpoint(endpoint=endpoint.Endpoint(address=_address(host, s.admin_port)))
    return cluster.Cluster(
        name=ADMIN_CLUSTER,
        type=cluster.ClusterDiscoveryType.STATIC,
        connect_timeout=_seconds(s.connect_timeout_s),
        load_assignment=endpoint.ClusterLoadAssignment(
            cluster_name=ADMIN_CLUSTER, endpoints=[endpoint.LocalityLbEndpoints(lb_endpoints=[admin])]
        ),
    )


def _certificate(cert: Path, key: Path) -> tls.TlsCertificate:
    return tls.TlsCertificate(
        certificate_chain=core.DataSource(filename=str(cert)), private_key=core.DataSource(filename=str(key))
    )


def _tls_socket(context: Message) -> core.TransportSocket:
    return core.TransportSocket(name="envoy.transport_sockets.tls", typed_config=_typed(context))


def _upstream_tls(
    sni: str, alpn: list[str], ca: Path, cert: Path | None = None, key: Path | None = None
) -> core.TransportSocket:
    """TLS to an upstream that must present a certificate for `sni`, chaining to `ca`; with `cert` and `key`,
    Envoy presents its own certificate too (mTLS)."""
    validation = tls.CertificateValidationContext(
        trusted_ca=core.DataSource(filename=str(ca)),
        match_typed_subject_alt_names=[
            tls.SubjectAltNameMatcher(
                san_type=tls.SubjectAltNameMatcherSanType.DNS, matcher=StringMatcher(exact=sni)
            )
        ],
    )
    common = tls.CommonTlsContext(validation_context=validation, alpn_protocols=alpn)
    if cert is not None and key is not None:
        common.tls_certificates = [_certificate(cert, key)]
    return _tls_socket(tls.UpstreamTlsContext(common_tls_context=common, sni=sni))


def _jwks_cluster(s: EnvoySettings, host: str, port: int, https: bool) -> cluster.Cluster:
    """The identity provider's JWKS endpoint; over https, verified against the public roots."""
    jwks = cluster.Cluster(
        name=JWKS_CLUSTER,
        type=cluster.ClusterDiscoveryType.LOGICAL_DNS,  # one external name, as Envoy advises for such hosts
        dns_lookup_family=cluster.ClusterDnsLookupFamily.V4_PREFERRED,
        connect_timeout=_seconds(5),
        load_assignment=endpoint.ClusterLoadAssignment(
            cluster_name=JWKS_CLUSTER,
            endpoints=[
                endpoint.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint.LbEndpoint(endpoint=endpoint.Endpoint(address=_address(host, port)))
                    ]
                )
            ],
        ),
    )
    if https:
        jwks.transport_socket = _upstream_tls(host, ["http/1.1"], s.jwt_jwks_ca_file)
    return jwks


def _gateway_cluster(s: EnvoySettings, rest: bool = False) -> cluster.Cluster:
    """Every gateway pod's gRPC port, or with `rest` its REST port (HTTP/1.1, uvicorn's protocol): the same
    balancing, limits, health checks and outlier detection, so a gateway that fails one way is avoided by both."""
    name, port = (GATEWAY_REST_CLUSTER, s.gateway_http_port) if rest else (GATEWAY_CLUSTER, s.gateway_port)
    assert port is not None
    if rest:
        protocol = upstream_http.HttpProtocolOptionsExplicitHttpConfig(
            http_protocol_options=core.Http1ProtocolOptions()
        )
    else:
        protocol = upstream_http.HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=core.Http2ProtocolOptions(
                # pings find a gateway that vanished without closing its connections (a killed container)
                connection_keepalive=core.KeepaliveSettings(interval=_seconds(30), timeout=_seconds(5))
            )
        )
    gateway = endpoint.LbEndpoint(endpoint=endpoint.Endpoint(address=_address(s.gateway_host, port)))
    limits = cluster.CircuitBreakersThresholds(
        max_connections=s.max_connections,
        max_pending_requests=s.max_pending_requests,
        max_requests=s.max_requests,
        retry_budget=cluster.CircuitBreakersThresholdsRetryBudget(
            budget_percent=Percent(value=s.retry_budget_percent),
            min_retry_concurrency=s.min_retry_concurrency,
        ),
    )
    health_check = core.HealthCheck(
        timeout=_seconds(s.health_check_timeout_s),
        interval=_seconds(s.health_check_interval_s),
        # Envoy checks idle clusters only once a minute by default: a gateway that came up after Envoy would
        # then stay "unhealthy" that long, so check as often with or without traffic.
        no_traffic_interval=_seconds(s.health_check_interval_s),
        unhealthy_threshold=s.unhealthy_threshold,
        healthy_threshold=s.healthy_threshold,
    )
    if rest:
        # 200 only while the gateway serves: 400 until its dependencies are ready and again while it drains
        health_check.http_health_check = core.HealthCheckHttpHealthCheck(path=REST_READY_PATH)
    else:
        # "" is the whole server's status: the gateway says NOT_SERVING until its dependencies are ready and
        # again while it drains on SIGTERM, so Envoy stops sending it calls before it stops.
        health_check.grpc_health_check = core.HealthCheckGrpcHealthCheck(service_name="")
    gateway_cluster = cluster.Cluster(
        name=name,
        type=cluster.ClusterDiscoveryType.STRICT_DNS,  # every address the name resolves to (compose replicas)
        dns_lookup_family=cluster.ClusterDnsLookupFamily.V4_PREFERRED,
        connect_timeout=_seconds(s.connect_timeout_s),
        load_assignment=endpoint.ClusterLoadAssignment(
            cluster_name=name, endpoints=[endpoint.LocalityLbEndpoints(lb_endpoints=[gateway])]
        ),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                upstream_http.HttpProtocolOptions(explicit_http_config=protocol)
            )
        },
        circuit_breakers=cluster.CircuitBreakers(thresholds=[limits]),
        health_checks=[health_check],
        lb_policy=cluster.ClusterLbPolicy.LEAST_REQUEST,
        least_request_lb_config=cluster.ClusterLeastRequestLbConfig(choice_count=s.least_request_choices),
        outlier_detection=_outlier_detection(s),
        # No panic routing: when every gateway is unhealthy (starting, draining), say UNAVAILABLE at the edge
        # instead of sending calls to gateways that have said they cannot serve them.
        common_lb_config=cluster.ClusterCommonLbConfig(healthy_panic_threshold=Percent(value=0.0)),
    )
    if s.gateway_ca_file is not None:
        # Health checks and calls alike go over it. SNI and the SAN check both name the gateway, so a
        # certificate of another meshserve process (same CA) is refused.
        gateway_cluster.transport_socket = _upstream_tls(
            s.gateway_tls_name,
            ["http/1.1"] if rest else ["h2"],
            s.gateway_ca_file,
            s.gateway_cert_file,
            s.gateway_key_file,
        )
    return gateway_cluster


def _outlier_detection(s: EnvoySettings) -> cluster.OutlierDetection:
    """Eject a gateway pod for its own failures only. Local-origin errors (connect failure, reset, timeout) are
    counted apart from answers (split_external_local_origin_errors); among answers only 502-504, which for gRPC
    are UNAVAILABLE and DEADLINE_EXCEEDED, count, never a caller's bad request or an INTERNAL about one input.
    Statistical ejection (success rate, failure percentage) is off: a handful of pods is too few for it."""
    return cluster.OutlierDetection(
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=s.outlier_consecutive_failures,
        enforcing_consecutive_local_origin_failure=100,
        consecutive_gateway_failure=s.outlier_consecutive_gateway_failures,
        enforcing_consecutive_gateway_failure=100,
        enforcing_consecutive_5xx=0,
        enforcing_success_rate=0,
        enforcing_local_origin_success_rate=0,
        interval=_seconds(s.outlier_interval_s),
        base_ejection_time=_seconds(s.outlier_base_ejection_s),
        max_ejection_time=_seconds(s.outlier_max_ejection_s),
        max_ejection_percent=s.outlier_max_ejection_percent,
        # a pod that passes its active health check again takes traffic again at once
        successful_active_health_check_uneject_host=True,
    )


def _otlp_cluster(s: EnvoySettings) -> cluster.Cluster:
    """The trace collector: HTTP/2 for OTLP/gRPC; over https, verified against the public roots."""
    host, port, https, _ = _otlp_traces_url(s)
    otlp = cluster.Cluster(
        name=OTLP_CLUSTER,
        type=cluster.ClusterDiscoveryType.STRICT_DNS,
        dns_lookup_family=cluster.ClusterDnsLookupFamily.V4_PREFERRED,
        connect_timeout=_seconds(s.connect_timeout_s),
        load_assignment=endpoint.ClusterLoadAssignment(
            cluster_name=OTLP_CLUSTER,
            endpoints=[
                endpoint.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint.LbEndpoint(endpoint=endpoint.Endpoint(address=_address(host, port)))
                    ]
                )
            ],
        ),
    )
    grpc = s.tracing_otlp_protocol == "grpc"
    if grpc:
        otlp.typed_extension_protocol_options = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                upstream_http.HttpProtocolOptions(
                    explicit_http_config=upstream_http.HttpProtocolOptionsExplicitHttpConfig(
                        http2_protocol_options=core.Http2ProtocolOptions()
                    )
                )
            )
        }
    if https:
        otlp.transport_socket = _upstream_tls(host, ["h2" if grpc else "http/1.1"], s.jwt_jwks_ca_file)
    return otlp


def _clusters(s: EnvoySettings) -> list[cluster.Cluster]:
    remote = _jwks_url(s)
    return [
        _gateway_cluster(s),
        *([_gateway_cluster(s, rest=True)] if s.gateway_http_port is not None else []),
        *([_jwks_cluster(s, *remote)] if remote is not None else []),
        *([_otlp_cluster(s)] if s.tracing_otlp_endpoint is not None else []),
        *([_admin_cluster(s)] if s.metrics_port is not None else []),
    ]


def envoy_config(settings: EnvoySettings) -> dict[str, JSON]:
    """Envoy's bootstrap as a plain dict, in the proto-JSON form Envoy reads (snake_case keys)."""
    config = bootstrap.Bootstrap(
        admin=bootstrap.Admin(address=_address(settings.admin_host, settings.admin_port)),
        static_resources=bootstrap.BootstrapStaticResources(
            listeners=[
                _listener(settings),
                *([_metrics_listener(settings, settings.metrics_port)] if settings.metrics_port else []),
            ],
            clusters=_clusters(settings),
        ),
        stats_config=_stats_config(settings),
        # an edge without a connection limit can be exhausted by idle clients; Envoy warns at start without one
        overload_manager=overload.OverloadManager(
            resource_monitors=[
                overload.ResourceMonitor(
                    name="envoy.resource_monitors.global_downstream_max_connections",
                    typed_config=_typed(
                        DownstreamConnectionsConfig(
                            max_active_downstream_connections=settings.max_downstream_connections
                        )
                    ),
                )
            ]
        ),
    )
    return _proto_names(config.to_dict(casing=Casing.SNAKE))


def _proto_names(value: JSON) -> JSON:
    """betterproto's snake case splits digits from letters (`consecutive_5xx` comes out `consecutive_5_xx`), a
    name Envoy does not know: give such keys back their proto names."""
    if isinstance(value, dict):
        return {key.replace("_5_xx", "_5xx"): _proto_names(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_proto_names(item) for item in value]
    return value


def grpc_proxy_config(
    listen: tuple[str, int], upstream: tuple[str, int], admin: tuple[str, int]
) -> dict[str, JSON]:
    """The least an operator would put in front of a gRPC server: one listener, the router, one HTTP/2 upstream.
    No retries, health checks or access log (the benchmark's peer in front of Triton)."""
    manager = hcm.HttpConnectionManager(
        stat_prefix="proxy",
        route_config=route.RouteConfiguration(
            name="proxy",
            virtual_hosts=[
                route.VirtualHost(
                    name="upstream",
                    domains=["*"],
                    routes=[
                        route.Route(
                            match=route.RouteMatch(prefix="/"),
                            route=route.RouteAction(cluster="upstream", timeout=_seconds(0)),
                        )
                    ],
                )
            ],
        ),
        http_filters=[hcm.HttpFilter(name="envoy.filters.http.router", typed_config=_typed(Router()))],
    )
    http2 = upstream_http.HttpProtocolOptions(
        explicit_http_config=upstream_http.HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=core.Http2ProtocolOptions()
        )
    )
    upstream_endpoint = endpoint.LbEndpoint(endpoint=endpoint.Endpoint(address=_address(*upstream)))
    config = bootstrap.Bootstrap(
        admin=bootstrap.Admin(address=_address(*admin)),
        static_resources=bootstrap.BootstrapStaticResources(
            listeners=[
                listener.Listener(
                    name="proxy",
                    address=_address(*listen),
                    filter_chains=[
                        listener.FilterChain(
                            filters=[
                                listener.Filter(
                                    name="envoy.filters.network.http_connection_manager",
                                    typed_config=_typed(manager),
                                )
                            ]
                        )
                    ],
                )
            ],
            clusters=[
                cluster.Cluster(
                    name="upstream",
                    type=cluster.ClusterDiscoveryType.STATIC,
                    connect_timeout=_seconds(1),
                    load_assignment=endpoint.ClusterLoadAssignment(
                        cluster_name="upstream",
                        endpoints=[endpoint.LocalityLbEndpoints(lb_endpoints=[upstream_endpoint])],
                    ),
                    typed_extension_protocol_options={
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(http2)
                    },
                )
            ],
        ),
    )
    return _proto_names(config.to_dict(casing=Casing.SNAKE))


def render_envoy_yaml(settings: EnvoySettings) -> str:
    header = (
        "# Generated by meshserve.deploy.envoy from EnvoySettings (env prefix MESHSERVE_ENVOY_): do not edit.\n"
        f"# Regenerate with: {REGENERATE}\n"
    )
    return header + yaml.safe_dump(envoy_config(settings), sort_keys=False, width=110)


def deploy_envoy(out: Path = DEFAULT_OUT, settings: EnvoySettings | None = None) -> Path:
    """Write the Envoy config to `out` (directories created); settings default to the environment's."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_envoy_yaml(settings or EnvoySettings()))
    return out
