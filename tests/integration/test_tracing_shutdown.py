"""A process stops promptly when its trace collector is absent: the last spans get a short while to go out, then
are dropped, instead of the exporter retrying for its whole timeout while the mesh waits (issue 17)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import grpc

from meshserve.core.channels import wait_until_serving
from meshserve.core.process import ChildProcess, free_port
from meshserve.core.telemetry import ABORT_WAIT_S, SHUTDOWN_TIMEOUT_S

EXPORT_TIMEOUT_S = 60  # unbounded, the exporter would retry an absent collector for ~31 s of backoff


async def test_sigterm_with_an_absent_collector_exits_0_without_waiting_out_the_exporter(tmp_path):
    port, collector = free_port(), free_port()  # nothing listens on `collector`
    env = {
        **os.environ,
        "MESHSERVE_CACHE_PORT": str(port),
        "MESHSERVE_CACHE_SHUTDOWN_SETTLE_S": "0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": str(EXPORT_TIMEOUT_S),
        "OTEL_BSP_SCHEDULE_DELAY": "600000",  # the spans of the health checks wait for the shutdown's flush
    }
    cache = ChildProcess("cache", [sys.executable, "-m", "services.cache"], env, tmp_path / "cache.log")
    await cache.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_until_serving(channel, timeout_s=60)  # traced calls: spans queued for export
        began = time.monotonic()
        cache.signal(signal.SIGTERM)
        code = await asyncio.wait_for(cache.wait(), EXPORT_TIMEOUT_S)
        took = time.monotonic() - began
    finally:
        await cache.stop(5)
    log = cache.log_path.read_text()
    assert code == 0, log[-2000:]
    # the bound fired (structural), and the exit came long before the exporter would have given up
    assert "trace collector too slow at shutdown; dropping unsent spans" in log
    assert took < SHUTDOWN_TIMEOUT_S + ABORT_WAIT_S + 10, f"{took:.1f}s"
    print(f"stopped {took:.2f}s after SIGTERM")
