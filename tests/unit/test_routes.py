import random

import pytest
from pydantic import ValidationError

from gateway.routes import Route, RouteTable, choose_variant, load_routes
from meshserve.core.errors import NotFound


def route(*weights: float) -> Route:
    return Route(
        variants=[
            {"name": f"v{n}", "model": "m", "version": str(n + 1), "weight": w} for n, w in enumerate(weights)
        ]
    )


def test_weighted_split_matches_weights_within_one_point():
    rng = random.Random(7)
    r = route(90, 10)
    picks = [choose_variant(r, rng).name for _ in range(10_000)]
    assert abs(picks.count("v1") / 10_000 - 0.10) < 0.01


def test_zero_weight_variant_is_never_chosen():
    rng = random.Random(1)
    assert {choose_variant(route(0, 100), rng).name for _ in range(2000)} == {"v1"}
    assert {choose_variant(route(100, 0), rng).name for _ in range(2000)} == {"v0"}


def test_requested_version_pins_its_variant_and_unknown_version_is_not_found():
    r = route(100, 0)
    assert choose_variant(r, random.Random(), version="2").name == "v1"
    with pytest.raises(NotFound, match="version '9'"):
        choose_variant(r, random.Random(), version="9")


def test_primary_is_the_heaviest_variant():
    assert route(10, 90).primary.name == "v1"


def test_routes_without_positive_weight_or_with_duplicate_names_are_refused():
    with pytest.raises(ValidationError, match="positive weight"):
        route(0, 0)
    with pytest.raises(ValidationError, match="unique"):
        Route(variants=[{"name": "a", "model": "m", "weight": 1}, {"name": "a", "model": "m", "weight": 1}])
    with pytest.raises(ValidationError, match="weight"):
        route(-1)


def test_unknown_route_is_not_found_and_names_the_known_ones():
    table = RouteTable(routes={"fraud": route(1)})
    with pytest.raises(NotFound, match="unknown route 'nope'; routes: fraud"):
        table.get("nope")


def test_embedded_routes_serve_fraud_v1_as_stable_and_v2_as_canary():
    fraud = load_routes().get("fraud")
    assert [(v.name, v.model, v.version) for v in fraud.variants] == [
        ("stable", "fraud", "1"),
        ("canary", "fraud", "2"),
    ]
    assert fraud.primary.name == "stable"
