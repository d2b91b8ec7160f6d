"""Prediction ids: what a label names to be joined with the answer it judges. The rules every process shares (the
gateway that gives them out, the monitor and the feedback loader that take them back). Pure: no I/O.

A caller may bring its own id (a transaction id is what labels usually come back with); otherwise the gateway
makes one per request. A request of N rows has one id per row: `base:i` when N > 1, `base` itself when N == 1.
"""

from __future__ import annotations

import hashlib
import re
import uuid

from meshserve.core.errors import InvalidArgument

__all__ = [
    "MAX_PREDICTION_ID_LENGTH",
    "PREDICTION_ID_HEADER",
    "check_prediction_id",
    "check_base_for_rows",
    "id_problem",
    "new_prediction_id",
    "row_id",
    "sampled",
]

PREDICTION_ID_HEADER = "x-meshserve-prediction-id"  # ModelInfer's trailing metadata, REST's header, both ways
MAX_PREDICTION_ID_LENGTH = 128
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")
_SAMPLE_SCALE = 2.0**-64


def new_prediction_id() -> str:
    """A fresh base id: 32 hex characters."""
    return uuid.uuid4().hex


def id_problem(value: str) -> str | None:
    """Why `value` is no usable id (to follow the field's name: `prediction_id is empty`), or None: the one rule,
    1 to 128 printable ASCII characters, for the gateway, the monitor and the CLI's file readers alike."""
    if not value:
        return "is empty"
    if len(value) > MAX_PREDICTION_ID_LENGTH:
        return f"is {len(value)} characters long; at most {MAX_PREDICTION_ID_LENGTH}"
    if not _PRINTABLE_ASCII.fullmatch(value):
        return f"{value[:40]!r} is not printable ASCII"
    return None


def check_prediction_id(value: str, field: str) -> str:
    """`value` if it is a usable id (`id_problem`); else InvalidArgument naming `field`."""
    if id_problem(value) is not None:
        shown = value[:40] + ("..." if len(value) > 40 else "")
        raise InvalidArgument(
            f"{field} must be 1 to {MAX_PREDICTION_ID_LENGTH} printable ASCII characters; got {len(value)} "
            f"characters: {shown!r}"
        )
    return value


def check_base_for_rows(base: str, rows: int, field: str) -> str:
    """A caller's base id for a request of `rows` rows: each row's id (`base:i`) must be a valid id too."""
    check_prediction_id(base, field)
    if rows > 1 and len(row_id(base, rows - 1, rows)) > MAX_PREDICTION_ID_LENGTH:
        raise InvalidArgument(
            f"{field} is {len(base)} characters: too long for {rows} rows, whose ids are '<base>:<row>' and "
            f"must be at most {MAX_PREDICTION_ID_LENGTH} characters"
        )
    return base


def row_id(base: str, row: int, rows: int) -> str:
    """Row `row`'s id of a request of `rows` rows under `base`."""
    return base if rows == 1 else f"{base}:{row}"


def sampled(prediction_id: str, share: float) -> bool:
    """Whether `prediction_id` falls in the sampled `share` (0..1): a hash of the id, the same in every process and
    on every run, so a prediction's features are kept (or not) whichever gateway answered it."""
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    digest = hashlib.blake2b(prediction_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") * _SAMPLE_SCALE < share
