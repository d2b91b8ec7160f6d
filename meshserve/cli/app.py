"""`meshserve`: run the mesh, send predictions, rebuild the sample models, benchmark."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from meshserve.cli.errors import GuardedGroup, settings_errors
from meshserve.cli.output import Output, OutputOption
from meshserve.cli.targets import GatewayTarget

app = typer.Typer(
    cls=GuardedGroup,  # every error one line on stderr, never a traceback (MESHSERVE_DEBUG=1 shows it)
    help="meshserve: a gRPC model-serving mesh in front of NVIDIA Triton.",
    no_args_is_help=True,
)
models_app = typer.Typer(cls=GuardedGroup, help="The sample models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _register_admin_commands() -> None:
    from meshserve.cli.admin import cache_app, canary_app, drift, routes_app
    from meshserve.cli.deploy import deploy_app
    from meshserve.cli.features import features_app
    from meshserve.cli.feedback import feedback_app
    from meshserve.cli.keys import keys_app
    from meshserve.cli.predictions import predictions_app
    from meshserve.cli.quality import quality
    from meshserve.cli.status import status

    for group, name in ((keys_app, "keys"), (routes_app, "routes"), (canary_app, "canary"),
                        (cache_app, "cache"), (deploy_app, "deploy"), (features_app, "features"),
                        (feedback_app, "feedback"), (predictions_app, "predictions")):  # fmt: skip
        app.add_typer(group, name=name, cls=GuardedGroup)  # errors name the whole command
    app.command("drift")(drift)
    app.command("status")(status)
    app.command("quality")(quality)


_register_admin_commands()


def _version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    typer.echo(
        f"meshserve {of('meshserve')} (tritonclient {of('tritonclient')}, "
        f"nvidia-pytriton {of('nvidia-pytriton')} bundling tritonserver)"
    )
    raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="show the versions and exit"),
    ] = False,
) -> None:
    """meshserve: a gRPC model-serving mesh in front of NVIDIA Triton."""


def _run(coro) -> int:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


UP_FLAGS = {  # MeshSettings field -> the `up` flag that sets it
    "gateway_port": "--port",
    "admin_port": "--admin-port",
    "gateway_http_port": "--http-port",
    "monitor_port": "--monitor-port",
    "host": "--host",
    "routes_path": "--routes",
    "model_repositories": "--model-repository",
    "tls": "--tls",
    "auth": "--auth",
    "gateways": "--gateways",
}


@app.command()
def up(
    port: Annotated[int | None, typer.Option(help="gateway port (default 50051)")] = None,
    admin_port: Annotated[int | None, typer.Option(help="gateway admin port (default 50055)")] = None,
    http_port: Annotated[
        int | None, typer.Option(help="gateway REST port, Triton's HTTP API (default 50056)")
    ] = None,
    monitor_port: Annotated[
        int | None,
        typer.Option(
            help="the monitor service's port: prediction log, labels, quality (default: a free port)"
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            help="address the gateway's gRPC and REST ports listen on (default 127.0.0.1); the other processes "
            "stay on loopback (with --tls the feature, cache, inference and monitor services follow it)"
        ),
    ] = None,
    admin_host: Annotated[
        str | None,
        typer.Option(
            help="address the gateway's admin API listens on (default: loopback, whatever --host says)"
        ),
    ] = None,
    routes: Annotated[
        Path | None,
        typer.Option(
            help="routes YAML (default: the embedded sample routes, or none with --model-repository)"
        ),
    ] = None,
    model_repository: Annotated[
        list[Path] | None,
        typer.Option(
            "--model-repository",
            metavar="DIR",
            help="a Triton model repository to serve instead of the sample; repeat for several "
            "(ONNX models run through onnxruntime in the python backend)",
        ),
    ] = None,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls", help="mTLS on every hop, certificates in <run_dir>/certs (created once, then kept)"
        ),
    ] = False,
    auth: Annotated[
        bool,
        typer.Option(
            "--auth",
            help="callers must authenticate: API keys from `meshserve keys create` (or, with --tls, client "
            "certificates); the admin API always needs its token",
        ),
    ] = False,
    gateways: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="gateway processes sharing the gateway's ports (SO_REUSEPORT), each supervised, control state "
            "shared through <run_dir>/control.db (default 1)",
        ),
    ] = None,
) -> None:
    """Start Triton, the feature, cache, inference and monitor services and the gateway; serve until Ctrl-C."""
    from meshserve.cli.up import run_up
    from meshserve.core.logs import configure_logging
    from meshserve.launcher.mesh import MeshSettings

    overrides = {
        "gateway_port": port,
        "admin_port": admin_port,
        "gateway_http_port": http_port,
        "monitor_port": monitor_port,
        "host": host,
        "admin_host": admin_host,
        "routes_path": routes,
        "model_repositories": model_repository or None,
        "tls": tls or None,
        "auth": auth or None,
        "gateways": gateways,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    with settings_errors(flags={k: UP_FLAGS[k] for k in given}):  # a bad value named as the user gave it
        settings = MeshSettings(**given)
    configure_logging("meshserve-up", "WARNING")
    raise typer.Exit(_run(run_up(settings)))


@app.command()
def predict(
    route: Annotated[str, typer.Argument(help="route name, e.g. fraud")],
    entity_key: Annotated[str, typer.Argument(help="entity key, e.g. acct-00042")],
    features: Annotated[list[str], typer.Argument(help="request features as name=value")] = None,
    target: GatewayTarget = None,
    timeout: Annotated[float, typer.Option(help="deadline in seconds")] = 5.0,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="MESHSERVE_API_KEY", help="an API key, for a gateway that requires callers to authenticate"
        ),
    ] = None,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls", help="dial over TLS with the CA and admin certificate of `up --tls` (or MESHSERVE_TLS)"
        ),
    ] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Send one Predict to the gateway and print the answer: score, variant, version and tier per entity."""
    from meshserve.cli.predict import run_predict

    _run(run_predict(target, route, entity_key, features or [], timeout, tls or None, api_key, output))


@app.command()
def score(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="CSV or Parquet: key + request features, and optionally prediction_id (each row's own id, "
            "which labels will name; else the gateway makes one). The output has a prediction_id column",
        ),
    ],
    route: Annotated[str, typer.Option(help="route name, e.g. fraud")],
    out: Annotated[
        Path | None, typer.Option(help="output, Parquet or CSV by suffix (default FILE.scored.parquet)")
    ] = None,
    target: GatewayTarget = None,
    batch: Annotated[
        int, typer.Option(min=1, max=1024, help="instances per Predict (gateway limit 1024)")
    ] = 512,
    in_flight: Annotated[int, typer.Option(min=1, help="Predicts in flight at once")] = 8,
    model: Annotated[
        str | None, typer.Option(help="registry model the route serves (default: the route name)")
    ] = None,
    key_column: Annotated[
        str | None, typer.Option(help="entity key column (default: the entity's join key)")
    ] = None,
    api_key: Annotated[str | None, typer.Option(envvar="MESHSERVE_API_KEY", help="an API key")] = None,
    tls: Annotated[bool, typer.Option("--tls", help="dial over TLS (or MESHSERVE_TLS)")] = False,
) -> None:
    """Score a file through the gateway's Predict in large batches; rerun after Ctrl-C to resume."""
    from meshserve.cli.score import run_score

    try:
        _run(
            run_score(
                file,
                route,
                out,
                target,
                batch,
                in_flight,
                model=model,
                key_column=key_column,
                tls=tls or None,
                api_key=api_key,
                require_mesh=True,
            )
        )
    except KeyError as exc:
        typer.echo(f"meshserve score: {exc.args[0]}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo(
            "meshserve score: interrupted; finished batches are saved, rerun the same command to resume",
            err=True,
        )
        raise typer.Exit(130) from None


@app.command()
def certs(
    directory: Annotated[Path, typer.Argument(help="where to write ca.pem and <name>.pem / <name>-key.pem")],
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="a certificate to issue (repeat); default: every meshserve process"),
    ] = None,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="an extra DNS name or IP for every certificate (repeat)"),
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="validity in days")] = 825,
    force: Annotated[bool, typer.Option("--force", help="replace existing files, the CA included")] = False,
) -> None:
    """Write a private CA and one certificate per process (EC P-256, keys 0600), for `up --tls` and mTLS."""
    from meshserve.launcher.certs import DEFAULT_NAMES, issue_certificates

    issued = issue_certificates(directory, name or DEFAULT_NAMES, host or (), days, force)
    for path in issued.written:
        typer.echo(f"wrote {path}")
    for path in issued.kept:
        typer.echo(f"kept {path} (--force replaces it)")


@models_app.command("build")
def models_build(
    repository: Annotated[Path, typer.Option(help="model repository to write")] = Path("model_repository"),
) -> None:
    """Retrain the sample models from their fixed seed and export them to the model repository."""
    from meshserve.samples.build import build_sample_models

    accounts = Path(__file__).resolve().parent.parent / "defaults" / "accounts.csv"
    summary = build_sample_models(repository, accounts)
    typer.echo(summary)


def main() -> None:
    app()
