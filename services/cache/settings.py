from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve.core.settings import ServiceSettings


class CacheSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_CACHE_", extra="forbid")

    port: int = Field(50053, ge=0, le=65535, description="port to listen on; 0 lets the OS choose")
    max_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="in-memory: total size of keys and values kept"
    )
    max_entry_bytes: int = Field(64 * 1024, gt=0, description="larger entries are not stored")
    default_ttl_s: float = Field(60.0, gt=0, description="TTL for entries set without one")
    max_keys_per_request: int = Field(4096, gt=0)
    redis_url: str | None = Field(
        None, description="redis://host:port/db to share the cache between replicas; unset: in-memory"
    )
