"""The REST routes on a fake InferenceApi, driven as ASGI without a network: each route calls the right handler
with the right message, every domain error gets its status from the one map, and nothing leaks a traceback."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib

import numpy as np
import pytest
import tritonclient.http as http
from tritonclient.grpc import model_config_pb2, service_pb2

from gateway.api.http_api import HTTP_STATUS_FOR, OpenInferenceRest
from gateway.routing.dispatch import Tier
from gateway.serving.inference_api import Answered
from meshserve.core.context import current_request_id
from meshserve.core.errors import ErrorCode, MeshError, ResourceExhausted

ROWS = np.array([[250.0, 3, 80.0, 2, 400], [4800.0, 7, 35.0, 19, 3]], dtype=np.float32)


class FakeApi:
    """InferenceApi's interface; `fail` makes every call raise it."""

    def __init__(self, fail: BaseException | None = None, blocking: bool = False) -> None:
        self.fail = fail
        self.blocking = blocking
        self.calls: list[tuple] = []
        self.cancelled = asyncio.Event()

    def _check(self, *call) -> None:
        self.calls.append(call)
        if self.fail is not None:
            raise self.fail

    server_identity = "meshserve/9.9"

    async def server_metadata(self):
        self._check("server_metadata")
        return service_pb2.ServerMetadataResponse(
            name="triton", version="2.51.0", extensions=["binary_tensor_data"]
        )

    async def model_ready(self, route, version):
        self._check("model_ready", route, version)
        return route == "fraud"

    async def model_metadata(self, route, version):
        self._check("model_metadata", route, version)
        return service_pb2.ModelMetadataResponse(name=route, versions=["1", "2"])

    async def model_config(self, route, version):
        self._check("model_config", route, version)
        reply = service_pb2.ModelConfigResponse()
        reply.config.name, reply.config.max_batch_size = route, 64
        reply.config.input.add(name="features", data_type=model_config_pb2.TYPE_FP32, dims=[5])
        return reply

    async def model_infer(self, request, time_left_s, headers):
        self._check("model_infer", request, time_left_s, dict(headers))
        self.request_id = current_request_id()
        if self.blocking:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        rows = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(list(request.inputs[0].shape))
        reply = service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version="2", id=request.id
        )
        reply.outputs.add(name="score", datatype="FP32", shape=[len(rows), 1])
        reply.raw_output_contents.append(rows.sum(axis=1, keepdims=True).tobytes())
        return reply, Answered("canary", "2", Tier.FALLBACK)

    async def model_statistics(self, route, version):
        self._check("model_statistics", route, version)
        reply = service_pb2.ModelStatisticsResponse()
        reply.model_stats.add(name=route or "fraud", version=version, inference_count=5)
        return reply

    async def control(self, method, request):
        self._check("control", method, request)
        replies = {
            "RepositoryIndex": service_pb2.RepositoryIndexResponse(
                models=[
                    service_pb2.RepositoryIndexResponse.ModelIndex(name="fraud", version="1", state="READY")
                ]
            ),
            "TraceSetting": service_pb2.TraceSettingResponse(
                settings={"trace_level": service_pb2.TraceSettingResponse.SettingValue(value=["OFF"])}
            ),
            "LogSettings": service_pb2.LogSettingsResponse(
                settings={"log_info": service_pb2.LogSettingsResponse.SettingValue(bool_param=True)}
            ),
        }
        if method in replies:
            return replies[method]
        response_name = {"SystemSharedMemoryStatus": "SystemSharedMemoryStatusResponse",
                         "CudaSharedMemoryStatus": "CudaSharedMemoryStatusResponse"}.get(method)  # fmt: skip
        return getattr(service_pb2, response_name)() if response_name else None


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


async def call(
    rest: OpenInferenceRest, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
    disconnect: bool = False, app=None,
) -> Reply:  # fmt: skip
    """One request through the ASGI app (`rest`'s own, or `app` around it), as uvicorn would deliver it. After the
    body, the connection stays open (or, with `disconnect`, the caller goes away)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "server": ("test", 80), "client": ("test", 1234),
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        if disconnect:
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()

    sent = []

    async def send(message):
        sent.append(message)

    await (app or rest.app())(scope, receive, send)
    start = sent[0]
    return Reply(
        start["status"],
        {k.decode(): v.decode() for k, v in start["headers"]},
        b"".join(m.get("body", b"") for m in sent[1:]),
    )


def rest_for(api, ready: bool = True, max_body_bytes: int = 1 << 20) -> OpenInferenceRest:
    return OpenInferenceRest(api, lambda: ready, max_body_bytes)


def infer_body(binary: bool = True, **options) -> tuple[bytes, dict[str, str]]:
    tensor = http.InferInput("features", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=binary)
    body, length = http.InferenceServerClient.generate_request_body([tensor], **options)
    return body, {} if length is None else {"Inference-Header-Content-Length": str(length)}


def test_every_error_code_has_one_http_status():
    assert set(HTTP_STATUS_FOR) == set(ErrorCode)
    assert (
        HTTP_STATUS_FOR[ErrorCode.INVALID_ARGUMENT] == HTTP_STATUS_FOR[ErrorCode.FAILED_PRECONDITION] == 400
    )
    assert (HTTP_STATUS_FOR[ErrorCode.NOT_FOUND], HTTP_STATUS_FOR[ErrorCode.RESOURCE_EXHAUSTED]) == (404, 429)
    assert (HTTP_STATUS_FOR[ErrorCode.UNAVAILABLE], HTTP_STATUS_FOR[ErrorCode.DEADLINE_EXCEEDED]) == (
        503,
        504,
    )
    assert (HTTP_STATUS_FOR[ErrorCode.UNIMPLEMENTED], HTTP_STATUS_FOR[ErrorCode.CANCELLED]) == (501, 499)
    assert HTTP_STATUS_FOR[ErrorCode.INTERNAL] == 500


@pytest.mark.parametrize("code", list(ErrorCode))
async def test_a_domain_error_is_its_status_with_tritons_error_body(code):
    reply = await call(rest_for(FakeApi(MeshError(f"it went {code.value}", code))), "GET", "/v2/models/fraud")
    assert reply.status == HTTP_STATUS_FOR[code]
    assert reply.json() == {"error": f"it went {code.value}"}


async def test_overload_says_when_to_retry():
    refused = ResourceExhausted(
        "route 'fraud' is at its limit", metadata=(("grpc-retry-pushback-ms", "1500"),)
    )
    reply = await call(rest_for(FakeApi(refused)), "GET", "/v2/models/fraud/config")
    assert reply.status == 429 and reply.headers["retry-after"] == "2"
    assert reply.headers["grpc-retry-pushback-ms"] == "1500"


async def test_an_unexpected_failure_is_a_generic_500_and_the_traceback_stays_in_the_log(caplog):
    with caplog.at_level(logging.ERROR, logger="gateway.api.http_api"):
        reply = await call(rest_for(FakeApi(KeyError("secret-internal-detail"))), "GET", "/v2/models/fraud")
    assert reply.status == 500
    assert reply.json() == {"error": "internal error in GET /v2/models/{model}; see the server log"}
    assert "secret-internal-detail" in caplog.text and "KeyError" in caplog.text


async def test_health_metadata_config_and_readiness():
    api = FakeApi()
    assert (await call(rest_for(api), "GET", "/v2/health/live")).status == 200
    assert (await call(rest_for(api), "GET", "/v2/health/ready")).status == 200
    assert (await call(rest_for(api, ready=False), "GET", "/v2/health/ready")).status == 400
    server = await call(rest_for(api), "GET", "/v2")
    assert server.json() == {"name": "triton", "version": "2.51.0", "extensions": ["binary_tensor_data"]}
    assert server.headers["x-meshserve-server"] == "meshserve/9.9"  # who answered, beside Triton's answer
    assert (await call(rest_for(api), "GET", "/v2/models/fraud/versions/2/ready")).status == 200
    assert (await call(rest_for(api), "GET", "/v2/models/nope/ready")).status == 400
    assert (await call(rest_for(api), "GET", "/v2/models/fraud/versions/2")).json()["versions"] == ["1", "2"]
    config = (await call(rest_for(api), "GET", "/v2/models/fraud/config")).json()
    assert config["name"] == "fraud" and config["max_batch_size"] == 64
    assert ("model_ready", "fraud", "2") in api.calls and ("model_metadata", "fraud", "2") in api.calls


async def test_unknown_paths_and_methods_answer_in_tritons_error_form():
    reply = await call(rest_for(FakeApi()), "GET", "/v2/nothing/here")
    assert reply.status == 404 and reply.json() == {"error": "no such endpoint: GET /v2/nothing/here"}
    reply = await call(rest_for(FakeApi()), "GET", "/v2/models/fraud/infer")
    assert reply.status == 405 and "method not allowed" in reply.json()["error"]


async def test_infer_passes_version_deadline_and_headers_and_answers_which_variant_served():
    api = FakeApi()
    body, headers = infer_body(timeout=1_500_000, request_id="r-1")
    reply = await call(rest_for(api), "POST", "/v2/models/fraud/versions/2/infer", body,
                       {**headers, "x-user-id": "u-7", "x-request-id": "req-42"})  # fmt: skip
    assert reply.status == 200
    (_, request, time_left, seen_headers) = api.calls[-1]
    assert (request.model_name, request.model_version, request.id) == ("fraud", "2", "r-1")
    assert time_left == pytest.approx(1.5) and seen_headers["x-user-id"] == "u-7"
    assert api.request_id == "req-42"  # adopted, so it travels on to the next hop
    assert reply.headers["x-meshserve-variant"] == "canary"
    assert (
        reply.headers["x-meshserve-model-version"] == "2" and reply.headers["x-meshserve-tier"] == "fallback"
    )
    length = int(reply.headers["inference-header-content-length"])
    result = http.InferenceServerClient.parse_response_body(reply.body, header_length=length)
    np.testing.assert_allclose(result.as_numpy("score")[:, 0], ROWS.sum(axis=1))
    assert result.get_response()["id"] == "r-1"


async def test_a_raw_binary_request_is_one_row_of_the_routes_one_input_and_answers_in_binary():
    api = FakeApi()
    row = ROWS[1]
    raw = {"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"}
    reply = await call(rest_for(api), "POST", "/v2/models/fraud/versions/2/infer", row.tobytes(), raw)
    assert reply.status == 200
    assert ("model_config", "fraud", "2") in api.calls  # the input is deduced from the route's model
    (_, request, time_left, _) = api.calls[-1]
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [("features", "FP32", [1, 5])]
    assert request.raw_input_contents == [row.tobytes()] and time_left is None
    assert reply.headers["content-type"] == "application/octet-stream"
    length = int(reply.headers["inference-header-content-length"])
    result = http.InferenceServerClient.parse_response_body(reply.body, header_length=length)
    np.testing.assert_allclose(result.as_numpy("score")[:, 0], [row.sum()])
    # a row of the wrong size: 400 naming the input and both sizes, and nothing reached the handler
    calls = len(api.calls)
    reply = await call(rest_for(api), "POST", "/v2/models/fraud/infer", row.tobytes()[:-1], raw)
    assert reply.status == 400
    assert "input 'features'" in reply.json()["error"] and "takes 20 bytes, got 19" in reply.json()["error"]
    assert not any(c[0] == "model_infer" for c in api.calls[calls:])


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_requests_and_replies(encoding):
    body, headers = infer_body(binary=False, outputs=[http.InferRequestedOutput("score", binary_data=False)])
    squeeze = gzip.compress if encoding == "gzip" else zlib.compress
    reply = await call(rest_for(FakeApi()), "POST", "/v2/models/fraud/infer", squeeze(body),
                       {**headers, "Content-Encoding": encoding, "Accept-Encoding": f"br;q=1, {encoding}"})  # fmt: skip
    assert reply.status == 200 and reply.headers["content-encoding"] == encoding
    result = http.InferenceServerClient.parse_response_body(reply.body, content_encoding=encoding)
    np.testing.assert_allclose(result.as_numpy("score")[:, 0], ROWS.sum(axis=1))


async def test_bad_bodies_are_400_or_413_and_the_next_request_still_succeeds():
    api = FakeApi()
    rest = rest_for(api, max_body_bytes=4096)
    reply = await call(rest, "POST", "/v2/models/fraud/infer", b'{"inputs": [{"name": "features", ')
    assert reply.status == 400 and "not valid JSON" in reply.json()["error"]
    reply = await call(rest, "POST", "/v2/models/fraud/infer", b"not gzip", {"Content-Encoding": "gzip"})
    assert reply.status == 400 and reply.json() == {"error": "the request body is not valid gzip data"}
    reply = await call(rest, "POST", "/v2/models/fraud/infer", b"x", {"Content-Encoding": "br"})
    assert reply.status == 415
    reply = await call(rest, "POST", "/v2/models/fraud/infer", b" " * 5000)
    assert reply.status == 413 and "over the gateway's limit of 4096 bytes" in reply.json()["error"]
    bomb = gzip.compress(b" " * 100_000)
    reply = await call(rest, "POST", "/v2/models/fraud/infer", bomb, {"Content-Encoding": "gzip"})
    assert reply.status == 413 and "decompressed" in reply.json()["error"]
    reply = await call(
        rest, "POST", "/v2/models/fraud/infer", b"{}", {"Inference-Header-Content-Length": "x"}
    )
    assert reply.status == 400
    assert not any(c[0] == "model_infer" for c in api.calls)  # none of them reached the handler
    body, headers = infer_body()
    assert (await call(rest, "POST", "/v2/models/fraud/infer", body, headers)).status == 200


async def test_a_caller_that_leaves_cancels_its_inference():
    api = FakeApi(blocking=True)
    body, headers = infer_body()
    reply = await call(rest_for(api), "POST", "/v2/models/fraud/infer", body, headers, disconnect=True)
    assert reply.status == 499
    await asyncio.wait_for(api.cancelled.wait(), 1)


@pytest.mark.parametrize(
    ("method", "path", "body", "rpc", "expected"),
    [
        ("POST", "/v2/repository/index", b"", "RepositoryIndex", service_pb2.RepositoryIndexRequest()),
        ("POST", "/v2/repository/index", b'{"ready": true}', "RepositoryIndex",
         service_pb2.RepositoryIndexRequest(ready=True)),
        ("POST", "/v2/repository/models/fraud/load", b"{}", "RepositoryModelLoad",
         service_pb2.RepositoryModelLoadRequest(model_name="fraud")),
        ("POST", "/v2/repository/models/fraud/unload", b'{"parameters": {"unload_dependents": false}}',
         "RepositoryModelUnload", service_pb2.RepositoryModelUnloadRequest(
             model_name="fraud", parameters={"unload_dependents": service_pb2.ModelRepositoryParameter(
                 bool_param=False)})),
        ("GET", "/v2/systemsharedmemory/status", b"", "SystemSharedMemoryStatus",
         service_pb2.SystemSharedMemoryStatusRequest()),
        ("GET", "/v2/systemsharedmemory/region/r/status", b"", "SystemSharedMemoryStatus",
         service_pb2.SystemSharedMemoryStatusRequest(name="r")),
        ("POST", "/v2/systemsharedmemory/region/r/register", b'{"key": "/k", "offset": 0, "byte_size": 8}',
         "SystemSharedMemoryRegister", service_pb2.SystemSharedMemoryRegisterRequest(
             name="r", key="/k", byte_size=8)),
        ("POST", "/v2/systemsharedmemory/unregister", b"", "SystemSharedMemoryUnregister",
         service_pb2.SystemSharedMemoryUnregisterRequest()),
        ("POST", "/v2/cudasharedmemory/region/g/unregister", b"", "CudaSharedMemoryUnregister",
         service_pb2.CudaSharedMemoryUnregisterRequest(name="g")),
        ("GET", "/v2/cudasharedmemory/status", b"", "CudaSharedMemoryStatus",
         service_pb2.CudaSharedMemoryStatusRequest()),
        ("POST", "/v2/cudasharedmemory/region/g/register",
         b'{"raw_handle": {"b64": "aGFuZGxl"}, "device_id": 0, "byte_size": 8}', "CudaSharedMemoryRegister",
         service_pb2.CudaSharedMemoryRegisterRequest(name="g", raw_handle=b"handle", byte_size=8)),
        ("GET", "/v2/trace/setting", b"", "TraceSetting", service_pb2.TraceSettingRequest()),
        ("POST", "/v2/models/fraud/trace/setting", b'{"trace_rate": "5"}', "TraceSetting",
         service_pb2.TraceSettingRequest(model_name="fraud", settings={
             "trace_rate": service_pb2.TraceSettingRequest.SettingValue(value=["5"])})),
        ("GET", "/v2/logging", b"", "LogSettings", service_pb2.LogSettingsRequest()),
        ("POST", "/v2/logging", b'{"log_info": false}', "LogSettings", service_pb2.LogSettingsRequest(
            settings={"log_info": service_pb2.LogSettingsRequest.SettingValue(bool_param=False)})),
    ],
)  # fmt: skip
async def test_control_routes_pass_the_matching_message_through(method, path, body, rpc, expected):
    api = FakeApi()
    reply = await call(rest_for(api), method, path, body)
    assert reply.status == 200, reply.body
    assert api.calls[-1] == ("control", rpc, expected)


async def test_control_replies_in_tritons_json_form():
    api = FakeApi()
    index = await call(rest_for(api), "POST", "/v2/repository/index")
    assert index.json() == [{"name": "fraud", "version": "1", "state": "READY"}]
    assert (await call(rest_for(api), "GET", "/v2/trace/setting")).json() == {"trace_level": ["OFF"]}
    assert (await call(rest_for(api), "GET", "/v2/logging")).json() == {"log_info": True}
    assert (await call(rest_for(api), "GET", "/v2/cudasharedmemory/status")).json() == []
    stats = (await call(rest_for(api), "GET", "/v2/models/fraud/versions/1/stats")).json()
    assert stats["model_stats"][0]["inference_count"] == 5 and api.calls[-1] == (
        "model_statistics",
        "fraud",
        "1",
    )
    await call(rest_for(api), "GET", "/v2/models/stats")
    assert api.calls[-1] == ("model_statistics", "", "")
