"""The loads that never reach Triton (meshserve.inference.model_control), shared by the gateway and the inference
service: file paths Triton 2.51 would abort on or write somewhere unmeant, and oversized configurations."""

from __future__ import annotations

import pytest
from tritonclient.grpc import service_pb2

from meshserve.core.errors import ErrorCode, MeshError
from meshserve.inference.model_control import (
    MAX_CONFIG_BYTES,
    MAX_FILE_PATH_BYTES,
    check_model_load,
    model_load_problem,
)

REFUSED = "failed to load 'simple', failed to poll from model repository: "


def load(*files: str, config: str | None = "{}") -> service_pb2.RepositoryModelLoadRequest:
    request = service_pb2.RepositoryModelLoadRequest(model_name="simple")
    if config is not None:
        request.parameters["config"].string_param = config
    for name in files:
        request.parameters[name].bytes_param = b"model"
    return request


@pytest.mark.parametrize("files", [
    (),
    ("file:1/model.py",),
    ("file:1/model.py", "file:1/weights/part-0.bin", "file:config.pbtxt"),
    ("file:" + "a" * 255,),  # NAME_MAX exactly
    ("file:" + "/".join(["d" * 200] * 5),),  # 1004 bytes, components under the limit
    ("file:1/模型.py",),
])  # fmt: skip
def test_ordinary_loads_pass(files):
    assert model_load_problem(load(*files)) is None
    check_model_load(load(*files))


def test_a_load_without_parameters_passes():
    assert model_load_problem(service_pb2.RepositoryModelLoadRequest(model_name="simple")) is None


@pytest.mark.parametrize(("name", "reason"), [
    ("file:" + "A" * 256, "a path component is longer than 255 bytes"),  # Triton 2.51 aborts on this
    ("file:1/" + "é" * 128, "a path component is longer than 255 bytes"),  # 256 bytes in UTF-8, 128 characters
    ("file:" + "a/" * 600 + "x", f"the path is longer than {MAX_FILE_PATH_BYTES} bytes"),  # over PATH_MAX: aborts
    ("file:../escape.py", "the path must stay within model directory"),
    ("file:1/../../escape.py", "the path must stay within model directory"),
    ("file:1/../1/model.py", "the path must stay within model directory"),
    ("file:/etc/cron.d/job", "the path must be relative to the model directory"),
    ("file:", "the path is empty"),
])  # fmt: skip
def test_file_paths_that_would_crash_or_misuse_triton_are_refused_with_tritons_status_and_words(name, reason):
    request = load("file:1/model.py", name)
    assert model_load_problem(request).endswith(reason)
    with pytest.raises(MeshError) as refused:
        check_model_load(request)
    assert refused.value.code is ErrorCode.INTERNAL
    assert refused.value.message.startswith(REFUSED + "Invalid file parameter '")
    assert refused.value.message.endswith(reason)


def test_a_long_parameter_name_is_cut_in_the_message():
    name = "file:" + "A" * 5000
    problem = model_load_problem(load(name))
    assert (
        problem == f"Invalid file parameter '{name[:80]}... (5005 bytes)': the path is longer than 1024 bytes"
    )


def test_the_same_reason_whatever_order_the_parameters_came_in():
    first, second = "file:../up.py", "file:" + "A" * 300
    assert model_load_problem(load(first, second)) == model_load_problem(load(second, first))


def test_a_configuration_over_the_limit_is_refused_and_one_at_it_passes():
    at_limit = '{"parameters": "' + "x" * (MAX_CONFIG_BYTES - 18) + '"}'
    assert len(at_limit.encode()) == MAX_CONFIG_BYTES
    assert model_load_problem(load(config=at_limit)) is None
    with pytest.raises(MeshError) as refused:
        check_model_load(load(config=at_limit + " "))
    assert refused.value.code is ErrorCode.INTERNAL
    assert refused.value.message == (
        REFUSED
        + f"Invalid config override: {MAX_CONFIG_BYTES + 1} bytes, over the limit of {MAX_CONFIG_BYTES} bytes"
    )


def test_parameters_triton_itself_judges_are_left_to_it():
    """A `config` that is not a string, or a file parameter given as a string: Triton's own INVALID_ARGUMENT."""
    request = load(config=None)
    request.parameters["config"].int64_param = 7
    request.parameters["file:1/model.py"].string_param = "not bytes"
    request.parameters["unknown"].bool_param = True
    assert model_load_problem(request) is None
