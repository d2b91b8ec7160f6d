"""The settings every gRPC process shares; each service subclasses them with its own env prefix."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Base settings. Subclasses set `model_config = SettingsConfigDict(env_prefix="MESHSERVE_<NAME>_")`."""

    model_config = SettingsConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(0, ge=0, le=65535, description="port to listen on; 0 lets the OS choose")
    grace_s: float = Field(10.0, ge=0, description="how long in-flight calls may finish on shutdown")
    shutdown_settle_s: float = Field(
        0.5,
        ge=0,
        description="on SIGTERM, how long to answer NOT_SERVING while still serving before new calls are refused: "
        "balancers and health checkers need a moment to see it, and calls the transport already holds are taken "
        "in rather than cancelled. 0: stop at once",
    )
    max_message_bytes: int = Field(4 * 1024 * 1024, gt=0, description="largest request accepted")
    log_level: str = Field("INFO", description="python logging level")
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Prometheus /metrics port (0: any free port); unset: no metrics server",
    )
    dependency_timeout_s: float = Field(
        120.0, gt=0, description="how long to wait for dependencies before giving up at start-up"
    )
