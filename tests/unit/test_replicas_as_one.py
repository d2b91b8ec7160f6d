"""Several Triton replicas answering as one: statistics summed over replicas, which failures go once to another
replica, and what a replica coming back must be sent (pure policy), then TritonReplicas' control calls against
stand-ins for the Tritons (no network)."""

from __future__ import annotations

import asyncio
import random

import pytest
from tritonclient.grpc import service_pb2

from meshserve.core.errors import ErrorCode, MeshError
from meshserve.inference.statistics import merge_statistics
from services.inference.desired import Control, ControlKind, DesiredModels
from services.inference.picker import ReplicaPicker
from services.inference.replicas import TritonReplicas
from services.inference.retry import retry_on_another


def _stats(*entries: service_pb2.ModelStatistics) -> service_pb2.ModelStatisticsResponse:
    return service_pb2.ModelStatisticsResponse(model_stats=list(entries))


def _entry(name: str, version: str, inferences: int, executions: int, last: int, batch: dict[int, int]):
    entry = service_pb2.ModelStatistics(
        name=name,
        version=version,
        last_inference=last,
        inference_count=inferences,
        execution_count=executions,
    )
    s = entry.inference_stats
    for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        getattr(s, field).count = executions
        getattr(s, field).ns = 1000 * executions
    s.cache_hit.count, s.cache_hit.ns = inferences // 2, 10
    s.cache_miss.count, s.cache_miss.ns = inferences - inferences // 2, 20
    for size, count in batch.items():
        b = entry.batch_stats.add(batch_size=size)
        b.compute_infer.count, b.compute_infer.ns = count, 7 * count
    entry.memory_usage.add(type="CPU", id=0, byte_size=100)
    entry.response_stats["0"].success.count = inferences
    return entry


def _figures(message, prefix: str = "") -> dict[str, object]:
    """Every value set in a message, by its path: two answers with the same figures compare equal however their
    empty parts were written."""
    out: dict[str, object] = {}
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                out.update(_figures(item, f"{path}[{key}]."))
        elif field.message_type is not None and field.is_repeated:
            for i, item in enumerate(value):
                out.update(_figures(item, f"{path}[{i}]."))
        elif field.message_type is not None:
            out.update(_figures(value, f"{path}."))
        elif value:
            out[path] = value
    return out


def test_statistics_are_summed_per_model_and_version_over_replicas():
    a = _stats(_entry("m", "1", 10, 4, 500, {1: 2, 4: 2}), _entry("m", "2", 3, 3, 100, {1: 3}))
    b = _stats(_entry("m", "1", 6, 6, 900, {1: 5, 2: 1}), _entry("other", "1", 1, 1, 50, {1: 1}))
    merged = merge_statistics([a, b])

    by_key = {(e.name, e.version): e for e in merged.model_stats}
    assert list(by_key) == [("m", "1"), ("m", "2"), ("other", "1")]  # in the order first seen
    m1 = by_key[("m", "1")]
    assert (m1.inference_count, m1.execution_count, m1.last_inference) == (16, 10, 900)
    s = m1.inference_stats
    assert (s.success.count, s.success.ns) == (10, 10_000)
    assert (s.queue.count, s.compute_infer.ns, s.fail.count) == (10, 10_000, 10)
    assert (s.cache_hit.count, s.cache_hit.ns, s.cache_miss.count, s.cache_miss.ns) == (8, 20, 8, 40)
    batches = {b.batch_size: (b.compute_infer.count, b.compute_infer.ns) for b in m1.batch_stats}
    assert batches == {1: (7, 49), 4: (2, 14), 2: (1, 7)}
    assert [(u.type, u.id, u.byte_size) for u in m1.memory_usage] == [("CPU", 0, 200)]
    assert m1.response_stats["0"].success.count == 16
    assert _figures(by_key[("m", "2")]) == _figures(
        _entry("m", "2", 3, 3, 100, {1: 3})
    )  # one replica's alone


def test_statistics_of_one_replica_are_its_own_and_of_none_are_empty():
    only = _stats(_entry("m", "1", 5, 5, 1, {1: 5}))
    assert _figures(merge_statistics([only])) == _figures(only)
    assert merge_statistics([]) == service_pb2.ModelStatisticsResponse()


def test_only_a_request_that_never_ran_goes_once_to_another_replica():
    assert retry_on_another("UNAVAILABLE", attempts=1, others=1, time_left_s=2.0)
    assert retry_on_another("UNAVAILABLE", attempts=1, others=3, time_left_s=None)
    for code in ("DEADLINE_EXCEEDED", "INTERNAL", "INVALID_ARGUMENT", "NOT_FOUND", "UNKNOWN", "CANCELLED"):
        assert not retry_on_another(code, attempts=1, others=1, time_left_s=2.0), code


def test_no_retry_twice_without_another_replica_or_without_time_left():
    assert not retry_on_another("UNAVAILABLE", attempts=2, others=1, time_left_s=2.0)
    assert not retry_on_another("UNAVAILABLE", attempts=1, others=0, time_left_s=2.0)
    assert not retry_on_another("UNAVAILABLE", attempts=1, others=1, time_left_s=0.0)
    assert not retry_on_another("UNAVAILABLE", attempts=1, others=1, time_left_s=-0.5)


def test_the_picker_never_picks_the_replica_a_request_failed_on():
    picker = ReplicaPicker(["a", "b", "c"], rng=random.Random(3))
    a, b, c = picker.replicas
    for r in picker.replicas:
        picker.update(r, True, [("m", "1")])
    assert {picker.pick("m", "1", exclude=a).name for _ in range(50)} == {"b", "c"}
    picker.update(b, False)
    picker.update(c, False)
    assert picker.candidates("m", "1", exclude=a) == [
        b,
        c,
    ]  # none healthy: any other, never the one that failed


def _load(name: str, config: str = "") -> Control:
    request = service_pb2.RepositoryModelLoadRequest(model_name=name)
    if config:
        request.parameters["config"].string_param = config
    return Control(ControlKind.LOAD, name, request.SerializeToString())


def _unload(name: str) -> Control:
    request = service_pb2.RepositoryModelUnloadRequest(model_name=name)
    return Control(ControlKind.UNLOAD, name, request.SerializeToString())


def test_a_returning_replica_is_sent_every_models_last_load_and_the_unloads_it_missed():
    desired = DesiredModels()
    assert desired.generation == 0 and desired.catch_up({("a", "1")}) == []
    load_a, unload_b, load_c = _load("a", '{"max_batch_size": 2}'), _unload("b"), _load("c")
    for control in (load_a, unload_b, load_c):
        desired.record(control)
    assert desired.generation == 3
    # it still serves b (unloaded meanwhile) and holds a as on disk (its override was lost in a restart)
    assert desired.catch_up({("a", "1"), ("b", "1")}) == [load_a, unload_b, load_c]
    assert desired.catch_up({("a", "1"), ("c", "1")}) == [load_a, load_c]  # b is gone there already


def test_only_the_last_call_per_model_counts_in_the_order_they_were_made():
    desired = DesiredModels()
    desired.record(_load("a"))
    desired.record(_load("b"))
    desired.record(_unload("a"))
    serve = Control(ControlKind.SERVE_VERSIONS, "b", versions=("1", "2"))
    desired.record(serve)
    assert desired.generation == 4
    assert desired.catch_up({("a", "1"), ("b", "1")}) == [_unload("a"), serve]
    assert desired.catch_up(set()) == [serve]


class FakeBackend:
    """Stands in for one Triton's client: control calls answered from `answers` (an exception is raised), what it
    was sent recorded; its repository index lists `ready`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.timeout_s = self.max_call_s = 5.0
        self.sent: list[str] = []
        self.answers: dict[str, object] = {}
        self.ready: set[tuple[str, str]] = {("busy", "1")}
        self.control = self

    async def forward_control(self, method, request, timeout_s):
        self.sent.append(method)
        answer = self.answers.get(method, b"")
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def all_ready(self, models, timeout_s):
        return True

    async def get_model_repository_index(self, client_timeout=None):
        index = service_pb2.RepositoryIndexResponse()
        for name, version in sorted(self.ready):
            index.models.add(name=name, version=version, state="READY")
        return index

    async def close(self):
        pass


async def _replicas():
    replicas = TritonReplicas(["a:1", "b:1"], timeout_s=1.0, max_message_bytes=1 << 20)
    await replicas.close()  # their real clients: never dialled here
    fakes = [FakeBackend("a:1"), FakeBackend("b:1")]
    replicas.backends = fakes  # type: ignore[assignment]
    replicas._backend = dict(zip(map(id, replicas.picker.replicas), fakes, strict=True))  # type: ignore[arg-type]
    return replicas, fakes


async def test_a_load_that_an_unreachable_replica_missed_succeeds_takes_it_out_and_is_kept():
    replicas, (a, b) = await _replicas()
    assert await replicas.all_ready([], 1.0)
    b.answers["RepositoryModelLoad"] = MeshError("triton unavailable", ErrorCode.UNAVAILABLE)
    load = service_pb2.RepositoryModelLoadRequest(model_name="spare").SerializeToString()
    assert await replicas.forward_control("RepositoryModelLoad", load, 5.0) == b""
    ra, rb = replicas.picker.replicas
    assert ra.healthy and not rb.healthy
    assert [c.model for c in replicas.desired.controls()] == ["spare"]

    # b answers again: it is sent the load before it is picked
    del b.answers["RepositoryModelLoad"]
    assert not await replicas._check(rb, [], 1.0)  # its catch-up runs meanwhile
    await asyncio.gather(*replicas._catching_up.values())
    assert b.sent == ["RepositoryModelLoad", "RepositoryModelLoad"]
    assert await replicas._check(rb, [], 1.0) and rb.healthy
    assert a.sent == ["RepositoryModelLoad"]  # a held it all along


async def test_a_load_triton_refuses_fails_and_is_not_kept_and_statistics_skip_a_replica_without_the_model():
    replicas, (a, b) = await _replicas()
    await replicas.all_ready([], 1.0)
    refused = MeshError("failed to load 'nope'", ErrorCode.INVALID_ARGUMENT)
    a.answers["RepositoryModelLoad"] = b.answers["RepositoryModelLoad"] = refused
    load = service_pb2.RepositoryModelLoadRequest(model_name="nope").SerializeToString()
    with pytest.raises(MeshError, match="nope"):
        await replicas.forward_control("RepositoryModelLoad", load, 5.0)
    assert replicas.desired.controls() == [] and all(r.healthy for r in replicas.picker.replicas)

    a.answers["ModelStatistics"] = _stats(_entry("m", "1", 4, 2, 10, {2: 2})).SerializeToString()
    b.answers["ModelStatistics"] = MeshError("unknown model 'm'", ErrorCode.NOT_FOUND)
    request = service_pb2.ModelStatisticsRequest(name="m").SerializeToString()
    answer = service_pb2.ModelStatisticsResponse.FromString(
        await replicas.forward_control("ModelStatistics", request, 5.0)
    )
    assert [(e.name, e.inference_count) for e in answer.model_stats] == [("m", 4)]
    a.answers["ModelStatistics"] = MeshError("unknown model 'm'", ErrorCode.NOT_FOUND)
    with pytest.raises(MeshError, match="unknown model"):  # nowhere: Triton's own answer
        await replicas.forward_control("ModelStatistics", request, 5.0)


async def test_a_returning_replica_that_refuses_a_call_of_its_catch_up_is_picked_again_all_the_same():
    replicas, (a, b) = await _replicas()
    await replicas.all_ready([], 1.0)
    ra, rb = replicas.picker.replicas
    replicas._set_healthy(rb, False)  # b down
    for name in ("x", "y"):
        load = service_pb2.RepositoryModelLoadRequest(model_name=name).SerializeToString()
        await replicas.forward_control("RepositoryModelLoad", load, 5.0)
    assert b.sent == []
    b.answers["RepositoryModelLoad"] = MeshError("failed to load 'x'", ErrorCode.INVALID_ARGUMENT)
    assert not await replicas._check(rb, [], 1.0)
    await asyncio.gather(*replicas._catching_up.values())
    assert b.sent == ["RepositoryModelLoad", "RepositoryModelLoad"]  # x refused, y still sent
    assert await replicas._check(rb, [], 1.0)


async def test_a_replica_that_came_back_during_a_load_without_it_is_taken_out_to_catch_up():
    replicas, (a, b) = await _replicas()
    await replicas.all_ready([], 1.0)
    ra, rb = replicas.picker.replicas
    replicas._set_healthy(rb, False)

    async def slow_load(method, request, timeout_s):
        replicas.picker.update(rb, True)  # b's check found it ready meanwhile
        return b""

    a.forward_control = slow_load  # type: ignore[method-assign]
    load = service_pb2.RepositoryModelLoadRequest(model_name="x").SerializeToString()
    await replicas.forward_control("RepositoryModelLoad", load, 5.0)
    assert not rb.healthy and b.sent == []
    assert not await replicas._check(rb, [], 1.0)
    await asyncio.gather(*replicas._catching_up.values())
    assert b.sent == ["RepositoryModelLoad"] and await replicas._check(rb, [], 1.0)
