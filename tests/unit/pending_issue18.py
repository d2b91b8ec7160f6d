"""Issue 18 is built on several branches at once. Until the monitor service (services/monitor) and the gateway's
`monitor_url` setting land from theirs, the launcher and deploy tests check what this branch gives them against
the names of the contract (/work/wt/CONTRACT18.md) instead: a stand-in with the contract's fields. Once those
branches are merged, the real classes are imported below and the stand-ins go unused: delete this module then
and import the real ones directly."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from gateway.settings import GatewaySettings as _RealGatewaySettings
from meshserve.core.settings import ServiceSettings

__all__ = ["QUALITY_METRICS", "GatewaySettings", "MonitorSettings"]

# The series the Grafana dashboard reads from the monitor (quality per route, variant and version, computed at
# scrape time; labels and records by outcome) and the gateway's prediction log counter, by the contract's names.
# The dashboard tests take them from here; once merged, take them from the monitor's collector and the gateway's
# metrics instead, as tests/unit/test_dashboard_metrics.py does for the other processes.
QUALITY_METRICS = {
    f"meshserve_quality_{name}"
    for name in (
        "auc",
        "log_loss",
        "brier",
        "precision",
        "recall",
        "f1",
        "positive_rate",
        "calibration_error",
        "mae",
        "rmse",
        "label_coverage",
        "label_delay_seconds",
        "predictions",
        "labels",
    )
} | {  # fmt: skip
    "meshserve_monitor_labels_total",
    "meshserve_monitor_records_total",
    "meshserve_gateway_prediction_log_records_total",
}

try:
    from services.monitor.settings import MonitorSettings
except ModuleNotFoundError:  # the monitor's branch is not merged yet

    class MonitorSettings(ServiceSettings):  # type: ignore[no-redef]
        model_config = SettingsConfigDict(env_prefix="MESHSERVE_MONITOR_", extra="forbid")

        port: int = Field(50057, ge=0, le=65535)
        store_path: str = "monitor.db"
        redis_url: str | None = None
        retention_s: float = 30 * 24 * 3600.0
        max_records: int = 5_000_000
        label_grace_s: float = 3600.0
        quality_window_s: float = 3600.0
        max_records_per_request: int = 10_000
        registry_path: Path | None = None

    MonitorSettings.__module__ = "services.monitor.settings"  # what `python -m` runs, as the real one says


if "monitor_url" in _RealGatewaySettings.model_fields:
    GatewaySettings = _RealGatewaySettings
else:  # the gateway's branch of issue 18 is not merged yet

    class GatewaySettings(_RealGatewaySettings):  # type: ignore[no-redef]
        model_config = SettingsConfigDict(env_prefix="MESHSERVE_GATEWAY_", extra="forbid")

        monitor_url: str | None = "127.0.0.1:50057"
        prediction_log_queue: int = 10_000
        prediction_log_batch: int = 1_000

    GatewaySettings.__module__ = _RealGatewaySettings.__module__
