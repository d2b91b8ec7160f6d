"""Predict: route -> split -> cache (hits return) -> features -> inference -> Triton -> cache set. No gRPC here.

Instances of one Predict may land on different variants (a split sticky per entity), so each variant's share is
served as its own group, down its own fallback chain, concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import service_pb2

from gateway.cache_keys import prediction_key
from gateway.catalog import ModelCatalog
from gateway.clients import FeatureClient, InferenceClient
from gateway.dispatch import AllTiersFailed, Dispatcher, Tier
from gateway.live import LiveRoutes
from gateway.prediction_cache import PredictionCache, prediction_scopes
from gateway.resilience import try_elsewhere
from gateway.routes import FeatureAction, FeaturePolicy, Route, StickyKey, Variant, choose_variant
from gateway.shadow import ShadowRunner
from meshserve.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    MeshError,
    ResourceExhausted,
    Unavailable,
)
from meshserve.drift import DriftMonitor
from meshserve.feature.v1 import feature_pb2
from meshserve.registry import FeatureRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Instance:
    entity_key: str
    features: Mapping[str, float]  # request-time features


@dataclass(frozen=True, slots=True)
class Prediction:
    entity_key: str
    score: float
    from_cache: bool
    variant: str
    model_version: str
    tier: Tier


@dataclass(frozen=True, slots=True)
class PredictResult:
    route: str
    model: str
    predictions: list[Prediction]


class PredictHandler:
    def __init__(
        self,
        routes: LiveRoutes,
        registry: FeatureRegistry,
        catalog: ModelCatalog,
        features: FeatureClient,
        cache: PredictionCache,
        inference: InferenceClient,
        dispatcher: Dispatcher,
        shadow: ShadowRunner,
        drift: DriftMonitor | None = None,
        *,
        max_instances: int,
        feature_timeout_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.routes = routes
        self.registry = registry
        self.catalog = catalog
        self.features = features
        self.cache = cache
        self.inference = inference
        self.dispatcher = dispatcher
        self.shadow = shadow
        self.drift = drift
        self.max_instances = max_instances
        self.feature_timeout_s = feature_timeout_s
        self.rng = rng or random.Random()

    async def predict(
        self,
        route_name: str,
        instances: Sequence[Instance],
        time_left_s: float | None,
        headers: Mapping[str, str] | None = None,
    ) -> PredictResult:
        if len(instances) > self.max_instances:
            raise ResourceExhausted(
                f"{len(instances)} instances in one Predict; the limit is {self.max_instances}"
            )
        route = self.routes.get(route_name)
        deadline = self.dispatcher.deadline(route, time_left_s)
        headers = headers or {}
        groups: dict[str, list[int]] = {}
        for n, instance in enumerate(instances):
            variant = choose_variant(
                route,
                self.rng,
                sticky_key=self._sticky_key(route, instance, headers),
                forced=self._forced(route, headers),
            )
            groups.setdefault(variant.name, []).append(n)
        self._validate(route, instances)
        answers: dict[int, Prediction] = {}
        await asyncio.gather(
            *(
                self._serve_group(
                    route_name, route, route.variant(name), [instances[n] for n in ns], ns, answers, deadline
                )
                for name, ns in groups.items()
            )
        )
        predictions = [answers[n] for n in range(len(instances))]
        if route.shadows:
            self._mirror(route_name, route, instances, predictions)
        first = predictions[0].variant if predictions else ""
        return PredictResult(route_name, route.variant(first).model if first else "", predictions)

    def _mirror(
        self, route_name: str, route: Route, instances: Sequence[Instance], predictions: list[Prediction]
    ) -> None:
        answered = [(i, p) for i, p in zip(instances, predictions, strict=True) if p.tier is not Tier.DEFAULT]
        if not answered:
            return
        mirrored = [i for i, _ in answered]

        async def score(variant: Variant, time_left_s: float) -> list[float]:
            await self.dispatcher.inject_faults(
                route, variant, time_left_s
            )  # shadows are tested like any variant
            return (await self._score(route, mirrored, variant, time_left_s, observe=False))[1]

        self.shadow.mirror(route_name, route, [p.score for _, p in answered], score)

    @staticmethod
    def _sticky_key(route: Route, instance: Instance, headers: Mapping[str, str]) -> str | None:
        if route.sticky.key is StickyKey.ENTITY:
            return instance.entity_key
        if route.sticky.key is StickyKey.HEADER:
            return headers.get(route.sticky.header or "")
        return None

    @staticmethod
    def _forced(route: Route, headers: Mapping[str, str]) -> str | None:
        return headers.get(route.override_header) if route.override_header else None

    def _validate(self, route: Route, instances: Sequence[Instance]) -> None:
        wanted = self.registry.request_features(route.primary.model)
        for n, instance in enumerate(instances):
            if not instance.entity_key:
                raise InvalidArgument(f"instance {n}: entity_key is empty")
            for name in wanted:
                if name not in instance.features:
                    raise InvalidArgument(f"instance {n}: missing request feature {name!r}")
                value = instance.features[name]
                if not isinstance(value, int | float):
                    raise InvalidArgument(f"instance {n}: request feature {name!r} must be a number")
                spec = self.registry.features[name]
                if spec.out_of_range(value):
                    raise InvalidArgument(
                        f"instance {n}: request feature {name!r}={value} is outside [{spec.min}, {spec.max}]"
                    )
            unknown = sorted(set(instance.features) - set(wanted))
            if unknown:
                raise InvalidArgument(
                    f"instance {n}: unknown request feature {unknown[0]!r}; expected {wanted}"
                )

    async def _serve_group(
        self,
        route_name: str,
        route: Route,
        chosen: Variant,
        instances: list[Instance],
        positions: list[int],
        answers: dict[int, Prediction],
        deadline: float,
    ) -> None:
        try:
            version = (await self.catalog.get(chosen.model, chosen.version)).version
        except MeshError as exc:
            if not try_elsewhere(exc):
                raise
            version = None  # the chosen variant is down: no cache key to read, the dispatcher falls back
        caching = route.cache.enabled and version is not None
        entity = self.registry.models[chosen.model].entity
        keys = [
            prediction_key(route_name, chosen.name, chosen.model, version or "", i.entity_key, i.features)
            for i in instances
        ]
        scopes = [prediction_scopes(route_name, chosen.model, entity, i.entity_key) for i in instances]
        cached = await self.cache.get(route_name, list(zip(keys, scopes, strict=True))) if caching else {}
        misses = []
        for n, (instance, key) in enumerate(zip(instances, keys, strict=True)):
            if key in cached:
                answers[positions[n]] = Prediction(
                    instance.entity_key, cached[key], True, chosen.name, version or "", Tier.PRIMARY
                )
            else:
                misses.append(n)
        if not misses:
            return
        # Single-flight: an identical miss already being scored is waited for, not scored again.
        leading, following = (
            self.cache.claim([keys[n] for n in misses]) if caching else (list(range(len(misses))), {})
        )
        led = [misses[i] for i in leading]
        try:
            if led:
                await self._score_misses(route_name, route, chosen, version, instances, positions, led, keys, scopes,
                                         answers, deadline)  # fmt: skip
        except BaseException as exc:
            if caching:
                for n in led:
                    self.cache.settle(keys[n], error=exc)
            raise
        if caching:
            for n in led:
                self.cache.settle(keys[n], answers[positions[n]])
        for i, future in following.items():
            n = misses[i]
            shared: Prediction = await asyncio.shield(future)
            self.cache.route_stats(route_name).coalesced += 1
            answers[positions[n]] = Prediction(
                instances[n].entity_key,
                shared.score,
                False,
                shared.variant,
                shared.model_version,
                shared.tier,
            )

    async def _score_misses(
        self,
        route_name: str,
        route: Route,
        chosen: Variant,
        version: str | None,
        instances: list[Instance],
        positions: list[int],
        misses: list[int],
        keys: list[str],
        scopes: list[list[str]],
        answers: dict[int, Prediction],
        deadline: float,
    ) -> None:
        todo = [instances[n] for n in misses]
        try:
            served = await self.dispatcher.run(
                route_name,
                route,
                chosen,
                lambda variant, time_left: self._score(route, todo, variant, time_left),
                deadline,
            )
        except AllTiersFailed:
            if route.default is None:
                raise
            for n in misses:  # the default answer is never cached
                answers[positions[n]] = Prediction(
                    instances[n].entity_key, route.default.score, False, "", "", Tier.DEFAULT
                )
            return
        served_version, scores = served.value
        for n, score in zip(misses, scores, strict=True):
            answers[positions[n]] = Prediction(
                instances[n].entity_key, score, False, served.variant.name, served_version, served.tier
            )
        cacheable = served.tier is Tier.PRIMARY or route.cache.cache_fallbacks
        if route.cache.enabled and cacheable and version == served_version and served.variant is chosen:
            self.cache.put(
                route_name, route, [(keys[n], scopes[n], s) for n, s in zip(misses, scores, strict=True)]
            )

    async def _score(
        self,
        route: Route,
        instances: Sequence[Instance],
        variant: Variant,
        time_left_s: float,
        observe: bool = True,
    ) -> tuple[str, list[float]]:
        model = await self.catalog.get(variant.model, variant.version)
        spec = self.registry.models[variant.model]
        stored = self.registry.stored_features(variant.model)
        reply = await self.features.get(
            spec.entity, [i.entity_key for i in instances], stored, min(time_left_s, self.feature_timeout_s)
        )
        stored_values = self._stored_values(reply, stored, route.features)
        matrix = np.empty((len(instances), len(spec.vector)), dtype=np.float32)
        for row, instance in enumerate(instances):
            values = {**stored_values[row], **instance.features}
            matrix[row] = [values[name] for name in spec.vector]
        if observe and self.drift is not None:
            self.drift.observe(variant.model, matrix)  # the model's real inputs, against its training data
        step = model.max_batch_size or len(instances)
        chunks = [matrix[start : start + step] for start in range(0, len(instances), step)]
        outputs = await asyncio.gather(*(self._infer(c, variant, model.version, time_left_s) for c in chunks))
        return model.version, [float(s) for chunk in outputs for s in chunk]

    def _stored_values(
        self, reply: feature_pb2.GetOnlineFeaturesResponse, names: list[str], policy: FeaturePolicy
    ) -> list[dict[str, float]]:
        """Stored features per instance. A value that is missing or too old is never used silently: the
        route's policy gives it the registry's default, rejects the request, or fails this tier."""
        position = {name: n for n, name in enumerate(reply.feature_names)}
        rows = []
        for vector in reply.vectors:
            values = {}
            for name in names:
                n = position[name]
                status = vector.statuses[n]
                if status == feature_pb2.PRESENT:
                    kind = vector.values[n].WhichOneof("kind")
                    values[name] = getattr(vector.values[n], kind)
                    continue
                action = policy.on_stale if status == feature_pb2.OUTSIDE_MAX_AGE else policy.on_missing
                default = self.registry.features[name].default
                why = f"feature {name!r} of {vector.entity_key!r} is {feature_pb2.FeatureStatus.Name(status)}"
                if action is FeatureAction.FALLBACK:
                    raise Unavailable(f"{why}; the route falls back")
                if action is FeatureAction.REJECT or default is None:
                    raise FailedPrecondition(why + ("" if default is not None else " and has no default"))
                values[name] = default
            rows.append(values)
        return rows

    async def _infer(
        self, matrix: np.ndarray, variant: Variant, version: str, time_left_s: float
    ) -> np.ndarray:
        spec = self.registry.models[variant.model]
        tensor = service_pb2.ModelInferRequest.InferInputTensor(
            name=spec.input, datatype="FP32", shape=matrix.shape
        )
        request = service_pb2.ModelInferRequest(
            model_name=variant.model,
            model_version=version,
            inputs=[tensor],
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=spec.output)],
            raw_input_contents=[matrix.tobytes()],
        )
        reply = await self.inference.infer(request, time_left_s)
        index = next(n for n, out in enumerate(reply.outputs) if out.name == spec.output)
        return np.frombuffer(reply.raw_output_contents[index], dtype=np.float32)

    async def drain(self) -> None:
        await self.cache.drain()
