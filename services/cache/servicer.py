"""gRPC adapter for CacheService over a backend (memory or Redis)."""

from __future__ import annotations

from meshserve.cache.v1 import cache_pb2, cache_pb2_grpc
from meshserve.core.errors import ResourceExhausted
from meshserve.core.telemetry import annotate
from services.cache.backends import CacheBackend


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    def __init__(self, backend: CacheBackend, max_keys: int) -> None:
        self.backend = backend
        self.max_keys = max_keys

    def _check(self, count: int) -> None:
        if count > self.max_keys:
            raise ResourceExhausted(f"{count} keys in one request; the limit is {self.max_keys}")

    async def Get(self, request, context):
        self._check(len(request.lookups))
        hits = await self.backend.get_many([(x.key, list(x.scopes)) for x in request.lookups])
        annotate(keys=len(request.lookups), hits=len(hits))
        return cache_pb2.GetResponse(hits=[cache_pb2.Entry(key=k, value=v) for k, v in hits.items()])

    async def Set(self, request, context):
        self._check(len(request.entries))
        ttl_s = request.ttl_ms / 1000 if request.ttl_ms else None
        stored = await self.backend.set_many(
            [(e.key, list(e.scopes), e.value) for e in request.entries], ttl_s
        )
        return cache_pb2.SetResponse(stored=stored)

    async def Delete(self, request, context):
        self._check(len(request.lookups))
        deleted = await self.backend.delete_many([(x.key, list(x.scopes)) for x in request.lookups])
        return cache_pb2.DeleteResponse(deleted=deleted)

    async def Invalidate(self, request, context):
        self._check(len(request.scopes))
        return cache_pb2.InvalidateResponse(generations=await self.backend.invalidate(list(request.scopes)))

    async def Stats(self, request, context):
        entries, size = await self.backend.size()
        c = self.backend.counters
        return cache_pb2.StatsResponse(
            backend=self.backend.name, hits=c.hits, misses=c.misses, sets=c.sets, entries=entries, bytes=size
        )
