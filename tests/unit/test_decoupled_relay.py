"""DecoupledRelay driven with a stand-in stream: opened at the first request, each response under the caller's
name, drained on close, a broken stream said once in-band and reopened by the next request."""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from gateway.serving.decoupled import DecoupledRelay
from meshserve.core.errors import ErrorCode, MeshError


def request(name: str, request_id: str) -> service_pb2.ModelInferRequest:
    return service_pb2.ModelInferRequest(model_name=name, id=request_id)


class Streams:
    """Each stream answers every request twice (as a decoupled model may), or breaks after `break_after`."""

    def __init__(self, break_after: int | None = None) -> None:
        self.opened = 0
        self.seen: list[tuple[str, str, str]] = []
        self.break_after = break_after

    async def __call__(self, requests, timeout_s):
        self.opened += 1
        count = 0
        async for sent in requests:
            self.seen.append((sent.model_name, sent.model_version, sent.id))
            if self.break_after is not None and count == self.break_after:
                raise MeshError("inference service: stream reset", ErrorCode.UNAVAILABLE)
            count += 1
            for _ in range(2):
                reply = service_pb2.ModelStreamInferResponse()
                reply.infer_response.model_name, reply.infer_response.id = sent.model_name, sent.id
                yield reply


async def test_requests_share_one_stream_and_every_response_comes_back_under_the_callers_name():
    streams, delivered = Streams(), []

    async def deliver(reply):
        delivered.append(reply)

    relay = DecoupledRelay(streams, deliver, 5.0)
    relay.send(request("my-route", "a"), "repeat", "1")
    relay.send(request("my-route", "b"), "repeat", "1")
    await relay.close()
    assert streams.opened == 1 and streams.seen == [("repeat", "1", "a"), ("repeat", "1", "b")]
    assert [(r.infer_response.model_name, r.infer_response.id) for r in delivered] == [
        ("my-route", "a"), ("my-route", "a"), ("my-route", "b"), ("my-route", "b")
    ]  # fmt: skip


async def test_a_broken_stream_is_said_once_and_the_next_request_opens_another():
    streams, delivered = Streams(break_after=0), []

    async def deliver(reply):
        delivered.append(reply)

    relay = DecoupledRelay(streams, deliver, None)
    relay.send(request("repeat", "a"), "repeat", "1")
    await relay.close()
    assert [r.error_message for r in delivered] == ["inference service: stream reset"]
    streams.break_after = None
    relay.send(request("repeat", "b"), "repeat", "1")
    await relay.close()
    assert streams.opened == 2 and [r.infer_response.id for r in delivered[1:]] == ["b", "b"]


async def test_closing_a_relay_that_never_opened_does_nothing():
    relay = DecoupledRelay(Streams(), None, None)  # type: ignore[arg-type]
    await relay.close()
    relay.cancel()
