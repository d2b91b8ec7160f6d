import pytest
from pydantic import ValidationError

from meshserve.feature.registry import FeatureRegistry, load_registry


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
