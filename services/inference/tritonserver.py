"""How to launch the tritonserver bundled in the nvidia-pytriton wheel, without PyTriton's own runtime.

The wheel ships a real Triton with its python backend, but not laid out the way Triton looks for backends: the
stub for each Python version sits apart from the backend library. prepare_backend_dir() assembles a backend
directory from symlinks, and triton_command() gives the argv and environment to run it. Starting, watching and
stopping the process is the supervisor's job.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

__all__ = ["BundledTriton", "find_bundled_triton", "prepare_backend_dir", "triton_command", "triton_tls_args"]

BIND_ADDRESS = "127.0.0.1"  # the inference service is Triton's only client; never expose it further


@dataclass(frozen=True)
class BundledTriton:
    binary: Path  # bin/tritonserver
    python_backend_lib: Path  # backends/python/libtriton_python.so
    python_backend_utils: Path  # backends/python/triton_python_backend_utils.py
    python_stub: Path  # python_backend_stubs/<major.minor>/triton_python_backend_stub, for this interpreter
    libs_dir: Path  # nvidia_pytriton.libs: the shared libraries the wheel vendors
    cache_dir: Path  # caches/, holding local/libtritoncache_local.so (for --cache-directory)


def find_bundled_triton() -> BundledTriton:
    """Locate the wheel's Triton files; raise FileNotFoundError naming whatever is missing."""
    spec = find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nvidia-pytriton is not installed in this environment")
    package = Path(next(iter(spec.submodule_search_locations)))
    server = package / "tritonserver"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    triton = BundledTriton(
        binary=server / "bin" / "tritonserver",
        python_backend_lib=server / "backends" / "python" / "libtriton_python.so",
        python_backend_utils=server / "backends" / "python" / "triton_python_backend_utils.py",
        python_stub=server / "python_backend_stubs" / python / "triton_python_backend_stub",
        libs_dir=package.parent / "nvidia_pytriton.libs",
        cache_dir=server / "caches",
    )
    missing = [str(p) for p in vars(triton).values() if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"bundled Triton incomplete for Python {python}: missing {', '.join(missing)}"
        )
    return triton


def prepare_backend_dir(cache_root: Path) -> Path:
    """Link the bundled python backend into `<cache_root>/backends/python/`; return `<cache_root>/backends`.

    Idempotent, and safe when several processes race: each link is replaced atomically if it points elsewhere.
    """
    triton = find_bundled_triton()
    backends = Path(cache_root) / "backends"
    python = backends / "python"
    python.mkdir(parents=True, exist_ok=True)
    for target in (triton.python_backend_lib, triton.python_backend_utils, triton.python_stub):
        link = python / target.name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        staging = python / f".{target.name}.{os.getpid()}"
        staging.unlink(missing_ok=True)
        staging.symlink_to(target)
        os.replace(staging, link)
    return backends


def _library_path(triton: BundledTriton) -> str:
    parts = [str(triton.libs_dir)]
    # The stub embeds libpython; prefer this interpreter's own over whatever the loader would find first.
    libdir, ldlibrary = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlibrary and ldlibrary.endswith(".so") and (Path(libdir) / ldlibrary).exists():
        parts.append(libdir)
    if os.environ.get("LD_LIBRARY_PATH"):
        parts.append(os.environ["LD_LIBRARY_PATH"])
    return os.pathsep.join(parts)


def _search_path() -> str:
    # The stub starts its embedded Python isolated (PYTHONPATH and friends are ignored) and derives sys.prefix
    # from the first `python3` on PATH. Putting this interpreter's bin/ first makes a venv's site-packages
    # (numpy, onnxruntime) importable from model.py.
    parts = [str(Path(sys.executable).parent)]
    if os.environ.get("PATH"):
        parts.append(os.environ["PATH"])
    return os.pathsep.join(parts)


def triton_command(
    model_repositories: list[Path],
    grpc_port: int,
    http_port: int,
    metrics_port: int,
    backend_dir: Path,
    extra_args: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """Return the argv that starts the bundled Triton and the variables to add to its environment.

    `extra_args` come last; a default flag is dropped when `extra_args` sets it too
    (e.g. `--model-control-mode=none`).
    """
    triton = find_bundled_triton()
    defaults = {
        "--backend-directory": str(backend_dir),
        "--cache-directory": str(triton.cache_dir),
        "--grpc-address": BIND_ADDRESS,
        "--grpc-port": str(grpc_port),
        "--http-address": BIND_ADDRESS,
        "--http-port": str(http_port),
        "--metrics-address": BIND_ADDRESS,
        "--metrics-port": str(metrics_port),
        # explicit + load everything: starts like "none", and lets blue-green switches load and unload versions
        "--model-control-mode": "explicit",
        "--load-model": "*",
        "--log-verbose": "0",
        "--strict-readiness": "true",
        "--exit-on-error": "true",
    }
    overridden = {arg.split("=", 1)[0] for arg in extra_args if arg.startswith("--")}
    argv = [str(triton.binary)]
    argv += [f"--model-repository={Path(repo)}" for repo in model_repositories]
    argv += [f"{flag}={value}" for flag, value in defaults.items() if flag not in overridden]
    argv += list(extra_args)
    env = {"LD_LIBRARY_PATH": _library_path(triton), "PATH": _search_path()}
    return argv, env


def triton_tls_args(cert: Path, key: Path, ca: Path) -> list[str]:
    """Triton's gRPC port with mutual TLS: its certificate and key, and the CA client certificates must chain to
    (only the inference service, and the mesh's own health checks, hold one). Triton's HTTP API cannot serve TLS,
    so it is off: plaintext inference beside an mTLS port would make the mTLS pointless. Metrics stay on."""
    return [
        "--allow-http=false",
        "--grpc-use-ssl=true",
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={cert}",
        f"--grpc-server-key={key}",
        f"--grpc-root-cert={ca}",
    ]
