"""`meshserve up`: the whole mesh on this machine until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from meshserve.mesh import Endpoints, LocalMesh, MeshSettings

console = Console(stderr=True)
PROCESSES = ["triton", "feature", "cache", "inference", "gateway"]


def _endpoints_table(ep: Endpoints) -> Table:
    table = Table(title="meshserve is up", show_header=True, header_style="bold")
    table.add_column("process")
    table.add_column("endpoint")
    for name, value in [
        ("gateway (Predict + Open Inference Protocol)", ep.gateway),
        ("gateway admin", ep.admin),
        ("gateway metrics", ep.gateway_metrics),
        ("feature", ep.feature),
        ("cache", ep.cache),
        ("inference", ep.inference),
        ("triton gRPC", ep.triton_grpc),
        ("triton metrics", ep.triton_metrics),
    ]:
        table.add_row(name, value)
    return table


def _meshserve() -> str:
    """How to call this CLI from the user's shell: bare when it is on PATH, else its path (e.g. .venv/bin)."""
    here = Path(sys.argv[0])
    if shutil.which("meshserve") == str(here.resolve()) or not here.exists():
        return "meshserve"
    return os.path.relpath(here) if here.is_absolute() else str(here)


async def run_up(settings: MeshSettings) -> int:
    mesh = LocalMesh(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: its terminal went away
        loop.add_signal_handler(sig, stop.set)

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console, transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("starting triton, feature, cache, inference, gateway", total=len(PROCESSES))

        def ready(name: str) -> None:
            progress.advance(task)
            progress.console.print(f"[green]✓[/] {name} healthy")

        starting = asyncio.create_task(mesh.start(on_ready=ready))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # asked to stop during start-up: a clean stop all the same
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await mesh.stop()
            console.print("[green]stopped[/]")
            return 0
        stopped.cancel()
        try:
            endpoints = starting.result()
        except Exception as exc:
            console.print(f"[red]start-up failed:[/] {exc}")
            console.print(f"logs: {settings.run_dir / 'logs'}")
            return 1

    console.print(_endpoints_table(endpoints))
    console.print(f"logs: {settings.run_dir / 'logs'}")
    target = "" if endpoints.gateway == "127.0.0.1:50051" else f" --target {endpoints.gateway}"
    console.print(
        f"try: [bold]{_meshserve()} predict fraud acct-00042 amount=250 merchant_category=3{target}[/]"
    )
    console.print("Ctrl-C stops every process.")
    code = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            if crashed := mesh.crashed():
                console.print(f"[red]{', '.join(crashed)} exited unexpectedly; stopping the mesh[/]")
                for name in crashed:
                    console.print(mesh.children[name].log_tail())
                code = 1
                break
    console.print("stopping…")
    await mesh.stop()
    console.print("[green]stopped[/]")
    return code
