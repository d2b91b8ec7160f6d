"""What the gateway knows about each Triton model version behind its routes, fetched once and kept."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tritonclient.grpc import service_pb2

from gateway.serving.batching import BatchPlan, batch_plan
from gateway.serving.clients import InferenceClient
from gateway.settings import Coalescing
from meshserve.core.errors import ErrorCode, MeshError, Unavailable


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model: str
    version: str  # resolved
    ready: bool
    metadata: service_pb2.ModelMetadataResponse
    config: service_pb2.ModelConfigResponse
    plan: BatchPlan  # how concurrent requests to this version are merged

    @property
    def max_batch_size(self) -> int:
        return self.config.config.max_batch_size


class ModelCatalog:
    """Caches DescribeModel by (model, requested version); concurrent first lookups share one call."""

    def __init__(
        self, inference: InferenceClient, timeout_s: float = 5.0, coalescing: Coalescing | None = None
    ) -> None:
        self.inference = inference
        self.timeout_s = timeout_s
        self.coalescing = coalescing or inference.coalescing
        self._known: dict[tuple[str, str], asyncio.Future[ModelInfo]] = {}

    async def get(self, model: str, version: str) -> ModelInfo:
        key = (model, version)
        future = self._known.get(key)
        if future is not None and future.done() and not future.cancelled() and future.exception() is None:
            info = future.result()  # the hot path: known and ready, nothing to wait for
            if info.ready:
                return info
        if future is None:
            future = self._known[key] = asyncio.ensure_future(self._describe(model, version))
        try:
            info = await asyncio.shield(future)
        except Exception:
            self._known.pop(key, None)  # don't remember failures
            raise
        if not info.ready:
            self._known.pop(key, None)  # ask again next time
        return info

    async def _describe(self, model: str, version: str) -> ModelInfo:
        try:
            reply = await self.inference.describe(model, version, self.timeout_s)
        except MeshError as exc:
            # Routes name these models, callers don't: a missing one is a variant that is down, not bad input.
            if exc.code is ErrorCode.NOT_FOUND:
                raise Unavailable(
                    f"model {model!r} version {version or 'latest'} is not available: {exc}"
                ) from None
            raise
        c = self.coalescing
        plan = batch_plan(reply.config.config, c.model_in_flight, c.model_max_rows)
        return ModelInfo(model, reply.resolved_version, reply.ready, reply.metadata, reply.config, plan)

    def forget(self, model: str | None = None) -> None:
        """Forget what is known of `model` (every version), or of every model."""
        if model is None:
            self._known.clear()
            return
        for key in [k for k in self._known if k[0] == model]:
            del self._known[key]
