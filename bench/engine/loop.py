"""What a library user's loop costs: a new ``GradCAM`` per image against one instance reused.

``python -m bench.engine.loop [--images N]`` loads the bundled demo model (64x64, its repository's
target layer and preprocessing) and explains N uint8 images one at a time, three ways, printing this
process's CPU time per image (median over the images after the first) and the traces each way made:

- ``new instance per image``: ``GradCAM(model, layer, ...).compute_heatmap(x)`` inside the loop, as
  the Keras example and pytorch-grad-cam users write it;
- ``same, nothing shared``: the same loop with what earlier instances kept on the model dropped
  before each one is built (what every new instance cost before instances shared steps);
- ``one instance reused``: ``cam.compute_heatmap(x)`` on one instance built before the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEMO = Path(__file__).resolve().parents[2] / "server" / "camserve" / "demo" / "repository" / "demo"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="4 images (checks the script)")
    args = p.parse_args()
    n = 4 if args.quick else args.images

    import numpy as np
    from camserve import GradCAM
    from camserve.engine import load_model
    from camserve.engine.api import _SHARED

    cfg = json.loads((DEMO / "config.json").read_text())
    model = load_model(DEMO / cfg["model_file"])
    kw = {"target_layer": cfg["target_layer"], "preprocessing": cfg["preprocessing"]}
    h, w, c = model.input_shape[1:]
    images = np.random.default_rng(0).integers(0, 256, (n, h, w, c), dtype=np.uint8)

    def per_image(explain) -> list[float]:
        out = []
        for x in images:
            t = time.process_time()
            explain(x)
            out.append((time.process_time() - t) * 1e3)
        return out[1:]

    def unshared(cls, **kw):  # drops what earlier instances left on the model, then builds one
        model.__dict__.pop(_SHARED, None)
        return cls(model, **kw)

    cam = GradCAM(model, **kw)
    cases = {
        "new instance per image": lambda x: GradCAM(model, **kw).compute_heatmap(x),
        "same, nothing shared": lambda x: unshared(GradCAM, **kw).compute_heatmap(x),
        "one instance reused": cam.compute_heatmap,
    }
    print(f"demo model {h}x{w}, {n} images one at a time: CPU ms per image (median after the first)")
    for name, explain in cases.items():
        print(f"  {name:24s} {statistics.median(per_image(explain)):8.1f}")


if __name__ == "__main__":
    main()
