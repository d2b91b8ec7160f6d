"""ModelInfer answers as prediction log records: scores read from the raw output bytes (the route's output and
column, per row), ids per row, the tier's name, and the model's inputs for the sampled share, by the registry's
names where it describes the model."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from gateway.routing.dispatch import Tier
from gateway.routing.routes import Quality
from gateway.serving.prediction_records import AnswerSource, infer_records, output_scores, tier_name
from meshserve.core.prediction_ids import sampled
from meshserve.monitor.v1 import monitor_pb2

ROWS = np.array([[250.0, 3, 80.0, 2, 400], [4800.0, 7, 35.0, 19, 3], [12.5, 1, 50.0, 0, 9]], dtype=np.float32)
NAMES = {"features": ["amount", "merchant_category", "avg_amount_30d", "txn_count_24h", "account_age_days"]}


def request(rows: np.ndarray = ROWS, typed: bool = False) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name="fraud", model_version="1")
    tensor = message.inputs.add(name="features", datatype="FP32", shape=list(rows.shape))
    if typed:
        tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    else:
        message.raw_input_contents.append(rows.tobytes())
    return message


def reply(scores: np.ndarray, name: str = "score", datatype: str = "FP32") -> service_pb2.ModelInferResponse:
    message = service_pb2.ModelInferResponse(model_name="fraud", model_version="1")
    message.outputs.add(name="other", datatype="FP32", shape=[len(scores), 1])
    message.outputs.add(name=name, datatype=datatype, shape=list(scores.shape))
    message.raw_output_contents.extend([np.zeros((len(scores), 1), np.float32).tobytes(), scores.tobytes()])
    return message


def source(**quality) -> AnswerSource:
    return AnswerSource("fraud", Quality(**quality), 1_733_600_000.5)


def logged(src: AnswerSource, answer, tier=Tier.PRIMARY, base="base", batched=True, req=None, named=NAMES):
    return list(
        infer_records(src, base, "stable", "fraud", "1", tier, req or request(), answer, batched, named)
    )


def test_each_row_is_a_record_with_its_own_id_and_the_score_it_was_answered():
    scores = np.array([[0.1], [0.9], [0.25]], dtype=np.float32)
    records = logged(source(), reply(scores))
    assert [r.prediction_id for r in records] == ["base:0", "base:1", "base:2"]
    assert [r.score for r in records] == scores[:, 0].astype(np.float64).tolist()
    first = records[0]
    assert (first.route, first.variant, first.model, first.model_version, first.tier, first.shadow) == (
        "fraud", "stable", "fraud", "1", "model", False,
    )  # fmt: skip
    assert (first.time, first.task, first.threshold) == (1_733_600_000.5, monitor_pb2.BINARY, 0.5)
    assert not any(r.features for r in records)  # sample_features 0: none


def test_the_score_is_the_named_outputs_column_in_any_numeric_type():
    two = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float64)
    records = logged(source(index=1, task="regression"), reply(two, datatype="FP64"), req=request(ROWS[:2]))
    assert [r.score for r in records] == [0.1, 0.8]
    assert records[0].task == monitor_pb2.REGRESSION


def test_one_row_keeps_the_base_id_and_a_model_that_does_not_batch_answers_one_prediction():
    assert [
        r.prediction_id for r in logged(source(), reply(np.array([[0.3]], np.float32)), req=request(ROWS[:1]))
    ] == ["base"]
    flat = np.array([0.7, 0.2, 0.1], dtype=np.float32)  # no batch dimension: the request is one prediction
    records = logged(source(index=2), reply(flat), batched=False)
    assert [(r.prediction_id, r.score) for r in records] == [("base", pytest.approx(0.1))]


@pytest.mark.parametrize(
    ("quality", "answer", "problem"),
    [
        ({"output": "prob"}, reply(np.zeros((3, 1), np.float32)), "the answer has no output 'prob'"),
        ({"index": 1}, reply(np.zeros((3, 1), np.float32)), "output 'score' has 1 columns; the route's quality index is 1"),
        ({}, reply(np.zeros((3, 1), np.float32), datatype="BYTES"), "output 'score' is BYTES, not a number"),
    ],
)  # fmt: skip
def test_an_answer_without_the_routes_score_cannot_be_logged_and_says_why(quality, answer, problem):
    with pytest.raises(ValueError, match=problem):
        logged(source(**quality), answer)


def test_sampled_predictions_carry_the_inputs_by_registry_names_else_by_tensor_position():
    ids = [f"b:{n}" for n in range(3)]
    src = source(sample_features=0.5)
    wanted = [sampled(i, 0.5) for i in ids]
    assert any(wanted) and not all(wanted), "pick a base whose rows are sampled differently"
    scores = np.array([[0.1], [0.9], [0.25]], dtype=np.float32)
    for named, typed in ((NAMES, False), (NAMES, True), ({}, False)):
        records = logged(src, reply(scores), base="b", req=request(typed=typed), named=named)
        for row, (record, keep) in enumerate(zip(records, wanted, strict=True)):
            if not keep:
                assert not record.features
                continue
            names = named.get("features") or [f"features[{j}]" for j in range(5)]
            assert dict(record.features) == dict(
                zip(names, ROWS[row].astype(np.float64).tolist(), strict=True)
            )


def test_every_prediction_is_sampled_at_share_one_and_inputs_in_shared_memory_are_not_read():
    scores = np.array([[0.1], [0.9], [0.25]], dtype=np.float32)
    req = request()
    records = logged(source(sample_features=1.0), reply(scores), req=req)
    assert all(len(r.features) == 5 for r in records)
    shared = request()
    shared.inputs[0].parameters["shared_memory_region"].string_param = "region"
    del shared.raw_input_contents[:]
    assert not any(r.features for r in logged(source(sample_features=1.0), reply(scores), req=shared))


def test_tiers_are_named_for_the_log():
    assert [tier_name(t) for t in (Tier.PRIMARY, Tier.FALLBACK, Tier.DEFAULT)] == [
        "model",
        "fallback",
        "default",
    ]
    assert tier_name(Tier.PRIMARY, from_cache=True) == "cache"


def test_output_scores_reads_typed_contents_too():
    answer = service_pb2.ModelInferResponse()
    tensor = answer.outputs.add(name="score", datatype="FP32", shape=[2, 1])
    tensor.contents.fp32_contents.extend([0.25, 0.75])
    assert output_scores(answer, Quality(), 2).tolist() == [0.25, 0.75]
