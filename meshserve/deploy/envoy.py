"""The Envoy edge in front of the gateway, generated from meshserve's own settings.

The config is built from envoy-data-plane's typed messages, so a misspelt field or a wrong type fails here, in
Python, rather than when Envoy starts; it is then written in Envoy's own proto-JSON form (snake_case YAML).

Security at the edge (docs/security.md): the listener may terminate TLS, the hop to the gateway is TLS verified
against the mesh's CA (with a client certificate when one is given), and `envoy.filters.http.jwt_authn` may
reject calls without a valid JWT before they reach the gateway, which verifies the token again itself.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any as JSON
from urllib.parse import urlsplit

import yaml
from betterproto2 import Casing, Message
from envoy_data_plane.envoy.config.accesslog import v3 as accesslog
from envoy_data_plane.envoy.config.bootstrap import v3 as bootstrap
from envoy_data_plane.envoy.config.cluster import v3 as cluster
from envoy_data_plane.envoy.config.core import v3 as core
from envoy_data_plane.envoy.config.endpoint import v3 as endpoint
from envoy_data_plane.envoy.config.listener import v3 as listener
from envoy_data_plane.envoy.config.overload import v3 as overload
from envoy_data_plane.envoy.config.route import v3 as route
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import StdoutAccessLog
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
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.routes import Route as GatewayRoute
from gateway.settings import GatewaySettings

__all__ = [
    "EnvoySettings",
    "deploy_envoy",
    "envoy_config",
    "grpc_proxy_config",
    "local_settings",
    "render_envoy_yaml",
]

GATEWAY_CLUSTER = "gateway"
JWKS_CLUSTER = "jwks"
JWT_PROVIDER = "meshserve"
# Where the certificates live in every container: the compose `certs` volume, or a cert-manager Secret mounted
# with the same file names in Kubernetes (deploy/k8s/base/certificates.yaml).
CERTS_DIR = Path("/certs")
# Envoy's own gRPC health check and a Kubernetes probe through the listener carry no token.
HEALTH_PREFIX = "/grpc.health.v1.Health/"
DEFAULT_OUT = Path("deploy/envoy/envoy.yaml")
REGENERATE = f"meshserve deploy envoy --out {DEFAULT_OUT}"
# The gateway's own per-route budget: each Envoy attempt must outlast it, so the gateway's answer (its fallback
# tier, its default answer or its DEADLINE_EXCEEDED) reaches the caller instead of Envoy cutting it off.
_GATEWAY_BUDGET_S = GatewayRoute.model_fields["timeout_ms"].default / 1000
_GATEWAY_PORT = GatewaySettings.model_fields["port"].default


class EnvoySettings(BaseSettings):
    """The edge proxy. Defaults suit docker-compose, where the gateway is reachable as `gateway`."""

    model_config = SettingsConfigDict(env_prefix="MESHSERVE_ENVOY_", extra="forbid")

    listen_host: str = Field("0.0.0.0", description="address clients connect to")
    listen_port: int = Field(8080, ge=1, le=65535)
    admin_host: str = Field(
        "127.0.0.1", description="admin API (/ready, /stats); it can stop Envoy: keep private"
    )
    admin_port: int = Field(9901, ge=1, le=65535)
    gateway_host: str = Field(
        "gateway", description="the gateway's DNS name or IP; every address it resolves to"
    )
    gateway_port: int = Field(_GATEWAY_PORT, ge=1, le=65535)
    connect_timeout_s: float = Field(1.0, gt=0)
    route_timeout_s: float = Field(5.0, gt=0, description="whole call, retries included")
    per_try_timeout_s: float = Field(_GATEWAY_BUDGET_S + 1.0, gt=0, description="one attempt")
    # Transport failures plus the gRPC codes where the gateway never did the work. Not resource-exhausted: the
    # gateway returns it for an oversized request, which would fail the same way every time.
    retry_on: str = "connect-failure,refused-stream,reset,unavailable,cancelled"
    num_retries: int = Field(2, ge=0)
    # Envoy's circuit breakers, per cluster. max_retries is what keeps retries from multiplying an outage.
    max_connections: int = Field(1024, ge=1)
    max_pending_requests: int = Field(1024, ge=1)
    max_requests: int = Field(1024, ge=1)
    max_retries: int = Field(3, ge=0, description="retries in flight at once, across all callers")
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
        Path("/etc/ssl/certs/ca-certificates.crt"), description="roots an https JWKS URL is verified with"
    )
    jwt_payload_header: str = Field(
        "x-jwt-payload", description="the verified payload, forwarded for logs (the gateway trusts the token)"
    )
    access_log: bool = Field(True, description="one JSON line per call on stdout")

    @model_validator(mode="after")
    def _consistent(self) -> EnvoySettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if (self.gateway_cert_file is None) != (self.gateway_key_file is None):
            raise ValueError("gateway_cert_file and gateway_key_file go together")
        if self.gateway_cert_file is not None and self.gateway_ca_file is None:
            raise ValueError("a client certificate for the gateway needs gateway_ca_file (TLS) too")
        if self.jwt_jwks is None and (self.jwt_issuer or self.jwt_audiences):
            raise ValueError("jwt_issuer and jwt_audiences need jwt_jwks to verify tokens with")
        if self.jwt_jwks is not None and "://" in self.jwt_jwks:
            url = urlsplit(self.jwt_jwks)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"jwt_jwks: expected a file or an http(s) URL, got {self.jwt_jwks!r}")
        if self.per_try_timeout_s > self.route_timeout_s:
            raise ValueError("per_try_timeout_s cannot exceed route_timeout_s")
        return self


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
    """Every call but health checks needs a valid JWT (401 otherwise, 403 for another audience). The token itself
    is forwarded: the gateway authenticates the caller from it (principal, roles), not from anything Envoy adds."""
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
            jwt_authn.RequirementRule(
                match=route.RouteMatch(prefix="/"),
                requires=jwt_authn.JwtRequirement(provider_name=JWT_PROVIDER),
            ),
        ],
    )
    return hcm.HttpFilter(name="envoy.filters.http.jwt_authn", typed_config=_typed(config))


def _http_connection_manager(s: EnvoySettings) -> hcm.HttpConnectionManager:
    retry = route.RetryPolicy(
        retry_on=s.retry_on,
        num_retries=s.num_retries,
        per_try_timeout=_seconds(s.per_try_timeout_s),
        # with several gateway replicas, retry on another one rather than the one that just failed
        retry_host_predicate=[
            route.RetryPolicyRetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=_typed(PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=3,
    )
    grpc_route = route.Route(
        name="grpc",
        # gRPC only: anything else is refused at the edge with 404 rather than reaching the gateway
        match=route.RouteMatch(prefix="/", grpc=route.RouteMatchGrpcRouteMatchOptions()),
        route=route.RouteAction(
            cluster=GATEWAY_CLUSTER, timeout=_seconds(s.route_timeout_s), retry_policy=retry
        ),
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
            virtual_hosts=[route.VirtualHost(name="gateway", domains=["*"], routes=[grpc_route])],
        ),
        http_filters=[
            *([_jwt_filter(s)] if s.jwt_jwks is not None else []),
            hcm.HttpFilter(name="envoy.filters.http.router", typed_config=_typed(Router())),
        ],
        access_log=access_log if s.access_log else [],
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
                alpn_protocols=["h2"],  # gRPC is HTTP/2 only
            )
        )
        chain.transport_socket = _tls_socket(context)
    return listener.Listener(
        name="edge", address=_address(s.listen_host, s.listen_port), filter_chains=[chain]
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


def _gateway_cluster(s: EnvoySettings) -> cluster.Cluster:
    http2 = upstream_http.HttpProtocolOptions(
        explicit_http_config=upstream_http.HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=core.Http2ProtocolOptions(
                # pings find a gateway that vanished without closing its connections (a killed container)
                connection_keepalive=core.KeepaliveSettings(interval=_seconds(30), timeout=_seconds(5))
            )
        )
    )
    gateway = endpoint.LbEndpoint(
        endpoint=endpoint.Endpoint(address=_address(s.gateway_host, s.gateway_port))
    )
    limits = cluster.CircuitBreakersThresholds(
        max_connections=s.max_connections,
        max_pending_requests=s.max_pending_requests,
        max_requests=s.max_requests,
        max_retries=s.max_retries,
    )
    health_check = core.HealthCheck(
        timeout=_seconds(s.health_check_timeout_s),
        interval=_seconds(s.health_check_interval_s),
        # Envoy checks idle clusters only once a minute by default: a gateway that came up after Envoy would
        # then stay "unhealthy" that long, so check as often with or without traffic.
        no_traffic_interval=_seconds(s.health_check_interval_s),
        unhealthy_threshold=s.unhealthy_threshold,
        healthy_threshold=s.healthy_threshold,
        # "" is the whole server's status: the gateway says NOT_SERVING until its dependencies are ready and
        # again while it drains on SIGTERM, so Envoy stops sending it calls before it stops.
        grpc_health_check=core.HealthCheckGrpcHealthCheck(service_name=""),
    )
    gateway_cluster = cluster.Cluster(
        name=GATEWAY_CLUSTER,
        type=cluster.ClusterDiscoveryType.STRICT_DNS,  # every address the name resolves to (compose replicas)
        dns_lookup_family=cluster.ClusterDnsLookupFamily.V4_PREFERRED,
        connect_timeout=_seconds(s.connect_timeout_s),
        load_assignment=endpoint.ClusterLoadAssignment(
            cluster_name=GATEWAY_CLUSTER, endpoints=[endpoint.LocalityLbEndpoints(lb_endpoints=[gateway])]
        ),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(http2)
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
            s.gateway_tls_name, ["h2"], s.gateway_ca_file, s.gateway_cert_file, s.gateway_key_file
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


def _clusters(s: EnvoySettings) -> list[cluster.Cluster]:
    remote = _jwks_url(s)
    return [_gateway_cluster(s), *([_jwks_cluster(s, *remote)] if remote is not None else [])]


def envoy_config(settings: EnvoySettings) -> dict[str, JSON]:
    """Envoy's bootstrap as a plain dict, in the proto-JSON form Envoy reads (snake_case keys)."""
    config = bootstrap.Bootstrap(
        admin=bootstrap.Admin(address=_address(settings.admin_host, settings.admin_port)),
        static_resources=bootstrap.BootstrapStaticResources(
            listeners=[_listener(settings)], clusters=_clusters(settings)
        ),
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
