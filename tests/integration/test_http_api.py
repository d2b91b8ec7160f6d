"""The Open Inference Protocol over HTTP/REST: unmodified tritonclient.http (sync and asyncio) and a curl-like raw
POST against the REST frontend of a real GatewayService in this process, on the session mesh's services.
Model names are route names; scores are compared with Triton's own, directly."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.http.aio as triton_http_aio
import tritonclient.utils.shared_memory as system_shm
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.api.http_api import HTTP_STATUS_FOR
from gateway.api.http_server import HttpFrontend
from meshserve.core.errors import ErrorCode
from tests.helpers import FIXTURES, feature_vector, score_directly
from tests.integration.gateways import Gateway, in_process_gateway

ROWS = np.vstack(
    [
        feature_vector("acct-00001", amount=25.0, merchant_category=1),
        feature_vector("acct-00002", amount=4_000.0, merchant_category=7),
        feature_vector("acct-00003", amount=310.0, merchant_category=4),
    ]
)


@dataclass
class Rest:
    url: str  # host:port, as tritonclient.http takes it
    gateway: Gateway

    def client(self) -> triton_http.InferenceServerClient:
        return triton_http.InferenceServerClient(self.url)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None):
        """A raw POST, as curl would send it: (status, headers, body)."""
        return post(self.url, path, body, headers)


def post(address: str, path: str, body: bytes, headers: dict[str, str] | None = None):
    """A raw POST to `address` (host:port), as curl would send it: (status, headers by lower-case name, body)."""
    request = urllib.request.Request(f"http://{address}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            status, headers_out, data = reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as error:
        status, headers_out, data = error.code, error.headers, error.read()
    return status, {key.lower(): value for key, value in headers_out.items()}, data


@pytest_asyncio.fixture(scope="module")
async def rest(mesh, tmp_path_factory):
    routes = (FIXTURES / "routes.yaml").read_text()
    async with in_process_gateway(mesh, tmp_path_factory.mktemp("http-gateway"), routes) as gateway:
        yield Rest(f"127.0.0.1:{gateway.service.http_port}", gateway)  # the gateway's own REST frontend


def features(matrix: np.ndarray, binary: bool = True) -> triton_http.InferInput:
    tensor = triton_http.InferInput("features", list(matrix.shape), "FP32")
    tensor.set_data_from_numpy(matrix, binary_data=binary)
    return tensor


async def in_thread(call, *args, **kwargs):
    """The sync client blocks: run it off the loop that serves it."""
    return await asyncio.to_thread(call, *args, **kwargs)


async def test_sync_client_sees_a_live_ready_server_and_route_named_models(rest):
    def check():
        client = rest.client()
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("fraud") and client.is_model_ready("fraud", "2")
        assert not client.is_model_ready("no-such-route")
        server = client.get_server_metadata()
        assert server["name"] == "triton" and "binary_tensor_data" in server["extensions"]
        metadata = client.get_model_metadata("fraud")
        assert metadata["name"] == "fraud" and metadata["versions"] == ["1", "2"]
        assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
            ("features", "FP32", [-1, 5])
        ]
        config = client.get_model_config("fraud")
        assert config["name"] == "fraud" and config["max_batch_size"] == 64
        assert config["input"][0]["dims"] == [5]

    await in_thread(check)


async def test_binary_and_json_tensors_both_ways_match_triton_directly(rest, mesh):
    expected = score_directly(mesh.endpoints.triton_grpc, ROWS)

    def infer(binary_in: bool, binary_out: bool):
        output = triton_http.InferRequestedOutput("score", binary_data=binary_out)
        return rest.client().infer("fraud", [features(ROWS, binary_in)], outputs=[output])

    for binary_in in (True, False):
        for binary_out in (True, False):
            result = await in_thread(infer, binary_in, binary_out)
            np.testing.assert_allclose(result.as_numpy("score")[:, 0], expected)
            response = result.get_response()
            assert (response["model_name"], response["model_version"]) == ("fraud", "1")
            score = result.get_output("score")
            assert ("binary_data_size" in score.get("parameters", {})) == binary_out
            assert ("data" in score) == (not binary_out)


async def test_requested_version_pins_the_variant_and_compression_works_both_ways(rest, mesh):
    def infer():
        return rest.client().infer(
            "fraud", [features(ROWS)], model_version="2", request_id="r-2",
            request_compression_algorithm="gzip", response_compression_algorithm="deflate",
        )  # fmt: skip

    result = await in_thread(infer)
    assert result.get_response()["model_version"] == "2" and result.get_response()["id"] == "r-2"
    np.testing.assert_allclose(
        result.as_numpy("score")[:, 0], score_directly(mesh.endpoints.triton_grpc, ROWS, "2")
    )


async def test_curl_like_json_post_gets_json_and_the_serving_variant_in_headers(rest, mesh):
    body = {
        "id": "curl-1",
        "inputs": [{"name": "features", "shape": [3, 5], "datatype": "FP32", "data": ROWS.tolist()}],
    }
    status, headers, reply = await in_thread(
        rest.post, "/v2/models/fraud/infer", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200 and headers["content-type"] == "application/json"
    assert headers["x-meshserve-variant"] == "stable" and headers["x-meshserve-model-version"] == "1"
    assert headers["x-meshserve-tier"] == "primary"
    answer = json.loads(reply)
    (score,) = answer["outputs"]
    assert answer["id"] == "curl-1" and score["shape"] == [3, 1] and "parameters" not in score
    np.testing.assert_allclose(score["data"], score_directly(mesh.endpoints.triton_grpc, ROWS), rtol=1e-6)


RAW = {"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"}


def raw_result(reply) -> triton_http.InferResult:
    status, headers, body = reply
    assert status == 200, body
    length = int(headers["inference-header-content-length"])
    return triton_http.InferenceServerClient.parse_response_body(body, header_length=length)


async def test_a_raw_binary_request_answers_as_triton_does_directly(rest, mesh):
    """Triton's raw binary request (Inference-Header-Content-Length 0, the body one input's bytes): the row of
    a route's one-input model answers what Triton itself answers for it, every output in binary."""
    for n in range(len(ROWS)):
        row = ROWS[n].tobytes()
        ours = raw_result(await in_thread(rest.post, "/v2/models/fraud/infer", row, RAW))
        theirs = raw_result(
            await in_thread(post, mesh.endpoints.triton_http, "/v2/models/fraud/versions/1/infer", row, RAW)
        )
        assert (
            [(o["name"], o["datatype"], o["shape"]) for o in ours.get_response()["outputs"]]
            == [(o["name"], o["datatype"], o["shape"]) for o in theirs.get_response()["outputs"]]
            == [("score", "FP32", [1, 1])]
        )
        np.testing.assert_array_equal(ours.as_numpy("score"), theirs.as_numpy("score"))
        assert ours.get_response()["model_name"] == "fraud"


async def test_a_raw_binary_request_that_does_not_fit_is_400_naming_why_as_in_triton(rest, mesh):
    """A wrong byte count, or a model of two inputs: 400 from us as from Triton, our message naming the input
    and the sizes, or the inputs; then a good raw request still succeeds."""
    triton = mesh.endpoints.triton_http
    short = ROWS[0].tobytes()[:-1]
    status, _, body = await in_thread(rest.post, "/v2/models/fraud/infer", short, RAW)
    error = json.loads(body)["error"]
    assert status == 400 and "input 'features'" in error and "takes 20 bytes, got 19" in error
    assert (await in_thread(post, triton, "/v2/models/fraud/versions/1/infer", short, RAW))[0] == 400
    pair = np.array([1, 2], np.int32).tobytes()
    status, _, body = await in_thread(rest.post, "/v2/models/echo/infer", pair, RAW)
    error = json.loads(body)["error"]
    assert status == 400 and "exactly 1 input" in error and "has 2: 'INPUT0', 'INPUT1'" in error
    assert (await in_thread(post, triton, "/v2/models/echo/versions/2/infer", pair, RAW))[0] == 400
    expected = score_directly(mesh.endpoints.triton_grpc, ROWS[:1])
    good = raw_result(await in_thread(rest.post, "/v2/models/fraud/infer", ROWS[0].tobytes(), RAW))
    np.testing.assert_allclose(good.as_numpy("score")[:, 0], expected)


async def test_routing_headers_force_a_variant_and_a_failing_one_falls_back(rest, mesh):
    """The same routing as over gRPC: the override header forces the canary (fraud v2); on `canary-down` the
    forced canary fails and the fallback tier (stable, v1) answers, and the headers say so."""

    def infer(route: str):
        client = rest.client()
        result = client.infer(route, [features(ROWS)], headers={"x-meshserve-variant": "canary"})
        return result.get_response()["model_version"], result.as_numpy("score")[:, 0]

    version, scores = await in_thread(infer, "fraud")
    assert version == "2"
    np.testing.assert_allclose(scores, score_directly(mesh.endpoints.triton_grpc, ROWS, "2"))
    body = json.dumps({"inputs": [{"name": "features", "shape": [3, 5], "datatype": "FP32",
                                   "data": ROWS.ravel().tolist()}]}).encode()  # fmt: skip
    status, headers, _ = await in_thread(
        rest.post, "/v2/models/canary-down/infer", body, {"x-meshserve-variant": "canary"}
    )
    assert status == 200
    assert (headers["x-meshserve-variant"], headers["x-meshserve-tier"]) == ("stable", "fallback")
    assert headers["x-meshserve-model-version"] == "1"


async def test_replies_are_not_held_back_by_delayed_acks(rest):
    """A reply goes out as headers, then body: on a connection without TCP_NODELAY the body waits for the
    client's delayed ACK (40 ms on Linux). Sequential metadata reads on one keep-alive connection stay fast."""

    def timings() -> list[float]:
        connection = http.client.HTTPConnection(*rest.url.split(":"), timeout=10)
        seconds = []
        for _ in range(21):
            started = time.perf_counter()
            connection.request("GET", "/v2")
            assert connection.getresponse().read()
            seconds.append(time.perf_counter() - started)
        connection.close()
        return sorted(seconds)

    assert (await in_thread(timings))[10] < 0.02


async def test_aio_client_many_concurrent_infers(rest, mesh):
    expected = score_directly(mesh.endpoints.triton_grpc, ROWS)
    async with triton_http_aio.InferenceServerClient(rest.url) as client:
        assert await client.is_server_ready() and await client.is_model_ready("fraud")

        async def one(n: int) -> float:
            tensor = triton_http_aio.InferInput("features", [1, 5], "FP32")
            tensor.set_data_from_numpy(ROWS[n % 3 : n % 3 + 1], binary_data=n % 2 == 0)
            return (await client.infer("fraud", [tensor])).as_numpy("score")[0, 0]

        scores = await asyncio.gather(*(one(n) for n in range(48)))
    np.testing.assert_allclose(scores, [expected[n % 3] for n in range(48)])


def _refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as failure:
        call()
    return failure.value


async def test_bad_requests_are_4xx_naming_what_is_wrong_and_the_next_request_still_succeeds(rest, mesh):
    expected = score_directly(mesh.endpoints.triton_grpc, ROWS)

    def check():
        client = rest.client()
        unknown = _refused(lambda: client.infer("no-such-route", [features(ROWS)]))
        assert unknown.status() == "404" and "'no-such-route'" in unknown.message()
        assert "fraud" not in unknown.message()  # other routes' names are not the caller's business
        wrong_type = triton_http.InferInput("features", list(ROWS.shape), "FP64")
        wrong_type.set_data_from_numpy(ROWS.astype(np.float64))
        bad = _refused(lambda: client.infer("fraud", [wrong_type]))
        assert bad.status() == "400" and "input 'features'" in bad.message() and "FP64" in bad.message()
        bad = _refused(lambda: client.infer("fraud", [features(ROWS[:, :4])]))
        assert bad.status() == "400" and "input 'features'" in bad.message() and "shape" in bad.message()
        bad = _refused(lambda: client.infer("fraud", [features(ROWS)], model_version="7"))
        assert bad.status() == "404" and "'7'" in bad.message()
        return client.infer("fraud", [features(ROWS)]).as_numpy("score")[:, 0]

    np.testing.assert_allclose(await in_thread(check), expected)

    malformed = [
        b'{"inputs": [{"name": "features", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3]}]}',
        b'{"inputs": [{"name": "features", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, "x"]}]}',
        b'{"inputs": [{"name": "features", "shape": [1, 5], "datatype": "FP32", "data": [1, 2',
    ]
    for body in malformed:
        status, _, reply = await in_thread(rest.post, "/v2/models/fraud/infer", body)
        error = json.loads(reply)["error"]
        assert status == 400 and ("input 'features'" in error or "not valid JSON" in error), error
        assert "Traceback" not in error and "Error" not in error
    good = {
        "inputs": [{"name": "features", "shape": [3, 5], "datatype": "FP32", "data": ROWS.ravel().tolist()}]
    }
    status, _, reply = await in_thread(rest.post, "/v2/models/fraud/infer", json.dumps(good).encode())
    assert status == 200
    np.testing.assert_allclose(json.loads(reply)["outputs"][0]["data"], expected, rtol=1e-6)


async def test_the_timeout_parameter_is_the_calls_time_left(rest):
    """The `slow` model echoes the per-request timeout Triton received: the gateway passes on what is left of
    the caller's `timeout` (µs), or of the route's own budget (10 s) without one."""
    row = np.ones((1, 5), dtype=np.float32)

    def timeout_seen(timeout_us: int | None) -> int:
        result = rest.client().infer("slow", [features(row)], timeout=timeout_us)
        return int(result.as_numpy("timeout_us")[0, 0])

    given = await in_thread(timeout_seen, 3_000_000)  # one at a time: merged calls carry the longest timeout
    default = await in_thread(timeout_seen, None)
    assert 2_000_000 < given <= 3_000_000
    assert 3_000_000 < default <= 10_000_000
    late = await in_thread(lambda: _refused(lambda: rest.client().infer("slow", [features(row)], timeout=1)))
    assert late.status() == "504"


async def test_rest_callers_merge_with_grpc_callers_and_each_gets_its_own_rows(rest, mesh):
    """On the `echo` model, which answers the rows of the Triton request each row came in: concurrent REST
    (JSON INT32 and BYTES) and gRPC callers share Triton requests, and each gets exactly its own answer."""
    numbers = [np.full((1, 3), k, dtype=np.int32) for k in range(24)]
    words = [f"caller {k}" for k in range(24)]

    async def over_rest(client, k: int):
        first = triton_http_aio.InferInput("INPUT0", [1, 3], "INT32")
        first.set_data_from_numpy(numbers[k], binary_data=False)
        second = triton_http_aio.InferInput("INPUT1", [1, 1], "BYTES")
        second.set_data_from_numpy(np.array([[words[k]]], dtype=np.object_), binary_data=False)
        result = await client.infer("echo", [first, second])
        return (
            result.as_numpy("OUTPUT0"),
            result.as_numpy("OUTPUT1")[0, 0],
            int(result.as_numpy("ROWS")[0, 0]),
        )

    async def over_grpc(stub, k: int):
        request = service_pb2.ModelInferRequest(model_name="echo")
        request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 3])
        request.inputs.add(name="INPUT1", datatype="BYTES", shape=[1, 1])
        word = words[k].encode()
        request.raw_input_contents.extend([numbers[k].tobytes(), len(word).to_bytes(4, "little") + word])
        result = InferResult(await stub.ModelInfer(request, timeout=30))
        return (
            result.as_numpy("OUTPUT0"),
            result.as_numpy("OUTPUT1")[0, 0],
            int(result.as_numpy("ROWS")[0, 0]),
        )

    port = rest.gateway.service.port
    async with (
        triton_http_aio.InferenceServerClient(rest.url) as client,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answers = await asyncio.gather(
            *(over_rest(client, k) if k % 2 else over_grpc(stub, k) for k in range(24))
        )
    for k, (doubled, reversed_word, _) in enumerate(answers):
        np.testing.assert_array_equal(doubled, numbers[k] * 2 + 2)  # echo v2: INPUT0 * 2 + version
        word = reversed_word.decode() if isinstance(reversed_word, bytes) else reversed_word
        assert word == words[k][::-1]
    rest_rows = [rows for k, (_, _, rows) in enumerate(answers) if k % 2]
    assert max(rest_rows) > 1  # some REST callers' rows travelled to Triton with others'


def direct_client(mesh) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(mesh.endpoints.triton_grpc)


async def test_statistics_are_tritons_own_under_the_routes_name(rest, mesh):
    def check():
        client = rest.client()
        client.infer("fraud-v2", [features(ROWS)])  # the fraud-v2 route is fraud version 2 alone
        triton, deadline = direct_client(mesh), time.monotonic() + 5
        while True:  # Triton counts an execution just after its answer leaves: until two direct reads agree
            (before,) = triton.get_inference_statistics("fraud", "2", as_json=True)["model_stats"]
            (through,) = client.get_inference_statistics("fraud-v2")["model_stats"]
            (direct,) = triton.get_inference_statistics("fraud", "2", as_json=True)["model_stats"]
            if before == direct or time.monotonic() > deadline:
                break
        assert (through["name"], through["version"]) == ("fraud-v2", "2")
        assert through["inference_count"] == int(direct["inference_count"]) > 0  # numbers, as Triton's REST
        assert {"fraud", "fraud-v2"} <= {s["name"] for s in client.get_inference_statistics()["model_stats"]}
        (pinned,) = client.get_inference_statistics("fraud", "2")["model_stats"]
        assert (pinned["name"], pinned["version"]) == ("fraud", "2")

    await in_thread(check)


async def test_the_repository_index_and_model_control_are_tritons(rest, mesh):
    def check():
        client, triton = rest.client(), direct_client(mesh)
        index = sorted(
            (m["name"], m.get("version", ""), m.get("state", "")) for m in client.get_model_repository_index()
        )
        assert index == sorted(
            (m.name, m.version, m.state) for m in triton.get_model_repository_index().models
        )
        through = _refused(lambda: client.load_model("no-such-model"))
        direct = _refused(lambda: triton.load_model("no-such-model"))
        assert through.message() == direct.message()  # and the status Triton's REST gives for its code
        code = ErrorCode[direct.status().removeprefix("StatusCode.")]
        assert through.status() == str(HTTP_STATUS_FOR[code])
        values = np.ones((1, 2), dtype=np.float32)
        spare = triton_http.InferInput("IN", [1, 2], "FP32")
        spare.set_data_from_numpy(values)
        try:
            client.unload_model("spare", unload_dependents=True)
            assert not triton.is_model_ready("spare") and not client.is_model_ready("spare")
            gone = _refused(lambda: client.infer("spare", [spare]))
            assert gone.status() == "404" and "'spare'" in gone.message()
        finally:
            client.load_model("spare")
        assert triton.is_model_ready("spare") and client.is_model_ready("spare")
        np.testing.assert_array_equal(client.infer("spare", [spare]).as_numpy("OUT"), values + 1)

    await in_thread(check)


async def test_system_shared_memory_inputs_and_outputs_over_rest(rest, mesh):
    def check():
        client = rest.client()
        regions = {kind: f"meshserve-rest-{kind}-{uuid.uuid4().hex[:8]}" for kind in ("in", "out")}
        sizes = {"in": ROWS.nbytes, "out": ROWS.shape[0] * 4}
        handles = {
            k: system_shm.create_shared_memory_region(n, f"/{n}", sizes[k]) for k, n in regions.items()
        }
        try:
            for kind, name in regions.items():
                client.register_system_shared_memory(name, f"/{name}", sizes[kind])
            assert set(regions.values()) <= {r["name"] for r in client.get_system_shared_memory_status()}
            (status,) = client.get_system_shared_memory_status(regions["in"])
            assert (status["key"], status["byte_size"]) == (f"/{regions['in']}", sizes["in"])
            system_shm.set_shared_memory_region(handles["in"], [ROWS])
            tensor = triton_http.InferInput("features", list(ROWS.shape), "FP32")
            tensor.set_shared_memory(regions["in"], sizes["in"])
            wanted = triton_http.InferRequestedOutput("score")
            wanted.set_shared_memory(regions["out"], sizes["out"])
            score = client.infer("fraud", [tensor], outputs=[wanted]).get_output("score")
            assert "data" not in score and "parameters" not in score  # as from Triton: it is in the region
            written = system_shm.get_contents_as_numpy(handles["out"], np.float32, [ROWS.shape[0], 1]).copy()
            np.testing.assert_allclose(written[:, 0], score_directly(mesh.endpoints.triton_grpc, ROWS))
        finally:
            for kind, name in regions.items():
                client.unregister_system_shared_memory(name)
                system_shm.destroy_shared_memory_region(handles[kind])
        assert not set(regions.values()) & {r["name"] for r in client.get_system_shared_memory_status()}

    await in_thread(check)


async def test_cuda_shared_memory_trace_and_log_settings_are_tritons_answers(rest, mesh):
    def check():
        client, triton = rest.client(), direct_client(mesh)
        handle = base64.b64encode(b"\0" * 64)  # no GPU here: Triton's refusal, as Triton gives it
        through = _refused(lambda: client.register_cuda_shared_memory("gpu", handle, 0, 64))
        direct = _refused(lambda: triton.register_cuda_shared_memory("gpu", handle, 0, 64))
        assert through.message() == direct.message()
        assert client.get_cuda_shared_memory_status() == []
        traces = {k: v["value"] for k, v in triton.get_trace_settings(as_json=True)["settings"].items()}
        assert {
            k: v if isinstance(v, list) else [v] for k, v in client.get_trace_settings().items()
        } == traces
        logs = client.get_log_settings()
        direct_logs = triton.get_log_settings(as_json=True)["settings"]
        assert logs == {k: next(iter(v.values())) for k, v in direct_logs.items()}
        assert client.update_log_settings({"log_info": logs["log_info"]}) == logs

    await in_thread(check)


async def test_stop_lets_requests_in_flight_finish_and_then_refuses_connections(rest, marker_dir):
    service = rest.gateway.service
    frontend = HttpFrontend(service.api, lambda: service.ready)
    port = await frontend.start()
    url = f"127.0.0.1:{port}"
    async with triton_http_aio.InferenceServerClient(url) as client:
        markers = len(os.listdir(marker_dir))
        tensor = triton_http_aio.InferInput("features", [1, 5], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 5), dtype=np.float32))
        in_flight = asyncio.ensure_future(client.infer("slow", [tensor]))
        deadline = time.monotonic() + 20
        while len(os.listdir(marker_dir)) <= markers:  # the request is inside the (1 s) model
            assert time.monotonic() < deadline and not in_flight.done(), (
                "the slow request never reached the model"
            )
            await asyncio.sleep(0.02)
        await frontend.stop(10)
        assert (await asyncio.wait_for(in_flight, 5)).as_numpy("score")[0, 0] == 0.5
    async with triton_http_aio.InferenceServerClient(url) as client:
        with pytest.raises(Exception):  # noqa: B017 - aiohttp's connection error: nothing listens any more
            await client.is_server_live()


async def test_httptools_by_default_and_h11_on_request_answer_alike(rest, mesh):
    """httptools (C) parses the gateway's HTTP/1.1 by default; uvicorn's pure-Python h11 stays selectable
    (MESHSERVE_GATEWAY_HTTP_PARSER): a keep-alive JSON infer, chunked too, answers the same through either."""
    service = rest.gateway.service
    assert service.http is not None and service.http.http_parser == "httptools"
    body = json.dumps({"inputs": [{"name": "features", "shape": [3, 5], "datatype": "FP32",
                                   "data": ROWS.tolist()}]}).encode()  # fmt: skip
    expected = score_directly(mesh.endpoints.triton_grpc, ROWS)

    def infer_twice(port: int) -> list[list[float]]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        scores = []
        for chunked in (False, True):
            payload = iter([body[:10], body[10:]]) if chunked else body
            connection.request("POST", "/v2/models/fraud/infer", payload, encode_chunked=chunked)
            reply = connection.getresponse()
            assert reply.status == 200
            scores.append(json.loads(reply.read())["outputs"][0]["data"])
        connection.close()
        return scores

    for parser in ("httptools", "h11"):
        frontend = HttpFrontend(service.api, lambda: service.ready, http_parser=parser)
        port = await frontend.start()
        try:
            for scores in await in_thread(infer_twice, port):
                np.testing.assert_allclose(scores, expected, rtol=1e-6)
        finally:
            await frontend.stop(1)
