"""Request validation against the model's summary, and the error -> gRPC status mapping.

Why validation runs in the front and not in the worker: a bad request must fail before it takes a
queue slot or a batch position, with a message that says what was wrong and what is valid. The
checks use the metadata the worker reported at start-up (`dispatcher.model_summary`: classes,
layers, CAM support), so they agree with what the engine would say. :func:`map_error` is the one
place where exceptions from below (dispatcher, engine, codec) become status codes; every error a
caller can cause maps to a precise code, and INTERNAL is reserved for bugs.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from camserve_client._proto import explain_pb2 as pb

from camserve.codec import ImageError, OutputSpec
from camserve.repository import ModelConfig
from camserve.work import (
    BatchFailedError,
    DeadlineExceededError,
    ExplainError,
    ItemRequest,
    NotReadyError,
    QueueFullError,
    UnknownModelError,
    WorkerLostError,
)

#: Wire enum -> engine method name (METHOD_UNSPECIFIED means the default, Grad-CAM).
METHODS: dict[int, str] = {
    pb.CAM: "cam", pb.GRAD_CAM: "gradcam", pb.GRAD_CAM_PLUS_PLUS: "gradcam++", pb.LAYER_CAM: "layercam",
    pb.HIRES_CAM: "hirescam", pb.XGRAD_CAM: "xgradcam", pb.EIGEN_CAM: "eigencam",
}
METHOD_ENUMS: dict[str, int] = {name: value for value, name in METHODS.items()}
SIZES = {pb.HEATMAP_SIZE_UNSPECIFIED: "grid", pb.CONV_GRID: "grid", pb.MODEL_INPUT: "input",
         pb.ORIGINAL: "original"}
OVERLAYS = {pb.IMAGE_FORMAT_UNSPECIFIED: None, pb.PNG: "png", pb.JPEG: "jpeg"}
COLORMAPS = {pb.COLORMAP_UNSPECIFIED: "jet", pb.JET: "jet", pb.TURBO: "turbo", pb.VIRIDIS: "viridis",
             pb.INFERNO: "inferno"}

MAX_TOP_K = 16
MAX_REQUEST_ID = 256


class RequestError(Exception):
    """An RPC must end with `code` and `message` (raised inside handlers, turned into an abort)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _names(values: list[str], limit: int = 12) -> str:
    shown = ", ".join(values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


@dataclass(frozen=True)
class Prepared:
    """A validated Explain request, ready to decode and queue."""

    config: ModelConfig
    summary: Mapping[str, Any]
    spec: ItemRequest
    output: OutputSpec
    method_enum: int
    target_layer: str
    request_id: str
    image: pb.Image


_LAYER_CACHE: dict[int, tuple[Any, dict[str, Any]]] = {}


def _layers_by_name(summary: Mapping[str, Any]) -> dict[str, Any]:
    """{layer name: layer info} of a model summary, built once per summary object (per request is waste)."""
    cached = _LAYER_CACHE.get(id(summary))
    if cached is None or cached[0] is not summary:
        if len(_LAYER_CACHE) > 64:  # summaries are replaced when workers restart: stay bounded
            _LAYER_CACHE.clear()
        cached = (summary, {str(x["name"]): x for x in summary.get("layers", [])})
        _LAYER_CACHE[id(summary)] = cached
    return cached[1]


def map_error(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status for an exception raised below the service (dispatcher, engine, codec)."""
    if isinstance(exc, RequestError):
        return exc.code, exc.message
    if isinstance(exc, ImageError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, QueueFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, DeadlineExceededError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
    if isinstance(exc, WorkerLostError):
        return grpc.StatusCode.UNAVAILABLE, f"the worker computing this request was lost; retry ({exc})"
    if isinstance(exc, NotReadyError):
        return grpc.StatusCode.UNAVAILABLE, str(exc) or "the model is not ready; retry later"
    if isinstance(exc, UnknownModelError):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, ExplainError):
        if exc.kind == "cam_not_supported":
            return grpc.StatusCode.FAILED_PRECONDITION, exc.message
        return grpc.StatusCode.INVALID_ARGUMENT, exc.message
    if isinstance(exc, BatchFailedError):
        return grpc.StatusCode.INTERNAL, f"the worker failed on this batch (a server bug, see its log): {exc}"
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"



class RequestValidator:
    """The servicer's checks that need no pixels (``prepare``); mixed into ``ExplainServicer``,
    which provides ``repository``, ``default_model`` and ``dispatcher``."""

    repository: dict[str, ModelConfig]
    default_model: str
    dispatcher: Any

    def _model(self, name: str, version: int) -> ModelConfig:
        model = name or self.default_model
        cfg = self.repository.get(model)
        if cfg is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model {name!r} is not served; served models: "
                               f"{_names(list(self.repository))}")
        if version not in (0, cfg.version):
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model {model!r} has no version {version}; served version: {cfg.version} "
                               "(0 = the newest)")
        return cfg

    def _summary(self, cfg: ModelConfig) -> Mapping[str, Any]:
        summary = self.dispatcher.model_summary(cfg.name)
        if summary is None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE,
                               f"model {cfg.name!r} is still loading or no worker serves it; retry later")
        return summary

    def prepare(self, request: pb.ExplainRequest) -> Prepared:
        """Every check that needs no pixels; raises RequestError with the code and a clear message."""
        cfg = self._model(request.model, request.model_version)
        summary = self._summary(cfg)
        num_classes = int(summary["num_classes"])
        if request.method not in (pb.METHOD_UNSPECIFIED, *METHODS):
            raise invalid(f"unknown method {request.method}; valid: "
                          f"{', '.join(pb.Method.Name(m) for m in METHODS)}")
        method_enum = request.method or pb.GRAD_CAM
        method = METHODS[method_enum]
        class_index: int | None = None
        top_k = request.top_k or 1
        if request.HasField("class_index"):
            class_index = request.class_index
            if not 0 <= class_index < num_classes:
                raise invalid(f"class_index {class_index} is out of range: model {cfg.name!r} has "
                              f"{num_classes} classes (0..{num_classes - 1})")
            if request.top_k not in (0, 1):
                raise invalid("set class_index to explain one class, or top_k to explain the k best; "
                              "not both")
        elif not 1 <= top_k <= min(num_classes, MAX_TOP_K):
            raise invalid(f"top_k {request.top_k} is out of range: 1..{min(num_classes, MAX_TOP_K)} "
                          f"for model {cfg.name!r} (0 means 1)")
        layer_name, layer = self._layer(cfg, summary, request.target_layer)
        if method == "cam" and not layer.get("cam_supported", False):
            reason = summary.get("cam_reason") if layer_name == summary.get("target_layer") else ""
            able = [str(x["name"]) for x in summary.get("layers", []) if x.get("cam_supported")]
            where = (f"layers where CAM works: {_names(able)}" if able
                     else "no layer of this model feeds global average pooling then one Dense layer")
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"CAM is not available on layer {layer_name!r} of model {cfg.name!r}: "
                               f"{reason or 'it does not feed global average pooling then one Dense'}"
                               f"; {where}; GRAD_CAM works on any layer")
        output = self._output(request.output)
        rid = request.request_id
        if len(rid) > MAX_REQUEST_ID:
            raise invalid(f"request_id is {len(rid)} characters; at most {MAX_REQUEST_ID}")
        which = request.image.WhichOneof("source")
        if which is None:
            raise invalid("the request has no image: set image.encoded (JPEG/PNG/WebP/BMP bytes) "
                          "or image.tensor")
        target = None if layer_name == summary.get("target_layer") else layer_name
        spec = ItemRequest(method=method, class_index=class_index,
                           top_k=1 if class_index is not None else top_k, target_layer=target)
        return Prepared(config=cfg, summary=summary, spec=spec, output=output, method_enum=method_enum,
                        target_layer=layer_name, request_id=rid or uuid.uuid4().hex, image=request.image)

    @staticmethod
    def _layer(cfg: ModelConfig, summary: Mapping[str, Any], name: str) -> tuple[str, Mapping[str, Any]]:
        default = str(summary.get("target_layer", ""))
        wanted = name or default
        by_name = _layers_by_name(summary)
        if wanted in by_name:
            return wanted, by_name[wanted]
        nested = [n for n in by_name if n.endswith("/" + wanted)]
        if len(nested) == 1:
            return nested[0], by_name[nested[0]]
        if not name:  # the default layer is not among the candidates: trust the engine's report
            return default, {"name": default, "cam_supported": bool(summary.get("cam_supported"))}
        if len(nested) > 1:
            raise invalid(f"target_layer {name!r} is ambiguous in model {cfg.name!r}: {_names(nested)}; "
                          "use the full 'outer/inner' path")
        raise invalid(f"model {cfg.name!r} has no target layer {name!r} (a layer with a 4-D output); "
                      f"valid: {_names(list(reversed(list(by_name))))}")

    @staticmethod
    def _output(opt: pb.OutputOptions) -> OutputSpec:
        if opt.size not in SIZES:
            raise invalid(f"unknown output.size {opt.size}; valid: CONV_GRID, MODEL_INPUT, ORIGINAL")
        if opt.overlay not in OVERLAYS:
            raise invalid(f"unknown output.overlay {opt.overlay}; valid: PNG, JPEG (or unset for none)")
        if opt.colormap not in COLORMAPS:
            raise invalid(f"unknown output.colormap {opt.colormap}; valid: JET, TURBO, VIRIDIS, INFERNO")
        alpha = float(opt.overlay_alpha)
        if not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
            raise invalid(f"output.overlay_alpha {alpha} must be in (0, 1] (0 means 0.4)")
        if not 0 <= opt.jpeg_quality <= 100:
            raise invalid(f"output.jpeg_quality {opt.jpeg_quality} must be in 1..100 (0 means 90)")
        return OutputSpec(size=SIZES[opt.size], tensor=not opt.omit_tensor, png=opt.heatmap_png,
                          overlay=OVERLAYS[opt.overlay], alpha=alpha or 0.4, colormap=COLORMAPS[opt.colormap],
                          jpeg_quality=opt.jpeg_quality or 90)
