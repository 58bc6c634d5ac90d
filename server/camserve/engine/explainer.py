"""``Explainer``: one model + one target layer + compiled batch buckets (what the server's worker calls).

All the maps of a batch come from one compiled step. Under XLA (TF ``xla``, JAX) a step is
compiled per batch shape, so images are padded to the next bucket (1, 2, 4, ..., max_batch_size);
TF graph mode traces one step for every batch size and runs a batch unpadded (``Step.any_batch``).
The number of classes per image K is not a shape the step compiles for (targets are padded to
``max_top_k`` and K is the trip count of the step's backward loop), and uint8 pixels and float32
tensors reach the same step, so after ``warmup()`` (which runs every bucket once) no request the
server accepts (any batch size, top_k, class index or input dtype) traces or compiles again. Each
item of a batch can ask for a different method and classes: the step computes each image's maps by
its own method (``methods.gradient_maps``; Eigen-CAM on the host, ``methods.eigencam``).
"""

from __future__ import annotations

import copy
import importlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from camserve.engine import methods
from camserve.engine.errors import (
    CamNotSupportedError,
    ClassIndexError,
    EngineError,
    InvalidInputError,
    UnknownLayerError,
    not_finite_reason,
)
from camserve.engine.model_io import own_preprocessing
from camserve.engine.pixels import check_preprocessed, image_array
from camserve.engine.preprocess import check_channels, check_mode
from camserve.engine.targets import ModelGraph
from camserve.engine.tokens import TokenLayout
from camserve.records import ClassMap, ErrorKind, ItemResult, ItemSpec, ModelSummary
from camserve.vocabulary import BACKENDS, COMPILE_MODES, METHODS, OWN_PREPROCESSOR, SCORES

log = logging.getLogger(__name__)

BACKEND_MODULES = {"tensorflow": "camserve.engine.backend_tf", "jax": "camserve.engine.backend_jax"}
assert tuple(BACKEND_MODULES) == BACKENDS
#: Largest top_k a single item may ask for (the step's gradient buffer holds this many classes).
MAX_TOP_K = 32


def buckets_for(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... below max_batch_size, then max_batch_size itself (even if not a power of two)."""
    out, b = [], 1
    while b < max_batch_size:
        out.append(b)
        b *= 2
    out.append(max_batch_size)
    return out


def load_backend(name: str | None) -> Any:
    """Import the backend module by name ("tensorflow" or "jax"; None = the one Keras runs on).

    A process runs Keras on one backend (KERAS_BACKEND, read at first import): asking for the other
    is a clear error instead of a failure deep inside tracing.
    """
    import keras

    active = keras.backend.backend()
    name = active if name is None else name
    if name not in BACKEND_MODULES:
        raise InvalidInputError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    if name != active:
        raise InvalidInputError(
            f"backend {name!r} needs Keras on {name!r}, but Keras runs on {active!r} in this process: "
            f"set KERAS_BACKEND={name} before keras is first imported"
        )
    try:
        return importlib.import_module(BACKEND_MODULES[name])
    except ModuleNotFoundError as exc:
        if exc.name == BACKEND_MODULES[name]:
            raise InvalidInputError(f"backend {name!r} is not available in this build") from exc
        raise


class Explainer:
    """CAM-family explanations for one Keras model and target layer, batched and compiled.

    ``model``: any ``keras.Model`` (Functional, Sequential, subclassed, with custom layers) with one
    image input and one (batch, classes) output. ``target_layer``: None (automatic: the last layer
    on the way to the output whose grid is larger than 1x1 and that the score depends on; ``info.
    target_reason`` says why), a layer name, an ``outer/inner/sub`` path, ``name@k`` for the k-th
    call of a layer called several times, or the layer object (called once). ``input_shape`` (H, W,
    C) is needed only when the model cannot tell (never called, or an Input with unknown sizes).
    ``token_grid`` (h, w) and ``prefix_tokens`` override how (B, N, C) token outputs map to the patch
    grid (``tokens``).
    Unset options fall back to the ones ``load_model`` recorded for this model.

    ``images`` for ``explain_batch`` are uint8 (B, H, W, C) RGB at the model's input size (the step
    applies ``preprocessing``), or float32 already preprocessed (passed through unchanged; values the
    preprocessing cannot give, such as float pixels 0..255 under tf, are refused: ``pixels.
    check_preprocessed``). Integer
    images of other dtypes are pixels too (taken as uint8 when in 0..255, see ``_integer_pixels``).

    Raises ``InvalidInputError`` (bad option, model the engine cannot run, caffe/torch preprocessing
    for a model that does not take 3 channels), ``UnknownLayerError``
    (target not found, ambiguous, or without a grid; no automatic target).
    """

    def __init__(
        self,
        model: Any,
        target_layer: Any = None,
        preprocessing: str = "tf",
        compile_mode: str = "auto",
        max_batch_size: int = 32,
        score: str = "logits",
        backend: str | None = None,
        input_shape: tuple[int, int, int] | None = None,
        token_grid: tuple[int, int] | None = None,
        prefix_tokens: int | None = None,
    ) -> None:
        from camserve.engine.loading import hints_for

        check_mode(preprocessing)
        if compile_mode not in COMPILE_MODES:
            raise InvalidInputError(
                f"unknown compile_mode {compile_mode!r}; valid: {', '.join(COMPILE_MODES)}"
            )
        if score not in SCORES:
            raise InvalidInputError(f"unknown score {score!r}; valid: {', '.join(SCORES)}")
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise InvalidInputError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
        self._backend = load_backend(backend)
        if self._backend.NAME == "jax" and compile_mode == "graph":
            raise InvalidInputError(
                "compile_mode 'graph' does not exist on JAX: its only compiled step is jax.jit (XLA); "
                "use 'xla' or 'auto'"
            )
        hints = hints_for(model)
        given = TokenLayout.of(token_grid, prefix_tokens)
        layout = given if (token_grid is not None or prefix_tokens is not None) else hints.token_layout
        self.graph = ModelGraph(
            model, input_shape or hints.input_shape, layout, gradients=self._backend.gradients
        )
        check_channels(preprocessing, self.graph.input_shape[2])
        # A keras-hub task's preprocessor (applied by its predict(), not by call()) runs on the host
        # before the step, as predict() runs it, so the maps and probabilities are predict()'s.
        self._own_preprocessing = own_preprocessing(model, preprocessing, self.graph.input_shape)
        # What info reports: the preprocessing that runs (the task's own one, not the config's "none").
        self._applied = (preprocessing if self._own_preprocessing is None
                         else f"{OWN_PREPROCESSOR}:{type(model.preprocessor).__name__}")
        self.target = self.graph.resolve(target_layer)
        if compile_mode == "auto":
            # Documented rule (ANCHORS.md, measured): XLA convolutions are slower than oneDNN graph
            # mode on CPUs (0.6-0.9x VGG16, ~10x slower MobileNetV2); XLA is the fast path on GPUs.
            # JAX has no graph mode: its only compiled step is jax.jit (XLA), on every device.
            jax_only = self._backend.NAME == "jax"
            compile_mode = "xla" if jax_only or self._backend.has_gpu() else "graph"
        self.compile_mode = compile_mode
        self.preprocessing = preprocessing
        self.score = score
        self.backend = self._backend.NAME
        self.max_batch_size = max_batch_size
        self.buckets = buckets_for(max_batch_size)
        self.max_top_k = min(self.num_classes, MAX_TOP_K)
        self._build_step()

    def _build_step(self) -> None:
        self.step = self._backend.build_step(
            self.graph,
            self.target,
            preprocessing=self.preprocessing,
            score=self.score,
            jit_compile=self.compile_mode == "xla",
            max_k=self.max_top_k,
            cam_kernel=self.target.cam_kernel() if self.target.cam_supported else None,
        )
        self._info: ModelSummary | None = None

    def with_target(self, target_layer: Any) -> Explainer:
        """An Explainer of the same model and settings for another target layer, reusing this one's
        recording of the model (building a second one would run the model again). Its buckets
        compile on first use. Raises ``UnknownLayerError`` as the constructor does."""
        other = copy.copy(self)
        other.target = self.graph.resolve(target_layer)
        other._build_step()
        return other

    # ---- metadata ---------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.graph.input_shape

    @property
    def num_classes(self) -> int:
        return self.graph.num_classes

    @property
    def info(self) -> ModelSummary:
        """What the worker reports: shapes, classes, target, candidate layers, buckets, modes."""
        if self._info is None:
            t = self.target
            h, w, c = self.input_shape
            head = self.graph.head
            self._info = ModelSummary(
                input_shape=(int(h), int(w), int(c)),
                num_classes=self.num_classes,
                target_layer=t.name,
                grid=(int(t.grid.h), int(t.grid.w)),
                channels=t.channels,
                cam_supported=t.cam_supported,
                cam_reason=t.cam_reason,
                layers=tuple(self.graph.layer_infos()),
                buckets=tuple(self.buckets),
                compile_mode=self.compile_mode,
                backend=self.backend,
                preprocessing=self._applied,
                score=self.score if head.invertible else "probability",
                methods=tuple(m for m in METHODS if m != "cam" or t.cam_supported),
                max_top_k=self.max_top_k,
                target_reason=t.reason,
                target_kind=t.grid.kind,
                prefix_tokens=t.grid.prefix,
                head=head.description,
                head_kind=head.kind,
                addressable=tuple(dict.fromkeys(c.name for c in self.graph.rec.calls)),
            )
        return self._info

    # ---- compilation ------------------------------------------------------------------------
    def warmup(self) -> float:
        """Run every batch bucket once, so that no later request compiles; returns seconds.

        That compiles each bucket's step under XLA, and traces graph mode's one step (the other
        buckets then run it, priming its kernels for their shapes). Any K and either input dtype
        reuse the step; the input is uint8 so that the backend's uint8 -> float32 cast before the
        step (an eager op JAX compiles per shape) is warmed too.
        """
        t0 = time.perf_counter()
        h, w, c = self.input_shape
        for b in self.buckets:
            codes = np.full(b, methods.CODES["gradcam"], np.int32)
            self.step(np.zeros((b, h, w, c), np.uint8), np.full((b, 1), -1, np.int32), codes)
        elapsed = time.perf_counter() - t0
        log.info(
            "warm-up of %s (%s, %s) took %.1fs", self.target.name, self.compile_mode, self.buckets, elapsed
        )
        return elapsed

    # ---- validation -------------------------------------------------------------------------
    def check_spec(self, spec: ItemSpec) -> None:
        """Raise the engine error a request for ``spec`` would cause (before any computation)."""
        if not isinstance(spec, ItemSpec):
            raise InvalidInputError(f"expected an ItemSpec, got {type(spec).__name__}")
        if spec.method not in METHODS:
            raise InvalidInputError(f"unknown method {spec.method!r}; valid: {', '.join(METHODS)}")
        if spec.target_layer not in (None, self.target.name):
            raise UnknownLayerError(
                f"this explainer's target layer is {self.target.name!r}, not {spec.target_layer!r}; "
                "build an Explainer for that layer"
            )
        if spec.method == "cam" and not self.target.cam_supported:
            raise CamNotSupportedError(
                f"CAM is not available for layer {self.target.name!r}: {self.target.cam_reason}"
            )
        n = self.num_classes
        if spec.class_index is not None:
            ci = spec.class_index
            if isinstance(ci, bool) or not isinstance(ci, (int, np.integer)) or not 0 <= ci < n:
                raise ClassIndexError(
                    f"class index {ci!r} is out of range: the model has {n} classes (0..{n - 1})"
                )
        else:
            k = spec.top_k
            limit = min(n, MAX_TOP_K)
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= limit:
                raise ClassIndexError(f"top_k {k!r} is out of range: valid 1..{limit}")

    def _check_images(self, images: Any) -> np.ndarray:
        arr = image_array(images)
        h, w, c = self.input_shape
        if arr.ndim != 4 or tuple(arr.shape[1:]) != (h, w, c):
            raise InvalidInputError(f"images must have shape (batch, {h}, {w}, {c}), got {arr.shape}")
        if arr.shape[0] == 0:
            raise InvalidInputError("images must hold at least one image")
        if arr.dtype == np.uint8:
            return arr
        if arr.dtype.kind in "iu":
            return self._integer_pixels(arr)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32, copy=False)
            if not np.isfinite(arr).all():
                raise InvalidInputError("float images contain NaN or infinity")
            check_preprocessed(arr, self.preprocessing)  # float pixels 0..255 for a tf model, ...
            return arr
        raise InvalidInputError(f"images must be uint8 or float32, got {arr.dtype}")

    def _integer_pixels(self, arr: np.ndarray) -> np.ndarray:
        """Integer images of another dtype than uint8 (int32/int64 from ``np.array(.., dtype=int)`` or
        a cast, uint16 from a 16-bit file) are pixels, never "already preprocessed" values: under
        preprocessing 'none' cast to float32 as uint8 is; under tf/caffe/torch, which take 8-bit
        pixels, taken as uint8 when every value is in 0..255 and refused otherwise."""
        if self.preprocessing == "none":
            return arr.astype(np.float32)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise InvalidInputError(
                f"{arr.dtype} images hold values {lo}..{hi}, but preprocessing {self.preprocessing!r} "
                "takes 8-bit pixels 0..255: scale them to uint8, or preprocess them yourself and pass "
                "float32 (taken as already preprocessed)"
            )
        return arr.astype(np.uint8)

    # ---- the batch API ----------------------------------------------------------------------
    def explain_batch(
        self, images: Any, specs: Sequence[ItemSpec], *, return_errors: bool = False
    ) -> list[ItemResult]:
        """Explain each image with its spec; one compiled step per chunk of at most max_batch_size.

        ``images``: (B, H, W, C) uint8 at the model's input size (other integer dtypes: pixels in
        0..255), or float already preprocessed.
        Returns one :class:`ItemResult` per image, in order. With ``return_errors`` an invalid spec
        gives that item an ``ItemResult`` whose ``error``/``message`` say why (the other items are
        computed); otherwise the first invalid spec raises its :class:`EngineError`.
        Raises :class:`InvalidInputError` for images of the wrong shape or dtype.
        """
        arr = self._check_images(images)
        if len(specs) != arr.shape[0]:
            raise InvalidInputError(f"got {arr.shape[0]} images but {len(specs)} item specs")
        errors: dict[int, ItemResult] = {}
        for i, spec in enumerate(specs):
            try:
                self.check_spec(spec)
            except EngineError as exc:
                if not return_errors:
                    raise
                errors[i] = ItemResult.failed(exc.kind, exc.message)
        results: list[Any] = [errors.get(i) for i in range(len(specs))]
        valid = [i for i in range(len(specs)) if i not in errors]
        for start in range(0, len(valid), self.max_batch_size):
            chunk = valid[start : start + self.max_batch_size]
            for i, res in zip(chunk, self._run_chunk(arr[chunk], [specs[i] for i in chunk]), strict=True):
                if res.error is not None and not return_errors:
                    raise InvalidInputError(f"image {i} of the batch: {res.message}")
                results[i] = res
        return results

    def _run_chunk(self, images: np.ndarray, specs: list[ItemSpec]) -> list[ItemResult]:
        b = images.shape[0]
        bucket = b if self.step.any_batch else next(x for x in self.buckets if x >= b)
        wanted = [1 if s.class_index is not None else int(s.top_k) for s in specs]
        kb = max(wanted)  # not a compiled shape: the step pads to max_top_k
        targets = np.full((bucket, kb), -1, np.int32)
        for i, s in enumerate(specs):
            if s.class_index is not None:
                targets[i, :] = int(s.class_index)
            else:
                targets[i, :] = -1 - np.minimum(np.arange(kb), wanted[i] - 1)
        if self._own_preprocessing is not None:
            images = np.asarray(self._own_preprocessing(images.astype(np.float32)), np.float32)
        if bucket > b:
            pad = np.zeros((bucket - b, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, pad])
        codes = np.full(bucket, methods.CODES["gradcam"], np.int32)  # the padding's: any will do
        codes[:b] = [methods.CODES[s.method] for s in specs]
        out = self.step(np.ascontiguousarray(images), targets, codes)
        classes = out.classes[:b]
        raw = out.maps[:b]
        eigen = [i for i, s in enumerate(specs) if s.method == "eigencam"]
        if eigen:  # made on the host from the activations the step returned for them (methods.eigencam)
            raw = raw.copy()
            acts = out.activations[eigen]
            finite = np.isfinite(acts).all(axis=(1, 2, 3))  # an SVD of NaN raises: left NaN, refused below
            raw[eigen] = np.nan
            raw[np.asarray(eigen)[finite]] = methods.eigencam(acts[finite], raw.shape[1])
        all_maps, all_flat = methods.normalise(raw)  # one pass per batch, each map on its own
        # A map is never NaN (DESIGN.md): an image whose output, or one of its maps, is not finite is
        # refused alone. One pass over the batch; a reason is worded only for such an image.
        output_finite = np.isfinite(out.probabilities).all(axis=1)
        scores_finite, maps_finite = np.isfinite(out.scores), np.isfinite(raw).all(axis=(2, 3))
        results = []
        for i in range(b):
            k = wanted[i]
            output_ok = output_finite[i] and scores_finite[i, :k].all()
            if not (output_ok and maps_finite[i, :k].all()):
                bad = int(classes[i, :k][~maps_finite[i, :k]][0]) if output_ok else None
                why = not_finite_reason(bad, self.target.name, specs[i].method)
                results.append(ItemResult.failed(ErrorKind.INVALID_INPUT, why))
                continue
            maps, flat = all_maps[i], all_flat[i]
            results.append(
                ItemResult(
                    probabilities=out.probabilities[i].astype(np.float32, copy=True),
                    maps=[
                        ClassMap(int(classes[i, k]), float(out.scores[i, k]), maps[k], bool(flat[k]))
                        for k in range(wanted[i])
                    ],
                )
            )
        return results
