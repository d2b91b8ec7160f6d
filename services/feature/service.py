"""The feature service process: SQLite online store seeded from the sample accounts, served over gRPC."""

from __future__ import annotations

import logging
import time
from importlib import resources

from meshserve.core.lifecycle import GrpcService
from meshserve.feature.v1 import feature_pb2, feature_pb2_grpc
from meshserve.registry import load_registry
from services.feature.handler import FeatureHandler
from services.feature.servicer import FeatureServicer
from services.feature.settings import FeatureSettings
from services.feature.store import SqliteStore, load_csv

log = logging.getLogger(__name__)


class FeatureService(GrpcService):
    name = "feature"

    def __init__(self, settings: FeatureSettings) -> None:
        super().__init__(settings)
        self.settings: FeatureSettings = settings
        self.registry = load_registry(settings.registry_path)
        self.store = SqliteStore(settings.db_path)
        self.handler = FeatureHandler(self.registry, self.store, settings.max_keys_per_request)

    def register(self, server):
        feature_pb2_grpc.add_FeatureServiceServicer_to_server(FeatureServicer(self.handler), server)
        return [feature_pb2.DESCRIPTOR.services_by_name["FeatureService"].full_name]

    async def until_ready(self) -> None:
        if self.settings.seed and self.store.is_empty():
            self._seed()

    def _seed(self) -> None:
        entity = self.settings.seed_entity
        spec = self.registry.entities[entity]
        source = self.settings.seed_csv or resources.files("meshserve.defaults").joinpath("accounts.csv")
        with resources.as_file(source) as path:
            count = load_csv(self.store, entity, spec.join_key, path, event_ts=time.time())
        log.info("seeded online store", extra={"entity": entity, "values": count, "source": str(source)})

    async def close(self) -> None:
        self.store.close()
