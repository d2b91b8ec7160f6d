"""README's "Canaries from the CLI" block, run as a user would: in order, against a real `meshserve up`, in an
80-column terminal. The commands are read from the README itself, so the docs and this test cannot drift; each
one's exit status and key output are checked, the refused reload after the blue-green switch included."""

from __future__ import annotations

import asyncio
import os
import shlex
from pathlib import Path

import pytest

from tests.e2e.meshserve_up import MESHSERVE, meshserve_up

README = Path(__file__).resolve().parents[2] / "README.md"
DOCUMENTED = ".venv/bin/meshserve"
WIDTH = 80
REFUSAL = "meshserve routes reload: FAILED_PRECONDITION: "

# Each README command (as the README spells it), its exit status, and what its output must say (whitespace
# collapsed: rich wraps long lines at 80 columns). A failed call says it in one line on stderr.
EXPECTED: list[tuple[str, int, list[str]]] = [
    ("routes list", 0, ["routes file: embedded routes.yaml", "route fraud",
                        "stable │ fraud │ 1 │ 100", "canary │ fraud │ 2 │ 0"]),
    ("canary weights fraud stable=95 canary=5", 0, ["stable │ fraud │ 1 │ 95", "canary │ fraud │ 2 │ 5"]),
    ("canary start fraud", 0, ["rollout of canary: running at step 1/4"]),
    ("canary status fraud", 0, ["rollout of canary: running at step 1/4", "thresholds: error rate at most"]),
    ('canary rollback fraud --reason "p99 regression"', 0,
     ["stable │ fraud │ 1 │ 100", "canary │ fraud │ 2 │ 0", "rolled_back", "p99 regression"]),
    ("canary switch fraud stable 2", 0, ["stable │ fraud │ 2 │ 100", "canary │ fraud │ 2 │ 0"]),
    ("routes reload", 1, [
        "route 'fraud' variant 'stable': model 'fraud' version 1 is not served by Triton",
        "UNAVAILABLE (unloaded); it serves version 2", "nothing changed",
        "`meshserve canary switch fraud stable 2` (admin-token, ",
        "moved the variant from version 1 to 2 and unloaded 1",
        '`version: "2"`', "`meshserve up --routes FILE`",
        "run `meshserve canary switch fraud stable 1` (it loads version 1 again), then reload",
    ]),
    ("canary switch fraud stable 1", 0, ["stable │ fraud │ 1 │ 100", "canary │ fraud │ 2 │ 0"]),
    ("routes reload", 0, ["reloaded: fraud"]),
    ("routes audit", 0, ["set_weights", "rollout_step", "rollback", "rollout_stopped", "p99 regression", "switch_version",
                         "reload_refused", '{"stable": "1"}', '{"stable": "2"}', "admin-token"]),
]  # fmt: skip


def readme_commands() -> list[list[str]]:
    """The commands of the ```bash block under "## Canaries from the CLI", as argument lists."""
    section = README.read_text().split("## Canaries from the CLI\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_expected_commands_are_the_readmes():
    documented = readme_commands()
    assert {args[0] for args in documented} == {DOCUMENTED}
    assert [args[1:] for args in documented] == [shlex.split(command) for command, _, _ in EXPECTED]


async def run(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        MESHSERVE, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 90)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@pytest.mark.timeout(240)  # start-up (~15 s here) and ten commands, two of them switches
async def test_the_readme_canary_block_runs_in_order_at_80_columns(tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSERVE_")}
    env |= {"COLUMNS": str(WIDTH), "MESHSERVE_RUN_DIR": str(run_dir)}  # found through the run directory
    async with meshserve_up(run_dir):
        for args, (command, code, says) in zip(readme_commands(), EXPECTED, strict=True):
            status, out, err = await run(args[1:], env)
            assert status == code, f"{command}: exit {status}\n{out}{err}"
            if code == 0:
                said = out
                assert not err, f"{command}: {err}"
                too_wide = [line for line in out.splitlines() if len(line) > WIDTH]
                assert not too_wide, f"{command}: lines wider than {WIDTH}:\n" + "\n".join(too_wide)
            else:  # one line on stderr, naming the command and the status, and nothing on stdout
                said = err
                assert not out, f"{command}: {out}"
                assert err.count("\n") == 1 and err.startswith(REFUSAL), err
            flat = " ".join(said.split())
            for part in says:
                assert part in flat, f"{command}: {part!r} not in\n{said}"
