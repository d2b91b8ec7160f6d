"""A dependency that fails is that dependency's failure, not the model variant's: with the feature service
down, ModelInfer on the same route keeps answering (it never needs features), Predict says which hop failed
without showing where it listens, nothing is ejected, and everything is clean again soon after the feature
service is back."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import grpc
import pytest

from meshserve.core.channels import wait_until_serving
from meshserve.core.process import ChildProcess, free_port
from tests.integration.gateways import in_process_gateway
from tests.reliability.overload import MODEL_INFER, fraud_request

ROUTES = """
routes:
  fraud:
    timeout_ms: 2000
    cache: {enabled: false}
    variants:
      - {name: stable, model: fraud, version: "1", weight: 100}
"""


MISSING = """
  missing:
    timeout_ms: 2000
    cache: {enabled: false}
    fallback: [stable]
    variants:
      - {name: ghost, model: fraud, version: "9", weight: 100}
      - {name: stable, model: fraud, version: "1", weight: 0}
"""


def feature_service(tmp_path, port: int, cache_url: str) -> ChildProcess:
    env = {"MESHSERVE_FEATURE_PORT": str(port), "MESHSERVE_FEATURE_HOST": "127.0.0.1",
           "MESHSERVE_FEATURE_CACHE_URL": cache_url, "PATH": "/usr/bin:/bin"}  # fmt: skip
    return ChildProcess("feature", [sys.executable, "-m", "services.feature"], env, tmp_path / "feature.log")


@pytest.mark.timeout(120)
async def test_a_feature_outage_fails_only_what_needs_features_and_ejects_nothing(mesh, tmp_path):
    port = free_port()
    features = feature_service(tmp_path, port, mesh.endpoints.cache)
    await features.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_until_serving(channel, timeout_s=60)
        async with in_process_gateway(mesh, tmp_path, ROUTES, feature_url=f"127.0.0.1:{port}") as gateway:
            assert (await gateway.predict("fraud")).score > 0
            features.signal(signal.SIGKILL)
            await features.process.wait()

            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.service.port}") as channel:
                infer = channel.unary_unary(MODEL_INFER)
                request = fraud_request()
                failures = 0
                for _ in range(10):  # Predicts fail, clearly, while ModelInfer goes on
                    with pytest.raises(grpc.aio.AioRpcError) as failed:
                        await gateway.predict("fraud", timeout=3)
                    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert "feature service" in failed.value.details()
                    assert "127.0.0.1" not in failed.value.details() and "ipv4" not in failed.value.details()
                    for _ in range(20):
                        try:
                            await infer(request, timeout=3)
                        except grpc.aio.AioRpcError:
                            failures += 1
                assert failures == 0
            status = await gateway.status("fraud")
            assert not any(v.ejected for v in status.variants) and all(v.errors == 0 for v in status.variants)

            await features.start()  # back on the same port: the gateway's channel reconnects by itself
            started = time.monotonic()
            while True:
                try:
                    assert (await gateway.predict("fraud", timeout=2)).score > 0
                    break
                except grpc.aio.AioRpcError:
                    assert time.monotonic() - started < 10, "Predict not back 10 s after the feature service"
                    await asyncio.sleep(0.05)
            print(
                f"\nPredict answered again {time.monotonic() - started:.2f} s after the feature service restarted"
            )
    finally:
        await features.stop(5)


async def test_a_gateway_whose_routes_name_a_missing_version_starts_and_serves_the_rest(mesh, tmp_path):
    routes = ROUTES + MISSING
    async with in_process_gateway(mesh, tmp_path, routes) as gateway:  # it became SERVING
        assert (await gateway.predict("fraud")).score > 0
        fallback = await gateway.predict("missing")  # the missing version is a variant that is down
        assert (fallback.variant, fallback.tier) == ("stable", 2)  # Tier.FALLBACK
