"""docs/security.md's examples for a mesh started with `meshserve up --tls --auth`, run as written against one:
Triton's gRPC client and curl with the mesh's CA, the client certificate and an API key."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from meshserve.launcher.endpoints_file import read_endpoints
from tests.e2e.meshserve_up import MESHSERVE, meshserve_up

ROOT = Path(__file__).resolve().parents[2]
SECTION = "### Calling a mesh started with `--tls --auth`"


def blocks() -> dict[str, list[str]]:
    """The section's code blocks by language."""
    text = (ROOT / "docs" / "security.md").read_text()
    section = text[text.index(SECTION) : text.index("\n## ", text.index(SECTION))]
    found: dict[str, list[str]] = {}
    for language, code in re.findall(r"^```(\w+)\n(.*?)^```", section, re.M | re.S):
        found.setdefault(language, []).append(code)
    return found


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, output.decode(errors="replace")


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_the_tritonclient_and_curl_examples_score_against_up_tls_auth(tmp_path):
    code = blocks()
    setup, curl = code["bash"]
    (python,) = code["python"]
    assert "meshserve up --tls --auth" in setup and "meshserve keys create" in setup
    run_dir = tmp_path / "run"
    env = {**os.environ, "MESHSERVE_RUN_DIR": str(run_dir)}
    async with meshserve_up(run_dir, {"MESHSERVE_TLS": "true", "MESHSERVE_AUTH": "true"}):
        endpoints = read_endpoints(run_dir)
        assert endpoints is not None and endpoints.tls
        status, output = await run(MESHSERVE, "keys", "create", "batch-job", "--role", "scorer", env=env)
        assert status == 0, output
        (key,) = re.findall(r"msk_\S+", output)

        def as_written(
            snippet: str,
        ) -> str:  # this mesh's ports, run directory and key for the docs' defaults
            for default, here in (
                ("127.0.0.1:50051", endpoints.gateway),
                ("127.0.0.1:50056", endpoints.gateway_http),
                (".meshserve/certs", str(run_dir / "certs")),
                ("msk_...", key),
            ):
                snippet = snippet.replace(default, here)
            assert not re.search(r"5005[16]|\.meshserve/|msk_\.\.\.", snippet), (
                snippet
            )  # nothing left to swap
            assert str(run_dir / "certs") in snippet and key in snippet
            return snippet

        status, output = await run(sys.executable, "-c", as_written(python))
        assert status == 0, output
        assert re.fullmatch(r"\[0\.\d+\]\n", output), output

        status, output = await run("bash", "-c", as_written(curl))
        assert status == 0, output
        answer = json.loads(output)
        assert answer["model_name"] == "fraud" and answer["outputs"][0]["shape"] == [1, 1]

        # what the docs say of REST: the certificate is checked, but the key is the credential
        keyless = as_written(curl).replace(f'-H "authorization: Bearer {key}"', "")
        status, output = await run("bash", "-c", keyless.replace("curl -s", "curl -s -w ' %{http_code}'", 1))
        assert status == 0 and output.endswith(" 401") and "no credential" in output, output
