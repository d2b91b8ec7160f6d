"""Which Triton replica serves the next request: pure policy, no I/O (the clock and the RNG are injected).

Power of two choices: two replicas drawn at random among those that can serve the model, the one with the lower
expected wait wins. The expected wait is (in-flight + 1) x the latency it has been answering with, a peak EWMA
(Finagle's): a slower answer counts at once, a faster one pulls the average down over `decay_s`. So a slowed
replica gets only what the others cannot take sooner, a replica never measured (just started, or silent for
`stale_s`) is assumed as fast as the best, and no replica's in-flight work is ever ignored.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Replica", "ReplicaPicker"]


@dataclass(slots=True, eq=False)
class Replica:
    name: str  # its address, for logs
    healthy: bool = False
    # the ready (model, version) pairs it last reported; None until it has been asked
    models: frozenset[tuple[str, str]] | None = None
    model_names: frozenset[str] = field(default_factory=frozenset)
    in_flight: int = 0
    ewma_s: float | None = None
    observed_at: float = -math.inf

    def serves(self, model: str, version: str) -> bool:
        if self.models is None:
            return True
        return (model, version) in self.models if version else model in self.model_names


class ReplicaPicker:
    def __init__(
        self,
        names: Sequence[str],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        decay_s: float = 2.0,
        stale_s: float = 5.0,
    ) -> None:
        self.replicas = [Replica(name) for name in names]
        self._rng = rng or random.Random()
        self._clock = clock
        self.decay_s = decay_s
        self.stale_s = stale_s

    # -- what the health checks learn ---------------------------------------------------------------------------
    def update(
        self, replica: Replica, healthy: bool, models: Iterable[tuple[str, str]] | None = None
    ) -> None:
        replica.healthy = healthy
        if models is not None:
            replica.models = frozenset(models)
            replica.model_names = frozenset(name for name, _ in replica.models)

    def any_healthy(self) -> bool:
        return any(r.healthy for r in self.replicas)

    def healthy(self) -> list[Replica]:
        return [r for r in self.replicas if r.healthy]

    # -- per request ------------------------------------------------------------------------------------------------
    def candidates(self, model: str, version: str, exclude: Replica | None = None) -> list[Replica]:
        """Healthy replicas that report the model ready; if none do (an index not refreshed yet), every healthy
        one, and if none is healthy, every replica: Triton's own error then beats one made up here. `exclude`
        (the replica a request just failed on) is never among them."""
        replicas = [r for r in self.replicas if r is not exclude]
        healthy = [r for r in replicas if r.healthy]
        return [r for r in healthy if r.serves(model, version)] or healthy or replicas

    def pick(self, model: str = "", version: str = "", exclude: Replica | None = None) -> Replica:
        """A replica for the request (`exclude` never: there must be another)."""
        pool = self.candidates(model, version, exclude)
        if len(pool) == 1:
            return pool[0]
        a, b = self._rng.sample(pool, 2)
        now = self._clock()
        best = self._best_ewma(pool, now)
        return a if self._cost(a, now, best) <= self._cost(b, now, best) else b

    def started(self, replica: Replica) -> None:
        replica.in_flight += 1

    def finished(self, replica: Replica, latency_s: float) -> None:
        replica.in_flight -= 1
        now = self._clock()
        if replica.ewma_s is None or latency_s >= replica.ewma_s or self._stale(replica, now):
            replica.ewma_s = latency_s  # peak: slowing down shows at once
        else:
            weight = math.exp(-max(0.0, now - replica.observed_at) / self.decay_s)
            replica.ewma_s = replica.ewma_s * weight + latency_s * (1 - weight)
        replica.observed_at = now

    # -- cost ---------------------------------------------------------------------------------------------------
    def _stale(self, replica: Replica, now: float) -> bool:
        return replica.in_flight == 0 and now - replica.observed_at > self.stale_s

    def _ewma(self, replica: Replica, now: float) -> float | None:
        return None if replica.ewma_s is None or self._stale(replica, now) else replica.ewma_s

    def _best_ewma(self, pool: Sequence[Replica], now: float) -> float:
        known = [e for r in pool if (e := self._ewma(r, now)) is not None]
        return min(known) if known else 1.0  # nothing measured: in-flight counts alone decide

    def _cost(self, replica: Replica, now: float, best: float) -> float:
        ewma = self._ewma(replica, now)
        return (replica.in_flight + 1) * (best if ewma is None else ewma)
