"""POST /v1/feedback's JSON, to and from meshserve.feedback.v1 messages. Pure: no HTTP, no I/O.

Request: `{"labels": [{"prediction_id": "...", "label": 1, "event_time": 1733600000.0}], "correct": false}`
(`value` is taken for `label` too, as protobuf's JSON names it); the answer is the SendFeedbackResponse with its
field names (snake_case). Whether a label fits its route is the monitor's to say, per label; only a body that is
not such a document is refused here, naming the field.
"""

from __future__ import annotations

import math
from typing import Any

from gateway.api.http_codec import message_json
from meshserve.core.errors import InvalidArgument
from meshserve.feedback.v1 import feedback_pb2

__all__ = ["feedback_json", "feedback_labels", "feedback_request"]


def feedback_labels(document: dict[str, Any]) -> list[Any]:
    """The document's `labels` array (its length is checked before any label is read)."""
    labels = document.get("labels")
    if not isinstance(labels, list):
        raise InvalidArgument("labels must be a JSON array of {prediction_id, label, event_time}")
    return labels


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"{what} must be a finite number")
    return float(value)


def feedback_request(document: dict[str, Any]) -> feedback_pb2.SendFeedbackRequest:
    unknown = sorted(set(document) - {"labels", "correct"})
    if unknown:
        raise InvalidArgument(f"unknown field {unknown[0]!r}; a feedback request has labels and correct")
    correct = document.get("correct", False)
    if not isinstance(correct, bool):
        raise InvalidArgument("correct must be true or false")
    request = feedback_pb2.SendFeedbackRequest(correct=correct)
    for n, item in enumerate(feedback_labels(document)):
        where = f"labels[{n}]"
        if not isinstance(item, dict):
            raise InvalidArgument(f"{where} must be a JSON object")
        prediction_id = item.get("prediction_id")
        if not isinstance(prediction_id, str):
            raise InvalidArgument(f"{where}.prediction_id must be a string")
        if ("label" in item) == ("value" in item):
            raise InvalidArgument(f"{where} needs its label (as label)")
        key = "label" if "label" in item else "value"
        value = _number(item[key], f"{where}.{key}")
        event_time = _number(item.get("event_time", 0.0), f"{where}.event_time")
        extra = sorted(set(item) - {"prediction_id", "label", "value", "event_time"})
        if extra:
            raise InvalidArgument(f"{where}: unknown field {extra[0]!r}")
        request.labels.add(prediction_id=prediction_id, value=value, event_time=event_time)
    return request


def feedback_json(reply: feedback_pb2.SendFeedbackResponse) -> dict[str, Any]:
    return message_json(reply)
