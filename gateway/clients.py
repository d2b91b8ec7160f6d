"""Typed clients for the gateway's three dependencies: one channel each, a deadline on every call."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from tritonclient.grpc import service_pb2

from meshserve.cache.v1 import cache_pb2, cache_pb2_grpc
from meshserve.core.channels import error_from_rpc, open_channel, wait_until_serving
from meshserve.feature.v1 import feature_pb2, feature_pb2_grpc
from meshserve.inference.v1 import inference_pb2, inference_pb2_grpc


class _Client:
    hop = "dependency"

    def __init__(self, target: str) -> None:
        self.target = target
        self.channel = open_channel(target)

    async def wait_until_serving(self, timeout_s: float) -> None:
        await wait_until_serving(self.channel, timeout_s=timeout_s)

    async def close(self) -> None:
        await self.channel.close()


class FeatureClient(_Client):
    hop = "feature service"

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.stub = feature_pb2_grpc.FeatureServiceStub(self.channel)

    async def get(
        self, entity: str, keys: Sequence[str], features: Sequence[str], timeout_s: float
    ) -> feature_pb2.GetOnlineFeaturesResponse:
        request = feature_pb2.GetOnlineFeaturesRequest(entity=entity, entity_keys=keys, features=features)
        try:
            return await self.stub.GetOnlineFeatures(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.hop) from None


class CacheClient(_Client):
    """Raises `CacheUnavailable` on any failure: the caller bypasses the cache, never fails because of it."""

    hop = "cache service"

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.stub = cache_pb2_grpc.CacheServiceStub(self.channel)

    async def get(self, lookups: Sequence[tuple[str, Sequence[str]]], timeout_s: float) -> dict[str, bytes]:
        request = cache_pb2.GetRequest(lookups=[cache_pb2.Lookup(key=k, scopes=s) for k, s in lookups])
        try:
            reply = await self.stub.Get(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise CacheUnavailable(exc.code().name) from None
        return {entry.key: entry.value for entry in reply.hits}

    async def set(
        self, items: Sequence[tuple[str, Sequence[str], bytes]], ttl_s: float, timeout_s: float
    ) -> None:
        entries = [cache_pb2.Entry(key=k, scopes=s, value=v) for k, s, v in items]
        try:
            await self.stub.Set(
                cache_pb2.SetRequest(entries=entries, ttl_ms=int(ttl_s * 1000)), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise CacheUnavailable(exc.code().name) from None

    async def invalidate(self, scopes: Sequence[str], timeout_s: float) -> dict[str, int]:
        try:
            reply = await self.stub.Invalidate(cache_pb2.InvalidateRequest(scopes=scopes), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.hop) from None
        return dict(reply.generations)

    async def stats(self, timeout_s: float) -> cache_pb2.StatsResponse:
        try:
            return await self.stub.Stats(cache_pb2.StatsRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.hop) from None


class CacheUnavailable(Exception):
    pass


class InferenceClient(_Client):
    hop = "inference service"

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)

    async def infer(
        self, request: service_pb2.ModelInferRequest, timeout_s: float
    ) -> service_pb2.ModelInferResponse:
        try:
            return await self.stub.ModelInfer(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.hop) from None

    async def describe(
        self, model: str, version: str, timeout_s: float
    ) -> inference_pb2.DescribeModelResponse:
        request = inference_pb2.DescribeModelRequest(model_name=model, model_version=version)
        try:
            return await self.stub.DescribeModel(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.hop) from None

    async def serve_versions(self, model: str, versions: list[str], timeout_s: float) -> list[str]:
        request = inference_pb2.ServeVersionsRequest(model_name=model, versions=versions)
        try:
            return list((await self.stub.ServeVersions(request, timeout=timeout_s)).ready_versions)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.hop) from None
