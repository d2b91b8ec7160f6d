"""The committed sample model repository is what meshserve.samples.build produces, and it scores right."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from meshserve.feature.drift import BinKind, load_profile
from meshserve.feature.registry import load_registry
from meshserve.samples.build import build_sample_models
from meshserve.samples.fraud import (
    MODEL,
    ONNX_PROBABILITIES,
    SEED,
    make_accounts,
    make_transactions,
    train_versions,
)

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT / "model_repository"
ACCOUNTS = ROOT / "meshserve" / "defaults" / "accounts.csv"
PROFILE = ROOT / "meshserve" / "defaults" / "reference_profile.json"
SLOW = ROOT / "tests" / "fixtures" / "model_repository" / "slow"
VERSIONS = ("1", "2")
# A young account, spending 12x its average in a risky category, then an old, quiet one.
ROWS = np.array([[960.0, 7, 80.0, 9, 5], [42.0, 0, 55.0, 1, 2400]], dtype=np.float32)


def _files(directory: Path) -> dict[Path, bytes]:
    return {
        p.relative_to(directory): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.name != "README.md"
    }


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rebuilt")
    build_sample_models(out / "model_repository", out / "accounts.csv")
    return out


@pytest.fixture(scope="module")
def sessions() -> dict[str, ort.InferenceSession]:
    return {
        v: ort.InferenceSession(str(REPO / MODEL / v / "model.onnx"), providers=["CPUExecutionProvider"])
        for v in VERSIONS
    }


def _ort_scores(session: ort.InferenceSession, rows: np.ndarray) -> np.ndarray:
    return session.run([ONNX_PROBABILITIES], {load_registry().models[MODEL].input: rows})[0][:, 1]


def _onnx_numbers(data: bytes) -> tuple[bytes, list[np.ndarray]]:
    """The model with every float taken out (its skeleton, serialized), and those floats in order."""
    proto = onnx.load_from_string(data)
    numbers: list[np.ndarray] = []
    for tensor in proto.graph.initializer:
        numbers.append(numpy_helper.to_array(tensor).astype(np.float64).ravel())
        tensor.ClearField("raw_data"), tensor.ClearField("float_data"), tensor.ClearField("double_data")
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.FLOATS:
                numbers.append(np.array(attr.floats, dtype=np.float64))
                attr.ClearField("floats")
            elif attr.type == onnx.AttributeProto.FLOAT:
                numbers.append(np.array([attr.f], dtype=np.float64))
                attr.ClearField("f")
            elif attr.type == onnx.AttributeProto.TENSOR:
                numbers.append(numpy_helper.to_array(attr.t).astype(np.float64).ravel())
                attr.ClearField("t")
    return proto.SerializeToString(deterministic=True), numbers


def test_committed_repository_matches_a_rebuild(rebuilt):
    """Byte-identical here and on every x86_64 CPU tried (see the next test). Should a CPU still flip a rounded
    digit, what matters holds: the same files, graphs and text, and every fitted number within one step of
    the 6th decimal, where fraud._round_params rounds, plus float32's own rounding (rtol 1e-6)."""
    committed, fresh = _files(REPO), _files(rebuilt / "model_repository")
    assert sorted(committed) == sorted(fresh), "stale or extra files: run python -m meshserve.samples.build"
    for path, data in fresh.items():
        if committed[path] == data:
            continue
        assert path.suffix == ".onnx", f"{path} is stale: run python -m meshserve.samples.build"
        (skeleton, numbers), (want_skeleton, want_numbers) = (
            _onnx_numbers(data),
            _onnx_numbers(committed[path]),
        )
        assert skeleton == want_skeleton, f"{path} is stale: run python -m meshserve.samples.build"
        assert [len(n) for n in numbers] == [len(n) for n in want_numbers], f"{path} is stale"
        for got, want in zip(numbers, want_numbers, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1.1e-6, err_msg=f"{path} is stale")
    assert ACCOUNTS.read_bytes() == (rebuilt / "accounts.csv").read_bytes()
    assert PROFILE.read_bytes() == (rebuilt / "reference_profile.json").read_bytes(), (
        "reference_profile.json is stale: run python -m meshserve.samples.build"
    )


def test_a_rebuild_on_another_blas_kernel_is_byte_identical(rebuilt, tmp_path):
    # OpenBLAS picks its kernel for the CPU it finds (OPENBLAS_CORETYPE overrides it): a rebuild with the
    # generic SSE3 kernel, which every x86_64 CPU runs, must give this process's bytes. Elsewhere it is ignored.
    env = {
        **os.environ,
        "OPENBLAS_CORETYPE": "Prescott",
        "OPENBLAS_NUM_THREADS": "2",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "meshserve.samples.build", "--repo", str(tmp_path / "model_repository")]
    command += ["--accounts", str(tmp_path / "accounts.csv")]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
    assert _files(tmp_path) == _files(rebuilt)


def test_reference_profile_follows_the_registry_and_the_training_data():
    registry = load_registry()
    profile = load_profile()  # the embedded default is the committed file
    assert profile.to_json_bytes() == PROFILE.read_bytes()
    profile.check_registry(registry)
    fraud = profile.models[MODEL]
    assert fraud.vector == registry.models[MODEL].vector
    rng = np.random.default_rng(SEED)
    assert fraud.samples == len(make_transactions(registry, make_accounts(registry, rng), rng).features)
    assert fraud.features["merchant_category"].kind is BinKind.CATEGORICAL
    assert len(fraud.features["merchant_category"].expected) == 10  # one bin per category 0..9
    for name, feature in fraud.features.items():
        assert abs(sum(feature.expected) - 1.0) < 1e-3, name
        if feature.kind is BinKind.QUANTILE:
            assert 2 <= len(feature.expected) <= 10, name


def test_model_py_copies_are_the_template():
    template = (ROOT / "meshserve" / "samples" / "triton_model.py").read_bytes()
    for v in VERSIONS:
        assert (REPO / MODEL / v / "model.py").read_bytes() == template


def test_onnx_files_stay_small():
    for v in VERSIONS:
        assert (REPO / MODEL / v / "model.onnx").stat().st_size < 200_000


def test_config_and_accounts_follow_the_registry():
    registry = load_registry()
    spec = registry.models[MODEL]
    config = (REPO / MODEL / "config.pbtxt").read_text()
    slow = (SLOW / "config.pbtxt").read_text()
    for text in (config, slow):  # the slow test model must stay a drop-in for fraud
        assert f'name: "{spec.input}", data_type: TYPE_FP32, dims: [ {len(spec.vector)} ]' in text
        assert f'name: "{spec.output}", data_type: TYPE_FP32, dims: [ 1 ]' in text
    lines = ACCOUNTS.read_text().splitlines()
    join_key = registry.entities[spec.entity].join_key
    assert lines[0].split(",") == [join_key, *registry.stored_by_entity[spec.entity]]
    assert len(lines) == 1001 and lines[1].startswith("acct-00000,") and lines[-1].startswith("acct-00999,")


def test_training_data_has_a_plausible_fraud_rate():
    registry = load_registry()
    rng = np.random.default_rng(SEED)
    txns = make_transactions(registry, make_accounts(registry, rng), rng)
    assert 0.03 <= txns.label.mean() <= 0.08


def test_onnx_exports_match_the_trained_models(sessions):
    registry = load_registry()
    rng = np.random.default_rng(SEED)
    txns = make_transactions(registry, make_accounts(registry, rng), rng)
    rows = txns.features[:500]
    for version, model in train_versions(txns).items():
        want = model.predict_proba(rows)[:, 1]
        np.testing.assert_allclose(_ort_scores(sessions[str(version)], rows), want, atol=1e-5)


def test_the_two_versions_disagree(sessions):
    v1, v2 = (_ort_scores(sessions[v], ROWS) for v in VERSIONS)
    assert np.abs(v1 - v2).max() > 0.05
    assert v1[0] > v1[1] and v2[0] > v2[1]  # but both see the first row as the riskier one


class _FakeTritonError(Exception):
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str = "INTERNAL"):
        super().__init__(message)
        self.code = code


class _FakeTensor:
    def __init__(self, name: str, array: np.ndarray):
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _FakeResponse:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors or [], error


def _load_model_py(monkeypatch, path: Path) -> types.ModuleType:
    """Import a model.py outside Triton, with a stand-in for triton_python_backend_utils."""
    fake = types.ModuleType("triton_python_backend_utils")
    fake.TritonError, fake.Tensor, fake.InferenceResponse = _FakeTritonError, _FakeTensor, _FakeResponse
    fake.get_input_tensor_by_name = lambda request, name: request.get(name)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    spec = importlib.util.spec_from_file_location(f"model_py_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("version", VERSIONS)
def test_model_py_batches_requests_and_scores_like_onnxruntime(monkeypatch, sessions, version):
    spec = load_registry().models[MODEL]
    module = _load_model_py(monkeypatch, REPO / MODEL / version / "model.py")
    model = module.TritonPythonModel()
    config = {"input": [{"name": spec.input, "dims": [len(spec.vector)]}], "output": [{"name": spec.output}]}
    model.initialize(
        {"model_config": json.dumps(config), "model_repository": str(REPO / MODEL), "model_version": version}
    )
    runs = []
    real_run = model.session.run
    model.session = types.SimpleNamespace(run=lambda *a: runs.append(a) or real_run(*a), get_inputs=None)

    requests = [
        {spec.input: _FakeTensor(spec.input, ROWS[:1])},
        {spec.input: _FakeTensor(spec.input, np.zeros((1, 4), np.float32))},  # wrong width
        {},  # input missing
        {spec.input: _FakeTensor(spec.input, ROWS)},
    ]
    responses = model.execute(requests)

    assert len(runs) == 1  # one session.run for the whole batch of valid requests
    want = _ort_scores(sessions[version], ROWS)
    for response, expected in ((responses[0], want[:1]), (responses[3], want)):
        assert response.error is None
        (tensor,) = response.output_tensors
        assert tensor.name == spec.output and tensor.array.dtype == np.float32
        np.testing.assert_allclose(tensor.array, expected[:, None], rtol=1e-6)
    for response in responses[1:3]:
        assert isinstance(response.error, _FakeTritonError) and response.error.code == "INVALID_ARG"
