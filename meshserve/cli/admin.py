"""`meshserve routes ...` and `meshserve canary ...`: the gateway's admin API from the shell.

Every call carries `authorization: Bearer <admin token>`, read from MESHSERVE_ADMIN_TOKEN_FILE, else from the
run directory `meshserve up` wrote it to (`<MESHSERVE_RUN_DIR>/admin-token`); no file, no credential (a gateway
that asks for none).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from meshserve.admin.v1 import admin_pb2, admin_pb2_grpc
from meshserve.cli.comparisons import comparison_dict, comparison_lines
from meshserve.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError, dial
from meshserve.cli.output import FittedTable, Output, OutputOption, indented, print_json

console = Console()
routes_app = typer.Typer(help="Live routes: list, reload, audit log.", no_args_is_help=True)
canary_app = typer.Typer(
    help="Canaries: weights, promote, rollback, automated rollouts.", no_args_is_help=True
)
Target = Annotated[
    str | None,
    typer.Option(
        "--admin",
        help="the gateway's admin address (default: MESHSERVE_TARGET_ADMIN, else the running mesh's "
        "<run_dir>/endpoints.json, else 127.0.0.1:50055)",
    ),
]
DEFAULT_ADMIN = None  # found by meshserve.launcher.endpoints_file.locate


def admin_token_path() -> Path:
    """Where the admin token is: MESHSERVE_ADMIN_TOKEN_FILE, else the run directory's (as `meshserve up` knows it)."""
    explicit = os.environ.get("MESHSERVE_ADMIN_TOKEN_FILE")
    if explicit:
        return Path(explicit)
    from meshserve.launcher.mesh import ADMIN_TOKEN_FILE, MeshSettings

    return MeshSettings().run_dir / ADMIN_TOKEN_FILE


def credentials() -> tuple[tuple[str, str], ...]:
    """The admin call's metadata: the admin token as a bearer credential, when there is one."""
    try:
        token = admin_token_path().read_text().strip()
    except OSError:
        return ()
    return (("authorization", f"Bearer {token}"),) if token else ()


def _call(target: str | None, method: str, request, timeout_s: float = 10.0):
    from meshserve.launcher.endpoints_file import locate

    metadata = credentials()
    found = locate("admin", target)

    async def go():
        # TLS with the `admin` certificate when the mesh runs with it; a failed call is one line (CliError)
        async with dial(found, "admin", flag="--admin") as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            return await getattr(stub, method)(request, timeout=timeout_s, metadata=metadata)

    return asyncio.run(go())


def _window(w: admin_pb2.JudgedWindow) -> dict:
    return {"variant": w.variant, "requests": w.requests, "errors": w.errors, "error_rate": w.error_rate,
            "p99_seconds": w.p99_seconds}  # fmt: skip


def route_dict(status: admin_pb2.RouteStatus) -> dict:
    """A route's status as `-o json` prints it: plain JSON types (numbers stay numbers)."""
    r = status.rollout
    rollout: dict = {"state": r.state, "canary": r.canary, "step": r.step, "steps": list(r.steps),
                     "last_reason": r.last_reason, "gate": r.gate, "last_judgement": None}  # fmt: skip
    if r.HasField("last_judgement"):
        j = r.last_judgement
        rollout["last_judgement"] = {
            "time": j.time, "step": j.step, "verdict": j.verdict, "reason": j.reason, "shadow": j.shadow,
            "canary": _window(j.canary), "baseline": _window(j.baseline),
            "thresholds": {"max_error_rate_increase": j.max_error_rate_increase, "max_p99_ratio": j.max_p99_ratio,
                           "min_requests": j.min_requests},
            "comparisons": [comparison_dict(c) for c in j.comparisons],
        }  # fmt: skip
    return {
        "route": status.route,
        "sticky": status.sticky,
        "fallback": list(status.fallback),
        "variants": [
            {
                "name": v.name,
                "model": v.model,
                "version": v.version,
                "weight": v.weight,
                "requests": v.requests,
                "errors": v.errors,
                "ejected": v.ejected,
            }
            for v in status.variants
        ],  # fmt: skip
        "shadows": [
            {
                "variant": s.variant,
                "percent": s.percent,
                "compared": s.compared,
                "failed": s.failed,
                "mean_abs_score_diff": s.mean_abs_score_diff,
                "label_agreement": s.label_agreement,
                "quality": [comparison_dict(c) for c in s.quality],
                "quality_note": s.quality_note,
            }
            for s in status.shadows
        ],  # fmt: skip
        "rollout": rollout,
    }


def _side(role: str, w: admin_pb2.JudgedWindow) -> str:
    return (f"{role} {w.variant}: {w.requests} calls, {w.errors} errors ({w.error_rate:.1%}), "
            f"p99 {w.p99_seconds * 1000:.1f} ms")  # fmt: skip


def show_judgement(j: admin_pb2.Judgement) -> None:
    when = time.strftime("%H:%M:%S", time.localtime(j.time))
    colour = {"breach": "red", "expired": "red", "healthy": "green"}.get(j.verdict, "yellow")
    what = f"shadow {escape(j.shadow)} (before step 1)" if j.shadow else f"step {j.step + 1}"
    console.print(f"  last judgement at {when}, {what}: [{colour}]{j.verdict}[/]"
                  + (f" ({escape(j.reason)})" if j.reason else ""))  # fmt: skip
    if not j.shadow:
        console.print(f"    {_side('canary', j.canary)}")
        console.print(f"    {_side('baseline', j.baseline)}")
        console.print(
            f"    thresholds: error rate at most +{j.max_error_rate_increase:.1%} over the baseline, "
            f"p99 at most {j.max_p99_ratio:g}x the baseline's, judged from {j.min_requests} calls a side"
        )
    if j.comparisons:
        console.print("    anytime-valid comparisons (bounds that hold at every look):")
    canary = j.shadow or j.canary.variant or "canary"
    for c in j.comparisons:
        for line in comparison_lines(c, canary, j.baseline.variant or "baseline"):
            console.print(line)


def show_route(status: admin_pb2.RouteStatus) -> None:
    table = Table(
        title=f"route {status.route}  (sticky: {status.sticky}; fallback: {', '.join(status.fallback) or '-'})"
    )
    for column in ("variant", "model", "version", "weight", "requests", "errors", "ejected"):
        table.add_column(column)
    for v in status.variants:
        table.add_row(v.name, v.model, v.version or "latest", f"{v.weight:g}", str(v.requests), str(v.errors),
                      "yes" if v.ejected else "")  # fmt: skip
    console.print(table)
    primary = max(status.variants, key=lambda v: v.weight).name if status.variants else "primary"
    for s in status.shadows:
        console.print(
            f"  shadow {s.variant} at {s.percent:g}%: {s.compared} compared, {s.failed} failed, "
            f"mean |score diff| {s.mean_abs_score_diff:.4f}, label agreement {s.label_agreement:.1%}"
        )
        if s.quality_note:
            console.print(f"    quality: {escape(s.quality_note)}")
        for c in s.quality:  # paired with the primary variant's answers to the same requests
            for line in comparison_lines(c, s.variant, primary):
                console.print(line)
    r = status.rollout
    if r.canary:
        steps = " → ".join(f"{w:g}%" for w in r.steps)
        where = f"shadow {r.gate} must pass first" if r.gate else f"step {r.step + 1}/{len(r.steps)}"
        console.print(f"  rollout of {r.canary}: {r.state} at {where} ({steps}) {escape(r.last_reason)}")
        if r.HasField("last_judgement"):
            show_judgement(r.last_judgement)


def _show(status: admin_pb2.RouteStatus, output: Output) -> None:
    if output is Output.JSON:
        print_json(route_dict(status))
    else:
        show_route(status)


@routes_app.command("list")
def routes_list(admin: Target = DEFAULT_ADMIN, output: OutputOption = Output.TABLE) -> None:
    """Every route with its live weights, health, shadows, rollout and the judge's last numbers."""
    reply = _call(admin, "ListRoutes", admin_pb2.ListRoutesRequest())
    if output is Output.JSON:
        print_json({"routes_file": reply.routes_file, "routes": [route_dict(s) for s in reply.routes]})
        return
    console.print(f"routes file: {reply.routes_file}")
    for status in reply.routes:
        show_route(status)


@routes_app.command("reload")
def routes_reload(admin: Target = DEFAULT_ADMIN) -> None:
    """Re-read the routes file; a bad file, or one naming a model version Triton does not serve, changes nothing
    and says why (one line on stderr, exit status 1)."""
    reply = _call(admin, "Reload", admin_pb2.ReloadRequest())
    if not reply.applied:
        raise CliError(f"refused; the old routes keep serving: {' '.join(reply.error.split())}", EXIT_FAILED)
    console.print(f"[green]reloaded[/]: {', '.join(reply.routes)}")


@routes_app.command("audit")
def routes_audit(limit: int = 20, admin: Target = DEFAULT_ADMIN, output: OutputOption = Output.TABLE) -> None:
    """The newest entries of the audit log (a rollout's steps, completion and rollback carry the judge's numbers)."""
    reply = _call(admin, "GetAuditLog", admin_pb2.GetAuditLogRequest(limit=limit))
    if output is Output.JSON:
        print_json([
            {"time": e.time, "who": e.who, "action": e.action, "route": e.route, "before": _json(e.before),
             "after": _json(e.after), "reason": e.reason}
            for e in reply.entries
        ])  # fmt: skip
        return
    console.print(audit_table(reply.entries))


def audit_table(entries) -> FittedTable:
    """The audit log as a table; in a terminal too narrow for it, one entry per block: time, action, route and who
    on its first line, before → after and the reason each on their own, wrapped between words, never cut."""
    rows = [[Text(e.time), Text(e.who), Text(e.action), Text(e.route), Text(e.before), Text(e.after),
             Text(e.reason)] for e in entries]  # fmt: skip

    def narrow() -> Group:
        parts: list[RenderableType] = [Text("audit log", style="italic")]
        for e in entries:
            parts.append(Text.assemble((e.time, "dim"), "  ", (e.action, "bold"), "  ", e.route, "  ", e.who))
            if (e.before or "null") != "null" or (e.after or "null") != "null":
                parts.append(indented(Text(f"{e.before or 'null'} → {e.after or 'null'}")))
            if e.reason:
                parts.append(indented(Text(e.reason)))
        return Group(*parts)

    return FittedTable(
        "audit log", ("time", "who", "action", "route", "before", "after", "reason"), rows, narrow
    )


def _json(text: str) -> object:
    """An audit entry's before/after (JSON text in the reply) as data; an empty field as null."""
    return json.loads(text) if text else None


@canary_app.command("status")
def canary_status(route: str, admin: Target = DEFAULT_ADMIN, output: OutputOption = Output.TABLE) -> None:
    """One route's weights, shadow comparison, rollout state and the judge's last numbers and thresholds."""
    reply = _call(admin, "ListRoutes", admin_pb2.ListRoutesRequest())
    matches = [s for s in reply.routes if s.route == route]
    if not matches:  # as the admin API says it, and bad input like it (meshserve.cli.errors.BAD_INPUT)
        from gateway.routing.routes import unknown_route

        raise CliError(f"NOT_FOUND: {unknown_route(route, (s.route for s in reply.routes))}", EXIT_USAGE)
    _show(matches[0], output)


@canary_app.command("weights")
def canary_weights(
    route: str,
    weights: Annotated[list[str], typer.Argument(help="variant=weight ...")],
    admin: Target = DEFAULT_ADMIN,
    output: OutputOption = Output.TABLE,
) -> None:
    """Set variant weights, e.g. `meshserve canary weights fraud stable=90 canary=10`. Weights are shares of the
    route's traffic (>= 0, not all zero); the gateway scales them to sum to 100 and shows them so."""
    parsed = {}
    for item in weights:
        name, _, value = item.partition("=")
        try:
            parsed[name] = float(value)
        except ValueError:
            console.print(f"[red]expected variant=weight with a number, got {item!r}[/]")
            raise typer.Exit(2) from None
    status = _call(admin, "SetWeights", admin_pb2.SetWeightsRequest(route=route, weights=parsed))
    if output is Output.TABLE:
        live = {v.name: v.weight for v in status.variants}
        if any(abs(live.get(name, weight) - weight) > 1e-9 for name, weight in parsed.items()):
            shares = ", ".join(f"{name}={weight:.4g}" for name, weight in live.items())
            console.print(f"weights are shares of the traffic, scaled to sum to 100: {shares}")
    _show(status, output)


@canary_app.command("promote")
def canary_promote(route: str, variant: str, admin: Target = DEFAULT_ADMIN) -> None:
    """Send all of the route's traffic to one variant."""
    show_route(_call(admin, "Promote", admin_pb2.PromoteRequest(route=route, variant=variant)))


@canary_app.command("rollback")
def canary_rollback(route: str, reason: str = "", admin: Target = DEFAULT_ADMIN) -> None:
    """Send all of the route's traffic back to its baseline (first) variant."""
    show_route(_call(admin, "Rollback", admin_pb2.RollbackRequest(route=route, reason=reason)))


@canary_app.command("switch")
def canary_switch(
    route: str,
    variant: str,
    version: str,
    warmup: int = 8,
    admin: Target = DEFAULT_ADMIN,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="seconds the whole switch may take (loading included)")
    ] = 120.0,
) -> None:
    """Blue-green: load VERSION beside the variant's current one, warm it, switch, unload the old one."""
    request = admin_pb2.SwitchVersionRequest(
        route=route, variant=variant, version=version, warmup_requests=warmup
    )
    show_route(_call(admin, "SwitchVersion", request, timeout))


def _rollout(route: str, action: int, admin: str | None) -> None:
    show_route(_call(admin, "SetRollout", admin_pb2.SetRolloutRequest(route=route, action=action)))


@canary_app.command("start")
def canary_start(route: str, admin: Target = DEFAULT_ADMIN) -> None:
    """Start the automated rollout declared for the route."""
    _rollout(route, admin_pb2.SetRolloutRequest.START, admin)


@canary_app.command("pause")
def canary_pause(route: str, admin: Target = DEFAULT_ADMIN) -> None:
    """Hold the route's rollout at its current step."""
    _rollout(route, admin_pb2.SetRolloutRequest.PAUSE, admin)


@canary_app.command("resume")
def canary_resume(route: str, admin: Target = DEFAULT_ADMIN) -> None:
    """Continue a paused rollout."""
    _rollout(route, admin_pb2.SetRolloutRequest.RESUME, admin)


cache_app = typer.Typer(help="The prediction cache: hit ratios, invalidation.", no_args_is_help=True)


@cache_app.command("stats")
def cache_stats(route: str = "", admin: Target = DEFAULT_ADMIN) -> None:
    """Hit ratio, misses, bypasses and coalesced misses, per route."""
    reply = _call(admin, "CacheStats", admin_pb2.CacheStatsRequest(route=route))
    console.print(cache_table(reply))


def cache_table(reply: admin_pb2.CacheStatsResponse) -> FittedTable:
    """Per route; in a terminal too narrow for every header whole, one block of `name: value` lines per route."""
    columns = (
        "route",
        "on",
        "hit ratio",
        "near hits",
        "hits",
        "misses",
        "bypasses",
        "coalesced",
        "invalidations",
    )
    rows = [[Text(r.route), "yes" if r.enabled else "no", f"{r.hit_ratio:.1%}", str(r.near_hits), str(r.hits),
             str(r.misses), str(r.bypasses), str(r.coalesced), str(r.invalidations)] for r in reply.routes]  # fmt: skip
    return FittedTable("prediction cache", columns, rows)


@cache_app.command("invalidate")
def cache_invalidate(route: str, admin: Target = DEFAULT_ADMIN) -> None:
    """Make every cached answer of the route unreachable."""
    reply = _call(admin, "InvalidateCache", admin_pb2.InvalidateCacheRequest(route=route))
    console.print(f"[green]invalidated[/] route {route} (generation {reply.generation})")


def drift(admin: Target = DEFAULT_ADMIN) -> None:
    """Feature drift: PSI of each model input over the recent window against its training data."""
    reply = _call(admin, "GetDrift", admin_pb2.GetDriftRequest())
    table = Table(title=f"feature drift (PSI; threshold {reply.threshold:g})")
    for column in ("model", "feature", "PSI", ""):
        table.add_column(column)
    for f in reply.features:
        table.add_row(f.model, f.feature, f"{f.psi:.3f}", "[red]drifting[/]" if f.drifting else "ok")
    console.print(table)
    for model, samples in reply.samples.items():
        console.print(f"{model}: {samples} rows in the window")
    if not reply.features:
        console.print("not enough traffic yet to judge drift")


__all__ = ["cache_app", "canary_app", "drift", "routes_app"]
