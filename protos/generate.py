"""Generate the Python protobuf/gRPC code of protos/act/v1 into services/act/v1.

Usage: ``python protos/generate.py [--out DIR]`` (default ``services/``). The generated code
is committed; tests/unit/test_protos.py fails when it is stale, so run this after editing
any .proto file. The result depends on the grpcio-tools version (pinned in pyproject.toml).
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
DEFAULT_OUT = REPO_ROOT / "services"
# Sub-path of the generated package under both the proto root and the output dir.
PACKAGE_PATH = Path("act") / "v1"
# Suffixes of the files protoc writes for one `name.proto`.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
INIT_TEXT = '"""Generated code: made from protos/act/v1 by protos/generate.py; do not edit."""\n'


def proto_files() -> list[Path]:
    """The .proto files of the package, sorted so protoc's inputs are stable."""
    return sorted((PROTO_ROOT / PACKAGE_PATH).glob("*.proto"))


def generated_names(protos: list[Path]) -> set[str]:
    """File names protoc writes for the given protos (without __init__.py)."""
    return {p.stem + suffix for p in protos for suffix in GENERATED_SUFFIXES}


def _well_known_include() -> Path:
    # grpc_tools ships google/protobuf/*.proto (timestamp, duration, ...) in its _proto dir.
    return Path(str(importlib.resources.files("grpc_tools") / "_proto"))


def generate(out_dir: Path = DEFAULT_OUT) -> list[Path]:
    """Run protoc on protos/act/v1 into ``out_dir``; return the files of out_dir/act/v1.

    Generated files of protos that no longer exist are removed first, so a deleted proto
    does not leave stale modules behind.
    """
    from grpc_tools import protoc  # imported here: only needed when generating

    protos = proto_files()
    if not protos:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT / PACKAGE_PATH}")
    package_dir = out_dir / PACKAGE_PATH
    package_dir.mkdir(parents=True, exist_ok=True)

    expected = generated_names(protos)
    for path in package_dir.iterdir():
        if path.name.endswith(GENERATED_SUFFIXES) and path.name not in expected:
            path.unlink()

    args = [
        "grpc_tools.protoc",  # argv[0], ignored by protoc
        f"-I{PROTO_ROOT}",
        f"-I{_well_known_include()}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p) for p in protos),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")

    (package_dir / "__init__.py").write_text(INIT_TEXT, encoding="utf-8")
    return sorted(package_dir / name for name in [*expected, "__init__.py"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output root; the modules land in OUT/act/v1 (default: services/)",
    )
    ns = parser.parse_args(argv)
    for path in generate(ns.out.resolve()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
