"""A gateway of a test's own, in the test's process (real gRPC servers on free ports), in front of the session
mesh's real services: for tests that change routes, caches or rollouts without disturbing other tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from gateway.service import GatewayService
from gateway.settings import GatewaySettings
from meshserve.admin.v1 import admin_pb2, admin_pb2_grpc
from meshserve.core.channels import wait_until_serving
from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshserve.launcher.mesh import LocalMesh


class Gateway:
    def __init__(self, service: GatewayService, channel, admin_channel, routes_file: Path) -> None:
        self.service = service
        self.predict_stub = gateway_pb2_grpc.PredictionServiceStub(channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(admin_channel)
        self.routes_file = routes_file

    async def predict(
        self, route: str, account: str = "acct-00011", amount: float = 90.0, timeout: float = 10
    ) -> gateway_pb2.Prediction:
        request = gateway_pb2.PredictRequest(
            route=route,
            instances=[
                gateway_pb2.Instance(
                    entity_key=account,
                    features={
                        "amount": feature_pb2.Value(double_value=amount),
                        "merchant_category": feature_pb2.Value(int64_value=4),
                    },
                )
            ],
        )
        return (await self.predict_stub.Predict(request, timeout=timeout)).predictions[0]

    async def status(self, route: str) -> admin_pb2.RouteStatus:
        reply = await self.admin.ListRoutes(admin_pb2.ListRoutesRequest(), timeout=5)
        return next(r for r in reply.routes if r.route == route)


@contextlib.asynccontextmanager
async def in_process_gateway(
    mesh: LocalMesh, tmp_path: Path, routes: str, **overrides
) -> AsyncIterator[Gateway]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(routes)
    settings = {
        "port": 0, "admin_port": 0, "http_port": 0, "metrics_port": 0, "routes_path": routes_file,
        "audit_log": tmp_path / "audit.jsonl", "feature_url": mesh.endpoints.feature,
        "cache_url": mesh.endpoints.cache, "inference_url": mesh.endpoints.inference,
        "monitor_url": mesh.endpoints.monitor,
    }  # fmt: skip
    service = GatewayService(GatewaySettings(**{**settings, **overrides}))
    port = await service.start()
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{service.admin_port}") as admin_channel,
        ):
            await wait_until_serving(channel, timeout_s=30)
            yield Gateway(service, channel, admin_channel, routes_file)
    finally:
        await service.stop(1)
