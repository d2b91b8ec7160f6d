"""`meshserve features load` as a user runs it: CSV and Parquet, bad rows refused with their lines, and a
feature update makes the entity's cached predictions unreachable."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pyarrow as pa
import pyarrow.parquet as pq

from meshserve.feature.v1 import feature_pb2, feature_pb2_grpc
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tests.e2e.test_cli import run_cli


async def online(mesh, *keys: str) -> dict[str, list]:
    async with grpc.aio.insecure_channel(mesh.endpoints.feature) as channel:
        reply = await feature_pb2_grpc.FeatureServiceStub(channel).GetOnlineFeatures(
            feature_pb2.GetOnlineFeaturesRequest(entity="account", entity_keys=keys), timeout=5
        )
    return {v.entity_key: [(s, x.WhichOneof("kind") and getattr(x, x.WhichOneof("kind"))) for s, x in
                           zip(v.statuses, v.values, strict=True)] for v in reply.vectors}  # fmt: skip


async def test_csv_load_refuses_a_bad_batch_with_line_numbers_and_writes_good_ones(mesh, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text(
        "account_id,avg_amount_30d,txn_count_24h,account_age_days\nnew-1,10.5,2,30\nnew-2,99.0,0,400\n"
    )
    code, output = await run_cli("features", "load", str(good), "--target", mesh.endpoints.feature)
    assert code == 0 and "loaded 2 rows (6 values) in 1 batches" in output, output
    rows = await online(mesh, "new-1")
    assert rows["new-1"] == [(feature_pb2.PRESENT, 10.5), (feature_pb2.PRESENT, 2), (feature_pb2.PRESENT, 30)]

    bad = tmp_path / "bad.csv"
    bad.write_text(
        "account_id,avg_amount_30d,txn_count_24h,account_age_days\n"
        "new-3,1.0,1,1\nnew-4,2.0,1,1\nnew-5,-4,1,1\n,3.0,1,1\n"
    )
    code, output = await run_cli("features", "load", str(bad), "--target", mesh.endpoints.feature)
    assert code == 2 and "INVALID_ARGUMENT" in output and "Traceback" not in output, output
    assert output.strip().endswith("; nothing was written"), output  # the file's one batch was refused
    assert (
        "line 4: avg_amount_30d='-4' is outside its range: must be ≥ 0" in output
        and "line 5: account_id is missing" in output
        and "None" not in output  # a bound the feature does not have
    )
    rows = await online(mesh, "new-3", "new-4")
    assert all(
        status == feature_pb2.NOT_FOUND for status, _ in rows["new-3"] + rows["new-4"]
    )  # nothing written


async def test_parquet_load_with_event_times(mesh, tmp_path):
    path = tmp_path / "features.parquet"
    table = pa.table({
        "account_id": ["pq-1", "pq-2"], "avg_amount_30d": [7.0, 8.0], "txn_count_24h": [1, 2],
        "event_time": [time.time() - 10, time.time() - 7200],
    })  # fmt: skip
    pq.write_table(table, path)
    code, output = await run_cli(
        "features", "load", str(path), "--target", mesh.endpoints.feature, "--batch-size", "1"
    )
    assert code == 0 and "in 2 batches" in output, output
    rows = await online(mesh, "pq-1", "pq-2")
    assert rows["pq-1"][:2] == [(feature_pb2.PRESENT, 7.0), (feature_pb2.PRESENT, 1)]
    assert rows["pq-2"][1][0] == feature_pb2.OUTSIDE_MAX_AGE  # 2 h old, max age 1 h: never silently stale


async def test_a_feature_update_makes_the_entitys_cached_predictions_unreachable(mesh, tmp_path):
    request = gateway_pb2.PredictRequest(
        route="fraud",
        instances=[gateway_pb2.Instance(entity_key="acct-00901", features={
            "amount": feature_pb2.Value(double_value=640.0), "merchant_category": feature_pb2.Value(int64_value=2)})],
    )  # fmt: skip
    async with grpc.aio.insecure_channel(mesh.endpoints.gateway) as channel:
        predict = gateway_pb2_grpc.PredictionServiceStub(channel).Predict
        before = (await predict(request, timeout=10)).predictions[0]
        deadline = time.monotonic() + 5
        while not (await predict(request, timeout=10)).predictions[0].from_cache:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        update = tmp_path / "update.csv"
        update.write_text("account_id,avg_amount_30d,txn_count_24h,account_age_days\nacct-00901,5.0,40,1\n")
        code, output = await run_cli("features", "load", str(update), "--target", mesh.endpoints.feature)
        assert code == 0, output
        deadline = time.monotonic() + 2  # the gateway's near-cache (0.2 s here) is the only delay
        while (after := (await predict(request, timeout=10)).predictions[0]).from_cache:
            assert time.monotonic() < deadline, "a stale cached answer outlived the feature update"
            await asyncio.sleep(0.02)
    assert after.score != before.score  # scored with the new features


async def test_a_line_that_cannot_be_read_ends_the_load_and_says_what_was_written(mesh, tmp_path):
    path = tmp_path / "late.csv"
    path.write_text(
        "account_id,avg_amount_30d,txn_count_24h,account_age_days,event_time\n"
        f"rd-1,1.0,1,1,{time.time():.0f}\nrd-2,2.0,1,1,\nrd-3,3.0,1,1,\nrd-4,4.0,1,1,next week\n"
    )
    code, output = await run_cli(
        "features", "load", str(path), "--target", mesh.endpoints.feature, "--batch-size", "2"
    )
    assert code == 2 and "Traceback" not in output, output
    assert output.strip().splitlines()[-1] == (
        "meshserve features load: line 5: event_time 'next week' is neither seconds since the epoch nor an "
        "ISO 8601 time; the 2 row(s) of the 1 batch(es) before its batch were written, nothing after"
    )
    rows = await online(mesh, "rd-1", "rd-2", "rd-3")
    assert rows["rd-1"][0] == (feature_pb2.PRESENT, 1.0) and rows["rd-2"][0] == (feature_pb2.PRESENT, 2.0)
    assert all(status == feature_pb2.NOT_FOUND for status, _ in rows["rd-3"])  # the failing line's batch


async def test_a_refused_batch_after_others_says_the_earlier_ones_were_written(mesh, tmp_path):
    path = tmp_path / "refused.csv"
    path.write_text(
        "account_id,avg_amount_30d,txn_count_24h,account_age_days\nrf-1,1.0,1,1\nrf-2,1.0,1,1\nrf-3,-1,1,1\n"
    )
    code, output = await run_cli(
        "features", "load", str(path), "--target", mesh.endpoints.feature, "--batch-size", "2"
    )
    assert code == 2 and "INVALID_ARGUMENT" in output and "line 4: avg_amount_30d=" in output, output
    assert output.strip().endswith(
        "; each batch of 2 rows is all or nothing: the ones before the failing one were written, it and the rest "
        "of the file were not"
    ), output
    rows = await online(mesh, "rf-1", "rf-3")
    assert rows["rf-1"][0] == (feature_pb2.PRESENT, 1.0)
    assert all(status == feature_pb2.NOT_FOUND for status, _ in rows["rf-3"])


async def test_freshness_as_json(mesh):
    async with grpc.aio.insecure_channel(mesh.endpoints.feature) as channel:  # something served
        await feature_pb2_grpc.FeatureServiceStub(channel).GetOnlineFeatures(
            feature_pb2.GetOnlineFeaturesRequest(entity="account", entity_keys=["acct-00001"]), timeout=5
        )
    code, output = await run_cli("features", "freshness", "-o", "json", "--target", mesh.endpoints.feature)
    assert code == 0, output
    served = {f["feature"]: f for f in json.loads(output)["features"]}
    assert set(served["avg_amount_30d"]) == {"feature", "present", "not_found", "outside_max_age"}
    assert served["avg_amount_30d"]["present"] >= 1
