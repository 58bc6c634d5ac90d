"""Per-request tf-keras-vis 0.8.7 Grad-CAM, the baseline camserve's served throughput is compared to.

What a user writes without camserve: load the model, wrap it in `Gradcam(model,
model_modifier=ReplaceToLinear())`, and for every incoming image preprocess it and call the
explainer on a batch of one, eagerly. With C concurrent callers, C threads share the explainer
(as C request handlers of a threaded web server would). The score is the top-1 logit
(`max` over classes: one forward + backward, no separate predict call), which favours the
baseline slightly over a handler that also returns probabilities.

The model comes from a camserve repository config (a `.keras` file, or a `keras.applications`
name with `"weights": null`), so both sides run the same architecture at the same input size.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
from camserve_client.tools.loadreport import Sample, Window, clock, summarize


def preprocess(x: np.ndarray, mode: str) -> np.ndarray:
    """keras.applications' preprocessing, as a user of those models calls it (uint8 RGB in, float32
    out); "none" casts only."""
    from keras.applications import imagenet_utils

    x = x.astype(np.float32)
    return x if mode == "none" else imagenet_utils.preprocess_input(x, mode=mode)


def load_model_from_config(model_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The Keras model a camserve repository folder describes, and its config."""
    import keras

    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("application"):
        app = getattr(keras.applications, cfg["application"])
        weights = cfg.get("weights")
        if weights and not Path(weights).is_absolute():
            weights = str(model_dir / weights)
        model = app(weights=weights, input_shape=tuple(cfg["input_shape"]))
    else:
        model = keras.saving.load_model(model_dir / cfg.get("model_file", "model.keras"), compile=False)
    return model, cfg


def last_4d_layer(model: Any) -> str:
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        if shape is not None and len(getattr(shape, "shape", ())) == 4:
            return layer.name
    raise ValueError("the model has no layer with a 4-D output")


class TfKerasVisBaseline:
    """One model + one tf-keras-vis Gradcam, explained one request at a time."""

    def __init__(self, model_dir: Path, target_layer: str | None = None) -> None:
        import tensorflow as tf
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

        self.tf = tf
        self.model, self.cfg = load_model_from_config(model_dir)
        self.preprocessing = self.cfg.get("preprocessing", "none")
        # seek_penultimate_conv_layer=False: explain exactly this layer (tf-keras-vis would
        # otherwise silently move a non-conv target such as ResNet's final Activation).
        self.target_layer = target_layer or last_4d_layer(self.model)
        self.gradcam = Gradcam(self.model, model_modifier=ReplaceToLinear(), clone=True)

    def explain(self, image: np.ndarray) -> np.ndarray:
        """One request: preprocess, Grad-CAM of the top-1 logit, (h, w) map in [0, 1]."""
        x = preprocess(image[None], self.preprocessing)
        cam = self.gradcam(lambda out: self.tf.reduce_max(out, axis=-1), x,
                           penultimate_layer=self.target_layer, seek_penultimate_conv_layer=False)
        return np.asarray(cam[0], np.float32)

    def run(self, images: list[np.ndarray], concurrency: int, duration_s: float, warmup_s: float
            ) -> dict[str, Any]:
        """Closed loop: `concurrency` threads each explain the next image as soon as one is done."""
        for img in images[:2]:
            self.explain(img)  # first eager calls build kernels; not measured
        samples, window = self._loop(images, concurrency, warmup_s, duration_s)
        step = summarize(samples, window, 1, "closed", concurrency)
        step["target_layer"] = self.target_layer
        return step

    def _loop(self, images: list[np.ndarray], concurrency: int, warmup_s: float, duration_s: float
              ) -> tuple[list[Sample], Window]:
        """One continuous closed loop through the warm-up and the window; every call as a Sample (the
        load generator's rule: summarize counts those that complete inside the window)."""
        samples: list[Sample] = []
        lock = threading.Lock()
        start = clock() + warmup_s
        window = Window(start, start + duration_s)

        def worker(k: int) -> None:
            i = k
            while clock() < window.end:
                t0 = clock()
                try:
                    self.explain(images[i % len(images)])
                    code = "OK"
                except Exception as exc:  # a failure is counted, as the load generator counts codes
                    code = type(exc).__name__
                t1 = clock()
                i += concurrency
                with lock:
                    samples.append(Sample(t0, (t1 - t0) * 1e3, code, math.nan, (t1 - t0) * 1e3,
                                          (t1 - t0) * 1e3, 1.0))
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return samples, window
