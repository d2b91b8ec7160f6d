"""meshserve's embedded defaults: the sample feature registry, routes and seed accounts."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml


def load_yaml(path: Path | None, default: str) -> Any:
    """Parse `path`, or without one the embedded default file named `default`."""
    text = path.read_text() if path else resources.files(__name__).joinpath(default).read_text()
    return yaml.safe_load(text)
