from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve.core.settings import ServiceSettings


class FeatureSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_FEATURE_", extra="forbid")

    port: int = Field(50052, ge=0, le=65535, description="port to listen on; 0 lets the OS choose")
    registry_path: Path | None = Field(
        None, description="feature registry YAML; default: the embedded sample"
    )
    db_path: str = Field(":memory:", description="SQLite online store; ':memory:' keeps it in the process")
    seed_csv: Path | None = Field(
        None, description="CSV to load into an empty store at start-up; default: the embedded sample accounts"
    )
    seed_entity: str = Field("account", description="entity whose rows seed_csv holds")
    seed: bool = Field(True, description="load seed_csv when the store is empty")
    max_keys_per_request: int = Field(1024, gt=0)
    redis_url: str | None = Field(
        None, description="redis://host:port/db for a shared online store; unset: SQLite"
    )
    cache_url: str | None = Field(
        None, description="cache service (host:port) told which entities changed, so their cached answers go"
    )
