"""Per-run log directories (named by UTC start time, `latest`, the last N kept) and what Triton's log says about
a model it would not load: pure file and text handling, no process started."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone

from meshserve.launcher.run_logs import (
    LATEST,
    ModelLoadFailure,
    latest_run,
    prune_runs,
    readable_tail,
    run_log_dirs,
    start_run_logs,
    triton_load_failures,
)

T0 = datetime(2026, 12, 2, 1, 58, 48, tzinfo=UTC)


def test_each_run_gets_its_own_directory_named_by_its_utc_start_and_latest_points_at_it(tmp_path):
    logs = tmp_path / "logs"
    first = start_run_logs(logs, T0)
    assert first == logs / "20261202T015848Z" and first.is_dir() and not any(first.iterdir())
    assert os.readlink(logs / LATEST) == "20261202T015848Z"  # relative: the run directory may move
    local = T0.astimezone(timezone(timedelta(hours=-5)))  # the same instant, in another time zone
    second = start_run_logs(logs, local)
    assert second.name == "20261202T015848Z-2"  # same second: a suffix, never the first run's directory
    assert latest_run(logs) == logs / second.name
    assert run_log_dirs(logs) == [first, second]


def test_only_the_newest_runs_are_kept_and_nothing_else_is_touched(tmp_path):
    logs = tmp_path / "logs"
    runs = [start_run_logs(logs, T0 + timedelta(seconds=i), keep=3) for i in range(5)]
    (logs / "envoy.log").write_text("another tool's log\n")  # not a run directory: left alone
    (logs / "notes").mkdir()
    assert run_log_dirs(logs) == runs[2:]
    assert (logs / "envoy.log").exists() and (logs / "notes").is_dir()
    assert latest_run(logs) == runs[-1]


def test_the_run_just_started_survives_pruning_even_when_the_clock_went_back(tmp_path):
    logs = tmp_path / "logs"
    for i in range(3):
        start_run_logs(logs, T0 + timedelta(hours=1, seconds=i), keep=3)
    earlier = start_run_logs(logs, T0, keep=3)  # sorts first by name, yet is the newest
    assert earlier.is_dir() and latest_run(logs) == earlier
    assert len(run_log_dirs(logs)) == 3


def test_prune_returns_what_it_removed(tmp_path):
    logs = tmp_path / "logs"
    runs = [start_run_logs(logs, T0 + timedelta(seconds=i), keep=10) for i in range(4)]
    assert prune_runs(logs, keep=1) == runs[:3]
    assert prune_runs(tmp_path / "nowhere", keep=1) == []
    assert latest_run(tmp_path / "nowhere") is None


# Lines as the bundled Triton 2.51 writes them (from a real run: a python model raising in initialize, a
# KIND_GPU instance group on a machine without GPU, an input without dims).
TRITON_LOG = r"""I1202 02:02:48.599738 15469 model_lifecycle.cc:472] "loading: raiser:1"
E1202 02:02:48.611974 15469 model_lifecycle.cc:642] "failed to load 'gpuonly' version 1: Invalid argument: instance group gpuonly_0 of model gpuonly has kind KIND_GPU but no GPUs are available"
I1202 02:02:48.612021 15469 model_lifecycle.cc:777] "failed to load 'gpuonly'"
E1202 02:02:51.744128 15469 model_lifecycle.cc:642] "failed to load 'badio' version 1: Invalid argument: model input 'x' must specify 'dims' for badio"
I1202 02:02:52.605345 476 pb_stub.cc:366] "Failed to initialize Python stub: RuntimeError: weights file is corrupt\n\nAt:\n  /r/raiser/1/model.py(3): initialize\n"
E1202 02:02:52.659157 15469 model_lifecycle.cc:642] "failed to load 'raiser' version 1: Internal: RuntimeError: weights file is corrupt\n\nAt:\n  /r/raiser/1/model.py(3): initialize\n"
E1202 02:02:52.659157 15469 model_lifecycle.cc:642] "failed to load 'raiser' version 1: Internal: RuntimeError: weights file is corrupt\n\nAt:\n  /r/raiser/1/model.py(3): initialize\n"
I1202 02:02:52.659185 15469 model_lifecycle.cc:777] "failed to load 'raiser'"
| raiser | 1       | UNAVAILABLE: Internal: RuntimeError: weights file is corrupt    |
error: creating server: Internal - failed to load all models
"""


def test_each_model_triton_would_not_load_is_named_once_with_the_first_line_of_its_reason():
    assert triton_load_failures(TRITON_LOG) == [
        ModelLoadFailure(
            "gpuonly", "1", "Invalid argument: instance group gpuonly_0 of model gpuonly has kind KIND_GPU but "
            "no GPUs are available",
        ),
        ModelLoadFailure("badio", "1", "Invalid argument: model input 'x' must specify 'dims' for badio"),
        ModelLoadFailure("raiser", "1", "Internal: RuntimeError: weights file is corrupt"),
    ]  # fmt: skip
    assert triton_load_failures(TRITON_LOG)[2].summary() == (
        "triton could not load model 'raiser' version 1: Internal: RuntimeError: weights file is corrupt"
    )


def test_a_failure_without_a_version_or_with_quotes_in_its_reason_reads_well():
    line = r'E1202 00:00:00.0 1 model_lifecycle.cc:1] "failed to load \'m\': Invalid argument: unknown \"x\""'
    assert triton_load_failures(line.replace("\\'", "'")) == [
        ModelLoadFailure("m", None, 'Invalid argument: unknown "x"')
    ]
    assert ModelLoadFailure("m", None, "why").summary() == "triton could not load model 'm': why"
    assert triton_load_failures("I1202 loading: fine:1\nall good\n") == []


def test_a_tail_keeps_the_exception_and_leaves_out_the_traceback_frames():
    log = "\n".join(
        [
            '{"msg": "starting"}',
            "Traceback (most recent call last):",
            '  File "/x/gateway/__main__.py", line 6, in <module>',
            "    main(GatewayService, GatewaySettings)",
            "    ^^^^^^^^^^^^^^^^^^^^^",
            "KeyError: 'a'",
            "",
            "During handling of the above exception, another exception occurred:",
            "",
            "Traceback (most recent call last):",
            '  File "/x/y.py", line 1, in <module>',
            "pydantic_core._pydantic_core.ValidationError: 1 validation error for GatewaySettings",
            "feature_timeout_s",
            "  Input should be a valid number",
            "",
        ]
    )
    assert readable_tail(log) == "\n".join(
        [
            '{"msg": "starting"}',
            "KeyError: 'a'",
            "pydantic_core._pydantic_core.ValidationError: 1 validation error for GatewaySettings",
            "feature_timeout_s",
            "  Input should be a valid number",
        ]
    )
    assert readable_tail("a\nb\nc\n", lines=2) == "b\nc"
