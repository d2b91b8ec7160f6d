"""Real Triton processes for the replica tests: one on free ports, asked directly (not through the mesh); a
request for the `busy` fixture model as the inference service forwards it; a bounded wait."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2

from meshserve.core.process import ChildProcess, free_ports
from services.inference.tritonserver import triton_command

MODEL_INFER = "/meshserve.inference.v1.InferenceService/ModelInfer"


class Triton:
    def __init__(self, name: str, repository: Path, backend_dir: Path, log_dir: Path, *extra: str) -> None:
        self.grpc_port, http_port, metrics_port = free_ports(3)
        self.url = f"127.0.0.1:{self.grpc_port}"
        argv, env = triton_command([repository], self.grpc_port, http_port, metrics_port, backend_dir, extra)
        self.process = ChildProcess(name, argv, {**os.environ, **env}, log_dir / f"{name}.log")

    async def ready(self, model: str = "") -> bool:
        """Asked of this replica directly, not through the mesh."""
        async with triton_aio.InferenceServerClient(self.url) as client:
            with contextlib.suppress(Exception):
                if model:
                    return await client.is_model_ready(model, client_timeout=1)
                return await client.is_server_ready(client_timeout=1)
        return False

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self.ready("busy"):
            assert not self.process.exited, self.process.log_tail()
            assert time.monotonic() < deadline, f"{self.url} not ready: {self.process.log_tail()}"
            await asyncio.sleep(0.1)

    async def inferences(self, model: str) -> int:
        """Rows `model` has inferred here (Triton's own statistics, every version)."""
        async with triton_aio.InferenceServerClient(self.url) as client:
            stats = await client.get_inference_statistics(model, client_timeout=5)
        return sum(m.inference_count for m in stats.model_stats)


def busy_request() -> bytes:
    row = np.array([[250.0, 3, 80.0, 2, 400]], dtype=np.float32)
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 5])
    message = service_pb2.ModelInferRequest(
        model_name="busy", inputs=[tensor], raw_input_contents=[row.tobytes()]
    )
    return message.SerializeToString()


async def until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


__all__ = ["MODEL_INFER", "Triton", "busy_request", "until"]
