"""The gateway process: SERVING once its feature and inference dependencies are; admin API on its own port.
Callers are authenticated where each call is adopted (the call guard; REST from its headers) and authorized by
route in the handlers."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from importlib.metadata import version

from gateway.api.admin import AdminServer, AdminServicer
from gateway.api.http_server import HttpFrontend
from gateway.api.servicers import FeedbackServicer, OpenInferenceServicer, PredictionServicer, add_servicers
from gateway.control.audit import AuditLog, FeedbackAudit
from gateway.control.plane import ControlStoreUnavailable, RouteWatcher, WatcherCollector, open_store
from gateway.metrics import GatewayCollector
from gateway.rollout.canary import RolloutController, StatsPublisher
from gateway.routing.admission import Admission
from gateway.routing.dispatch import Dispatcher
from gateway.routing.live import LiveRoutes
from gateway.routing.routes import load_routes
from gateway.routing.shadow import ShadowRunner
from gateway.serving.catalog import ModelCatalog
from gateway.serving.clients import CacheClient, FeatureClient, InferenceClient, MonitorClient
from gateway.serving.feedback import FeedbackHandler
from gateway.serving.inference_api import InferenceApi
from gateway.serving.predict import PredictHandler
from gateway.serving.prediction_cache import PredictionCache
from gateway.serving.prediction_log import PredictionLog
from gateway.serving.repository import ModelRepository
from gateway.settings import GatewaySettings
from meshserve.core.auth import Authenticator, Principal
from meshserve.core.context import call_headers
from meshserve.core.errors import ErrorCode, MeshError
from meshserve.core.lifecycle import GrpcService
from meshserve.core.lru import LruTtlCache
from meshserve.core.settings import ServiceSettings
from meshserve.core.tls import ClientTls, peer_identity
from meshserve.feature.drift import DriftMonitor, load_profile
from meshserve.feature.registry import load_registry

log = logging.getLogger(__name__)
# Answered to anyone: health checkers and liveness probes ask them, and they tell nothing
UNGUARDED_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)


class GatewayService(GrpcService):
    name = "gateway"

    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__(settings)
        self.settings: GatewaySettings = settings
        self.authenticator = Authenticator(settings.auth_config())
        if settings.auth_required and not self.authenticator.configured:
            log.warning("authentication is required but no credential can be verified: set auth_api_keys_file, "
                        "auth_jwks or client certificates")  # fmt: skip
        audit = AuditLog(settings.audit_log)
        self.routes = LiveRoutes(load_routes(settings.routes_path), settings.routes_path, audit)
        self.audit = audit
        self.watcher: RouteWatcher | None = None
        # several replicas, one route table: the routes file only seeds an empty store
        if settings.control_store:
            store = open_store(settings.control_store, ClientTls.from_settings(settings))
            self.routes.store = audit.shared = store
            self.watcher = RouteWatcher(
                store, lambda: self.routes.revision, self.routes.sync, settings.control_poll_s
            )
        self.registry = load_registry(settings.registry_path)
        coalescing = settings.coalescing()
        tls = ClientTls.from_settings(settings)  # TLS to the services once a CA is set
        self.features = FeatureClient(settings.feature_url, coalescing, tls)
        self.cache = CacheClient(settings.cache_url, coalescing, tls)
        near = None
        if settings.near_cache_max_bytes:
            near = LruTtlCache(settings.near_cache_max_bytes, 4096, settings.near_cache_ttl_s)
        self.prediction_cache = PredictionCache(self.cache, settings.cache_timeout_s, near)
        self.routes.invalidate = self.prediction_cache.invalidate
        self.inference = InferenceClient(settings.inference_url, coalescing, tls)
        # the prediction log and labels; not a dependency the gateway waits for: its answers never need it
        self.monitor = (
            MonitorClient(settings.monitor_url, settings.monitor_timeout_s, tls)
            if settings.monitor_url
            else None
        )
        self.prediction_log = (
            PredictionLog(self.monitor.log, capacity=settings.prediction_log_queue,
                          batch=settings.prediction_log_batch)
            if self.monitor is not None
            else None
        )  # fmt: skip
        self.feedback_audit = FeedbackAudit(audit)
        self.feedback = FeedbackHandler(
            self.monitor, self.feedback_audit, auth_required=settings.auth_required
        )
        self.catalog = ModelCatalog(self.inference)
        self.dispatcher = Dispatcher(max_deadline_s=settings.max_deadline_s)
        policy = settings.admission_policy()
        self.admission = Admission(policy) if policy else Admission.unlimited()
        self.answers: Counter[tuple[str, str]] = Counter()  # (route, tier) -> answers
        self.shadow = ShadowRunner()
        self.rollouts = RolloutController(
            self.routes,
            self.dispatcher.stats,
            compare=self.monitor.compare if self.monitor is not None else None,
        )
        # several replicas: each publishes its outcomes for the judge, wherever its lease is; none without a store
        self.stats_publisher = (
            StatsPublisher(self.routes, self.dispatcher.stats, self.rollouts.holder)
            if self.watcher is not None
            else None
        )
        if self.watcher is not None:
            self.metrics.registry.register(WatcherCollector(self.watcher, lambda: self.rollouts.leading))
        profile = load_profile(settings.drift_profile)
        profile.check_registry(self.registry)
        self.drift = DriftMonitor(
            profile, window=settings.drift_window, threshold=settings.drift_threshold,
            min_samples=min(200, settings.drift_window),
        )  # fmt: skip
        self.predict = PredictHandler(
            self.routes,
            self.registry,
            self.catalog,
            self.features,
            self.prediction_cache,
            self.inference,
            self.dispatcher,
            self.shadow,
            self.drift,
            max_instances=settings.max_instances_per_predict,
            feature_timeout_s=settings.feature_timeout_s,
            admission=self.admission,
            prediction_log=self.prediction_log,
        )
        self.repository = ModelRepository(
            self.inference, self.routes, self.catalog, settings.repository_refresh_s
        )
        self._repository_task: asyncio.Task[None] | None = None
        self.api = InferenceApi(
            self.routes, self.catalog, self.inference, self.dispatcher, version("meshserve"),
            admission=self.admission, repository=self.repository, auth_required=settings.auth_required,
            prediction_log=self.prediction_log, registry=self.registry,
        )  # fmt: skip
        admin_settings = ServiceSettings(
            host=settings.admin_host,
            port=settings.admin_port,
            grace_s=settings.grace_s,
            reuse_port=settings.reuse_port,  # shared with the other gateway processes, as the client port
            **settings.tls_fields(),
        )
        self.admin = AdminServer(
            admin_settings,
            AdminServicer(
                self.routes,
                self.dispatcher,
                self.shadow,
                self.rollouts,
                self.catalog,
                self.inference,
                self.prediction_cache,
                self.drift,
            ),
            self.authenticator,
            audit,
            credential_required=settings.auth_required or settings.admin_token_file is not None,
        )
        self.http = (
            HttpFrontend(
                self.api, lambda: self.ready, settings.host, settings.http_port, settings.max_message_bytes,
                answers=self.answers, metrics=self.metrics, grace_s=settings.grace_s, tls=settings,
                reuse_port=settings.reuse_port, http_parser=settings.http_parser,
            )
            if settings.http
            else None
        )  # fmt: skip
        if self.http is not None:
            self.http.rest.authenticator = self.authenticator
            self.http.rest.feedback = self.feedback
        self.http_port: int | None = None
        self.metrics.registry.register(
            GatewayCollector(
                self.routes,
                self.dispatcher,
                self.shadow,
                self.rollouts,
                self.prediction_cache,
                self.drift,
                self.answers,
                self._coalescers,
                self.admission,
                prediction_log=self.prediction_log,
            )  # fmt: skip
        )
        self.ready = False

    def _coalescers(self) -> dict:
        return {**self.features.coalescers(), **self.cache.coalescers(), **self.inference.coalescers()}

    def guard(self):
        """The peer check (TLS), then the caller's credential: its principal is the call's from then on."""
        peer_check = super().guard()
        authenticator = self.authenticator
        identify = self.settings.tls_cert_file is not None

        async def guard(context, method: str) -> Principal | None:
            if peer_check is not None:
                peer_check(context, method)
            if method.startswith(UNGUARDED_PREFIXES):
                return None
            identity = peer_identity(context.auth_context()) if identify else None
            return await authenticator.authenticate(call_headers(), identity)

        return guard

    def register(self, server):
        oip = OpenInferenceServicer(self.api, lambda: self.ready, self.answers)
        predict = PredictionServicer(self.predict, self.answers)
        return add_servicers(server, predict, oip, FeedbackServicer(self.feedback))

    async def start(self) -> int:
        if self.watcher is not None:
            await self._first_sync()
        port = await super().start()
        self.admin_port = await self.admin.start()
        if self.http is not None:
            self.http_port = await self.http.start()
        self.rollouts.run()
        if self.prediction_log is not None:
            self.prediction_log.run()
        self.feedback_audit.run()
        if self.watcher is not None:
            self.watcher.run()
            self.audit.run(self.settings.control_poll_s)
        if self.stats_publisher is not None:
            self.stats_publisher.run()
        self._drift_task = asyncio.create_task(self._check_drift(), name="drift")
        return port

    async def _first_sync(self) -> None:
        """Serve the store's table from the first call on; an unreachable store leaves the routes file serving,
        adopted over as soon as the watcher reaches the store."""
        try:
            await asyncio.wait_for(self.routes.sync(), timeout=max(2.0, 10 * self.settings.control_poll_s))
            self.watcher.up = True
        except (ControlStoreUnavailable, TimeoutError) as exc:
            log.warning("control store unreachable at start; serving the routes file until it answers",
                        extra={"store": self.watcher.store.name, "error": getattr(exc, "message", "timeout")})  # fmt: skip

    async def _check_drift(self) -> None:
        while True:
            await asyncio.sleep(self.settings.drift_check_s)
            self.drift.check()  # logs a warning naming each feature that crossed the threshold

    async def until_ready(self) -> None:
        # The cache is not waited for: without it requests still succeed, only slower.
        timeout = self.settings.dependency_timeout_s
        await asyncio.gather(
            self.features.wait_until_serving(timeout), self.inference.wait_until_serving(timeout)
        )
        await self.repository.refresh()  # every model Triton serves is a name callers can use
        try:
            await self.api.triton_metadata.get()  # ServerMetadata answers with Triton's name and version
        except MeshError as exc:  # asked again by the first caller
            log.warning("Triton's server metadata not read yet", extra={"reason": exc.message})
        self._repository_task = asyncio.create_task(self.repository.follow(), name="repository")
        for name, route in self.routes.routes.items():
            for variant in route.variants:
                try:
                    await self.catalog.get(variant.model, variant.version)
                except MeshError as exc:
                    if exc.code is not ErrorCode.UNAVAILABLE:
                        raise
                    # a model the routes name but Triton lacks is a variant that is down (it falls back), not a
                    # reason for the whole gateway to refuse every other route
                    log.warning("variant not available in Triton; served as down until it is",
                                extra={"route": name, "variant": variant.name, "reason": exc.message})  # fmt: skip
        self.ready = True

    async def announce_shutdown(self) -> None:
        self.ready = False  # the Open Inference Protocol's ServerReady agrees with grpc health from now on
        await super().announce_shutdown()

    async def stop(self, grace: float | None = None) -> None:
        self.ready = False
        await self.rollouts.close()
        if self.stats_publisher is not None:
            await self.stats_publisher.close()
        if self.watcher is not None:
            await self.watcher.close()
        self._drift_task.cancel()
        if self._repository_task is not None:
            self._repository_task.cancel()
        await self.announce_shutdown()  # not ready on every protocol before any of them stops taking calls
        # REST drains alongside the admin API and before close() shuts the clients its requests use
        await asyncio.gather(self.admin.stop(grace), *([self.http.stop(grace)] if self.http else []))
        await super().stop(grace)

    async def close(self) -> None:
        await self.predict.drain()
        await self.shadow.drain()
        if self.prediction_log is not None:  # what is held goes out, briefly: the answers were given already
            await self.prediction_log.close(min(2.0, self.settings.grace_s))
        await self.feedback_audit.close()
        for client in (self.features, self.cache, self.inference, *([self.monitor] if self.monitor else [])):
            await client.close()
        if self.watcher is not None:
            await self.audit.close()
            await self.watcher.store.close()
