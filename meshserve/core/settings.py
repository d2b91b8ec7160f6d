"""The settings every gRPC process shares; each service subclasses them with its own env prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TLS_FIELDS = ("tls_cert_file", "tls_key_file", "tls_ca_file", "tls_client_auth", "tls_allowed_peers")


class ServiceSettings(BaseSettings):
    """Base settings. Subclasses set `model_config = SettingsConfigDict(env_prefix="MESHSERVE_<NAME>_")`."""

    model_config = SettingsConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(0, ge=0, le=65535, description="port to listen on; 0 lets the OS choose")
    reuse_port: bool = Field(
        False,
        description="bind with SO_REUSEPORT, so several processes of one service share its ports and the kernel "
        "spreads new connections across them (`meshserve up --gateways N`); off: a port taken is an error",
    )
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
    metrics_host: str | None = Field(
        None, description="address /metrics listens on; unset: host (`meshserve up` keeps it on loopback)"
    )
    dependency_timeout_s: float = Field(
        120.0, gt=0, description="how long to wait for dependencies before giving up at start-up"
    )
    tls_cert_file: Path | None = Field(
        None,
        description="this process's certificate (PEM): its ports serve TLS, and it is presented on its own "
        "outgoing hops; reread when it changes on disk",
    )
    tls_key_file: Path | None = Field(None, description="the private key of tls_cert_file (PEM)")
    tls_ca_file: Path | None = Field(
        None,
        description="the CA peers' certificates must chain to: set, outgoing hops use TLS and verify the server "
        "with it, and servers verify client certificates with it",
    )
    tls_client_auth: bool = Field(False, description="require a client certificate from the CA (mTLS)")
    tls_allowed_peers: list[str] = Field(
        default_factory=list,
        description="identities (first DNS SAN of the client certificate) allowed to call; empty: any "
        "certificate from the CA. Set, client certificates are required",
    )

    @model_validator(mode="after")
    def _tls_consistent(self) -> ServiceSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if (self.tls_client_auth or self.tls_allowed_peers) and (
            self.tls_cert_file is None or self.tls_ca_file is None
        ):
            raise ValueError(
                "tls_client_auth and tls_allowed_peers need tls_cert_file, tls_key_file and tls_ca_file"
            )
        return self

    def tls_fields(self) -> dict[str, object]:
        """The TLS settings, to give a second server in the same process (the gateway's admin port) the same."""
        return {name: getattr(self, name) for name in TLS_FIELDS}
