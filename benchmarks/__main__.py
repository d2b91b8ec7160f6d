"""`python -m benchmarks` (`make bench`): start one local mesh, load it scenario by scenario, report.

Each scenario runs at each concurrency: a warm-up (not counted), then a measured window bracketed by Triton's
statistics for fraud v1, so the average batch size is that of the window's requests alone.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import tritonclient.grpc.aio as triton_aio
import typer
import uvloop
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from benchmarks.report import Summary, check_targets, results_table, run_info, summarize, write_json
from benchmarks.scenarios import (
    NOCACHE_ROUTE,
    NOCACHE_ROUTE_SPEC,
    SCENARIOS,
    SPLIT_ROUTE,
    SPLIT_ROUTE_SPEC,
    closed_loop,
    triton_counts,
)
from meshserve.defaults import load_yaml
from meshserve.mesh import REPO_ROOT, Endpoints, LocalMesh, MeshSettings

app = typer.Typer(add_completion=False, help=__doc__)
console = Console(width=None if sys.stdout.isatty() else 140)  # whole table when piped


@dataclass(frozen=True)
class BenchConfig:
    scenarios: list[str]
    concurrency: list[int]
    duration_s: float
    warmup_s: float
    timeout_s: float

    def plan(self) -> list[tuple[str, int]]:
        """Concurrency by concurrency, `direct` first, so each ratio compares runs close in time."""
        return [(s, c) for c in self.concurrency for s in self.scenarios]


async def measure(
    ep: Endpoints, name: str, concurrency: int, config: BenchConfig, sequence: Iterator[int], say
) -> Summary:
    scenario = SCENARIOS[name]
    stats = triton_aio.InferenceServerClient(ep.triton_grpc)
    try:
        async with scenario.open(ep, config.timeout_s) as send:
            say("warm-up")
            await closed_loop(send, concurrency, config.warmup_s, sequence)
            before = await triton_counts(stats)
            say("measuring")
            load = await closed_loop(send, concurrency, config.duration_s, sequence)
            after = await triton_counts(stats)
    finally:
        await stats.close()
    return summarize(name, concurrency, load.latencies_s, load.errors, load.elapsed_s, before, after,
                     load.cache_hits, load.first_error)  # fmt: skip


def _routes_file(run_dir: Path) -> Path:
    """The embedded routes plus the 90/10 split route, written where the mesh can read them."""
    routes = load_yaml(None, "routes.yaml")
    routes["routes"][SPLIT_ROUTE] = SPLIT_ROUTE_SPEC
    routes["routes"][NOCACHE_ROUTE] = NOCACHE_ROUTE_SPEC
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "routes.yaml"
    path.write_text(yaml.safe_dump(routes))
    return path


async def run_all(config: BenchConfig, run_dir: Path) -> list[Summary]:
    routes_file = _routes_file(run_dir)
    mesh = LocalMesh(MeshSettings(gateway_port=0, admin_port=0, run_dir=run_dir, routes_path=routes_file))
    with console.status("starting the mesh (Triton, feature, cache, inference, gateway)..."):
        ep = await mesh.start()
    console.print(f"mesh up: gateway {ep.gateway}, Triton {ep.triton_grpc}; logs in {run_dir / 'logs'}")
    sequence = itertools.count()  # one for the whole run: gateway-predict never repeats an input
    results = []
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    try:
        with Progress(*columns, console=console) as progress:
            plan = config.plan()
            task = progress.add_task("scenarios", total=len(plan))
            for name, concurrency in plan:

                def say(phase: str, name: str = name, concurrency: int = concurrency) -> None:
                    progress.update(task, description=f"{name} @ {concurrency}: {phase}")

                results.append(await measure(ep, name, concurrency, config, sequence, say))
                if crashed := mesh.crashed():
                    raise RuntimeError(f"mesh processes exited during the run: {', '.join(crashed)}")
                progress.advance(task)
    finally:
        with console.status("stopping the mesh..."):
            await mesh.stop()
    return results


@app.command()
def main(
    scenario: Annotated[
        list[str] | None, typer.Option("--scenario", "-s", help=f"repeatable; one of {', '.join(SCENARIOS)}")
    ] = None,
    concurrency: Annotated[
        list[int] | None,
        typer.Option("--concurrency", "-c", help="repeatable; requests in flight (default 1, 16)"),
    ] = None,
    duration: Annotated[float, typer.Option(min=0.1, help="measured seconds per scenario")] = 5.0,
    warmup: Annotated[float, typer.Option(min=0.0, help="unmeasured seconds before each window")] = 1.0,
    timeout: Annotated[float, typer.Option(min=0.01, help="deadline per request, seconds")] = 5.0,
    out: Annotated[
        Path | None, typer.Option(help="JSON file (default bench-results/bench-<time>.json)")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="keep the mesh's logs here (default: a temp dir)")
    ] = None,
) -> None:
    """Throughput, p50/p99 latency, errors and Triton's average batch size: direct Triton vs the mesh."""
    names = scenario or list(SCENARIOS)
    if unknown := sorted(set(names) - set(SCENARIOS)):
        raise typer.BadParameter(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    config = BenchConfig(names, concurrency or [1, 16], duration, warmup, timeout)
    for name in names:
        console.print(f"[bold]{name}[/]: {SCENARIOS[name].description}")

    with tempfile.TemporaryDirectory(prefix="meshserve-bench-") as tmp:
        results = uvloop.run(run_all(config, run_dir or Path(tmp)))

    console.print(results_table(results))
    for r in results:
        if r.errors:
            console.print(
                f"[red]{r.scenario} @ {r.concurrency}: {r.errors} errors, first: {r.first_error}[/]"
            )
    for t in check_targets(results):
        mark = {True: "[green]met[/]", False: "[red]missed[/]", None: "[yellow]not measured[/]"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        console.print(f"target: {t['target']} (c={t['concurrency']}): {value} -> {mark}")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out or Path("bench-results") / f"bench-{stamp}.json"
    settings = {"scenarios": names, "concurrency": config.concurrency, "duration_s": duration,
                "warmup_s": warmup, "timeout_s": timeout}  # fmt: skip
    write_json(path, run_info(REPO_ROOT), settings, results)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    app()
