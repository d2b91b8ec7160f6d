"""The cache service process: the embedded in-memory store, or Redis, served over gRPC."""

from __future__ import annotations

from meshserve.cache.v1 import cache_pb2, cache_pb2_grpc
from meshserve.core.lifecycle import GrpcService
from meshserve.core.tls import ClientTls
from services.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from services.cache.servicer import CacheServicer
from services.cache.settings import CacheSettings


class CacheService(GrpcService):
    name = "cache"

    def __init__(self, settings: CacheSettings) -> None:
        super().__init__(settings)
        self.backend: CacheBackend
        if settings.redis_url:
            self.backend = RedisBackend(
                settings.redis_url,
                settings.max_entry_bytes,
                settings.default_ttl_s,
                max_ttl_s=settings.max_ttl_s,
                tls=ClientTls.from_settings(settings),
            )
        else:
            self.backend = MemoryBackend(
                settings.max_bytes,
                settings.max_entry_bytes,
                settings.default_ttl_s,
                max_ttl_s=settings.max_ttl_s,
            )
        self.max_keys = settings.max_keys_per_request

    def register(self, server):
        cache_pb2_grpc.add_CacheServiceServicer_to_server(CacheServicer(self.backend, self.max_keys), server)
        return [cache_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name]

    async def until_ready(self) -> None:
        if isinstance(self.backend, RedisBackend):
            await self.backend.ping()  # NOT_SERVING until Redis answers

    async def close(self) -> None:
        await self.backend.close()
