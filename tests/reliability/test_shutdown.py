"""SIGTERM of a busy gateway: it says NOT_SERVING while its port is still open, finishes every call it had
received, and exits 0, run after run."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from meshserve.core.channels import wait_until_serving
from meshserve.core.process import ChildProcess, free_port
from tests.helpers import gateway_env

RUNS = 5
IN_FLIGHT = 24
SERVICE_NAMES = ("", "meshserve.gateway.v1.PredictionService", "inference.GRPCInferenceService")


def slow_request() -> service_pb2.ModelInferRequest:
    row = np.ones((1, 5), dtype=np.float32)
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 5])
    return service_pb2.ModelInferRequest(
        model_name="slow", inputs=[tensor], raw_input_contents=[row.tobytes()]
    )


async def watch_health(port: int, seen: list[tuple[str, str]], signalled: asyncio.Event) -> None:
    """Ask every service name's health until the port refuses; record what each answer was once signalled."""
    # its own connection, so the calls under test never share one with it
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        while True:
            for name in SERVICE_NAMES:
                was_signalled = signalled.is_set()
                try:
                    reply = await check(health_pb2.HealthCheckRequest(service=name), timeout=0.5)
                    answer = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.aio.AioRpcError as exc:
                    answer = exc.code().name
                if was_signalled:
                    seen.append((name, answer))
                    if answer == "UNAVAILABLE":
                        return
            await asyncio.sleep(0.01)  # a health checker's period, short: this is what is being measured


async def test_sigterm_with_24_calls_in_flight_loses_none_says_not_serving_first_and_exits_0(mesh, tmp_path):
    outcomes: Counter[str] = Counter()
    for run in range(RUNS):
        port = free_port()
        log_path = tmp_path / f"gateway-{run}.log"
        gateway = ChildProcess(
            "gateway",
            [sys.executable, "-m", "gateway"],
            gateway_env(mesh, port, tmp_path, MESHSERVE_GATEWAY_SHUTDOWN_SETTLE_S="0.5"),
            log_path,
        )
        await gateway.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await wait_until_serving(channel, timeout_s=60)
                signalled, seen = asyncio.Event(), []
                watcher = asyncio.create_task(watch_health(port, seen, signalled))
                infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
                calls = [asyncio.ensure_future(infer(slow_request(), timeout=30)) for _ in range(IN_FLIGHT)]
                # every call is on its way over the open connection; the signal lands while the gateway is still
                # taking them in (before the fix, the ones not yet taken in came back CANCELLED)
                await asyncio.sleep(0.005)
                signalled.set()
                gateway.process.send_signal(signal.SIGTERM)
                replies = await asyncio.gather(*calls, return_exceptions=True)
                for reply in replies:
                    if isinstance(reply, grpc.aio.AioRpcError):
                        outcomes[reply.code().name] += 1
                    else:
                        assert np.frombuffer(reply.raw_output_contents[0], np.float32)[0] == 0.5
                        outcomes["OK"] += 1
                assert await asyncio.wait_for(gateway.process.wait(), 30) == 0, gateway.log_tail()
                await asyncio.wait_for(watcher, 10)
            for name in SERVICE_NAMES:
                answers = [answer for service, answer in seen if service == name]
                # a check answered in the instant between the signal's sending and its handling still says SERVING
                while answers and answers[0] == "SERVING":
                    answers.pop(0)
                # after the signal: NOT_SERVING while the port is still open, then only the closed port (a check
                # that arrives in the very instant the server stops taking calls is CANCELLED by grpc instead)
                closed = next(
                    i for i, answer in enumerate(answers + ["UNAVAILABLE"]) if answer != "NOT_SERVING"
                )
                assert closed > 0, (run, name, answers)
                assert set(answers[closed:]) <= {"UNAVAILABLE", "CANCELLED"}, (run, name, answers)
        finally:
            await gateway.stop(2)
        log = log_path.read_text()
        assert '"msg": "not serving; settling before the drain"' in log and '"msg": "stopped"' in log
    print(f"\n{RUNS} SIGTERMs with {IN_FLIGHT} ModelInfer calls in flight: {dict(outcomes)}")
    assert outcomes == {"OK": RUNS * IN_FLIGHT}
