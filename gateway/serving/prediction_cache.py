"""The gateway's side of prediction caching: a small near-cache in this process in front of the shared cache
service, scoped keys for invalidation, single-flight for identical misses, and counters. No gRPC here.

Never a new failure: a slow or failing cache service is bypassed within a small budget and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.routing.routes import Route
from gateway.serving.cache_keys import CachedAnswer, decode_answer, encode_answer
from gateway.serving.clients import CacheClient, CacheUnavailable
from meshserve.core.logs import Throttle
from meshserve.core.lru import LruTtlCache

log = logging.getLogger(__name__)


def prediction_scopes(route: str, model: str, entity: str, entity_key: str) -> list[str]:
    """What a cached prediction depends on: the route's live state, the model's weights, the entity's features."""
    return [f"route:{route}", f"model:{model}", f"entity:{entity}:{entity_key}"]


@dataclass
class RouteCacheStats:
    near_hits: int = 0
    hits: int = 0
    misses: int = 0
    bypasses: int = 0  # cache calls that failed or were too slow
    coalesced: int = 0  # misses that waited for an identical one in flight instead of scoring again
    invalidations: int = 0

    @property
    def hit_ratio(self) -> float:
        looked = self.near_hits + self.hits + self.misses
        return (self.near_hits + self.hits) / looked if looked else 0.0


@dataclass
class PredictionCache:
    client: CacheClient
    timeout_s: float
    near: LruTtlCache | None = None
    stats: dict[str, RouteCacheStats] = field(default_factory=dict)
    _in_flight: dict[str, asyncio.Future] = field(default_factory=dict)
    _storing: set[str] = field(default_factory=set)  # answered keys whose cache write is still under way
    _throttle: Throttle = field(
        default_factory=Throttle
    )  # one warning per route per 10 s while the cache is down

    def route_stats(self, route: str) -> RouteCacheStats:
        return self.stats.setdefault(route, RouteCacheStats())

    async def get(self, route_name: str, lookups: Sequence[tuple[str, list[str]]]) -> dict[str, CachedAnswer]:
        stats = self.route_stats(route_name)
        found: dict[str, CachedAnswer] = {}
        if self.near is not None:
            found = {k: decode_answer(v) for k, v in self.near.get_many([k for k, _ in lookups]).items()}
            stats.near_hits += len(found)
        remote = [(k, s) for k, s in lookups if k not in found]
        if not remote:
            return found
        try:
            hits = await self.client.get(remote, self.timeout_s)
        except CacheUnavailable as exc:
            stats.bypasses += 1
            if (held := self._throttle(f"read:{route_name}")) is not None:
                log.warning(
                    "cache bypassed on read",
                    extra={"reason": str(exc), "route": route_name, "since_last": held},
                )
            stats.misses += len(remote)
            return found
        stats.hits += len(hits)
        stats.misses += len(remote) - len(hits)
        if self.near is not None and hits:
            self.near.set_many(hits.items())
        return found | {k: decode_answer(v) for k, v in hits.items()}

    def put(
        self, route_name: str, route: Route, items: Sequence[tuple[str, list[str], CachedAnswer]]
    ) -> None:
        """Store answers without making the caller wait: near-cache now, cache service behind (the writes of
        concurrent requests travel as one Set)."""
        encoded = [(k, s, encode_answer(v)) for k, s, v in items]
        encoded = [(k, s, v) for k, s, v in encoded if len(k) + len(v) <= route.cache.max_entry_bytes]
        if not encoded:
            return
        if self.near is not None:
            self.near.set_many((k, v) for k, _, v in encoded)
        keys = [k for k, _, _ in encoded]
        self._storing.update(keys)
        written = self.client.set_behind(encoded, route.cache.ttl_s, self.timeout_s)
        written.add_done_callback(lambda future: self._written(route_name, keys, future))

    def _written(self, route_name: str, keys: list[str], future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.route_stats(route_name).bypasses += 1  # the client logged the failed Set once
        for key in keys:  # written (or given up): readers find it in the cache from now on
            self._storing.discard(key)
            claimed = self._in_flight.get(key)
            if claimed is not None and claimed.done():
                del self._in_flight[key]

    async def invalidate(self, scopes: Sequence[str]) -> dict[str, int]:
        """Make every entry in these scopes unreachable, here and in the shared cache."""
        if self.near is not None:
            self.near.clear()  # it cannot tell scopes apart; it refills within its short TTL
        for scope in scopes:
            if scope.startswith("route:"):
                self.route_stats(scope.removeprefix("route:")).invalidations += 1
        return await self.client.invalidate(scopes, max(self.timeout_s, 1.0))

    def claim(self, keys: Sequence[str]) -> tuple[list[int], dict[int, asyncio.Future]]:
        """Single-flight for a batch of misses: the positions this caller must score (it leads them) and the
        answers it should wait for instead, because an identical miss is already being scored."""
        leading: list[int] = []
        following: dict[int, asyncio.Future] = {}
        loop = asyncio.get_running_loop()
        for n, key in enumerate(keys):
            future = self._in_flight.get(key)
            if future is not None:
                following[n] = future
            else:
                self._in_flight[key] = loop.create_future()
                leading.append(n)
        return leading, following

    def settle(self, key: str, result: object = None, error: BaseException | None = None) -> None:
        """Hand a led key's answer (or failure) to whoever waits for it. A failure releases the key at once; an
        answer stays claimable until `put` has written it to the cache service, so a request arriving in between
        is not a second miss."""
        future = self._in_flight.get(key)
        if future is None or future.done():
            return
        if error is not None:
            del self._in_flight[key]
            future.set_exception(error)
            future.exception()  # marked retrieved: followers see it, nobody is warned about it
        else:
            future.set_result(result)
            if key not in self._storing:
                del self._in_flight[key]

    async def drain(self) -> None:
        await self.client.drain()
