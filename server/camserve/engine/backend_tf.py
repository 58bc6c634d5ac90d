"""TensorFlow backend: the one compiled step everything else is computed from.

``build_step`` returns a ``Step``: ``step(images (B,H,W,C), targets (B,K) int32) -> StepOutput``.
Inside one ``tf.function`` (optionally ``jit_compile=True`` = XLA): preprocessing, a single forward
pass in inference mode in which a zero "probe" is added to the target layer's output, the score of
each requested class (pre-softmax logit by default), and the gradients of those scores with respect
to the probe only (``watch_accessed_variables=False``: no weight gradients, and nothing before the
target layer is differentiated). ``targets[b, k] >= 0`` is a class index; ``-1 - r`` means the r-th
best class of image b, resolved inside the step. This is the only TensorFlow-specific module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from camserve.engine.keras_graph import call_inference
from camserve.engine.preprocess import preprocess
from camserve.engine.records import StepOutput
from camserve.engine.targets import ModelGraph, Target

NAME = "tensorflow"


def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU (decides compile_mode "auto")."""
    return bool(tf.config.list_physical_devices("GPU"))


def class_scores(logits: Any, kind: str, score: str) -> tuple[Any, Any]:
    """(probabilities, score vector) from float32 logits, for a softmax or sigmoid head."""
    probs = tf.nn.softmax(logits, axis=-1) if kind == "softmax" else tf.sigmoid(logits)
    return probs, (logits if score == "logits" else probs)


def resolve_targets(targets: Any, probs: Any) -> Any:
    """Class indices (B, K) from targets: ``t >= 0`` as is, ``-1 - r`` = r-th best class by probability."""
    order = tf.argsort(probs, axis=-1, direction="DESCENDING", stable=True)
    n = tf.shape(probs)[-1]
    rank = tf.clip_by_value(-1 - targets, 0, n - 1)
    ranked = tf.gather(order, rank, batch_dims=1)
    return tf.where(targets >= 0, targets, ranked)


class Step:
    """A compiled explanation step for one (model, target layer); one trace per (B, K, dtype)."""

    def __init__(self, fn: Callable[..., Any], jit_compile: bool) -> None:
        self._fn = fn
        self.jit_compile = jit_compile
        self.traced: set[tuple[int, int, str]] = set()

    def __call__(self, images: np.ndarray, targets: np.ndarray) -> StepOutput:
        self.traced.add((int(images.shape[0]), int(targets.shape[1]), str(images.dtype)))
        probs, scores, acts, grads, classes = self._fn(
            tf.constant(images), tf.constant(np.asarray(targets, dtype=np.int32))
        )
        return StepOutput(
            probabilities=probs.numpy(),
            scores=scores.numpy(),
            activations=acts.numpy(),
            gradients=grads.numpy(),
            classes=classes.numpy(),
        )

    def trace_count(self) -> int:
        """How many concrete functions exist (to check that nothing recompiles after warm-up)."""
        return int(self._fn.experimental_get_tracing_count())


def build_step(
    graph: ModelGraph, target: Target, *, preprocessing: str, score: str, jit_compile: bool
) -> Step:
    """Compile the step for ``target`` of ``graph``'s model (see the module docstring)."""
    head_kind = graph.head.kind
    base_hooks = graph.logits_hooks()
    target_ids = target.op.ids

    def step(images: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, ...]:
        x = preprocess(images, preprocessing, raw=images.dtype == tf.uint8)
        captured: dict[str, tf.Tensor] = {}
        tape = tf.GradientTape(persistent=True, watch_accessed_variables=False)
        with tape:

            def probe_hook(layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                out = call_inference(layer, args, kwargs)
                probe = tf.zeros_like(out)
                tape.watch(probe)
                captured["probe"] = probe
                out = out + probe
                captured["act"] = out
                return out

            logits = graph.run(x, {**base_hooks, target_ids: probe_hook})
            logits = tf.cast(logits, tf.float32)
            probs, vector = class_scores(logits, head_kind, score)
            classes = resolve_targets(targets, probs)
            scores = tf.gather(vector, classes, batch_dims=1)  # (B, K)
            per_class = [tf.reduce_sum(scores[:, k]) for k in range(targets.shape[1])]
        grads = [tape.gradient(s, captured["probe"]) for s in per_class]
        acts = tf.cast(captured["act"], tf.float32)
        gradients = tf.cast(tf.stack(grads, axis=1), tf.float32)  # (B, K, h, w, C)
        return probs, scores, acts, gradients, classes

    fn = tf.function(step, jit_compile=jit_compile, reduce_retracing=False)
    return Step(fn, jit_compile)


def build_forward(graph: ModelGraph, *, preprocessing: str, jit_compile: bool) -> Callable[[np.ndarray], Any]:
    """Plain compiled forward ``model(x, training=False)`` with the same preprocessing (benchmarks)."""
    model = graph.model

    @tf.function(jit_compile=jit_compile)
    def forward(images: tf.Tensor) -> tf.Tensor:
        x = preprocess(images, preprocessing, raw=images.dtype == tf.uint8)
        return model(x, training=False)

    return lambda images: forward(tf.constant(images)).numpy()
