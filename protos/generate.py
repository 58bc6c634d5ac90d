"""Regenerate the Python code for protos/camserve/v1/*.proto into client/camserve_proto.

Why a script and not a bare protoc line: protoc writes imports as `from camserve.v1 import ...`,
which would collide with the server package `camserve`; we rewrite them to `camserve_proto`, the
package both the server and the client import.
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
IMPORT_FROM = "from camserve.v1 import"
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
        written = []
        for path in sorted(Path(raw, "camserve", "v1").iterdir()):
            text = path.read_text().replace(IMPORT_FROM, IMPORT_TO)
            dest = out_dir / path.name
            dest.write_text(text)
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
