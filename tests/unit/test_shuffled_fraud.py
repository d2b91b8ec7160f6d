"""The test-only `fraud` version 3 (tests/fixtures/shuffled_fraud.py): what the builder makes, in a repository
whose other versions and config are the sample's own, scoring fresh sample traffic clearly worse than versions 1
and 2 (AUC near 0.5) through the same input and output."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from sklearn.metrics import roc_auc_score

from meshserve.feature.registry import load_registry
from meshserve.samples.fraud import MODEL, ONNX_PROBABILITIES, make_accounts, make_transactions
from tests.fixtures.shuffled_fraud import MODEL_FILE, REPOSITORY, onnx_bytes
from tests.unit.test_sample_models import REPO, _onnx_numbers


def test_the_committed_version_3_is_what_the_builder_makes():
    data, committed = onnx_bytes(), MODEL_FILE.read_bytes()
    if (
        data != committed
    ):  # as for the sample: every fitted number within float32's rounding of the 6th decimal
        (skeleton, numbers), (want, want_numbers) = _onnx_numbers(data), _onnx_numbers(committed)
        assert skeleton == want, "stale: run python -m tests.fixtures.shuffled_fraud"
        for got, expected in zip(numbers, want_numbers, strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1.1e-6)


def test_the_other_versions_and_the_config_are_the_samples_own():
    fixture = REPOSITORY / MODEL
    assert (fixture / "config.pbtxt").read_bytes() == (REPO / MODEL / "config.pbtxt").read_bytes()
    for version in ("1", "2"):
        for name in ("model.onnx", "model.py"):
            assert (fixture / version / name).resolve() == (REPO / MODEL / version / name).resolve()
    assert (fixture / "3" / "model.py").read_bytes() == (REPO / MODEL / "1" / "model.py").read_bytes()
    assert sorted(p.name for p in fixture.iterdir()) == ["1", "2", "3", "config.pbtxt"]


def test_version_3_answers_like_the_others_but_scores_near_chance():
    registry = load_registry()
    rng = np.random.default_rng(2026)  # traffic the models were not fitted on
    txns = make_transactions(registry, make_accounts(registry, rng), rng)
    auc = {}
    for version in ("1", "2", "3"):
        session = ort.InferenceSession(
            str(REPOSITORY / MODEL / version / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        (inputs,) = session.get_inputs()
        assert (inputs.name, inputs.shape[1]) == (
            registry.models[MODEL].input,
            len(registry.models[MODEL].vector),
        )
        scores = session.run([ONNX_PROBABILITIES], {inputs.name: txns.features})[0][:, 1]
        assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
        auc[version] = roc_auc_score(txns.label, scores)
    assert 0.4 < auc["3"] < 0.6, auc
    assert auc["1"] - auc["3"] > 0.15 and auc["2"] - auc["3"] > 0.2, auc
