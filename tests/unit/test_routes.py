import random

import pytest
from pydantic import ValidationError

from gateway.routing.routes import (
    LISTED_ROUTES,
    Route,
    RoutesFileError,
    RouteTable,
    choose_variant,
    load_routes,
    parse_routes,
    unknown_model,
)
from meshserve.core.errors import InvalidArgument, NotFound


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


def test_unknown_route_is_not_found_in_meshserves_words_listing_the_routes_when_few():
    table = RouteTable(routes={"fraud": route(1), "churn": route(1)})
    with pytest.raises(NotFound, match="^unknown route 'nope'; routes: churn, fraud$"):
        table.get("nope")
    many = RouteTable(routes={f"r{n:02d}": route(1) for n in range(LISTED_ROUTES + 1)})
    with pytest.raises(NotFound, match=rf"^unknown route 'nope' \({LISTED_ROUTES + 1} routes are served\)$"):
        many.get("nope")
    with pytest.raises(NotFound, match="^unknown route 'nope'; no routes are served$"):
        RouteTable().get("nope")


def test_the_open_inference_protocol_keeps_tritons_words_and_names_no_other_route():
    assert str(unknown_model("nope")) == "Request for unknown model: 'nope' is not found"


def test_embedded_routes_serve_fraud_v1_as_stable_and_v2_as_canary():
    fraud = load_routes().get("fraud")
    assert [(v.name, v.model, v.version) for v in fraud.variants] == [
        ("stable", "fraud", "1"),
        ("canary", "fraud", "2"),
    ]
    assert fraud.primary.name == "stable"


def sticky_route(canary_weight: float) -> Route:
    return Route(
        sticky={"key": "entity"},
        variants=[
            {"name": "stable", "model": "m", "version": "1", "weight": 100 - canary_weight},
            {"name": "canary", "model": "m", "version": "2", "weight": canary_weight},
        ],
    )


ENTITIES = [f"acct-{n:05d}" for n in range(10_000)]


def assignment(canary_weight: float) -> dict[str, str]:
    route = sticky_route(canary_weight)
    return {e: choose_variant(route, random.Random(), sticky_key=e).name for e in ENTITIES}


@pytest.mark.parametrize("weight", [5, 10, 25, 50])
def test_sticky_split_share_is_within_one_point_of_the_weight(weight):
    share = list(assignment(weight).values()).count("canary") / len(ENTITIES)
    assert abs(share - weight / 100) < 0.01


def test_sticky_assignment_is_stable_and_monotone_while_ramping():
    at5, at25, at50 = assignment(5), assignment(25), assignment(50)
    assert assignment(5) == at5  # same entity, same variant, every time
    for earlier, later in ((at5, at25), (at25, at50)):
        moved_back = [e for e in ENTITIES if earlier[e] == "canary" and later[e] == "stable"]
        assert not moved_back
    assert sum(v == "canary" for v in at50.values()) > sum(v == "canary" for v in at5.values())


def test_override_header_forces_a_variant_and_an_unknown_one_is_invalid():
    route = sticky_route(0)
    assert choose_variant(route, random.Random(), sticky_key="x", forced="canary").name == "canary"
    with pytest.raises(InvalidArgument, match="no variant 'blue'"):
        choose_variant(route, random.Random(), forced="blue")


def test_routes_file_errors_name_the_field_path(tmp_path):
    bad = tmp_path / "routes.yaml"
    bad.write_text(
        "routes:\n  fraud:\n    variants:\n      - {name: a, model: m, weight: 1}\n      - {name: b, model: m, weight: -3}\n"
    )
    with pytest.raises(RoutesFileError, match=r"routes\.fraud\.variants\.1\.weight: Input should be greater"):
        load_routes(bad)
    bad.write_text(
        "routes:\n  fraud:\n    variants: [{name: a, model: m, weight: 1}]\n    fallback: [ghost]\n"
    )
    with pytest.raises(RoutesFileError, match=r"routes\.fraud: .*unknown variant 'ghost'"):
        load_routes(bad)
    bad.write_text("routes: [unclosed")
    with pytest.raises(RoutesFileError, match="routes.yaml"):
        load_routes(bad)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("routes: {r: [\n", "line 2 column 1: expected the node content, but found '<stream end>'"),
        ("routes:\n  r: x: y\n", "line 2 column 7: mapping values are not allowed here"),
        ("routes:\n\tr: {}\n", "line 2 column 1: found character '\\t' that cannot start any token"),
    ],
)
def test_a_routes_file_that_is_not_yaml_is_one_line_naming_line_column_and_problem(tmp_path, text, where):
    bad = tmp_path / "routes.yaml"
    bad.write_text(text)
    with pytest.raises(RoutesFileError) as refused:
        load_routes(bad)
    assert str(refused.value) == f"routes file {bad}: {where}"
    bad.write_bytes(b"routes: {r: \xff}\n")
    with pytest.raises(RoutesFileError, match=r"^routes file .*: not UTF-8 text \(invalid start byte\)$"):
        load_routes(bad)


def test_a_copy_of_a_route_recomputes_what_the_route_computes_once():
    route = parse_routes(
        {"routes": {"r": {"fallback": ["b"], "variants": [
            {"name": "a", "model": "m", "version": "1", "weight": 90},
            {"name": "b", "model": "m", "version": "2", "weight": 10}]}}},
        "test",
    ).routes["r"]  # fmt: skip
    assert route.primary.name == "a" and route.cumulative_weights == [90, 100]
    assert [v.name for v in route.tiers(route.variant("a"))] == ["a", "b"]
    flipped = route.model_copy(update={"variants": [v.model_copy(update={"weight": 100 - v.weight})
                                                    for v in route.variants]})  # fmt: skip
    assert flipped.primary.name == "b" and flipped.cumulative_weights == [10, 100]
    assert route.with_weights({"a": 0, "b": 100}).cumulative_weights == [0, 100]


def _with_rollout(**plan) -> dict:
    return {
        "routes": {
            "fraud": {
                "variants": [
                    {"name": "stable", "model": "fraud", "version": "1", "weight": 100},
                    {"name": "canary", "model": "fraud", "version": "3", "weight": 0},
                ],
                "shadows": [{"variant": "canary", "percent": 100}],
                "rollout": {"canary": "canary", "steps": [5, 25, 50, 100], "interval_s": 600, **plan},
            }
        }
    }


def test_a_rollout_plan_takes_quality_criteria_and_a_required_shadow():
    quality = {"min_labels": 300, "max_wait_s": 7200, "alpha": 0.1, "max_auc_decrease": 0.01,
               "max_log_loss_ratio": 1.05}  # fmt: skip
    plan = parse_routes(_with_rollout(quality=quality, require_shadow="canary"), "test").get("fraud").rollout
    assert plan.quality.criteria == [("auc", 0.01), ("log_loss", 1.05)]
    assert (plan.quality.min_labels, plan.quality.max_wait_s, plan.quality.alpha) == (300, 7200, 0.1)
    assert plan.require_shadow == "canary"
    defaults = parse_routes(_with_rollout(quality={"max_log_loss_ratio": 1.02}), "test").get("fraud").rollout
    assert (defaults.quality.min_labels, defaults.quality.max_wait_s, defaults.quality.alpha) == (
        200,
        14400,
        0.05,
    )
    assert defaults.quality.criteria == [("log_loss", 1.02)] and defaults.require_shadow is None
    assert (
        parse_routes(_with_rollout(), "test").get("fraud").rollout.quality is None
    )  # as before: errors, p99


@pytest.mark.parametrize(
    ("plan", "says"),
    [
        ({"quality": {"min_labels": 100}}, "quality criteria need max_auc_decrease or max_log_loss_ratio"),
        ({"quality": {"max_auc_decrease": 0.01, "max_wait_s": 60}},
         "quality.max_wait_s (60) must be at least interval_s (600)"),
        ({"quality": {"max_auc_decrease": 0.01, "alpha": 1}}, "alpha: Input should be less than 1"),
        ({"quality": {"max_auc_decrease": -0.01}}, "max_auc_decrease: Input should be greater than or equal to 0"),
        ({"quality": {"max_auc_decrease": 0.01, "lag": 3}}, "lag: Extra inputs are not permitted"),
        ({"require_shadow": "canary"}, "require_shadow needs quality criteria to judge the shadow on"),
        ({"require_shadow": "stable", "quality": {"max_auc_decrease": 0.01}},
         "rollout.require_shadow names 'stable', which is not a shadow of this route; shadows: ['canary']"),
    ],
)  # fmt: skip
def test_a_quality_plan_that_cannot_be_judged_is_refused_naming_why(plan, says):
    with pytest.raises(RoutesFileError) as refused:
        parse_routes(_with_rollout(**plan), "routes file r.yaml")
    assert says in str(refused.value)
