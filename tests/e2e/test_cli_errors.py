"""The CLI's errors as a user sees them, without a mesh: one line naming what is wrong, exit status 2 for bad
input and 1 for a failed call, never a traceback."""

from __future__ import annotations

import json
import os

import pytest

from meshserve.core.process import free_port
from tests.e2e.test_cli import run_cli

FEATURES_HEADER = "account_id,avg_amount_30d,txn_count_24h,account_age_days"


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """No running mesh to be found: an empty run directory, no MESHSERVE_TARGET_* variables."""
    cleared = {k: "" for k in os.environ if k.startswith("MESHSERVE_TARGET_") or k == "MESHSERVE_DEBUG"}
    return {**cleared, "MESHSERVE_RUN_DIR": str(tmp_path / "run")}


async def fails(code: int, *args: str, env: dict[str, str]) -> str:
    """The command's one line of output, after checking its exit status and that no traceback was shown."""
    status, output = await run_cli(*args, env=env)
    assert status == code and "Traceback" not in output, output
    assert len(output.strip().splitlines()) == 1, output
    return output.strip()


async def test_version(env):
    code, output = await run_cli("--version", env=env)
    assert code == 0, output
    assert output.startswith("meshserve 0.") and "tritonclient 2." in output


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("rows.txt", "account_id\na-1\n", "unsupported file type .txt: expected .csv or .parquet"),
        ("rows.csv", f"{FEATURES_HEADER}\na-1,1.0,1,1\na-2,1.0,1,1,9\n",
         "line 3: 1 field(s) beyond the header's 4 columns; nothing was written"),
        ("rows.csv", "account_id,avg_amount_30d,event_time\na-1,1.0,last tuesday\n",
         "line 2: event_time 'last tuesday' is neither seconds since the epoch nor an ISO 8601 time; "
         "nothing was written"),
    ],
)  # fmt: skip
async def test_features_load_names_the_line_it_cannot_read_before_dialling(env, tmp_path, name, text, line):
    path = tmp_path / name
    path.write_text(text)
    port = free_port()  # nothing listens: the file is refused before any call
    output = await fails(2, "features", "load", str(path), "--target", f"127.0.0.1:{port}", env=env)
    assert output == f"meshserve features load: {line}"


async def test_features_load_refuses_an_unknown_entity(env, tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(f"{FEATURES_HEADER}\na-1,1.0,1,1\n")
    output = await fails(2, "features", "load", str(path), "--entity", "nope", env=env)
    assert output == "meshserve features load: unknown entity 'nope' (known: account)"


async def test_every_command_says_when_no_mesh_answers_and_where_the_address_came_from(env, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    hint = "is `meshserve up` running? (`meshserve status`)"
    output = await fails(1, "features", "freshness", "--target", address, env=env)
    assert output == f"meshserve features freshness: no mesh at {address} (from --target): {hint}"
    output = await fails(
        1, "features", "freshness", "-o", "json", env={**env, "MESHSERVE_TARGET_FEATURE": address}
    )
    assert (
        output
        == f"meshserve features freshness: no mesh at {address} (from MESHSERVE_TARGET_FEATURE): {hint}"
    )
    output = await fails(1, "predict", "fraud", "acct-1", "amount=1", "merchant_category=2", "--target", address,
                         env=env)  # fmt: skip
    assert output == f"meshserve predict: no mesh at {address} (from --target): {hint}"

    rows = tmp_path / "rows.csv"
    rows.write_text(f"{FEATURES_HEADER}\na-1,1.0,1,1\n")
    output = await fails(1, "features", "load", str(rows), "--target", address, env=env)
    assert output == f"meshserve features load: no mesh at {address} (from --target): {hint}"
    scoring = tmp_path / "score.csv"
    scoring.write_text("account_id,amount,merchant_category\nacct-1,10,2\n")
    output = await fails(1, "score", str(scoring), "--route", "fraud", "--target", address, env=env)
    assert output == f"meshserve score: no mesh at {address} (from --target): {hint}"  # not a file of rejects
    assert not (tmp_path / "score.scored.parquet.rejects.csv").exists()
    output = await fails(1, "routes", "list", "--admin", address, env=env)
    assert output == f"meshserve routes list: no mesh at {address} (from --admin): {hint}"
    output = await fails(1, "canary", "status", "fraud", "--admin", address, env=env)
    assert output == f"meshserve canary status: no mesh at {address} (from --admin): {hint}"


async def test_no_mesh_at_the_default_address_names_the_run_directory_it_looked_in(env):
    code, output = await run_cli("features", "freshness", env=env)
    # the default port may be some other process's on a shared machine; nothing of ours answers there
    if code == 1 and "no mesh at" in output:
        endpoints = os.path.join(env["MESHSERVE_RUN_DIR"], "endpoints.json")
        assert output.strip() == (
            f"meshserve features freshness: no mesh at 127.0.0.1:50052 (from the default address; no running "
            f"mesh's {endpoints}): is `meshserve up` running? (`meshserve status`)"
        )


@pytest.mark.parametrize(
    ("feature", "line"),
    [
        ("colour=red", "'colour' is not a feature of route fraud; its request features are amount (FP32), "
                       "merchant_category (INT32)"),
        ("avg_amount_30d=high", "'avg_amount_30d' is a stored feature of route fraud (the feature service "
                                "supplies it); its request features are amount (FP32), merchant_category (INT32)"),
        ("amount=red", "feature 'amount' takes a number (FP32), got 'red'"),
        ("merchant_category=2.5", "feature 'merchant_category' takes a whole number (INT32), got '2.5'"),
        ("amount", "expected name=value, got 'amount'"),
    ],
)  # fmt: skip
async def test_predict_says_which_feature_takes_what(env, feature, line):
    output = await fails(
        2, "predict", "fraud", "acct-1", feature, "--target", f"127.0.0.1:{free_port()}", env=env
    )
    assert output == f"meshserve predict: {line}"


async def test_an_unknown_output_format_is_a_usage_error(env):
    code, output = await run_cli("features", "freshness", "-o", "yaml", env=env)
    assert code == 2 and "'yaml' is not one of 'table', 'json'" in output and "Traceback" not in output, (
        output
    )


async def test_keys_list_as_json(env, tmp_path):
    path = tmp_path / "keys.json"
    code, _ = await run_cli("keys", "create", "svc", "--role", "scorer", "--file", str(path), env=env)
    assert code == 0
    code, output = await run_cli("keys", "list", "-o", "json", "--file", str(path), env=env)
    assert code == 0, output
    listed = json.loads(output)
    assert listed["file"] == str(path)
    assert [(k["name"], k["roles"], k["revoked"]) for k in listed["keys"]] == [("svc", ["scorer"], None)]
    assert "msk_" not in output  # never the key itself


async def test_debug_shows_the_traceback(env):
    address = f"127.0.0.1:{free_port()}"
    code, output = await run_cli(
        "features", "freshness", "--target", address, env={**env, "MESHSERVE_DEBUG": "1"}
    )
    assert code == 1 and "Traceback" in output and "CliError" in output, output
