"""Live routes: the table every request reads, swapped whole (never edited in place) by admin actions and
reloads, each of which is written to the audit log and announced to subscribers (the rollout controller).

With a control store (`store`), a change is first written there (compare-and-set on the revision, with its audit
entries) and only then applied here; a conflict means another replica changed the table first: its table is
adopted and the change is made again on top of it. `sync` adopts what the store holds (the watcher calls it when
the revision moves), announcing each changed route as if it had been changed here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import ValidationError

from gateway.control.audit import AuditEntry, AuditLog
from gateway.control.plane import ControlStore, RevisionConflict
from gateway.routing.routes import (
    Route,
    RoutesFileError,
    RouteTable,
    load_routes,
    parse_routes,
    pass_through,
    unknown_route,
)
from meshserve.core.auth import Principal, authorize
from meshserve.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    MeshError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RouteChange:
    """One route changed (or went away): who did it, by which action, and why."""

    route: str
    who: str
    action: str
    reason: str = ""


TableCheck = Callable[[RouteTable], Awaitable[None]]
Record = tuple[
    str, str, str, object, object, str
]  # an audit entry's who, action, route, before, after, reason
Edit = tuple[
    RouteTable, list[Record], list[RouteChange]
]  # a change: the new table, its audit, its announcements
CAS_ATTEMPTS = 5  # writes lost to other replicas in a row before the caller is told to try again


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
        self.store: ControlStore | None = (
            None  # the control store several replicas share; None: this table only
        )
        self.revision = 0  # the store's revision this table is; 0: not (yet) from the store
        self._lock = asyncio.Lock()  # one write or adoption at a time, so a revision is applied once
        # With a store: rollout state, shared like the table (the rollout controller's, opaque here), and the
        # controller's hook that updates it for the routes a change touches, in the same write
        self.rollouts: dict[str, dict] = {}
        self.rollout_hook: Callable[[dict, list[RouteChange]], tuple[dict, list[Record]]] | None = None

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

    def get(self, name: str, caller: Principal | None = None) -> Route:
        """The route `name`: one the routes file (or an admin) declared, else the implicit one of the model.
        NotFound in meshserve's words, listing the routes served (only those `caller` may call, when given); the
        Open Inference Protocol answers in Triton's words instead (gateway.serving.inference_api)."""
        route = self.find(name)
        if route is None:
            raise self._unknown(name, caller)
        return route

    def find(self, name: str) -> Route | None:
        """The route `name`, or None where no route has that name."""
        return self.table.routes.get(name) or self.implicit.get(name)

    def _unknown(self, name: str, caller: Principal | None = None) -> NotFound:
        served = self.served
        if caller is not None:
            served = {n: r for n, r in served.items() if self.may_call(n, caller)}
        return unknown_route(name, served)

    def may_call(self, name: str, principal: Principal) -> bool:
        try:
            self.authorize(name, principal)
        except (Unauthenticated, PermissionDenied):
            return False
        return True

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

    def _route_in(self, table: RouteTable, name: str) -> Route:
        route = table.routes.get(name) or self.implicit.get(name)
        if route is None:
            raise unknown_route(name, {**self.implicit, **table.routes})
        return route

    def _apply(self, table: RouteTable, entries: list[AuditEntry], changes: list[RouteChange]) -> None:
        # One assignment: a request in flight keeps the table it started with, the next one sees the new one.
        self.table = table
        for entry in entries:
            self.audit.record(entry)
        for change in changes:
            self._announce(change)

    def _entries(self, records: list[Record]) -> list[AuditEntry]:
        return [self.audit.entry(*record) for record in records]

    def _commit_local(self, edit: Edit) -> None:
        table, records, changes = edit
        self._apply(table, self._entries(records), changes)

    async def _commit(
        self, make: Callable[[RouteTable], Edit], rollouts: Callable[[dict], dict] | None = None
    ) -> None:
        """Apply the change `make` computes from the table in force: here, or first in the control store (with
        the rollout state `rollouts` makes of the stored one)."""
        if self.store is None:
            self._commit_local(make(self.table))
            return
        async with self._lock:
            for _ in range(CAS_ATTEMPTS):
                table, records, changes = make(self.table)
                states = rollouts(self.rollouts) if rollouts is not None else dict(self.rollouts)
                if self.rollout_hook is not None:
                    states, stopped = self.rollout_hook(states, changes)
                    records = [*records, *stopped]
                entries = self._entries(records)
                try:
                    self.revision = await self.store.write(
                        self.revision, _document(table, changes, states), [asdict(e) for e in entries]
                    )
                except RevisionConflict:
                    await self._adopt()  # another replica's change first; ours is made again on top of it
                    continue
                self.rollouts = states  # before the announcements, so subscribers read the new state
                self._apply(table, entries, changes)
                return
        raise FailedPrecondition(
            f"the route table kept changing on other replicas ({CAS_ATTEMPTS} writes lost); try again"
        )

    async def sync(self) -> None:
        """Serve what the control store holds; an empty store gets this table (the routes file at start-up, the
        last applied table if the store lost its data). Raises ControlStoreUnavailable."""
        async with self._lock:
            await self._adopt()

    async def _adopt(self) -> None:
        assert self.store is not None
        snapshot = await self.store.read()
        if snapshot.document is None:
            seed = [RouteChange("*", "gateway", "seed", "control store was empty")]
            record: Record = (
                "gateway",
                "seed",
                "*",
                None,
                _all_weights(self.table),
                "control store was empty",
            )
            entries = self._entries([record])
            try:
                self.revision = await self.store.write(
                    0, _document(self.table, seed, self.rollouts), [asdict(e) for e in entries]
                )
            except RevisionConflict:  # another replica seeded it first: serve theirs
                await self._adopt()
                return
            self.audit.record(entries[0])
            log.info("control store seeded", extra={"store": self.store.name, "revision": self.revision})
            return
        if snapshot.revision == self.revision:
            return
        table = parse_routes(snapshot.document["table"], f"control store revision {snapshot.revision}")
        change = snapshot.document.get("change") or {}
        old, self.table, self.revision = self.table, table, snapshot.revision
        self.rollouts = snapshot.document.get("rollouts") or {}
        log.info("route table adopted from the control store",
                 extra={"revision": snapshot.revision, "who": change.get("who"), "action": change.get("action")})  # fmt: skip
        for name in sorted(old.routes.keys() | table.routes.keys()):
            if _changed(old.routes.get(name), table.routes.get(name)):
                self._announce(RouteChange(name, change.get("who", "?"), change.get("action", "sync"),
                                           change.get("reason", "")))  # fmt: skip

    def _weights_edit(self, table: RouteTable, name: str, weights: dict[str, float], who: str, action: str,
                      reason: str) -> Edit:  # fmt: skip
        before = self._route_in(table, name)
        try:
            after = before.with_weights(weights)
        except ValidationError as exc:
            raise InvalidArgument(f"route {name!r}: {exc.errors()[0]['msg']}") from None
        return (
            RouteTable(routes={**table.routes, name: after}, default_auth=table.default_auth),
            [(who, action, name, _weights(before), _weights(after), reason)],
            [RouteChange(name, who, action, reason)],
        )

    def set_weights(
        self, name: str, weights: dict[str, float], who: str, action: str = "set_weights", reason: str = ""
    ) -> Route:
        """Change weights in this process's table (no control store; else `change_weights`)."""
        if self.store is not None:
            raise RuntimeError("with a control store, weights change through change_weights")
        self._commit_local(self._weights_edit(self.table, name, weights, who, action, reason))
        return self._logged(name, who, action)

    async def change_weights(
        self,
        name: str,
        weights: dict[str, float],
        who: str,
        action: str = "set_weights",
        reason: str = "",
        rollouts: Callable[[dict], dict] | None = None,
        records: tuple[Record, ...] = (),
    ) -> Route:
        """Change weights: in the control store when there is one (UNAVAILABLE when it cannot be reached), with
        `records` audited after the change's own entry, in the same write."""

        def edit(table: RouteTable) -> Edit:
            changed, own, changes = self._weights_edit(table, name, weights, who, action, reason)
            return changed, [*own, *records], changes

        await self._commit(edit, rollouts)
        return self._logged(name, who, action)

    async def change_rollouts(self, rollouts: Callable[[dict], dict], records: list[Record]) -> None:
        """Change only the shared rollout state (control store only), with its audit entries."""
        await self._commit(lambda table: (table, records, []), rollouts)

    def _logged(self, name: str, who: str, action: str) -> Route:
        after = self.get(name)
        log.info(
            "weights changed", extra={"route": name, "weights": _weights(after), "who": who, "action": action}
        )
        return after

    async def promote(self, name: str, variant: str, who: str) -> Route:
        route = self.get(name)
        route.variant(variant)
        await self._invalidate([f"route:{name}"])
        return await self.change_weights(
            name, {v.name: 100.0 if v.name == variant else 0.0 for v in route.variants}, who, "promote"
        )

    async def rollback(
        self, name: str, who: str, reason: str = "", rollouts: Callable[[dict], dict] | None = None
    ) -> Route:
        route = self.get(name)
        weights = {v.name: 100.0 if v is route.baseline else 0.0 for v in route.variants}
        after = await self.change_weights(name, weights, who, "rollback", reason, rollouts)
        await self._invalidate([f"route:{name}"])
        return after

    async def switch_version(self, name: str, variant: str, version: str, who: str) -> Route:
        """Point one variant at another model version, in one swap of the table."""

        def edit(table: RouteTable) -> Edit:
            before = self._route_in(table, name)
            target = before.variant(variant)
            variants = [
                v.model_copy(update={"version": version}) if v is target else v for v in before.variants
            ]
            after = before.model_copy(update={"variants": variants})
            return (
                RouteTable(routes={**table.routes, name: after}, default_auth=table.default_auth),
                [(who, "switch_version", name, {variant: target.version}, {variant: version}, "")],
                [RouteChange(name, who, "switch_version", f"{variant}: {target.version} -> {version}")],
            )

        model = self.get(name).variant(variant).model
        await self._commit(edit)
        await self._invalidate([f"route:{name}", f"model:{model}"])
        return self.get(name)

    async def reload(self, who: str, check: TableCheck | None = None) -> tuple[bool, str]:
        """Re-read the routes file. A bad file leaves the serving table untouched and says why; so does a table
        that `check` refuses (it raises a MeshError, which is passed on). With a control store the file's table
        replaces the shared one: the audited reset of every replica."""
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

        def edit(current: RouteTable) -> Edit:
            old = current.routes
            before = {name: _weights(r) for name, r in old.items()}
            changes = [
                RouteChange(name, who, "reload", "routes file reloaded")
                for name in sorted(old.keys() | table.routes.keys())
                if _changed(old.get(name), table.routes.get(name))
            ]
            return table, [(who, "reload", "*", before, _all_weights(table), "")], changes

        await self._commit(edit)
        await self._invalidate([f"route:{name}" for name in table.routes])
        return True, ""

    def _refuse(self, who: str, reason: str) -> str:
        log.warning("routes reload refused; the old routes keep serving", extra={"error": reason})
        self.audit.append(who, "reload_refused", "*", None, None, reason)
        return reason


def _all_weights(table: RouteTable) -> dict[str, dict[str, float]]:
    return {name: _weights(r) for name, r in table.routes.items()}


def _document(table: RouteTable, changes: list[RouteChange], rollouts: dict) -> dict:
    """The store's document: the table as a routes file would declare it, what the last change was, and the
    rollouts' state."""
    first = changes[0] if changes else RouteChange("*", "gateway", "sync")
    return {
        "table": table.model_dump(mode="json"),
        "change": {"who": first.who, "action": first.action, "reason": first.reason},
        "rollouts": rollouts,
    }


def _changed(before: Route | None, after: Route | None) -> bool:
    if before is None or after is None:
        return before is not after
    return before.model_dump() != after.model_dump()
