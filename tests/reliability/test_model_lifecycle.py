"""Model versions under admin changes, against the real mesh (a gateway of the test's own in front of the
session's Triton): a version switch never unloads a version another variant serves, and a switch or reload that
names a version Triton does not have fails at once, with an error naming route, variant, model and version, and
changes nothing.

Uses the test-only `bluegreen` model (also switched by tests/integration/test_traffic.py): the fixture serves both
its versions while a test runs and gives Triton back the versions it found.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2_grpc

from gateway.serving.clients import InferenceClient
from meshserve.admin.v1 import admin_pb2
from tests.helpers import feature_vector
from tests.integration.gateways import in_process_gateway
from tests.integration.test_traffic import row_request

MODEL = "bluegreen"
ROUTES = """
routes:
  lifecycle:
    timeout_ms: 1000
    cache: {enabled: false}
    variants:
      - {name: stable, model: bluegreen, version: "2", weight: 100}
      - {name: canary, model: bluegreen, version: "2", weight: 0}
  lifecycle-v1:
    timeout_ms: 1000
    cache: {enabled: false}
    variants:
      - {name: live, model: bluegreen, version: "1", weight: 100}
"""


def ready_versions(triton_url: str) -> set[str]:
    client = triton_grpc.InferenceServerClient(triton_url)
    return {v for v in ("1", "2") if client.is_model_ready(MODEL, v)}


def settled(triton_url: str, versions: set[str]) -> None:
    """Wait (bounded) until Triton serves exactly `versions` and has finished unloading the others."""
    client = triton_grpc.InferenceServerClient(triton_url)
    deadline = time.monotonic() + 30
    while True:
        states = {m["version"]: m.get("state") for m in client.get_model_repository_index(as_json=True)["models"]
                  if m["name"] == MODEL}  # fmt: skip
        ready = {v for v, state in states.items() if state == "READY"}
        if ready == versions and all(state in ("READY", "UNAVAILABLE") for state in states.values()):
            return
        assert time.monotonic() < deadline, f"{MODEL} never settled on {versions}: {states}"
        time.sleep(0.1)


@pytest.fixture
async def gateway(mesh, tmp_path):
    found = await asyncio.to_thread(ready_versions, mesh.endpoints.triton_grpc)
    inference = InferenceClient(mesh.endpoints.inference)
    try:
        await inference.serve_versions(MODEL, ["1", "2"], 60)
        async with in_process_gateway(mesh, tmp_path, ROUTES) as gw:
            yield gw
    finally:
        await inference.serve_versions(MODEL, sorted(found), 60)  # as the session's other tests expect it
        await asyncio.to_thread(settled, mesh.endpoints.triton_grpc, found)
        await inference.close()


async def answered_by(gw, variant: str | None = None) -> str:
    """The model version that answers a ModelInfer to route `lifecycle` (forced to `variant`, if given)."""
    request = row_request("lifecycle", feature_vector("acct-00009", amount=410.0, merchant_category=5))
    forced = (("x-meshserve-variant", variant),) if variant else ()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.service.port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = await stub.ModelInfer(request, timeout=10, metadata=forced)
    return reply.model_version


def versions(status: admin_pb2.RouteStatus) -> dict[str, str]:
    return {v.name: v.version for v in status.variants}


async def test_a_switch_never_unloads_a_version_another_variant_still_serves(mesh, gateway):
    """`canary switch fraud stable 1` used to unload version 2 while variant canary served it."""
    status = await gateway.admin.SwitchVersion(
        admin_pb2.SwitchVersionRequest(route="lifecycle", variant="stable", version="1"), timeout=60
    )
    assert versions(status) == {"stable": "1", "canary": "2"}
    assert await asyncio.to_thread(ready_versions, mesh.endpoints.triton_grpc) == {"1", "2"}
    assert await answered_by(gateway, "canary") == "2"  # the canary still answers, from its own version
    assert await answered_by(gateway, "stable") == "1"
    canary = next(v for v in (await gateway.status("lifecycle")).variants if v.name == "canary")
    assert canary.errors == 0 and not canary.ejected


async def test_a_switch_to_a_version_triton_does_not_have_fails_with_a_clear_error_and_changes_nothing(
    mesh, gateway
):
    """It used to wait for the version until the caller's deadline and say DEADLINE_EXCEEDED."""
    deadline_s = 4.5
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await gateway.admin.SwitchVersion(
            admin_pb2.SwitchVersionRequest(route="lifecycle", variant="stable", version="9"),
            timeout=deadline_s,
        )
    elapsed = time.monotonic() - started
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION, failure.value.details()
    details = failure.value.details()
    for part in ("route 'lifecycle'", "variant 'stable'", "model 'bluegreen'", "version 9"):
        assert part in details, details
    assert elapsed < deadline_s - 1, elapsed  # before the caller gives up, with time to spare
    assert versions(await gateway.status("lifecycle")) == {"stable": "2", "canary": "2"}
    assert await asyncio.to_thread(ready_versions, mesh.endpoints.triton_grpc) == {"1", "2"}
    assert await answered_by(gateway) == "2"
    # a switch to a version Triton has still works afterwards
    status = await gateway.admin.SwitchVersion(
        admin_pb2.SwitchVersionRequest(route="lifecycle", variant="canary", version="1"), timeout=60
    )
    assert versions(status) == {"stable": "2", "canary": "1"}
    assert await asyncio.to_thread(ready_versions, mesh.endpoints.triton_grpc) == {"1", "2"}


async def test_a_reload_naming_a_version_triton_does_not_serve_is_refused_at_once(gateway):
    """A reload used to accept a variant on a version Triton does not have (its requests then failed)."""
    gateway.routes_file.write_text(
        ROUTES.replace(
            '{name: canary, model: bluegreen, version: "2"', '{name: canary, model: bluegreen, version: "9"'
        )
    )
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await gateway.admin.Reload(admin_pb2.ReloadRequest(), timeout=10)
    elapsed = time.monotonic() - started
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = failure.value.details()
    for part in ("route 'lifecycle'", "variant 'canary'", "model 'bluegreen'", "version 9"):
        assert part in details, details
    assert elapsed < 1.0, elapsed
    assert versions(await gateway.status("lifecycle")) == {"stable": "2", "canary": "2"}  # nothing changed
    audit = (await gateway.admin.GetAuditLog(admin_pb2.GetAuditLogRequest(), timeout=5)).entries
    assert audit[-1].action == "reload_refused" and "version 9" in audit[-1].reason
    assert await answered_by(gateway) == "2"  # the old routes keep serving
    # the same file with a version Triton has applies
    gateway.routes_file.write_text(
        ROUTES.replace(
            '{name: canary, model: bluegreen, version: "2"', '{name: canary, model: bluegreen, version: "1"'
        )
    )
    reply = await gateway.admin.Reload(admin_pb2.ReloadRequest(), timeout=10)
    assert reply.applied and versions(await gateway.status("lifecycle")) == {"stable": "2", "canary": "1"}
