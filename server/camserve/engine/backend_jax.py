"""JAX backend: the same explanation step as ``backend_tf``, compiled by ``jax.jit`` (= XLA).

Keras 3 runs the same ``.keras`` models on JAX when ``KERAS_BACKEND=jax`` is set before Keras is
imported (a process cannot switch backends afterwards). The step is one pure function of the model's
variable values, the images and the targets:

- uint8 pixels travel to the device and are cast to float32 there, before the step; float32 tensors
  (already preprocessed) reach the same compiled step, whose scalar ``raw`` flag chooses whether
  the preprocessing (caffe/tf/torch/none) runs: one compile per (batch, K) shape, not per dtype;
- the model runs once in inference mode (its own call) with the same call-time taps as the TF
  backend (``calls.run``): a zero "probe" added to the target layer's output where it is called,
  the logits taken where ``heads`` found them; token targets come back on their patch grid;
- ``jax.vjp`` with respect to the probe alone gives d score / d activations; one cotangent per
  requested class, pulled back in a loop whose trip count K is traced (so one compile serves every
  K up to ``max_k``), reuses the same forward pass, and nothing before the target layer is
  differentiated with respect to weights;
- each image's raw map is computed from those tensors in the step, class by class in the same loop
  (``methods.gradient_maps``), so a served batch fetches K maps per image, not the activations and
  gradients (the activations only when an image asks for Eigen-CAM, which runs on the host);
- the variables enter as jit arguments through ``keras.StatelessScope`` (a public API), so the
  weights are not baked into the compiled program as constants and compile stays fast.

``targets[b, k] >= 0`` is a class index; ``-1 - r`` is the r-th best class of image b, resolved in
the step. ``gradients`` is the eager twin ``ModelGraph`` uses to inspect a model. Outputs are float32
NumPy (``StepOutput``), whatever the model's dtype policy (bf16/fp16).
JAX has a single compiled mode: ``jit_compile`` is recorded but the step is always jitted (a
non-jitted JAX step would dispatch op by op and be far slower than either TF mode).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np

from camserve.engine import calls, methods
from camserve.engine.calls import CallKey, LayerCall, Site, Tap
from camserve.engine.keras_private import CallFn
from camserve.engine.preprocess import preprocess
from camserve.engine.records import StepOutput, step_inputs, wants_activations
from camserve.engine.targets import ModelGraph, Target
from camserve.engine.tokens import to_grid

NAME = "jax"


def _check_keras_backend() -> None:
    """Refuse clearly when Keras itself runs on another backend (the step would not trace)."""
    active = keras.backend.backend()
    if active != "jax":
        from camserve.engine.errors import InvalidInputError

        raise InvalidInputError(
            f"the JAX engine backend needs Keras on JAX, but Keras runs on {active!r}: set "
            "KERAS_BACKEND=jax before keras is first imported (camserve serve --backend jax does this "
            "for its workers)"
        )


def has_gpu() -> bool:
    """Whether JAX's default device is a GPU (decides compile_mode "auto" and the benchmarks)."""
    try:
        return jax.default_backend() in ("gpu", "cuda", "rocm")
    except RuntimeError:
        return False


def device_name() -> str:
    """Human-readable name of JAX's default device (for benchmark reports)."""
    dev = jax.devices()[0]
    return str(getattr(dev, "device_kind", dev.platform))


def resolve_targets(targets: Any, probs: Any) -> Any:
    """Class indices (B, K) from targets: ``t >= 0`` as is, ``-1 - r`` = r-th best class by probability.

    A stable descending sort (ties keep the lower index first), the same rule as the TF backend.
    """
    order = jnp.argsort(-probs, axis=-1, stable=True)
    n = probs.shape[-1]
    rank = jnp.clip(-1 - targets, 0, n - 1)
    ranked = jnp.take_along_axis(order, rank, axis=1)
    return jnp.where(targets >= 0, targets, ranked).astype(jnp.int32)


class _Compiled:
    """The model's variables and a jitted function of their values (shared by step and forward)."""

    def __init__(self, model: Any, fn: Callable[..., Any]) -> None:
        self.variables = list(model.variables)
        self.traces = 0
        variables = self.variables

        def pure(values: list[Any], *args: Any) -> Any:
            self.traces += 1  # runs at trace time only: counts compilations
            with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
                return fn(*args)

        self._jitted = jax.jit(pure)

    def values(self) -> list[Any]:
        """Current variable values (re-read on every call, so set_weights after build is honoured)."""
        return [v.value for v in self.variables]

    def __call__(self, *args: Any) -> Any:
        return self._jitted(self.values(), *args)


class Step:
    """A compiled explanation step for one (model, target layer); one compile per batch size.

    ``images`` (B, H, W, C) uint8 or float32 (see the module docstring); ``targets`` (B, K) int32
    with any K up to ``max_k``: the step takes targets padded to ``max_k`` and the count K as a
    traced scalar, so no K compiles anew. ``methods`` (B,) int32 (``methods.CODES``): each image's
    raw maps come back and the gradients never leave the compiled program; without it, the
    activations and gradients come back instead (tests, inspection).

    Two programs of one step function: ``serving`` returns no gradients, so XLA drops the max_k-deep
    gradient buffer (max_k x B x h x w x C float32) and its writes altogether; ``inspecting`` returns
    them, compiled only when first called without ``methods``. Measured on JAX on 2 CPU cores,
    interleaved, ResNet50 224 at batch 8 (a 102 MB buffer): 822 against 1,015 CPU-ms a call, 538
    against 638 ms wall; MobileNetV2 96 at batch 16: 369 against 379 CPU-ms.
    """

    def __init__(
        self, serving: _Compiled, inspecting: _Compiled, jit_compile: bool, max_k: int,
        cam_kernel: np.ndarray | None,
    ) -> None:
        self._serving = serving
        self._inspecting = inspecting
        self.jit_compile = jit_compile
        self.any_batch = False  # jit compiles static shapes: the caller pads to its batch buckets
        self.max_k = max_k
        # On the device once (a jit argument, not a constant baked into every compiled bucket).
        self._cam_kernel = None if cam_kernel is None else jnp.asarray(cam_kernel, jnp.float32)

    def __call__(
        self, images: np.ndarray, targets: np.ndarray, methods: np.ndarray | None = None
    ) -> StepOutput:
        raw = images.dtype == np.uint8
        pixels = jnp.asarray(images)  # to the device as is: uint8 pixels are 4x fewer bytes
        if raw:
            pixels = pixels.astype(jnp.float32)
        k = targets.shape[1]
        padded, codes = step_inputs(targets, methods, self.max_k)
        args = (pixels, np.bool_(raw), padded, np.int32(k), codes, self._cam_kernel)
        if methods is None:
            probs, scores, classes, _, acts, grads = self._inspecting(*args)
            wanted: tuple[Any, ...] = (acts, grads)
        else:
            probs, scores, classes, maps, acts = self._serving(*args)
            # Only what is fetched crosses to the host: the maps (K x h x w per image) when serving.
            wanted = (maps, acts) if wants_activations(codes) else (maps,)
        probs, scores, classes, *tensors = jax.device_get((probs, scores, classes, *wanted))
        out = StepOutput(probabilities=np.asarray(probs), scores=np.asarray(scores)[:, :k],
                         classes=np.asarray(classes)[:, :k])
        if methods is not None:
            out.maps = np.asarray(tensors[0])[:, :k]
            out.activations = np.asarray(tensors[1]) if len(tensors) > 1 else None
        else:
            out.activations = np.asarray(tensors[0])
            out.gradients = np.moveaxis(np.asarray(tensors[1])[:k], 0, 1)  # (B, K, h, w, C)
        return out

    def trace_count(self) -> int:
        """How many times the step was traced (both programs): nothing may after warm-up."""
        return self._serving.traces + self._inspecting.traces


def _with(taps: dict[CallKey, Tap], key: CallKey, tap: Tap) -> dict[CallKey, Tap]:
    """``taps`` plus ``tap`` at ``key`` (outside any tap already there, e.g. the head's)."""
    out = dict(taps)
    out[key] = calls.compose([taps[key], tap]) if key in taps else tap
    return out


def _probe_tap(probe: Any, into: dict[str, Any], name: str) -> Tap:
    """A tap adding ``probe`` (zeros, differentiated by ``jax.vjp``) to the call's output."""

    def tap(call: CallFn, args: tuple[Any, ...], kwargs: dict[str, Any], site: Site) -> Any:
        out = call(*args, **kwargs)
        out = out + probe.astype(out.dtype)
        into[name] = out
        return out

    return tap


def gradients(
    graph: ModelGraph, targets: list[LayerCall], cotangent: np.ndarray
) -> dict[CallKey, np.ndarray]:
    """d (cotangent . score vector) / d output of each call, on ``graph.probe_input`` (see backend_tf)."""
    _check_keras_backend()
    x = jnp.asarray(graph.probe_input)
    zeros = [jnp.zeros((x.shape[0], *c.shape), jnp.float32) for c in targets]

    def total(probes: list[Any]) -> Any:
        taps = graph.head.taps()
        for i, (c, p) in enumerate(zip(targets, probes, strict=True)):
            taps = _with(taps, c.key, _probe_tap(p, {}, f"p{i}"))
        y, notes = calls.run(graph.model, x, taps)
        _, vector = graph.head.outputs(notes, y, "logits")
        return jnp.sum(vector * jnp.asarray(cotangent))

    grads = jax.grad(total)(zeros)
    return {c.key: np.asarray(g, np.float32) for c, g in zip(targets, grads, strict=True)}


def build_step(
    graph: ModelGraph, target: Target, *, preprocessing: str, score: str, jit_compile: bool, max_k: int,
    cam_kernel: np.ndarray | None = None,
) -> Step:
    """Compile the step for ``target`` of ``graph``'s model (see the module docstring and backend_tf's
    ``build_step``: the same arguments and outputs)."""
    _check_keras_backend()
    head = graph.head
    grid = target.grid
    probe_shape = tuple(int(d) for d in target.shape)

    def step(pixels: Any, raw: Any, targets: Any, count: Any, codes: Any, kernel: Any) -> tuple[Any, ...]:
        x = graph.model_input(
            jax.lax.cond(raw, lambda p: preprocess(p, preprocessing, raw=True), lambda p: p, pixels))
        probe0 = jnp.zeros((pixels.shape[0], *probe_shape), jnp.float32)

        def forward(probe: Any) -> tuple[Any, tuple[Any, Any]]:
            captured: dict[str, Any] = {}
            taps = _with(head.taps(), target.key, _probe_tap(probe, captured, "act"))
            y, notes = calls.run(graph.model, x, taps)
            probs, vector = head.outputs(notes, y, score)
            return vector, (probs, captured["act"].astype(jnp.float32))

        vector, pullback, (probs, acts) = jax.vjp(forward, probe0, has_aux=True)
        classes = resolve_targets(targets, probs)  # (B, max_k)
        scores = jnp.take_along_axis(vector, classes, axis=1)
        # One cotangent per requested class: one-hot rows select score[b, k] for every image b.
        cotangents = jax.nn.one_hot(classes.T, vector.shape[-1], dtype=vector.dtype)  # (max_k, B, N)
        acts = to_grid(jnp, acts, grid)

        def backward(k: Any, buffers: tuple[Any, Any]) -> tuple[Any, Any]:
            grads, maps = buffers
            (g,) = pullback(cotangents[k])
            g = to_grid(jnp, g.astype(jnp.float32), grid)  # (B, h, w, C)
            # The k-th class's maps here, from this class's gradients alone: the methods' work is
            # K classes', not max_k's.
            m = methods.gradient_maps(codes, acts, g[:, None], jax.lax.dynamic_slice_in_dim(classes, k, 1, 1),
                                      kernel)[:, 0]
            return (jax.lax.dynamic_update_index_in_dim(grads, g, k, axis=0),
                    jax.lax.dynamic_update_index_in_dim(maps, m, k, axis=0))

        # Only the ``count`` classes asked for are differentiated: a loop with a traced trip count,
        # so one compiled step serves every K (vmap over K would need K static: a compile per K).
        buffers = (jnp.zeros((max_k, *acts.shape), jnp.float32),
                   jnp.zeros((max_k, *acts.shape[:3]), jnp.float32))
        grads, maps = jax.lax.fori_loop(0, count, backward, buffers)  # (max_k, B, ...): k first
        maps = jnp.moveaxis(maps, 0, 1)  # (B, max_k, h, w)
        return probs, scores, classes, maps, acts, grads

    def serving(*args: Any) -> tuple[Any, ...]:
        return step(*args)[:5]  # no gradients: see Step

    return Step(_Compiled(graph.model, serving), _Compiled(graph.model, step), jit_compile, max_k, cam_kernel)


def build_forward(graph: ModelGraph, *, preprocessing: str, jit_compile: bool) -> Callable[[np.ndarray], Any]:
    """Plain jitted forward ``model(x, training=False)`` with the same preprocessing (benchmarks)."""
    _check_keras_backend()
    model = graph.model

    def forward(images: Any) -> Any:
        x = graph.model_input(preprocess(images, preprocessing, raw=images.dtype == jnp.uint8))
        return jnp.asarray(model(x, training=False), jnp.float32)

    compiled = _Compiled(model, forward)
    return lambda images: np.asarray(jax.device_get(compiled(jnp.asarray(images))))
