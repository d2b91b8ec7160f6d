import pytest
from pydantic import ValidationError

from meshserve.feature.registry import FeatureRegistry, allowed_range, load_registry
from meshserve.scoring.rows import RawRow, RowSchema
from services.feature.ingest import IncomingRow, InvalidRows, validate_rows


def test_embedded_registry_splits_request_and_stored_features_in_vector_order():
    registry = load_registry()
    assert registry.request_features("fraud") == ["amount", "merchant_category"]
    assert registry.stored_features("fraud") == ["avg_amount_30d", "txn_count_24h", "account_age_days"]
    assert registry.models["fraud"].input == "features"


def test_vector_naming_an_unknown_feature_is_refused():
    with pytest.raises(ValidationError, match="unknown feature 'nope'"):
        FeatureRegistry.model_validate(
            {
                "entities": {"account": {"join_key": "account_id"}},
                "features": {},
                "models": {"m": {"entity": "account", "input": "x", "output": "y", "vector": ["nope"]}},
            }
        )


@pytest.mark.parametrize(
    ("low", "high", "text"),
    [
        (0.0, None, "≥ 0"),
        (None, 9.0, "≤ 9"),
        (0.0, 9.0, "between 0 and 9"),
        (0.5, 1e6, "between 0.5 and 1000000"),
        (None, None, "any number"),
    ],
)
def test_a_range_names_only_the_bounds_it_has(low, high, text):
    assert allowed_range(low, high) == text


def test_an_out_of_range_row_says_the_range_without_a_missing_bound():
    rows = [IncomingRow(5, "a4", {"avg_amount_30d": -3}, None), IncomingRow(6, "a5", {"amount": 1}, None)]
    with pytest.raises(InvalidRows) as refused:
        validate_rows(load_registry(), "account", rows, now=0.0)
    assert refused.value.problems[0] == "line 5: avg_amount_30d=-3 is outside its range: must be ≥ 0"
    assert "None" not in refused.value.message


def test_an_out_of_range_request_feature_in_a_scoring_file_says_the_range():
    schema = RowSchema.for_model(load_registry(), "fraud")
    checked = schema.validate(RawRow(2, {"account_id": "a", "amount": "-5", "merchant_category": "12"}))
    assert checked.reason == "feature 'amount'=-5.0 is outside its range: must be between 0 and 1000000"
