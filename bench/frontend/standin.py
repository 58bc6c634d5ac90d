"""The stand-in model step of ``bench/frontend``: real worker processes, a fixed cost per batch.

Plugged into the worker's Runner seam (``camserve serve --runner bench.frontend.standin:StandInRunner``)
so the front end, the scheduler and the process hops are the real ones and the model costs a fixed
``CAMSERVE_STANDIN_STEP_MS`` (default 2 ms) of *sleep* per batch: no CPU, so every CPU-second the
benchmark counts is the server's own work around the model. The answer has the shape of an ImageNet
classifier explained at a 7x7 grid: 1,000 class probabilities and one 7x7 map per image, both
cheap functions of the pixels (so they are real data, different per image).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from camserve.records import ClassMap, ErrorKind, Failure, ItemResult, ModelSummary

NUM_CLASSES = 1000
GRID = (7, 7)
STEP_MS_ENV = "CAMSERVE_STANDIN_STEP_MS"


class StandInExplainer:
    def __init__(self, step_s: float) -> None:
        self.step_s = step_s

    def explain_batch(self, images: np.ndarray, specs: list[Any], *, return_errors: bool = False
                      ) -> list[ItemResult]:
        time.sleep(self.step_s)
        n, h, w, c = images.shape
        gh, gw = GRID
        pooled = images[:, : h // gh * gh, : w // gw * gw].reshape(n, gh, h // gh, gw, w // gw, c)
        maps = pooled[:, :, 0, :, 0].mean(-1, dtype=np.float32) / 255.0  # (n, 7, 7), subsampled
        logits = np.zeros((n, NUM_CLASSES), np.float32)
        logits[:, :c] = images[:, ::16, ::16].reshape(n, -1, c).mean(1) / 64.0
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        out = []
        for i, s in enumerate(specs):
            cls = s.class_index if s.class_index is not None else int(np.argmax(probs[i]))
            if not 0 <= cls < NUM_CLASSES:
                raise Failure(f"class index {cls} out of range", ErrorKind.CLASS_INDEX)
            heat = maps[i]
            out.append(ItemResult(probs[i], [ClassMap(cls, float(logits[i, cls]), heat, not heat.any())]))
        return out


class StandInRunner:
    """The worker's Runner seam: 'loads' at once and reports an ImageNet-shaped model."""

    def __init__(self, repository: dict[str, Any], *, compile_mode: str, backend: str, threads: int | None,
                 index: int) -> None:
        self.repository = repository
        self.explainer_ = StandInExplainer(float(os.environ.get(STEP_MS_ENV, "2")) / 1e3)

    def load(self) -> tuple[dict[str, ModelSummary], dict[str, str]]:
        summaries = {}
        for name, cfg in self.repository.items():
            h, w, c = cfg.input_shape
            summaries[name] = ModelSummary(
                input_shape=(h, w, c), num_classes=NUM_CLASSES, target_layer="standin", grid=GRID, channels=8,
                cam_supported=False, cam_reason="stand-in step", layers=(),
                buckets=(cfg.batching.max_batch_size,),
                compile_mode="graph", backend="standin", preprocessing=cfg.preprocessing, score="logits",
                methods=("gradcam",), max_top_k=5)
        return summaries, {}

    def explainer(self, model: str, target_layer: str | None) -> StandInExplainer:
        if target_layer not in (None, "standin"):
            raise Failure(f"no layer {target_layer!r}", ErrorKind.UNKNOWN_LAYER)
        return self.explainer_
