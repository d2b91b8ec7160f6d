"""gRPC adapter for CacheService over the in-memory store."""

from __future__ import annotations

from meshserve.cache.v1 import cache_pb2, cache_pb2_grpc
from meshserve.core.errors import ResourceExhausted
from meshserve.core.telemetry import annotate
from services.cache.store import LruTtlCache


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    def __init__(self, store: LruTtlCache, max_keys: int) -> None:
        self.store = store
        self.max_keys = max_keys

    def _check(self, count: int) -> None:
        if count > self.max_keys:
            raise ResourceExhausted(f"{count} keys in one request; the limit is {self.max_keys}")

    async def Get(self, request, context):
        self._check(len(request.keys))
        hits = self.store.get_many(request.keys)
        annotate(keys=len(request.keys), hits=len(hits))
        return cache_pb2.GetResponse(hits=[cache_pb2.Entry(key=k, value=v) for k, v in hits.items()])

    async def Set(self, request, context):
        self._check(len(request.entries))
        ttl_s = request.ttl_ms / 1000 if request.ttl_ms else None
        stored = self.store.set_many(((e.key, e.value) for e in request.entries), ttl_s)
        return cache_pb2.SetResponse(stored=stored)

    async def Delete(self, request, context):
        self._check(len(request.keys))
        return cache_pb2.DeleteResponse(deleted=self.store.delete_many(request.keys))
