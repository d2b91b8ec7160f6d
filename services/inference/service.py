"""The inference service process: SERVING once Triton and the required models are ready, NOT_SERVING whenever
they stop being so, and SERVING again when they are back."""

from __future__ import annotations

import asyncio
import logging

from meshserve.core.lifecycle import GrpcService
from meshserve.core.tls import ClientTls
from meshserve.inference import triton_control
from meshserve.inference.v1 import inference_pb2
from services.inference.replicas import TritonReplicas
from services.inference.servicer import InferenceServicer, TritonForwarder
from services.inference.settings import InferenceSettings
from services.inference.triton import TritonBackend

log = logging.getLogger(__name__)


class InferenceService(GrpcService):
    name = "inference"

    def __init__(self, settings: InferenceSettings) -> None:
        super().__init__(settings)
        self.settings: InferenceSettings = settings
        args = (settings.triton_timeout_s, settings.max_message_bytes, settings.triton_reconnect_max_s)
        tls, tls_name = ClientTls.from_settings(settings), settings.triton_tls_name
        urls = settings.triton_urls or [settings.triton_url]
        self.triton: TritonBackend | TritonReplicas
        if len(urls) == 1:  # one Triton: no picking on the hot path
            self.triton = TritonBackend(
                urls[0], *args, settings.triton_max_call_s, tls=tls, tls_name=tls_name
            )
        else:
            self.triton = TritonReplicas(
                urls,
                *args,
                settings.triton_max_call_s,
                tls,
                tls_name,
                failed_checks=settings.triton_failed_checks,
            )

    def register(self, server):
        service = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
        server.add_service(service, InferenceServicer(self.triton), raw=["ModelInfer"])
        forwarded = (*triton_control.FORWARDED, *triton_control.STREAMED)
        server.add_service(
            triton_control.SERVICE, TritonForwarder(self.triton), raw=forwarded, only=forwarded
        )
        return [service.full_name]

    async def until_ready(self) -> None:
        await self.triton.wait_ready(self.settings.required_models, self.settings.dependency_timeout_s)

    async def follow_dependencies(self) -> None:
        """Triton's readiness, checked every `triton_check_interval_s`: health says whether a call can succeed.
        It takes `triton_failed_checks` failed checks in a row to say NOT_SERVING (one slow answer from a busy
        Triton must not take the service out of every balancer), and one good one to say SERVING again. With
        several replicas, each is checked (and picked from) on its own, and the service is SERVING while one is."""
        s, ready, failed = self.settings, True, 0
        while True:
            await asyncio.sleep(s.triton_check_interval_s)
            ok = await self.triton.all_ready(s.required_models, s.triton_check_timeout_s)
            failed = 0 if ok else failed + 1
            now = ok or (ready and failed < s.triton_failed_checks)
            if now == ready:
                continue
            ready = now
            await self.set_serving(ready)
            if ready:
                log.info("triton ready again; serving", extra={"url": self.triton.url})
            else:
                log.warning("triton not ready; not serving until it is", extra={"url": self.triton.url})

    async def close(self) -> None:
        await self.triton.close()
