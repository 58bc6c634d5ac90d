"""`python -m bench.baseline --model-dir DIR [--concurrency 1,4]`: the tf-keras-vis loop on its own."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from camserve_client.tools.loadreport import format_table, step_problems
from camserve_client.tools.testimages import generated

from bench import finish
from bench.baseline.tfkv import TfKerasVisBaseline


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    p.add_argument("--model-dir", required=True, type=Path, help="a camserve repository model folder")
    p.add_argument("--target-layer", help="default: the last layer with a 4-D output")
    p.add_argument("--concurrency", default="1", help="comma-separated thread counts (default 1)")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--images", default="auto", help="auto | digits | photos | noise")
    p.add_argument("--image-count", type=int, default=16)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if not (args.model_dir / "config.json").is_file():
        print(f"no config.json in {args.model_dir}", file=sys.stderr)
        return 2
    base = TfKerasVisBaseline(args.model_dir, args.target_layer)
    size = int(base.cfg["input_shape"][0])
    images, source = generated(args.image_count, size, args.images)
    steps = [base.run(images, int(c), args.duration, args.warmup) for c in args.concurrency.split(",")]
    print(f"tf-keras-vis Gradcam per request, {base.cfg.get('name')} layer {base.target_layer}, "
          f"{len(images)} {source} images {size}x{size}")
    print(format_table(steps, "tfkv"))
    return finish("bench.baseline", Path(args.json) if args.json else None, {"baseline": steps},
                  step_problems(steps, "tf-keras-vis"))


if __name__ == "__main__":
    sys.exit(main())
