"""The records every layer of the server passes on as they are, and the one vocabulary of failures.

One image's request is an :class:`ItemSpec`; its answer an :class:`ItemResult` holding one
:class:`ClassMap` per explained class (or an error); what a worker reports about a loaded model is a
:class:`ModelSummary`. The front builds specs, the scheduler queues them, the worker hands them to the
engine, and the results travel back the same way, across the worker's pipe included (pickled as
they are), without being repacked under new names. Plain dataclasses of builtins and NumPy arrays:
importing this module loads neither TensorFlow nor gRPC.

Failures carry an :class:`ErrorKind`: raised as :class:`Failure` inside a process, carried in
``ItemResult.error`` across the worker's pipe. ``camserve.front.status`` holds the one table from
kind to gRPC status code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class ErrorKind(enum.Enum):
    """Why a request failed; the front maps each kind to one gRPC status code."""

    INVALID_INPUT = "invalid_input"          # the image, tensor or options a caller sent
    UNKNOWN_LAYER = "unknown_layer"          # no such target layer, or it has no spatial grid
    CLASS_INDEX = "class_index"              # class index or top_k outside the model's classes
    CAM_NOT_SUPPORTED = "cam_not_supported"  # CAM where the layer does not feed GAP -> one Dense
    UNKNOWN_MODEL = "unknown_model"          # no such model (or version) in the repository
    QUEUE_FULL = "queue_full"                # the model's queue is full: retry later
    BUSY = "busy"                            # the server's in-flight limit is reached: retry later
    TOO_LARGE = "too_large"                  # a reply or request over a size limit: never retried
    DEADLINE = "deadline"                    # the caller's deadline passed before the answer
    NOT_READY = "not_ready"                  # loading, or no live worker: retry
    DRAINING = "draining"                    # this server is shutting down: retry (elsewhere, or later)
    WORKER_LOST = "worker_lost"              # the worker computing it died: retry
    UNAUTHENTICATED = "unauthenticated"      # missing or wrong bearer token
    UNIMPLEMENTED = "unimplemented"          # a protocol method (or extension) this server does not serve
    INTERNAL = "internal"                    # a bug on the server, never the caller's fault


class Failure(Exception):
    """An error a layer below the front reports, with its :class:`ErrorKind` and a message for the caller.

    The message says what was wrong and what would have been valid; it is sent to the caller as
    the status details, so it never holds secrets or tracebacks.
    """

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind

    @property
    def message(self) -> str:
        return str(self)

    def __reduce__(self) -> tuple[object, ...]:
        return (Failure, (self.message, self.kind))


@dataclass(frozen=True)
class ItemSpec:
    """What to explain for one image.

    ``method``: one of :data:`camserve.vocabulary.METHODS`. ``class_index`` set: one map for that
    class (``top_k`` is then 1). Unset: maps for the ``top_k`` best classes of the image, best first.
    ``target_layer``: a layer name or ``outer/inner`` path; None = the model's default target.
    """

    method: str = "gradcam"
    class_index: int | None = None
    top_k: int = 1
    target_layer: str | None = None

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled per image across processes: a plain tuple is ~5x cheaper than the dataclass default.
        return (ItemSpec, (self.method, self.class_index, self.top_k, self.target_layer))


@dataclass
class ClassMap:
    """One explained class: its index, its score (logit or probability) and its normalised heatmap."""

    class_index: int
    score: float
    heatmap: np.ndarray  # (h, w) float32 in [0, 1]
    all_zero: bool  # the raw map had no positive contrast: heatmap is all zeros, not NaN

    def __reduce__(self) -> tuple[object, ...]:
        return (_class_map, (self.class_index, self.score, *_array_state(self.heatmap), self.all_zero))


@dataclass
class ItemResult:
    """The answer for one image: probabilities and maps, or an error; times in seconds.

    ``probabilities``: (N,) float32, the model's own output probabilities. ``error`` set means the
    item failed (``message`` says why) and ``maps`` is empty. ``queue_s`` (waiting for a batch and a
    worker), ``compute_s`` (the batch's step on the worker) and ``batch_size`` (real images in that
    batch) are filled in by the scheduler.
    """

    probabilities: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    maps: list[ClassMap] = field(default_factory=list)
    error: ErrorKind | None = None
    message: str = ""
    queue_s: float = 0.0
    compute_s: float = 0.0
    batch_size: int = 0

    @classmethod
    def failed(cls, kind: ErrorKind, message: str) -> ItemResult:
        return cls(error=kind, message=message)

    def __reduce__(self) -> tuple[object, ...]:
        # Every image's answer crosses two pipes (worker -> scheduler -> front end): arrays as raw
        # bytes and fields as a tuple cost ~1/3 of the dataclass + ndarray default (measured 62 -> 20 us).
        return (_item_result, (*_array_state(self.probabilities), self.maps, self.error, self.message,
                               self.queue_s, self.compute_s, self.batch_size))


def _array_state(a: np.ndarray) -> tuple[bytes, str, tuple[int, ...]]:
    a = np.asarray(a)
    return a.tobytes(), a.dtype.str, a.shape


def _array(data: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _class_map(class_index: int, score: float, data: bytes, dtype: str, shape: tuple[int, ...],
               all_zero: bool) -> ClassMap:
    return ClassMap(class_index, score, _array(data, dtype, shape), all_zero)


def _item_result(data: bytes, dtype: str, shape: tuple[int, ...], maps: list[ClassMap],
                 error: ErrorKind | None, message: str, queue_s: float, compute_s: float,
                 batch_size: int) -> ItemResult:
    return ItemResult(_array(data, dtype, shape), maps, error, message, queue_s, compute_s, batch_size)


@dataclass(frozen=True)
class LayerInfo:
    """A candidate target layer: path name ("outer/inner/sub"; "name@k" = the k-th call of a layer
    called several times), its grid and channels, and whether CAM applies there.

    ``kind`` "conv": the output is (B, h, w, C). "tokens": it is (B, N, C) with N = prefix_tokens +
    h * w; maps are on the patch grid (h, w) after dropping the ``prefix_tokens`` leading tokens.
    """

    name: str
    grid: tuple[int, int]  # (h, w)
    channels: int
    cam_supported: bool
    kind: str = "conv"
    prefix_tokens: int = 0


@dataclass(frozen=True)
class ModelSummary:
    """What a worker reports about a loaded model; the front validates requests against it.

    ``max_top_k`` is the most classes one item may ask for (the engine's limit, capped by the
    number of classes); ``methods`` the methods usable with the default target layer.
    """

    input_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int
    target_layer: str
    grid: tuple[int, int]  # (h, w) of the target layer
    channels: int
    cam_supported: bool
    cam_reason: str  # why CAM is refused ("" when supported)
    layers: tuple[LayerInfo, ...]
    buckets: tuple[int, ...]
    compile_mode: str  # the resolved mode: "xla" or "graph"
    backend: str
    preprocessing: str  # what runs: caffe | tf | torch | none, or own:<class> (vocabulary.OWN_PREPROCESSOR)
    score: str  # what ClassMap.score holds: "logits" or "probability" (forced when head_kind says so)
    methods: tuple[str, ...]
    max_top_k: int
    target_reason: str = ""  # why this target: "requested", or how the automatic rule chose it
    target_kind: str = "conv"  # "conv" or "tokens" (see LayerInfo)
    prefix_tokens: int = 0
    head: str = ""  # how the output head was read (where the logits are taken), in words
    head_kind: str = "softmax"  # "softmax" | "sigmoid" (multi-label) | "binary" (one unit) | "probability"
    addressable: tuple[str, ...] = ()  # every layer call a target may name (``layers`` are the listed ones)

    def layer(self, name: str) -> LayerInfo | None:
        """The candidate layer called ``name`` (a full path), or None."""
        return self._by_name().get(name)

    def _by_name(self) -> dict[str, LayerInfo]:
        # Built once per summary (a request looks its layer up here; summaries are immutable).
        cached = self.__dict__.get("_layers_by_name")
        if cached is None:
            cached = {x.name: x for x in self.layers}
            object.__setattr__(self, "_layers_by_name", cached)
        return cached
