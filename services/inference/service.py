"""The inference service process: SERVING once Triton and the required models are ready."""

from __future__ import annotations

from meshserve.core.lifecycle import GrpcService
from meshserve.inference.v1 import inference_pb2
from services.inference.servicer import InferenceServicer
from services.inference.settings import InferenceSettings
from services.inference.triton import TritonBackend


class InferenceService(GrpcService):
    name = "inference"

    def __init__(self, settings: InferenceSettings) -> None:
        super().__init__(settings)
        self.settings: InferenceSettings = settings
        self.triton = TritonBackend(
            settings.triton_url, settings.triton_timeout_s, settings.max_message_bytes
        )

    def register(self, server):
        service = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
        server.add_service(service, InferenceServicer(self.triton), raw=["ModelInfer"])
        return [service.full_name]

    async def until_ready(self) -> None:
        await self.triton.wait_ready(self.settings.required_models, self.settings.dependency_timeout_s)

    async def close(self) -> None:
        await self.triton.close()
