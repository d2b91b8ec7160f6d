"""`meshserve status`: the running mesh from its `<run_dir>/endpoints.json`: each process (pid alive, address,
grpc.health.v1 status), meshserve's and Triton's versions (from the gateway's ServerMetadata) and the routes with
their live weights from the admin API."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console, Group
from rich.text import Text
from tritonclient.grpc import service_pb2, service_pb2_grpc

from meshserve.admin.v1 import admin_pb2, admin_pb2_grpc
from meshserve.cli.output import FittedTable, indented
from meshserve.launcher.endpoints_file import (
    EndpointsFileError,
    MeshEndpoints,
    ProcessEndpoint,
    endpoints_path,
    pid_alive,
    read_endpoints,
    run_dir_from,
)

HEALTH_TIMEOUT_S = 2.0
console = Console()


@dataclass(frozen=True)
class ProcessStatus:
    endpoint: ProcessEndpoint
    alive: bool
    health: (
        str  # SERVING, NOT_SERVING, ... or the gRPC code of a failed check (UNAVAILABLE, DEADLINE_EXCEEDED)
    )

    def to_dict(self) -> dict[str, object]:
        e = self.endpoint
        return {"name": e.name, "pid": e.pid, "alive": self.alive, "address": e.address, "metrics": e.metrics,
                "addresses": e.addresses, "health": self.health}  # fmt: skip


def _server_name(process: str) -> str:
    """The certificate a process presents: gateway-2... share the gateway's."""
    return "gateway" if process.startswith("gateway") else process


async def _health(endpoint: ProcessEndpoint, tls: bool) -> str:
    from meshserve.launcher.mesh import cli_channel

    async with cli_channel(endpoint.address, server_name=_server_name(endpoint.name), tls=tls) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def _routes(mesh: MeshEndpoints) -> tuple[list[dict[str, object]], str | None]:
    """Each route with its live weights, or why the admin API did not say."""
    from meshserve.cli.admin import credentials
    from meshserve.launcher.mesh import cli_channel

    async with cli_channel(mesh.admin, tls=mesh.tls) as channel:
        try:
            reply = await admin_pb2_grpc.AdminServiceStub(channel).ListRoutes(
                admin_pb2.ListRoutesRequest(), timeout=HEALTH_TIMEOUT_S, metadata=credentials()
            )
        except grpc.aio.AioRpcError as exc:
            return [], f"{exc.code().name}: {exc.details()}"
    routes = [
        {
            "route": r.route,
            "variants": [
                {
                    "name": v.name,
                    "model": v.model,
                    "version": v.version or "latest",
                    "weight": v.weight,
                    "ejected": v.ejected,
                }  # fmt: skip
                for v in r.variants
            ],
        }
        for r in reply.routes
    ]
    return routes, None


async def _versions(mesh: MeshEndpoints) -> dict[str, str]:
    """meshserve's version and Triton's, as the gateway's ServerMetadata gives them (Triton's name and version in
    the answer, meshserve's in its `x-meshserve-server` trailing metadata), or why it did not say."""
    from meshserve.cli.admin import credentials
    from meshserve.launcher.mesh import cli_channel

    async with cli_channel(mesh.address("gateway"), tls=mesh.tls) as channel:
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerMetadata(
            service_pb2.ServerMetadataRequest(), timeout=HEALTH_TIMEOUT_S, metadata=credentials()
        )
        try:
            reply = await call
            trailing = dict(await call.trailing_metadata() or ())
        except grpc.aio.AioRpcError as exc:
            return {"error": f"{exc.code().name}: {exc.details()}"}
    meshserve = str(trailing.get("x-meshserve-server", ""))
    return {"meshserve": meshserve.removeprefix("meshserve/"), "triton": f"{reply.name} {reply.version}"}


async def collect(mesh: MeshEndpoints) -> dict[str, object]:
    """The whole status, as `-o json` prints it."""

    async def one(endpoint: ProcessEndpoint) -> ProcessStatus:
        alive = pid_alive(endpoint.pid)
        return ProcessStatus(endpoint, alive, await _health(endpoint, mesh.tls))

    processes, (routes, routes_error), versions = await asyncio.gather(
        asyncio.gather(*(one(p) for p in mesh.processes)), _routes(mesh), _versions(mesh)
    )
    return {
        "running": True,
        "versions": versions,
        "up_pid": mesh.up_pid,
        "tls": mesh.tls,
        "endpoints": {
            k: mesh.address(k)
            for k in (
                "gateway",
                "gateway_http",
                "admin",
                "feature",
                "cache",
                "inference",
                "monitor",
                "triton_grpc",
            )
        },  # fmt: skip
        "processes": [p.to_dict() for p in processes],
        "routes": routes,
        "routes_error": routes_error,
    }


def _not_running(run_dir: Path) -> str | None:
    """Why there is no running mesh to show, or None when there is one."""
    path = endpoints_path(run_dir)
    try:
        mesh = read_endpoints(run_dir)
    except EndpointsFileError as exc:
        return f"no mesh running: {exc}"
    if mesh is None:
        return f"no mesh running (no {path}; start one with `meshserve up`)"
    if not pid_alive(mesh.up_pid):
        return f"no mesh running: `meshserve up` (pid {mesh.up_pid}) that wrote {path} has exited"
    return None


def processes_table(status: dict[str, object]) -> FittedTable:
    """The processes; in a terminal too narrow for the metrics URLs, the table without them and each URL whole
    on its own line below."""
    title = f"meshserve (up pid {status['up_pid']}, TLS {'on' if status['tls'] else 'off'})"
    columns = ("process", "pid", "alive", "address", "health", "metrics")
    rows = []
    for p in status["processes"]:  # type: ignore[union-attr]
        health = p["health"]
        style = "green" if health == "SERVING" else "red"
        alive = Text("yes", "green") if p["alive"] else Text("no", "red")
        rows.append([Text(p["name"]), Text(str(p["pid"])), alive, Text(p["address"]), Text(health, style),
                     Text(p["metrics"] or "")])  # fmt: skip

    def narrow() -> Group:
        urls = [Text.assemble(row[0], ": ", row[-1]) for row in rows if row[-1]]
        rest = FittedTable(title, columns[:-1], [row[:-1] for row in rows])
        return Group(rest, *([Text("metrics:"), *(indented(url) for url in urls)] if urls else []))

    return FittedTable(title, columns, rows, narrow)


def _show(status: dict[str, object]) -> None:
    console.print(processes_table(status))
    endpoints = status["endpoints"]
    console.print(
        f"gateway {endpoints['gateway']}  REST {endpoints['gateway_http']}  admin {endpoints['admin']}"
    )  # type: ignore[index]
    versions = status["versions"]
    if "error" in versions:  # type: ignore[operator]
        console.print(f"versions: [red]{versions['error']}[/]")  # type: ignore[index]
    else:
        console.print(f"meshserve {versions['meshserve']} in front of {versions['triton']}")  # type: ignore[index]
    if status["routes_error"]:
        console.print(f"routes: [red]{status['routes_error']}[/]")
        return
    for route in status["routes"]:  # type: ignore[union-attr]
        weights = ", ".join(
            f"{v['name']} ({v['model']} v{v['version']}) {v['weight']:g}%"
            + (" ejected" if v["ejected"] else "")
            for v in route["variants"]
        )
        console.print(f"route {route['route']}: {weights}")
    if not status["routes"]:
        console.print("routes: none declared (every model is served under its own name)")


def status(
    output: Annotated[
        str, typer.Option("--output", "-o", help="table, or json for machine-readable output")
    ] = "table",
) -> None:
    """The running mesh of MESHSERVE_RUN_DIR (default .meshserve): each process (pid, address, health) and the
    routes with their live weights."""
    if output not in ("table", "json"):
        typer.echo(f"meshserve status: --output is table or json, not {output!r}", err=True)
        raise typer.Exit(2)
    directory = run_dir_from()
    reason = _not_running(directory)
    if reason is not None:
        if output == "json":
            typer.echo(json.dumps({"running": False, "reason": reason}))
        else:
            typer.echo(f"meshserve status: {reason}", err=True)
        raise typer.Exit(1)
    mesh = read_endpoints(directory)
    assert mesh is not None
    result = asyncio.run(collect(mesh))
    if output == "json":
        typer.echo(json.dumps(result, indent=2))
    else:
        _show(result)


__all__ = ["collect", "processes_table", "status"]
