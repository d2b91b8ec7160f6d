"""Routes: what clients call (a route name) and which Triton model versions answer. Pure and unit-testable."""

from __future__ import annotations

import random
from bisect import bisect_right
from itertools import accumulate
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from meshserve.core.errors import NotFound
from meshserve.defaults import load_yaml

__all__ = ["CachePolicy", "Route", "RouteTable", "Variant", "choose_variant", "load_routes"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variant(_Strict):
    name: str
    model: str  # the Triton model
    version: str = ""  # "" = the highest version Triton serves
    weight: float = Field(ge=0)


class CachePolicy(_Strict):
    enabled: bool = True
    ttl_s: float = Field(30.0, gt=0)


class Route(_Strict):
    variants: list[Variant] = Field(min_length=1)
    timeout_ms: int = Field(1000, gt=0)
    cache: CachePolicy = CachePolicy()

    @model_validator(mode="after")
    def _weights_and_names(self) -> Route:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError("at least one variant needs a positive weight")
        return self

    @property
    def primary(self) -> Variant:
        """The variant with the most weight: it answers metadata questions for the route."""
        return max(self.variants, key=lambda v: v.weight)


class RouteTable(_Strict):
    routes: dict[str, Route]

    def get(self, name: str) -> Route:
        route = self.routes.get(name)
        if route is None:
            raise NotFound(f"unknown route {name!r}; routes: {', '.join(sorted(self.routes)) or 'none'}")
        return route


def choose_variant(route: Route, rng: random.Random, version: str = "") -> Variant:
    """Weighted random choice by cumulative weight; a requested model version pins its variant."""
    if version:
        for variant in route.variants:
            if variant.version == version:
                return variant
        served = [v.version for v in route.variants]
        raise NotFound(f"no variant of this route serves version {version!r}; versions: {served}")
    cumulative = list(accumulate(v.weight for v in route.variants))
    return route.variants[bisect_right(cumulative, rng.random() * cumulative[-1])]


def load_routes(path: Path | None = None) -> RouteTable:
    return RouteTable.model_validate(load_yaml(path, "routes.yaml"))
