"""Bulk scoring's pure parts: row validation, chunking, checkpoints, and the loop with a fake predict."""

from __future__ import annotations

import asyncio

import pytest

from meshserve.feature.registry import load_registry
from meshserve.scoring.checkpoint import Checkpoint, Fingerprint, PartResult, ScoredRow
from meshserve.scoring.files import read_columns, read_rows, write_outputs
from meshserve.scoring.rows import RawRow, Reject, RowSchema, ValidRow, chunks
from meshserve.scoring.runner import PredictFailed, ScoringInterrupted, run_scoring

SCHEMA = RowSchema.for_model(load_registry(), "fraud")


def row(line: int, **values: object) -> RawRow:
    return RawRow(line, values)


def test_schema_comes_from_the_registry():
    assert SCHEMA.columns == ["account_id", "amount", "merchant_category"]


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"amount": "1", "merchant_category": "3"}, "missing entity key"),
        ({"account_id": "a", "merchant_category": "3"}, "missing feature 'amount'"),
        ({"account_id": "a", "amount": "abc", "merchant_category": "3"}, "cannot parse 'abc'"),
        ({"account_id": "a", "amount": "1", "merchant_category": "3.5"}, "is an integer"),
        ({"account_id": "a", "amount": "nan", "merchant_category": "3"}, "must be finite"),
        ({"account_id": "a", "amount": "-5", "merchant_category": "3"}, "outside"),
        ({"account_id": "a", "amount": True, "merchant_category": 3}, "got a boolean"),
        (
            {"account_id": "a", "amount": "1", "merchant_category": "3", "colour": "red"},
            "unknown column 'colour'",
        ),
    ],
)
def test_bad_rows_are_rejected_with_a_reason(values, reason):
    checked = SCHEMA.validate(RawRow(7, values))
    assert isinstance(checked, Reject)
    assert checked.line == 7
    assert reason in checked.reason


def test_good_rows_parse_to_typed_values():
    checked = SCHEMA.validate(row(2, account_id=" acct-1 ", amount="250", merchant_category="3.0", extra=""))
    assert checked == ValidRow(2, "acct-1", {"amount": 250.0, "merchant_category": 3})
    assert isinstance(checked.features["amount"], float)
    assert isinstance(checked.features["merchant_category"], int)


def test_extra_csv_fields_are_rejected(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("account_id,amount,merchant_category\nacct-1,1,2\nacct-2,1,2,9\n")
    checked = [SCHEMA.validate(r) for r in read_rows(path)]
    assert isinstance(checked[0], ValidRow) and checked[0].line == 2
    assert (
        isinstance(checked[1], Reject) and checked[1].line == 3 and "beyond the header" in checked[1].reason
    )


def test_chunks_are_fixed_by_size():
    got = [(i, [r.line for r in c]) for i, c in chunks((row(n) for n in range(5)), 2)]
    assert got == [(0, [0, 1]), (1, [2, 3]), (2, [4])]
    with pytest.raises(ValueError):
        list(chunks([], 0))


def fingerprint(tmp_path, batch=2):
    src = tmp_path / "in.csv"
    if not src.exists():
        src.write_text("x\n")
    return Fingerprint.of(src, "fraud", batch)


def test_checkpoint_resumes_only_the_same_command(tmp_path):
    out = tmp_path / "out.parquet"
    cp = Checkpoint(out, fingerprint(tmp_path))
    done = cp.open()
    assert done == set()
    cp.save(PartResult(1, [ScoredRow("a", 0.25, "stable", "1", "PRIMARY")], [Reject(3, "b", "bad")]), done)
    assert Checkpoint(out, fingerprint(tmp_path)).open() == {1}
    assert Checkpoint(out, fingerprint(tmp_path)).load(1).rejects == [Reject(3, "b", "bad")]
    assert Checkpoint(out, fingerprint(tmp_path, batch=3)).open() == set()  # another batch size: start over


def test_a_part_saved_just_before_an_interruption_counts_even_if_the_state_missed_it(tmp_path):
    out = tmp_path / "out.parquet"
    cp = Checkpoint(out, fingerprint(tmp_path))
    done = cp.open()
    cp.save(PartResult(0, [ScoredRow("a", 0.25, "stable", "1", "PRIMARY")]), done)
    cp.save(PartResult(1, [ScoredRow("b", 0.5, "stable", "1", "PRIMARY")]), done)
    state = cp.directory / "state.json"
    state.write_text(
        state.read_text().replace('"done": [0, 1]', '"done": [0]')
    )  # Ctrl-C between the two writes
    assert '"done": [0]' in state.read_text()
    (cp.directory / "part-000002.json.tmp").write_text("{")  # a half-written part is not one
    resumed = Checkpoint(out, fingerprint(tmp_path))
    assert resumed.open() == {0, 1}
    assert resumed.load(1).rows == [ScoredRow("b", 0.5, "stable", "1", "PRIMARY")]


def rows_of(n: int, bad_every: int = 0) -> list[RawRow]:
    out = []
    for i in range(n):
        amount = "oops" if bad_every and i % bad_every == 0 else str(i)
        out.append(row(i + 2, account_id=f"acct-{i:05d}", amount=amount, merchant_category="1"))
    return out


def fake_predict(calls: list[int], fail_first: int = 0, delay: float = 0.0):
    async def predict(rows: list[ValidRow]) -> list[ScoredRow]:
        calls.append(len(rows))
        if len(calls) <= fail_first:
            raise PredictFailed("UNAVAILABLE: try again", True)
        await asyncio.sleep(delay)
        return [ScoredRow(r.entity_key, r.features["amount"] / 1000, "stable", "1", "PRIMARY") for r in rows]

    return predict


async def test_run_scores_in_batches_and_checkpoints(tmp_path):
    out = tmp_path / "out.csv"
    calls: list[int] = []
    cp = Checkpoint(out, fingerprint(tmp_path, 4))
    summary = await run_scoring(rows_of(10, bad_every=3), SCHEMA, fake_predict(calls, fail_first=1), cp,
                                batch=4, in_flight=2, backoff_s=0)  # fmt: skip
    assert summary.chunks == 3
    assert calls[0] == 2 and sorted(calls) == [1, 2, 2, 3]  # bad rows never travel; a failed try is retried
    scored, rejected, defaulted = write_outputs(out, cp, summary.chunks)
    assert (scored, rejected, defaulted) == (6, 4, 0)
    rejects = (tmp_path / "out.csv.rejects.csv").read_text().splitlines()
    assert rejects[0] == "line,entity_key,reason"
    assert [r.split(",")[0] for r in rejects[1:]] == ["2", "5", "8", "11"]


async def test_no_rejects_file_when_no_row_was_rejected_and_none_left_from_before(tmp_path):
    out = tmp_path / "out.csv"
    stale = tmp_path / "out.csv.rejects.csv"
    stale.write_text("line,entity_key,reason\n3,acct-00001,from an earlier run\n")
    cp = Checkpoint(out, fingerprint(tmp_path, 4))
    summary = await run_scoring(rows_of(6), SCHEMA, fake_predict([]), cp, batch=4, in_flight=2)
    assert write_outputs(out, cp, summary.chunks) == (6, 0, 0)
    assert len(out.read_text().splitlines()) == 7
    assert not stale.exists()
    assert list(tmp_path.glob("*.rejects.csv")) == []


async def test_a_request_that_keeps_failing_goes_to_rejects(tmp_path):
    cp = Checkpoint(tmp_path / "out.csv", fingerprint(tmp_path, 4))
    summary = await run_scoring(rows_of(4), SCHEMA, fake_predict([], fail_first=99), cp,
                                batch=4, in_flight=1, attempts=2, backoff_s=0)  # fmt: skip
    part = cp.load(0)
    assert summary.chunks == 1 and part.rows == []
    assert [r.reason for r in part.rejects] == [
        "request failed after 2 attempt(s): UNAVAILABLE: try again"
    ] * 4


async def test_interrupted_run_resumes_to_the_same_output(tmp_path):
    rows = rows_of(50, bad_every=7)
    whole = tmp_path / "whole.csv"
    cp = Checkpoint(whole, fingerprint(tmp_path, 5))
    s = await run_scoring(rows, SCHEMA, fake_predict([], delay=0.001), cp, batch=5, in_flight=3)
    write_outputs(whole, cp, s.chunks)

    part = tmp_path / "part.csv"
    with pytest.raises(ScoringInterrupted):
        await run_scoring(rows, SCHEMA, fake_predict([], delay=0.001), Checkpoint(part, fingerprint(tmp_path, 5)),
                          batch=5, in_flight=3, stop_after=4)  # fmt: skip
    calls: list[int] = []
    cp2 = Checkpoint(part, fingerprint(tmp_path, 5))
    s2 = await run_scoring(rows, SCHEMA, fake_predict(calls), cp2, batch=5, in_flight=3)
    assert s2.resumed_chunks == 4 and len(calls) == 6
    write_outputs(part, cp2, s2.chunks)
    assert part.read_text() == whole.read_text()
    assert (tmp_path / "part.csv.rejects.csv").read_text() == (tmp_path / "whole.csv.rejects.csv").read_text()


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("id,amount,merchant_category",
         "has no column 'account_id' (the route's entity key); its columns are: id, amount, merchant_category"),
        ("account_id,merchant_category",
         "has no column 'amount' (a request feature the route takes); its columns are: account_id, merchant_category"),
        ("account_id",
         "has no columns 'amount', 'merchant_category' (request features the route takes); its columns are: "
         "account_id"),
        ("", "has no column 'account_id' (the route's entity key); its columns are: none"),
    ],
)  # fmt: skip
def test_a_file_missing_the_key_or_a_request_feature_column_is_refused_whole(tmp_path, header, problem):
    path = tmp_path / "in.csv"
    path.write_text(f"{header}\n" if header else "")
    assert SCHEMA.missing_columns(read_columns(path)) == problem


def test_the_columns_of_a_parquet_file_and_a_file_with_every_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"account_id": ["a"], "amount": [1.0], "merchant_category": [2], "x": [0]}), path)
    assert read_columns(path) == ["account_id", "amount", "merchant_category", "x"]
    assert SCHEMA.missing_columns(read_columns(path)) is None  # an unknown column is a per-row matter


def test_the_output_names_the_features_scored_with_defaults_and_old_parts_still_load(tmp_path):
    out = tmp_path / "out.csv"
    cp = Checkpoint(out, fingerprint(tmp_path))
    done = cp.open()
    unknown = ScoredRow("nosuch", 0.5, "stable", "1", "PRIMARY", ("avg_amount_30d", "txn_count_24h"))
    cp.save(PartResult(0, [ScoredRow("a", 0.25, "stable", "1", "PRIMARY"), unknown]), done)
    assert Checkpoint(out, fingerprint(tmp_path)).load(0).rows[1] == unknown
    assert write_outputs(out, cp, 1) == (2, 0, 1)
    assert out.read_text().splitlines() == [
        "entity_key,score,variant,model_version,tier,defaulted_features,prediction_id",
        "a,0.25,stable,1,PRIMARY,,",
        'nosuch,0.5,stable,1,PRIMARY,"avg_amount_30d,txn_count_24h",',
    ]
    old = PartResult.from_json('{"index": 0, "rows": [["a", 0.25, "stable", "1", "PRIMARY"]], "rejects": []}')
    assert old.rows == [
        ScoredRow("a", 0.25, "stable", "1", "PRIMARY")
    ]  # a checkpoint written before the column

    parquet = tmp_path / "out.parquet"
    write_outputs(parquet, cp, 1)
    import pyarrow.parquet as pq

    assert pq.read_table(parquet).column("defaulted_features").to_pylist() == [
        "",
        "avg_amount_30d,txn_count_24h",
    ]


def test_a_prediction_id_column_is_taken_as_the_rows_own_id_and_checked_as_the_gateway_would():
    values = {"account_id": "a", "amount": "1", "merchant_category": "3"}
    assert SCHEMA.validate(row(2, **values, prediction_id=" txn-9 ")) == ValidRow(
        2, "a", {"amount": 1.0, "merchant_category": 3}, "txn-9"
    )
    assert SCHEMA.validate(row(3, **values, prediction_id="")).prediction_id == ""  # the gateway makes one
    assert SCHEMA.validate(row(4, **values)).prediction_id == ""
    too_long = SCHEMA.validate(row(5, **values, prediction_id="x" * 129))
    assert (
        isinstance(too_long, Reject)
        and too_long.reason == "prediction_id is 129 characters long; at most 128"
    )
    assert "not printable ASCII" in SCHEMA.validate(row(6, **values, prediction_id="tx\u00e9")).reason
    assert "(and optionally 'prediction_id')" in SCHEMA.validate(row(7, **values, colour="red")).reason


def test_the_prediction_id_travels_to_predict_and_back_into_the_output(tmp_path):
    from meshserve.cli.score import from_reply, to_request
    from meshserve.gateway.v1 import gateway_pb2

    rows = [ValidRow(2, "a", {"amount": 1.0}, "txn-9"), ValidRow(3, "b", {"amount": 2.0})]
    request = to_request("fraud", rows)
    assert [i.prediction_id for i in request.instances] == ["txn-9", ""]
    reply = gateway_pb2.PredictResponse(
        predictions=[
            gateway_pb2.Prediction(entity_key="a", score=0.5, variant="stable", prediction_id="txn-9"),
            gateway_pb2.Prediction(entity_key="b", score=0.25, variant="stable", prediction_id="f" * 32),
        ]
    )
    scored = from_reply(reply)
    assert [r.prediction_id for r in scored] == ["txn-9", "f" * 32]
    out = tmp_path / "out.parquet"
    cp = Checkpoint(out, fingerprint(tmp_path))
    cp.save(PartResult(0, scored), cp.open())
    assert Checkpoint(out, fingerprint(tmp_path)).load(0).rows == scored  # kept across a resume
    write_outputs(out, cp, 1)
    import pyarrow.parquet as pq

    assert pq.read_table(out).column("prediction_id").to_pylist() == ["txn-9", "f" * 32]
