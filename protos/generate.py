"""Regenerate the Python code for every protos/**/*.proto into client/camserve_proto.

Two packages live under protos/: `camserve.v1` (protos/camserve/v1, camserve's own contract) and
`inference` (protos/inference/v2, the Open Inference Protocol). Why a script and not a bare protoc
line: protoc writes imports as `from camserve.v1 import ...` (or `from inference.v2 import ...`),
which would collide with the server package `camserve`; we rewrite every such import to
`camserve_proto`, the one flat package both the server and the client import (so generated module
names must be unique across the .proto folders).
`--check` regenerates into a temporary folder and fails when the committed code has drifted.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
TARGET = ROOT / "client" / "camserve_proto"
IMPORT_TO = "from camserve_proto import"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc for every .proto and write rewritten modules into out_dir."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as raw:
        include = str(Path(protoc.__file__).parent / "_proto")
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={raw}", f"--pyi_out={raw}",
                f"--grpc_python_out={raw}", *protos]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written: list[Path] = []
        for folder in sorted({Path(raw, p).parent for p in protos}):
            package = ".".join(folder.relative_to(raw).parts)  # e.g. camserve.v1, inference.v2
            for path in sorted(folder.iterdir()):
                dest = out_dir / path.name
                if dest in written:
                    raise SystemExit(f"two .proto folders generate {path.name}; rename one .proto file")
                dest.write_text(path.read_text().replace(f"from {package} import", IMPORT_TO))
                written.append(dest)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed code differs")
    args = parser.parse_args()
    if not args.check:
        for path in generate(TARGET):
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        drifted = [p.name for p in fresh if not (TARGET / p.name).exists()
                   or not filecmp.cmp(p, TARGET / p.name, shallow=False)]
    if drifted:
        print(f"generated code is stale: {drifted}; run `make protos`", file=sys.stderr)
        return 1
    print("generated code matches the .proto files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
