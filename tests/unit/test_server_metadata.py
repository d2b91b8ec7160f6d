"""ServerMetadata as the gateway answers it: Triton's name and version, asked once and kept, its extensions less
those the gateway does not serve (gateway.serving.server_metadata)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from tritonclient.grpc import service_pb2

from gateway.serving.server_metadata import GATEWAY_EXTENSIONS, TritonMetadata, as_served, server_identity
from meshserve.core.errors import ErrorCode, MeshError

# What the bundled Triton 2.51 reports
TRITON_EXTENSIONS = [
    "classification", "sequence", "model_repository", "model_repository(unload_dependents)", "schedule_policy",
    "model_configuration", "system_shared_memory", "cuda_shared_memory", "binary_tensor_data", "parameters",
    "statistics", "trace", "logging",
]  # fmt: skip


def triton(version: str = "2.51.0", extensions=TRITON_EXTENSIONS) -> service_pb2.ServerMetadataResponse:
    return service_pb2.ServerMetadataResponse(name="triton", version=version, extensions=extensions)


class FakeInference:
    """Answers ServerMetadata with `answers`, in turn (an exception is raised); counts the calls."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def control(self, method, request, timeout_s):
        assert method == "ServerMetadata" and isinstance(request, service_pb2.ServerMetadataRequest)
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def settled(metadata: TritonMetadata) -> None:
    """Until the background call and its callback are done (a few turns of the loop; bounded)."""
    for _ in range(100):
        if not metadata.asking:
            return
        await asyncio.sleep(0)
    raise AssertionError("the background call never finished")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_answer_is_tritons_name_and_version_with_the_extensions_the_gateway_serves_in_tritons_order():
    newer = [
        *TRITON_EXTENSIONS[:3],
        "generate",
        *TRITON_EXTENSIONS[3:],
    ]  # one this gateway was never checked with
    served = as_served(triton("2.60.0", newer))
    assert (served.name, served.version) == ("triton", "2.60.0")
    assert list(served.extensions) == TRITON_EXTENSIONS
    assert (
        set(TRITON_EXTENSIONS) <= GATEWAY_EXTENSIONS
    )  # everything the bundled Triton reports works through it
    assert list(as_served(triton(extensions=["trace", "sequence"])).extensions) == ["trace", "sequence"]


def test_meshserve_says_who_it_is_beside_the_answer():
    assert server_identity("1.4.0") == "meshserve/1.4.0"


async def test_triton_is_asked_once_and_concurrent_first_callers_share_the_call(caplog):
    caplog.set_level(logging.INFO, logger="gateway.serving.server_metadata")  # the log line is made, too
    inference = FakeInference(triton())
    inference.gate = asyncio.Event()
    metadata = TritonMetadata(inference, clock=Clock())
    waiting = [asyncio.ensure_future(metadata.get()) for _ in range(5)]
    await asyncio.sleep(0)
    inference.gate.set()
    answers = await asyncio.gather(*waiting)
    assert {a.version for a in answers} == {"2.51.0"} and inference.calls == 1
    assert (await metadata.get()).version == "2.51.0" and inference.calls == 1
    assert [r.server_version for r in caplog.records if r.msg == "Triton's server metadata"] == ["2.51.0"]


async def test_an_old_answer_is_given_while_triton_is_asked_again_in_the_background():
    clock = Clock()
    inference = FakeInference(triton("2.51.0"), triton("2.52.0"))
    metadata = TritonMetadata(inference, max_age_s=300, clock=clock)
    assert (await metadata.get()).version == "2.51.0"
    clock.now += 299
    assert (await metadata.get()).version == "2.51.0" and inference.calls == 1
    clock.now += 1
    assert (await metadata.get()).version == "2.51.0"  # not waited for
    await settled(metadata)
    assert inference.calls == 2 and (await metadata.get()).version == "2.52.0"


async def test_a_failed_refresh_keeps_the_known_answer_and_is_not_retried_at_once(caplog):
    clock = Clock()
    down = MeshError("inference service unavailable: connection refused", ErrorCode.UNAVAILABLE)
    inference = FakeInference(triton(), down)
    metadata = TritonMetadata(inference, max_age_s=300, clock=clock)
    await metadata.get()
    clock.now += 300
    await metadata.get()
    await settled(metadata)
    assert inference.calls == 2 and "could not be read" in caplog.text
    assert (await metadata.get()).version == "2.51.0" and inference.calls == 2


async def test_before_triton_ever_answered_its_error_is_the_callers_and_the_next_caller_asks_again():
    down = MeshError("inference service unavailable: connection refused", ErrorCode.UNAVAILABLE)
    inference = FakeInference(down, triton())
    metadata = TritonMetadata(inference, clock=Clock())
    with pytest.raises(MeshError) as failed:
        await metadata.get()
    assert failed.value.code is ErrorCode.UNAVAILABLE
    assert (await metadata.get()).name == "triton" and inference.calls == 2
