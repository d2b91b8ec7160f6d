"""The served repository: ONNX models become python-backend runners with the same names, dims and batching,
every other model is served as it is, a model that cannot be served is left out with the reason, and the user's
files are only read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from onnx import TensorProto

from meshserve.launcher.onnx_runner import RunnerSettings, render_model_py
from meshserve.launcher.repository import (
    RepositoryError,
    ServedRepository,
    prepare_served_repository,
    read_config,
)
from tests.unit import onnx_graphs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ADDER = """
name: "adder"
platform: "onnxruntime_onnx"
max_batch_size: 16
version_policy { all {} }
input [ { name: "a", data_type: TYPE_FP32, dims: [ 3 ] }, { name: "b", data_type: TYPE_FP32, dims: [ 3 ] } ]
output [ { name: "sum", data_type: TYPE_FP32, dims: [ 3 ] }, { name: "best", data_type: TYPE_INT64, dims: [ 1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 2000 }
instance_group [ { count: 2, kind: KIND_CPU } ]
"""
PYTHON_MODEL = FIXTURES / "own_repository" / "doubler"


def write_model(
    repo: Path, name: str, config: str | None, versions=("1",), onnx_model=None, file="model.onnx"
):
    for version in versions:
        onnx_graphs.save(onnx_model or onnx_graphs.adder(), repo / name / version / file)
    (repo / name).mkdir(parents=True, exist_ok=True)
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config.replace('"adder"', f'"{name}"'))


def tree(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir", p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }  # fmt: skip


def prepare(tmp_path: Path, *repos: Path) -> ServedRepository:
    return prepare_served_repository(list(repos), tmp_path / "run" / "served_repository")


def skipped(served: ServedRepository) -> dict[str, str]:
    return {model.name: model.reason for model in served.skipped}


def test_an_onnx_model_becomes_a_python_runner_with_the_same_names_dims_and_batching(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "adder", ADDER, versions=("1", "2"))
    served = prepare(tmp_path, repo)

    assert [(m.name, m.onnx_runner) for m in served.models] == [("adder", True)] and not served.skipped
    out = served.path / "adder"
    runner, user = read_config(out / "config.pbtxt"), read_config(repo / "adder" / "config.pbtxt")
    assert runner.backend == "python" and not runner.platform
    user.ClearField("platform")
    user.backend = "python"
    assert runner == user  # names, datatypes, dims, max_batch_size, batching, instances, versions: all kept
    for version in ("1", "2"):
        assert (out / version / "model.py").read_text() == render_model_py(RunnerSettings())
        link = out / version / "model.onnx"
        assert link.is_symlink() and link.resolve() == (repo / "adder" / version / "model.onnx").resolve()


def test_the_default_model_filename_and_thread_count_reach_the_runner(tmp_path):
    repo = tmp_path / "models"
    config = ADDER + 'default_model_filename: "adder.onnx"\n'
    config += 'parameters { key: "intra_op_thread_count" value { string_value: "3" } }\n'
    write_model(repo, "adder", config, file="adder.onnx")
    served = prepare(tmp_path, repo)
    out = served.path / "adder"
    assert not read_config(out / "config.pbtxt").default_model_filename  # it would name the .py file
    assert (out / "1" / "adder.onnx").is_symlink()
    assert (
        'RUNNER = {"onnx_file": "adder.onnx", "intra_op_threads": 3}' in (out / "1" / "model.py").read_text()
    )


def test_other_models_are_served_as_they_are_from_links_and_the_users_files_are_untouched(tmp_path):
    repo = tmp_path / "models"
    (repo / "doubler").parent.mkdir(parents=True)
    os.symlink(PYTHON_MODEL, repo / "doubler")  # a repository may itself hold links
    write_model(repo, "adder", ADDER)
    (repo / "adder" / "labels.txt").write_text("x\ny\nz\n")
    (repo / "README.md").write_text("not a model")
    before = tree(repo)

    served = prepare(tmp_path, repo)
    assert [(m.name, m.onnx_runner) for m in served.models] == [("adder", True), ("doubler", False)]
    doubler = served.path / "doubler"
    assert doubler.is_dir() and not doubler.is_symlink()  # bytecode caches land here, not in the user's tree
    for relative in ("config.pbtxt", "1/model.py"):
        assert (doubler / relative).is_symlink()
        assert (doubler / relative).resolve() == (PYTHON_MODEL / relative).resolve()
    assert (served.path / "adder" / "labels.txt").resolve() == (repo / "adder" / "labels.txt").resolve()
    assert not (served.path / "README.md").exists()
    assert tree(repo) == before

    (served.path / "stale").mkdir()
    again = prepare(tmp_path, repo)  # a fresh build each time, still without touching the user's files
    assert again == served and not (served.path / "stale").exists() and tree(repo) == before


def test_a_config_without_inputs_and_outputs_is_completed_from_the_onnx_file(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "partial", 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n')
    write_model(repo, "bare", None)  # no config.pbtxt at all: Triton knows it by its model.onnx
    served = prepare(tmp_path, repo)
    assert [(m.name, m.onnx_runner) for m in served.models] == [("bare", True), ("partial", True)]

    partial = read_config(served.path / "partial" / "config.pbtxt")
    assert partial.max_batch_size == 8 and partial.name == "partial"
    assert [(t.name, list(t.dims)) for t in partial.input] == [("a", [3]), ("b", [3])]
    assert [(t.name, t.data_type, list(t.dims)) for t in partial.output] == [
        ("sum", 11, [3]),
        ("best", 9, [1]),
    ]
    bare = read_config(served.path / "bare" / "config.pbtxt")
    assert bare.name == "bare" and bare.backend == "python"
    assert bare.max_batch_size == 4 and bare.HasField("dynamic_batching")  # Triton's auto-complete defaults


def test_a_model_that_cannot_be_served_is_skipped_with_the_reason_and_the_others_are_served(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "adder", ADDER)
    write_model(repo, "wrong_type", ADDER.replace('"a", data_type: TYPE_FP32', '"a", data_type: TYPE_FP64'))
    write_model(repo, "fixed_batch", ADDER, onnx_model=onnx_graphs.adder(batch=2))
    write_model(
        repo,
        "zipmap",
        'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n',
        onnx_model=onnx_graphs.sequence_output(),
    )
    write_model(repo, "no_file", ADDER, versions=())
    (repo / "no_file" / "1").mkdir()
    write_model(
        repo, "bad_threads", ADDER + 'parameters { key: "intra_op_thread_count" value { string_value: "x" } }'
    )
    write_model(repo, "renamed", ADDER.replace('"adder"', '"other"'))
    write_model(repo, "garbage", ADDER)
    (repo / "garbage" / "1" / "model.onnx").write_bytes(b"not onnx")
    (repo / "unparsable").mkdir()
    (repo / "unparsable" / "config.pbtxt").write_text("max_batch_size: lots")
    (repo / "torch" / "1").mkdir(parents=True)
    (repo / "torch" / "config.pbtxt").write_text('platform: "pytorch_libtorch"\nmax_batch_size: 2\n')
    (repo / "pipeline").mkdir()
    (repo / "pipeline" / "config.pbtxt").write_text(
        'platform: "ensemble"\nensemble_scheduling { step [ { model_name: "torch", model_version: -1 } ] }\n'
    )
    before = tree(repo)

    served = prepare(tmp_path, repo)
    assert [m.name for m in served.models] == ["adder"]
    reasons = skipped(served)
    expected = {
        "wrong_type": "version 1: input 'a' is TYPE_FP64 in config.pbtxt but TYPE_FP32 in the ONNX file",
        "fixed_batch": "version 1: max_batch_size is above 0 but the first dimension of input 'a' is fixed at 2",
        "zipmap": "output 'seq' is seq(tensor(float)), not a tensor Triton can carry",
        "no_file": "no version directory (1/, 2/, ...) holds model.onnx",
        "bad_threads": "parameter intra_op_thread_count must be a whole number >= 0, not 'x'",
        "renamed": "config.pbtxt names it 'other', but Triton needs its directory's name",
        "garbage": "version 1: onnxruntime cannot load model.onnx: ",
        "unparsable": "config.pbtxt does not parse: ",
        "torch": "backend 'pytorch' is not in the bundled Triton, which has python",
        "pipeline": "its ensemble step 'torch' is not served",
    }
    assert set(reasons) == set(expected)
    for name, start in expected.items():
        assert reasons[name].startswith(start), (name, reasons[name])
    assert sorted(p.name for p in served.path.iterdir()) == ["adder"]  # nothing half-written
    assert tree(repo) == before


def test_a_version_without_its_file_is_left_out_and_said_so(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "adder", ADDER, versions=("1", "3"))
    (repo / "adder" / "2").mkdir()
    (model,) = prepare(tmp_path, repo).models
    assert model.notes == ("version 2 has no model.onnx: left out",)
    assert sorted(p.name for p in (tmp_path / "run" / "served_repository" / "adder").iterdir()) == [
        "1", "3", "config.pbtxt",
    ]  # fmt: skip


def test_the_first_repository_wins_a_name_both_hold_and_ensembles_of_served_models_are_served(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write_model(first, "adder", ADDER)
    write_model(second, "adder", ADDER)
    write_model(second, "other", None, onnx_model=onnx_graphs.identity(TensorProto.INT32))
    (second / "pipeline").mkdir()
    (second / "pipeline" / "config.pbtxt").write_text(
        'platform: "ensemble"\nensemble_scheduling { step [ { model_name: "adder", model_version: -1 } ] }\n'
    )
    served = prepare(tmp_path, first, second, first)
    assert [(m.name, m.source.parent) for m in served.models] == [
        ("adder", first), ("other", second), ("pipeline", second),
    ]  # fmt: skip
    assert skipped(served) == {"adder": f"{first} has a model of the same name, and comes first"}


def test_a_repository_that_is_not_a_directory_is_an_error_naming_it(tmp_path):
    (tmp_path / "file").write_text("")
    for path in (tmp_path / "missing", tmp_path / "file"):
        with pytest.raises(RepositoryError, match=f"^model repository {path} is not a directory$"):
            prepare(tmp_path, path)


def test_the_sample_repository_is_served_as_it_is(tmp_path):
    sample = Path(__file__).resolve().parents[2] / "model_repository"
    served = prepare(tmp_path, sample)
    assert [(m.name, m.onnx_runner) for m in served.models] == [("fraud", False)]
    assert read_config(served.path / "fraud" / "config.pbtxt").backend == "python"
    assert (served.path / "fraud" / "2" / "model.onnx").resolve() == sample / "fraud" / "2" / "model.onnx"
