"""`meshserve up`: the whole mesh on this machine until Ctrl-C or SIGTERM.

A process that exits is restarted (see meshserve.launcher.mesh); one that keeps crashing stops the mesh with exit code 1.
What would stop it from starting is checked first (meshserve.launcher.startup_checks): one line per problem, exit code 2.
A process that fails while the mesh starts is one line saying what broke (a port taken, a model Triton would not
load) or its log's last lines, and where its full log is: exit code 1. Never a traceback.
Whatever a process wrote is printed as plain text, never read as rich markup: a log line like `[/meshserve...]`
must not be able to crash `up` and orphan the mesh.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from meshserve.cli.output import FittedTable
from meshserve.core.supervision import ChildExited, SupervisionEvent
from meshserve.launcher.endpoints_file import (
    MeshEndpoints,
    ProcessEndpoint,
    remove_endpoints,
    write_endpoints,
)
from meshserve.launcher.mesh import Endpoints, LocalMesh, MeshSettings, StartupFailure
from meshserve.launcher.repository import RepositoryError, ServedRepository
from meshserve.launcher.startup_checks import RunDirLock, StartupError

console = Console(stderr=True)
PROCESSES = ["triton", "feature", "cache", "inference", "monitor", "gateway"]


def _endpoints_table(ep: Endpoints) -> FittedTable:
    """Every endpoint; in a terminal too narrow for the table, one `process: endpoint` line each."""
    rows = []
    for name, value in [
        ("gateway gRPC (Predict + Open Inference Protocol)", ep.gateway),
        ("gateway REST (Triton's HTTP API)", ep.gateway_http),
        ("gateway admin", ep.admin),
        ("gateway metrics", ep.gateway_metrics),
        *(
            (f"{name} metrics", url)
            for name, url in ep.service_metrics.items()
            if name.startswith("gateway-")
        ),
        *(
            row
            for service, address in (
                ("feature", ep.feature),
                ("cache", ep.cache),
                ("inference", ep.inference),
                ("monitor", ep.monitor),
            )
            for row in ((service, address), (f"{service} metrics", ep.service_metrics[service]))
        ),
        ("triton gRPC", ep.triton_grpc),
        ("triton metrics", ep.triton_metrics),
    ]:
        rows.append([Text(name), Text(value)])
    return FittedTable(
        "meshserve is up", ("process", "endpoint"), rows, show_header=True, header_style="bold"
    )


def _meshserve() -> str:
    """How to call this CLI from the user's shell: bare when it is on PATH, else its path (e.g. .venv/bin)."""
    here = Path(sys.argv[0])
    if shutil.which("meshserve") == str(here.resolve()) or not here.exists():
        return "meshserve"
    return os.path.relpath(here) if here.is_absolute() else str(here)


def _python() -> str:
    """How to call this interpreter (which has tritonclient) from the user's shell."""
    found = shutil.which("python")
    if found and Path(found).absolute() == Path(sys.executable).absolute():
        return "python"
    return os.path.relpath(sys.executable)


def _report_models(served: ServedRepository) -> None:
    names = [f"{m.name} (ONNX, run by onnxruntime)" if m.onnx_runner else m.name for m in served.models]
    console.print(Text(f"models served: {', '.join(names) or 'none'}"), soft_wrap=True)
    for model in served.models:
        for note in model.notes:
            console.print(Text(f"  {model.name}: {note}", style="yellow"), soft_wrap=True)
    for skipped in served.skipped:
        line = f"skipped {skipped.name} ({skipped.source}): {skipped.reason}"
        console.print(Text(line, style="yellow"), soft_wrap=True)


def start_hint(mesh: LocalMesh, endpoints: Endpoints) -> str | None:
    """A first command to try, naming something this mesh serves: the sample Predict on the sample routes,
    else the metadata (inputs, outputs) of one served model, through the gateway."""
    tls = mesh.settings.tls
    if mesh.sample_routes:
        target = "" if endpoints.gateway == "127.0.0.1:50051" else f" --target {endpoints.gateway}"
        flags = f"{target} --tls" if tls else target
        command = f"{_meshserve()} predict fraud acct-00042 amount=250 merchant_category=3{flags}"
        if mesh.settings.auth and not tls:  # callers need a credential: an API key, shown once
            return f"export MESHSERVE_API_KEY=$({_meshserve()} keys create me --role scorer); {command}"
        return command
    if mesh.served is None or not mesh.served.models:
        return None
    model = mesh.served.models[0].name
    client = f"g.InferenceServerClient({endpoints.gateway!r}{_tls_arguments(mesh) if tls else ''})"
    return f'{_python()} -c "import tritonclient.grpc as g; print({client}.get_model_metadata({model!r}, as_json=True))"'


def _tls_arguments(mesh: LocalMesh) -> str:
    """tritonclient's own TLS options, with the CA and the `client` certificate `up --tls` issued."""
    certs = os.path.relpath(mesh.settings.certs_dir)
    files = {
        "root_certificates": "ca.pem",
        "private_key": "client-key.pem",
        "certificate_chain": "client.pem",
    }
    return ", ssl=True" + "".join(f", {k}={os.path.join(certs, v)!r}" for k, v in files.items())


def mesh_endpoints(mesh: LocalMesh, ep: Endpoints) -> MeshEndpoints:
    """What `<run_dir>/endpoints.json` says of this running mesh (meshserve.launcher.endpoints_file)."""
    health = mesh.targets()
    metrics = {"triton": ep.triton_metrics, "gateway": ep.gateway_metrics, **ep.service_metrics}
    extra = {"triton": {"grpc": ep.triton_grpc}}
    gateway = {"grpc": ep.gateway, "http": ep.gateway_http, "admin": ep.admin}
    processes = [
        ProcessEndpoint(
            name=name,
            pid=child.pid,
            address=health[name],
            metrics=metrics.get(name),
            addresses=gateway if name.startswith("gateway") else extra.get(name, {"grpc": health[name]}),
        )
        for name, child in mesh.children.items()
    ]
    return MeshEndpoints(
        up_pid=os.getpid(), tls=mesh.settings.tls, gateway=ep.gateway, gateway_http=ep.gateway_http,
        admin=ep.admin, feature=ep.feature, cache=ep.cache, inference=ep.inference,
        triton_grpc=ep.triton_grpc, processes=processes, monitor=ep.monitor,
        log_dir=str(mesh.log_dir) if mesh.log_dir is not None else None,
    )  # fmt: skip


def _print_tail(name: str, tail: str) -> None:
    console.print(Text(f"last lines of {name}'s log:", style="dim"))
    console.print(Text(tail), markup=False, highlight=False, emoji=False, soft_wrap=True)


def _report(event: SupervisionEvent, mesh: LocalMesh) -> None:
    if not isinstance(event, ChildExited):
        console.print(Text(f"✓ {event.summary()}", style="green"))
        return
    style = "yellow" if event.decision.restart else "red"
    console.print(Text(event.summary(), style=style), soft_wrap=True)
    if event.decision.crashed and event.log_tail:
        _print_tail(event.name, event.log_tail)
        child = mesh.children.get(event.name)
        if child is not None:
            console.print(Text(f"full log: {_shown(child.log_path)}", style="dim"), soft_wrap=True)


def _shown(path: Path) -> str:
    """A path as the user would type it: relative when it is below the working directory."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console, transient=True,
    )  # fmt: skip


def stopped_line(name: str, code: int | None, seconds: float) -> Text:
    """How one process ended, as `up` prints it while the mesh stops."""
    if code == 0:
        return Text.assemble(("✓", "green"), f" {name} stopped ({seconds:.1f}s)")
    if code is not None and code == -signal.SIGKILL:
        return Text(f"{name} killed: not stopped within its grace period ({seconds:.1f}s)", style="yellow")
    status = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return Text(f"{name} stopped ({status}, {seconds:.1f}s)", style="yellow")


async def _stop(mesh: LocalMesh) -> None:
    """Stop the mesh, saying which processes are still stopping and each one as it exits (those that had
    exited already, a crash that was reported, are not named again)."""
    pending = [name for name, child in mesh.children.items() if child.pid is not None and not child.exited]
    began = time.monotonic()
    with _progress() as progress:
        task = progress.add_task(f"stopping {', '.join(pending)}", total=len(pending))

        def stopped(name: str, code: int | None) -> None:
            if name not in pending:
                return
            pending.remove(name)
            progress.console.print(stopped_line(name, code, time.monotonic() - began))
            progress.update(task, advance=1, description=f"stopping {', '.join(pending)}")

        await mesh.stop(on_stopped=stopped)
    console.print(f"[green]stopped[/] in {time.monotonic() - began:.1f}s")


def _problems(lines: list[str], log_path: Path | None = None) -> None:
    """Each problem as one red line (never wrapped: one line to read, or to grep); the log's path on the last."""
    for i, line in enumerate(lines):
        where = f" (full log: {_shown(log_path)})" if log_path is not None and i == len(lines) - 1 else ""
        console.print(Text(f"meshserve up: {line}{where}", style="red"), soft_wrap=True)


async def run_up(settings: MeshSettings) -> int:
    lock = RunDirLock(settings.run_dir)
    try:
        lock.acquire()  # before anything is written there: another `up` may be serving from it
    except StartupError as exc:
        _problems(exc.problems)
        return 2
    mesh = LocalMesh(settings)
    try:
        return await _serve(mesh, settings)
    except BaseException:
        await mesh.stop()  # whatever went wrong in here, never leave a process behind
        raise
    finally:  # the mesh is stopped: no CLI command may find it any more (only ever our own file)
        remove_endpoints(settings.run_dir, up_pid=os.getpid())
        lock.release()


async def _serve(mesh: LocalMesh, settings: MeshSettings) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: its terminal went away
        loop.add_signal_handler(sig, stop.set)
    try:
        mesh.plan()  # prepares and checks everything: what it serves and skips is said before Triton starts
    except StartupError as exc:
        _problems(exc.problems)
        return 2
    except RepositoryError as exc:
        _problems([str(exc)])
        return 2
    except Exception as exc:  # noqa: BLE001 - whatever it is, one line rather than a traceback
        _problems([f"start-up failed: {exc}"])
        return 1
    assert mesh.served is not None
    _report_models(mesh.served)

    with _progress() as progress:
        gateways = "gateway" if settings.gateways == 1 else f"{settings.gateways} gateways"
        task = progress.add_task(
            f"starting triton, feature, cache, inference, monitor, {gateways}", total=len(mesh.children)
        )

        def ready(name: str) -> None:
            progress.advance(task)
            progress.console.print(Text.assemble(("✓", "green"), f" {name} healthy"))

        published = False

        def on_event(event: SupervisionEvent) -> None:
            _report(event, mesh)
            if published and mesh.endpoints is not None:  # a restarted process has a new pid
                write_endpoints(settings.run_dir, mesh_endpoints(mesh, mesh.endpoints))

        starting = asyncio.create_task(mesh.start(on_ready=ready, on_event=on_event))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # asked to stop during start-up: a clean stop all the same
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            progress.stop()  # one live display at a time: the stop shows its own
            await _stop(mesh)
            return 0
        stopped.cancel()
        try:
            endpoints = starting.result()
        except StartupFailure as failure:
            if failure.tail:
                _problems(failure.lines)
                _print_tail(failure.name, failure.tail)
                console.print(Text(f"full log: {_shown(failure.log_path)}"), soft_wrap=True)
            else:
                _problems(failure.lines, failure.log_path)
            return 1
        except Exception as exc:  # noqa: BLE001 - one line and where the logs are, rather than a traceback
            _problems([f"start-up failed: {exc}"], mesh.log_dir)
            return 1

    write_endpoints(settings.run_dir, mesh_endpoints(mesh, endpoints))  # every process is up: findable now
    published = True
    console.print(_endpoints_table(endpoints))
    assert mesh.log_dir is not None
    console.print(Text(f"logs: {_shown(mesh.log_dir)}"), soft_wrap=True)
    if settings.tls:  # every port is mTLS: callers need the CA and a certificate from it
        line = f"TLS: CA and certificates in {settings.certs_dir} (clients: client.pem / admin.pem)"
        console.print(Text(line), soft_wrap=True)
    hint = start_hint(mesh, endpoints)
    if hint:
        console.print(Text.assemble("try: ", (hint, "bold")), soft_wrap=True)  # one line, to copy whole
    console.print("Ctrl-C stops every process.")
    stopped = asyncio.create_task(stop.wait())
    gave_up = asyncio.create_task(mesh.wait())
    await asyncio.wait({stopped, gave_up}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if gave_up.done():
        failure = gave_up.exception()
        reason = f"supervision failed: {failure!r}" if failure else f"{gave_up.result().name} keeps crashing"
        console.print(Text(f"{reason}; stopping the mesh", style="red"))
        code = 1
    for waiter in (stopped, gave_up):
        waiter.cancel()
    await asyncio.gather(stopped, gave_up, return_exceptions=True)
    await _stop(mesh)
    return code
