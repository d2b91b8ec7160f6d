from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve.core.settings import ServiceSettings


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_INFERENCE_", extra="forbid")

    port: int = Field(50054, ge=0, le=65535, description="port to listen on; 0 lets the OS choose")
    triton_url: str = Field("127.0.0.1:8001", description="Triton's gRPC endpoint (host:port)")
    triton_urls: list[str] = Field(
        default_factory=list,
        description="several Triton replicas (JSON list of host:port): each inference goes to the least loaded "
        "one that serves the model, model control to all; empty = `triton_url` alone",
    )
    triton_tls_name: str = Field(
        "triton", description="the name Triton's certificate must carry (with tls_ca_file set: TLS to Triton)"
    )
    triton_timeout_s: float = Field(
        5.0, gt=0, description="longest Triton's metadata, config and readiness calls may take"
    )
    triton_max_call_s: float = Field(
        300.0, gt=0, description="longest an inference or a forwarded control call (model load...) may take"
    )
    required_models: list[str] = Field(
        default_factory=list,
        description="models (`name` or `name:version`) that must be ready before SERVING",
    )
    max_message_bytes: int = Field(
        2**31 - 1, gt=0, description="largest message accepted or sent (Triton's own limit)"
    )
    triton_check_interval_s: float = Field(
        0.5, gt=0, description="once SERVING, how often Triton's readiness is checked (health follows it)"
    )
    triton_check_timeout_s: float = Field(
        1.0, gt=0, description="how long one readiness check may take before Triton counts as not ready"
    )
    triton_failed_checks: int = Field(
        3, ge=1, description="failed readiness checks in a row before the service says NOT_SERVING"
    )
    triton_reconnect_max_s: float = Field(
        1.0, gt=0, description="longest wait between attempts to reconnect to Triton after it went away"
    )
