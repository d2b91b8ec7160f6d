"""A route's quality block: its defaults, what it refuses (each problem named by field), the sample route's, and
that a block switched off logs nothing."""

from __future__ import annotations

import pytest

from gateway.routing.routes import Quality, QualityTask, RoutesFileError, load_routes, parse_routes

VARIANTS = [{"name": "stable", "model": "fraud", "version": "1", "weight": 100}]


def route_with(quality) -> dict:
    return {"routes": {"fraud": {"variants": VARIANTS, "quality": quality}}}


def test_the_sample_route_logs_its_answers_as_the_contract_says():
    fraud = load_routes().get("fraud")
    assert fraud.quality == Quality(enabled=True, task="binary", output="score", index=0, threshold=0.5,
                                    sample_features=0.1)  # fmt: skip
    assert fraud.logged is fraud.quality


def test_defaults_a_binary_score_in_column_0_of_output_score_without_features():
    quality = parse_routes(route_with({}), "test").get("fraud").quality
    assert quality == Quality()
    assert (quality.enabled, quality.task, quality.output, quality.index, quality.threshold,
            quality.sample_features) == (True, QualityTask.BINARY, "score", 0, 0.5, 0.0)  # fmt: skip


def test_a_route_without_the_block_or_with_it_off_logs_nothing():
    table = parse_routes({"routes": {"a": {"variants": VARIANTS}, "b": {"variants": VARIANTS,
                                                                      "quality": {"enabled": False}}}}, "test")  # fmt: skip
    assert table.get("a").logged is None and table.get("b").logged is None


@pytest.mark.parametrize(
    ("quality", "problem"),
    [
        ({"task": "ranking"}, "routes.fraud.quality.task: Input should be 'binary' or 'regression'"),
        ({"index": -1}, "routes.fraud.quality.index: Input should be greater than or equal to 0"),
        ({"sample_features": 1.5}, "routes.fraud.quality.sample_features: Input should be less than or equal to 1"),
        ({"output": ""}, "routes.fraud.quality.output: String should have at least 1 character"),
        ({"threshold": 2}, "a binary route's threshold is a probability in [0, 1], got 2.0"),
        ({"threshold": float("nan")}, "routes.fraud.quality.threshold: Input should be a finite number"),
        ({"score": "p"}, "routes.fraud.quality.score: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_a_block_that_cannot_be_served_is_refused_naming_the_field(quality, problem):
    with pytest.raises(RoutesFileError) as caught:
        parse_routes(route_with(quality), "routes file r.yaml")
    assert problem in str(caught.value)


def test_a_regression_routes_threshold_is_any_number():
    quality = parse_routes(route_with({"task": "regression", "threshold": 250.0}), "t").get("fraud").quality
    assert quality.task is QualityTask.REGRESSION and quality.threshold == 250.0


def test_the_block_survives_the_control_stores_json_and_a_weight_change():
    route = load_routes().get("fraud")
    assert route.with_weights({"canary": 5}).quality == route.quality
    table = load_routes()
    assert parse_routes(table.model_dump(mode="json"), "store").get("fraud").quality == route.quality
