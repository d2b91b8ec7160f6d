"""`meshserve score` against the real mesh: large batches, same answers as single Predicts, resume, rejects."""

from __future__ import annotations

import asyncio
import csv
import random
import re
import signal
import sys
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest

from meshserve.cli.score import run_score
from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshserve.scoring.runner import ScoringInterrupted

HEADER = ["account_id", "amount", "merchant_category"]
MESHSERVE = str(Path(sys.executable).parent / "meshserve")
GATEWAY_ID = (
    r"[0-9a-f]{32}(:\d+)?"  # one the gateway made: a request's base, and the row's index when it had several
)


def write_input(path, n: int, seed: int = 7) -> list[list[str]]:
    rng = random.Random(seed)
    rows = [
        [f"acct-{rng.randrange(1, 200):05d}", f"{rng.uniform(1, 5000):.2f}", str(rng.randrange(10))]
        for _ in range(n)
    ]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([HEADER, *rows])
    return rows


async def test_score_matches_single_predicts_and_resumes_identically(mesh, tmp_path):
    src = tmp_path / "in.csv"
    rows = write_input(src, 3000)
    whole = tmp_path / "whole.parquet"
    summary = await run_score(src, "fraud", whole, mesh.endpoints.gateway, batch=256, in_flight=4, quiet=True)
    assert (summary.rows, summary.rejects) == (3000, 0)
    table = pq.read_table(whole).to_pylist()
    assert [r["entity_key"] for r in table] == [r[0] for r in rows]
    assert {r["tier"] for r in table} == {"PRIMARY"} and {r["model_version"] for r in table} == {"1"}
    assert not (tmp_path / "whole.parquet.parts").exists()
    assert not (tmp_path / "whole.parquet.rejects.csv").exists()  # nothing rejected, no empty file

    async with grpc.aio.insecure_channel(mesh.endpoints.gateway) as channel:
        stub = gateway_pb2_grpc.PredictionServiceStub(channel)
        for i in random.Random(1).sample(range(len(rows)), 20):
            key, amount, category = rows[i]
            instance = gateway_pb2.Instance(
                entity_key=key,
                features={
                    "amount": feature_pb2.Value(double_value=float(amount)),
                    "merchant_category": feature_pb2.Value(int64_value=int(category)),
                },
            )
            reply = await stub.Predict(
                gateway_pb2.PredictRequest(route="fraud", instances=[instance]), timeout=10
            )
            assert table[i]["score"] == pytest.approx(reply.predictions[0].score, abs=1e-6)
            assert table[i]["variant"] == reply.predictions[0].variant

    resumed = tmp_path / "resumed.parquet"
    with pytest.raises(ScoringInterrupted):
        await run_score(
            src, "fraud", resumed, mesh.endpoints.gateway, batch=256, in_flight=4, stop_after=5, quiet=True
        )
    state = (tmp_path / "resumed.parquet.parts" / "state.json").read_text()
    assert '"done": [' in state
    again = await run_score(src, "fraud", resumed, mesh.endpoints.gateway, batch=256, in_flight=4, quiet=True)
    assert again.resumed_chunks == 5
    # the same answers; each run's predictions have ids of their own (the gateway makes one per instance)
    ids = [r["prediction_id"] for r in table]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(GATEWAY_ID, i) for i in ids)
    assert pq.read_table(resumed).drop(["prediction_id"]).equals(pq.read_table(whole).drop(["prediction_id"]))


async def test_a_prediction_id_column_names_each_rows_prediction(mesh, tmp_path):
    src = tmp_path / "ids.csv"
    src.write_text(
        "account_id,amount,merchant_category,prediction_id\nacct-00042,250,3,txn-1\nacct-00043,10,2,\n"
    )
    out = tmp_path / "ids.parquet"
    summary = await run_score(src, "fraud", out, mesh.endpoints.gateway, quiet=True)
    assert (summary.rows, summary.rejects) == (2, 0)
    first, second = pq.read_table(out).column("prediction_id").to_pylist()
    assert first == "txn-1" and re.fullmatch(GATEWAY_ID, second)  # the caller's own, else the gateway's


async def test_bad_rows_go_to_rejects_with_line_numbers(mesh, tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text(
        "account_id,amount,merchant_category\n"
        "acct-00042,250,3\n"  # line 2: fine
        ",250,3\n"  # line 3: no key
        "acct-00043,lots,3\n"  # line 4: unparsable
        "acct-00044,250,3.5\n"  # line 5: wrong type
        "acct-00045,250,3,extra\n"  # line 6: an extra field
        "acct-00046,12,1\n"  # line 7: fine
    )
    out = tmp_path / "bad.csv.out.csv"
    summary = await run_score(src, "fraud", out, mesh.endpoints.gateway, quiet=True)
    assert (summary.rows, summary.rejects) == (2, 4)
    with out.open() as f:
        assert [r["entity_key"] for r in csv.DictReader(f)] == ["acct-00042", "acct-00046"]
    with (tmp_path / "bad.csv.out.csv.rejects.csv").open() as f:
        rejects = list(csv.DictReader(f))
    assert [r["line"] for r in rejects] == ["3", "4", "5", "6"]
    assert "missing entity key" in rejects[0]["reason"]
    assert "cannot parse 'lots'" in rejects[1]["reason"]
    assert "is an integer" in rejects[2]["reason"]
    assert "beyond the header" in rejects[3]["reason"]


async def test_a_request_that_fails_after_retries_sends_its_rows_to_rejects(tmp_path):
    src = tmp_path / "in.csv"
    write_input(src, 10)
    out = tmp_path / "out.csv"
    # nothing listens there: every attempt fails, and each row is rejected with the reason, none dropped
    result = await run_score(src, "fraud", out, "127.0.0.1:1", timeout_s=1.0, quiet=True)
    assert (result.rows, result.rejects) == (0, 10)
    with (tmp_path / "out.csv.rejects.csv").open() as f:
        reasons = {r["reason"] for r in csv.DictReader(f)}
    assert len(reasons) == 1 and reasons.pop().startswith("request failed after 3 attempt(s): UNAVAILABLE")


async def test_ctrl_c_keeps_finished_batches_and_the_same_command_resumes(mesh, tmp_path):
    """The real CLI, interrupted the way a terminal does it (SIGINT), then run again to the end."""
    src = tmp_path / "in.csv"
    rows = write_input(src, 60_000, seed=11)
    out = tmp_path / "out.parquet"
    # SIGINT as a terminal's Ctrl-C sends it, even where this test runs with SIGINT ignored (a job started in the
    # background by a non-interactive shell): a disposition set to default survives exec, an ignored one would too
    default_sigint = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    command = [sys.executable, "-c", default_sigint, MESHSERVE, "score", str(src), "--route", "fraud",
               "--out", str(out), "--target", mesh.endpoints.gateway, "--batch", "128", "--in-flight", "1"]  # fmt: skip
    parts = tmp_path / "out.parquet.parts"
    first = await asyncio.create_subprocess_exec(*command, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):  # a finished part is a file appearing: nothing to await but the directory
        while len(list(parts.glob("part-*.json"))) < 5:
            assert first.returncode is None, "the run ended before it could be interrupted"
            await asyncio.sleep(0.02)
    first.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(first.communicate(), 30)
    assert first.returncode == 130, err.decode()
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()
    saved = len(list(parts.glob("part-*.json")))
    assert 5 <= saved < len(rows) // 128 and not out.exists()

    second = await asyncio.create_subprocess_exec(*command, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(second.communicate(), 120)
    assert second.returncode == 0, err.decode()
    assert f"resumed: {saved} batch(es)" in " ".join(err.decode().split())
    table = pq.read_table(out).to_pylist()
    assert [r["entity_key"] for r in table] == [r[0] for r in rows]  # every row once, in input order
    assert not parts.exists()
