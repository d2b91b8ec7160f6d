"""What a refused routes reload tells its caller when the file names a version Triton does not serve: why (often
a blue-green switch that moved the variant on and unloaded the file's version: a switch changes the live routes,
not the routes file) and how to go on, in commands that exist. Pure: the live version and the audit entries are
passed in."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from gateway.control.audit import AuditEntry
from gateway.rollout.versions import VersionNotServed

SWITCH = "switch_version"  # the audit action of a blue-green switch (LiveRoutes.switch_version)


def switched_away(entries: Iterable[AuditEntry], route: str, variant: str, version: str) -> AuditEntry | None:
    """The newest switch that moved `variant` of `route` off `version`, if the entries hold one."""
    found = None
    for entry in entries:
        before = entry.before if isinstance(entry.before, dict) else {}
        if entry.action == SWITCH and entry.route == route and before.get(variant) == version:
            found = entry
    return found


def reload_refusal(
    missing: VersionNotServed, routes_file: Path | None, live: str | None, switch: AuditEntry | None
) -> str:
    """One line: what the file names that Triton does not serve, why, and the ways on. `live`: the version the
    variant serves now (None: the live routes have no such variant)."""
    r, v, m, old = missing.route, missing.variant, missing.model, missing.version
    source = str(routes_file) if routes_file is not None else "the embedded routes"
    parts = [f"{source}: {missing.message}; nothing changed, the live routes keep serving"]
    # a switch pins a version Triton serves; switching back to the file's version loads it again
    can_switch_back = bool(live) and live != old and old != "" and live in missing.served
    if switch is not None and can_switch_back:
        parts.append(
            f"`meshserve canary switch {r} {v} {live}` ({switch.who}, {switch.time}) moved the variant from "
            f"version {old} to {live} and unloaded {old}: a switch changes the live routes, not the routes file"
        )
    elif can_switch_back:
        parts.append(f"the live routes serve version {live} there: a switch changes the live routes, not the "
                     "routes file")  # fmt: skip
    if can_switch_back:
        keep = f'`version: "{live}"`'
        if routes_file is not None:
            parts.append(f"to keep version {live}, put {keep} on variant {v!r} of route {r!r} in {routes_file}, "
                         "then reload")  # fmt: skip
        else:
            parts.append(f"version {live} keeps serving as it is; for routes to reload that keep it, serve a "
                         f"routes file of your own with {keep} there (`meshserve up --routes FILE`, from "
                         "meshserve/defaults/routes.yaml)")  # fmt: skip
        parts.append(f"to go back to version {old}, run `meshserve canary switch {r} {v} {old}` (it loads "
                     f"version {old} again), then reload")  # fmt: skip
        return "; ".join(parts)
    served = (
        f"one Triton serves ({', '.join(missing.served)})" if missing.served else "a version Triton serves"
    )
    parts.append(f"name {served} for variant {v!r} of route {r!r} in {source}, or load model {m!r} first "
                 f"(Triton's RepositoryModelLoad through the gateway: POST /v2/repository/models/{m}/load on its "
                 "REST port, or tritonclient's load_model on its gRPC port; it loads the versions the model's "
                 "version_policy names), then reload")  # fmt: skip
    return "; ".join(parts)
