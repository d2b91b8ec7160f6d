"""The Open Inference Protocol as the gateway serves it: model names are route names. No gRPC here.

ModelInfer requests are checked against the model's metadata and forwarded with only the model name and
version rewritten; tensor bytes travel untouched.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from tritonclient.grpc import service_pb2

from gateway.admission import Admission
from gateway.catalog import ModelCatalog, ModelInfo
from gateway.clients import InferenceClient
from gateway.dispatch import Dispatcher, Tier
from gateway.live import LiveRoutes
from gateway.routes import Route, StickyKey, Variant, choose_variant
from gateway.tensors import validate_infer_request

SERVER_NAME = "meshserve"
_NO_HEADERS: Mapping[str, str] = {}
EXTENSIONS = ["binary_tensor_data", "parameters", "model_configuration"]


@dataclass(frozen=True, slots=True)
class Answered:
    variant: str
    model_version: str
    tier: Tier


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
    ) -> None:
        self.dispatcher = dispatcher
        self.admission = admission or Admission.unlimited()
        self.routes = routes
        self.catalog = catalog
        self.inference = inference
        self.version = version
        self.rng = rng or random.Random()

    def server_metadata(self) -> service_pb2.ServerMetadataResponse:
        return service_pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=self.version, extensions=EXTENSIONS
        )

    async def _primary(self, route_name: str, version: str) -> ModelInfo:
        route = self.routes.get(route_name)
        variant = choose_variant(route, self.rng, version=version) if version else route.primary
        return await self.catalog.get(variant.model, variant.version)

    async def model_ready(self, route_name: str, version: str) -> bool:
        if route_name not in self.routes.routes:
            return False
        route = self.routes.routes[route_name]
        variants = [choose_variant(route, self.rng, version=version)] if version else route.variants
        for variant in variants:
            if variant.weight > 0 or version:
                if not (await self.catalog.get(variant.model, variant.version)).ready:
                    return False
        return True

    async def model_metadata(self, route_name: str, version: str) -> service_pb2.ModelMetadataResponse:
        info = await self._primary(route_name, version)
        reply = service_pb2.ModelMetadataResponse()
        reply.CopyFrom(info.metadata)
        reply.name = route_name
        del reply.versions[:]
        reply.versions.extend(sorted({v.version for v in self.routes.get(route_name).variants if v.version}))
        return reply

    async def model_config(self, route_name: str, version: str) -> service_pb2.ModelConfigResponse:
        info = await self._primary(route_name, version)
        reply = service_pb2.ModelConfigResponse()
        reply.CopyFrom(info.config)
        reply.config.name = route_name
        return reply

    async def model_infer(
        self,
        request: service_pb2.ModelInferRequest,
        time_left_s: float | None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[service_pb2.ModelInferResponse, Answered]:
        """Route one request down its route's tiers; tensors are checked against each tier's model, never decoded."""
        route_name = request.model_name
        route = self.routes.get(route_name)
        with self.admission.admit(f"{route_name}:infer", time_left_s):
            return await self._model_infer(request, route_name, route, time_left_s, headers or _NO_HEADERS)

    async def _model_infer(
        self,
        request: service_pb2.ModelInferRequest,
        route_name: str,
        route: Route,
        time_left_s: float | None,
        headers: Mapping[str, str],
    ) -> tuple[service_pb2.ModelInferResponse, Answered]:
        sticky = headers.get(route.sticky.header or "") if route.sticky.key is StickyKey.HEADER else None
        forced = headers.get(route.override_header) if route.override_header else None
        first = choose_variant(
            route, self.rng, version=request.model_version, sticky_key=sticky, forced=forced
        )
        deadline = self.dispatcher.deadline(route, time_left_s)

        async def attempt(variant: Variant, time_left: float) -> service_pb2.ModelInferResponse:
            info = await self.catalog.get(variant.model, variant.version)
            validate_infer_request(request, info.metadata, info.max_batch_size, route_name)
            request.model_name = variant.model
            request.model_version = info.version
            return await self.inference.infer(request, time_left, info.plan)

        served = await self.dispatcher.run(route_name, route, first, attempt, deadline)
        reply = served.value
        reply.model_name = route_name
        return reply, Answered(served.variant.name, reply.model_version, served.tier)
