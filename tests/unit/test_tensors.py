import re

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from gateway.serving.tensors import validate_infer_request
from meshserve.core.errors import InvalidArgument

METADATA = service_pb2.ModelMetadataResponse(
    name="fraud",
    inputs=[
        service_pb2.ModelMetadataResponse.TensorMetadata(name="features", datatype="FP32", shape=[-1, 5])
    ],
)
Tensor = service_pb2.ModelInferRequest.InferInputTensor


def raw_request(name="features", datatype="FP32", shape=(1, 5), data=None):
    data = np.zeros(shape, np.float32).tobytes() if data is None else data
    return service_pb2.ModelInferRequest(
        model_name="fraud",
        inputs=[Tensor(name=name, datatype=datatype, shape=shape)],
        raw_input_contents=[data],
    )


def check(request):
    validate_infer_request(request, METADATA, max_batch_size=64, model="fraud")


def test_valid_raw_and_typed_requests_pass():
    check(raw_request(shape=(3, 5)))
    typed = service_pb2.ModelInferRequest(
        model_name="fraud",
        inputs=[
            Tensor(name="features", datatype="FP32", shape=[2, 5], contents={"fp32_contents": [0.0] * 10})
        ],
    )
    check(typed)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            raw_request(datatype="FP64", data=b"\0" * 40),
            "inference input 'features' data-type is 'FP64', but model 'fraud' expects 'FP32'",
        ),
        (
            raw_request(shape=(1, 4), data=b"\0" * 16),
            r"unexpected shape for input 'features' for model 'fraud'. Expected \[-1,5\], got \[1,4\]",
        ),
        (
            raw_request(shape=(5,), data=b"\0" * 20),
            r"unexpected shape for input 'features' for model 'fraud'. Expected \[-1,5\], got \[5\]",
        ),
        (raw_request(name="feats"), "unexpected inference input 'feats' for model 'fraud'"),
        (
            raw_request(data=b"\0" * 12),
            "input byte size mismatch for input 'features' for model 'fraud'. Expected 20, got 12",
        ),
        (raw_request(shape=(65, 5)), "inference request batch-size must be <= 64 for 'fraud'"),
        (
            service_pb2.ModelInferRequest(model_name="fraud"),
            r"expected 1 inputs but got 0 inputs for model 'fraud'. .* missing required input\(s\) \['features'\]",
        ),
    ],
)
def test_each_defect_is_refused_naming_the_input(request_, message):
    with pytest.raises(InvalidArgument, match=message):
        check(request_)


def test_typed_contents_count_must_match_shape():
    typed = service_pb2.ModelInferRequest(
        inputs=[Tensor(name="features", datatype="FP32", shape=[1, 5], contents={"fp32_contents": [1.0] * 4})]
    )
    with pytest.raises(
        InvalidArgument,
        match="elements in contents for input 'features' for model 'fraud'. Expected 5, got 4",
    ):
        check(typed)


def test_raw_contents_must_pair_with_inputs():
    request = raw_request()
    request.raw_input_contents.append(b"")
    with pytest.raises(InvalidArgument, match="expected 1 raw_input_contents but got 2"):
        check(request)


def _one_input(datatype: str, shape: list[int]) -> service_pb2.ModelMetadataResponse:
    tensor = service_pb2.ModelMetadataResponse.TensorMetadata(name="x", datatype=datatype, shape=[-1, *shape])
    return service_pb2.ModelMetadataResponse(name="m", inputs=[tensor])


def test_raw_bytes_tensors_must_hold_exactly_their_elements():
    metadata = _one_input("BYTES", [2])

    def raw(data: bytes) -> service_pb2.ModelInferRequest:
        return service_pb2.ModelInferRequest(
            inputs=[Tensor(name="x", datatype="BYTES", shape=[1, 2])], raw_input_contents=[data]
        )

    element = len(b"ab").to_bytes(4, "little") + b"ab"
    validate_infer_request(raw(element * 2), metadata, 8, "m")
    with pytest.raises(InvalidArgument, match="BYTES data of input 'x' for model 'm' holds 1 elements"):
        validate_infer_request(raw(element), metadata, 8, "m")
    with pytest.raises(
        InvalidArgument, match="BYTES data of input 'x' for model 'm' holds lengths that do not add up"
    ):
        validate_infer_request(raw(element + b"\x09\x00\x00\x00abc"), metadata, 8, "m")


@pytest.mark.parametrize(("datatype", "field", "value"), [("INT8", "int_contents", 128), ("UINT8", "uint_contents", 256),
                                                         ("INT16", "int_contents", -40000)])  # fmt: skip
def test_typed_values_outside_a_narrow_datatype_are_refused(datatype, field, value):
    request = service_pb2.ModelInferRequest(inputs=[Tensor(name="x", datatype=datatype, shape=[1, 2])])
    getattr(request.inputs[0].contents, field).extend([1, value])
    with pytest.raises(
        InvalidArgument,
        match=f"a value in contents of input 'x' for model 'm' is outside the {datatype} range",
    ):
        validate_infer_request(request, _one_input(datatype, [2]), 8, "m")
    getattr(request.inputs[0].contents, field)[1] = 2
    validate_infer_request(request, _one_input(datatype, [2]), 8, "m")


def _exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


def test_typed_contents_alongside_raw_contents_are_refused_in_tritons_words():
    request = raw_request()
    request.inputs[0].contents.fp32_contents.extend([0.0] * 5)
    with pytest.raises(InvalidArgument, match=_exactly(
        "contents field must not be specified when using raw_input_contents for 'features' for model 'fraud'"
    )):  # fmt: skip
        check(request)


def test_mixed_contents_are_named_before_a_raw_count_an_unknown_name_or_a_wrong_type():
    """Triton's grpc_explicit_*_content_client: two typed inputs, and one raw entry added; Triton looks at where
    each input's data is before anything else, so its message is about the first input with typed contents."""
    metadata = service_pb2.ModelMetadataResponse(name="simple", inputs=[
        service_pb2.ModelMetadataResponse.TensorMetadata(name=n, datatype="INT32", shape=[-1, 16])
        for n in ("INPUT0", "INPUT1")
    ])  # fmt: skip
    request = service_pb2.ModelInferRequest(model_name="simple", inputs=[
        Tensor(name=n, datatype="INT32", shape=[1, 16], contents={"int_contents": range(16)})
        for n in ("INPUT0", "INPUT1")
    ])  # fmt: skip
    validate_infer_request(request, metadata, 8, "simple")
    request.raw_input_contents.append(np.arange(8, dtype=np.int32).tobytes())
    request.inputs[0].contents.int_contents[:] = range(8, 16)
    expected = (
        "contents field must not be specified when using raw_input_contents for '{}' for model 'simple'"
    )
    with pytest.raises(InvalidArgument, match=_exactly(expected.format("INPUT0"))):
        validate_infer_request(request, metadata, 8, "simple")
    request.inputs[0].name, request.inputs[0].datatype = "NOPE", "FP32"
    with pytest.raises(InvalidArgument, match=_exactly(expected.format("NOPE"))):
        validate_infer_request(request, metadata, 8, "simple")


def test_typed_contents_of_an_input_in_shared_memory_are_refused_in_tritons_words():
    request = service_pb2.ModelInferRequest(
        inputs=[_in_shared_memory(Tensor(name="x", datatype="FP32", shape=[1, 2]), byte_size=8)]
    )
    request.inputs[0].contents.fp32_contents.extend([0.0, 1.0])
    with pytest.raises(InvalidArgument, match=_exactly(
        "unexpected 'content' provided when using shared memory for input tensor 'x' for model 'm'"
    )):  # fmt: skip
        validate_infer_request(request, _one_input("FP32", [2]), 8, "m")


def _in_shared_memory(tensor: Tensor, byte_size: int) -> Tensor:
    tensor.parameters["shared_memory_region"].string_param = "inputs"
    tensor.parameters["shared_memory_byte_size"].int64_param = byte_size
    return tensor


def test_shared_memory_inputs_take_no_raw_contents_and_only_their_declared_size_is_checked():
    metadata = service_pb2.ModelMetadataResponse(
        name="m",
        inputs=[
            service_pb2.ModelMetadataResponse.TensorMetadata(name=n, datatype="FP32", shape=[-1, 2])
            for n in "ab"
        ],
    )
    shared = _in_shared_memory(Tensor(name="a", datatype="FP32", shape=[1, 2]), byte_size=8)
    request = service_pb2.ModelInferRequest(
        inputs=[shared, Tensor(name="b", datatype="FP32", shape=[1, 2])], raw_input_contents=[b"\0" * 8]
    )
    validate_infer_request(
        request, metadata, 8, "m"
    )  # the one raw entry belongs to 'b', the input not in shm
    request.inputs[0].parameters["shared_memory_byte_size"].int64_param = 4
    with pytest.raises(
        InvalidArgument, match="byte size mismatch for input 'a' for model 'm'. Expected 8, got 4"
    ):
        validate_infer_request(request, metadata, 8, "m")
