"""`python -m benchmarks` (`make bench`): start one local mesh and an Envoy peer, load them scenario by
scenario, report.

Each scenario runs at each concurrency: a warm-up (not counted), then a measured window bracketed by Triton's
statistics for the scenario's model and by every process's CPU time, so the average batch size and the CPU per
request are those of the window's requests alone. Then an open loop at 0.7x the capacity just measured.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
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

from benchmarks.bulk import BulkResult, bulk_table, measure_bulk_score
from benchmarks.cpu import CpuMeter, descendants
from benchmarks.load import LoadResult, closed_loop, open_loop
from benchmarks.logcost import counts_delta, log_costs, log_table, read_log_counts
from benchmarks.peers import EnvoyPeer
from benchmarks.report import (
    Summary,
    check_targets,
    cpu_table,
    results_table,
    run_info,
    summarize,
    write_json,
)
from benchmarks.scenarios import (
    BENCH_MODELS,
    SCENARIOS,
    Targets,
    bench_routes,
    tls_options,
    triton_counts,
)
from meshserve.defaults import load_yaml
from meshserve.launcher.mesh import REPO_ROOT, LocalMesh, MeshSettings

app = typer.Typer(add_completion=False, help=__doc__)
console = Console(width=None if sys.stdout.isatty() else 140)  # whole table when piped


# Open loop: the mesh at 0.7x its closed-loop capacity (the best throughput it reached at any concurrency), and
# direct Triton at the same arrival rate for reference.
OPEN_LOOP, OPEN_LOOP_PATHS = "gateway-infer", ("direct", "gateway-infer")
OPEN_LOOP_LOAD = 0.7


@dataclass(frozen=True)
class BenchConfig:
    scenarios: list[str]
    concurrency: list[int]
    duration_s: float
    warmup_s: float
    timeout_s: float
    open_loop: bool = True
    gateways: int = 2  # gateway processes of the mesh gateway-infer-gateways runs against
    score_rows: int = 100_000  # rows `meshserve score` scores through the plain mesh at the end; 0: none

    def plan(self) -> list[tuple[str, int]]:
        """Concurrency by concurrency, baselines first, so each ratio compares runs close in time."""
        return [(s, c) for c in self.concurrency for s in self.scenarios]


@dataclass
class Bench:
    """One run's fixtures: where to send, how to read Triton's counts and every process's CPU."""

    targets: Targets
    stats: triton_aio.InferenceServerClient
    cpu: CpuMeter
    config: BenchConfig
    sequence: Iterator[int]
    log_urls: list[str] = dataclasses.field(default_factory=list)  # the gateways' metrics (prediction log)

    async def measure(self, name: str, concurrency: int, say, rate_rps: float | None = None) -> Summary:
        scenario = SCENARIOS[name]
        async with scenario.open(self.targets, self.config.timeout_s) as send:
            say("warm-up")
            await self._load(send, concurrency, self.config.warmup_s, rate_rps)
            before = await triton_counts(self.stats, scenario.model)
            logged_before = await read_log_counts(self.log_urls)  # read outside the CPU window
            say("measuring")
            self.cpu.start()
            load = await self._load(send, concurrency, self.config.duration_s, rate_rps)
            cpu_s = self.cpu.stop()
            after = await triton_counts(self.stats, scenario.model)
            logged = counts_delta(logged_before, await read_log_counts(self.log_urls))
        return summarize(name, concurrency, load.latencies_s, load.errors, load.elapsed_s, before, after,
                         load.cache_hits, load.first_error, baseline=scenario.baseline, cpu_s=cpu_s,
                         rate_rps=rate_rps, prediction_log=logged)  # fmt: skip

    async def _load(self, send, concurrency: int, duration_s: float, rate_rps: float | None) -> LoadResult:
        if rate_rps is None:
            return await closed_loop(send, concurrency, duration_s, self.sequence)
        return await open_loop(send, rate_rps, duration_s, self.sequence)


def _routes_file(run_dir: Path) -> Path:
    """The embedded routes plus the benchmark's own, written where the mesh can read them."""
    routes = bench_routes(load_yaml(None, "routes.yaml"))
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "routes.yaml"
    path.write_text(yaml.safe_dump(routes))
    return path


def _mesh(run_dir: Path, tls: bool = False, gateways: int = 1) -> LocalMesh:
    settings = MeshSettings(gateway_port=0, admin_port=0, gateway_http_port=0, run_dir=run_dir, tls=tls,
                            gateways=gateways,
                            routes_path=_routes_file(run_dir),
                            model_repositories=[REPO_ROOT / "model_repository", BENCH_MODELS])  # fmt: skip
    return LocalMesh(settings)


def _cpu_groups(mesh: LocalMesh, envoy: EnvoyPeer | None) -> dict:
    pids = {name: child.pid for name, child in mesh.children.items()}
    groups = {name: (lambda pid=pid: {pid}) for name, pid in pids.items() if not name.startswith("gateway")}
    # every gateway process counts as the gateway (`--gateways N`: gateway, gateway-2, ...)
    groups["gateway"] = lambda: {pid for name, pid in pids.items() if name.startswith("gateway")}
    groups |= {"client": lambda: {os.getpid()}, "stub": lambda: descendants(pids["triton"])}
    if envoy is not None:
        groups["envoy"] = lambda: {envoy.pid}
    return groups


def _log_urls(mesh: LocalMesh) -> list[str]:
    """Every gateway process's metrics endpoint, where each counts its prediction log (plain HTTP only: on a TLS
    mesh they serve HTTPS, and nothing there is measured against its twin)."""
    ep = mesh.endpoints
    assert ep is not None
    if mesh.settings.tls:
        return []
    others = [url for name, url in ep.service_metrics.items() if name.startswith("gateway")]
    return [ep.gateway_metrics, *others]


def _stats_client(mesh: LocalMesh) -> triton_aio.InferenceServerClient:
    """Triton's statistics, over mTLS (the inference service's certificate) on a TLS mesh."""
    assert mesh.endpoints is not None
    tls = mesh.client_tls("inference")
    return triton_aio.InferenceServerClient(mesh.endpoints.triton_grpc, **tls_options(tls))


async def run_all(config: BenchConfig, run_dir: Path) -> tuple[list[Summary], BulkResult | None]:
    mesh = _mesh(run_dir)
    # a second mesh, every hop on mTLS, only when a scenario needs it; measured alone like the first
    wants_tls = any(SCENARIOS[name].tls for name in config.scenarios)
    tls_mesh = _mesh(run_dir / "tls", tls=True) if wants_tls else None
    # and a third, of several gateway processes on one port, only when a scenario needs it
    wants_many = any(SCENARIOS[name].gateways for name in config.scenarios)
    many_mesh = _mesh(run_dir / "gateways", gateways=config.gateways) if wants_many else None
    envoy = EnvoyPeer("", run_dir)
    with console.status("starting the mesh (Triton, feature, cache, inference, gateway) and Envoy..."):
        ep = await mesh.start()
        envoy.upstream = ep.triton_grpc
        try:
            await envoy.start()
            tls_ep = await tls_mesh.start() if tls_mesh is not None else None
            many_ep = await many_mesh.start() if many_mesh is not None else None
        except BaseException:
            await envoy.stop()
            await mesh.stop()
            if tls_mesh is not None:
                await tls_mesh.stop()
            raise
    console.print(f"mesh up: gateway {ep.gateway}, Triton {ep.triton_grpc}, Envoy {envoy.address}; "
                  f"logs in {mesh.log_dir}")  # fmt: skip
    if tls_ep is not None:
        console.print(f"TLS mesh up: gateway {tls_ep.gateway}, Triton {tls_ep.triton_grpc}")
    if many_ep is not None:
        console.print(
            f"mesh of {config.gateways} gateways up: gateway {many_ep.gateway}, Triton {many_ep.triton_grpc}"
        )
    sequence = itertools.count()  # one sequence for the run: gateway-predict never repeats an input
    targets = Targets(
        ep.gateway, ep.triton_grpc, envoy.address, gateway_http=ep.gateway_http, triton_http=ep.triton_http
    )
    if tls_mesh is not None and tls_ep is not None:
        targets = dataclasses.replace(targets, gateway_tls=tls_ep.gateway, tls=tls_mesh.client_tls("client"))
    if many_ep is not None:
        targets = dataclasses.replace(targets, gateway_many=many_ep.gateway)
    stats = _stats_client(mesh)
    bench = Bench(targets, stats, CpuMeter(_cpu_groups(mesh, envoy)), config, sequence, _log_urls(mesh))
    tls_bench = None
    if tls_mesh is not None:
        tls_cpu = CpuMeter(_cpu_groups(tls_mesh, None))
        tls_bench = Bench(targets, _stats_client(tls_mesh), tls_cpu, config, sequence)
    many_bench = None
    if many_mesh is not None:
        many_cpu = CpuMeter(_cpu_groups(many_mesh, None))
        many_bench = Bench(
            targets, _stats_client(many_mesh), many_cpu, config, sequence, _log_urls(many_mesh)
        )
    benches = {"plain": bench, "tls": tls_bench, "gateways": many_bench}
    results: list[Summary] = []
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    try:
        with Progress(*columns, console=console) as progress:
            plan = config.plan()
            opened = [s for s in OPEN_LOOP_PATHS if s in config.scenarios]
            opened = opened if config.open_loop and OPEN_LOOP in config.scenarios else []
            task = progress.add_task("scenarios", total=len(plan) + len(opened))
            for name, concurrency in plan:
                on = benches[_mesh_of(SCENARIOS[name])]
                assert on is not None
                results.append(await on.measure(name, concurrency, _say(progress, task, name, concurrency)))
                for each in (mesh, tls_mesh, many_mesh):
                    if each is not None:
                        _check(each)
                progress.advance(task)
            if opened:
                rate = OPEN_LOOP_LOAD * max(r.throughput_rps for r in results if r.scenario == OPEN_LOOP)
            for name in opened:
                say = _say(progress, task, name, f"open loop {rate:,.0f}/s")
                results.append(await bench.measure(name, 0, say, rate_rps=rate))
                _check(mesh)
                progress.advance(task)
        bulk = None
        if config.score_rows:
            with console.status(f"meshserve score: {config.score_rows:,} rows through the mesh..."):
                bulk = await measure_bulk_score(ep.gateway, bench.cpu, config.score_rows, run_dir)
            _check(mesh)
    finally:
        await stats.close()
        for other in (tls_bench, many_bench):
            if other is not None:
                await other.stats.close()
        with console.status("stopping the mesh and Envoy..."):
            await envoy.stop()
            await mesh.stop()
            for other_mesh in (tls_mesh, many_mesh):
                if other_mesh is not None:
                    await other_mesh.stop()
    return results, bulk


def _mesh_of(scenario) -> str:
    return "tls" if scenario.tls else "gateways" if scenario.gateways else "plain"


def _say(progress: Progress, task, name: str, at: object):
    return lambda phase: progress.update(task, description=f"{name} @ {at}: {phase}")


def _check(mesh: LocalMesh) -> None:
    if crashed := mesh.crashed():
        raise RuntimeError(f"mesh processes exited during the run: {', '.join(crashed)}")


@app.command()
def main(
    scenario: Annotated[
        list[str] | None, typer.Option("--scenario", "-s", help=f"repeatable; one of {', '.join(SCENARIOS)}")
    ] = None,
    concurrency: Annotated[
        list[int] | None,
        typer.Option("--concurrency", "-c", help="repeatable; requests in flight (default 1, 16, 64)"),
    ] = None,
    duration: Annotated[float, typer.Option(min=0.1, help="measured seconds per scenario")] = 4.0,
    warmup: Annotated[float, typer.Option(min=0.0, help="unmeasured seconds before each window")] = 1.0,
    timeout: Annotated[float, typer.Option(min=0.01, help="deadline per request, seconds")] = 5.0,
    out: Annotated[
        Path | None, typer.Option(help="JSON file (default bench-results/bench-<time>.json)")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="keep the mesh's logs here (default: a temp dir)")
    ] = None,
    open_loop: Annotated[
        bool,
        typer.Option(help="also run gateway-infer open-loop at 0.7x its capacity, and direct at that rate"),
    ] = True,
    gateways: Annotated[
        int, typer.Option(min=2, help="gateway processes for gateway-infer-gateways (one port, SO_REUSEPORT)")
    ] = 2,
    score_rows: Annotated[
        int, typer.Option(min=0, help="rows `meshserve score` scores through the mesh at the end (0: skip)")
    ] = 100_000,
) -> None:
    """Throughput, p50/p99 latency, errors and Triton's average batch size: direct Triton vs the mesh."""
    names = scenario or list(SCENARIOS)
    if unknown := sorted(set(names) - set(SCENARIOS)):
        raise typer.BadParameter(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    config = BenchConfig(
        names, concurrency or [1, 16, 64], duration, warmup, timeout, open_loop, gateways, score_rows
    )
    for name in names:
        console.print(f"[bold]{name}[/]: {SCENARIOS[name].description}")

    with tempfile.TemporaryDirectory(prefix="meshserve-bench-") as tmp:
        results, bulk = uvloop.run(run_all(config, run_dir or Path(tmp)))

    console.print(results_table(results))
    console.print(cpu_table(results))
    costs = log_costs(results)
    if costs:
        console.print(log_table(costs))
    if bulk is not None:
        console.print(bulk_table(bulk))
    for r in results:
        if r.errors:
            console.print(
                f"[red]{r.scenario} @ {r.concurrency}: {r.errors} errors, first: {r.first_error}[/]"
            )
    for t in check_targets(results):
        mark = {True: "[green]met[/]", False: "[red]missed[/]", None: "[yellow]not measured[/]"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        bound = ">=" if t["kind"] == "min" else "<="
        console.print(f"target: {t['target']} {bound} {t['threshold']:g}: {value} -> {mark}")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out or Path("bench-results") / f"bench-{stamp}.json"
    settings = {"scenarios": names, "concurrency": config.concurrency, "duration_s": duration,
                "warmup_s": warmup, "timeout_s": timeout, "gateways": gateways, "open_loop_load": OPEN_LOOP_LOAD if open_loop else None, "score_rows": score_rows,
                # the REST scenarios' gateway parser (the mesh's children inherit this environment)
                "gateway_http_parser": os.environ.get("MESHSERVE_GATEWAY_HTTP_PARSER", "httptools")}  # fmt: skip
    write_json(path, run_info(REPO_ROOT), settings, results, bulk.to_json() if bulk else None,
               [dataclasses.asdict(c) for c in costs])  # fmt: skip
    console.print(f"wrote {path}")


if __name__ == "__main__":
    app()
