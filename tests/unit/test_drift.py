"""Feature drift: PSI, the reference profile, and the monitor's window, scores and once-per-crossing warnings."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from meshserve.feature.drift import (
    PROPORTION_FLOOR,
    BinKind,
    DriftCrossing,
    DriftMonitor,
    ReferenceProfile,
    build_profile,
    load_profile,
    psi,
)
from meshserve.feature.registry import load_registry
from meshserve.samples.fraud import MODEL, SEED, make_accounts, make_transactions

WINDOW = 2000
THRESHOLD = 0.2


def _rows(seed: int, n: int = WINDOW) -> np.ndarray:
    """Served-like rows: the training generator, another seed (other accounts, other transactions)."""
    registry = load_registry()
    rng = np.random.default_rng(seed)
    return make_transactions(registry, make_accounts(registry, rng), rng).features[:n]


def _column(name: str) -> int:
    return load_registry().models[MODEL].vector.index(name)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    return load_profile()


@pytest.fixture(scope="module")
def reference_like() -> np.ndarray:
    return _rows(SEED + 1)


@pytest.fixture(scope="module")
def amount_x5(reference_like) -> np.ndarray:
    rows = reference_like.copy()
    rows[:, _column("amount")] *= 5
    return rows


def _monitor(profile: ReferenceProfile, **kwargs) -> DriftMonitor:
    return DriftMonitor(profile, **({"window": WINDOW, "threshold": THRESHOLD} | kwargs))


# --- psi ---


def test_psi_is_zero_for_identical_shares_and_grows_with_the_shift():
    expected = np.full(10, 0.1)
    assert psi(expected, expected) == pytest.approx(0.0, abs=1e-12)
    values = []
    for moved in (0.0, 0.02, 0.05, 0.1, 0.2):  # move `moved` of the mass from the first five bins to the last
        actual = expected.copy()
        actual[:5] -= moved / 5
        actual[5:] += moved / 5
        values.append(psi(expected, actual))
    assert values[0] == pytest.approx(0.0, abs=1e-12)
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] > 0.1


def test_psi_floors_empty_bins_and_rejects_mismatched_bins():
    value = psi([0.5, 0.5, 0.0], [0.0, 0.5, 0.5])
    floor_term = (0.5 - PROPORTION_FLOOR) * np.log(0.5 / PROPORTION_FLOOR)
    assert np.isfinite(value) and value == pytest.approx(2 * floor_term)
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1.0])


# --- the reference profile ---


def test_build_profile_bins_per_category_and_by_deciles():
    registry = load_registry()
    rng = np.random.default_rng(7)
    n = 5000
    columns = {
        "amount": np.round(rng.lognormal(4.0, 1.0, n), 2),
        "merchant_category": rng.integers(0, 10, n),
        "avg_amount_30d": np.round(rng.lognormal(4.0, 0.5, n), 2),
        "txn_count_24h": rng.poisson(6.0, n),  # integer, too many values for a bin each: deciles
        "account_age_days": np.full(n, 365),  # constant: one bin
    }
    matrix = np.column_stack([columns[f] for f in registry.models[MODEL].vector]).astype(np.float32)
    profile = build_profile(registry, MODEL, matrix)
    features = profile.models[MODEL].features

    category = features["merchant_category"]
    assert category.kind is BinKind.CATEGORICAL
    assert category.edges == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5]
    amount = features["amount"]
    assert amount.kind is BinKind.QUANTILE and len(amount.edges) == 9
    assert all(p == pytest.approx(0.1, abs=0.002) for p in amount.expected)
    count = features["txn_count_24h"]
    assert count.kind is BinKind.QUANTILE and len(count.edges) < 9  # duplicate deciles merged
    assert count.edges == sorted(set(count.edges)) and all(e == int(e) for e in count.edges)
    age = features["account_age_days"]
    assert age.edges == [] and age.expected == [1.0]

    # Canonical JSON: the same input gives the same bytes, and the bytes give back the same profile.
    again = build_profile(registry, MODEL, matrix.copy())
    assert again.to_json_bytes() == profile.to_json_bytes()
    assert ReferenceProfile.model_validate_json(profile.to_json_bytes()) == profile


def test_build_profile_rejects_a_matrix_of_the_wrong_width_or_with_nan():
    registry = load_registry()
    with pytest.raises(ValueError):
        build_profile(registry, MODEL, np.zeros((10, 4), np.float32))
    bad = np.zeros((10, 5), np.float32)
    bad[3, 0] = np.nan
    with pytest.raises(ValueError):
        build_profile(registry, MODEL, bad)


def test_load_profile_reads_a_file(tmp_path, profile):
    path = tmp_path / "profile.json"
    path.write_bytes(profile.to_json_bytes())
    assert load_profile(path) == profile
    profile.check_registry(load_registry())


# --- the monitor ---


def test_reference_like_rows_stay_below_the_threshold(profile, reference_like):
    monitor = _monitor(profile)
    monitor.observe(MODEL, reference_like)
    scores = monitor.scores(MODEL)
    assert list(scores) == load_registry().models[MODEL].vector
    assert max(scores.values()) < 0.05, scores
    assert monitor.check() == []


def test_amount_times_five_drifts_amount_only(profile, amount_x5):
    monitor = _monitor(profile)
    monitor.observe(MODEL, amount_x5)
    scores = monitor.scores(MODEL)
    assert scores["amount"] > 1.0, scores
    assert all(value < 0.05 for name, value in scores.items() if name != "amount"), scores


def test_check_warns_once_per_crossing_and_rearms_after_recovery(profile, reference_like, amount_x5, caplog):
    clock = _Clock()
    monitor = _monitor(profile, clock=clock)
    caplog.set_level(logging.INFO, logger="meshserve.feature.drift")

    monitor.observe(MODEL, amount_x5)
    crossed = monitor.check()
    assert [(c.model, c.feature) for c in crossed] == [(MODEL, "amount")]
    assert isinstance(crossed[0], DriftCrossing) and crossed[0].psi > THRESHOLD
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    (record,) = warnings
    assert record.name == "meshserve.feature.drift" and "amount" in record.getMessage()
    assert (record.model, record.feature) == (MODEL, "amount") and record.psi == crossed[0].psi
    assert monitor.drifting(MODEL) == {"amount": 100.0}

    caplog.clear()
    clock.now = 160.0
    monitor.observe(MODEL, amount_x5[:100])  # still drifted
    assert monitor.check() == [] and monitor.check() == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert monitor.drifting(MODEL) == {"amount": 100.0}

    monitor.observe(MODEL, reference_like)  # the whole window is reference-like again: re-armed
    assert monitor.check() == []
    assert [r.feature for r in caplog.records if r.levelno == logging.INFO] == ["amount"]
    assert monitor.drifting(MODEL) == {}

    caplog.clear()
    clock.now = 300.0
    monitor.observe(MODEL, amount_x5)  # drifts again: warned again
    assert [c.feature for c in monitor.check()] == ["amount"]
    assert [r.feature for r in caplog.records if r.levelno == logging.WARNING] == ["amount"]
    assert monitor.drifting(MODEL) == {"amount": 300.0}


def test_a_psi_hovering_at_the_threshold_is_not_rewarned(profile, reference_like, amount_x5, caplog):
    # Mixing shifted rows into reference-like ones moves amount's PSI gradually; find mixes on either side.
    def mixed(shifted: int) -> np.ndarray:
        return np.concatenate([reference_like[: WINDOW - shifted], amount_x5[:shifted]])

    def amount_psi(rows: np.ndarray) -> float:
        probe = _monitor(profile)
        probe.observe(MODEL, rows)
        return probe.scores(MODEL)["amount"]

    above = next(k for k in range(0, WINDOW, 20) if amount_psi(mixed(k)) >= THRESHOLD)
    below = max(k for k in range(0, above, 20) if amount_psi(mixed(k)) >= 0.8 * THRESHOLD)
    assert amount_psi(mixed(below)) < THRESHOLD

    monitor = _monitor(profile)
    caplog.set_level(logging.WARNING, logger="meshserve.feature.drift")
    for k in (above, below, above, below, above):
        monitor.observe(MODEL, mixed(k))
        monitor.check()
    assert [r.feature for r in caplog.records] == ["amount"]


def test_no_score_below_min_samples(profile, amount_x5):
    monitor = _monitor(profile, min_samples=200)
    monitor.observe(MODEL, amount_x5[:199])
    assert monitor.samples(MODEL) == 199
    assert monitor.scores(MODEL) == {} and monitor.check() == []
    monitor.observe(MODEL, amount_x5[199])  # a single [k] row counts as one
    assert monitor.samples(MODEL) == 200
    assert monitor.scores(MODEL)["amount"] > THRESHOLD


def test_the_window_bounds_memory_and_forgets_old_rows(profile, reference_like, amount_x5):
    window = 500
    monitor = _monitor(profile, window=window, min_samples=100)
    for start in range(0, WINDOW, 7):  # small, unaligned batches wrap the ring many times
        monitor.observe(MODEL, amount_x5[start : start + 7])
    assert monitor.samples(MODEL) == window
    for start in range(0, WINDOW, 13):
        monitor.observe(MODEL, reference_like[start : start + 13])
    monitor.observe(MODEL, np.empty((0, 5), np.float32))  # an empty batch changes nothing
    assert monitor.samples(MODEL) == window

    # Exactly the last `window` rows count: the same scores as a fresh monitor fed only those.
    fresh = _monitor(profile, window=window, min_samples=100)
    fresh.observe(MODEL, reference_like[-window:])
    assert monitor.scores(MODEL) == fresh.scores(MODEL)
    assert monitor.scores(MODEL)["amount"] < THRESHOLD

    state = monitor._windows[MODEL]  # the ring and counts never grow past the window
    assert state.ring.shape == (window, 5) and state.counts.sum() == window * 5

    big = _monitor(profile, window=window, min_samples=100)
    big.observe(MODEL, np.concatenate([amount_x5, reference_like[-window:]]))  # a batch over the window
    assert big.samples(MODEL) == window and big.scores(MODEL) == fresh.scores(MODEL)


def test_unknown_models_are_ignored_and_bad_rows_rejected(profile, reference_like):
    monitor = _monitor(profile)
    assert monitor.models == [MODEL]
    monitor.observe("other", reference_like)
    assert monitor.samples("other") == 0 and monitor.scores("other") == {}
    with pytest.raises(ValueError):
        monitor.observe(MODEL, reference_like[:, :4])
    monitor.observe(MODEL, reference_like[:10])  # a valid batch still counts after a rejected one
    assert monitor.samples(MODEL) == 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 0},
        {"min_samples": 0},
        {"window": 100, "min_samples": 200},
        {"threshold": 0.0},
        {"rearm_below": 0.5},
    ],
)
def test_monitor_rejects_bad_settings(profile, kwargs):
    with pytest.raises(ValueError):
        DriftMonitor(profile, **kwargs)
