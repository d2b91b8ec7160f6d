"""Version switches and reload checks over a fake inference service that behaves like ours in front of Triton:
the versions to serve are the union of what every variant serves, and a version Triton lacks fails the change
before anything is changed."""

from __future__ import annotations

import asyncio
import time

import pytest
from tritonclient.grpc import service_pb2

from gateway.control.audit import AuditLog
from gateway.rollout.bluegreen import ModelLifecycle
from gateway.rollout.versions import versions_in_use
from gateway.routing.live import LiveRoutes
from gateway.routing.routes import parse_routes
from gateway.serving.catalog import ModelCatalog
from gateway.settings import DEFAULT_COALESCING
from meshserve.core.errors import (
    DeadlineExceeded,
    ErrorCode,
    FailedPrecondition,
    MeshError,
    NotFound,
    Unavailable,
)
from meshserve.inference.v1 import inference_pb2


class FakeInference:
    """Triton with model `m` in its repository as versions 1-3. Like the real inference service, serving a set
    with a version the repository lacks waits for it until the call's timeout (unless `fails_fast`)."""

    coalescing = DEFAULT_COALESCING

    def __init__(self, loaded: set[str], fails_fast: bool = False) -> None:
        self.repository = {"1", "2", "3"}
        self.loaded = set(loaded)
        self.fails_fast = fails_fast
        self.served: list[list[str]] = []  # every ServeVersions, in order
        self.unloading: set[str] = set()  # Triton: "not at ready state"
        self.unloaded: set[str] = (
            set()
        )  # loaded once, then unloaded: Triton's index says UNAVAILABLE (unloaded)
        self.reachable = True  # False: the inference service cannot reach Triton

    async def describe(self, model: str, version: str, timeout_s: float):
        if not self.reachable:
            raise Unavailable("inference service unavailable: failed to connect to all addresses")
        if version in self.unloading or version in self.unloaded:
            raise Unavailable(f"Request for unknown model: {model!r} version {version} is not at ready state")
        if model != "m" or not self.loaded or (version and version not in self.loaded):
            raise NotFound(f"Request for unknown model: {model!r} version {version} is not found")
        metadata = service_pb2.ModelMetadataResponse(name=model, versions=sorted(self.loaded))
        metadata.inputs.add(name="features", datatype="FP32", shape=[-1, 5])
        resolved = version or max(self.loaded, key=int)
        return inference_pb2.DescribeModelResponse(ready=True, resolved_version=resolved, metadata=metadata)

    async def control(self, method: str, request, timeout_s: float):
        assert method == "RepositoryIndex"
        if not self.reachable:
            raise Unavailable("inference service unavailable: failed to connect to all addresses")
        index = service_pb2.RepositoryIndexResponse()
        for version in sorted(self.loaded):
            index.models.add(name="m", version=version, state="READY")
        for version in sorted(self.unloaded | self.unloading):
            index.models.add(name="m", version=version, state="UNAVAILABLE", reason="unloaded")
        return index

    async def serve_versions(self, model: str, versions: list[str], timeout_s: float) -> list[str]:
        self.served.append(list(versions))
        self.unloaded |= self.loaded - set(versions)
        self.unloaded -= set(versions)
        self.loaded = set(versions) & self.repository
        self.unloading -= set(versions)
        missing = set(versions) - self.repository
        if missing and self.fails_fast:
            raise NotFound(f"model {model!r} has no versions {sorted(missing)}")
        if missing:
            await asyncio.sleep(timeout_s)
            raise DeadlineExceeded("Deadline Exceeded")
        return versions

    async def infer(self, request, timeout_s: float):
        return service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version
        )


ROUTES = {
    "routes": {
        "a": {
            "timeout_ms": 10,
            "variants": [
                {"name": "stable", "model": "m", "version": "2", "weight": 100},
                {"name": "canary", "model": "m", "version": "2", "weight": 0},
            ],
        },
        "b": {"timeout_ms": 10, "variants": [{"name": "live", "model": "m", "version": "1", "weight": 100}]},
        "c": {"timeout_ms": 10, "variants": [{"name": "latest", "model": "m", "version": "", "weight": 100}]},
        "other": {"timeout_ms": 10, "variants": [{"name": "x", "model": "n", "version": "7", "weight": 100}]},
    }
}


@pytest.fixture
def lifecycle(tmp_path):
    def build(loaded: set[str], fails_fast: bool = False) -> tuple[ModelLifecycle, FakeInference]:
        inference = FakeInference(loaded, fails_fast)
        live = LiveRoutes(
            parse_routes(ROUTES, "test"), tmp_path / "routes.yaml", AuditLog(tmp_path / "audit.jsonl")
        )
        return ModelLifecycle(live, ModelCatalog(inference), inference), inference  # type: ignore[arg-type]

    return build


def test_versions_in_use_cover_every_variant_of_every_route_of_the_model():
    routes = parse_routes(ROUTES, "test").routes
    assert versions_in_use(routes, "m", latest="3") == {"1", "2", "3"}  # c is unpinned: it serves the latest
    assert versions_in_use(routes, "n", latest="7") == {"7"}
    assert versions_in_use(routes, "absent", latest="1") == set()


async def test_a_switch_keeps_every_version_another_variant_serves(lifecycle):
    switcher, inference = lifecycle({"1", "2"})
    await switcher.switch("a", "stable", "1", "alice")
    # stable moved to 1; canary still serves 2, b serves 1, c the latest (2): nothing was unloaded
    assert inference.served[-1] == ["1", "2"]
    assert {v.name: v.version for v in switcher.live.get("a").variants} == {"stable": "1", "canary": "2"}


async def test_a_switch_loads_the_target_beside_what_is_served_then_drops_only_what_nothing_serves(lifecycle):
    switcher, inference = lifecycle({"1", "2"})
    await switcher.switch("b", "live", "3", "alice")
    assert inference.served == [["1", "2", "3"], ["2", "3"]]  # 1 is left by b; 2 is a's, and c's old latest


async def test_a_switch_back_to_a_version_still_unloading_loads_it_again(lifecycle):
    switcher, inference = lifecycle({"1"})
    inference.unloading = {"3"}
    await switcher.switch("b", "live", "3", "alice")
    assert inference.served[0] == ["1", "2", "3"]  # loaded, not refused as "not served"
    assert switcher.live.get("b").variant("live").version == "3"


@pytest.mark.parametrize("fails_fast", [False, True], ids=["service-waits", "service-fails-fast"])
async def test_a_switch_to_a_version_triton_lacks_fails_before_the_deadline_and_changes_nothing(
    lifecycle, fails_fast
):
    switcher, inference = lifecycle({"1", "2"}, fails_fast)
    started = time.monotonic()
    with pytest.raises(FailedPrecondition) as failure:
        await switcher.switch("a", "stable", "9", "alice", time_left_s=2.5)
    elapsed = time.monotonic() - started
    message = failure.value.message
    assert "route 'a' variant 'stable': model 'm' version 9" in message
    # the load may take what the deadline leaves after the drain (10 ms) and finishing (2 s)
    assert elapsed < (0.3 if fails_fast else 0.8), elapsed
    assert inference.served == [["1", "2", "9"], ["1", "2"]]  # Triton gets back exactly what it served
    assert {v.version for v in switcher.live.get("a").variants} == {"2"}
    assert switcher.live.audit.tail(10) == []


async def test_a_deadline_too_short_for_a_load_is_refused_before_anything_changes(lifecycle):
    switcher, inference = lifecycle({"1", "2"})
    with pytest.raises(FailedPrecondition, match="allow more time"):
        await switcher.switch("a", "stable", "3", "alice", time_left_s=1.0)
    assert inference.served == []


async def test_bad_switches_are_refused_without_asking_triton_to_change_anything(lifecycle):
    switcher, inference = lifecycle({"1", "2"})
    with pytest.raises(FailedPrecondition, match="already serves version 2"):
        await switcher.switch("a", "stable", "2", "alice")
    with pytest.raises(FailedPrecondition, match="route 'other' variant 'x': model 'n'"):
        await switcher.switch("other", "x", "8", "alice")
    with pytest.raises(Exception, match="version must be a number"):
        await switcher.switch("a", "stable", "latest", "alice")
    assert inference.served == []


async def test_one_lifecycle_change_at_a_time(lifecycle):
    switcher, inference = lifecycle({"1", "2"})
    switcher.live.path.write_text("routes: {}\n")
    first = asyncio.create_task(switcher.switch("a", "stable", "9", "alice", time_left_s=2.5))
    await asyncio.sleep(0.05)  # the first is loading
    with pytest.raises(
        FailedPrecondition, match="a switch of route 'a' variant 'stable' to version 9 is in progress"
    ):
        await switcher.switch("b", "live", "2", "bob")
    with pytest.raises(FailedPrecondition, match="is in progress"):
        await switcher.reload("bob")
    with pytest.raises(FailedPrecondition):
        await first


async def test_a_reload_naming_a_version_triton_does_not_serve_is_refused_and_changes_nothing(lifecycle):
    switcher, _ = lifecycle({"1", "2"})
    before = switcher.live.table
    switcher.live.path.write_text(
        "routes:\n  a:\n    variants:\n      - {name: stable, model: m, version: '1', weight: 100}\n"
        "      - {name: canary, model: m, version: '3', weight: 0}\n"
    )
    with pytest.raises(FailedPrecondition) as failure:
        await switcher.reload("carol")
    assert "route 'a' variant 'canary': model 'm' version 3 is not served by Triton" in failure.value.message
    assert switcher.live.table is before
    assert [(e.who, e.action) for e in switcher.live.audit.tail(10)] == [("carol", "reload_refused")]
    switcher.live.path.write_text(
        "routes:\n  a:\n    variants:\n      - {name: stable, model: m, version: '1', weight: 100}\n"
    )
    assert await switcher.reload("carol") == (True, "")


ROUTE_B_V1 = "routes:\n  b:\n    variants:\n      - {name: live, model: m, version: '1', weight: 100}\n"


async def test_a_reload_after_a_switch_unloaded_its_version_says_so_and_how_to_go_on(lifecycle):
    """It used to fail UNAVAILABLE ("cannot check it with Triton: inference service unavailable: ... version 1 is
    not at ready state") while every service was healthy, and said nothing of the switch or what to do."""
    switcher, inference = lifecycle({"1", "2"})
    await switcher.switch("b", "live", "3", "alice")
    assert inference.loaded == {"2", "3"}  # the switch unloaded 1
    before = switcher.live.table
    path = switcher.live.path
    path.write_text(ROUTE_B_V1)
    with pytest.raises(FailedPrecondition) as failure:
        await switcher.reload("carol")
    message = failure.value.message
    assert message.startswith(
        f"{path}: route 'b' variant 'live': model 'm' version 1 is not served by Triton (Triton lists it as "
        "UNAVAILABLE (unloaded); it serves version 2, 3); nothing changed"
    ), message
    assert "`meshserve canary switch b live 3` (alice, " in message
    assert "moved the variant from version 1 to 3 and unloaded 1" in message
    assert (
        f"to keep version 3, put `version: \"3\"` on variant 'live' of route 'b' in {path}, then reload"
        in message
    )
    assert (
        "to go back to version 1, run `meshserve canary switch b live 1` (it loads version 1 again)"
        in message
    )
    assert "\n" not in message
    assert switcher.live.table is before
    refused = switcher.live.audit.tail(1)[0]
    assert (refused.who, refused.action, refused.reason) == ("carol", "reload_refused", message)

    await switcher.switch("b", "live", "1", "carol")  # the way back it named: loads 1 again
    assert await switcher.reload("carol") == (True, "")
    assert switcher.live.get("b").variant("live").version == "1"


async def test_a_reload_naming_a_version_nothing_serves_names_the_load_to_make(lifecycle):
    switcher, inference = lifecycle({"1", "2"})
    inference.loaded, inference.unloaded = {"2"}, {"1"}  # unloaded through Triton directly: no switch to name
    switcher.live.path.write_text(
        "routes:\n  fresh:\n    variants:\n      - {name: only, model: m, version: '1', weight: 100}\n"
    )
    with pytest.raises(FailedPrecondition) as failure:
        await switcher.reload("carol")
    message = failure.value.message
    assert "route 'fresh' variant 'only': model 'm' version 1 is not served by Triton" in message
    assert "canary switch" not in message  # the route is not live: a switch cannot load it
    assert "name one Triton serves (2) for variant 'only' of route 'fresh'" in message
    assert "POST /v2/repository/models/m/load" in message


async def test_a_reload_while_triton_cannot_be_reached_is_unavailable_not_a_precondition(lifecycle):
    switcher, inference = lifecycle({"1", "2"})
    inference.reachable = False
    switcher.live.path.write_text(ROUTE_B_V1)
    with pytest.raises(MeshError) as failure:
        await switcher.reload("carol")
    assert failure.value.code is ErrorCode.UNAVAILABLE
    assert (
        "route 'b' variant 'live': model 'm' version 1: cannot check it with Triton" in failure.value.message
    )
    inference.reachable = True  # and once it can, the same file applies
    assert await switcher.reload("carol") == (True, "")
