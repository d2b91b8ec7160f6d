"""Prediction cache keys: version-aware and a canonical hash of the exact input. Pure."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

# Bump when the key or value layout changes, so old entries become unreachable (p2: the value names the
# features scored with defaults, which a gateway reading p1 values could not decode)
KEY_SCHEMA = "p2"
# A cached answer: the score, and the stored features it was scored with defaults for
CachedAnswer = tuple[float, tuple[str, ...]]


def prediction_key(
    route: str,
    variant: str,
    model: str,
    version: str,
    entity_key: str,
    request_features: Mapping[str, float],
) -> str:
    """`p2:<route>:<variant>:<model>:<version>:<sha256 of entity key and features>`.

    Feature names are sorted and values packed as float64, so equal inputs give equal keys whatever their order
    or their wire type (an int 3 and a double 3.0 score the same).
    """
    digest = hashlib.sha256(entity_key.encode())
    for name in sorted(request_features):
        digest.update(b"\0" + name.encode() + b"=" + struct.pack("<d", float(request_features[name])))
    return f"{KEY_SCHEMA}:{route}:{variant}:{model}:{version}:{digest.hexdigest()[:32]}"


def encode_answer(answer: CachedAnswer) -> bytes:
    """The score as float32, then the defaulted features' names, comma-separated (none: nothing)."""
    score, defaulted = answer
    return struct.pack("<f", score) + ",".join(defaulted).encode()


def decode_answer(value: bytes) -> CachedAnswer:
    names = value[4:].decode()
    return struct.unpack("<f", value[:4])[0], tuple(names.split(",")) if names else ()
