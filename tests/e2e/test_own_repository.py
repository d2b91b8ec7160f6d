"""`meshserve up --model-repository DIR` as a user runs it: their own Triton repository served, ONNX models too.

The user's repository holds an ONNX model with dynamic batching (built here with onnx's helper API), the same
model without a config.pbtxt (Triton would auto-complete it), one whose config does not fit its ONNX file, and a
python-backend model (tests/fixtures/own_repository). Answers are checked on Triton itself, against onnxruntime
run here on the same file and the same rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from meshserve.core.channels import wait_until_serving
from meshserve.core.process import free_ports
from tests.helpers import FIXTURES, alive, descendants

MESHSERVE = str(Path(sys.executable).parent / "meshserve")
OWN_REPOSITORY = FIXTURES / "own_repository"
WIDTH = 3
ADDER_CONFIG = """
name: "adder"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  { name: "a", data_type: TYPE_FP32, dims: [ 3 ] },
  { name: "b", data_type: TYPE_FP32, dims: [ 3 ] }
]
output [
  { name: "sum", data_type: TYPE_FP32, dims: [ 3 ] },
  { name: "best", data_type: TYPE_INT64, dims: [ 1 ] }
]
dynamic_batching { max_queue_delay_microseconds: 2000 }
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
# Triton's onnxruntime backend would refuse it too: the file's input `a` is FP32.
BROKEN_CONFIG = ADDER_CONFIG.replace('name: "adder"', 'name: "broken"').replace(
    '{ name: "a", data_type: TYPE_FP32', '{ name: "a", data_type: TYPE_INT32'
)


def adder_model() -> onnx.ModelProto:
    """sum = a + b, best = argmax(sum) per row; an open batch dimension."""
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", WIDTH]) for n in "ab")
    total = helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", WIDTH])
    best = helper.make_tensor_value_info("best", TensorProto.INT64, ["batch", 1])
    nodes = [
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("ArgMax", ["sum"], ["best"], axis=1, keepdims=1),
    ]
    graph = helper.make_graph(nodes, "adder", [a, b], [total, best])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what the installed onnxruntime reads, whatever onnx writes by default
    onnx.checker.check_model(model)
    return model


# (tensor, ONNX type, Triton datatype, values): each goes through Identity, to and from the python backend
DATATYPES = [
    ("text", TensorProto.STRING, "BYTES", np.array([["héllo".encode(), b""]], dtype=object)),
    ("half", TensorProto.FLOAT16, "FP16", np.array([[0.5, -65504]], np.float16)),
    ("flag", TensorProto.BOOL, "BOOL", np.array([[True, False]])),
    ("small", TensorProto.INT8, "INT8", np.array([[-128, 127]], np.int8)),
    ("byte", TensorProto.UINT8, "UINT8", np.array([[0, 255]], np.uint8)),
    ("count", TensorProto.INT32, "INT32", np.array([[-(2**31), 2**31 - 1]], np.int32)),
    ("wide", TensorProto.DOUBLE, "FP64", np.array([[1e300, -1e-300]], np.float64)),
]


def identities_model() -> onnx.ModelProto:
    """`<name>_out` = `<name>_in`, one pair of tensors per datatype."""
    inputs = [helper.make_tensor_value_info(f"{n}_in", t, ["batch", 2]) for n, t, _, _ in DATATYPES]
    outputs = [helper.make_tensor_value_info(f"{n}_out", t, ["batch", 2]) for n, t, _, _ in DATATYPES]
    nodes = [helper.make_node("Identity", [f"{n}_in"], [f"{n}_out"]) for n, _, _, _ in DATATYPES]
    model = helper.make_model(
        helper.make_graph(nodes, "identities", inputs, outputs), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    return model


def identities_config() -> str:
    def tensors(suffix: str) -> str:
        types = {"BYTES": "STRING"}
        return ", ".join(
            f'{{ name: "{n}_{suffix}", data_type: TYPE_{types.get(d, d)}, dims: [ 2 ] }}'
            for n, _, d, _ in DATATYPES
        )

    return f'platform: "onnxruntime_onnx"\nmax_batch_size: 4\ninput [ {tensors("in")} ]\noutput [ {tensors("out")} ]\n'


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every file and directory under `root`: content hash (or "dir") and modification time."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        snapshot[str(path.relative_to(root))] = (digest, path.stat().st_mtime_ns)
    return snapshot


@pytest.fixture(scope="module")
def user_repository(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("user") / "models"
    shutil.copytree(OWN_REPOSITORY, repo)
    models = {
        "adder": (adder_model(), ADDER_CONFIG),
        "adder_auto": (adder_model(), None),
        "broken": (adder_model(), BROKEN_CONFIG),
        "identities": (identities_model(), identities_config()),
    }
    for name, (model, config) in models.items():
        (repo / name / "1").mkdir(parents=True)
        onnx.save(model, repo / name / "1" / "model.onnx")
        if config:
            (repo / name / "config.pbtxt").write_text(config)
    return repo


async def read_until(process, text: str, timeout: float) -> str:
    seen = []
    async with asyncio.timeout(timeout):
        while text not in (line := (await process.stdout.readline()).decode(errors="replace")):
            assert line, "meshserve up exited:\n" + "".join(seen)
            seen.append(line)
    return "".join([*seen, line])


async def stop(process, family: set[int]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        rest, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        for pid in alive(family | {process.pid}):
            os.kill(pid, signal.SIGKILL)
        await process.wait()
    return process.returncode, rest.decode(errors="replace")


@pytest.fixture(scope="module")
async def own_mesh(user_repository, tmp_path_factory):
    """`meshserve up --model-repository DIR` on free ports; its start-up output and Triton's address."""
    port, admin_port, http_port = free_ports(3)
    run_dir = tmp_path_factory.mktemp("own-run")
    before = tree(user_repository)
    env = {**os.environ, "MESHSERVE_RUN_DIR": str(run_dir), "MESHSERVE_GRACE_S": "3", "COLUMNS": "200"}
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        MESHSERVE, "up", "--model-repository", str(user_repository), "--port", str(port),
        "--admin-port", str(admin_port), "--http-port", str(http_port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output = await read_until(process, "Ctrl-C stops every process", timeout=120)
        print(f"meshserve up ready in {time.monotonic() - started:.1f}s")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_until_serving(channel, timeout_s=10)
        triton = re.search(r"triton gRPC\s*│\s*(\S+)", output)
        assert triton, output
        yield {
            "process": process, "gateway": f"127.0.0.1:{port}", "triton": triton.group(1), "output": output,
            "run_dir": run_dir, "repository": user_repository, "before": before,
        }  # fmt: skip
    finally:
        if process.returncode is None:
            await stop(process, alive(descendants(process.pid)))


def test_only_the_users_models_are_served_and_the_broken_one_is_reported(own_mesh):
    output = own_mesh["output"]
    onnx_models = ", ".join(f"{name} (ONNX, run by onnxruntime)" for name in ("adder", "adder_auto"))
    assert f"models served: {onnx_models}, doubler, identities (ONNX, run by onnxruntime)" in output
    assert re.search(
        r"skipped broken \(.*\): version 1: input 'a' is TYPE_INT32 in config.pbtxt but TYPE_FP32", output
    )
    client = triton_grpc.InferenceServerClient(own_mesh["triton"])
    index = {m.name: m.state for m in client.get_model_repository_index().models}
    assert index == dict.fromkeys(["adder", "adder_auto", "doubler", "identities"], "READY")  # no `fraud`
    assert "predict fraud" not in output
    assert (
        f"InferenceServerClient('{own_mesh['gateway']}').get_model_metadata('adder', as_json=True)" in output
    )
    assert (own_mesh["run_dir"] / "routes.yaml").read_text() == "routes: {}\n"


def _adder_inputs(rows: np.ndarray) -> list[triton_grpc.InferInput]:
    a, b = rows[:, :WIDTH], rows[:, WIDTH:]
    tensors = []
    for name, array in (("a", a), ("b", b)):
        tensor = triton_grpc.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        tensors.append(tensor)
    return tensors


def _onnxruntime(repository: Path, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(
        str(repository / "adder" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    total, best = session.run(["sum", "best"], {"a": rows[:, :WIDTH], "b": rows[:, WIDTH:]})
    return total, best


@pytest.mark.parametrize("model", ["adder", "adder_auto"])
def test_the_onnx_model_answers_as_onnxruntime_does(own_mesh, model):
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(4, 2 * WIDTH)).astype(np.float32)
    reply = triton_grpc.InferenceServerClient(own_mesh["triton"]).infer(model, _adder_inputs(rows))
    total, best = _onnxruntime(own_mesh["repository"], rows)
    np.testing.assert_array_equal(reply.as_numpy("sum"), total)
    np.testing.assert_array_equal(reply.as_numpy("best"), best)
    assert reply.as_numpy("sum").dtype == np.float32 and reply.as_numpy("best").dtype == np.int64


async def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(own_mesh):
    rng = np.random.default_rng(11)
    requests = [rng.normal(size=(int(rng.integers(1, 4)), 2 * WIDTH)).astype(np.float32) for _ in range(64)]
    async with triton_aio.InferenceServerClient(own_mesh["triton"]) as client:
        before = (await client.get_inference_statistics("adder")).model_stats[0]
        replies = await asyncio.gather(*(client.infer("adder", _adder_inputs(rows)) for rows in requests))
        after = (await client.get_inference_statistics("adder")).model_stats[0]
    for rows, reply in zip(requests, replies, strict=True):
        total, best = _onnxruntime(own_mesh["repository"], rows)
        np.testing.assert_array_equal(reply.as_numpy("sum"), total)
        np.testing.assert_array_equal(reply.as_numpy("best"), best)
    executions = after.execution_count - before.execution_count
    print(f"64 concurrent requests ran in {executions} executions")
    assert executions < len(requests)  # the dynamic batcher's batches reached onnxruntime as batches


def test_every_datatype_goes_through_the_runner_and_back_as_sent(own_mesh):
    tensors = []
    for name, _, datatype, values in DATATYPES:
        tensor = triton_grpc.InferInput(f"{name}_in", list(values.shape), datatype)
        tensor.set_data_from_numpy(values)
        tensors.append(tensor)
    reply = triton_grpc.InferenceServerClient(own_mesh["triton"]).infer("identities", tensors)
    for name, _, _, values in DATATYPES:
        got = reply.as_numpy(f"{name}_out")
        assert got.dtype == values.dtype and got.tolist() == values.tolist(), name


def test_a_config_left_out_is_completed_from_the_onnx_file(own_mesh):
    client = triton_grpc.InferenceServerClient(own_mesh["triton"])
    config = client.get_model_config("adder_auto").config
    assert config.backend == "python" and config.max_batch_size == 4 and config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("a", [WIDTH]), ("b", [WIDTH])]
    assert [(t.name, t.data_type) for t in config.output] == [("sum", 11), ("best", 9)]  # FP32, INT64


def test_the_python_model_is_served_as_it_is(own_mesh):
    tensor = triton_grpc.InferInput("x", [2, 1], "INT64")
    tensor.set_data_from_numpy(np.array([[3], [-4]], dtype=np.int64))
    reply = triton_grpc.InferenceServerClient(own_mesh["triton"]).infer("doubler", [tensor])
    np.testing.assert_array_equal(reply.as_numpy("doubled"), [[6], [-8]])


def test_the_gateway_serves_the_onnx_model_under_its_own_name(own_mesh):
    rows = np.random.default_rng(3).normal(size=(2, 2 * WIDTH)).astype(np.float32)
    client = triton_grpc.InferenceServerClient(own_mesh["gateway"])
    try:
        reply = client.infer("adder", _adder_inputs(rows))
    except InferenceServerException as exc:
        if exc.status() in ("StatusCode.NOT_FOUND", "StatusCode.UNIMPLEMENTED"):
            pytest.skip(
                "the gateway's implicit routes (every model Triton serves, under its own name, with an empty "
                f"route table) have not landed: ModelInfer 'adder' through the gateway: {exc.message()}"
            )
        raise
    total, best = _onnxruntime(own_mesh["repository"], rows)
    np.testing.assert_array_equal(reply.as_numpy("sum"), total)
    np.testing.assert_array_equal(reply.as_numpy("best"), best)


async def test_stopping_leaves_no_process_and_the_users_files_as_they_were(own_mesh):
    process = own_mesh["process"]
    family = alive(descendants(process.pid))
    code, output = await stop(process, family)
    assert code == 0, output
    assert not alive(family), f"left behind: {alive(family)}"
    assert tree(own_mesh["repository"]) == own_mesh["before"]  # nothing written, no __pycache__ either


async def run_up(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        MESHSERVE, "up", *args, env={**os.environ, "COLUMNS": "200", **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, output.decode(errors="replace")


async def test_a_repository_that_is_not_a_directory_is_one_line_and_nothing_starts(tmp_path):
    missing = tmp_path / "nowhere"
    code, output = await run_up(
        "--model-repository", str(missing), env={"MESHSERVE_RUN_DIR": str(tmp_path / "run")}
    )
    assert code == 2
    assert output.strip() == f"meshserve up: model repository {missing} is not a directory"
    assert not (tmp_path / "run" / "logs").exists()


@pytest.mark.parametrize("value", ["[not json", "[]", "", '["ok", 3]'])
async def test_a_bad_repositories_setting_is_one_line_saying_what_is_expected(tmp_path, value):
    env = {"MESHSERVE_MODEL_REPOSITORIES": value, "MESHSERVE_RUN_DIR": str(tmp_path / "run")}
    code, output = await run_up(env=env)
    assert code == 2
    assert len(output.strip().splitlines()) == 1 and "Traceback" not in output, output
    assert output.startswith(
        "meshserve up: MESHSERVE_MODEL_REPOSITORIES: expected a directory, several separated"
    )
