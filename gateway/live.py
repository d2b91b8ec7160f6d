"""Live routes: the table every request reads, swapped whole (never edited in place) by admin actions and
reloads, each of which is written to the audit log and announced to subscribers (the rollout controller)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from gateway.audit import AuditLog
from gateway.routes import Route, RoutesFileError, RouteTable, load_routes, pass_through, unknown_model
from meshserve.core.auth import Principal, authorize
from meshserve.core.errors import InvalidArgument, MeshError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RouteChange:
    """One route changed (or went away): who did it, by which action, and why."""

    route: str
    who: str
    action: str
    reason: str = ""


TableCheck = Callable[[RouteTable], Awaitable[None]]


def _weights(route: Route) -> dict[str, float]:
    return {v.name: v.weight for v in route.variants}


class LiveRoutes:
    def __init__(
        self,
        table: RouteTable,
        path: Path | None,
        audit: AuditLog,
        invalidate: Callable[[list[str]], Awaitable[object]] | None = None,
    ) -> None:
        self.table = table
        self.path = path
        self.audit = audit
        self.invalidate = invalidate  # cached answers of scopes a change makes stale
        self._listeners: list[Callable[[RouteChange], None]] = []
        self.implicit: dict[
            str, Route
        ] = {}  # models Triton serves that no route names: served under their name

    def subscribe(self, listener: Callable[[RouteChange], None]) -> None:
        """Call `listener` after each change to a route, synchronously, before the change's caller goes on."""
        self._listeners.append(listener)

    def _announce(self, change: RouteChange) -> None:
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:  # noqa: BLE001 - the change stands whatever a subscriber makes of it
                log.exception("route change listener failed", extra={"route": change.route})

    async def _invalidate(self, scopes: list[str]) -> None:
        if self.invalidate is None:
            return
        try:
            await self.invalidate(scopes)
        except Exception:  # noqa: BLE001 - the change stands; entries still expire by TTL
            log.exception("cache invalidation failed", extra={"scopes": scopes})

    def get(self, name: str) -> Route:
        """The route `name`: one the routes file (or an admin) declared, else the implicit one of the model."""
        route = self.table.routes.get(name) or self.implicit.get(name)
        if route is None:
            raise unknown_model(name)
        return route

    def authorize(self, name: str, principal: Principal) -> None:
        """PermissionDenied (Unauthenticated for an anonymous caller) unless `principal` may call route `name`:
        by the declared route's `auth`, or the table's `default_auth` for a model served under its own name. Read
        from the table in force, so a reload changes routes and their rules in one swap."""
        authorize(principal, self.table.access_rule(name), f"route {name!r}")

    @property
    def routes(self) -> dict[str, Route]:
        """The declared routes (what admin actions change)."""
        return self.table.routes

    @property
    def served(self) -> dict[str, Route]:
        """Every name a caller can use: declared routes, and the implicit ones they do not shadow."""
        return {**self.implicit, **self.table.routes}

    def follow_repository(self, models: set[str]) -> None:
        """The models Triton serves now: each gets its implicit route unless a declared route has its name.
        Swapped whole, like the table."""
        self.implicit = {name: self.implicit.get(name) or pass_through(name) for name in sorted(models)}

    def _swap(self, name: str, route: Route) -> None:
        # One assignment: a request in flight keeps the table it started with, the next one sees the new one.
        self.table = RouteTable(
            routes={**self.table.routes, name: route}, default_auth=self.table.default_auth
        )

    def set_weights(
        self, name: str, weights: dict[str, float], who: str, action: str = "set_weights", reason: str = ""
    ) -> Route:
        before = self.get(name)
        try:
            after = before.with_weights(weights)
        except ValidationError as exc:
            raise InvalidArgument(f"route {name!r}: {exc.errors()[0]['msg']}") from None
        self._swap(name, after)
        self.audit.append(who, action, name, _weights(before), _weights(after), reason)
        log.info(
            "weights changed", extra={"route": name, "weights": _weights(after), "who": who, "action": action}
        )
        self._announce(RouteChange(name, who, action, reason))
        return after

    async def promote(self, name: str, variant: str, who: str) -> Route:
        route = self.get(name)
        route.variant(variant)
        await self._invalidate([f"route:{name}"])
        return self.set_weights(
            name, {v.name: 100.0 if v.name == variant else 0.0 for v in route.variants}, who, "promote"
        )

    async def rollback(self, name: str, who: str, reason: str = "") -> Route:
        route = self.get(name)
        weights = {v.name: 100.0 if v is route.baseline else 0.0 for v in route.variants}
        after = self.set_weights(name, weights, who, "rollback", reason)
        await self._invalidate([f"route:{name}"])
        return after

    async def switch_version(self, name: str, variant: str, version: str, who: str) -> Route:
        """Point one variant at another model version, in one swap of the table."""
        before = self.get(name)
        target = before.variant(variant)
        variants = [v.model_copy(update={"version": version}) if v is target else v for v in before.variants]
        after = before.model_copy(update={"variants": variants})
        self._swap(name, after)
        self.audit.append(who, "switch_version", name, {variant: target.version}, {variant: version})
        self._announce(RouteChange(name, who, "switch_version", f"{variant}: {target.version} -> {version}"))
        await self._invalidate([f"route:{name}", f"model:{target.model}"])
        return after

    async def reload(self, who: str, check: TableCheck | None = None) -> tuple[bool, str]:
        """Re-read the routes file. A bad file leaves the serving table untouched and says why; so does a table
        that `check` refuses (it raises a MeshError, which is passed on)."""
        try:
            table = load_routes(self.path)
        except RoutesFileError as exc:
            return False, self._refuse(who, str(exc))
        if check is not None:
            try:
                await check(table)
            except MeshError as exc:
                self._refuse(who, exc.message)
                raise
        old = self.table.routes
        self.table = table
        before = {name: _weights(r) for name, r in old.items()}
        self.audit.append(who, "reload", "*", before, {name: _weights(r) for name, r in table.routes.items()})
        for name in sorted(old.keys() | table.routes.keys()):
            if _changed(old.get(name), table.routes.get(name)):
                self._announce(RouteChange(name, who, "reload", "routes file reloaded"))
        await self._invalidate([f"route:{name}" for name in table.routes])
        return True, ""

    def _refuse(self, who: str, reason: str) -> str:
        log.warning("routes reload refused; the old routes keep serving", extra={"error": reason})
        self.audit.append(who, "reload_refused", "*", None, None, reason)
        return reason


def _changed(before: Route | None, after: Route | None) -> bool:
    if before is None or after is None:
        return before is not after
    return before.model_dump() != after.model_dump()
