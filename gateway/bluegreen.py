"""Blue-green model switch: load the new version beside the old, warm it, switch traffic in one swap, let the old
version's in-flight requests finish, unload it. No gRPC here."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from tritonclient.grpc import service_pb2

from gateway.catalog import ModelCatalog
from gateway.clients import InferenceClient
from gateway.live import LiveRoutes
from meshserve.core.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)
NUMPY_DTYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}


def warmup_request(
    model: str, version: str, metadata: service_pb2.ModelMetadataResponse
) -> service_pb2.ModelInferRequest:
    """One row of zeros for every input: enough to load weights and compile kernels before real traffic."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for tensor in metadata.inputs:
        dtype = NUMPY_DTYPES.get(tensor.datatype)
        if dtype is None:
            raise FailedPrecondition(f"cannot warm input {tensor.name!r} of type {tensor.datatype}")
        shape = [1 if d < 0 else d for d in tensor.shape]
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        request.raw_input_contents.append(np.zeros(shape, dtype).tobytes())
    return request


async def switch_version(
    live: LiveRoutes,
    catalog: ModelCatalog,
    inference: InferenceClient,
    route_name: str,
    variant_name: str,
    version: str,
    who: str,
    warmup_requests: int = 8,
    load_timeout_s: float = 120.0,
) -> None:
    route = live.get(route_name)
    variant = route.variant(variant_name)
    old = (await catalog.get(variant.model, variant.version)).version
    if not version.isdigit():
        raise InvalidArgument(f"version must be a number, got {version!r}")
    if version == old:
        raise FailedPrecondition(f"variant {variant_name!r} already serves version {version}")
    # Other variants of any route that serve the same model keep their versions loaded too.
    in_use = {
        v.version or old
        for r in live.routes.values()
        for v in r.variants
        if v.model == variant.model and v is not variant
    }
    await inference.serve_versions(variant.model, sorted({old, version} | in_use, key=int), load_timeout_s)
    catalog.forget()
    info = await catalog.get(variant.model, version)
    warm = warmup_request(variant.model, version, info.metadata)
    await asyncio.gather(*(inference.infer(warm, route.timeout_ms / 1000) for _ in range(warmup_requests)))
    await live.switch_version(route_name, variant_name, version, who)
    # A request that picked the old version before the swap finishes within the route's timeout.
    await asyncio.sleep(route.timeout_ms / 1000)
    await inference.serve_versions(
        variant.model, sorted({version} | (in_use - {old}), key=int), load_timeout_s
    )
    catalog.forget()
    log.info(
        "switched version", extra={"route": route_name, "variant": variant_name, "from": old, "to": version}
    )
