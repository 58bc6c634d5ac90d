"""Localisation report of every CAM method on the held-out demo set: ``python -m bench.engine.localization``.

For each method the maps of the predicted class (top-1) of N held-out cluttered-digits images are
scored against the generator's true boxes: pointing game (max of the bilinearly upsampled map inside
the box) and box accuracy with the CAM paper's protocol (threshold at 20% of the max, box around the
largest connected component, IoU >= 0.5). A centre-prior row (a fixed Gaussian at the image centre)
shows what a map that ignores the image scores. Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from camserve.demo import MODEL_DIR
from camserve.demo.digits import CANVAS, generate
from camserve.demo.localization import score_maps
from camserve.demo.train import HELDOUT_SEED

METHODS = ("cam", "gradcam", "gradcam++", "layercam", "hirescam", "xgradcam", "eigencam")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "localization.json"


def centre_prior(grid: tuple[int, int]) -> np.ndarray:
    """A Gaussian bump at the centre of the grid: the score of a map that never looks at the image."""
    h, w = grid
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.exp(-(((ys - (h - 1) / 2) / (h / 4)) ** 2 + ((xs - (w - 1) / 2) / (w / 4)) ** 2) / 2)


def run(model_dir: Path, samples: int, seed: int, compile_mode: str, batch_size: int) -> dict[str, Any]:
    """Score every method on ``samples`` held-out images; returns the JSON-ready report."""
    import keras
    from camserve.engine import Explainer
    from camserve.records import ItemSpec

    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise SystemExit(f"error: no config.json in {model_dir} (train with python -m camserve.demo.train)")
    config = json.loads(config_path.read_text())
    model = keras.models.load_model(model_dir / config["model_file"], compile=False)
    explainer = Explainer(
        model,
        target_layer=config.get("target_layer"),
        preprocessing=config.get("preprocessing", "tf"),
        compile_mode=compile_mode,
        max_batch_size=batch_size,
        score=config.get("score", "logits"),
    )
    explainer.warmup()
    data = generate(samples, "heldout", seed=seed)
    rows: dict[str, dict[str, float | int]] = {}
    accuracy = None
    for method in METHODS:
        start = time.perf_counter()
        results = explainer.explain_batch(data.images, [ItemSpec(method=method)] * samples)
        seconds = time.perf_counter() - start
        if accuracy is None:
            predicted = np.array([r.maps[0].class_index for r in results])
            accuracy = float(np.mean(predicted == data.labels))
        score = score_maps([r.maps[0].heatmap for r in results], data.boxes, (CANVAS, CANVAS))
        rows[method] = {**score.as_dict(), "ms_per_image": 1000 * seconds / samples}
    grid = tuple(explainer.info.grid)
    prior = score_maps([centre_prior(grid)] * samples, data.boxes, (CANVAS, CANVAS))  # type: ignore[arg-type]
    rows["centre prior (baseline)"] = {**prior.as_dict(), "ms_per_image": 0.0}
    return {
        "command": " ".join(["python -m bench.engine.localization", *sys.argv[1:]]),
        "model": str(model_dir),
        "target_layer": explainer.info.target_layer,
        "grid": list(grid),
        "compile_mode": explainer.info.compile_mode,
        "images": samples,
        "seed": seed,
        "held_out_accuracy": accuracy,
        "class": "predicted (top-1)",
        "protocol": "pointing game: argmax of bilinear-upsampled map inside the true box; box: pixels >= 20% "
        "of max, largest 8-connected component, IoU >= 0.5",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "methods": rows,
    }


def table(report: dict[str, Any]) -> str:
    """Markdown table of the report (what README quotes)."""
    lines = [
        "| method | pointing game | box accuracy (IoU >= 0.5) | mean IoU | all-zero maps | ms/image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["methods"].items():
        lines.append(
            f"| {name} | {100 * r['pointing_game']:.1f}% | {100 * r['box_accuracy']:.1f}% | "
            f"{r['mean_iou']:.3f} | {r['all_zero']} | {r['ms_per_image']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine.localization", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR, help="model folder with config.json")
    parser.add_argument("--samples", type=int, default=1000, help="held-out images (default 1000)")
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED, help="held-out set seed")
    parser.add_argument("--compile-mode", default="auto", choices=("auto", "graph", "xla"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    parser.add_argument("--quick", action="store_true", help="64 images: checks the script, not the figures")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples = 64
    if args.samples < 1 or args.batch_size < 1:
        parser.error("--samples and --batch-size must be positive")
    report = run(args.model_dir, args.samples, args.seed, args.compile_mode, args.batch_size)
    print(
        f"{report['images']} held-out images, accuracy {100 * report['held_out_accuracy']:.1f}%, "
        f"target {report['target_layer']} {report['grid']}, {report['compile_mode']} mode"
    )
    print(table(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
