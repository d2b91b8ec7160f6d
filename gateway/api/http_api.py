"""The Open Inference Protocol over HTTP/REST, as Triton serves it (`tritonclient.http` and curl work unchanged):
each route reads its request, awaits one `InferenceApi` call and writes the reply. Conversions live in
`gateway.api.http_codec`; domain errors become HTTP statuses in one map, `HTTP_STATUS_FOR`, with Triton's error body
`{"error": "<message>"}`. Labels for the prediction log come in on the same port, `POST /v1/feedback` (JSON, see
`gateway.api.feedback_codec`), and are passed on to the monitor by the gateway's FeedbackHandler.

Callers authenticate from their headers (`authorization: Bearer <token>`) before any route runs, health excepted,
with the gateway's own Authenticator (set by the gateway: `authenticator`); an unknown caller is 401 with
`WWW-Authenticate: Bearer`, a known one without the right 403.

Only transport-level refusals answer without it: an unknown path (404) or method (405), a body over the limit
(413) or in an encoding we do not read (415).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tritonclient.grpc import service_pb2

from gateway.api import http_codec as codec
from gateway.api.feedback_codec import feedback_json, feedback_labels, feedback_request
from gateway.serving.feedback import NO_MONITOR, FeedbackHandler
from gateway.serving.inference_api import MODEL_VERSION_HEADER, TIER_HEADER, VARIANT_HEADER, InferenceApi
from gateway.serving.server_metadata import SERVER_HEADER
from meshserve.core.auth import Authenticator
from meshserve.core.context import adopt_call, set_principal
from meshserve.core.errors import ErrorCode, InvalidArgument, MeshError, Unavailable
from meshserve.core.metrics import ServiceMetrics
from meshserve.core.prediction_ids import PREDICTION_ID_HEADER
from meshserve.core.telemetry import annotate

__all__ = ["HTTP_STATUS_FOR", "OpenInferenceRest", "error_response"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("meshserve.access")
T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]

HTTP_STATUS_FOR: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.FAILED_PRECONDITION: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    ErrorCode.CANCELLED: 499,  # the caller closed the connection (nginx's code; Triton has none)
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNIMPLEMENTED: 501,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
}
RETRY_PUSHBACK = "grpc-retry-pushback-ms"  # the admission controller's hint, in MeshError.metadata
HEADER_LENGTH = "inference-header-content-length"  # Triton's binary tensor extension
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # deflate means zlib-wrapped, as in HTTP
_JSON = "application/json"
_UNGUARDED = frozenset({"GET /v2/health/live", "GET /v2/health/ready"})  # probes ask them; they tell nothing


def _json(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(codec.dumps(document), status, headers, media_type=_JSON)


def error_response(exc: MeshError) -> Response:
    """Triton's error body with the status for the error's code; its metadata as headers (a retry pushback also
    as Retry-After, in whole seconds)."""
    headers = dict(exc.metadata)
    pushback = headers.get(RETRY_PUSHBACK, "")
    if pushback.isdigit():
        headers["retry-after"] = str(max(1, math.ceil(int(pushback) / 1000)))
    if exc.code is ErrorCode.UNAUTHENTICATED:
        headers["www-authenticate"] = "Bearer"  # RFC 6750: how to authenticate
    return _json({"error": exc.message}, HTTP_STATUS_FOR[exc.code], headers)


class _Refused(Exception):
    """A transport-level refusal, answered before any domain code runs."""

    def __init__(self, status: int, message: str, outcome: str) -> None:
        super().__init__(message)
        self.status, self.message, self.outcome = status, message, outcome


def _too_large(limit: int, what: str = "the request body") -> _Refused:
    return _Refused(413, f"{what} is over the gateway's limit of {limit} bytes", "RESOURCE_EXHAUSTED")


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise InvalidArgument(f"the request body is not valid {encoding} data") from None
    if len(data) > limit:
        raise _too_large(limit, "the decompressed request body")
    if not inflater.eof:
        raise InvalidArgument(f"the request body is truncated {encoding} data")
    return data


def _compress(body: bytes, encoding: str) -> bytes:
    deflater = zlib.compressobj(6, zlib.DEFLATED, _WBITS[encoding])
    return deflater.compress(body) + deflater.flush()


def _response_encoding(accept: str) -> str | None:
    """gzip or deflate if the caller's Accept-Encoding takes it (gzip preferred), else None."""
    if not accept:
        return None
    taken = set()
    for part in accept.lower().split(","):
        name, _, weight = part.partition(";")
        weight = weight.strip()
        try:
            quality = float(weight[2:]) if weight.startswith("q=") else 1.0
        except ValueError:
            quality = 0.0
        if quality > 0:
            taken.add(name.strip())
    return next((encoding for encoding in ("gzip", "deflate") if encoding in taken), None)


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise InvalidArgument("Inference-Header-Content-Length must be a number of bytes")
    return int(value)


def _model(request: Request) -> tuple[str, str]:
    return request.path_params["model"], request.path_params.get("version", "")


async def _disconnected(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bool:
    """True once the caller has closed the connection; False if the server cannot tell."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # noqa: BLE001 - no way to watch: the work goes on as without a watch
        return False
    return True


async def _unless_caller_leaves(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled (CANCELLED) if the caller closes the connection first: as over gRPC, a caller that
    leaves leaves its merged call, and work no caller waits for stops."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request.receive))

    def left(watch: asyncio.Future[bool]) -> None:
        if not watch.cancelled() and watch.result():
            task.cancel()

    gone.add_done_callback(left)
    try:
        return await task  # this request cancelled (shutdown past its grace): `task` is cancelled with it
    except asyncio.CancelledError:
        if gone.done() and not gone.cancelled() and gone.result():
            raise MeshError(
                "the caller closed the connection before the answer", ErrorCode.CANCELLED
            ) from None
        raise
    finally:
        gone.cancel()


async def _no_such_endpoint(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "no such endpoint", 405: "method not allowed"}.get(exc.status_code, exc.detail)
    return _json({"error": f"{message}: {request.method} {request.url.path}"}, exc.status_code, exc.headers)


class OpenInferenceRest:
    """The REST routes, on top of `InferenceApi` (the same handler the gRPC servicer adapts)."""

    def __init__(
        self,
        api: InferenceApi,
        is_ready: Callable[[], bool],
        max_body_bytes: int,
        answers: Counter[tuple[str, str]] | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.api = api
        self.is_ready = is_ready
        self.max_body_bytes = max_body_bytes
        self.answers = answers if answers is not None else Counter()  # (route, tier) -> answers, for metrics
        self.metrics = metrics
        self.authenticator: Authenticator | None = None  # the gateway's; None: every caller is anonymous
        self.feedback: FeedbackHandler | None = None  # the gateway's; None: POST /v1/feedback is UNAVAILABLE

    def app(self) -> Starlette:
        return Starlette(routes=self.routes(), exception_handlers={HTTPException: _no_such_endpoint})

    def routes(self) -> list[Route]:
        model, version = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
        table: list[tuple[str, str, Handler]] = [
            ("GET", "/v2/health/live", self.live),
            ("GET", "/v2/health/ready", self.ready),
            ("GET", "/v2", self.server_metadata),
            ("GET", "/v2/models/stats", self.statistics),  # before /v2/models/{model}
        ]
        for base in (model, version):
            table += [
                ("GET", base, self.model_metadata),
                ("GET", f"{base}/ready", self.model_ready),
                ("GET", f"{base}/config", self.model_config),
                ("GET", f"{base}/stats", self.statistics),
                ("POST", f"{base}/infer", self.infer),
            ]
        for base in ("/v2", model):
            table += [("GET", f"{base}/trace/setting", self.trace_setting),
                      ("POST", f"{base}/trace/setting", self.trace_setting)]  # fmt: skip
        table += [
            ("GET", "/v2/logging", self.log_settings),
            ("POST", "/v2/logging", self.log_settings),
            ("POST", "/v2/repository/index", self.repository_index),
            ("POST", "/v2/repository/models/{model}/load", self.load),
            ("POST", "/v2/repository/models/{model}/unload", self.unload),
            ("POST", "/v1/feedback", self.send_feedback),
        ]
        for kind in ("system", "cuda"):
            base, region = f"/v2/{kind}sharedmemory", f"/v2/{kind}sharedmemory/region/{{region}}"
            status, register, unregister = self._shared_memory(kind)
            table += [
                ("GET", f"{base}/status", status),
                ("GET", f"{region}/status", status),
                ("POST", f"{region}/register", register),
                ("POST", f"{base}/unregister", unregister),
                ("POST", f"{region}/unregister", unregister),
            ]
        return [
            Route(path, self._endpoint(f"{verb} {path}", handler), methods=[verb])
            for verb, path, handler in table
        ]

    # -- what every route goes through ------------------------------------------------------------------------
    def _endpoint(self, label: str, handler: Handler) -> Handler:
        """`handler` with the caller's headers adopted (request id) and the caller authenticated, one clean error reply for any failure, and
        the call recorded (metrics; the access log at DEBUG)."""
        guarded = label not in _UNGUARDED

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            adopt_call(request.headers.items())
            in_flight = self.metrics.in_flight.labels(label) if self.metrics is not None else None
            if in_flight is not None:
                in_flight.inc()
            outcome, response = "CANCELLED", None
            try:
                if guarded and self.authenticator is not None:
                    set_principal(await self.authenticator.authenticate(request.headers))
                response = await handler(request)
                outcome = "OK"
            except MeshError as exc:
                response, outcome = error_response(exc), exc.code.name
            except _Refused as exc:
                response, outcome = _json({"error": exc.message}, exc.status), exc.outcome
            except Exception:  # every failure gets one clean reply; the traceback stays in the log
                log.exception("unhandled error in %s", label)
                response = _json({"error": f"internal error in {label}; see the server log"}, 500)
                outcome = "INTERNAL"
            finally:
                seconds = time.perf_counter() - started
                if in_flight is not None:
                    in_flight.dec()
                    self.metrics.observe(label, outcome, seconds)  # type: ignore[union-attr]
                if access_log.isEnabledFor(logging.DEBUG):
                    access_log.debug("http", extra={
                        "method": label, "outcome": outcome, "ms": round(seconds * 1000, 3),
                        "status": response.status_code if response is not None else None,
                    })  # fmt: skip
            return response

        return endpoint

    async def _body(self, request: Request) -> bytes:
        """The request body, within the size limit (before and after decompression)."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding not in _WBITS:
            raise _Refused(415, f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or none",
                           "INVALID_ARGUMENT")  # fmt: skip
        return _decompress(body, encoding, limit)

    async def _document(self, request: Request) -> dict[str, Any]:
        return codec.parse_object(await self._body(request))

    async def _control(self, method: str, message: Any) -> Any:
        return await self.api.control(method, message)  # REST carries no deadline: the gateway's default

    # -- health and metadata ----------------------------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.is_ready() else 400)  # as Triton: 400 when not ready

    async def server_metadata(self, request: Request) -> Response:
        headers = {SERVER_HEADER: self.api.server_identity}  # Triton's answer; who really answered, beside it
        return _json(codec.message_json(await self.api.server_metadata()), headers=headers)

    async def model_ready(self, request: Request) -> Response:
        return Response(status_code=200 if await self.api.model_ready(*_model(request)) else 400)

    async def model_metadata(self, request: Request) -> Response:
        return _json(codec.message_json(await self.api.model_metadata(*_model(request))))

    async def model_config(self, request: Request) -> Response:
        return _json(codec.message_json((await self.api.model_config(*_model(request))).config))

    async def statistics(self, request: Request) -> Response:
        model, version = request.path_params.get("model", ""), request.path_params.get("version", "")
        return _json(codec.message_json(await self.api.model_statistics(model, version)))

    # -- inference --------------------------------------------------------------------------------------------
    async def infer(self, request: Request) -> Response:
        model, version = _model(request)
        header_length, body = _header_length(request), await self._body(request)
        if (
            header_length == codec.RAW_BINARY
        ):  # no JSON header: the tensor is deduced from the model's one input
            config = (await self.api.model_config(model, version)).config
            call = codec.decode_raw_infer_request(body, model, version, config)
        else:
            call = codec.decode_infer_request(body, header_length, model, version)
        reply, served = await _unless_caller_leaves(
            request, self.api.model_infer(call.request, call.time_left_s, request.headers)
        )
        tier = served.tier.name.lower()
        self.answers[(reply.model_name, tier)] += 1
        annotate(route=reply.model_name, variant=served.variant, model_version=served.model_version, tier=tier,
                 cache_hit=False)  # fmt: skip  # on the request's span, as ModelInfer over gRPC
        body, header_length = codec.encode_infer_response(reply, call.reply_form)
        headers = {
            VARIANT_HEADER: served.variant,
            MODEL_VERSION_HEADER: served.model_version,
            TIER_HEADER: tier,
            PREDICTION_ID_HEADER: served.prediction_id,
        }
        media_type = _JSON
        if header_length is not None:
            headers[HEADER_LENGTH] = str(header_length)
            media_type = "application/octet-stream"
        encoding = _response_encoding(request.headers.get("accept-encoding", ""))
        if encoding is not None:
            body = _compress(body, encoding)
            headers["content-encoding"] = encoding
        return Response(body, headers=headers, media_type=media_type)

    # -- labels (meshserve.feedback.v1 as JSON), passed on to the monitor -----------------------------------
    async def send_feedback(self, request: Request) -> Response:
        handler = self.feedback
        if handler is None:
            raise Unavailable(NO_MONITOR)
        handler.authorize()  # before the body is read
        document = await self._document(request)
        handler.check_size(len(feedback_labels(document)))  # before any label is read
        reply = await handler.send(feedback_request(document))  # REST carries no deadline: the client's own
        return _json(feedback_json(reply))

    # -- model repository, shared memory, trace and log settings (passed through to Triton) --------------------
    async def repository_index(self, request: Request) -> Response:
        index = codec.repository_index_request(await self._document(request))
        return _json(codec.repository_index_json(await self._control("RepositoryIndex", index)))

    async def load(self, request: Request) -> Response:
        load = codec.load_request(request.path_params["model"], await self._document(request))
        await self._control("RepositoryModelLoad", load)
        return Response(status_code=200)

    async def unload(self, request: Request) -> Response:
        unload = codec.unload_request(request.path_params["model"], await self._document(request))
        await self._control("RepositoryModelUnload", unload)
        return Response(status_code=200)

    async def trace_setting(self, request: Request) -> Response:
        model = request.path_params.get("model", "")
        if request.method == "POST":
            setting = codec.trace_setting_request(model, await self._document(request))
        else:
            setting = service_pb2.TraceSettingRequest(model_name=model)
        return _json(codec.trace_setting_json(await self._control("TraceSetting", setting)))

    async def log_settings(self, request: Request) -> Response:
        if request.method == "POST":
            settings = codec.log_settings_request(await self._document(request))
        else:
            settings = service_pb2.LogSettingsRequest()
        return _json(codec.log_settings_json(await self._control("LogSettings", settings)))

    def _shared_memory(self, kind: str) -> tuple[Handler, Handler, Handler]:
        """Status, register and unregister for system or CUDA shared memory regions."""
        method = "SystemSharedMemory" if kind == "system" else "CudaSharedMemory"
        status_request = getattr(service_pb2, f"{method}StatusRequest")
        unregister_request = getattr(service_pb2, f"{method}UnregisterRequest")
        register_request = codec.system_register_request if kind == "system" else codec.cuda_register_request

        async def status(request: Request) -> Response:
            asked = status_request(name=request.path_params.get("region", ""))
            return _json(codec.shared_memory_status_json(await self._control(f"{method}Status", asked)))

        async def register(request: Request) -> Response:
            asked = register_request(request.path_params["region"], await self._document(request))
            await self._control(f"{method}Register", asked)
            return Response(status_code=200)

        async def unregister(request: Request) -> Response:
            asked = unregister_request(name=request.path_params.get("region", ""))
            await self._control(f"{method}Unregister", asked)
            return Response(status_code=200)

        return status, register, unregister
