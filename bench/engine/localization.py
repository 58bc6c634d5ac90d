"""Accuracy and localisation of each CAM method, two held-out sets: ``python -m bench.engine.localization``.

Sets (``--sets``, default both):

- ``generator``: the training generator's own held-out split (:func:`camserve.demo.digits.generate`
  with split "heldout": scikit-learn handwriting never seen in training and fresh sketches, drawn the
  way training images are);
- ``printed``: digits typeset from fonts on photographs and paper, with other clutter and JPEG
  (:mod:`camserve.demo.printed`): made differently from anything the model trained on.

For each set and method the maps of the predicted class (top-1) of N images are scored against the
true boxes: pointing game (max of the bilinearly upsampled map inside the box) and box accuracy with
the CAM paper's protocol (threshold at 20% of the max, box around the largest connected component,
IoU >= 0.5). A centre-prior row (a fixed Gaussian at the image centre) shows what a map that ignores
the image scores. Prints a table (what README quotes) and writes JSON to bench/results/.
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

from camserve.demo import MODEL_DIR, printed
from camserve.demo.digits import CANVAS, DigitsSet, generate
from camserve.demo.localization import score_maps
from camserve.demo.train import HELDOUT_SEED

SETS = ("generator", "printed")
PRIOR = "centre prior (baseline)"
METHODS = ("cam", "gradcam", "gradcam++", "layercam", "hirescam", "xgradcam", "eigencam")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "localization.json"


def centre_prior(grid: tuple[int, int]) -> np.ndarray:
    """A Gaussian bump at the centre of the grid: the score of a map that never looks at the image."""
    h, w = grid
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.exp(-(((ys - (h - 1) / 2) / (h / 4)) ** 2 + ((xs - (w - 1) / 2) / (w / 4)) ** 2) / 2)


def held_out_set(name: str, samples: int, seed: int) -> DigitsSet:
    """The ``samples`` images of set ``name`` ("generator" or "printed") for ``seed``."""
    if name == "generator":
        return generate(samples, "heldout", seed=seed)
    if name == "printed":
        return printed.generate(samples, seed=seed)
    raise ValueError(f"unknown set {name!r} (one of {', '.join(SETS)})")


def score_set(explainer, data: DigitsSet) -> dict[str, Any]:
    """Accuracy (top-1) and, per method, localisation scores of the predicted class's maps."""
    from camserve.records import ItemSpec

    rows: dict[str, dict[str, float | int]] = {}
    accuracy, per_class = None, []
    for method in METHODS:
        start = time.perf_counter()
        results = explainer.explain_batch(data.images, [ItemSpec(method=method)] * len(data))
        seconds = time.perf_counter() - start
        if accuracy is None:
            predicted = np.array([r.maps[0].class_index for r in results])
            correct = predicted == data.labels
            accuracy = float(np.mean(correct))
            per_class = [round(float(np.mean(correct[data.labels == c])), 4) for c in range(10)]
        score = score_maps([r.maps[0].heatmap for r in results], data.boxes, (CANVAS, CANVAS))
        rows[method] = {**score.as_dict(), "ms_per_image": 1000 * seconds / len(data)}
    grid = tuple(explainer.info.grid)
    prior = score_maps([centre_prior(grid)] * len(data), data.boxes, (CANVAS, CANVAS))  # type: ignore[arg-type]
    rows[PRIOR] = {**prior.as_dict(), "ms_per_image": 0.0}
    return {"images": len(data), "accuracy": accuracy, "per_class_accuracy": per_class, "methods": rows}


def run(
    model_dir: Path, sets: list[str], samples: int, seed: int, compile_mode: str, batch_size: int
) -> dict[str, Any]:
    """Score every method on ``samples`` images of each set; returns the JSON-ready report."""
    import keras
    from camserve.engine import Explainer

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
    return {
        "command": " ".join(["python -m bench.engine.localization", *sys.argv[1:]]),
        "model": str(model_dir),
        "target_layer": explainer.info.target_layer,
        "grid": list(explainer.info.grid),
        "compile_mode": explainer.info.compile_mode,
        "seed": seed,
        "class": "predicted (top-1)",
        "protocol": "pointing game: argmax of bilinear-upsampled map inside the true box; box: pixels >= 20% "
        "of max, largest 8-connected component, IoU >= 0.5",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "sets": {name: score_set(explainer, held_out_set(name, samples, seed)) for name in sets},
    }


def table(report: dict[str, Any]) -> str:
    """Markdown table of the report, one column pair per set (what README quotes)."""
    sets = report["sets"]
    head = "| method |" + "".join(f" {n}: pointing game | {n}: box accuracy |" for n in sets)
    lines = [head, "|---|" + "---:|---:|" * len(sets)]
    lines.append("| accuracy (top-1) |" + "".join(f" {100 * s['accuracy']:.1f}% | |" for s in sets.values()))
    for method in next(iter(sets.values()))["methods"]:
        rows = [s["methods"][method] for s in sets.values()]
        cells = "".join(f" {100 * r['pointing_game']:.1f}% | {100 * r['box_accuracy']:.1f}% |" for r in rows)
        lines.append(f"| {method} |{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine.localization", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR, help="model folder with config.json")
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--samples", type=int, default=1000, help="images per set (default 1000)")
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED, help="seed of both sets")
    parser.add_argument("--compile-mode", default="auto", choices=("auto", "graph", "xla"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    parser.add_argument(
        "--quick", action="store_true", help="64 images a set: checks the script, not the figures"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.samples = 64
    if args.samples < 1 or args.batch_size < 1:
        parser.error("--samples and --batch-size must be positive")
    sets = [name.strip() for name in args.sets.split(",") if name.strip()]
    if not sets or any(name not in SETS for name in sets):
        parser.error(f"--sets takes a comma-separated list of {', '.join(SETS)}")
    report = run(args.model_dir, sets, args.samples, args.seed, args.compile_mode, args.batch_size)
    print(
        f"{args.samples} images per set, seed {args.seed}, target {report['target_layer']} "
        f"{report['grid']}, {report['compile_mode']} mode"
    )
    for name, result in report["sets"].items():
        print(
            f"{name}: accuracy per class 0..9: "
            + " ".join(f"{100 * a:.0f}%" for a in result["per_class_accuracy"])
        )
    print(table(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
