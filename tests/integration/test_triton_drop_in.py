"""The gateway in Triton's place: Triton's own client, unmodified, sees what Triton itself would show. A model no
route names is served under its own name; model control, statistics, shared memory and sequences work as they do
against Triton; a long deadline is the caller's to give; errors come in Triton's words."""

from __future__ import annotations

import queue
import time
import urllib.request
import uuid
from contextlib import contextmanager
from importlib.metadata import version

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.utils.shared_memory as system_shm
from tritonclient.utils import InferenceServerException

from tests.helpers import feature_vector, score_directly

# Triton batches concurrent rows as it likes, and a row's float32 score may then differ by a rounding step
SCORE_RTOL = 1e-6

ROWS = np.vstack([feature_vector("acct-00001", amount=25.0, merchant_category=1),
                  feature_vector("acct-00002", amount=4_000.0, merchant_category=7)])  # fmt: skip


@pytest.fixture
def gateway(mesh):
    with triton_grpc.InferenceServerClient(mesh.endpoints.gateway) as client:
        yield client


@pytest.fixture
def triton(mesh):
    with triton_grpc.InferenceServerClient(mesh.endpoints.triton_grpc) as client:
        yield client


def spare_input(values: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("IN", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    return tensor


def refusal(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as failure:
        call()
    return failure.value


def test_a_model_no_route_names_is_served_under_its_own_name(gateway):
    assert gateway.is_model_ready("spare") and gateway.is_model_ready("spare", "1")
    assert not gateway.is_model_ready("spare", "7")  # a version Triton does not serve: False, never an error
    metadata = gateway.get_model_metadata("spare")
    assert (metadata.name, list(metadata.versions)) == ("spare", ["1"])
    assert gateway.get_model_config("spare").config.max_batch_size == 8
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = gateway.infer("spare", [spare_input(values)])
    np.testing.assert_array_equal(result.as_numpy("OUT"), values + 1)
    assert result.get_response().model_name == "spare"


def test_the_repository_index_is_tritons(gateway, triton):
    def index(client):
        return sorted((m.name, m.version, m.state) for m in client.get_model_repository_index().models)

    assert index(gateway) == index(triton)


def test_a_model_unloaded_and_loaded_through_the_gateway_goes_and_comes_back_at_once(gateway, triton):
    values = np.ones((1, 2), dtype=np.float32)
    try:
        gateway.unload_model("spare", unload_dependents=True)
        assert not triton.is_model_ready("spare")  # the call went to Triton
        assert not gateway.is_model_ready("spare")  # and the gateway stopped serving the name
        gone = refusal(lambda: gateway.infer("spare", [spare_input(values)]))
        assert gone.status() == "StatusCode.NOT_FOUND"
        assert "Request for unknown model: 'spare' is not found" in gone.message()
    finally:
        gateway.load_model("spare")
    assert triton.is_model_ready("spare") and gateway.is_model_ready("spare")
    np.testing.assert_array_equal(gateway.infer("spare", [spare_input(values)]).as_numpy("OUT"), values + 1)


def test_loading_a_model_triton_does_not_have_is_tritons_error(gateway, triton):
    through, direct = (refusal(lambda c=c: c.load_model("no-such-model")) for c in (gateway, triton))
    assert (through.status(), through.message()) == (direct.status(), direct.message())


def test_statistics_of_a_model_are_tritons_own(gateway, triton):
    for _ in range(3):
        gateway.infer("spare", [spare_input(np.zeros((1, 4), dtype=np.float32))])
    # Triton records a request's statistics just after its response goes out: wait until they have settled
    # (two reads agree; bounded), so that both reads below see the same numbers
    deadline = time.monotonic() + 5
    while (
        settled := triton.get_inference_statistics("spare", as_json=True)
    ) != triton.get_inference_statistics("spare", as_json=True):
        assert time.monotonic() < deadline, "Triton's statistics of spare never settled"
    through = gateway.get_inference_statistics("spare", as_json=True)
    direct = triton.get_inference_statistics("spare", as_json=True)
    assert through == direct == settled and int(direct["model_stats"][0]["inference_count"]) >= 3


def test_statistics_of_a_route_count_every_version_behind_it_under_the_routes_name(gateway, triton):
    gateway.infer("fraud-v2", [fraud_input(ROWS)])  # the fraud-v2 route is fraud version 2 alone
    # Triton counts an execution just after its answer leaves: read until two direct reads agree around ours
    deadline = time.monotonic() + 5
    while True:
        before = triton.get_inference_statistics("fraud", "2", as_json=True)["model_stats"]
        through = gateway.get_inference_statistics("fraud-v2", as_json=True)["model_stats"]
        after = triton.get_inference_statistics("fraud", "2", as_json=True)["model_stats"]
        if before == after or time.monotonic() > deadline:
            break
    assert [(s["name"], s["version"]) for s in through] == [("fraud-v2", "2")]
    assert through[0]["inference_count"] == after[0]["inference_count"]


def fraud_input(matrix: np.ndarray, name: str = "features") -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, list(matrix.shape), "FP32")
    tensor.set_data_from_numpy(matrix)
    return tensor


@contextmanager
def system_region(client, byte_size: int):
    """A POSIX shared-memory region registered with `client`, unregistered and removed afterwards."""
    name = f"meshserve-test-{uuid.uuid4().hex[:8]}"
    handle = system_shm.create_shared_memory_region(name, f"/{name}", byte_size)
    try:
        client.register_system_shared_memory(name, f"/{name}", byte_size)
        yield name, handle
    finally:
        client.unregister_system_shared_memory(name)
        system_shm.destroy_shared_memory_region(handle)


def test_system_shared_memory_inputs_and_outputs_pass_through_the_gateway(gateway, triton, mesh):
    input_bytes, output_bytes = ROWS.nbytes, ROWS.shape[0] * 4
    with system_region(gateway, input_bytes) as (inputs, in_handle), \
         system_region(gateway, output_bytes) as (outputs, out_handle):  # fmt: skip
        registered = set(gateway.get_system_shared_memory_status().regions)
        assert {inputs, outputs} <= registered
        assert registered == set(triton.get_system_shared_memory_status().regions)
        system_shm.set_shared_memory_region(in_handle, [ROWS])
        tensor = triton_grpc.InferInput("features", list(ROWS.shape), "FP32")
        tensor.set_shared_memory(inputs, input_bytes)
        wanted = triton_grpc.InferRequestedOutput("score")
        wanted.set_shared_memory(outputs, output_bytes)
        result = gateway.infer("fraud", [tensor], outputs=[wanted])
        scores = system_shm.get_contents_as_numpy(out_handle, np.float32, [ROWS.shape[0], 1]).copy()
        np.testing.assert_allclose(
            scores[:, 0], score_directly(mesh.endpoints.triton_grpc, ROWS), rtol=SCORE_RTOL
        )
        direct = triton.infer("fraud", [tensor], model_version="1", outputs=[wanted])  # the route serves v1
        assert result.get_response() == direct.get_response()  # Triton's reply, output in the region and all
    assert not {inputs, outputs} & set(gateway.get_system_shared_memory_status().regions)


def test_a_cuda_shared_memory_call_gets_tritons_own_answer(gateway, triton):
    """No GPU here: Triton's refusal comes back as Triton gave it, not as a gateway error."""
    through, direct = (refusal(lambda c=c: c.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64))
                       for c in (gateway, triton))  # fmt: skip
    assert (through.status(), through.message()) == (direct.status(), direct.message())


def test_the_requests_of_a_sequence_reach_triton_in_order_on_a_stream(gateway):
    """Three interleaved sequences, 12 requests each, sent without waiting: each running total is the sum so far,
    so a request out of order or at another model instance shows as a wrong total."""
    answers: queue.Queue = queue.Queue()
    gateway.start_stream(callback=lambda result, error: answers.put((result, error)))
    sequences, length = (101, 202, 303), 12
    try:
        for step in range(length):
            for sequence in sequences:
                value = triton_grpc.InferInput("VALUE", [1, 1], "INT32")
                value.set_data_from_numpy(np.array([[sequence * 1000 + step]], dtype=np.int32))
                gateway.async_stream_infer("accumulate", [value], request_id=f"{sequence}:{step}",
                                           sequence_id=sequence, sequence_start=step == 0,
                                           sequence_end=step == length - 1)  # fmt: skip
        results = [answers.get(timeout=30) for _ in range(len(sequences) * length)]
    finally:
        gateway.stop_stream()
    totals: dict[str, int] = {}
    for result, error in results:
        assert error is None, error
        totals[result.get_response().id] = int(result.as_numpy("TOTAL")[0, 0])
    for sequence in sequences:
        running = np.cumsum([sequence * 1000 + step for step in range(length)])
        assert [totals[f"{sequence}:{step}"] for step in range(length)] == running.tolist()


def test_a_callers_long_deadline_is_honoured_beyond_the_routes_timeout(gateway, mesh):
    """`slow` runs 1 s per request; the `slow-tight` route times out at 300 ms for callers that set no deadline."""
    tensor = triton_grpc.InferInput("features", [1, 5], "FP32")
    tensor.set_data_from_numpy(ROWS[:1])
    hurried = refusal(lambda: gateway.infer("slow-tight", [tensor]))
    assert hurried.status() == "StatusCode.DEADLINE_EXCEEDED"
    result = gateway.infer("slow-tight", [tensor], client_timeout=20)
    assert result.as_numpy("score").shape == (1, 1)


def test_reflection_describes_tritons_service_as_the_gateway_serves_it(mesh):
    """grpcurl and other reflection clients can call the gateway knowing nothing but its address."""
    import grpc
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(mesh.endpoints.gateway) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert "inference.GRPCInferenceService" in set(database.get_services())
        service = DescriptorPool(database).FindServiceByName("inference.GRPCInferenceService")
        method = service.methods_by_name["ModelInfer"]
        assert method.input_type.full_name == "inference.ModelInferRequest"


def test_the_mesh_gateway_serves_tritons_rest_api_on_its_own_port(mesh):
    import tritonclient.http as triton_http

    with triton_http.InferenceServerClient(mesh.endpoints.gateway_http) as client:
        assert client.is_server_ready() and client.is_model_ready("fraud")
        tensor = triton_http.InferInput("features", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS)
        result = client.infer("fraud", [tensor])
    np.testing.assert_allclose(
        result.as_numpy("score")[:, 0], score_directly(mesh.endpoints.triton_grpc, ROWS), rtol=SCORE_RTOL
    )


# -- what Triton's own example clients check (triton-inference-server/client src/python/examples) --------------


def test_server_metadata_is_tritons_and_meshserve_says_who_it_is_beside_it(gateway, triton, mesh):
    """simple_grpc_health_metadata.py and simple_http_health_metadata.py require the name "triton"."""
    import grpc
    import tritonclient.http as triton_http
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    direct = triton.get_server_metadata()
    through = gateway.get_server_metadata()
    assert (through.name, through.version) == ("triton", direct.version) == ("triton", "2.51.0")
    assert list(through.extensions) == list(
        direct.extensions
    )  # every one the bundled Triton has works through it
    with grpc.insecure_channel(mesh.endpoints.gateway) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        _, call = stub.ServerMetadata.with_call(service_pb2.ServerMetadataRequest())
    assert dict(call.trailing_metadata())["x-meshserve-server"] == f"meshserve/{version('meshserve')}"

    with triton_http.InferenceServerClient(mesh.endpoints.gateway_http) as rest:
        assert rest.get_server_metadata() == {"name": "triton", "version": "2.51.0",
                                              "extensions": list(direct.extensions)}  # fmt: skip
    with urllib.request.urlopen(f"http://{mesh.endpoints.gateway_http}/v2", timeout=10) as reply:
        assert reply.headers["x-meshserve-server"] == f"meshserve/{version('meshserve')}"


def test_typed_contents_beside_raw_contents_are_refused_in_tritons_exact_words(gateway, triton, mesh):
    """grpc_explicit_int_content_client.py: a valid typed request, then one raw entry added beside the typed
    contents; Triton's exact message is expected, for the input and the model asked for."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="spare")
    tensor = request.inputs.add(name="IN", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents[:] = [1.0, 2.0, 3.0, 4.0]
    answers = {}
    for name, address in (("gateway", mesh.endpoints.gateway), ("triton", mesh.endpoints.triton_grpc)):
        with grpc.insecure_channel(address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert np.frombuffer(stub.ModelInfer(request).raw_output_contents[0], np.float32).tolist() == [
                2,
                3,
                4,
                5,
            ]
            mixed = service_pb2.ModelInferRequest()
            mixed.CopyFrom(request)
            mixed.raw_input_contents.append(np.zeros(4, np.float32).tobytes())
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(mixed)
            answers[name] = (refused.value.code(), refused.value.details())
            assert stub.ModelInfer(request).outputs[0].name == "OUT"  # and the next valid request succeeds
    assert (
        answers["gateway"]
        == answers["triton"]
        == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "contents field must not be specified when using raw_input_contents for 'IN' for model 'spare'",
        )
    )


@pytest.mark.parametrize(
    "path",
    ["A" * 256, "a/" * 2100 + "x", "../escape.py", "/etc/cron.d/job"],
    ids=["component-over-NAME_MAX", "path-over-PATH_MAX", "climbing-out", "absolute"],
)
def test_a_load_whose_file_path_would_crash_or_misuse_triton_never_reaches_it(gateway, triton, mesh, path):
    """simple_grpc_model_control.py: a `file:` path component over 255 bytes made the bundled Triton abort; the
    example expects newer Triton's answer (INTERNAL, "failed to poll from model repository") and a live server.
    The gateway refuses it (gRPC and REST), and the inference service again for callers that reach it directly."""
    for address in (mesh.endpoints.gateway, mesh.endpoints.inference):
        with triton_grpc.InferenceServerClient(address) as client:
            refused = refusal(
                lambda c=client: c.load_model("spare", config="{}", files={f"file:{path}": b"a"})
            )
        assert refused.status() == "StatusCode.INTERNAL"
        assert refused.message().startswith(
            "failed to load 'spare', failed to poll from model repository: Invalid file parameter 'file:"
        )
    import tritonclient.http as triton_http

    with triton_http.InferenceServerClient(mesh.endpoints.gateway_http) as rest:
        refused = refusal(lambda: rest.load_model("spare", config="{}", files={f"file:{path}": b"a"}))
    assert refused.status() == "500"  # INTERNAL on REST
    assert "failed to poll from model repository: Invalid file parameter 'file:" in refused.message()
    assert triton.is_server_live() and triton.is_model_ready("spare")  # Triton never saw it
    assert gateway.is_model_ready("spare")


def stream_of(
    client, requests: list[tuple[str, list[int]]], final: bool = True
) -> list[tuple[object, object]]:
    """`requests` (id, values) to the decoupled `repeat` on one stream, without waiting; every (result, error) the
    stream brings until it ends (tritonclient's stop_stream waits for Triton to close it)."""
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for request_id, values in requests:
            tensor = triton_grpc.InferInput("IN", [len(values)], "INT32")
            tensor.set_data_from_numpy(np.array(values, dtype=np.int32))
            client.async_stream_infer("repeat", [tensor], request_id=request_id,
                                      enable_empty_final_response=final)  # fmt: skip
    finally:
        client.stop_stream()
    return [answers.get_nowait() for _ in range(answers.qsize())]


def responses(got) -> list[tuple[str, int | None, bool]]:
    """(request id, OUT or None for the empty final response, whether it is the final one), in arrival order."""
    shown = []
    for result, error in got:
        assert error is None, error
        reply = result.get_response()
        final = reply.parameters["triton_final_response"].bool_param
        shown.append((reply.id, None if not reply.outputs else int(result.as_numpy("OUT")[0]), final))
    return shown


def test_a_decoupled_model_streams_every_response_through_the_gateway_as_triton_sends_them(gateway, triton):
    """Triton's repeat_int32 example through the gateway: every response of each request, in order, then the
    empty final one; two requests on one stream each get their own; the same as from Triton directly."""
    sent = [("a", [4, 5, 6]), ("b", [7, 8])]
    through, direct = responses(stream_of(gateway, sent)), responses(stream_of(triton, sent))
    for answers in (through, direct):
        for request_id, values in sent:
            mine = [(out, final) for rid, out, final in answers if rid == request_id]
            assert mine == [*((v, False) for v in values), (None, True)]
    assert sorted(through, key=str) == sorted(direct, key=str)
    # without the final flag asked for, no empty response: one response per element
    assert [out for _, out, _ in responses(stream_of(gateway, [("c", [1, 2, 3])], final=False))] == [1, 2, 3]


def test_a_decoupled_models_error_arrives_in_band_and_the_stream_goes_on(gateway):
    got = stream_of(gateway, [("bad", [3, -1, 9])])
    errors = [str(error) for _, error in got if error is not None]
    assert len(errors) == 1 and "negative value -1" in errors[0]
    ok = [(result.get_response().id, result.get_response().outputs) for result, error in got if error is None]
    values = [
        int(result.as_numpy("OUT")[0])
        for result, error in got
        if error is None and result.get_response().outputs
    ]
    assert values == [3, 9] and all(rid == "bad" for rid, _ in ok)


def test_a_decoupled_model_and_an_ordinary_one_share_a_stream(gateway):
    answers: queue.Queue = queue.Queue()
    gateway.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        repeat = triton_grpc.InferInput("IN", [2], "INT32")
        repeat.set_data_from_numpy(np.array([11, 12], dtype=np.int32))
        gateway.async_stream_infer("repeat", [repeat], request_id="r", enable_empty_final_response=True)
        gateway.async_stream_infer("spare", [spare_input(np.ones((1, 2), dtype=np.float32))], request_id="s")
    finally:
        gateway.stop_stream()
    got = [answers.get_nowait() for _ in range(answers.qsize())]
    assert all(error is None for _, error in got), got
    by_id: dict[str, list] = {}
    for result, _ in got:
        by_id.setdefault(result.get_response().id, []).append(result)
    assert [r.get_response().model_name for r in by_id["r"]] == ["repeat"] * 3
    np.testing.assert_array_equal(by_id["s"][0].as_numpy("OUT"), [[2.0, 2.0]])


def test_unary_inference_on_a_decoupled_model_gets_tritons_refusal(gateway, triton):
    tensor = triton_grpc.InferInput("IN", [1], "INT32")
    tensor.set_data_from_numpy(np.array([1], dtype=np.int32))
    through, direct = (refusal(lambda c=c: c.infer("repeat", [tensor])) for c in (gateway, triton))
    assert (through.status(), through.message()) == (direct.status(), direct.message())
