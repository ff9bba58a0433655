"""Regenerate the Python code for the ``.proto`` files in this folder.

    python protos/generate.py            # rewrite protos/*_pb2*.py(i) in place
    python protos/generate.py --check    # exit 1 if the checked-in files are stale

Needs the dev extra (``pip install -e '.[dev]'``, which brings grpcio-tools); the
installed package needs only protobuf and grpcio at run time, because the generated
files are checked in.

Why a script rather than a bare ``protoc`` call: this folder installs as
``privfl.protos`` (pyproject's package-dir), but protoc derives import lines from the
path it is given.  Run on ``protos/ledger.proto`` it would write
``import ledger_pb2`` into ``ledger_pb2_grpc.py``, which fails once installed, and it
would register the file in protobuf's process-wide descriptor pool under the generic
name ``ledger.proto``.  So the script stages each ``.proto`` at
``privfl/protos/<name>.proto`` in a temporary folder and compiles it from there: the
import becomes ``from privfl.protos import ledger_pb2`` and the descriptor is named
``privfl/protos/ledger.proto``.  It then checks that the import line came out that
way (a different grpcio-tools could change it) and copies the results here.
The output depends only on the .proto files and the grpcio-tools version, so a
rerun with the same version gives byte-identical files (tests/test_ledger_service.py).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "privfl.protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(HERE.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto here into ``out_dir``; return the files written."""
    from grpc_tools import protoc  # dev dependency: imported only when generating

    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        staged_pkg = Path(tmp, *PACKAGE.split("."))
        staged_pkg.mkdir(parents=True)
        for proto in proto_files():
            shutil.copyfile(proto, staged_pkg / proto.name)
        args = [
            "grpc_tools.protoc",
            f"-I{tmp}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str((staged_pkg / p.name).relative_to(tmp)) for p in proto_files()),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see its message above")
        out_dir.mkdir(parents=True, exist_ok=True)
        for proto in proto_files():
            stem = proto.stem
            grpc_file = staged_pkg / f"{stem}_pb2_grpc.py"
            _check_import(grpc_file, stem)
            for suffix in GENERATED_SUFFIXES:
                produced = staged_pkg / f"{stem}{suffix}"
                if produced.exists():
                    target = out_dir / produced.name
                    shutil.copyfile(produced, target)
                    written.append(target)
    return written


def _check_import(grpc_file: Path, stem: str) -> None:
    if not grpc_file.exists():
        return  # a .proto without services
    text = grpc_file.read_text()
    if re.search(rf"^import {stem}_pb2\b", text, re.MULTILINE):
        raise SystemExit(f"{grpc_file.name}: protoc wrote a top-level 'import {stem}_pb2'")
    if f"from {PACKAGE} import {stem}_pb2 as " not in text:
        raise SystemExit(
            f"{grpc_file.name}: expected 'from {PACKAGE} import {stem}_pb2 as ...'; "
            "the grpcio-tools version may have changed how it writes imports"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare freshly generated code with the checked-in files; exit 1 if they differ")
    args = parser.parse_args(argv)
    if not args.check:
        for path in generate(HERE):
            print(f"wrote {path.relative_to(HERE.parent)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [p.name for p in generate(Path(tmp))
                 if not (HERE / p.name).exists() or (HERE / p.name).read_bytes() != p.read_bytes()]
    if stale:
        print(f"stale generated files: {', '.join(stale)}; run python protos/generate.py", file=sys.stderr)
        return 1
    print("generated files are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
