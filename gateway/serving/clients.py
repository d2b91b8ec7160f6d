"""Typed clients for the gateway's dependencies: one channel each, a deadline on every call.

Concurrent calls to the same target are coalesced (`meshserve.core.coalesce`): cache lookups travel as one Get,
feature lookups as one GetOnlineFeatures, cache writes as one Set, and ModelInfer requests that Triton could
batch together as one merged request (`gateway.serving.batching`), each caller getting back exactly its own part.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Hashable, Sequence
from dataclasses import dataclass

import grpc
from tritonclient.grpc import service_pb2

from gateway.serving.batching import (
    TIMEOUT,
    BatchPlan,
    SplitError,
    merge,
    merge_key,
    rows_of,
    split,
    timeout_us,
    to_raw,
)
from gateway.settings import DEFAULT_COALESCING, Coalescing
from meshserve.cache.v1 import cache_pb2, cache_pb2_grpc
from meshserve.core.channels import error_from_rpc, open_channel, passed_on, wait_until_serving
from meshserve.core.coalesce import Coalescer
from meshserve.core.context import outgoing_metadata
from meshserve.core.errors import DeadlineExceeded, ErrorCode, MeshError
from meshserve.core.logs import Throttle
from meshserve.core.tls import ClientTls
from meshserve.feature.v1 import feature_pb2, feature_pb2_grpc
from meshserve.feedback.v1 import feedback_pb2
from meshserve.inference import triton_control
from meshserve.inference.v1 import inference_pb2, inference_pb2_grpc
from meshserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc

log = logging.getLogger(__name__)
MODEL_INFER = "/meshserve.inference.v1.InferenceService/ModelInfer"


@dataclass(frozen=True, slots=True)
class _Pending:
    """A member of a batch: what it asked for and until when it waits."""

    ask: object
    deadline: float

    def left(self, now: float) -> float:
        return self.deadline - now


@dataclass(frozen=True, slots=True)
class _Write:
    """Entries for the cache, and how long their Set may take once it leaves."""

    entries: list[cache_pb2.Entry]
    timeout_s: float


def _longest(members: Sequence[_Pending]) -> float:
    """A merged call's timeout: long enough for the most patient member (the others leave on their own)."""
    return max(m.deadline for m in members) - time.monotonic()


class _Client:
    hop = "dependency"
    tls_name = ""  # the name the service's certificate must carry (its identity)

    def __init__(self, target: str, coalescing: Coalescing, tls: ClientTls | None = None) -> None:
        self.target = target
        self.coalescing = coalescing
        self.channel = open_channel(target, tls=tls, server_name=self.tls_name)

    async def wait_until_serving(self, timeout_s: float) -> None:
        await wait_until_serving(self.channel, timeout_s=timeout_s)

    async def close(self) -> None:
        await self.channel.close()

    def _coalescer(self, send, max_size: int | None = None) -> Coalescer:
        return Coalescer(send, max_in_flight=self.coalescing.service_in_flight, max_size=max_size)

    async def _submit(self, lane: Coalescer, ask: object, key: Hashable, size: int, timeout_s: float):
        try:
            return await lane.submit(
                _Pending(ask, time.monotonic() + timeout_s), key=key, size=size, timeout_s=timeout_s
            )
        except TimeoutError:
            raise DeadlineExceeded(f"{self.hop}: no answer within {timeout_s * 1000:.0f} ms") from None


class FeatureClient(_Client):
    hop = "feature service"
    tls_name = "feature"

    def __init__(
        self, target: str, coalescing: Coalescing = DEFAULT_COALESCING, tls: ClientTls | None = None
    ) -> None:
        super().__init__(target, coalescing, tls)
        self.stub = feature_pb2_grpc.FeatureServiceStub(self.channel)
        self.lane = self._coalescer(self._send, coalescing.max_keys)

    def coalescers(self) -> dict[str, Coalescer]:
        return {"feature": self.lane}

    async def get(
        self, entity: str, keys: Sequence[str], features: Sequence[str], timeout_s: float
    ) -> list[feature_pb2.FeatureVector]:
        """One vector per key, in order; `features` name the values of each, in order."""
        if not self.coalescing.enabled:
            return list((await self._call(entity, keys, features, timeout_s)).vectors)
        return await self._submit(self.lane, keys, (entity, tuple(features)), len(keys), timeout_s)

    async def _send(self, key: tuple[str, tuple[str, ...]], members: list[_Pending]):
        entity, features = key
        keys = [k for m in members for k in m.ask]  # type: ignore[attr-defined]
        reply = await self._call(entity, keys, features, _longest(members))
        vectors, start = list(reply.vectors), 0
        parts = []
        for member in members:
            count = len(member.ask)  # type: ignore[arg-type]
            parts.append(vectors[start : start + count])
            start += count
        return parts

    async def _call(self, entity, keys, features, timeout_s) -> feature_pb2.GetOnlineFeaturesResponse:
        request = feature_pb2.GetOnlineFeaturesRequest(entity=entity, entity_keys=keys, features=features)
        try:
            return await self.stub.GetOnlineFeatures(request, timeout=timeout_s, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.hop) from None


class CacheUnavailable(Exception):
    pass


class CacheClient(_Client):
    """Raises `CacheUnavailable` on any failure of Get or Set: the caller bypasses the cache, never fails
    because of it."""

    hop = "cache service"
    tls_name = "cache"

    def __init__(
        self, target: str, coalescing: Coalescing = DEFAULT_COALESCING, tls: ClientTls | None = None
    ) -> None:
        super().__init__(target, coalescing, tls)
        self.stub = cache_pb2_grpc.CacheServiceStub(self.channel)
        self.reads = self._coalescer(self._send_get, coalescing.max_keys)
        self._throttle = Throttle()  # a cache that is down fails every write: say so once in a while
        # writes are behind the answers: one Set at a time is plenty, the rest gather while it travels
        self.writes = Coalescer(self._send_set, max_in_flight=1, max_size=coalescing.max_keys)

    def coalescers(self) -> dict[str, Coalescer]:
        return {"cache_get": self.reads, "cache_set": self.writes}

    async def get(self, lookups: Sequence[tuple[str, Sequence[str]]], timeout_s: float) -> dict[str, bytes]:
        try:
            if not self.coalescing.enabled:
                return await self._get(lookups, timeout_s)
            return await self._submit(self.reads, lookups, None, len(lookups), timeout_s)
        except DeadlineExceeded:
            raise CacheUnavailable("DEADLINE_EXCEEDED") from None

    async def _send_get(self, key: None, members: list[_Pending]) -> list[dict[str, bytes]]:
        lookups = [lookup for m in members for lookup in m.ask]  # type: ignore[attr-defined]
        hits = await self._get(lookups, _longest(members))
        return [{k: hits[k] for k, _ in m.ask if k in hits} for m in members]  # type: ignore[attr-defined]

    async def _get(self, lookups, timeout_s: float) -> dict[str, bytes]:
        request = cache_pb2.GetRequest(lookups=[cache_pb2.Lookup(key=k, scopes=s) for k, s in lookups])
        try:
            reply = await self.stub.Get(request, timeout=timeout_s, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as exc:
            raise CacheUnavailable(exc.code().name) from None
        return {entry.key: entry.value for entry in reply.hits}

    def set_behind(self, items: Sequence[tuple[str, Sequence[str], bytes]], ttl_s: float, timeout_s: float):
        """Store without waiting: the returned future completes once the Set carrying `items` has landed (or
        failed, with CacheUnavailable). `timeout_s` counts from when that Set leaves."""
        entries = [cache_pb2.Entry(key=k, scopes=s, value=v) for k, s, v in items]
        return self.writes.enqueue(_Write(entries, timeout_s), key=int(ttl_s * 1000), size=len(entries))

    async def _send_set(self, ttl_ms: int, members: list[_Write]) -> list[None]:
        entries = [entry for m in members for entry in m.entries]
        request = cache_pb2.SetRequest(entries=entries, ttl_ms=ttl_ms)
        try:
            timeout_s = max(m.timeout_s for m in members)
            await self.stub.Set(request, timeout=timeout_s, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as exc:
            if (held := self._throttle("write")) is not None:
                log.warning("cache write failed", extra={"code": exc.code().name, "entries": len(entries),
                                                         "since_last": held})  # fmt: skip
            raise CacheUnavailable(exc.code().name) from None
        return [None] * len(members)

    async def drain(self) -> None:
        await self.writes.drain()

    async def invalidate(self, scopes: Sequence[str], timeout_s: float) -> dict[str, int]:
        try:
            reply = await self.stub.Invalidate(
                cache_pb2.InvalidateRequest(scopes=scopes), timeout=timeout_s, metadata=outgoing_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.hop) from None
        return dict(reply.generations)

    async def stats(self, timeout_s: float) -> cache_pb2.StatsResponse:
        try:
            return await self.stub.Stats(cache_pb2.StatsRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.hop) from None


class InferenceClient(_Client):
    hop = "inference service"
    tls_name = "inference"

    def __init__(
        self, target: str, coalescing: Coalescing = DEFAULT_COALESCING, tls: ClientTls | None = None
    ) -> None:
        super().__init__(target, coalescing, tls)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        # The hot path sends bytes serialised when the call leaves, so a caller's request can never change under
        # a call in flight (grpc.aio would serialise it later, in its own task).
        self._model_infer = self.channel.unary_unary(
            MODEL_INFER, response_deserializer=service_pb2.ModelInferResponse.FromString
        )
        self.lanes: dict[
            tuple[str, str], tuple[BatchPlan, Coalescer]
        ] = {}  # (model, version) -> its batching
        self._control = {
            method: self.channel.unary_unary(
                triton_control.path(method),
                request_serializer=triton_control.messages(method)[0].SerializeToString,
                response_deserializer=triton_control.messages(method)[1].FromString,
            )
            for method in triton_control.FORWARDED
        }
        self._stream_infer = self.channel.stream_stream(
            triton_control.path("ModelStreamInfer"),
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )

    def coalescers(self) -> dict[str, Coalescer]:
        return {f"model:{model}/{version}": lane for (model, version), (_, lane) in self.lanes.items()}

    async def infer(
        self, request: service_pb2.ModelInferRequest, timeout_s: float, plan: BatchPlan | None = None
    ) -> service_pb2.ModelInferResponse:
        """One inference: merged with concurrent ones where `plan` (the model's) allows, else alone."""
        key = merge_key(request) if plan is not None and plan.mergeable and self.coalescing.enabled else None
        if key is None:
            return await self._alone(request, timeout_s)
        to_raw(request)
        return await self._submit(self._lane(request, plan), request, key, rows_of(request), timeout_s)  # type: ignore[arg-type]

    def _lane(self, request: service_pb2.ModelInferRequest, plan: BatchPlan) -> Coalescer:
        target = (request.model_name, request.model_version)
        known = self.lanes.get(target)
        if known is None or known[0] != plan:  # a reloaded model may come with another config
            known = self.lanes[target] = (plan, Coalescer(self._send, max_in_flight=plan.max_in_flight,
                                                          max_size=plan.max_rows))  # fmt: skip
        return known[1]

    async def _send(self, key: Hashable, members: list[_Pending]) -> list[service_pb2.ModelInferResponse]:
        requests: list[service_pb2.ModelInferRequest] = [m.ask for m in members]  # type: ignore[misc]
        if len(members) == 1:
            return [await self._alone(requests[0], members[0].left(time.monotonic()))]
        now = time.monotonic()
        merged = merge(requests)
        merged.parameters[TIMEOUT].int64_param = max(timeout_us(m.ask, m.left(now)) for m in members)  # type: ignore[arg-type]
        reply = await self._call(merged, _longest(members))
        try:
            return split(reply, requests)
        except SplitError as exc:
            raise MeshError(f"model {merged.model_name!r}: {exc}", ErrorCode.INTERNAL) from None

    async def _alone(self, request: service_pb2.ModelInferRequest, timeout_s: float):
        request.parameters[TIMEOUT].int64_param = timeout_us(request, timeout_s)
        return await self._call(request, timeout_s)

    async def _call(self, request: service_pb2.ModelInferRequest, timeout_s: float):
        if timeout_s <= 0:
            raise DeadlineExceeded(f"{self.hop}: no time left for inference")
        try:
            return await self._model_infer(
                request.SerializeToString(), timeout=timeout_s, metadata=outgoing_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.hop) from None

    async def control(self, method: str, request, timeout_s: float | None):
        """One of Triton's own control calls (`meshserve.inference.triton_control.FORWARDED`), through the inference service;
        Triton's answer, or its status as a MeshError."""
        try:
            return await self._control[method](request, timeout=timeout_s, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as exc:
            raise passed_on(exc, self.hop) from None

    async def stream(
        self, requests: AsyncIterator[service_pb2.ModelInferRequest], timeout_s: float | None
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Triton's streaming inference through the inference service: every response Triton sends, in its
        order, until Triton ends the stream. Closing this iterator cancels the call all the way to Triton."""
        call = self._stream_infer(requests, timeout=timeout_s, metadata=outgoing_metadata())
        try:
            async for reply in call:
                yield reply
        except grpc.aio.AioRpcError as exc:
            raise passed_on(exc, self.hop) from None
        finally:
            call.cancel()

    async def describe(
        self, model: str, version: str, timeout_s: float
    ) -> inference_pb2.DescribeModelResponse:
        request = inference_pb2.DescribeModelRequest(model_name=model, model_version=version)
        try:
            return await self.stub.DescribeModel(request, timeout=timeout_s, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.hop) from None

    async def serve_versions(self, model: str, versions: list[str], timeout_s: float) -> list[str]:
        request = inference_pb2.ServeVersionsRequest(model_name=model, versions=versions)
        try:
            reply = await self.stub.ServeVersions(request, timeout=timeout_s, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.hop) from None
        return list(reply.ready_versions)


class MonitorClient:
    """The monitor service: the prediction log written behind the answers, labels passed on from the feedback
    API, and quality read by the rollout judge. One channel, a deadline on every call; failures are MeshErrors by
    status (never by message text), so the log writer can tell a monitor that is down from one that refuses."""

    hop = "monitor service"
    tls_name = "monitor"

    def __init__(self, target: str, timeout_s: float = 5.0, tls: ClientTls | None = None) -> None:
        self.target = target
        self.timeout_s = timeout_s
        # a monitor that comes back is reached again within seconds: the log holds records until then
        reconnect = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.max_reconnect_backoff_ms", 5000)]
        self.channel = open_channel(target, tls=tls, server_name=self.tls_name, options=reconnect)
        self.stub = monitor_pb2_grpc.MonitorServiceStub(self.channel)

    async def log(self, records: list[monitor_pb2.PredictionRecord]) -> monitor_pb2.LogPredictionsResponse:
        request = monitor_pb2.LogPredictionsRequest(records=records)
        return await self._call(self.stub.LogPredictions, request, self.timeout_s)

    async def send_feedback(
        self, request: feedback_pb2.SendFeedbackRequest, timeout_s: float | None = None
    ) -> feedback_pb2.SendFeedbackResponse:
        return await self._call(self.stub.SendFeedback, request, self._timeout(timeout_s))

    async def quality(
        self, request: monitor_pb2.GetQualityRequest, timeout_s: float | None = None
    ) -> monitor_pb2.GetQualityResponse:
        return await self._call(self.stub.GetQuality, request, self._timeout(timeout_s))

    async def compare(
        self, request: monitor_pb2.CompareRequest, timeout_s: float | None = None
    ) -> monitor_pb2.CompareResponse:
        return await self._call(self.stub.Compare, request, self._timeout(timeout_s))

    def _timeout(self, timeout_s: float | None) -> float:
        """The caller's time left, within this client's deadline."""
        return self.timeout_s if timeout_s is None else min(timeout_s, self.timeout_s)

    async def _call(self, method, request, timeout_s: float):
        if timeout_s <= 0:
            raise DeadlineExceeded(f"{self.hop}: no time left for the call")
        try:
            return await method(request, timeout=timeout_s, metadata=outgoing_metadata())
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.hop) from None

    async def wait_until_serving(self, timeout_s: float) -> None:
        await wait_until_serving(self.channel, timeout_s=timeout_s)

    async def close(self) -> None:
        await self.channel.close()
