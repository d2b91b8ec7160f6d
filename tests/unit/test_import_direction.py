"""Imports only point down the house: the core imports nothing of ours, the processes import the core and the
contracts, the launcher and the CLI sit on top. Every import counts, lazy ones inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("meshserve", "gateway", "services")

# Floors, bottom first: a module may import its own floor or any floor below. Longest prefix wins.
FLOORS: dict[str, float] = {
    "meshserve.core": 0,
    "meshserve.defaults": 0,
    "meshserve.protogen": 0,
    # the contracts two processes share (generated v1 code, and the Triton calls passed through as bytes)
    "meshserve.admin": 0,
    "meshserve.cache": 0,
    "meshserve.gateway": 0,
    "meshserve.inference": 0,
    "meshserve.feature.v1": 0,
    "meshserve.feedback": 0,
    "meshserve.monitor": 0,
    "meshserve.feature": 1,  # the feature registry and drift
    "meshserve.quality": 1,  # model quality: metrics, sequential tests, the judge's simulation (numpy only)
    "gateway.control": 2.0,
    "gateway.routing": 2.1,
    "gateway.settings": 2.2,
    "gateway.serving": 2.3,
    "gateway.rollout": 2.4,
    "gateway.api": 2.5,
    "gateway.metrics": 2.6,
    "gateway.service": 2.7,
    "gateway": 2.8,  # __init__ and __main__
    "services": 2.8,
    "meshserve.samples": 3,
    "meshserve.scoring": 3,
    "meshserve.deploy": 3,
    "meshserve.launcher": 4,
    "meshserve.cli": 5,
    "meshserve": 5,  # the package's own __init__
}
# Rooms on the same level that never import each other: the gateway and the services, and one service another.
APART = ("gateway", "services.cache", "services.feature", "services.inference", "services.monitor")


def floor_of(module: str) -> tuple[str, float]:
    for prefix in sorted(FLOORS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, FLOORS[prefix]
    raise AssertionError(f"{module} is on no floor: add its package to FLOORS")


def apart_room(module: str) -> str | None:
    return next((r for r in APART if module == r or module.startswith(r + ".")), None)


def imported_modules(source: str) -> set[str]:
    """Every module of ours that `source` imports, at any depth (function-local imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def violations(modules: dict[str, str]) -> list[str]:
    """`modules` maps a dotted module name to its source; returns each import that points up or across."""
    found = []
    for module, source in sorted(modules.items()):
        _, own = floor_of(module)
        for target in sorted(imported_modules(source)):
            room, theirs = floor_of(target)
            here, there = apart_room(module), apart_room(target)
            if theirs > own:
                found.append(f"{module} imports {target}, which is above it ({room})")
            elif here and there and here != there:
                found.append(f"{module} imports {target}: {here} and {there} never import each other")
    return found


def our_modules() -> dict[str, str]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "_pb2" in path.name:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path.read_text()
    return modules


def test_every_import_points_down_or_stays_on_its_floor():
    assert violations(our_modules()) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("meshserve.core.errors", "import gateway.routing.routes\n", "above it (gateway.routing)"),
        ("meshserve.core.tls", "def f():\n    from services.cache import backends\n", "above it (services)"),
        ("gateway.routing.live", "from gateway.serving.clients import X\n", "above it (gateway.serving)"),
        ("services.cache.service", "from services.feature.store import S\n", "never import each other"),
        ("services.inference.picker", "import gateway.serving.clients\n", "never import each other"),
        ("meshserve.launcher.mesh", "from meshserve.cli.app import main\n", "above it (meshserve.cli)"),
    ],
)
def test_an_import_that_points_up_or_across_is_caught(module, source, expected):
    modules = our_modules()
    modules[module] = modules.get(module, "") + source
    found = violations(modules)
    assert len(found) == 1 and expected in found[0], found


def test_every_package_says_what_it_owns():
    for package in PACKAGES:
        for init in (ROOT / package).rglob("__init__.py"):
            generated = init.parent.name == "v1" or (not init.read_text() and (init.parent / "v1").is_dir())
            if generated:  # protogen writes these (empty) beside each contract's v1/
                continue
            doc = ast.get_docstring(ast.parse(init.read_text()))
            assert doc and len(doc) > 40, f"{init.relative_to(ROOT)} has no docstring saying what it owns"
