"""A NumPy stand-in for the engine, run inside REAL worker processes by the pool tests.

It replaces only the compute (camserve.worker.runner's Runner seam); the pipe protocol, shared-memory
pixels, error mapping, restarts and watchdog under test are the real ones. Its answers are
simple functions of the pixels, so tests check them against an independent NumPy reference:

* heatmap = mean over channels / 255 at the input size ("toy" layer) or 2x2-pooled ("half");
* probabilities = softmax of the per-channel means / 255 plus a fourth logit of 0;
* method "noop" answers at once with no map (transport probe);
* method "sleep" sleeps ``top_k`` seconds (lets a test kill the worker mid-batch),
  "crash" exits the process, "bug" raises RuntimeError, class_index >= 4 fails CLASS_INDEX;
* the worker dies while loading as long as the file named by CAMSERVE_TOY_CRASH_FILE exists.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from camserve.records import ClassMap, ErrorKind, Failure, ItemResult, ModelSummary

NUM_CLASSES = 4


@dataclass(frozen=True)
class ToySummary(ModelSummary):
    """A ModelSummary that also says where the worker ran (for the placement tests)."""

    pid: int = 0
    cuda_visible_devices: str | None = None
    threads: int | None = None
    worker: int = -1


def reference(pixels: np.ndarray, layer: str = "toy") -> tuple[np.ndarray, np.ndarray]:
    """Independent reference of what the toy worker must answer: (probabilities, heatmap)."""
    x = pixels.astype(np.float64)
    means = x.reshape(-1, x.shape[-1]).mean(0) / 255.0
    logits = np.concatenate([means[:3], np.zeros(NUM_CLASSES - min(3, len(means)))])[:NUM_CLASSES]
    e = np.exp(logits - logits.max())
    heat = x.mean(-1) / 255.0
    if layer == "half":
        h, w = heat.shape
        heat = heat[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2).mean((1, 3))
    return (e / e.sum()).astype(np.float32), heat.astype(np.float32)


class ToyExplainer:
    def __init__(self, layer: str) -> None:
        self.layer = layer

    def explain_batch(self, images: np.ndarray, specs: list[Any], *, return_errors: bool = False
                      ) -> list[ItemResult]:
        assert images.ndim == 4, images.shape
        if all(s.method == "noop" for s in specs):  # transport probe: no compute at all
            return [ItemResult(np.zeros(NUM_CLASSES, np.float32), []) for _ in specs]
        for s in specs:
            if s.method == "crash":
                os._exit(17)
            if s.method == "bug":
                raise RuntimeError("toy bug")
            if s.method == "sleep":
                time.sleep(float(s.top_k))
            if s.class_index is not None and not 0 <= s.class_index < NUM_CLASSES:
                raise Failure(f"class index {s.class_index} out of range [0, {NUM_CLASSES})",
                              ErrorKind.CLASS_INDEX)
        out = []
        for img, s in zip(images, specs, strict=True):
            probs, heat = reference(img, self.layer)
            cls = s.class_index if s.class_index is not None else int(np.argmax(probs))
            out.append(ItemResult(probs, [ClassMap(cls, float(probs[cls]), heat, not heat.any())]))
        return out


class ToyRunner:
    """Runner seam implementation: 'loads' instantly (or after CAMSERVE_TOY_LOAD_S seconds)."""

    def __init__(
        self, repository: dict[str, Any], *, compile_mode: str, backend: str, threads: int | None, index: int
    ) -> None:
        self.repository, self.threads, self.index = repository, threads, index

    def load(self) -> tuple[dict[str, ModelSummary], dict[str, str]]:
        time.sleep(float(os.environ.get("CAMSERVE_TOY_LOAD_S", "0")))
        crash_flag = os.environ.get("CAMSERVE_TOY_CRASH_FILE")
        if crash_flag and os.path.exists(crash_flag):  # crash-loop tests: die while starting
            os._exit(5)
        summaries, failures = {}, {}
        for name, cfg in self.repository.items():
            if cfg.target_layer == "broken":
                failures[name] = "ValueError: toy model marked broken"
                continue
            h, w, c = cfg.input_shape
            summaries[name] = ToySummary(
                input_shape=(h, w, c), num_classes=NUM_CLASSES, target_layer="toy", grid=(h, w), channels=c,
                cam_supported=False, cam_reason="toy", layers=(), buckets=(cfg.batching.max_batch_size,),
                compile_mode="graph", backend="numpy", preprocessing=cfg.preprocessing, score="probability",
                methods=("gradcam",), max_top_k=NUM_CLASSES, pid=os.getpid(),
                cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), threads=self.threads,
                worker=self.index)
        return summaries, failures

    def explainer(self, model: str, target_layer: str | None) -> ToyExplainer:
        layer = target_layer or "toy"
        if layer not in ("toy", "half"):
            raise Failure(f"no layer {layer!r}; candidates: toy, half", ErrorKind.UNKNOWN_LAYER)
        return ToyExplainer(layer)
