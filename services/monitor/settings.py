from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from meshserve.core.settings import ServiceSettings

DAY_S = 24 * 3600.0


class MonitorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MESHSERVE_MONITOR_", extra="forbid")

    port: int = Field(50057, ge=0, le=65535, description="port to listen on; 0 lets the OS choose")
    max_message_bytes: int = Field(
        16 * 1024 * 1024, gt=0, description="largest request accepted (a batch of records with features)"
    )
    store_path: str = Field(
        "monitor.db", description="SQLite file of the embedded store (WAL; kept across restarts)"
    )
    redis_url: str | None = Field(
        None, description="redis://host:port/db for a store shared by replicas (production); unset: SQLite"
    )
    redis_prefix: str = Field("meshserve:monitor:", description="prefix of every Redis key of the store")
    retention_s: float = Field(30 * DAY_S, gt=0, description="records answered longer ago are dropped")
    max_records: int = Field(
        5_000_000, gt=0, description="records kept at most; beyond it the oldest are dropped first"
    )
    label_grace_s: float = Field(
        3600.0,
        ge=0,
        description="how long a label for an id not logged yet waits for its prediction (it may be in flight); "
        "then it is counted unknown and dropped",
    )
    quality_window_s: float = Field(
        3600.0, gt=0, description="the window of predictions the Prometheus quality gauges cover"
    )
    quality_metrics_max_age_s: float = Field(
        10.0,
        ge=0,
        description="scrapes within this long of the last computation of the quality gauges share it (each reads "
        "every prediction of the window); 0: every scrape computes them",
    )
    max_records_per_request: int = Field(10_000, gt=0, description="records (or labels) in one request")
    min_labels: int = Field(
        200, gt=0, description="Compare: labelled predictions a side needs before any verdict but waiting"
    )
    upkeep_interval_s: float = Field(
        5.0, gt=0, description="how often expired pending labels and records past retention are dropped"
    )
    registry_path: Path | None = Field(
        None,
        description="feature registry YAML (the order of exported features); default: the embedded sample",
    )
