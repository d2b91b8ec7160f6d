"""The gateway's admin API on its own port: live routes, weights, promotion, rollback, rollouts, reload, audit.

Every RPC needs role admin: the admin token, an API key or JWT with the role, or the `admin` client certificate.
Only where nothing asks for a credential (no admin token file, authentication not required: a local mesh of
one's own, on loopback) is an anonymous caller let in. The audit log's `who` is the caller's principal, and
every refused request is audited too (action `denied`, the method, the reason, the peer address).
"""

from __future__ import annotations

import json

from gateway.control.audit import AuditEntry, AuditLog
from gateway.rollout.bluegreen import ModelLifecycle
from gateway.rollout.canary import Judgement, RolloutController, Window
from gateway.routing.dispatch import Dispatcher
from gateway.routing.live import LiveRoutes
from gateway.routing.shadow import ShadowRunner
from gateway.routing.weights import normalised_weights
from gateway.serving.catalog import ModelCatalog
from gateway.serving.clients import InferenceClient
from gateway.serving.prediction_cache import PredictionCache
from meshserve.admin.v1 import admin_pb2, admin_pb2_grpc
from meshserve.core import tls
from meshserve.core.auth import ADMIN_ROLE, ANONYMOUS, AuthConfig, Authenticator, Principal, require_role
from meshserve.core.context import call_headers, current_principal, set_peer
from meshserve.core.errors import InvalidArgument, MeshError
from meshserve.core.lifecycle import GrpcService
from meshserve.core.settings import ServiceSettings
from meshserve.feature.drift import DriftMonitor
from meshserve.quality import Comparison

UNGUARDED_PREFIXES = ("/grpc.health.v1.Health/",)


def _who() -> str:
    """The authenticated caller's name (the call guard set it), for the audit log."""
    return current_principal().name


def _window(w: Window) -> admin_pb2.JudgedWindow:
    return admin_pb2.JudgedWindow(
        variant=w.variant, requests=w.requests, errors=w.errors, error_rate=w.error_rate, p99_seconds=w.p99_s
    )


def to_comparison(c: Comparison) -> admin_pb2.Comparison:
    return admin_pb2.Comparison(
        metric=c.metric, verdict=c.verdict, canary=c.canary, baseline=c.baseline, estimate=c.estimate,
        lower=c.lower, upper=c.upper, limit=c.limit, e_value=c.statistic, alpha=c.alpha,
        canary_samples=c.canary_samples, baseline_samples=c.baseline_samples, min_samples=c.min_samples,
    )  # fmt: skip


def to_judgement(j: Judgement) -> admin_pb2.Judgement:
    return admin_pb2.Judgement(
        time=j.at, step=j.step, verdict=j.verdict, canary=_window(j.canary), baseline=_window(j.baseline),
        max_error_rate_increase=j.max_error_rate_increase, max_p99_ratio=j.max_p99_ratio,
        min_requests=j.min_requests, reason=j.reason, comparisons=[to_comparison(c) for c in j.comparisons],
        shadow=j.shadow,
    )  # fmt: skip


def _reason(entry: AuditEntry) -> str:
    """The entry's reason; for a refused request also what and from where (the message has no fields for them)."""
    if entry.action != "denied":
        return entry.reason
    return f"{entry.method}: {entry.reason} (peer {entry.peer or 'unknown'})"


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        live: LiveRoutes,
        dispatcher: Dispatcher,
        shadow: ShadowRunner,
        rollouts: RolloutController,
        catalog: ModelCatalog,
        inference: InferenceClient,
        cache: PredictionCache,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.cache = cache
        self.drift = drift
        self.catalog = catalog
        self.inference = inference
        self.live = live
        self.dispatcher = dispatcher
        self.shadow = shadow
        self.rollouts = rollouts  # stops a route's rollout by itself on any manual change to the route
        self.lifecycle = ModelLifecycle(live, catalog, inference)

    def _status(self, name: str) -> admin_pb2.RouteStatus:
        route = self.live.get(name)
        variants = []
        for v in route.variants:
            requests, errors = self.dispatcher.stats.totals.get((name, v.name), (0, 0))
            variants.append(
                admin_pb2.VariantStatus(
                    name=v.name, model=v.model, version=v.version, weight=v.weight, requests=requests, errors=errors,
                    ejected=self.dispatcher.ejection.ejected(f"{name}/{v.name}"),
                )
            )  # fmt: skip
        shadows = []
        looks = self.rollouts.shadow_looks
        for s in route.shadows:
            tally = self.shadow.tally(name, s.variant)
            look = looks.get((name, s.variant))
            shadows.append(
                admin_pb2.ShadowStatus(
                    variant=s.variant, percent=s.percent, compared=tally.compared, failed=tally.failed,
                    mean_abs_score_diff=tally.mean_abs_diff, label_agreement=tally.label_agreement,
                    quality=[to_comparison(c) for c in (look.found or ())] if look else [],
                    quality_note=look.note if look else "",
                )
            )  # fmt: skip
        state = self.rollouts.state(name)
        rollout = admin_pb2.RolloutStatus(
            state=state.state, step=state.step, last_reason=state.last_reason, gate=state.gate
        )
        if state.judgement is not None:
            rollout.last_judgement.CopyFrom(to_judgement(state.judgement))
        if route.rollout is not None:
            rollout.canary = route.rollout.canary
            rollout.steps.extend(route.rollout.steps)
        return admin_pb2.RouteStatus(
            route=name, variants=variants, fallback=route.fallback, sticky=route.sticky.key.value,
            shadows=shadows, rollout=rollout,
        )  # fmt: skip

    async def ListRoutes(self, request, context):
        return admin_pb2.ListRoutesResponse(
            routes=[self._status(name) for name in sorted(self.live.routes)],
            routes_file=str(self.live.path or "embedded routes.yaml"),
        )

    async def SetWeights(self, request, context):
        weights = normalised_weights(request.route, self.live.get(request.route), dict(request.weights))
        await self.live.change_weights(request.route, weights, _who())
        return self._status(request.route)

    async def Promote(self, request, context):
        await self.live.promote(request.route, request.variant, _who())
        return self._status(request.route)

    async def Rollback(self, request, context):
        await self.live.rollback(request.route, _who(), request.reason)
        return self._status(request.route)

    async def SetRollout(self, request, context):
        action = admin_pb2.SetRolloutRequest
        if request.action == action.START:
            await self.rollouts.begin(request.route, _who())
        elif request.action == action.PAUSE:
            await self.rollouts.set_paused(request.route, True)
        elif request.action == action.RESUME:
            await self.rollouts.set_paused(request.route, False)
        else:
            raise InvalidArgument("action must be START, PAUSE or RESUME")
        return self._status(request.route)

    async def Reload(self, request, context):
        applied, error = await self.lifecycle.reload(_who())
        return admin_pb2.ReloadResponse(applied=applied, error=error, routes=sorted(self.live.routes))

    async def GetAuditLog(self, request, context):
        entries = await self.live.audit.recent(request.limit or 100)
        return admin_pb2.GetAuditLogResponse(
            entries=[
                admin_pb2.AuditEntry(
                    time=e.time, who=e.who, action=e.action, route=e.route, reason=_reason(e),
                    before=json.dumps(e.before), after=json.dumps(e.after),
                )
                for e in entries
            ]
        )  # fmt: skip

    async def SwitchVersion(self, request, context):
        await self.lifecycle.switch(
            request.route, request.variant, request.version, _who(), request.warmup_requests or 8,
            context.time_remaining(),
        )  # fmt: skip
        return self._status(request.route)

    async def CacheStats(self, request, context):
        names = [request.route] if request.route else sorted(self.live.routes)
        for name in names:
            self.live.get(name)
        routes = []
        for name in names:
            st = self.cache.route_stats(name)
            routes.append(
                admin_pb2.RouteCacheStats(
                    route=name, enabled=self.live.get(name).cache.enabled, near_hits=st.near_hits, hits=st.hits,
                    misses=st.misses, bypasses=st.bypasses, coalesced=st.coalesced, hit_ratio=st.hit_ratio,
                    invalidations=st.invalidations,
                )
            )  # fmt: skip
        return admin_pb2.CacheStatsResponse(routes=routes)

    async def InvalidateCache(self, request, context):
        self.live.get(request.route)
        generations = await self.cache.invalidate([f"route:{request.route}"])
        self.live.audit.append(_who(), "invalidate_cache", request.route, None, generations)
        return admin_pb2.InvalidateCacheResponse(generation=generations.get(f"route:{request.route}", 0))

    async def GetDrift(self, request, context):
        monitor = self.drift
        reply = admin_pb2.GetDriftResponse(threshold=monitor.threshold if monitor else 0.0)
        if monitor is None:
            return reply
        monitor.check()  # log any new crossing now, not only on the next periodic check
        for model in monitor.models:
            reply.samples[model] = monitor.samples(model)
            drifting = monitor.drifting(model)
            for feature, value in monitor.scores(model).items():
                reply.features.add(model=model, feature=feature, psi=value, drifting=feature in drifting)
        return reply


class AdminServer(GrpcService):
    """A second gRPC server inside the gateway process, so admin access can be firewalled apart from traffic."""

    name = "admin"

    def __init__(
        self,
        settings: ServiceSettings,
        servicer: AdminServicer,
        authenticator: Authenticator | None = None,
        audit: AuditLog | None = None,
        credential_required: bool = False,
    ) -> None:
        super().__init__(settings)
        self.servicer = servicer
        self.authenticator = authenticator or Authenticator(AuthConfig())
        self.audit = audit or servicer.live.audit
        self.credential_required = credential_required  # else an anonymous caller is let in (see the module)

    def guard(self):
        peer_check = super().guard()  # the TLS peer check, when tls_allowed_peers is set
        identify = self.settings.tls_cert_file is not None

        async def guard(context, method: str) -> Principal | None:
            if method.startswith(UNGUARDED_PREFIXES):
                return None
            peer = context.peer() or ""
            set_peer(peer)
            principal = ANONYMOUS
            try:
                if peer_check is not None:
                    peer_check(context, method)
                identity = tls.peer_identity(context.auth_context()) if identify else None
                principal = await self.authenticator.authenticate(
                    call_headers(), identity, required=self.credential_required
                )
                if not (principal.anonymous and not self.credential_required):
                    require_role(principal, ADMIN_ROLE, "the admin API")
            except MeshError as exc:
                self.audit.denied(principal.name, method, exc.message, peer)
                raise
            return principal

        return guard

    def register(self, server):
        admin_pb2_grpc.add_AdminServiceServicer_to_server(self.servicer, server)
        return [admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name]
