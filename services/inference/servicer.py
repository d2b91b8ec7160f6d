"""gRPC adapter for the mesh-internal InferenceService. ModelInfer passes to Triton as the bytes it came in, and
the answer back the same way: this hop never parses a tensor (the gateway has checked the request and set
Triton's per-request timeout)."""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from meshserve.core.context import budget_left
from meshserve.core.telemetry import annotate, recording
from meshserve.inference import triton_control
from meshserve.inference.model_control import check_model_load
from meshserve.inference.v1 import inference_pb2, inference_pb2_grpc
from services.inference.replicas import TritonReplicas
from services.inference.triton import TritonBackend


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, triton: TritonBackend | TritonReplicas) -> None:
        self.triton = triton

    async def ModelInfer(self, request: bytes, context) -> bytes:
        if recording():  # only a trace needs to know what is inside
            message = service_pb2.ModelInferRequest.FromString(request)
            annotate(model=message.model_name, model_version=message.model_version)
        return await self.triton.forward(request, budget_left(context.time_remaining()))

    async def DescribeModel(self, request, context):
        model = await self.triton.describe(request.model_name, request.model_version)
        return inference_pb2.DescribeModelResponse(
            ready=model.ready, resolved_version=model.version, metadata=model.metadata, config=model.config
        )

    async def ServeVersions(self, request, context):
        ready = await self.triton.serve_versions(
            request.model_name, list(request.versions), budget_left(context.time_remaining()) or 120.0
        )
        return inference_pb2.ServeVersionsResponse(ready_versions=ready)


class TritonForwarder:
    """Triton's own control calls (`meshserve.inference.triton_control.FORWARDED`), passed on as bytes both ways,
    and its streaming inference relayed."""

    def __init__(self, triton: TritonBackend | TritonReplicas) -> None:
        self.triton = triton

    async def ModelStreamInfer(self, requests, context):
        """Triton's streaming inference, as bytes both ways (`triton_control.STREAMED`): how decoupled models
        are called."""
        async for reply in self.triton.forward_stream(requests, budget_left(context.time_remaining())):
            yield reply


def _forwarding(method: str):
    async def forward(self, request: bytes, context) -> bytes:
        if (
            method == "RepositoryModelLoad"
        ):  # refused here too, whoever the caller: the gateway is not the only one
            check_model_load(service_pb2.RepositoryModelLoadRequest.FromString(request))
        return await self.triton.forward_control(method, request, budget_left(context.time_remaining()))

    forward.__name__ = method
    return forward


for _method in triton_control.FORWARDED:
    setattr(TritonForwarder, _method, _forwarding(_method))
