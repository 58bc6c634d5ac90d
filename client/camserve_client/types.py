"""Plain-Python views of the wire messages: what goes in (images, options) and what comes out.

Kept separate from the channel code so that request building and response parsing are shared by
the sync and asyncio clients and by the load generator.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from camserve_proto import explain_pb2 as pb
from camserve_proto import vocabulary as wire

from camserve_client.heatmaps import resize_heatmap

ImageLike = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray

#: Method name -> wire enum value (names derived from the .proto: camserve_proto.vocabulary).
METHODS: dict[str, int] = dict(wire.METHODS)
_METHOD_NAMES = {v: k for k, v in METHODS.items()}
_SIZES = wire.HEATMAP_SIZES
_FORMATS: dict[str | None, int] = {None: pb.IMAGE_FORMAT_UNSPECIFIED, **wire.IMAGE_FORMATS, "jpg": pb.JPEG}
_COLORMAPS = wire.COLORMAPS


def method_enum(method: str | int) -> int:
    """Accept 'gradcam', 'Grad-CAM', 'GRAD_CAM', 'gradcam_plus_plus', ... or the enum value itself."""
    if isinstance(method, int):
        if method not in _METHOD_NAMES:
            raise ValueError(f"unknown method enum {method}")
        return method
    key = str(method).strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    key = key.replace("plusplus", "++").replace("pp", "++") if key.startswith("gradcam") else key
    if key not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    return METHODS[key]


def method_name(value: int) -> str:
    """The method name for a wire enum (the server's default, 'gradcam', for unset)."""
    return _METHOD_NAMES.get(value, wire.DEFAULTS["method"])


@dataclass(frozen=True)
class OutputOptions:
    """What each explanation carries back (OutputOptions on the wire).

    size: "grid" (the conv grid, smallest and exact), "input" (model input size) or "original"
    (the size of the image as sent). heatmap: include the float32 map. heatmap_png: add an 8-bit
    PNG of it. overlay: None, "png" or "jpeg" colour overlay on the image, blended with `alpha`.
    tensor_size: the float32 map's own size when it should differ from `size` (None: see below).

    Sized to the transport: a float32 map at the original size is fetched at the conv grid and
    resized here exactly as the server would (:attr:`resize_here`, :func:`~camserve_client.heatmaps.
    resize_heatmap`), so a 12-megapixel photo's map costs a few hundred bytes on the wire instead of
    48 MB per class. Set ``tensor_size="original"`` to have the server send it whole.
    """

    size: str = wire.DEFAULTS["heatmap_size"]
    heatmap: bool = True
    heatmap_png: bool = False
    overlay: str | None = None
    alpha: float = wire.DEFAULTS["overlay_alpha"]
    colormap: str = wire.DEFAULTS["colormap"]
    jpeg_quality: int = wire.DEFAULTS["jpeg_quality"]
    tensor_size: str | None = None

    @property
    def resize_here(self) -> bool:
        """True when the float32 map travels at the conv grid and this client resizes it to the original."""
        return bool(self.heatmap) and self.size == "original" and self.tensor_size is None

    @classmethod
    def coerce(cls, value: OutputLike) -> OutputOptions:
        """Accept an OutputOptions, a dict of its fields, or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = set(value) - known
            if unknown:
                raise ValueError(f"unknown output option(s) {sorted(unknown)}; valid: {sorted(known)}")
            return cls(**value)
        raise TypeError(f"output must be OutputOptions or a dict, not {type(value).__name__}")

    def to_proto(self) -> pb.OutputOptions:
        """Validate and convert; errors name the valid values."""
        for name, size in (("size", self.size), ("tensor_size", self.tensor_size or "grid")):
            if size not in _SIZES:
                raise ValueError(f"output {name} {size!r} is not one of {list(_SIZES)}")
        overlay = self.overlay.lower() if isinstance(self.overlay, str) else self.overlay
        if overlay not in _FORMATS:
            raise ValueError(f"overlay {self.overlay!r} is not one of None, 'png', 'jpeg'")
        if self.colormap.lower() not in _COLORMAPS:
            raise ValueError(f"colormap {self.colormap!r} is not one of {list(_COLORMAPS)}")
        if not 0.0 < float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        tensor_size = "grid" if self.resize_here else self.tensor_size
        return pb.OutputOptions(
            size=_SIZES[self.size], omit_tensor=not self.heatmap, heatmap_png=bool(self.heatmap_png),
            overlay=_FORMATS[overlay], overlay_alpha=float(self.alpha),
            colormap=_COLORMAPS[self.colormap.lower()], jpeg_quality=int(self.jpeg_quality),
            tensor_size=_SIZES[tensor_size] if tensor_size else 0)


OutputLike = OutputOptions | Mapping[str, Any] | None


def image_to_proto(image: ImageLike) -> pb.Image:
    """Encode a path, encoded bytes, a buffer, or an (H,W[,C]) uint8/float32 array as a wire Image.

    uint8 arrays travel as raw pixels (no encode/decode on either side): C = 1 gray, 2 gray + alpha,
    3 RGB or 4 RGBA (the server drops alpha, as it does for encoded images with alpha). float arrays
    travel as FLOAT32 and must already be preprocessed at the model's input size.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            return pb.Image(encoded=path.read_bytes())
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {path}") from None
        except IsADirectoryError:
            raise ValueError(f"image path is a directory, not a file: {path}") from None
    if isinstance(image, bytes):
        if not image:
            raise ValueError("image bytes are empty")
        return pb.Image(encoded=image)
    if isinstance(image, (bytearray, memoryview)):
        view = memoryview(image)
        if view.ndim <= 1 and view.format in ("B", "b", "c"):
            if view.nbytes == 0:
                raise ValueError("image buffer is empty")
            return pb.Image(encoded=view.tobytes())
        image = np.asarray(view)
    if isinstance(image, np.ndarray):
        return pb.Image(tensor=array_to_tensor(image))
    raise TypeError(
        f"cannot send an image of type {type(image).__name__}: pass a file path, encoded bytes, "
        "or a NumPy array (H, W, C) of uint8 or float32")


def array_to_tensor(array: np.ndarray) -> pb.Tensor:
    """(H,W), (H,W,C) or (1,H,W,C) uint8 / float32 array -> Tensor (little-endian, row-major)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[0] != 1):
        raise ValueError(f"image array must be (H, W), (H, W, C) or (1, H, W, C); got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"image array is empty (shape {array.shape})")
    if array.dtype == np.uint8:
        dtype, wire = pb.UINT8, np.dtype("u1")
    elif array.dtype.kind == "f" and array.dtype.itemsize in (2, 4, 8):  # any byte order
        dtype, wire = pb.FLOAT32, np.dtype("<f4")
    else:
        raise ValueError(
            f"image array dtype {array.dtype} is not supported: use uint8 pixels in [0, 255] "
            "(e.g. arr.astype(np.uint8)) or float32 already preprocessed for the model")
    data = np.ascontiguousarray(array, dtype=wire).tobytes()
    return pb.Tensor(dtype=dtype, shape=list(array.shape), data=data)


def tensor_to_array(tensor: pb.Tensor) -> np.ndarray:
    """Wire Tensor -> NumPy array (a copy, writable)."""
    wire = {pb.UINT8: np.dtype("u1"), pb.FLOAT32: np.dtype("<f4")}.get(tensor.dtype)
    if wire is None:
        raise ValueError(f"server sent a tensor of unknown dtype {tensor.dtype}")
    shape = tuple(int(s) for s in tensor.shape)
    expected = int(np.prod(shape, dtype=np.int64)) * wire.itemsize
    if expected != len(tensor.data):
        raise ValueError(f"server tensor has {len(tensor.data)} bytes for shape {shape}, expected {expected}")
    return np.frombuffer(tensor.data, dtype=wire).reshape(shape).astype(wire.newbyteorder("="), copy=True)


def build_request(image: ImageLike | pb.Image, *, model: str | None = None, model_version: int = 0,
                  method: str | int = "gradcam", class_index: int | None = None, top_k: int = 1,
                  target_layer: str | None = None, output: OutputLike = None,
                  request_id: str | None = None) -> pb.ExplainRequest:
    """One ExplainRequest from Python arguments (validation a client can do without the model)."""
    if top_k is None or int(top_k) < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    class_index = _class_index(class_index)
    req = pb.ExplainRequest(
        model=model or "", model_version=int(model_version or 0),
        image=image if isinstance(image, pb.Image) else image_to_proto(image),
        method=method_enum(method), top_k=int(top_k), target_layer=target_layer or "",
        output=OutputOptions.coerce(output).to_proto(), request_id=request_id or "")
    if class_index is not None:
        req.class_index = class_index
    return req


def _class_index(value: Any) -> int | None:
    """An int, a NumPy integer or a 0-d integer array or tensor (``np.argmax``, ``tf.argmax``), >= 0;
    a float or a bool is refused (``int(3.7)`` would ask for class 3)."""
    if value is None:
        return None
    try:
        index = -1 if isinstance(value, (bool, np.bool_)) else operator.index(value)
    except TypeError:
        index = -1
    if index < 0:
        raise ValueError(f"class_index must be a non-negative int or None, got {value!r}")
    return index


@dataclass(frozen=True)
class Prediction:
    """One of the model's best classes: index (0-based), label, probability in [0, 1]."""

    class_index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Explanation:
    """One explained class. heatmap: (h, w) float32 in [0, 1], or None if omitted."""

    class_index: int
    label: str
    probability: float
    score: float
    heatmap: np.ndarray | None
    heatmap_png: bytes | None
    overlay: bytes | None
    all_zero: bool


@dataclass(frozen=True)
class Timing:
    """Server-side timing in milliseconds; latency_ms is the round trip seen by this client."""

    queue_ms: float
    compute_ms: float
    batch_size: int
    total_ms: float
    latency_ms: float = 0.0


@dataclass(frozen=True)
class ExplainResult:
    """One image's answer: ``explanations`` (one per explained class, best first), the model's
    ``top_predictions``, ``timing`` (server side, ms) and what ran (model, method, target_layer).
    ``heatmap``, ``overlay``, ``label``, ``class_index``: the first explanation's."""

    request_id: str
    model: str
    model_version: int
    method: str
    target_layer: str
    explanations: list[Explanation]
    top_predictions: list[Prediction]
    timing: Timing
    score_kind: str = "logits"  # what Explanation.score holds: "logits" or "probability"

    @property
    def heatmap(self) -> np.ndarray | None:
        """The first explained class's heatmap (the usual single-class case)."""
        return self.explanations[0].heatmap if self.explanations else None

    @property
    def overlay(self) -> bytes | None:
        return self.explanations[0].overlay if self.explanations else None

    @property
    def class_index(self) -> int | None:
        return self.explanations[0].class_index if self.explanations else None

    @property
    def label(self) -> str | None:
        return self.explanations[0].label if self.explanations else None


def parse_response(resp: pb.ExplainResponse, latency_ms: float = 0.0,
                   output: OutputLike = None) -> ExplainResult:
    """Wire ExplainResponse -> ExplainResult with NumPy heatmaps.

    ``output``: the options the request was built from; when the map travelled at the conv grid for
    the original size (:attr:`OutputOptions.resize_here`) it is resized here to ``original_size``.
    """
    size = tuple(resp.original_size) if OutputOptions.coerce(output).resize_here else ()

    def heatmap(e: pb.ClassExplanation) -> np.ndarray | None:
        if not (e.HasField("heatmap") and e.heatmap.data):
            return None
        m = tensor_to_array(e.heatmap)
        return resize_heatmap(m, *size) if len(size) == 2 else m

    exps = [
        Explanation(
            class_index=e.class_index, label=e.label, probability=float(e.probability),
            score=float(e.score), heatmap=heatmap(e),
            heatmap_png=bytes(e.heatmap_png) or None, overlay=bytes(e.overlay) or None,
            all_zero=bool(e.all_zero))
        for e in resp.explanations
    ]
    preds = [Prediction(p.class_index, p.label, float(p.probability)) for p in resp.top_predictions]
    t = resp.timing
    return ExplainResult(
        request_id=resp.request_id, model=resp.model, model_version=int(resp.model_version),
        method=method_name(resp.method), target_layer=resp.target_layer, explanations=exps,
        top_predictions=preds,
        timing=Timing(queue_ms=t.queue_ms, compute_ms=t.compute_ms, batch_size=t.batch_size,
                      total_ms=t.total_ms, latency_ms=latency_ms),
        score_kind=resp.score_kind or "logits")


@dataclass(frozen=True)
class LayerInfo:
    """A layer a target may name: its grid (h, w) and channels; ``kind`` "conv" (a conv map) or
    "tokens" (a vision transformer's tokens on their patch grid, after ``prefix_tokens``)."""

    name: str
    grid: tuple[int, ...]
    channels: int
    cam_supported: bool
    kind: str = "conv"
    prefix_tokens: int = 0


@dataclass(frozen=True)
class ModelInfo:
    """What the server reports about a model (GetModel / ListModels)."""

    name: str
    version: int
    ready: bool
    input_shape: tuple[int, ...]
    preprocessing: str  # caffe | tf | torch | none, or own:<class> (the model's own, e.g. keras-hub's)
    num_classes: int
    labels: list[str]
    default_target_layer: str
    layers: list[LayerInfo]
    methods: list[str]
    max_batch_size: int
    batch_buckets: list[int]
    max_queue_delay_ms: float
    backend: str
    compile_mode: str
    default_target_reason: str = ""  # why the default target layer was chosen
    score_kind: str = "logits"  # what the maps differentiate: "logits" or "probability"
    head: str = ""  # how the server read the model's output head
    head_kind: str = ""  # softmax | sigmoid | binary | probability
    extra: dict[str, Any] = field(default_factory=dict)


def parse_model_info(m: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=m.name, version=int(m.version), ready=bool(m.ready),
        input_shape=tuple(int(s) for s in m.input_shape), preprocessing=m.preprocessing,
        num_classes=int(m.num_classes), labels=list(m.labels), default_target_layer=m.default_target_layer,
        layers=[LayerInfo(la.name, tuple(int(g) for g in la.grid), int(la.channels), bool(la.cam_supported),
                          la.kind or "conv", int(la.prefix_tokens)) for la in m.layers],
        methods=[method_name(x) for x in m.methods], max_batch_size=int(m.max_batch_size),
        batch_buckets=[int(b) for b in m.batch_buckets], max_queue_delay_ms=float(m.max_queue_delay_ms),
        backend=m.backend, compile_mode=m.compile_mode, default_target_reason=m.default_target_reason,
        score_kind=m.score_kind or "logits", head=m.head, head_kind=m.head_kind)


def per_image(value: Any, n: int, name: str) -> Sequence[Any]:
    """Broadcast a scalar option to n images, or check a per-image sequence (a list, tuple or 1-D
    array or tensor) has length n."""
    if not isinstance(value, (list, tuple, str, bytes)) and np.ndim(value) == 1:
        value = list(value)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} images")
        return value
    return [value] * n
