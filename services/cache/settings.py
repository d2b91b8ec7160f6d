from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from meshserve.core.settings import ServiceSettings
from services.cache.backends import DEFAULT_MAX_TTL_S


class CacheSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_CACHE_", extra="forbid")

    port: int = Field(50053, ge=0, le=65535, description="port to listen on; 0 lets the OS choose")
    max_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="in-memory: total size of keys and values kept"
    )
    max_entry_bytes: int = Field(64 * 1024, gt=0, description="larger entries are not stored")
    default_ttl_s: float = Field(60.0, gt=0, description="TTL for entries set without one")
    max_ttl_s: float = Field(
        DEFAULT_MAX_TTL_S,
        gt=0,
        description="longer TTLs are cut to this; scope generations are kept this long (plus a margin) after "
        "their last use, so it bounds their memory",
    )
    max_keys_per_request: int = Field(4096, gt=0)
    redis_url: str | None = Field(
        None, description="redis://host:port/db to share the cache between replicas; unset: in-memory"
    )

    @model_validator(mode="after")
    def _default_within_max(self) -> CacheSettings:
        if self.default_ttl_s > self.max_ttl_s:
            raise ValueError(f"default_ttl_s ({self.default_ttl_s}) exceeds max_ttl_s ({self.max_ttl_s})")
        return self
