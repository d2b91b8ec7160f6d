"""The feature service process: SQLite online store seeded from the sample accounts, served over gRPC."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from meshserve.core.lifecycle import GrpcService
from meshserve.core.tls import ClientTls
from meshserve.feature.registry import load_registry
from meshserve.feature.v1 import feature_pb2, feature_pb2_grpc
from services.feature.files import read_rows
from services.feature.handler import FeatureHandler, Status
from services.feature.invalidation import CacheInvalidator
from services.feature.servicer import FeatureServicer
from services.feature.settings import FeatureSettings
from services.feature.store import OnlineStore, RedisStore, SqliteStore

log = logging.getLogger(__name__)


class FeatureService(GrpcService):
    name = "feature"

    def __init__(self, settings: FeatureSettings) -> None:
        super().__init__(settings)
        self.settings: FeatureSettings = settings
        self.registry = load_registry(settings.registry_path)
        tls = ClientTls.from_settings(settings)
        self.store: OnlineStore = (
            RedisStore(settings.redis_url, tls=tls) if settings.redis_url else SqliteStore(settings.db_path)
        )
        self.invalidator = CacheInvalidator(settings.cache_url, tls=tls) if settings.cache_url else None
        self.handler = FeatureHandler(
            self.registry, self.store, settings.max_keys_per_request, on_update=self.invalidator
        )
        self.metrics.registry.register(FreshnessCollector(self.handler))

    def register(self, server):
        feature_pb2_grpc.add_FeatureServiceServicer_to_server(FeatureServicer(self.handler), server)
        return [feature_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name]

    async def until_ready(self) -> None:
        if isinstance(self.store, RedisStore):
            await self.store.ping()
        if self.settings.seed and await self.store.is_empty():
            await self._seed()

    async def _seed(self) -> None:
        """Load the sample accounts through the same validation as any ingestion."""
        entity = self.settings.seed_entity
        join_key = self.registry.entities[entity].join_key
        source = self.settings.seed_csv or resources.files("meshserve.defaults").joinpath("accounts.csv")
        with resources.as_file(source) as path:
            count = await self.handler.push(entity, list(read_rows(Path(path), join_key)))
        log.info("seeded online store", extra={"entity": entity, "values": count, "source": str(source)})

    async def close(self) -> None:
        await self.store.close()
        if self.invalidator is not None:
            await self.invalidator.close()


class FreshnessCollector(Collector):
    """How often each feature was served present, missing, or older than its max age (at scrape time)."""

    def __init__(self, handler: FeatureHandler) -> None:
        self.handler = handler

    def collect(self):
        served = CounterMetricFamily(
            "meshserve_feature_served",
            "Feature values served, by freshness status",
            labels=["feature", "status"],
        )
        for feature, counts in sorted(self.handler.served.items()):
            for status in Status:
                served.add_metric([feature, status.name.lower()], counts[status])
        yield served
