"""Predict: route -> cache (hits return) -> features -> inference -> Triton -> cache set. No gRPC here."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import service_pb2

from gateway.cache_keys import decode_score, encode_score, prediction_key
from gateway.catalog import ModelCatalog
from gateway.clients import CacheClient, CacheUnavailable, FeatureClient, InferenceClient
from gateway.routes import Route, RouteTable, Variant, choose_variant
from meshserve.core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from meshserve.feature.v1 import feature_pb2
from meshserve.registry import FeatureRegistry

log = logging.getLogger(__name__)
_USABLE = {feature_pb2.PRESENT}


@dataclass(frozen=True, slots=True)
class Instance:
    entity_key: str
    features: Mapping[str, float]  # request-time features


@dataclass(frozen=True, slots=True)
class Prediction:
    entity_key: str
    score: float
    from_cache: bool


@dataclass(frozen=True, slots=True)
class PredictResult:
    route: str
    variant: str
    model: str
    version: str
    predictions: list[Prediction]


class PredictHandler:
    def __init__(
        self,
        routes: RouteTable,
        registry: FeatureRegistry,
        catalog: ModelCatalog,
        features: FeatureClient,
        cache: CacheClient,
        inference: InferenceClient,
        *,
        max_instances: int,
        cache_timeout_s: float,
        feature_timeout_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.routes = routes
        self.registry = registry
        self.catalog = catalog
        self.features = features
        self.cache = cache
        self.inference = inference
        self.max_instances = max_instances
        self.cache_timeout_s = cache_timeout_s
        self.feature_timeout_s = feature_timeout_s
        self.rng = rng or random.Random()
        self._background: set[asyncio.Task[None]] = set()

    async def predict(
        self, route_name: str, instances: Sequence[Instance], time_left_s: float | None
    ) -> PredictResult:
        if len(instances) > self.max_instances:
            raise ResourceExhausted(
                f"{len(instances)} instances in one Predict; the limit is {self.max_instances}"
            )
        route = self.routes.get(route_name)
        variant = choose_variant(route, self.rng)
        self._validate(variant.model, instances)
        model = await self.catalog.get(variant.model, variant.version)
        budget = route.timeout_ms / 1000 if time_left_s is None else min(time_left_s, route.timeout_ms / 1000)

        keys = [
            prediction_key(route_name, variant.name, variant.model, model.version, i.entity_key, i.features)
            for i in instances
        ]
        cached = await self._cache_get(route, keys)
        misses = [n for n, key in enumerate(keys) if key not in cached]
        scores: dict[int, float] = {
            n: decode_score(cached[key]) for n, key in enumerate(keys) if key in cached
        }
        if misses:
            fresh = await self._score(
                [instances[n] for n in misses], variant, model.version, model.max_batch_size, budget
            )
            scores.update(zip(misses, fresh, strict=True))
            if route.cache.enabled:
                self._cache_set({keys[n]: encode_score(s) for n, s in zip(misses, fresh, strict=True)}, route)
        predictions = [
            Prediction(i.entity_key, scores[n], keys[n] in cached) for n, i in enumerate(instances)
        ]
        return PredictResult(route_name, variant.name, variant.model, model.version, predictions)

    def _validate(self, model: str, instances: Sequence[Instance]) -> None:
        wanted = self.registry.request_features(model)
        for n, instance in enumerate(instances):
            if not instance.entity_key:
                raise InvalidArgument(f"instance {n}: entity_key is empty")
            for name in wanted:
                if name not in instance.features:
                    raise InvalidArgument(f"instance {n}: missing request feature {name!r}")
                value = instance.features[name]
                if not isinstance(value, int | float):
                    raise InvalidArgument(f"instance {n}: request feature {name!r} must be a number")
                if self.registry.features[name].out_of_range(value):
                    spec = self.registry.features[name]
                    raise InvalidArgument(
                        f"instance {n}: request feature {name!r}={value} is outside [{spec.min}, {spec.max}]"
                    )
            unknown = sorted(set(instance.features) - set(wanted))
            if unknown:
                raise InvalidArgument(
                    f"instance {n}: unknown request feature {unknown[0]!r}; expected {wanted}"
                )

    async def _score(
        self, instances: Sequence[Instance], variant: Variant, version: str, max_batch: int, budget: float
    ) -> list[float]:
        spec = self.registry.models[variant.model]
        stored = self.registry.stored_features(variant.model)
        reply = await self.features.get(
            spec.entity, [i.entity_key for i in instances], stored, min(budget, self.feature_timeout_s)
        )
        stored_values = self._stored_values(reply, stored)
        matrix = np.empty((len(instances), len(spec.vector)), dtype=np.float32)
        for row, instance in enumerate(instances):
            values = {**stored_values[row], **instance.features}
            matrix[row] = [values[name] for name in spec.vector]
        step = max_batch or len(instances)
        chunks = [matrix[start : start + step] for start in range(0, len(instances), step)]
        outputs = await asyncio.gather(*(self._infer(chunk, variant, version, budget) for chunk in chunks))
        return [float(s) for chunk in outputs for s in chunk]

    def _stored_values(
        self, reply: feature_pb2.GetOnlineFeaturesResponse, names: list[str]
    ) -> list[dict[str, float]]:
        """Stored features per instance; a value that is missing or too old takes the registry's default."""
        position = {name: n for n, name in enumerate(reply.feature_names)}
        rows = []
        for vector in reply.vectors:
            values = {}
            for name in names:
                n = position[name]
                if vector.statuses[n] in _USABLE:
                    kind = vector.values[n].WhichOneof("kind")
                    values[name] = getattr(vector.values[n], kind)
                    continue
                default = self.registry.features[name].default
                if default is None:
                    status = feature_pb2.FeatureStatus.Name(vector.statuses[n])
                    raise FailedPrecondition(
                        f"feature {name!r} of {vector.entity_key!r} is {status} and has no default"
                    )
                values[name] = default
            rows.append(values)
        return rows

    async def _infer(self, matrix: np.ndarray, variant: Variant, version: str, budget: float) -> np.ndarray:
        spec = self.registry.models[variant.model]
        request = service_pb2.ModelInferRequest(
            model_name=variant.model,
            model_version=version,
            inputs=[
                service_pb2.ModelInferRequest.InferInputTensor(
                    name=spec.input, datatype="FP32", shape=matrix.shape
                )
            ],
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=spec.output)],
            raw_input_contents=[matrix.tobytes()],
        )
        reply = await self.inference.infer(request, budget)
        index = next(n for n, out in enumerate(reply.outputs) if out.name == spec.output)
        return np.frombuffer(reply.raw_output_contents[index], dtype=np.float32)

    async def _cache_get(self, route: Route, keys: list[str]) -> dict[str, bytes]:
        if not route.cache.enabled:
            return {}
        try:
            return await self.cache.get(keys, self.cache_timeout_s)
        except CacheUnavailable as exc:
            log.warning("cache bypassed on read", extra={"reason": str(exc)})
            return {}

    def _cache_set(self, items: dict[str, bytes], route: Route) -> None:
        """Fire and forget: the caller's answer never waits for the cache."""

        async def store() -> None:
            try:
                await self.cache.set(items, route.cache.ttl_s, self.cache_timeout_s)
            except CacheUnavailable as exc:
                log.warning("cache bypassed on write", extra={"reason": str(exc)})

        task = asyncio.create_task(store())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
