"""`meshserve up --model-repository DIR` follows DIR: a version directory the user adds while the mesh runs is
served through the gateway without a restart, within a bounded time (readiness awaited on the model-ready API)."""

from __future__ import annotations

import asyncio
import shutil
import time

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput

from tests.e2e.meshserve_up import meshserve_up
from tests.helpers import FIXTURES

POLL_S = 0.5
READY_WITHIN_S = 60  # two looks, one model load (a python stub) on a shared 2-core machine


async def _doubled(client: triton_aio.InferenceServerClient, version: str = "") -> list[int]:
    x = InferInput("x", [2, 1], "INT64")
    x.set_data_from_numpy(np.array([[1], [5]], dtype=np.int64))
    reply = await client.infer("doubler", [x], model_version=version, client_timeout=30)
    return reply.as_numpy("doubled")[:, 0].tolist()


async def test_a_version_added_after_up_is_served_without_a_restart(tmp_path):
    user = tmp_path / "models"
    shutil.copytree(FIXTURES / "own_repository" / "doubler", user / "doubler")
    env = {"MESHSERVE_REPOSITORY_POLL_S": str(POLL_S)}
    async with (
        meshserve_up(tmp_path / "run", env, ["--model-repository", str(user)]) as (process, port),
        triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as gateway,
    ):
        assert await _doubled(gateway) == [2, 10]
        assert not await gateway.is_model_ready("doubler", "2", client_timeout=5)

        # the user adds version 2 (it triples), written elsewhere and moved in, as a deploy step would
        staged = tmp_path / "staged"
        staged.mkdir()
        source = (user / "doubler" / "1" / "model.py").read_text()
        (staged / "model.py").write_text(source.replace("x * 2", "x * 3"))
        staged.rename(user / "doubler" / "2")
        added = time.monotonic()
        while not await gateway.is_model_ready("doubler", "2", client_timeout=5):
            assert process.returncode is None, "meshserve up exited"
            assert time.monotonic() - added < READY_WITHIN_S, f"version 2 not ready after {READY_WITHIN_S}s"
            await asyncio.sleep(0.1)
        ready_s = time.monotonic() - added
        # the latest version is version 2 alone now (Triton's default policy), once the gateway has looked at
        # Triton's index again (every 5 s) and forgotten what it knew of version 1
        while (await gateway.get_model_metadata("doubler", client_timeout=5)).versions != ["2"]:
            assert time.monotonic() - added < READY_WITHIN_S, "version 1 still the latest through the gateway"
            await asyncio.sleep(0.1)
        print(
            f"\nversion 2 ready through the gateway {ready_s:.1f} s after it was added, "
            f"the latest {time.monotonic() - added:.1f} s after"
        )

        assert await _doubled(gateway, "2") == [3, 15]
        assert await _doubled(gateway) == [3, 15]
        assert process.returncode is None  # no restart: the same `up` serves it
