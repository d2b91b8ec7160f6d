"""Prediction ids: made fresh, checked when a caller brings its own (the field named), one per row, and sampled by
a hash of the id that every process computes alike."""

from __future__ import annotations

import re

import pytest

from meshserve.core.errors import InvalidArgument
from meshserve.core.prediction_ids import (
    MAX_PREDICTION_ID_LENGTH,
    check_base_for_rows,
    check_prediction_id,
    new_prediction_id,
    row_id,
    sampled,
)


def test_a_new_id_is_32_hex_characters_and_never_repeats():
    ids = {new_prediction_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


@pytest.mark.parametrize("good", ["txn-123", "a", "x" * MAX_PREDICTION_ID_LENGTH, "order 7/2024:A~", "!"])
def test_printable_ascii_ids_up_to_128_characters_are_taken_as_they_are(good):
    assert check_prediction_id(good, "instance 0: prediction_id") == good


@pytest.mark.parametrize(
    ("bad", "length"),
    [
        ("x" * (MAX_PREDICTION_ID_LENGTH + 1), 129),
        ("", 0),
        ("caf\u00e9", 4),
        ("tab\there", 8),
        ("new\nline", 8),
    ],
)
def test_other_ids_are_invalid_argument_naming_the_field(bad, length):
    with pytest.raises(InvalidArgument) as caught:
        check_prediction_id(bad, "header x-meshserve-prediction-id")
    message = caught.value.message
    assert message.startswith("header x-meshserve-prediction-id must be 1 to 128 printable ASCII characters")
    assert f"got {length} characters" in message


def test_rows_share_the_base_with_a_row_suffix_only_when_there_are_several():
    assert row_id("abc", 0, 1) == "abc"
    assert [row_id("abc", i, 3) for i in range(3)] == ["abc:0", "abc:1", "abc:2"]


def test_a_callers_base_must_leave_room_for_its_row_suffixes():
    base = "b" * 126
    assert check_base_for_rows(base, 1, "header h") == base
    assert check_base_for_rows(base, 10, "header h") == base  # "b...b:9" is 128 characters
    with pytest.raises(InvalidArgument, match=r"^header h is 126 characters: too long for 11 rows"):
        check_base_for_rows(base, 11, "header h")  # "b...b:10" would be 129


def test_sampling_is_a_deterministic_share_and_a_larger_share_keeps_every_smaller_ones_ids():
    ids = [f"txn-{n}" for n in range(20_000)]
    tenth = {i for i in ids if sampled(i, 0.1)}
    assert tenth == {i for i in ids if sampled(i, 0.1)}  # the same on every call (and in every process)
    assert 0.09 < len(tenth) / len(ids) < 0.11
    half = {i for i in ids if sampled(i, 0.5)}
    assert tenth < half
    assert not any(sampled(i, 0.0) for i in ids[:100])
    assert all(sampled(i, 1.0) for i in ids[:100])


def test_the_sampling_hash_is_pinned():
    # blake2b of the id: a change here would make gateways of two releases keep different predictions' features
    assert [n for n in range(40) if sampled(f"txn-{n}", 0.1)] == [5, 20, 21]
    assert sum(sampled(f"txn-{n}", 0.1) for n in range(1000)) == 89
