"""Sweep (a script, not a CI test): every keras-hub image classifier in ``hub_zoo.HUB``, without and
with its own preprocessor, explained as a user would with the README's API and default target.

For each: ``GradCAM(model).compute_heatmap`` on one uint8 (H, W, 3) image and ``compute_heatmaps`` on
a batch of two; every method of ``camserve.engine`` (``explain``, top 2) checked finite and not
all-zero everywhere; Grad-CAM's top-3 maps against ``hub_zoo.hub_reference`` in float64
(``zoo_models.reference_gradcam``). One line per task; "FAULT" marks anything to look at.

    PYTHONPATH=server:client:tests python tests/engine/sweep_keras_hub.py [name ...]
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from camserve.engine import api
from camserve.records import ItemSpec

from engine import hub_zoo
from engine import zoo_models as zoo
from engine.sweep_report import reference_check, verdict

CLASSES = {
    c.method: c
    for c in vars(api).values()
    if isinstance(c, type) and issubclass(c, api._BaseCAM) and c is not api._BaseCAM
}


def sweep(name: str, pre: bool) -> str:
    build, size = hub_zoo.HUB[name]
    try:
        keras.utils.set_random_seed(7)
        model = build(size, pre)
    except Exception as exc:  # keras-hub's own refusal of the configuration: not camserve's
        return f"not built by keras-hub: {type(exc).__name__}: {str(exc)[:160]}"
    x = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    try:
        gradcam = api.GradCAM(model)
        one = gradcam.compute_heatmap(x[0])
        two = gradcam.compute_heatmaps(x)
        explainer = gradcam._explainer or next(iter(gradcam._by_size.values()))
        info = explainer.info
        notes = [
            f"target={info.target_layer} grid={info.grid} {info.target_kind} prefix={info.prefix_tokens}",
            f"head={info.head_kind}",
        ]
        bad = [] if np.isfinite(two).all() and one.shape == two.shape[1:] else ["compute_heatmap(s)"]
        for method, cls in CLASSES.items():
            try:
                res = cls(model).explain(x, top_k=2)
            except Exception as exc:
                if method == "cam" and type(exc).__name__ == "CamNotSupportedError":
                    notes.append("cam refused")
                    continue
                bad.append(f"{method}: {type(exc).__name__}: {str(exc)[:100]}")
                continue
            maps = [m for r in res for m in r.maps]
            if not all(np.isfinite(m.heatmap).all() for m in maps):
                bad.append(f"{method}: NaN")
            elif all(m.all_zero for m in maps):
                notes.append(f"{method} all-zero")
        xf = x.astype(np.float32)
        if pre:
            xf = np.asarray(model.preprocessor.image_converter(xf))
        res = explainer.explain_batch(x, [ItemSpec("gradcam", top_k=3)] * 2)
        a, g = hub_zoo.hub_reference(model, xf, info.target_layer)
        want = zoo.reference_gradcam(a, g, prefix=info.prefix_tokens)
        reference_check(res, want, bad, notes)
        return verdict(bad, notes)
    except Exception as exc:
        return f"FAULT {type(exc).__name__}: {str(exc)[:300]}"


def main(names: list[str]) -> None:
    for name in names or list(hub_zoo.HUB):
        for pre in (False, True):
            t0 = time.perf_counter()
            line = sweep(name, pre)
            tag = name + ("+preprocessor" if pre else "")
            print(f"{tag:36s} {time.perf_counter() - t0:4.0f}s {line}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
