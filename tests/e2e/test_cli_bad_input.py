"""The CLI against a real mesh when the input is wrong: what the server refuses as bad input exits 2 with one line
on stderr (meshserve.cli.errors.BAD_INPUT), an unknown route is called a route, a file that cannot be scored at
all fails before scoring, and a score from defaults says so while still exiting 0. After each refusal a valid
call still succeeds."""

from __future__ import annotations

import asyncio
import csv
import json
import os

import pyarrow.parquet as pq
import pytest

from tests.e2e.meshserve_up import MESHSERVE

STORED = ["avg_amount_30d", "txn_count_24h", "account_age_days"]  # the fraud model's stored features


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        MESHSERVE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def refused(*args: str, env: dict[str, str] | None = None) -> str:
    """The one line on stderr of a command that exits 2 and prints nothing else."""
    code, out, err = await run(*args, env=env)
    assert code == 2 and out == "" and "Traceback" not in err, (code, out, err)
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.fixture
def gateway(mesh) -> tuple[str, str]:
    return "--target", mesh.endpoints.gateway


@pytest.fixture
def admin(mesh) -> tuple[tuple[str, str], dict[str, str]]:
    return ("--admin", mesh.endpoints.admin), {"MESHSERVE_RUN_DIR": str(mesh.settings.run_dir)}


async def still_predicts(gateway) -> None:
    code, out, err = await run("predict", "fraud", "acct-00042", "amount=1", "merchant_category=2", *gateway)
    assert code == 0 and "acct-00042" in out, (out, err)


@pytest.mark.parametrize(
    ("features", "line"),
    [
        (["amount=nan", "merchant_category=2"],
         "INVALID_ARGUMENT: instance 0: request feature 'amount' must be finite, got nan"),
        (["amount=1"], "INVALID_ARGUMENT: instance 0: missing request feature 'merchant_category'"),
        (["amount=1", "merchant_category=2", "colour=1"],
         "INVALID_ARGUMENT: instance 0: unknown request feature 'colour'; expected ['amount', 'merchant_category']"),
    ],
)  # fmt: skip
async def test_predict_exits_2_for_features_the_gateway_refuses(gateway, features, line):
    assert await refused("predict", "fraud", "acct-1", *features, *gateway) == f"meshserve predict: {line}"
    await still_predicts(gateway)


async def test_an_unknown_route_is_called_a_route_by_predict_score_and_canary(gateway, admin, tmp_path):
    line = await refused("predict", "nosuch", "acct-1", "amount=1", "merchant_category=2", *gateway)
    assert line.startswith("meshserve predict: NOT_FOUND: unknown route 'nosuch'"), line
    assert "Request for unknown model" not in line

    rows = tmp_path / "rows.csv"
    rows.write_text("account_id,amount,merchant_category\nacct-1,10,2\n")
    line = await refused("score", str(rows), "--route", "nosuch", *gateway)
    assert line.startswith("meshserve score: NOT_FOUND: unknown route 'nosuch'"), line
    assert not list(tmp_path.glob("rows.scored*"))  # refused before any row was read

    flags, env = admin
    line = await refused("canary", "start", "nosuch", *flags, env=env)
    assert line.startswith("meshserve canary start: NOT_FOUND: unknown route 'nosuch'"), line
    line = await refused("canary", "status", "nosuch", *flags, env=env)
    assert line.startswith("meshserve canary status: NOT_FOUND: unknown route 'nosuch'"), line
    line = await refused("canary", "weights", "cli-canary", "ghost=5", *flags, env=env)
    assert line.startswith("meshserve canary weights: INVALID_ARGUMENT:") and "no variant 'ghost'" in line, (
        line
    )
    await still_predicts(gateway)


async def test_features_load_exits_2_for_a_row_the_feature_service_refuses(mesh, tmp_path, gateway):
    path = tmp_path / "bad.csv"
    path.write_text("account_id,avg_amount_30d,txn_count_24h,account_age_days\nbi-1,1.0,1,1\nbi-2,-4,1,1\n")
    code, _, err = await run(
        "features", "load", str(path), "--target", mesh.endpoints.feature
    )  # stdout: progress
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("meshserve features load: INVALID_ARGUMENT:") and "line 3: avg_amount_30d=" in err
    await still_predicts(gateway)


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("id,amount,merchant_category",
         "has no column 'account_id' (the route's entity key); its columns are: id, amount, merchant_category"),
        ("account_id,amount",
         "has no column 'merchant_category' (a request feature the route takes); its columns are: account_id, amount"),
    ],
)  # fmt: skip
async def test_score_refuses_a_file_without_the_key_or_a_feature_column_before_scoring(
    gateway, tmp_path, header, problem
):
    path = tmp_path / "x.csv"
    path.write_text(f"{header}\n" + "acct-1,10,2\n" * 3)
    assert (
        await refused("score", str(path), "--route", "fraud", *gateway)
        == f"meshserve score: {path} {problem}"
    )
    assert not list(tmp_path.glob("x.scored*"))


async def test_a_score_from_defaults_says_so_in_predict_and_score_and_exits_0(gateway, tmp_path):
    args = ("predict", "fraud", "nosuch-entity", "amount=10", "merchant_category=2", *gateway)
    code, out, err = await run(*args)
    assert code == 0, err
    note = f"entity 'nosuch-entity': stored features missing (unknown entity) or too old, scored with defaults: {', '.join(STORED)}"
    assert note in " ".join(out.split()), out
    code, out, err = await run(*args, "-o", "json")
    assert code == 0, err
    assert json.loads(out)["predictions"][0]["defaulted_features"] == STORED
    code, out, err = await run(
        "predict", "fraud", "acct-00042", "amount=10", "merchant_category=2", *gateway, "-o", "json"
    )
    assert code == 0 and json.loads(out)["predictions"][0]["defaulted_features"] == [], (out, err)

    rows = tmp_path / "mixed.csv"
    rows.write_text("account_id,amount,merchant_category\nacct-00042,10,2\nnosuch-entity,10,2\n")
    code, out, err = await run("score", str(rows), "--route", "fraud", *gateway)
    assert code == 0, err
    assert "1 of them scored with defaults for stored features" in err, err
    table = pq.read_table(tmp_path / "mixed.scored.parquet").to_pylist()
    assert [(r["entity_key"], r["defaulted_features"]) for r in table] == [
        ("acct-00042", ""),
        ("nosuch-entity", ",".join(STORED)),
    ]
    out_csv = tmp_path / "mixed.csv.out.csv"
    code, _, err = await run("score", str(rows), "--route", "fraud", "--out", str(out_csv), *gateway)
    assert code == 0, err
    with out_csv.open(newline="") as f:
        assert [r["defaulted_features"] for r in csv.DictReader(f)] == ["", ",".join(STORED)]
