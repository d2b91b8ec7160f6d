"""`python -m benchmarks.soak` (`make soak`, not in CI): a long steady load on one local mesh, reporting the memory
of every process over time. Memory that grows with the number of requests served is a leak; a flat line after
warm-up is the goal.

The load is an open loop of ModelInfer and Predict (every Predict a cache miss, so cache entries, scope
generations and feature lookups keep coming), each at `--load` of what it reached when both ran closed-loop
together at the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
import uvloop
from rich.console import Console
from rich.table import Table

from benchmarks.cpu import descendants
from benchmarks.load import closed_loop, open_loop
from benchmarks.report import run_info
from benchmarks.scenarios import SCENARIOS, Targets
from meshserve.launcher.mesh import REPO_ROOT, LocalMesh, MeshSettings

app = typer.Typer(add_completion=False, help=__doc__)
console = Console(width=None if sys.stdout.isatty() else 140)
PATHS = ("gateway-infer", "gateway-predict")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def soak(minutes: float, load: float, sample_s: float, warmup_s: float, run_dir: Path) -> dict:
    mesh = LocalMesh(MeshSettings(gateway_port=0, admin_port=0, gateway_http_port=0, run_dir=run_dir))
    ep = await mesh.start()
    try:
        async with contextlib.AsyncExitStack() as clients:
            targets = Targets(ep.gateway, ep.triton_grpc, "")
            senders = {n: await clients.enter_async_context(SCENARIOS[n].open(targets, 5.0)) for n in PATHS}
            pids = {name: child.pid for name, child in mesh.children.items()}
            return await _steady_load(senders, pids, minutes, load, sample_s, warmup_s)
    finally:
        await mesh.stop()


def _memory(pids: dict[str, int]) -> dict[str, float]:
    """RSS of each process now; Triton's includes its python backend stubs."""
    row = {name: rss_mb(pid) for name, pid in pids.items() if name != "triton"}
    row["triton"] = rss_mb(pids["triton"]) + sum(map(rss_mb, descendants(pids["triton"])))
    return row


async def _steady_load(senders, pids, minutes: float, load: float, sample_s: float, warmup_s: float) -> dict:
    sequence = itertools.count()  # one for the run: Predict never repeats an input, so every one is a miss
    # capacity of the mix: both paths at once, as they will run
    measured = await asyncio.gather(*(closed_loop(send, 16, 3.0, sequence) for send in senders.values()))
    rates = {name: load * len(m.latencies_s) / m.elapsed_s for name, m in zip(senders, measured, strict=True)}
    console.print("open loop: " + ", ".join(f"{n} {r:,.0f}/s" for n, r in rates.items()))
    samples: list[dict[str, float]] = []

    async def sample() -> None:
        start = time.monotonic()
        while True:
            samples.append({**_memory(pids), "t": time.monotonic() - start})
            await asyncio.sleep(sample_s)

    sampler = asyncio.create_task(sample())
    try:
        results = await asyncio.gather(
            *(open_loop(senders[n], rates[n], minutes * 60, sequence) for n in PATHS)
        )
    finally:
        sampler.cancel()
    samples.append({**_memory(pids), "t": samples[-1]["t"] + sample_s if samples else 0.0})
    first = next((s for s in samples if s["t"] >= warmup_s), samples[0])
    last = samples[-1]
    growth = {n: 100 * (last[n] - first[n]) / first[n] for n in pids if first.get(n)}
    errors = {n: (r.errors, r.first_error) for n, r in zip(PATHS, results, strict=True)}
    return {"rates": rates, "errors": errors, "samples": samples, "growth_percent": growth,
            "first": first, "last": last}  # fmt: skip


@app.command()
def main(
    minutes: Annotated[float, typer.Option(min=0.1, help="how long the load runs")] = 3.0,
    load: Annotated[float, typer.Option(min=0.05, max=1.0, help="share of measured capacity")] = 0.7,
    sample: Annotated[float, typer.Option(min=0.5, help="seconds between memory samples")] = 10.0,
    warmup: Annotated[float, typer.Option(min=0.0, help="seconds before growth is counted")] = 30.0,
    out: Annotated[
        Path | None, typer.Option(help="JSON file (default bench-results/soak-<time>.json)")
    ] = None,
) -> None:
    """Memory per process under a steady load."""
    with tempfile.TemporaryDirectory(prefix="meshserve-soak-") as tmp:
        report = uvloop.run(soak(minutes, load, sample, warmup, Path(tmp)))
    table = Table(title=f"RSS per process (MB), after {warmup:.0f} s and at the end of {minutes:g} min")
    for column in ("process", "after warm-up", "end", "growth"):
        table.add_column(column, justify="left" if column == "process" else "right")
    for name, growth in report["growth_percent"].items():
        table.add_row(name, f"{report['first'][name]:.1f}", f"{report['last'][name]:.1f}", f"{growth:+.1f} %")
    console.print(table)
    console.print(f"errors: {report['errors']}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out or Path("bench-results") / f"soak-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**run_info(REPO_ROOT), "minutes": minutes, "load": load, **report}, indent=2))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    app()
