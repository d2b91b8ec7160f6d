"""Tells the cache service which entities' features changed, so predictions cached for them become unreachable."""

from __future__ import annotations

import logging

import grpc

from meshserve.cache.v1 import cache_pb2, cache_pb2_grpc
from meshserve.core.channels import open_channel
from meshserve.core.context import outgoing_metadata
from meshserve.core.tls import ClientTls

log = logging.getLogger(__name__)


class CacheInvalidator:
    def __init__(self, target: str, timeout_s: float = 2.0, tls: ClientTls | None = None) -> None:
        self.channel = open_channel(target, tls=tls, server_name="cache")
        self.stub = cache_pb2_grpc.CacheServiceStub(self.channel)
        self.timeout_s = timeout_s
        self.failures = 0

    async def __call__(self, entity: str, keys: list[str]) -> None:
        scopes = [f"entity:{entity}:{key}" for key in keys]
        try:
            await self.stub.Invalidate(
                cache_pb2.InvalidateRequest(scopes=scopes),
                timeout=self.timeout_s,
                metadata=outgoing_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            # the write stands; cached answers for these entities age out by their TTL instead
            self.failures += 1
            log.error(
                "cache invalidation failed",
                extra={"entity": entity, "keys": len(keys), "code": exc.code().name},
            )

    async def close(self) -> None:
        await self.channel.close()
