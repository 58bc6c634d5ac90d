"""Sweep (a script, not a CI test): every ``keras.applications`` member with random weights at a small
input (64, or the member's minimum), explained with the default target.

For each: the automatic target and its grid, the head, every method of the vocabulary on a batch of
two (finite; all-zero everywhere noted; CAM refused where the head is not GAP -> Dense), and Grad-CAM
of the two best classes against ``zoo_models.functional_reference`` in float64. One line per member;
"FAULT" marks anything to look at. The slowest members run last.

    PYTHONPATH=server:client:tests python tests/engine/sweep_applications.py [Member ...]
"""

from __future__ import annotations

import gc
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from camserve.engine import Explainer
from camserve.records import ItemSpec
from camserve.vocabulary import METHODS

from engine import zoo_models as zoo
from engine.sweep_report import reference_check, verdict

SIZES = {"InceptionV3": 139, "InceptionResNetV2": 139, "Xception": 71}
SLOW = ["ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtXLarge", "EfficientNetB5", "EfficientNetB6",
        "EfficientNetB7", "EfficientNetV2M", "EfficientNetV2L", "NASNetLarge", "ResNet152", "ResNet152V2",
        "ResNet101", "ResNet101V2", "DenseNet201", "InceptionResNetV2"]


def sweep(name: str) -> str:
    size = SIZES.get(name, 64)
    keras.backend.clear_session()
    gc.collect()
    try:
        keras.utils.set_random_seed(11)
        model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=3)
        e = Explainer(model, preprocessing="none", max_batch_size=2)
        info = e.info
        x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
        notes = [f"{size}px target={info.target_layer} grid={info.grid} head={info.head_kind}/{info.score}"]
        bad = []
        for method in METHODS:
            try:
                res = e.explain_batch(x, [ItemSpec(method, top_k=2)] * 2)
            except Exception as exc:
                if method == "cam" and type(exc).__name__ == "CamNotSupportedError":
                    notes.append("cam refused")
                else:
                    bad.append(f"{method}: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            maps = [m for r in res for m in r.maps]
            if not all(np.isfinite(m.heatmap).all() and m.heatmap.shape == info.grid for m in maps):
                bad.append(f"{method}: NaN or wrong shape")
            elif all(m.all_zero for m in maps):
                notes.append(f"{method} all-zero")
        res = e.explain_batch(x, [ItemSpec("gradcam", top_k=2)] * 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a, g = zoo.functional_reference(model, x, info.target_layer)
        want = zoo.reference_gradcam(a, g, prefix=info.prefix_tokens)
        reference_check(res, want, bad, notes)
        if info.grid[0] * info.grid[1] <= 1:
            bad.append("1x1 target")
        return verdict(bad, notes)
    except Exception as exc:
        return f"FAULT {type(exc).__name__}: {str(exc)[:300]}"


def main(names: list[str]) -> None:
    members = [n for n in dir(keras.applications) if n[:1].isupper()]
    members = [n for n in members if n not in SLOW] + [n for n in SLOW if n in members]
    for name in names or members:
        t0 = time.perf_counter()
        line = sweep(name)
        print(f"{name:20s} {time.perf_counter() - t0:4.0f}s {line}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
