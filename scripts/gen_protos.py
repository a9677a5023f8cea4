"""Regenerates the Python stubs (messages, aio service stubs and their .pyi types) from protos/,
and copies the .proto files beside them.

Usage: python scripts/gen_protos.py [--out DIR]   (default: resinkit_grpc/gen)

The test suite runs this into a temporary directory and fails when the committed stubs differ.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
# mypy-protobuf's plugins are installed beside the interpreter running this script.
BIN = Path(sys.executable).parent
DEFAULT_OUT = ROOT / "resinkit_grpc" / "gen"
# protoc writes imports relative to the proto root ("from resinkit.v1 import ..."); the stubs
# live inside our package, so those imports are rewritten to absolute package imports.
IMPORT_PREFIX = "resinkit_grpc.gen."


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out=async_only:{tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
        if out.exists():
            shutil.rmtree(out)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_dir():
                continue
            target = out / path.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            text = re.sub(
                r"^(\s*)(from|import) resinkit\.",
                rf"\1\2 {IMPORT_PREFIX}resinkit.",
                path.read_text(),
                flags=re.MULTILINE,
            )
            target.write_text(text)
    # The contract ships beside its stubs, so that other services that install the package can
    # compile it for their own language (importlib.resources finds it).
    for proto in sorted(PROTO_ROOT.rglob("*.proto")):
        target = out / proto.relative_to(PROTO_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(proto, target)
    for package in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (package / "__init__.py").touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
