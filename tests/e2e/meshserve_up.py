"""`meshserve up` as a user runs it, for the end-to-end tests: on free ports, until it says every process is up,
and stopped the way a user would (then made sure of) whatever the test did."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from meshserve.core.process import free_ports
from tests.helpers import alive, descendants

MESHSERVE = str(Path(sys.executable).parent / "meshserve")


@asynccontextmanager
async def meshserve_up(
    run_dir: Path,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    output: list[str] | None = None,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """The `up` process and its gateway port, once `up` has printed that every process is healthy. `args` go
    after the port flags (with `--host H`, the ports are chosen free on H); `output` gets what `up` printed until
    then, line by line."""
    host = args[list(args).index("--host") + 1] if "--host" in args else "127.0.0.1"
    port, admin_port, http_port = free_ports(3, host)
    full_env = {**os.environ, "MESHSERVE_RUN_DIR": str(run_dir), "MESHSERVE_GRACE_S": "3", **(env or {})}
    process = await asyncio.create_subprocess_exec(
        MESHSERVE, "up", "--port", str(port), "--admin-port", str(admin_port), "--http-port", str(http_port),
        *args, env=full_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        # `up` prints its endpoints once it has seen every process healthy; it exits if start-up fails
        async with asyncio.timeout(120):
            while b"Ctrl-C stops every process" not in (line := await process.stdout.readline()):
                assert line, "meshserve up exited during start-up"
                if output is not None:
                    output.append(line.decode(errors="replace"))
        yield process, port
    finally:
        if process.returncode is None:  # a failed test: stop it the way a user would, then make sure
            family = alive(descendants(process.pid))
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            finally:
                for pid in alive(family | {process.pid}):
                    os.kill(pid, signal.SIGKILL)
                await process.wait()


async def meshserve_up_fails(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> tuple[int, str]:
    """`meshserve up ARGS` expected to stop by itself (a start-up failure): its exit code and output, never left
    running."""
    process = await asyncio.create_subprocess_exec(
        MESHSERVE, "up", *args, env={**os.environ, "COLUMNS": "200", "MESHSERVE_GRACE_S": "3", **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:  # it did not stop: the test fails, and leaves nothing behind
            for pid in alive(descendants(process.pid) | {process.pid}):
                os.kill(pid, signal.SIGKILL)
            await process.wait()
    return process.returncode, output.decode(errors="replace")


def run_logs(run_dir: Path) -> Path:
    """The newest run's log directory of `meshserve up` in `run_dir` (<run_dir>/logs/latest)."""
    return (run_dir / "logs" / "latest").resolve()
