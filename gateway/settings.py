from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from gateway.routing.admission import AdmissionPolicy
from meshserve.core.auth import MAX_LEEWAY_S, AuthConfig
from meshserve.core.settings import ServiceSettings


@dataclass(frozen=True, slots=True)
class Coalescing:
    """How the gateway's clients batch concurrent calls (`gateway.serving.clients`)."""

    enabled: bool = True
    service_in_flight: int = 1  # calls out at once to the feature or cache service
    max_keys: int = 1024  # keys in one merged feature or cache call
    model_in_flight: int = (
        0  # merged calls out at once per model version and request shape; 0 = from its config
    )
    model_max_rows: int = 0  # rows in one merged ModelInfer; 0 = the model's max_batch_size


DEFAULT_COALESCING = Coalescing()


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_GATEWAY_", extra="forbid")

    port: int = Field(50051, ge=0, le=65535)
    max_message_bytes: int = Field(
        2**31 - 1,
        gt=0,
        description="largest request accepted (Triton's own limit); larger ones: RESOURCE_EXHAUSTED",
    )
    max_deadline_s: float = Field(
        300.0, gt=0, description="a caller's deadline is honoured up to this; a route's timeout_ms applies to "
        "calls that set none",
    )  # fmt: skip
    repository_refresh_s: float = Field(
        5.0, gt=0, description="how often the models Triton serves are looked up again (each is served under its "
        "own name unless a route takes it)",
    )  # fmt: skip
    routes_path: Path | None = Field(None, description="routes YAML; default: the embedded sample routes")
    registry_path: Path | None = Field(
        None, description="feature registry YAML; default: the embedded sample"
    )
    feature_url: str = Field("127.0.0.1:50052", description="feature service (host:port)")
    cache_url: str = Field("127.0.0.1:50053", description="cache service (host:port)")
    inference_url: str = Field("127.0.0.1:50054", description="inference service (host:port)")
    monitor_url: str | None = Field(
        "127.0.0.1:50057", description="monitor service (host:port): the prediction log and labels; unset or empty: "
        "no log, and the feedback API answers UNAVAILABLE",
    )  # fmt: skip
    monitor_timeout_s: float = Field(5.0, gt=0, description="deadline of each call to the monitor service")
    prediction_log_queue: int = Field(
        10_000, gt=0, description="logged answers held while the monitor is slow or down; beyond it they are "
        "dropped (and counted), never waited for",
    )  # fmt: skip
    prediction_log_batch: int = Field(
        1000, gt=0, description="logged answers sent in one call to the monitor"
    )
    max_instances_per_predict: int = Field(
        1024, gt=0, description="larger Predicts are refused before any work"
    )
    cache_timeout_s: float = Field(0.05, gt=0, description="a slower cache is bypassed, never waited for")
    near_cache_max_bytes: int = Field(
        4 * 1024 * 1024, ge=0, description="in-process near-cache size; 0 = off"
    )
    near_cache_ttl_s: float = Field(
        1.0,
        gt=0,
        description="near-cache TTL: bounds how long another process's invalidation can go unseen here",
    )
    feature_timeout_s: float = Field(1.0, gt=0)
    coalesce: bool = Field(
        True, description="merge concurrent calls to the same service or model version into one call"
    )
    coalesce_model_in_flight: int = Field(
        0, ge=0, description="ModelInfer calls out at once per model version and request shape before new ones "
        "wait to be merged; 0 = the model's execution instances",
    )  # fmt: skip
    coalesce_model_max_rows: int = Field(
        0, ge=0, description="rows in one merged ModelInfer; 0 = the model's max_batch_size"
    )
    coalesce_service_in_flight: int = Field(
        1, ge=1, description="calls out at once to the feature or cache service before new ones are merged"
    )
    admission: bool = Field(
        True, description="bound the work admitted (per route and in total) by observed latency"
    )
    admission_initial_limit: int = Field(
        400, gt=0, description="requests in flight per route and kind of work before latency says otherwise"
    )
    admission_min_limit: int = Field(16, gt=0, description="the per-route limit never falls below this")
    admission_max_limit: int = Field(1000, gt=0, description="the per-route limit never grows above this")
    admission_total_limit: int = Field(
        2000, gt=0, description="requests in flight across all routes, at most"
    )
    admission_tolerance: float = Field(
        3.0,
        gt=1.0,
        description="how far recent latency may rise above its long-run level before limits shrink",
    )
    coalesce_max_keys: int = Field(
        1024,
        gt=0,
        description="keys in one merged feature or cache call (keep within those services' limits)",
    )
    drift_profile: Path | None = Field(
        None, description="reference profile JSON; default: the sample models'"
    )
    drift_window: int = Field(2000, gt=0, description="rows per model the drift statistics look back over")
    drift_threshold: float = Field(0.2, gt=0, description="PSI above which a feature counts as drifting")
    drift_check_s: float = Field(5.0, gt=0, description="how often drift is checked (and crossings logged)")
    http: bool = Field(
        True, description="also serve Triton's REST API (the Open Inference Protocol over HTTP)"
    )
    http_port: int = Field(50056, ge=0, le=65535, description="the REST API's port; 0 lets the OS choose")
    http_parser: Literal["httptools", "h11"] = Field(
        "httptools",
        description="the REST API's HTTP/1.1 parser: httptools (C, llhttp; a declared dependency) or h11 (pure "
        "Python, uvicorn's fallback; slower, kept for comparison)",
    )
    admin_host: str = Field("127.0.0.1", description="the admin API's address; keep it off public networks")
    admin_port: int = Field(50055, ge=0, le=65535, description="the admin API's port; 0 lets the OS choose")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics port; unset = off"
    )
    audit_log: Path = Field(
        Path(".meshserve/audit.jsonl"), description="append-only log of every route change"
    )

    auth_required: bool = Field(
        False, description="callers must authenticate (API key, JWT or client certificate); off: anonymous callers "
        "are served, and a credential that is sent is still checked",
    )  # fmt: skip
    auth_api_keys_file: Path | None = Field(
        None, description="API keys (`meshserve keys`): hashes and roles, JSON, reread when it changes"
    )
    auth_jwks: str | None = Field(
        None, description="the JWKS that JWTs are verified against: a file (reread when it changes) or an "
        "https:// URL; unset: JWTs are refused",
    )  # fmt: skip
    auth_jwt_issuer: str | None = Field(None, description="the `iss` a JWT must carry; unset: not checked")
    auth_jwt_audience: str | None = Field(None, description="the `aud` a JWT must carry; unset: not checked")
    auth_jwt_leeway_s: float = Field(
        30.0, ge=0, le=MAX_LEEWAY_S, description="clock skew allowed on a JWT's exp and nbf"
    )
    auth_jwt_roles_claim: str = Field(
        "roles", min_length=1, description="the claim holding a JWT's roles (dots for a nested one)"
    )
    auth_mtls_roles: dict[str, list[str]] = Field(
        default_factory=lambda: {"admin": ["admin"]},
        description="roles of callers known by their client certificate's identity (JSON)",
    )
    admin_token_file: Path | None = Field(
        None, description="a file holding the admin token (role admin); set: the admin API requires a credential "
        "(`meshserve up` writes run_dir/admin-token)",
    )  # fmt: skip
    control_store: str | None = Field(
        None, pattern=r"^(sqlite:///.+|rediss?://.+|unix://.+)$",
        description="the live route table and audit log shared by several gateways: sqlite:///ABS/PATH (one "
        "machine) or redis://HOST:PORT/DB; unset: this process's own table, as a single gateway",
    )  # fmt: skip
    control_poll_s: float = Field(
        0.2,
        gt=0,
        le=5,
        description="how often the control store's revision is read: replicas converge within it",
    )

    @field_validator("monitor_url")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    def auth_config(self) -> AuthConfig:
        return AuthConfig(
            required=self.auth_required, api_keys_file=self.auth_api_keys_file, jwks=self.auth_jwks,
            jwt_issuer=self.auth_jwt_issuer, jwt_audience=self.auth_jwt_audience,
            jwt_leeway_s=self.auth_jwt_leeway_s, jwt_roles_claim=self.auth_jwt_roles_claim,
            mtls_roles=self.auth_mtls_roles, admin_token_file=self.admin_token_file,
        )  # fmt: skip

    def admission_policy(self) -> AdmissionPolicy | None:
        if not self.admission:
            return None
        return AdmissionPolicy(
            initial=self.admission_initial_limit,
            minimum=self.admission_min_limit,
            maximum=self.admission_max_limit,
            total=self.admission_total_limit,
            tolerance=self.admission_tolerance,
        )

    def coalescing(self) -> Coalescing:
        return Coalescing(
            enabled=self.coalesce,
            service_in_flight=self.coalesce_service_in_flight,
            max_keys=self.coalesce_max_keys,
            model_in_flight=self.coalesce_model_in_flight,
            model_max_rows=self.coalesce_model_max_rows,
        )
