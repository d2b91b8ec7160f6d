"""The monitor service process: the prediction log, labels and quality in SQLite (embedded) or Redis, served over
gRPC as MonitorService and meshserve.feedback.v1.FeedbackService on one port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from meshserve.core.lifecycle import GrpcService
from meshserve.core.tls import ClientTls
from meshserve.feature.registry import load_registry
from meshserve.feedback.v1 import feedback_pb2, feedback_pb2_grpc
from meshserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from services.monitor.collector import QualityCollector
from services.monitor.handler import MonitorHandler
from services.monitor.redis_store import DOWN, RedisStore
from services.monitor.servicer import FeedbackServicer, MonitorServicer
from services.monitor.settings import MonitorSettings
from services.monitor.sqlite_store import SqliteStore
from services.monitor.store import MonitorStore

log = logging.getLogger(__name__)


class MonitorService(GrpcService):
    name = "monitor"

    def __init__(self, settings: MonitorSettings) -> None:
        super().__init__(settings)
        self.settings: MonitorSettings = settings
        self.store: MonitorStore
        if settings.redis_url:
            self.store = RedisStore(
                settings.redis_url, prefix=settings.redis_prefix, tls=ClientTls.from_settings(settings)
            )
        else:
            self.store = SqliteStore(settings.store_path)
        registry = load_registry(settings.registry_path)

        def feature_order(model: str) -> Sequence[str]:
            spec = registry.models.get(model)
            return spec.vector if spec is not None else ()

        self.handler = MonitorHandler(
            self.store,
            retention_s=settings.retention_s,
            max_records=settings.max_records,
            label_grace_s=settings.label_grace_s,
            max_records_per_request=settings.max_records_per_request,
            min_labels=settings.min_labels,
            feature_order=feature_order,
            upkeep_interval_s=settings.upkeep_interval_s,
        )
        self.collector = QualityCollector(
            self.handler, settings.quality_window_s, settings.quality_metrics_max_age_s
        )
        self.metrics.registry.register(self.collector)
        self._upkeep: asyncio.Task[None] | None = None

    def register(self, server):
        monitor = MonitorServicer(self.handler)
        monitor_pb2_grpc.add_MonitorServiceServicer_to_server(monitor, server)
        feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(FeedbackServicer(monitor), server)
        return [
            monitor_pb2.DESCRIPTOR.services_by_name["MonitorService"].full_name,
            feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"].full_name,
        ]

    async def until_ready(self) -> None:
        while isinstance(
            self.store, RedisStore
        ):  # NOT_SERVING until Redis answers (bounded by the lifecycle)
            try:
                await self.store.ping()
                break
            except DOWN as exc:
                log.warning("waiting for Redis: %s", exc)
                await asyncio.sleep(0.5)
        self.collector.loop = asyncio.get_running_loop()
        if self._upkeep is None:
            self._upkeep = asyncio.create_task(self._keep_up(), name="monitor-upkeep")

    async def _keep_up(self) -> None:
        """Expire pending labels and apply retention even when nothing calls."""
        while True:
            await asyncio.sleep(self.settings.upkeep_interval_s)
            try:
                await self.handler.upkeep()
            except Exception:  # a store briefly down: try again next time
                log.exception("upkeep failed")

    async def close(self) -> None:
        if self._upkeep is not None:
            self._upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._upkeep
        self.collector.loop = None
        await self.store.close()
