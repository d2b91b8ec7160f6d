from gateway.serving.cache_keys import decode_answer, encode_answer, prediction_key


def key(**overrides):
    args = dict(route="fraud", variant="stable", model="fraud", version="1", entity_key="acct-1",
                request_features={"amount": 10.0, "merchant_category": 3})  # fmt: skip
    args.update(overrides)
    return prediction_key(**args)


def test_key_is_deterministic_and_independent_of_feature_order_and_wire_type():
    assert key() == key(request_features={"merchant_category": 3.0, "amount": 10})


def test_every_part_of_the_identity_changes_the_key():
    base = key()
    variants = [
        key(route="other"), key(variant="canary"), key(model="fraud2"), key(version="2"), key(entity_key="acct-2"),
        key(request_features={"amount": 10.5, "merchant_category": 3}),
        key(request_features={"amount": 10.0}),
    ]  # fmt: skip
    assert len({base, *variants}) == len(variants) + 1


def test_key_names_its_version_so_a_new_version_never_reads_old_entries():
    assert key(version="2").startswith("p2:fraud:stable:fraud:2:")


def test_an_answer_round_trips_with_its_score_as_float32_and_the_features_scored_with_defaults():
    assert decode_answer(encode_answer((0.25, ()))) == (0.25, ())
    assert encode_answer((0.25, ())) == encode_answer((0.25, ()))[:4]  # nothing defaulted: the score alone
    assert decode_answer(encode_answer((0.5, ("avg_amount_30d", "txn_count_24h")))) == (
        0.5,
        ("avg_amount_30d", "txn_count_24h"),
    )
