"""Prediction cache keys: version-aware and a canonical hash of the exact input. Pure."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

KEY_SCHEMA = "p1"  # bump when the key layout changes, so old entries become unreachable


def prediction_key(
    route: str,
    variant: str,
    model: str,
    version: str,
    entity_key: str,
    request_features: Mapping[str, float],
) -> str:
    """`p1:<route>:<variant>:<model>:<version>:<sha256 of entity key and features>`.

    Feature names are sorted and values packed as float64, so equal inputs give equal keys whatever their order
    or their wire type (an int 3 and a double 3.0 score the same).
    """
    digest = hashlib.sha256(entity_key.encode())
    for name in sorted(request_features):
        digest.update(b"\0" + name.encode() + b"=" + struct.pack("<d", float(request_features[name])))
    return f"{KEY_SCHEMA}:{route}:{variant}:{model}:{version}:{digest.hexdigest()[:32]}"


def encode_score(score: float) -> bytes:
    return struct.pack("<f", score)


def decode_score(value: bytes) -> float:
    return struct.unpack("<f", value)[0]
