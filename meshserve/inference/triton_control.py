"""The Open Inference Protocol calls that the inference service forwards to Triton as they are (bytes in, bytes
out), under Triton's own service and method names: the contract between the gateway, which calls them, and the
inference service, which serves them. Triton's server metadata, model control, statistics, shared memory, trace and log settings."""

from __future__ import annotations

from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from tritonclient.grpc import service_pb2

__all__ = ["FORWARDED", "SERVICE", "STREAMED", "messages", "path"]

SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
FORWARDED = (
    "ServerMetadata",  # Triton's name and version, which the gateway's own ServerMetadata answers with
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
)

# Triton's streaming inference, relayed as a stream of bytes both ways: a decoupled model (several responses per
# request, or none) can only be called on it, and only Triton knows when such a request is done.
STREAMED = ("ModelStreamInfer",)


def path(method: str) -> str:
    return f"/{SERVICE.full_name}/{method}"


def messages(method: str) -> tuple[type[Message], type[Message]]:
    """The request and response classes of a forwarded method."""
    descriptor = SERVICE.methods_by_name[method]
    return GetMessageClass(descriptor.input_type), GetMessageClass(descriptor.output_type)
