"""The committed generated code must be exactly what `make gen` produces from protos/."""

from pathlib import Path

from meshserve.protogen import ROOT, generate_files


def test_generated_code_is_up_to_date():
    stale = [
        name
        for name, text in generate_files().items()
        if not (ROOT / name).exists() or (ROOT / name).read_text() != text
    ]
    assert not stale, f"generated code is stale, run `make gen`: {stale}"


def test_generated_code_imports_open_inference_messages_from_tritonclient():
    from tritonclient.grpc import service_pb2

    from meshserve.inference.v1 import inference_pb2

    method = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].methods_by_name["ModelInfer"]
    assert method.input_type is service_pb2.ModelInferRequest.DESCRIPTOR
    assert "tritonclient.grpc import service_pb2" in Path(inference_pb2.__file__).read_text()
