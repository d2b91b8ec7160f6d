"""The test-only `fraud` version 3 (trained on shuffled labels, tests/fixtures/shuffled_fraud.py) served by a real
Triton from tests/fixtures/fraud_v3_repository beside versions 1 and 2: it answers Predict like them, without
errors, with scores of its own. A rollout judged on quality (the integrator's test) uses it as the worse canary."""

from __future__ import annotations

import pytest

from meshserve.launcher.mesh import LocalMesh, MeshSettings
from tests.helpers import FIXTURES
from tests.integration.gateways import in_process_gateway

ROUTES = """
routes:
  fraud:
    cache: {enabled: false}
    variants:
      - {name: stable, model: fraud, version: "2", weight: 100}
      - {name: canary, model: fraud, version: "3", weight: 0}
  worse:
    cache: {enabled: false}
    variants:
      - {name: canary, model: fraud, version: "3", weight: 100}
"""


@pytest.fixture(scope="module")
async def worse_mesh(tmp_path_factory):
    mesh = LocalMesh(
        MeshSettings(
            gateway_port=0, admin_port=0, gateway_http_port=0, run_dir=tmp_path_factory.mktemp("worse"),
            model_repositories=[FIXTURES / "fraud_v3_repository"], grace_s=5.0,
        )
    )  # fmt: skip
    await mesh.start()
    try:
        yield mesh
    finally:
        await mesh.stop()


async def test_version_3_answers_beside_versions_1_and_2_without_errors(worse_mesh, tmp_path):
    async with in_process_gateway(worse_mesh, tmp_path, ROUTES) as gateway:
        amounts = [15.0, 90.0, 480.0, 2400.0]
        worse = [await gateway.predict("worse", account="acct-00042", amount=a) for a in amounts]
        stable = [await gateway.predict("fraud", account="acct-00042", amount=a) for a in amounts]
        assert {(p.variant, p.model_version) for p in worse} == {("canary", "3")}
        assert {(p.variant, p.model_version) for p in stable} == {("stable", "2")}
        assert all(0.0 <= p.score <= 1.0 for p in worse)
        assert [p.score for p in worse] != [p.score for p in stable]  # a model of its own
        assert (await gateway.status("worse")).variants[0].errors == 0
