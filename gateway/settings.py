from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve.core.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_GATEWAY_", extra="forbid")

    port: int = Field(50051, ge=0, le=65535)
    routes_path: Path | None = Field(None, description="routes YAML; default: the embedded sample routes")
    registry_path: Path | None = Field(
        None, description="feature registry YAML; default: the embedded sample"
    )
    feature_url: str = Field("127.0.0.1:50052", description="feature service (host:port)")
    cache_url: str = Field("127.0.0.1:50053", description="cache service (host:port)")
    inference_url: str = Field("127.0.0.1:50054", description="inference service (host:port)")
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
    drift_profile: Path | None = Field(
        None, description="reference profile JSON; default: the sample models'"
    )
    drift_window: int = Field(2000, gt=0, description="rows per model the drift statistics look back over")
    drift_threshold: float = Field(0.2, gt=0, description="PSI above which a feature counts as drifting")
    drift_check_s: float = Field(5.0, gt=0, description="how often drift is checked (and crossings logged)")
    admin_host: str = Field("127.0.0.1", description="the admin API's address; keep it off public networks")
    admin_port: int = Field(50055, ge=0, le=65535, description="the admin API's port; 0 lets the OS choose")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics port; unset = off"
    )
    audit_log: Path = Field(
        Path(".meshserve/audit.jsonl"), description="append-only log of every route change"
    )
