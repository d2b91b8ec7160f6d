"""Generate the Python code for protos/ (run `python -m meshserve.protogen`, or `make gen`).

Our protos import Open Inference Protocol messages from "grpc_service.proto". Rather than copy Triton's .proto
files, the import is resolved from the descriptors tritonclient ships, and the generated imports are pointed at
tritonclient's modules.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
_TRITON_IMPORTS = {
    "import grpc_service_pb2 as grpc__service__pb2": "from tritonclient.grpc import service_pb2 as grpc__service__pb2",
    "import model_config_pb2 as model__config__pb2": "from tritonclient.grpc import model_config_pb2 as model__config__pb2",
}

# Packages whose __init__.py is ours: a contract's home holds its generated v1/ beside hand-written modules.
_HAND_WRITTEN_PACKAGES = {".", "meshserve", "meshserve/feature", "meshserve/inference"}


def _triton_descriptor_set(path: Path) -> None:
    from tritonclient.grpc import model_config_pb2, service_pb2

    files = descriptor_pb2.FileDescriptorSet()
    for module in (model_config_pb2, service_pb2):
        module.DESCRIPTOR.CopyToProto(files.file.add())
    path.write_bytes(files.SerializeToString())


def proto_sources() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate_files() -> dict[str, str]:
    """Generated *_pb2.py, *_pb2.pyi, *_pb2_grpc.py and package __init__.py files, by path relative to the root."""
    import grpc_tools
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        triton_set = Path(tmp) / "triton.pb"
        _triton_descriptor_set(triton_set)
        well_known = Path(grpc_tools.__file__).parent / "_proto"
        args = [
            "protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--proto_path={well_known}",
            f"--descriptor_set_in={triton_set}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *(str(p.relative_to(PROTO_ROOT)) for p in proto_sources()),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed; see its message above")
        files: dict[str, str] = {}
        for path in sorted(out.rglob("*.py*")):
            text = path.read_text()
            for ours, theirs in _TRITON_IMPORTS.items():
                text = text.replace(ours, theirs)
            files[str(path.relative_to(out))] = text
    for name in list(files):
        for package in Path(name).parents:
            if str(package) not in _HAND_WRITTEN_PACKAGES:
                files.setdefault(str(package / "__init__.py"), "")
    return files


def generate(out_dir: Path) -> list[Path]:
    written = []
    for name, text in generate_files().items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out), file=sys.stderr)


if __name__ == "__main__":
    main()
