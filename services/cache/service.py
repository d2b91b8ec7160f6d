"""The cache service process: the embedded LRU+TTL store served over gRPC."""

from __future__ import annotations

from meshserve.cache.v1 import cache_pb2, cache_pb2_grpc
from meshserve.core.lifecycle import GrpcService
from services.cache.servicer import CacheServicer
from services.cache.settings import CacheSettings
from services.cache.store import LruTtlCache


class CacheService(GrpcService):
    name = "cache"

    def __init__(self, settings: CacheSettings) -> None:
        super().__init__(settings)
        self.store = LruTtlCache(settings.max_bytes, settings.max_entry_bytes, settings.default_ttl_s)
        self.max_keys = settings.max_keys_per_request

    def register(self, server):
        cache_pb2_grpc.add_CacheServiceServicer_to_server(CacheServicer(self.store, self.max_keys), server)
        return [cache_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name]
