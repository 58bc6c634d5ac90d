"""Grad-CAM throughput vs plain forward throughput, side by side in one run.

For each model (VGG16, ResNet50, MobileNetV2 at 224x224 with ``weights=None``: speed does not depend
on weights; ViT-S16, a ViT-Small/16 built from keras-hub's classes with random weights, explained on
its patch-token grid; plus the bundled demo model when it exists), each compile mode (xla, graph)
and each batch size (1, 8, 32): images/s of

- ``forward``: ``model(x, training=False)`` in one ``tf.function`` compiled the same way (same
  uint8 input and in-step preprocessing);
- ``step``: the engine's compiled Grad-CAM step alone (forward + gradients to the target layer);
- ``gradcam``: the whole ``Explainer.explain_batch`` (step + NumPy weighting + normalisation),

and the ratio gradcam / forward. Timings alternate forward and Grad-CAM call by call so that both
see the same machine state; the median of the per-call times is used. Prints a table and writes
JSON to bench/results/engine[_quick].json.

    python -m bench.engine            # the full run (slow on CPUs: minutes per model)
    python -m bench.engine --quick    # a fast check: MobileNetV2 at 96x96 and the demo model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results"
DEMO = Path(__file__).resolve().parents[2] / "server" / "camserve" / "demo" / "repository" / "demo"
APPS = {
    "VGG16": ("VGG16", "caffe"),
    "ResNet50": ("ResNet50", "caffe"),
    "MobileNetV2": ("MobileNetV2", "tf"),
}


#: Transformers: (hidden size, layers, heads, MLP size), patch 16 (Dosovitskiy et al. 2021, table 1;
#: Small as in DeiT-S). Built from keras-hub's classes, random weights, nothing downloaded.
TRANSFORMERS = {"ViT-S16": (384, 12, 6, 1536)}


def _vit(name: str, size: int) -> Any:
    import keras_hub

    hidden, layers, heads, mlp = TRANSFORMERS[name]
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3), patch_size=16, num_layers=layers, num_heads=heads, hidden_dim=hidden,
        mlp_dim=mlp,
    )
    return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=1000, preprocessor=None)


def load_model(name: str, size: int) -> tuple[Any, str, str | None, tuple[int, int, int]]:
    """(model, preprocessing, target layer or None, input shape) for a benchmark model name."""
    import keras

    if name in TRANSFORMERS:
        return _vit(name, size), "tf", None, (size, size, 3)
    if name == "demo":
        cfg = json.loads((DEMO / "config.json").read_text())
        model = keras.saving.load_model(DEMO / cfg.get("model_file", "model.keras"), compile=False)
        return model, cfg.get("preprocessing", "tf"), cfg.get("target_layer"), tuple(cfg["input_shape"])
    app, prep = APPS[name]
    model = getattr(keras.applications, app)(weights=None, input_shape=(size, size, 3))
    return model, prep, None, (size, size, 3)


def _time(fn: Any, arg: Any) -> float:
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


def bench_cell(
    model: Any,
    prep: str,
    target: str | None,
    shape: tuple,
    mode: str,
    batch: int,
    budget_s: float,
    min_iters: int,
) -> dict[str, Any]:
    """Compile forward and Grad-CAM for one (model, mode, batch) and time them interleaved."""
    from camserve.engine import Explainer
    from camserve.engine.backend_tf import build_forward
    from camserve.engine.methods import CODES
    from camserve.records import ItemSpec

    explainer = Explainer(model, target, preprocessing=prep, compile_mode=mode, max_batch_size=batch)
    forward = build_forward(explainer.graph, preprocessing=prep, jit_compile=mode == "xla")
    images = np.random.default_rng(0).integers(0, 256, (batch, *shape), dtype=np.uint8)
    specs = [ItemSpec("gradcam")] * batch
    targets = np.full((batch, 1), -1, np.int32)
    codes = np.full(batch, CODES["gradcam"], np.int32)

    def gradcam(x: np.ndarray) -> None:
        explainer.explain_batch(x, specs)

    def step(x: np.ndarray) -> None:
        explainer.step(x, targets, codes)

    t0 = time.perf_counter()
    forward(images)
    explainer.step(images, targets, codes)
    compile_s = time.perf_counter() - t0
    first = _time(forward, images) + _time(gradcam, images) + _time(step, images)
    iters = max(min_iters, int(budget_s / max(first, 1e-6)))
    times: dict[str, list[float]] = {"forward": [], "gradcam": [], "step": []}
    for _ in range(iters):  # interleaved: the three see the same machine state
        times["forward"].append(_time(forward, images))
        times["gradcam"].append(_time(gradcam, images))
        times["step"].append(_time(step, images))
    ips = {k: batch / statistics.median(v) for k, v in times.items()}
    return {
        "target_layer": explainer.info.target_layer,
        "iterations": iters,
        "compile_s": round(compile_s, 2),
        "forward_ips": round(ips["forward"], 2),
        "step_ips": round(ips["step"], 2),
        "gradcam_ips": round(ips["gradcam"], 2),
        "ratio": round(ips["gradcam"] / ips["forward"], 3),
        "step_ratio": round(ips["step"] / ips["forward"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fast check: MobileNetV2 at 96x96 + demo, batch 1/4"
    )
    parser.add_argument(
        "--models", default=None, help="comma list of VGG16,ResNet50,MobileNetV2,ViT-S16,demo"
    )
    parser.add_argument("--batches", default=None, help="comma list of batch sizes (default 1,8,32)")
    parser.add_argument(
        "--modes", default="graph,xla", help="comma list of compile modes (default graph,xla)"
    )
    parser.add_argument("--size", type=int, default=None, help="input size of the applications (default 224)")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timing per cell (default 20)")
    parser.add_argument("--out", default=None, help="JSON output path")
    args = parser.parse_args(argv)

    quick = args.quick
    default = "MobileNetV2,demo" if quick else "VGG16,ResNet50,MobileNetV2,ViT-S16,demo"
    models = (args.models or default).split(",")
    batches = [int(b) for b in (args.batches or ("1,4" if quick else "1,8,32")).split(",")]
    modes = args.modes.split(",")
    size = args.size or (96 if quick else 224)
    budget = args.budget if args.budget is not None else (1.0 if quick else 20.0)
    min_iters = 2 if quick else 5
    out = Path(args.out) if args.out else RESULTS / ("engine_quick.json" if quick else "engine.json")

    import tensorflow as tf

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    header = f"{'model':<12} {'mode':<5} {'batch':>5} {'forward/s':>10} {'step/s':>9} "
    header += f"{'gradcam/s':>10} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for name in models:
        if name == "demo" and not (DEMO / "config.json").exists():
            notes.append(f"demo model skipped: {DEMO} does not exist yet")
            print(f"# {notes[-1]}", file=sys.stderr)
            continue
        model, prep, target, shape = load_model(name, size)
        for mode in modes:
            for batch in batches:
                r = bench_cell(model, prep, target, shape, mode, batch, budget, min_iters)
                row = {"model": name, "input": list(shape), "mode": mode, "batch": batch, **r}
                rows.append(row)
                print(
                    f"{name:<12} {mode:<5} {batch:>5} {r['forward_ips']:>10.2f} {r['step_ips']:>9.2f} "
                    f"{r['gradcam_ips']:>10.2f} {r['ratio']:>6.3f}",
                    flush=True,
                )
        del model
    report = {
        "command": "python -m bench.engine" + (" --quick" if quick else ""),
        "quick": quick,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "tensorflow": tf.__version__,
        },
        "notes": notes,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
