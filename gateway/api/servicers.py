"""gRPC adapters for the gateway's APIs: meshserve's Predict, the Open Inference Protocol, and feedback."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable

from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.serving.feedback import FeedbackHandler
from gateway.serving.inference_api import (
    MODEL_VERSION_HEADER,
    SEQUENCE_ID,
    TIER_HEADER,
    VARIANT_HEADER,
    InferenceApi,
)
from gateway.serving.predict import Instance, PredictHandler
from gateway.serving.server_metadata import SERVER_HEADER
from meshserve.core.context import budget_left, call_headers
from meshserve.core.errors import ErrorCode, InvalidArgument, MeshError
from meshserve.core.interceptors import HandlerRegistry
from meshserve.core.prediction_ids import PREDICTION_ID_HEADER
from meshserve.core.telemetry import annotate
from meshserve.feedback.v1 import feedback_pb2, feedback_pb2_grpc
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshserve.inference import triton_control


def _instance(message: gateway_pb2.Instance, n: int) -> Instance:
    features = {}
    for name, value in message.features.items():
        kind = value.WhichOneof("kind")
        if kind not in ("double_value", "int64_value"):
            raise InvalidArgument(f"instance {n}: request feature {name!r} must be a number")
        features[name] = getattr(value, kind)
    return Instance(message.entity_key, features, message.prediction_id)


class PredictionServicer(gateway_pb2_grpc.PredictionServiceServicer):
    def __init__(self, handler: PredictHandler, answers: Counter[tuple[str, str]]) -> None:
        self.handler = handler
        self.answers = answers  # (route, tier) -> answers given, for the metrics

    async def Predict(self, request, context):
        instances = [_instance(m, n) for n, m in enumerate(request.instances)]
        result = await self.handler.predict(
            request.route, instances, budget_left(context.time_remaining()), call_headers()
        )
        first = result.predictions[0] if result.predictions else None
        for p in result.predictions:
            self.answers[(result.route, p.tier.name.lower())] += 1
        annotate(
            route=result.route,
            variant=first.variant if first else "",
            model_version=first.model_version if first else "",
            cache_hit=bool(result.predictions) and all(p.from_cache for p in result.predictions),
            tier=first.tier.name.lower() if first else "",
            instances=len(result.predictions),
        )
        return gateway_pb2.PredictResponse(
            route=result.route,
            variant=first.variant if first else "",
            model_name=result.model,
            model_version=first.model_version if first else "",
            predictions=[
                gateway_pb2.Prediction(
                    entity_key=p.entity_key,
                    score=p.score,
                    from_cache=p.from_cache,
                    variant=p.variant,
                    model_version=p.model_version,
                    tier=int(p.tier),
                    defaulted_features=p.defaulted,
                    prediction_id=p.prediction_id,
                )
                for p in result.predictions
            ],
        )


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    def __init__(self, handler: FeedbackHandler) -> None:
        self.handler = handler

    async def SendFeedback(self, request, context):
        return await self.handler.send(request, budget_left(context.time_remaining()))


class OpenInferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService on top of tritonclient's generated servicer: the calls meshserve answers
    itself, and Triton's own control calls passed through (`PASSED_THROUGH`); anything newer answers
    UNIMPLEMENTED naming what is served."""

    PASSED_THROUGH = tuple(
        m for m in triton_control.FORWARDED if m not in ("ServerMetadata", "ModelStatistics")
    )
    IMPLEMENTED = (
        "ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelConfig",
        "ModelInfer", "ModelStreamInfer", "ModelStatistics", *PASSED_THROUGH,
    )  # fmt: skip

    def __init__(
        self, api: InferenceApi, is_ready: Callable[[], bool], answers: Counter[tuple[str, str]]
    ) -> None:
        self.api = api
        self.is_ready = is_ready
        self.answers = answers

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.is_ready())

    async def ServerMetadata(self, request, context):
        """Triton's answer; meshserve's own name and version in trailing metadata, as a proxy would say it."""
        reply = await self.api.server_metadata()
        context.set_trailing_metadata(((SERVER_HEADER, self.api.server_identity),))
        return reply

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=await self.api.model_ready(request.name, request.version))

    async def ModelMetadata(self, request, context):
        return await self.api.model_metadata(request.name, request.version)

    async def ModelConfig(self, request, context):
        return await self.api.model_config(request.name, request.version)

    async def ModelStatistics(self, request, context):
        return await self.api.model_statistics(
            request.name, request.version, budget_left(context.time_remaining())
        )

    async def ModelInfer(self, request, context):
        reply, served = await self.api.model_infer(
            request, budget_left(context.time_remaining()), call_headers()
        )
        tier = served.tier.name.lower()
        context.set_trailing_metadata(
            (
                (VARIANT_HEADER, served.variant),
                (MODEL_VERSION_HEADER, served.model_version),
                (TIER_HEADER, tier),
                (PREDICTION_ID_HEADER, served.prediction_id),
            )
        )
        self.answers[(reply.model_name, tier)] += 1
        annotate(route=reply.model_name, variant=served.variant, model_version=served.model_version, tier=tier,
                 cache_hit=False)  # fmt: skip
        return reply

    async def ModelStreamInfer(
        self, request_iterator, context
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Unrelated requests on a stream run concurrently (so Triton can batch them); the requests of one
        sequence (same `sequence_id`) run one after another, in the order sent, so Triton sees them in order and
        their answers come back in order. A failed request is reported in-band with `error_message`, as Triton
        does, and the stream goes on.

        A stream carries many predictions, so each request names its own id in its string parameter
        `prediction_id` (taken off before the request goes on), or gets a new one; each answer carries its id in
        the same parameter. The stream's `x-meshserve-prediction-id` header is not used.

        Requests for a decoupled model go to Triton on a stream of their own (`DecoupledRelay`), and every
        response Triton sends for them comes back as it is (not logged)."""
        headers = call_headers()
        results: asyncio.Queue[service_pb2.ModelStreamInferResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task[None]] = set()
        last_of_sequence: dict[bytes, asyncio.Task[None]] = {}

        async def one(request: service_pb2.ModelInferRequest, after: asyncio.Task[None] | None) -> None:
            if after is not None:
                await asyncio.wait([after])  # its predecessor in the sequence has its answer
            request_id = request.id
            try:
                given = _stream_prediction_id(request)
                reply, served = await self.api.model_infer(
                    request, budget_left(context.time_remaining()), headers, given, STREAM_ID_FIELD
                )
                reply.parameters[STREAM_PREDICTION_ID].string_param = served.prediction_id
                await results.put(service_pb2.ModelStreamInferResponse(infer_response=reply))
            except MeshError as exc:
                failed = service_pb2.ModelInferResponse(id=request_id, model_name=request.model_name)
                await results.put(
                    service_pb2.ModelStreamInferResponse(error_message=exc.message, infer_response=failed)
                )

        def forget(sequence: bytes, task: asyncio.Task[None]) -> None:
            pending.discard(task)
            if last_of_sequence.get(sequence) is task:
                del last_of_sequence[sequence]  # nothing of the sequence is in flight: nothing to keep

        relay = self.api.decoupled_relay(results.put, budget_left(context.time_remaining()))

        async def to_decoupled(request: service_pb2.ModelInferRequest) -> bool:
            """Relayed as a stream when its model is decoupled; any error is the ordinary path's to report."""
            try:
                target = await self.api.decoupled_model(request)
            except MeshError:
                return False
            if target is not None:
                if STREAM_PREDICTION_ID in request.parameters:  # not logged: Triton has no use for it
                    del request.parameters[STREAM_PREDICTION_ID]
                relay.send(request, *target)
            return target is not None

        async def read() -> None:
            async for request in request_iterator:
                if await to_decoupled(request):
                    continue
                sequence = b""
                if SEQUENCE_ID in request.parameters:
                    sequence = request.parameters[SEQUENCE_ID].SerializeToString()
                task = asyncio.create_task(one(request, last_of_sequence.get(sequence) if sequence else None))
                pending.add(task)
                if sequence:
                    last_of_sequence[sequence] = task
                task.add_done_callback(lambda done, sequence=sequence: forget(sequence, done))
            await asyncio.gather(*list(pending))
            await relay.close()
            await results.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await results.get()) is not None:
                yield item
            await reader
        finally:
            reader.cancel()
            relay.cancel()
            for task in list(pending):
                task.cancel()


# ModelStreamInfer: each request's own prediction id, and each answer's, in this string parameter
STREAM_PREDICTION_ID = "prediction_id"
STREAM_ID_FIELD = f"parameter {STREAM_PREDICTION_ID}"


def _stream_prediction_id(request: service_pb2.ModelInferRequest) -> str:
    """The request's own prediction id (its parameter, removed: Triton has no use for it, and requests that
    differ only in their ids still merge), or "" for a new one."""
    if STREAM_PREDICTION_ID not in request.parameters:
        return ""
    value = request.parameters[STREAM_PREDICTION_ID]
    del request.parameters[STREAM_PREDICTION_ID]
    if value.WhichOneof("parameter_choice") != "string_param":
        raise InvalidArgument(f"{STREAM_ID_FIELD} must be a string")
    return value.string_param


def _passed_through(name: str):
    async def method(self, request, context):
        return await self.api.control(name, request, budget_left(context.time_remaining()))

    method.__name__ = name
    return method


def _unimplemented(name: str):
    async def method(self, request, context):
        raise MeshError(
            f"the meshserve gateway does not implement {name}; it serves "
            f"{', '.join(OpenInferenceServicer.IMPLEMENTED)}",
            ErrorCode.UNIMPLEMENTED,
        )

    method.__name__ = name
    return method


for _name in OpenInferenceServicer.PASSED_THROUGH:
    setattr(OpenInferenceServicer, _name, _passed_through(_name))
for _name in dir(service_pb2_grpc.GRPCInferenceServiceServicer):
    if not _name.startswith("_") and _name not in OpenInferenceServicer.IMPLEMENTED:
        setattr(OpenInferenceServicer, _name, _unimplemented(_name))


def add_servicers(
    server: HandlerRegistry,
    predict: PredictionServicer,
    oip: OpenInferenceServicer,
    feedback: FeedbackServicer | None = None,
) -> list[str]:
    gateway_pb2_grpc.add_PredictionServiceServicer_to_server(predict, server)
    inference = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    server.add_service(inference, oip)
    names = [gateway_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name, inference.full_name]
    if feedback is not None:
        feedback_pb2_grpc.add_FeedbackServiceServicer_to_server(feedback, server)
        names.append(feedback_pb2.DESCRIPTOR.services_by_name["FeedbackService"].full_name)
    return names
