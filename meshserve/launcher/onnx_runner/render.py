"""The generated model.py of an ONNX runner: the one template, triton_model.py, with this model's settings."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["TEMPLATE", "RunnerSettings", "render_model_py"]

TEMPLATE = Path(__file__).with_name("triton_model.py")
# The one line that differs between rendered copies: the template's own default settings.
TEMPLATE_LINE = 'RUNNER = {"onnx_file": "model.onnx", "intra_op_threads": 1}'


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    onnx_file: str = "model.onnx"  # in each version directory: the config's default_model_filename
    intra_op_threads: int = 1


def render_model_py(settings: RunnerSettings) -> str:
    template = TEMPLATE.read_text()
    if template.count(TEMPLATE_LINE) != 1:
        raise RuntimeError(f"{TEMPLATE} must hold the line {TEMPLATE_LINE!r} exactly once")
    return template.replace(TEMPLATE_LINE, f"RUNNER = {json.dumps(asdict(settings))}")
