"""The rule for weights set through the admin API (`meshserve canary weights`), in one place for every client.

Weights are shares of a route's traffic: each named variant must exist, each weight be a finite number >= 0, and
the route's weights (the named ones changed, the others kept) must not all be zero. They are then scaled to sum
to 100, so what every client shows is the percentage of traffic each variant gets (stable=90 canary=20 is
81.8 % / 18.2 %). Pure: no gRPC, no live state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from gateway.routing.routes import Route
from meshserve.core.errors import InvalidArgument

TOTAL = 100.0


def normalised_weights(route_name: str, route: Route, requested: Mapping[str, float]) -> dict[str, float]:
    """Every variant's weight after `requested` is applied, summing to 100; InvalidArgument naming the weight."""
    if not requested:
        raise InvalidArgument("weights: none given; expected variant=weight for some of " + _names(route))
    known = {v.name for v in route.variants}
    for name, weight in requested.items():
        if name not in known:
            raise InvalidArgument(
                f"weights.{name}: route {route_name!r} has no variant {name!r}; {_names(route)}"
            )
        if not math.isfinite(weight) or weight < 0:
            raise InvalidArgument(f"weights.{name}: must be a finite number >= 0, got {weight:g}")
    weights = {v.name: float(requested.get(v.name, v.weight)) for v in route.variants}
    total = sum(weights.values())
    if total <= 0:
        raise InvalidArgument(f"weights: route {route_name!r} would have no variant with a positive weight")
    if total == TOTAL:
        return weights
    return {name: weight * TOTAL / total for name, weight in weights.items()}


def _names(route: Route) -> str:
    return "variants: " + ", ".join(v.name for v in route.variants)
