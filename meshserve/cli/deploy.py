"""`meshserve deploy ...`: deployment files generated from meshserve's own settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

deploy_app = typer.Typer(help="Generate deployment files from meshserve's settings.", no_args_is_help=True)


@deploy_app.command("envoy")
def envoy(
    out: Annotated[Path, typer.Option(help="file to write")] = Path("deploy/envoy/envoy.yaml"),
    local: Annotated[
        bool, typer.Option("--local", help="proxy to a gateway on 127.0.0.1 and listen there only")
    ] = False,
    tracing_otlp_endpoint: Annotated[
        str | None,
        typer.Option(
            help="trace to this OTLP collector, e.g. the mesh's $OTEL_EXPORTER_OTLP_ENDPOINT (default: no tracing)"
        ),
    ] = None,
) -> None:
    """Write the Envoy edge config (defaults: docker-compose; MESHSERVE_ENVOY_* variables override)."""
    from meshserve.cli.errors import settings_errors
    from meshserve.deploy.envoy import EnvoySettings, deploy_envoy, local_settings

    overrides = {} if tracing_otlp_endpoint is None else {"tracing_otlp_endpoint": tracing_otlp_endpoint}
    flags = {"tracing_otlp_endpoint": "--tracing-otlp-endpoint"} if overrides else {}  # a bad value's name
    with settings_errors("MESHSERVE_ENVOY_", flags):
        settings = local_settings(**overrides) if local else EnvoySettings(**overrides)
    path = deploy_envoy(out, settings)
    typer.echo(f"wrote {path}")
