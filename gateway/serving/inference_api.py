"""The Open Inference Protocol as the gateway serves it: model names are route names (declared routes, and every
model Triton serves under its own name). No gRPC here.

ModelInfer requests are checked against the model's metadata and forwarded with only the model name and
version rewritten. A variant that follows Triton's versions (version "") passes a requested version on as it
is. Triton's own control calls (model control, statistics, shared memory, trace and log settings) pass through.

Every call naming a route is authorized against the route's rule once the route is known (the caller is the
context's `current_principal()`); model control and changes to trace or log settings need role admin wherever
the gateway requires authentication.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tritonclient.grpc import service_pb2

from gateway.routing.admission import Admission
from gateway.routing.dispatch import Dispatcher, Tier
from gateway.routing.live import LiveRoutes
from gateway.routing.routes import Route, StickyKey, Variant, choose_variant, unknown_model
from gateway.serving.catalog import ModelCatalog, ModelInfo
from gateway.serving.clients import InferenceClient
from gateway.serving.decoupled import DecoupledRelay, Deliver
from gateway.serving.prediction_log import PredictionLog
from gateway.serving.prediction_records import AnswerSource, infer_records
from gateway.serving.repository import ModelRepository
from gateway.serving.server_metadata import TritonMetadata, server_identity
from gateway.serving.statistics import route_statistics
from gateway.serving.tensors import validate_infer_request
from meshserve.core.auth import ADMIN_ROLE, require_role
from meshserve.core.context import current_principal
from meshserve.core.errors import MeshError, PermissionDenied, Unauthenticated
from meshserve.core.prediction_ids import (
    PREDICTION_ID_HEADER,
    check_base_for_rows,
    check_prediction_id,
    new_prediction_id,
)
from meshserve.feature.registry import FeatureRegistry
from meshserve.inference.model_control import check_model_load

_NO_HEADERS: Mapping[str, str] = {}
SEQUENCE_ID = "sequence_id"
# Which variant, model version and tier answered: trailing metadata on gRPC, headers on REST
VARIANT_HEADER = "x-meshserve-variant"
MODEL_VERSION_HEADER = "x-meshserve-model-version"
TIER_HEADER = "x-meshserve-tier"
ID_HEADER_FIELD = f"header {PREDICTION_ID_HEADER}"
# Control calls that change what Triton serves or how it traces and logs: role admin (settings only when set)
MODEL_CONTROL = frozenset({"RepositoryModelLoad", "RepositoryModelUnload"})
SETTINGS_CONTROL = frozenset({"TraceSetting", "LogSettings"})
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answered:
    variant: str
    model_version: str
    tier: Tier
    prediction_id: str = ""  # the request's base id (row i of N > 1 rows is `<id>:<i>`)


class InferenceApi:
    def __init__(
        self,
        routes: LiveRoutes,
        catalog: ModelCatalog,
        inference: InferenceClient,
        dispatcher: Dispatcher,
        version: str,
        rng: random.Random | None = None,
        admission: Admission | None = None,
        repository: ModelRepository | None = None,
        triton_metadata: TritonMetadata | None = None,
        auth_required: bool = False,
        prediction_log: PredictionLog | None = None,
        registry: FeatureRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prediction_log = prediction_log  # None: no answer is logged, whatever the routes say
        self.registry = registry  # names the logged input features of the models it describes
        self.clock = clock
        self.auth_required = auth_required  # off: anonymous callers may also use model control
        self.repository = repository or ModelRepository(inference, routes, catalog)
        self.dispatcher = dispatcher
        self.admission = admission or Admission.unlimited()
        self.routes = routes
        self.catalog = catalog
        self.inference = inference
        self.version = version
        self.server_identity = server_identity(version)  # meshserve's own name and version, beside Triton's
        self.triton_metadata = triton_metadata or TritonMetadata(inference)
        self.rng = rng or random.Random()

    async def server_metadata(self) -> service_pb2.ServerMetadataResponse:
        """As Triton answers it (name, version, the extensions that work through the gateway): clients written for
        Triton check them. meshserve's own is `server_identity`."""
        return await self.triton_metadata.get()

    async def _route(self, name: str) -> Route:
        """The route `name`; a name nobody serves is looked up in Triton's repository again first (at most once a
        second), so a model loaded through another gateway, or Triton itself, is served at once."""
        route = self.routes.find(name)
        if route is None and await self.repository.look_again():
            route = self.routes.find(name)
        if route is None:
            raise unknown_model(name)  # Triton's words, which clients written for Triton expect
        self.routes.authorize(name, current_principal())
        return route

    def _may_call(self, name: str) -> bool:
        return self.routes.may_call(name, current_principal())

    async def _info(self, route_name: str, version: str) -> ModelInfo:
        """What Triton says of the model version a request for (`route_name`, `version`) would reach."""
        route = await self._route(route_name)
        variant = choose_variant(route, self.rng, version=version) if version else route.primary
        return await self.catalog.get(variant.model, variant.version or version)

    async def model_ready(self, route_name: str, version: str) -> bool:
        """Ready as Triton answers it: False (never an error) for a name, a version or a model nobody serves."""
        try:
            route = await self._route(route_name)
            if version:
                return (await self._info(route_name, version)).ready
            served = [v for v in route.variants if v.weight > 0]
            infos = [await self.catalog.get(v.model, v.version) for v in served]
        except (Unauthenticated, PermissionDenied):
            raise  # a caller who may not call the route is told so, not that it is not ready
        except MeshError:
            return False
        return all(info.ready for info in infos)

    async def model_metadata(self, route_name: str, version: str) -> service_pb2.ModelMetadataResponse:
        info = await self._info(route_name, version)
        reply = service_pb2.ModelMetadataResponse()
        reply.CopyFrom(info.metadata)
        reply.name = route_name
        route = await self._route(route_name)
        versions = {v.version for v in route.variants if v.version}
        if any(not v.version for v in route.variants):  # following Triton: its versions are the route's
            versions |= set(info.metadata.versions)
        del reply.versions[:]
        reply.versions.extend(sorted(versions, key=lambda v: (len(v), v)))
        return reply

    async def model_config(self, route_name: str, version: str) -> service_pb2.ModelConfigResponse:
        info = await self._info(route_name, version)
        reply = service_pb2.ModelConfigResponse()
        reply.CopyFrom(info.config)
        reply.config.name = route_name
        return reply

    async def model_statistics(self, route_name: str, version: str, time_left_s: float | None = None):
        """Triton's statistics of the model versions behind a route, under the route's name ("" = every name
        served)."""
        names = [route_name] if route_name else [n for n in sorted(self.routes.served) if self._may_call(n)]
        stats = service_pb2.ModelStatisticsResponse()
        for name in names:
            route = await self._route(name)
            targets = {(v.model, v.version or version) for v in route.variants if not version or
                       v.version in ("", version)}  # fmt: skip
            entries = []
            for model, model_version in sorted(targets):
                request = service_pb2.ModelStatisticsRequest(name=model, version=model_version)
                reply = await self.repository.control("ModelStatistics", request, time_left_s)
                entries.extend(reply.model_stats)
            stats.model_stats.extend(route_statistics(name, entries))
        return stats

    async def control(self, method: str, request, time_left_s: float | None = None):
        """One of Triton's control calls, passed through (a load or unload updates the names served at once)."""
        if method in MODEL_CONTROL or (method in SETTINGS_CONTROL and request.settings):
            principal = current_principal()
            if self.auth_required or not principal.anonymous:
                try:
                    require_role(principal, ADMIN_ROLE, method)
                except MeshError as exc:
                    log.warning(
                        "denied", extra={"method": method, "who": principal.name, "reason": exc.message}
                    )
                    raise
        if method == "RepositoryModelLoad":
            check_model_load(request)  # a load that would crash or misuse Triton never leaves the gateway
        return await self.repository.control(method, request, time_left_s)

    async def decoupled_model(self, request: service_pb2.ModelInferRequest) -> tuple[str, str] | None:
        """The (model, version) a streamed request reaches when that model is decoupled (it must then be relayed
        as a stream: `decoupled_relay`), else None. A name nobody serves raises, in Triton's words."""
        info = await self._info(request.model_name, request.model_version)
        if not info.config.config.model_transaction_policy.decoupled:
            return None
        return info.model, info.version

    def decoupled_relay(self, deliver: Deliver, time_left_s: float | None) -> DecoupledRelay:
        return DecoupledRelay(self.inference.stream, deliver, time_left_s)

    async def model_infer(
        self,
        request: service_pb2.ModelInferRequest,
        time_left_s: float | None,
        headers: Mapping[str, str] | None = None,
        prediction_id: str | None = None,
        id_field: str = ID_HEADER_FIELD,
    ) -> tuple[service_pb2.ModelInferResponse, Answered]:
        """Route one request down its route's tiers; tensors are checked against each tier's model, and decoded
        only to log the answer on a route whose quality block is on. The prediction id is `prediction_id` (the
        caller's `id_field`), else the caller's `x-meshserve-prediction-id` header, else a new one."""
        route_name = request.model_name
        route = await self._route(route_name)
        headers = headers or _NO_HEADERS
        if prediction_id is None:
            prediction_id = headers.get(PREDICTION_ID_HEADER, "")
        if prediction_id:
            check_prediction_id(prediction_id, id_field)
        with self.admission.admit(f"{route_name}:infer", time_left_s):
            return await self._model_infer(
                request, route_name, route, time_left_s, headers, prediction_id, id_field
            )

    async def _model_infer(
        self,
        request: service_pb2.ModelInferRequest,
        route_name: str,
        route: Route,
        time_left_s: float | None,
        headers: Mapping[str, str],
        given_id: str,
        id_field: str,
    ) -> tuple[service_pb2.ModelInferResponse, Answered]:
        sticky = headers.get(route.sticky.header or "") if route.sticky.key is StickyKey.HEADER else None
        if sticky is None and SEQUENCE_ID in request.parameters:
            sticky = str(request.parameters[SEQUENCE_ID])  # every request of a sequence to the same variant
        forced = headers.get(route.override_header) if route.override_header else None
        asked = request.model_version
        first = choose_variant(route, self.rng, version=asked, sticky_key=sticky, forced=forced)
        deadline = self.dispatcher.deadline(route, time_left_s)

        batched: dict[str, bool] = {}  # variant -> whether its model batches (the first dimension is rows)

        async def attempt(variant: Variant, time_left: float) -> service_pb2.ModelInferResponse:
            info = await self.catalog.get(variant.model, variant.version or asked)
            validate_infer_request(request, info.metadata, info.max_batch_size, route_name)
            batched[variant.name] = info.max_batch_size > 0
            if given_id:  # each row's id (`<id>:<row>`) must be a valid id too
                check_base_for_rows(given_id, _rows(request, batched[variant.name]), id_field)
            request.model_name = variant.model
            request.model_version = info.version
            return await self.inference.infer(request, time_left, info.plan)

        served = await self.dispatcher.run(route_name, route, first, attempt, deadline)
        reply = served.value
        reply.model_name = route_name
        answered = Answered(
            served.variant.name, reply.model_version, served.tier, given_id or new_prediction_id()
        )
        quality = route.logged if self.prediction_log is not None else None
        if quality is not None:
            source = AnswerSource(route_name, quality, self.clock())
            records = infer_records(
                source, answered.prediction_id, served.variant.name, served.variant.model, reply.model_version,
                served.tier, request, reply, batched[served.variant.name], self._input_names(served.variant.model),
            )  # fmt: skip
            self.prediction_log.record(records)  # type: ignore[union-attr]
        return reply, answered

    def _input_names(self, model: str) -> Mapping[str, Sequence[str]]:
        """The feature names of the model's input tensor, where the registry describes the model."""
        spec = self.registry.models.get(model) if self.registry is not None else None
        return {spec.input: spec.vector} if spec is not None else {}


def _rows(request: service_pb2.ModelInferRequest, batched: bool) -> int:
    """Rows of a request: its batch dimension where the model batches, else one."""
    if batched and request.inputs and request.inputs[0].shape:
        return request.inputs[0].shape[0]
    return 1
