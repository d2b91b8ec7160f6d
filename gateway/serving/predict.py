"""Predict: route -> split -> cache (hits return) -> features -> inference -> Triton -> cache set. No gRPC here.

Instances of one Predict may land on different variants (a split sticky per entity), so each variant's share is
served as its own group, down its own fallback chain, concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from tritonclient.grpc import service_pb2

from gateway.routing.admission import Admission
from gateway.routing.dispatch import AllTiersFailed, Dispatcher, Tier
from gateway.routing.live import LiveRoutes
from gateway.routing.resilience import try_elsewhere
from gateway.routing.routes import (
    FeatureAction,
    FeaturePolicy,
    Quality,
    Route,
    StickyKey,
    Variant,
    choose_variant,
)
from gateway.routing.shadow import ShadowRunner
from gateway.serving.cache_keys import prediction_key
from gateway.serving.catalog import ModelCatalog, ModelInfo
from gateway.serving.clients import FeatureClient, InferenceClient
from gateway.serving.prediction_cache import PredictionCache, prediction_scopes
from gateway.serving.prediction_log import PredictionLog
from gateway.serving.prediction_records import AnswerSource, features_of, tier_name
from meshserve.core.context import current_principal
from meshserve.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    MeshError,
    ResourceExhausted,
    Unavailable,
)
from meshserve.core.prediction_ids import check_prediction_id, new_prediction_id, row_id
from meshserve.feature.drift import DriftMonitor
from meshserve.feature.registry import FeatureRegistry
from meshserve.feature.v1 import feature_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Instance:
    entity_key: str
    features: Mapping[str, float]  # request-time features
    prediction_id: str = ""  # the caller's own; empty: the gateway makes one


@dataclass(frozen=True, slots=True)
class Prediction:
    entity_key: str
    score: float
    from_cache: bool
    variant: str
    model_version: str
    tier: Tier
    defaulted: tuple[str, ...] = ()  # stored features without a usable value, scored with their defaults
    prediction_id: str = ""
    # the model's input row (the registry's vector order) where a model scored it now, for the prediction log
    inputs: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class _Scored:
    """What one model call answered for a group of instances: the model version, and per instance its score and
    the stored features it was scored with defaults for."""

    version: str
    scores: list[float]
    defaulted: list[tuple[str, ...]]
    inputs: np.ndarray  # one row per instance


@dataclass(slots=True, eq=False)
class _Item:
    """One instance of a Predict on its way through: what was asked, where the split sent it, its cache key and
    scopes (when the route caches), and finally its answer."""

    instance: Instance
    chosen: Variant
    prediction_id: str
    key: str = ""
    scopes: list[str] = field(default_factory=list)
    answer: Prediction | None = None


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
        admission: Admission | None = None,
        prediction_log: PredictionLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.admission = admission or Admission.unlimited()
        self.prediction_log = prediction_log  # None: no answer is logged, whatever the routes say
        self.clock = clock
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
        caller = current_principal()
        route = self.routes.get(route_name, caller)  # NotFound lists the routes this caller may call
        self.routes.authorize(route_name, caller)  # once the route is known, before any work
        self._validate(route, instances)
        with self.admission.admit(f"{route_name}:predict", time_left_s):
            return await self._predict(route_name, route, instances, time_left_s, headers or {})

    async def _predict(
        self,
        route_name: str,
        route: Route,
        instances: Sequence[Instance],
        time_left_s: float | None,
        headers: Mapping[str, str],
    ) -> PredictResult:
        deadline = self.dispatcher.deadline(route, time_left_s)
        forced = self._forced(route, headers)
        base = new_prediction_id() if not all(i.prediction_id for i in instances) else ""
        count = len(instances)
        items = [
            _Item(
                i,
                choose_variant(
                    route, self.rng, sticky_key=self._sticky_key(route, i, headers), forced=forced
                ),
                i.prediction_id or row_id(base, n, count),
            )
            for n, i in enumerate(instances)
        ]
        groups: dict[str, list[_Item]] = {}
        for item in items:
            groups.setdefault(item.chosen.name, []).append(item)
        serving = [
            self._serve(route_name, route, group[0].chosen, group, deadline) for group in groups.values()
        ]
        await (serving[0] if len(serving) == 1 else asyncio.gather(*serving))
        predictions = [item.answer for item in items]
        assert all(predictions), "every instance is answered or the Predict fails"
        quality = route.logged if self.prediction_log is not None else None
        if quality is not None:
            source = AnswerSource(route_name, quality, self.clock())
            self.prediction_log.record(self._records(source, route, predictions))  # type: ignore[union-attr, arg-type]
        if route.shadows:
            self._mirror(route_name, route, instances, predictions, quality)  # type: ignore[arg-type]
        first = predictions[0].variant if predictions else ""  # type: ignore[union-attr]
        return PredictResult(route_name, route.variant(first).model if first else "", predictions)  # type: ignore[arg-type]

    def _records(self, source: AnswerSource, route: Route, predictions: list[Prediction]):
        """One log record per answer (a generator: run inside the log's guard)."""
        vectors = self.registry.models
        for p in predictions:
            model = route.variant(p.variant).model if p.variant else ""
            features = None
            if p.inputs is not None and source.wants_features(p.prediction_id):
                features = features_of(vectors[model].vector, p.inputs)
            yield source.record(p.prediction_id, p.variant, model, p.model_version, tier_name(p.tier, p.from_cache),
                                p.score, features=features)  # fmt: skip

    def _mirror(
        self,
        route_name: str,
        route: Route,
        instances: Sequence[Instance],
        predictions: list[Prediction],
        quality: Quality | None,
    ) -> None:
        answered = [(i, p) for i, p in zip(instances, predictions, strict=True) if p.tier is not Tier.DEFAULT]
        if not answered:
            return
        mirrored = [i for i, _ in answered]
        ids = [p.prediction_id for _, p in answered]

        async def score(variant: Variant, time_left_s: float) -> list[float]:
            await self.dispatcher.inject_faults(
                route, variant, time_left_s
            )  # shadows are tested like any variant
            scored = await self._run_model(route, mirrored, variant, time_left_s, observe=False)
            if quality is not None:  # the shadow's answers, under the ids the caller was given
                source = AnswerSource(route_name, quality, self.clock())
                self.prediction_log.record(self._shadow_records(source, variant, ids, scored))  # type: ignore[union-attr]
            return scored.scores

        self.shadow.mirror(route_name, route, [p.score for _, p in answered], score)

    def _shadow_records(self, source: AnswerSource, variant: Variant, ids: list[str], scored: _Scored):
        names = self.registry.models[variant.model].vector
        for prediction_id, score, row in zip(ids, scored.scores, scored.inputs, strict=True):
            features = features_of(names, row) if source.wants_features(prediction_id) else None
            yield source.record(prediction_id, variant.name, variant.model, scored.version, "model", score,
                                shadow=True, features=features)  # fmt: skip

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
        if route.primary.model not in self.registry.models:
            raise FailedPrecondition(
                f"model {route.primary.model!r} takes raw tensors, not features: the feature registry does not "
                "describe it; call it with ModelInfer"
            )
        wanted = self.registry.request_features(route.primary.model)
        given: dict[str, int] = {}
        for n, instance in enumerate(instances):
            if not instance.entity_key:
                raise InvalidArgument(f"instance {n}: entity_key is empty")
            if instance.prediction_id:
                check_prediction_id(instance.prediction_id, f"instance {n}: prediction_id")
                first = given.setdefault(instance.prediction_id, n)
                if first != n:
                    raise InvalidArgument(
                        f"instance {n}: prediction_id {instance.prediction_id!r} is instance {first}'s too; "
                        "each prediction needs its own"
                    )
            for name in wanted:
                if name not in instance.features:
                    raise InvalidArgument(f"instance {n}: missing request feature {name!r}")
                value = instance.features[name]
                if not isinstance(value, int | float):
                    raise InvalidArgument(f"instance {n}: request feature {name!r} must be a number")
                if not math.isfinite(value):
                    raise InvalidArgument(
                        f"instance {n}: request feature {name!r} must be finite, got {value}"
                    )
                spec = self.registry.features[name]
                if spec.integral and value != int(value):
                    raise InvalidArgument(
                        f"instance {n}: request feature {name!r} is an integer, got {value}"
                    )
                if spec.out_of_range(value):
                    raise InvalidArgument(
                        f"instance {n}: request feature {name!r}={value} is outside its range: "
                        f"must be {spec.allowed_range}"
                    )
            if len(instance.features) != len(wanted):
                unknown = sorted(set(instance.features) - set(wanted))
                raise InvalidArgument(
                    f"instance {n}: unknown request feature {unknown[0]!r}; expected {wanted}"
                )

    async def _serve(
        self, route_name: str, route: Route, chosen: Variant, items: list[_Item], deadline: float
    ) -> None:
        """Answer `items`, which the split sent to `chosen`: from the cache, from an identical miss already being
        scored, or by scoring them down the route's tiers."""
        try:
            version = (await self.catalog.get(chosen.model, chosen.version)).version
        except MeshError as exc:
            if not try_elsewhere(exc):
                raise
            version = None  # the chosen variant is down: no cache key to read, the dispatcher falls back
        if not (route.cache.enabled and version is not None):
            await self._score(route_name, route, chosen, items, deadline)
            return
        entity = self.registry.models[chosen.model].entity
        for item in items:
            key = item.instance.entity_key
            item.key = prediction_key(
                route_name, chosen.name, chosen.model, version, key, item.instance.features
            )
            item.scopes = prediction_scopes(route_name, chosen.model, entity, key)
        cached = await self.cache.get(route_name, [(item.key, item.scopes) for item in items])
        misses = []
        for item in items:
            hit = cached.get(item.key)
            if hit is None:
                misses.append(item)
            else:
                item.answer = Prediction(
                    item.instance.entity_key, hit[0], True, chosen.name, version, Tier.PRIMARY, hit[1],
                    item.prediction_id,
                )  # fmt: skip
        if not misses:
            return
        # Single-flight: an identical miss already being scored is waited for, not scored again.
        leading, following = self.cache.claim([item.key for item in misses])
        led = [misses[n] for n in leading]
        try:
            if led:
                await self._score(route_name, route, chosen, led, deadline, version)
        except BaseException as exc:
            for item in led:
                self.cache.settle(item.key, error=exc)
            raise
        for item in led:
            self.cache.settle(item.key, item.answer)
        for n, future in following.items():
            shared: Prediction = await asyncio.shield(future)
            self.cache.route_stats(route_name).coalesced += 1
            misses[n].answer = replace(
                shared,
                entity_key=misses[n].instance.entity_key,
                from_cache=False,
                prediction_id=misses[n].prediction_id,
            )

    async def _score(
        self,
        route_name: str,
        route: Route,
        chosen: Variant,
        items: list[_Item],
        deadline: float,
        cached_version: str | None = None,
    ) -> None:
        """Score `items` down the route's tiers; cache the answers when they came from the variant (and version)
        whose key they were looked up under."""
        instances = [item.instance for item in items]
        try:
            served = await self.dispatcher.run(
                route_name,
                route,
                chosen,
                lambda variant, time_left: self._run_model(route, instances, variant, time_left),
                deadline,
            )
        except AllTiersFailed:
            if route.default is None:
                raise
            for item in items:  # the default answer is never cached
                item.answer = Prediction(
                    item.instance.entity_key, route.default.score, False, "", "", Tier.DEFAULT,
                    prediction_id=item.prediction_id,
                )  # fmt: skip
            return
        scored: _Scored = served.value
        version = scored.version
        for item, score, defaulted, row in zip(
            items, scored.scores, scored.defaulted, scored.inputs, strict=True
        ):
            item.answer = Prediction(
                item.instance.entity_key, score, False, served.variant.name, version, served.tier, defaulted,
                item.prediction_id, row,
            )  # fmt: skip
        cacheable = served.tier is Tier.PRIMARY or route.cache.cache_fallbacks
        if (
            cached_version is not None
            and cacheable
            and version == cached_version
            and served.variant is chosen
        ):
            answers = [(i.key, i.scopes, (i.answer.score, i.answer.defaulted)) for i in items]  # type: ignore[union-attr]
            self.cache.put(route_name, route, answers)

    async def _run_model(
        self,
        route: Route,
        instances: Sequence[Instance],
        variant: Variant,
        time_left_s: float,
        observe: bool = True,
    ) -> _Scored:
        """Features joined with the request's, one model input row per instance, scored by `variant`."""
        model = await self.catalog.get(variant.model, variant.version)
        spec = self.registry.models[variant.model]
        stored = self.registry.stored_features(variant.model)
        stored_values: list[dict[str, float]] = [{} for _ in instances]
        defaulted: list[tuple[str, ...]] = [() for _ in instances]
        if stored:
            vectors = await self.features.get(
                spec.entity,
                [i.entity_key for i in instances],
                stored,
                min(time_left_s, self.feature_timeout_s),
            )
            stored_values, defaulted = self._stored_values(vectors, stored, route.features)
        matrix = np.empty((len(instances), len(spec.vector)), dtype=np.float32)
        for row, instance in enumerate(instances):
            values = {**stored_values[row], **instance.features}
            matrix[row] = [values[name] for name in spec.vector]
        if observe and self.drift is not None:
            self.drift.observe(variant.model, matrix)  # the model's real inputs, against its training data
        step = model.max_batch_size or len(instances)
        chunks = [matrix[start : start + step] for start in range(0, len(instances), step)]
        calls = [self._infer(c, variant, model, time_left_s) for c in chunks]
        outputs = [await calls[0]] if len(calls) == 1 else await asyncio.gather(*calls)
        return _Scored(model.version, [float(s) for chunk in outputs for s in chunk], defaulted, matrix)

    def _stored_values(
        self, vectors: Sequence[feature_pb2.FeatureVector], names: list[str], policy: FeaturePolicy
    ) -> tuple[list[dict[str, float]], list[tuple[str, ...]]]:
        """Stored features per instance (each vector's values aligned with `names`), and the names given their
        defaults. A value that is missing or too old is never used silently: the route's policy gives it the
        registry's default (and the answer says so), rejects the request, or fails this tier."""
        rows = []
        defaulted = []
        for vector in vectors:
            values = {}
            filled = []
            for n, name in enumerate(names):
                status = vector.statuses[n]
                if status == feature_pb2.PRESENT:
                    kind = vector.values[n].WhichOneof("kind")
                    values[name] = getattr(vector.values[n], kind)
                    continue
                action = policy.on_stale if status == feature_pb2.OUTSIDE_MAX_AGE else policy.on_missing
                default = self.registry.features[name].default
                why = f"feature {name!r} of {vector.entity_key!r} is {feature_pb2.FeatureStatus.Name(status)}"
                if action is FeatureAction.FALLBACK:
                    raise Unavailable(f"{why}; the route falls back", origin="feature service")
                if action is FeatureAction.REJECT or default is None:
                    raise FailedPrecondition(why + ("" if default is not None else " and has no default"))
                values[name] = default
                filled.append(name)
            rows.append(values)
            defaulted.append(tuple(filled))
        return rows, defaulted

    async def _infer(
        self, matrix: np.ndarray, variant: Variant, model: ModelInfo, time_left_s: float
    ) -> np.ndarray:
        spec = self.registry.models[variant.model]
        tensor = service_pb2.ModelInferRequest.InferInputTensor(
            name=spec.input, datatype="FP32", shape=matrix.shape
        )
        request = service_pb2.ModelInferRequest(
            model_name=variant.model,
            model_version=model.version,
            inputs=[tensor],
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=spec.output)],
            raw_input_contents=[matrix.tobytes()],
        )
        reply = await self.inference.infer(request, time_left_s, model.plan)
        index = next(n for n, out in enumerate(reply.outputs) if out.name == spec.output)
        return np.frombuffer(reply.raw_output_contents[index], dtype=np.float32)

    async def drain(self) -> None:
        await self.cache.drain()
