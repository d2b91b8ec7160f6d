"""The one model repository Triton serves, prepared in the run directory from the user's repositories.

Each model of the user's repositories appears in it under its own name:
- an ONNX model (`platform: "onnxruntime_onnx"` or `backend: "onnxruntime"`, or no config.pbtxt and a
  `model.onnx`) as a python-backend runner (meshserve.launcher.onnx_runner): a config.pbtxt written here, and in each
  version directory the rendered model.py beside links to that version's own files;
- any other model as it is: its directories made again here, each file a link to the user's (a link to the
  whole directory would let the python backend write its `__pycache__` into the user's repository).
The bundled Triton has only the python backend, so a model it could not load (another backend, an ONNX file that
does not fit its config, an ensemble missing a step) is left out with the reason, rather than stopping Triton
and with it `meshserve up`. The user's files are only read.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from meshserve.launcher.onnx_runner import (
    ONNX_PLATFORM,
    OnnxSignature,
    RunnerError,
    RunnerSettings,
    check_config,
    complete_config,
    intra_op_threads,
    is_onnx,
    onnx_file_name,
    read_signature,
    render_model_py,
    runner_config,
)

__all__ = [
    "RepositoryError",
    "ServedModel",
    "ServedRepository",
    "SkippedModel",
    "loaded_versions",
    "prepare_served_repository",
    "read_config",
    "refresh_served_model",
]

ModelConfig = model_config_pb2.ModelConfig
CONFIG_FILE = "config.pbtxt"
NOT_LINKED = {"model.py", "__pycache__"}  # in an ONNX version directory: the runner's own model.py goes there
# The backend each of Triton's platforms names.
PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "tensorflow_graphdef": "tensorflow",
    "tensorflow_savedmodel": "tensorflow",
    "pytorch_libtorch": "pytorch",
}


class RepositoryError(ValueError):
    """A model repository that cannot be read at all (the message names it); models are skipped one by one."""


@dataclass(frozen=True, slots=True)
class ServedModel:
    name: str
    source: Path  # the user's model directory
    onnx_runner: bool  # served through the generated onnxruntime runner, rather than as it is
    notes: tuple[str, ...] = ()  # what was left out of it (a version without its model file)


@dataclass(frozen=True, slots=True)
class SkippedModel:
    name: str
    source: Path
    reason: str


@dataclass(frozen=True, slots=True)
class ServedRepository:
    path: Path  # what Triton gets as --model-repository
    models: tuple[ServedModel, ...] = ()
    skipped: tuple[SkippedModel, ...] = ()


def read_config(path: Path) -> ModelConfig:
    """A config.pbtxt, parsed as Triton's ModelConfig; RunnerError with the parser's message when it is not one."""
    try:
        return text_format.Parse(path.read_text(), ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise RunnerError(f"{CONFIG_FILE} does not parse: {exc}") from None


def _version_dirs(model_dir: Path) -> list[Path]:
    return sorted(
        (d for d in model_dir.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)
    )


def loaded_versions(model_dir: Path, config: ModelConfig | None = None) -> list[str]:
    """The versions Triton loads from a model directory, by its config's version_policy (default: the latest
    one); the config is read from the directory unless given."""
    versions = [int(d.name) for d in _version_dirs(model_dir)]
    if config is None:
        config_path = model_dir / CONFIG_FILE
        config = read_config(config_path) if config_path.exists() else ModelConfig()
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        chosen = versions
    elif choice == "specific":
        chosen = [v for v in versions if v in set(policy.specific.versions)]
    else:
        chosen = versions[-(policy.latest.num_versions or 1) :]
    return [str(v) for v in chosen]


def _python_files(model_dir: Path, config: ModelConfig) -> None:
    """RunnerError when a version Triton would load has no file for the python backend to run: Triton does not
    fail that load, it waits on the stub until meshserve up gives up on it."""
    file_name = config.default_model_filename or "model.py"
    for version in loaded_versions(model_dir, config):
        if not (model_dir / version / file_name).exists():
            raise RunnerError(f"version {version} has no {file_name}, which the python backend runs")


def _model_dirs(repository: Path) -> list[Path]:
    return sorted(d for d in repository.iterdir() if d.is_dir() and not d.name.startswith("."))


def _served_as_is(config: ModelConfig, backends: Collection[str]) -> None:
    """RunnerError when the bundled Triton has no backend for this (non-ONNX) model."""
    backend = config.backend or PLATFORM_BACKENDS.get(config.platform, "")
    if config.platform == "ensemble" or (not backend and not config.platform):
        return  # an ensemble needs no backend; with neither field Triton works it out from the files
    if not backend:
        raise RunnerError(f"unknown platform {config.platform!r}")
    if backend not in backends:
        raise RunnerError(
            f"backend {backend!r} is not in the bundled Triton, which has {', '.join(sorted(backends))} "
            "(and runs ONNX models with onnxruntime through it)"
        )


def _onnx_versions(model_dir: Path, file_name: str) -> tuple[list[Path], list[str]]:
    """The version directories that hold the model file, and a note for each that does not."""
    versions, notes = [], []
    for version_dir in _version_dirs(model_dir):
        if (version_dir / file_name).exists():
            versions.append(version_dir)
        else:
            notes.append(f"version {version_dir.name} has no {file_name}: left out")
    if not versions:
        raise RunnerError(f"no version directory (1/, 2/, ...) holds {file_name}")
    return versions, notes


def _read_version(version_dir: Path, file_name: str) -> OnnxSignature:
    onnx_path = version_dir / file_name
    if onnx_path.is_dir():  # a directory holding model.onnx and its external weights, as Triton allows
        onnx_path = onnx_path / "model.onnx"
    try:
        return read_signature(onnx_path)
    except Exception as exc:  # onnxruntime's own errors have no common base class
        text = str(exc).strip()
        first_line = text.splitlines()[0] if text else type(exc).__name__
        raise RunnerError(
            f"version {version_dir.name}: onnxruntime cannot load {file_name}: {first_line}"
        ) from None


def _write_onnx_runner(name: str, model_dir: Path, config: ModelConfig, out: Path) -> tuple[str, ...]:
    """Write the runner for one ONNX model into `out`; the notes on what was left out. RunnerError, before
    anything is written, when no runner can be made."""
    file_name = onnx_file_name(config)
    settings = RunnerSettings(onnx_file=file_name, intra_op_threads=intra_op_threads(config))
    versions, notes = _onnx_versions(model_dir, file_name)
    signatures = {d.name: _read_version(d, file_name) for d in versions}
    completed = complete_config(config, signatures[versions[-1].name])  # auto-complete reads the latest
    for version, signature in signatures.items():
        try:
            check_config(completed, signature)
        except RunnerError as exc:
            raise RunnerError(f"version {version}: {exc}") from None
    served = runner_config(completed)
    served.name = served.name or name

    out.mkdir()
    source = model_dir / CONFIG_FILE
    header = (
        f"# Generated by meshserve from {source if source.exists() else model_dir}; edit that instead.\n"
        "# The bundled Triton has no onnxruntime backend: each version's model.py runs the file with onnxruntime.\n"
    )
    (out / CONFIG_FILE).write_text(header + text_format.MessageToString(served))
    left_out = {d.name for d in _version_dirs(model_dir)} - {d.name for d in versions}
    for entry in model_dir.iterdir():  # label files and the like, beside the versions
        if entry.name != CONFIG_FILE and entry.name not in left_out and entry not in versions:
            (out / entry.name).symlink_to(entry.resolve())
    model_py = render_model_py(settings)
    for version_dir in versions:
        (out / version_dir.name).mkdir()
        (out / version_dir.name / "model.py").write_text(model_py)
        for entry in version_dir.iterdir():  # the model file, and any external data beside it
            if entry.name not in NOT_LINKED:
                (out / version_dir.name / entry.name).symlink_to(entry.resolve())
    return tuple(notes)


def _mirror(source: Path, out: Path) -> None:
    """`out` as a tree of directories whose files link to those of `source`."""
    out.mkdir()
    for entry in source.iterdir():
        if entry.name == "__pycache__":
            continue
        if entry.is_dir():
            _mirror(entry, out / entry.name)
        else:
            (out / entry.name).symlink_to(entry.resolve())


def _prepare_model(model_dir: Path, out: Path, backends: Collection[str]) -> ServedModel:
    name = model_dir.name
    config_path = model_dir / CONFIG_FILE
    config = read_config(config_path) if config_path.exists() else ModelConfig()
    # With neither field Triton tells an ONNX model by its file (and auto-completes the rest)
    if not config.platform and not config.backend:
        if any((d / onnx_file_name(config)).exists() for d in _version_dirs(model_dir)):
            config.platform = ONNX_PLATFORM
    if config.name and config.name != name:
        raise RunnerError(f"{CONFIG_FILE} names it {config.name!r}, but Triton needs its directory's name")
    if not is_onnx(config):
        _served_as_is(config, backends)
        if config.backend == "python":
            _python_files(model_dir, config)
    try:
        if is_onnx(config):
            notes = _write_onnx_runner(name, model_dir, config, out)
            return ServedModel(name, model_dir, onnx_runner=True, notes=notes)
        _mirror(model_dir, out)
        return ServedModel(name, model_dir, onnx_runner=False)
    except Exception:
        if out.exists():  # never half a model
            shutil.rmtree(out)
        raise


def _ensemble_steps(model: ServedModel) -> list[str]:
    path = model.source / CONFIG_FILE
    if model.onnx_runner or not path.exists():
        return []
    return [step.model_name for step in read_config(path).ensemble_scheduling.step]


def prepare_served_repository(
    repositories: Sequence[Path], target: Path, backends: Collection[str] = ("python",)
) -> ServedRepository:
    """Build `target` afresh from `repositories` (earlier ones win a name both hold); `backends` are the backends
    the Triton that serves it has. RepositoryError when a repository is not a directory or holds no model."""
    sources = list(dict.fromkeys(Path(r).resolve() for r in repositories))
    for repository in sources:
        if not repository.is_dir():
            raise RepositoryError(f"model repository {repository} is not a directory")
        if not _model_dirs(repository):
            raise RepositoryError(
                f"model repository {repository} holds no model (one directory per model: "
                "<name>/config.pbtxt and <name>/1/...)"
            )
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)  # only ever ours; it removes links, never what they point to
    target.mkdir(parents=True)

    served: dict[str, ServedModel] = {}
    skipped: list[SkippedModel] = []
    for repository in sources:
        for model_dir in _model_dirs(repository):
            name = model_dir.name
            if name in served:
                reason = f"{served[name].source.parent} has a model of the same name, and comes first"
                skipped.append(SkippedModel(name, model_dir, reason))
                continue
            try:
                served[name] = _prepare_model(model_dir, target / name, backends)
            except (RunnerError, OSError) as exc:
                skipped.append(SkippedModel(name, model_dir, str(exc)))

    # An ensemble needs every model it runs; leaving one out leaves out the ensembles using it, transitively.
    changed = True
    while changed:
        changed = False
        for name, model in list(served.items()):
            missing = [step for step in _ensemble_steps(model) if step not in served]
            if missing:
                skipped.append(
                    SkippedModel(name, model.source, f"its ensemble step {missing[0]!r} is not served")
                )
                shutil.rmtree(target / name)
                del served[name]
                changed = True
    return ServedRepository(target, tuple(served.values()), tuple(skipped))


def refresh_served_model(
    model_dir: Path, target: Path, backends: Collection[str] = ("python",)
) -> ServedModel:
    """Prepare one model of the user's again into the served repository `target`, after versions were added to it:
    prepared afresh beside `target`, then each version directory that is new moved in, and the config.pbtxt
    replaced (an ONNX runner's is regenerated from the latest version). The version directories Triton already
    serves are left as they are, and nothing half made is ever inside `target`. RunnerError or OSError as for
    `prepare_served_repository`'s models (the served model then unchanged)."""
    name = model_dir.name
    staging = target.parent / f".{target.name}.staging" / name
    if staging.exists():
        shutil.rmtree(staging)
    staging.parent.mkdir(exist_ok=True)
    try:
        served = _prepare_model(model_dir, staging, backends)
        out = target / name
        if not out.exists():  # a new model
            staging.rename(out)
            return served
        for entry in staging.iterdir():
            placed = out / entry.name
            if entry.is_dir():
                if not placed.exists():
                    entry.rename(placed)
            else:  # a file or a link: replaced in one step
                os.replace(entry, placed)
        return served
    finally:
        shutil.rmtree(staging, ignore_errors=True)
