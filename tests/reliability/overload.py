"""Offered load beyond capacity, for the reliability suite and `make soak`: a cheap open-loop generator (raw
bytes over one channel: the generator must not be the bottleneck) and the numbers that judge the mesh under it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from benchmarks.report import percentile

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def fraud_request(model: str = "fraud") -> bytes:
    """One row in fraud's tensors, for `model` (any model that takes them)."""
    row = np.array([[120.0, 3, 80.0, 2, 400]], dtype=np.float32)
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 5])
    return service_pb2.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[row.tobytes()]
    ).SerializeToString()


@dataclass
class Outcome:
    """What an offered load got back: answers in time, refusals (and how fast), everything else by code."""

    seconds: float
    ok_latencies_s: list[float] = field(default_factory=list)
    refused_latencies_s: list[float] = field(default_factory=list)  # from when each refused call was sent
    other: Counter[str] = field(default_factory=Counter)
    details: dict[str, str] = field(default_factory=dict)  # one message per other code
    lag_s: list[float] = field(default_factory=list)  # how late the generator sent each request

    @property
    def goodput_rps(self) -> float:
        return len(self.ok_latencies_s) / self.seconds

    @property
    def refused_p99_ms(self) -> float:
        return percentile(self.refused_latencies_s, 99) * 1000


async def closed_loop_capacity(
    target: str, concurrency: int = 32, seconds: float = 2.0, warm_up_s: float = 1.0, model: str = "fraud"
) -> float:
    """Answers per second with `concurrency` requests always in flight: what the path can do, once warm (a cold
    mesh measured alone reads far lower, and then twice "capacity" is not overload at all)."""
    request = fraud_request(model)
    async with grpc.aio.insecure_channel(target) as channel:
        infer = channel.unary_unary(MODEL_INFER)

        async def rate(window_s: float) -> float:
            done = 0
            end = time.perf_counter() + window_s

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < end:
                    await infer(request, timeout=5)
                    done += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return done / (time.perf_counter() - started)

        await rate(warm_up_s)
        return await rate(seconds)


async def offer(
    target: str, rate_rps: float, seconds: float, deadline_s: float = 1.0, model: str = "fraud"
) -> Outcome:
    """Start `rate_rps` requests a second for `seconds`, each with `deadline_s`, whatever comes back."""
    request = fraud_request(model)
    outcome = Outcome(seconds)
    async with grpc.aio.insecure_channel(target) as channel:
        infer = channel.unary_unary(MODEL_INFER)
        pending: set[asyncio.Task[None]] = set()

        async def one(scheduled: float) -> None:
            sent = time.perf_counter()
            outcome.lag_s.append(sent - scheduled)
            try:
                await infer(request, timeout=deadline_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    outcome.refused_latencies_s.append(time.perf_counter() - sent)
                else:
                    outcome.other[exc.code().name] += 1
                    outcome.details.setdefault(exc.code().name, exc.details() or "")
                return
            outcome.ok_latencies_s.append(time.perf_counter() - sent)

        start = time.perf_counter()
        total = int(rate_rps * seconds)
        for k in range(total):
            scheduled = start + k / rate_rps
            if (delay := scheduled - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(scheduled))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)
    return outcome


async def seconds_until_clean(
    target: str, needed: int = 20, timeout_s: float = 30.0, model: str = "fraud"
) -> float:
    """After a fault or overload: seconds until `needed` requests in a row are answered."""
    request = fraud_request(model)
    start = time.monotonic()
    streak = 0
    last_error = ""
    async with grpc.aio.insecure_channel(target) as channel:
        infer = channel.unary_unary(MODEL_INFER)
        while streak < needed:
            assert time.monotonic() - start < timeout_s, f"not clean after {timeout_s} s; last: {last_error}"
            try:
                await infer(request, timeout=1.0)
                streak += 1
            except grpc.aio.AioRpcError as exc:
                last_error = f"{exc.code().name}: {exc.details()}"
                streak = 0
                await asyncio.sleep(0.01)
    return time.monotonic() - start
