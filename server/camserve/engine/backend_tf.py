"""TensorFlow backend: the one compiled step everything else is computed from.

``build_step`` returns a ``Step``: ``step(images (B,H,W,C), targets (B,K) int32, methods (B,) int32)
-> StepOutput``.
Inside one ``tf.function`` (optionally ``jit_compile=True`` = XLA): preprocessing; one forward pass
in inference mode, the model's own call, in which a zero "probe" is added to the target layer's
output where that layer is called (``calls.run``) and the logits are taken where ``heads`` found
them; the score of each requested class (logit by default); the gradients of those scores with
respect to the probe only (``watch_accessed_variables=False``: no weight gradients, and nothing
before the target layer is differentiated), one backward pass per class in a ``tf.while_loop`` whose
trip count is the number of classes asked, so K is not a traced shape (see ``Step``); then each
image's raw map by its method (``methods.gradient_maps`` per class in that loop), so that a served
batch copies K maps per image (and the activations only for Eigen-CAM, which runs on the host)
off the device, not the activations and gradients. Token targets
(B, N, C) come back on their patch grid (B, h, w, C). ``targets[b, k] >= 0`` is a class index;
``-1 - r`` means the r-th best class of image b, resolved inside the step. ``gradients`` is the
eager twin ``ModelGraph`` uses to inspect a model. This is the only TensorFlow-specific module.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from camserve.engine import calls, methods
from camserve.engine.calls import CallKey, LayerCall, Site, Tap
from camserve.engine.errors import InvalidInputError
from camserve.engine.keras_private import CallFn
from camserve.engine.preprocess import preprocess
from camserve.engine.records import StepOutput, step_inputs, wants_activations
from camserve.engine.targets import ModelGraph, Target
from camserve.engine.tokens import to_grid

NAME = "tensorflow"


def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU (decides compile_mode "auto")."""
    return bool(tf.config.list_physical_devices("GPU"))


def resolve_targets(targets: Any, probs: Any) -> Any:
    """Class indices (B, K) from targets: ``t >= 0`` as is, ``-1 - r`` = r-th best class by probability."""
    order = tf.argsort(probs, axis=-1, direction="DESCENDING", stable=True)
    n = tf.shape(probs)[-1]
    rank = tf.clip_by_value(-1 - targets, 0, n - 1)
    ranked = tf.gather(order, rank, batch_dims=1)
    return tf.where(targets >= 0, targets, ranked)


def _with(taps: dict[CallKey, Tap], key: CallKey, tap: Tap) -> dict[CallKey, Tap]:
    """``taps`` plus ``tap`` at ``key`` (outside any tap already there, e.g. the head's)."""
    out = dict(taps)
    out[key] = calls.compose([taps[key], tap]) if key in taps else tap
    return out


def _probe_tap(tape: tf.GradientTape, into: dict[str, Any], name: str) -> Tap:
    """A tap adding a watched zero probe to the call's output: d score / d probe = d score / d output."""

    def tap(call: CallFn, args: tuple[Any, ...], kwargs: dict[str, Any], site: Site) -> Any:
        out = call(*args, **kwargs)
        probe = tf.zeros_like(out)
        tape.watch(probe)
        into[name] = probe
        out = out + probe
        into[name + "_out"] = out
        return out

    return tap


def gradients(
    graph: ModelGraph, targets: list[LayerCall], cotangent: np.ndarray
) -> dict[CallKey, np.ndarray]:
    """d (cotangent . score vector) / d output of each call, on ``graph.probe_input``, eagerly.

    What ``ModelGraph`` uses to choose the default target and check CAM (see ``targets``); one
    backward pass whatever the number of calls. float32 NumPy (B, *call.shape); zeros where the
    score does not depend on a call.
    """
    x = tf.constant(graph.probe_input)
    probes: dict[str, Any] = {}
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        taps = graph.head.taps()
        for i, c in enumerate(targets):
            taps = _with(taps, c.key, _probe_tap(tape, probes, f"p{i}"))
        y, notes = calls.run(graph.model, x, taps)
        _, vector = graph.head.outputs(notes, y, "logits")
        total = tf.reduce_sum(vector * tf.constant(cotangent))
    names = [f"p{i}" for i in range(len(targets)) if f"p{i}" in probes]
    grads = tape.gradient(
        total, [probes[n] for n in names], unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    by_name = dict(zip(names, grads, strict=True))
    out = {}
    for i, c in enumerate(targets):
        g = by_name.get(f"p{i}")
        out[c.key] = (
            np.zeros((x.shape[0], *c.shape), np.float32) if g is None else g.numpy().astype(np.float32)
        )
    return out


#: How XLA says, at a step's first run, that it cannot compile the graph (ops it has no kernel for,
#: such as tf.numpy_function in a Lambda layer; shapes that depend on values).
_XLA_CANNOT = ("Detected unsupported operations when trying to compile", "must be a compile-time constant")


def _not_compilable(exc: Exception) -> InvalidInputError | None:
    """The refusal, saying what to do, for an XLA compile failure of the model's graph; else None."""
    text = str(exc)
    if not any(marker in text for marker in _XLA_CANNOT):
        return None
    ops = sorted(set(re.findall(r"No registered '([^']+)' OpKernel", text)))
    nodes = sorted(set(re.findall(r"\{\{node ([^}]+)\}\}", text)))[:3]
    where = f" ({', '.join(ops)}" + (f" at {', '.join(nodes)})" if nodes else ")") if ops else ""
    return InvalidInputError(
        f"the model uses operations XLA cannot compile{where}: explain it with compile_mode='graph' "
        "(the server's --compile graph); compile_mode 'auto' picks XLA where TensorFlow sees a GPU"
    )


class Step:
    """A compiled explanation step for one (model, target layer).

    Graph mode traces once, with the batch dimension unknown, and runs any batch size as it is
    (``any_batch``: the caller need not pad); XLA compiles static shapes, so it traces once per batch
    size and the caller pads to its buckets, as graph mode does for a model whose call needs its
    batch size static.

    ``images`` (B, H, W, C) uint8 pixels (cast to float32 before the step, on the device the eager
    cast runs on; the step applies the preprocessing) or float32 already preprocessed (passed
    through): both reach the same trace, a scalar ``raw`` flag choosing the branch. ``targets``
    (B, K) with any K up to ``max_k``: the step takes them padded to ``max_k`` and K as a scalar
    tensor (the backward loop's trip count), so no K traces anew, in graph mode or under XLA.
    """

    def __init__(self, fn: Any, jit_compile: bool, max_k: int, input_shape: tuple[int, ...]) -> None:
        self._fn = fn
        self.jit_compile = jit_compile
        self.max_k = max_k
        self._input_shape = tuple(int(d) for d in input_shape)
        # Why one graph-mode trace: tracing is nearly all of a warm-up (MobileNetV2 at 160, buckets
        # 1..32: 15.3 -> 4.8 CPU-s), while the step with an unknown batch dimension ran as fast as a
        # static one, within noise (bench.engine.any_batch), and an unpadded partial batch computes
        # only its images.
        self._any_batch: bool | None = False if jit_compile else None
        self._by_batch: dict[int | None, Any] = {}

    @property
    def any_batch(self) -> bool:
        """Whether one trace runs every batch size: in graph mode, unless the model's call needs its
        batch size static (user code such as ``ops.reshape(x, (x.shape[0], -1))`` fails on an
        unknown batch dimension; Keras' own ``predict`` retraces such a model with one too). Then
        the step traces per batch size, as under XLA. The first access traces the step."""
        if self._any_batch is None:
            try:
                self._trace(None)
                self._any_batch = True
            except Exception as exc:  # the model's own call: whatever error it raises
                logging.getLogger(__name__).info(
                    "the model's call needs a static batch size (%s: %s): one trace per batch bucket",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                self._any_batch = False
        return self._any_batch

    def _concrete(self, batch: int) -> Any:
        """The concrete function for ``batch`` images (every batch size's when ``any_batch``)."""
        return self._trace(None if self.any_batch else batch)

    def _trace(self, key: int | None) -> Any:
        """The concrete function for batch size ``key`` (None: unknown), traced on first use from its
        signature (so a warm-up does not set off tf.function's "excessive retracing" warning)."""
        found = self._by_batch.get(key)
        if found is None:
            found = self._by_batch[key] = self._fn.get_concrete_function(
                tf.TensorSpec((key, *self._input_shape), tf.float32),
                tf.TensorSpec((), tf.bool),
                tf.TensorSpec((key, self.max_k), tf.int32),
                tf.TensorSpec((), tf.int32),
                tf.TensorSpec((key,), tf.int32),
            )
        return found

    def __call__(
        self, images: np.ndarray, targets: np.ndarray, methods: np.ndarray | None = None
    ) -> StepOutput:
        """``methods`` (B,) int32 (``methods.CODES``): each image's raw maps come back and the
        activations and gradients stay on the device; without it, those tensors come back instead
        (tests, inspection). The same trace serves both."""
        raw = images.dtype == np.uint8
        pixels = tf.cast(tf.constant(images), tf.float32) if raw else tf.constant(images, tf.float32)
        b, k = targets.shape
        padded, codes = step_inputs(targets, methods, self.max_k)
        try:
            probs, scores, classes, maps, acts, grads = self._concrete(b)(
                pixels, tf.constant(raw), tf.constant(padded), tf.constant(k, tf.int32), tf.constant(codes)
            )
        except tf.errors.InvalidArgumentError as exc:
            refusal = _not_compilable(exc) if self.jit_compile else None
            if refusal is None:
                raise
            raise refusal from exc
        out = StepOutput(
            probabilities=probs.numpy(), scores=scores.numpy()[:, :k], classes=classes.numpy()[:, :k]
        )
        # .numpy() is the copy to the host: only what the caller uses makes it.
        if methods is not None:
            out.maps = maps[:, :k].numpy()  # XLA's buffer holds max_k classes: an eager slice (no trace)
            if wants_activations(codes):
                out.activations = acts.numpy()
        else:
            out.activations, out.gradients = acts.numpy(), np.moveaxis(grads[:k].numpy(), 0, 1)
        return out

    def trace_count(self) -> int:
        """How many concrete functions exist (to check that nothing recompiles after warm-up)."""
        return int(self._fn.experimental_get_tracing_count())


def build_step(
    graph: ModelGraph, target: Target, *, preprocessing: str, score: str, jit_compile: bool, max_k: int,
    cam_kernel: np.ndarray | None = None,
) -> Step:
    """Compile the step for ``target`` of ``graph``'s model (see the module docstring).

    ``max_k`` is the most classes per image a call may ask for (the gradient buffer's first axis);
    ``cam_kernel`` (C, N) float32 the CAM weights (``Target.cam_kernel``), None where CAM does not apply.
    """
    kernel = None if cam_kernel is None else tf.constant(cam_kernel, tf.float32)  # captured once
    head = graph.head
    grid = target.grid

    def step(pixels: tf.Tensor, raw: tf.Tensor, targets: tf.Tensor, count: tf.Tensor,
             codes: tf.Tensor) -> tuple[Any, ...]:
        x = graph.model_input(
            tf.cond(raw, lambda: preprocess(pixels, preprocessing, raw=True), lambda: pixels))
        captured: dict[str, tf.Tensor] = {}
        tape = tf.GradientTape(persistent=True, watch_accessed_variables=False)
        with tape:
            taps = _with(head.taps(), target.key, _probe_tap(tape, captured, "probe"))
            y, notes = calls.run(graph.model, x, taps)
            probs, vector = head.outputs(notes, y, score)
        classes = resolve_targets(targets, probs)  # (B, max_k)
        scores = tf.gather(vector, classes, batch_dims=1)
        acts = to_grid(keras.ops, tf.cast(captured["probe_out"], tf.float32), grid)

        def backward(k: tf.Tensor, arrays: tuple[tf.TensorArray, tf.TensorArray]) -> tuple[Any, Any]:
            # One backward pass from the k-th class's score of every image (images do not interact),
            # and that class's maps from its gradients alone (the methods' work is K classes').
            cotangent = tf.one_hot(classes[:, k], tf.shape(vector)[-1], dtype=vector.dtype)
            g = tape.gradient(vector, captured["probe"], output_gradients=cotangent,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
            g = to_grid(keras.ops, tf.cast(g, tf.float32), grid)  # (B, h, w, C)
            m = methods.gradient_maps(codes, acts, g[:, None], classes[:, k : k + 1], kernel)[:, 0]
            return arrays[0].write(k, g), arrays[1].write(k, m)

        # Only the ``count`` classes asked for are differentiated: a loop with a tensor trip count,
        # so one trace serves every K (a Python loop or pfor over K would need K static). The first
        # class is peeled out of the loop, so a top-1 call runs no loop iteration. XLA needs the
        # buffers' size static (max_k, zero past count); graph mode sizes them to count.
        size = max_k if jit_compile else count
        empty = (tf.TensorArray(tf.float32, size=size, element_shape=acts.shape),
                 tf.TensorArray(tf.float32, size=size, element_shape=acts.shape[:3]))
        arrays = backward(tf.constant(0), empty)
        _, arrays = tf.while_loop(lambda k, _: k < count, lambda k, a: (k + 1, backward(k, a)),
                                  (tf.constant(1), arrays), maximum_iterations=max_k)
        maps = tf.transpose(arrays[1].stack(), [1, 0, 2, 3])  # (B, count or max_k, h, w)
        return probs, scores, classes, maps, acts, arrays[0].stack()  # gradients (count or max_k, B, ...)

    # Without AutoGraph: the step spells its control flow as tf.cond/tf.while_loop, and Keras 3 runs a
    # model's call() as it is (a call() that branches in Python on a tensor fails in Keras' own
    # predict() too), so AutoGraph's source rewriting converted nothing and cost about half of a small
    # model's warm-up (demo model, 2 buckets: 2.8 -> 1.3 CPU-s).
    fn = tf.function(step, jit_compile=jit_compile, reduce_retracing=False, autograph=False)
    return Step(fn, jit_compile, max_k, graph.input_shape)


def build_forward(graph: ModelGraph, *, preprocessing: str, jit_compile: bool) -> Callable[[np.ndarray], Any]:
    """Plain compiled forward ``model(x, training=False)`` with the same preprocessing (benchmarks)."""
    model = graph.model

    @tf.function(jit_compile=jit_compile)
    def forward(images: tf.Tensor) -> tf.Tensor:
        x = graph.model_input(preprocess(images, preprocessing, raw=images.dtype == tf.uint8))
        return model(x, training=False)

    return lambda images: forward(tf.constant(images)).numpy()
