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
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from meshserve.deploy.envoy import EnvoySettings, deploy_envoy, local_settings
    from meshserve.mesh import describe_settings_error

    overrides = {} if tracing_otlp_endpoint is None else {"tracing_otlp_endpoint": tracing_otlp_endpoint}
    try:
        settings = local_settings(**overrides) if local else EnvoySettings(**overrides)
    except ValidationError as exc:  # one line naming the setting, never a traceback
        typer.echo(f"meshserve deploy envoy: {describe_settings_error(exc, 'MESHSERVE_ENVOY_')}", err=True)
        raise typer.Exit(2) from None
    except SettingsError as exc:
        typer.echo(f"meshserve deploy envoy: {exc}", err=True)
        raise typer.Exit(2) from None
    path = deploy_envoy(out, settings)
    typer.echo(f"wrote {path}")
