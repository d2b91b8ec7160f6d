"""The admin API's rule for weights (gateway/routing/weights.py): shares of the traffic, each >= 0 and finite, not all
zero, scaled to sum to 100; anything else INVALID_ARGUMENT naming the weight."""

from __future__ import annotations

import math

import pytest

from gateway.routing.routes import Route, Variant
from gateway.routing.weights import normalised_weights
from meshserve.core.errors import ErrorCode, MeshError

ROUTE = Route(
    variants=[
        Variant(name="stable", model="fraud", weight=100),
        Variant(name="canary", model="fraud", weight=0),
        Variant(name="shadow", model="fraud", weight=0),
    ]
)


def test_weights_that_sum_to_100_are_kept_and_unnamed_variants_keep_theirs():
    assert normalised_weights("fraud", ROUTE, {"stable": 95, "canary": 5}) == {
        "stable": 95.0, "canary": 5.0, "shadow": 0.0,
    }  # fmt: skip


def test_weights_are_scaled_to_sum_to_100():
    weights = normalised_weights("fraud", ROUTE, {"stable": 90, "canary": 20})
    assert weights == pytest.approx({"stable": 81.8181818, "canary": 18.1818182, "shadow": 0.0})
    assert sum(weights.values()) == pytest.approx(100)
    # the others' weights count too: canary=100 beside stable's 100 is half the traffic
    assert normalised_weights("fraud", ROUTE, {"canary": 100}) == {
        "stable": 50.0,
        "canary": 50.0,
        "shadow": 0.0,
    }
    assert normalised_weights("fraud", ROUTE, {"stable": 1, "canary": 3}) == {
        "stable": 25.0, "canary": 75.0, "shadow": 0.0,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({}, "weights: none given; expected variant=weight for some of variants: stable, canary, shadow"),
        (
            {"ghost": 10},
            "weights.ghost: route 'fraud' has no variant 'ghost'; variants: stable, canary, shadow",
        ),
        ({"canary": -1}, "weights.canary: must be a finite number >= 0, got -1"),
        ({"canary": math.nan}, "weights.canary: must be a finite number >= 0, got nan"),
        ({"canary": math.inf}, "weights.canary: must be a finite number >= 0, got inf"),
        ({"stable": 0}, "weights: route 'fraud' would have no variant with a positive weight"),
    ],
)
def test_bad_weights_are_invalid_argument_naming_the_weight(weights, message):
    with pytest.raises(MeshError) as failure:
        normalised_weights("fraud", ROUTE, weights)
    assert failure.value.code is ErrorCode.INVALID_ARGUMENT
    assert failure.value.message == message
