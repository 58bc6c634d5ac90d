"""Request validation: what a caller asks for one image, checked against the model before any pixel.

Why at the edge, against the worker's report: a bad request must fail before it takes a queue slot or
a batch position, with a message that says what was wrong and what is valid. The checks read the
:class:`~camserve.records.ModelSummary` the worker reported at start-up (classes, candidate layers,
CAM support, the top-k limit), so they agree with what the engine would say; the wire's words come
from ``camserve_proto.vocabulary``. Every refusal is a :class:`~camserve.records.Failure`.

Both protocols use the same checks with typed values: :meth:`RequestParser.item_spec` (method, class
index, top-k, target layer -> an :class:`~camserve.records.ItemSpec`) and :func:`output_spec` (heatmap
size and overlay options -> an :class:`~camserve.front.codec.OutputSpec`). :meth:`RequestParser.prepare`
maps a camserve.v1 ExplainRequest's enums onto them; ``camserve.front.oip_infer`` maps the Open
Inference Protocol's parameters.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from camserve_proto import explain_pb2 as pb
from camserve_proto import vocabulary as wire

from camserve.front.codec import OutputSpec
from camserve.front.status import shown
from camserve.records import ErrorKind, Failure, ItemSpec, LayerInfo, ModelSummary
from camserve.repository import ModelConfig

#: ``LayerInfo.kind`` of a layer the model calls but the summary does not list (the engine decides).
UNLISTED = "unlisted"

__all__ = ["Prepared", "RequestParser", "invalid", "output_spec"]

_METHOD = {v: k for k, v in wire.METHODS.items()}
_SIZE = {v: k for k, v in wire.HEATMAP_SIZES.items()}
_FORMAT = {v: k for k, v in wire.IMAGE_FORMATS.items()}
_COLORMAP = {v: k for k, v in wire.COLORMAPS.items()}


def invalid(message: str) -> Failure:
    return Failure(message, ErrorKind.INVALID_INPUT)


def _names(values: list[str], limit: int = 12) -> str:
    shown = ", ".join(values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _enum_names(enum: type, values: Mapping[int, str]) -> str:
    return ", ".join(enum.Name(v) for v in values)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Prepared:
    """A validated Explain request, ready to decode and queue."""

    config: ModelConfig
    summary: ModelSummary
    spec: ItemSpec
    output: OutputSpec
    method_enum: int
    target_layer: str  # the full path of the layer explained (the default one included)
    request_id: str
    image: pb.Image
    sent_shape: tuple[int, int, int] = (0, 0, 0)  # (H, W, C) as sent, once checked (C 0: encoded)


class RequestParser:
    """Validates requests against the served models' configs and the workers' summaries.

    ``summaries`` is called with a model name and returns its :class:`ModelSummary`, or None while
    no worker has reported it (the request is then refused ``NOT_READY``).
    """

    def __init__(self, repository: Mapping[str, ModelConfig], summaries: object) -> None:
        if not repository:
            raise ValueError("the front needs at least one model")
        self.repository = dict(repository)
        self.default_model = next(iter(self.repository))
        self._summary = summaries

    def model(self, name: str, version: int = 0) -> ModelConfig:
        """The served model ``name`` ('' = the default model) at ``version`` (0 = newest)."""
        model = name or self.default_model
        cfg = self.repository.get(model)
        if cfg is None:
            raise Failure(f"model {shown(name)} is not served; served models: "
                          f"{_names(list(self.repository))}", ErrorKind.UNKNOWN_MODEL)
        if version not in (0, cfg.version):
            raise Failure(f"model {model!r} has no version {version}; served version: {cfg.version} "
                          "(0 = the newest)", ErrorKind.UNKNOWN_MODEL)
        return cfg

    def summary(self, cfg: ModelConfig) -> ModelSummary:
        summary = self._summary(cfg.name)  # type: ignore[operator]
        if summary is None:
            raise Failure(f"model {cfg.name!r} is still loading or no worker serves it; retry later",
                          ErrorKind.NOT_READY)
        return summary

    def fields(self, request: pb.ExplainRequest) -> tuple[ModelConfig, OutputSpec]:
        """Every check of ``request`` that needs no worker's report (its model, enums, options,
        request id, that it has an image): the model's config and the output options. Run before
        :meth:`prepare`, so a malformed request is refused for what it is (INVALID_ARGUMENT) even
        while its model loads, not told to retry (UNAVAILABLE) only to be refused then."""
        cfg = self.model(request.model, request.model_version)
        if request.method != pb.METHOD_UNSPECIFIED and request.method not in _METHOD:
            raise invalid(f"unknown method {request.method}; valid: {_enum_names(pb.Method, _METHOD)}")
        self.check_choice(_METHOD.get(request.method),
                          request.class_index if request.HasField("class_index") else None,
                          request.top_k or None)
        output = self._output(request.output)
        rid = request.request_id
        if len(rid) > wire.MAX_REQUEST_ID_CHARS:
            raise invalid(f"request_id is {len(rid)} characters; at most {wire.MAX_REQUEST_ID_CHARS}")
        if request.image.WhichOneof("source") is None:
            raise invalid("the request has no image: set image.encoded (JPEG/PNG/WebP/BMP bytes) "
                          "or image.tensor")
        return cfg, output

    def prepare(self, request: pb.ExplainRequest,
                fields: tuple[ModelConfig, OutputSpec] | None = None) -> Prepared:
        """Every check that needs no pixels; raises :class:`Failure` with a clear message. ``fields``:
        what :meth:`fields` returned for this request (None = run it here); then the checks that need
        the worker's report (NOT_READY while there is none)."""
        cfg, output = self.fields(request) if fields is None else fields
        summary = self.summary(cfg)
        spec, layer = self.item_spec(
            cfg, summary, method=_METHOD.get(request.method),
            class_index=request.class_index if request.HasField("class_index") else None,
            top_k=request.top_k or None, target_layer=request.target_layer)
        return Prepared(config=cfg, summary=summary, spec=spec, output=output,
                        method_enum=wire.METHODS[spec.method], target_layer=layer,
                        request_id=request.request_id or uuid.uuid4().hex, image=request.image)

    @staticmethod
    def check_choice(method: str | None, class_index: int | None, top_k: int | None) -> str:
        """The checks of :meth:`item_spec` that need no model: the method's name (None = gradcam,
        returned as its name) and not both ``class_index`` and a ``top_k`` other than 1."""
        method = wire.DEFAULTS["method"] if method is None else method
        if method not in wire.METHODS:
            raise invalid(f"unknown method {shown(method)}; valid: {', '.join(wire.METHODS)}")
        if class_index is not None and top_k not in (None, 1):
            raise invalid("set class_index to explain one class, or top_k to explain the k best; not both")
        return method

    def item_spec(self, cfg: ModelConfig, summary: ModelSummary, *, method: str | None = None,
                  class_index: int | None = None, top_k: int | None = None,
                  target_layer: str | None = None) -> tuple[ItemSpec, str]:
        """Check what to explain for one image of model ``cfg``, in the server's words.

        ``method``: a name of ``camserve_proto.vocabulary.METHODS`` (None = gradcam); ``class_index``
        set: that class only (``top_k`` must then be unset or 1); else the ``top_k`` best classes
        (None = 1); ``target_layer``: a layer name or ``outer/inner`` path (None or "" = the model's
        default). Returns the :class:`ItemSpec` (``target_layer`` None when it is the default) and the
        full path of the layer explained. Raises :class:`Failure`: INVALID_INPUT, CLASS_INDEX,
        UNKNOWN_LAYER or CAM_NOT_SUPPORTED, the message naming what is valid.
        """
        method = self.check_choice(method, class_index, top_k)
        n = summary.num_classes
        if class_index is not None:
            if not 0 <= class_index < n:
                raise Failure(f"class_index {class_index} is out of range: model {cfg.name!r} has "
                              f"{n} classes (0..{n - 1})", ErrorKind.CLASS_INDEX)
            top_k = 1
        elif top_k is None:
            top_k = wire.DEFAULTS["top_k"]
        elif not 1 <= top_k <= summary.max_top_k:
            raise Failure(f"top_k {top_k} is out of range: 1..{summary.max_top_k} for model "
                          f"{cfg.name!r} (unset means {wire.DEFAULTS['top_k']})", ErrorKind.CLASS_INDEX)
        layer = self._layer(cfg, summary, target_layer or "")
        if method == "cam" and not layer.cam_supported and layer.kind != UNLISTED:
            reason = summary.cam_reason if layer.name == summary.target_layer else ""
            able = [x.name for x in summary.layers if x.cam_supported]
            where = (f"layers where CAM works: {_names(able)}" if able
                     else "no layer of this model feeds global average pooling then one Dense layer")
            raise Failure(f"CAM is not available on layer {layer.name!r} of model {cfg.name!r}: "
                          f"{reason or 'it does not feed global average pooling then one Dense'}; {where}; "
                          "GRAD_CAM works on any layer", ErrorKind.CAM_NOT_SUPPORTED)
        target = None if layer.name == summary.target_layer else layer.name
        return ItemSpec(method=method, class_index=class_index, top_k=top_k, target_layer=target), layer.name

    @staticmethod
    def _layer(cfg: ModelConfig, summary: ModelSummary, name: str) -> LayerInfo:
        """The candidate layer ``name`` (a full path, or the unique path ending in ``/name``)."""
        if not name or name == summary.target_layer:
            found = summary.layer(summary.target_layer)
            # The default target may be no candidate (e.g. a configured layer the listing leaves
            # out): trust the engine's report about it.
            return found or LayerInfo(summary.target_layer, summary.grid, summary.channels,
                                      summary.cam_supported)
        found = summary.layer(name)
        if found is not None:
            return found
        nested = [x for x in summary.layers if x.name.endswith("/" + name)]
        if len(nested) == 1:
            return nested[0]
        if len(nested) > 1:
            raise Failure(f"target_layer {shown(name)} is ambiguous in model {cfg.name!r}: "
                          f"{_names([x.name for x in nested])}; use the full 'outer/inner' path",
                          ErrorKind.UNKNOWN_LAYER)
        if name in summary.addressable or any(a.endswith("/" + name) for a in summary.addressable):
            # A call the model makes but the listing leaves out (a container such as a transformer's
            # encoder, a graph node, a shared layer's ``name@k``): the engine resolves and checks it.
            return LayerInfo(name, (0, 0), 0, False, kind=UNLISTED)
        raise Failure(f"model {cfg.name!r} has no target layer {shown(name)} (a layer whose output has a "
                      f"spatial grid: a conv map or patch tokens); valid: "
                      f"{_names([x.name for x in reversed(summary.layers)])}", ErrorKind.UNKNOWN_LAYER)

    @staticmethod
    def _output(opt: pb.OutputOptions) -> OutputSpec:
        """camserve.v1 OutputOptions (enums, 0 = default) through :func:`output_spec`."""
        if opt.size != 0 and opt.size not in _SIZE:
            raise invalid(f"unknown output.size {opt.size}; valid: {_enum_names(pb.HeatmapSize, _SIZE)}")
        if opt.overlay != 0 and opt.overlay not in _FORMAT:
            raise invalid(f"unknown output.overlay {opt.overlay}; valid: "
                          f"{_enum_names(pb.ImageFormat, _FORMAT)} (or unset for none)")
        if opt.colormap != 0 and opt.colormap not in _COLORMAP:
            raise invalid(f"unknown output.colormap {opt.colormap}; valid: "
                          f"{_enum_names(pb.Colormap, _COLORMAP)}")
        if opt.tensor_size != 0 and opt.tensor_size not in _SIZE:
            raise invalid(f"unknown output.tensor_size {opt.tensor_size}; valid: "
                          f"{_enum_names(pb.HeatmapSize, _SIZE)} (or unset for output.size)")
        return output_spec(_SIZE.get(opt.size), tensor=not opt.omit_tensor, png=opt.heatmap_png,
                           overlay=_FORMAT.get(opt.overlay), alpha=opt.overlay_alpha or None,
                           colormap=_COLORMAP.get(opt.colormap), jpeg_quality=opt.jpeg_quality or None,
                           tensor_size=_SIZE.get(opt.tensor_size), prefix="output.")


def output_spec(size: str | None = None, *, tensor: bool = True, png: bool = False,
                overlay: str | None = None, alpha: float | None = None, colormap: str | None = None,
                jpeg_quality: int | None = None, tensor_size: str | None = None,
                prefix: str = "") -> OutputSpec:
    """Check what each explanation carries back, in the wire's words (``camserve_proto.vocabulary``).

    ``size``: a name of ``HEATMAP_SIZES`` (grid, input, original); ``overlay``: None or a name of
    ``IMAGE_FORMATS`` (png, jpeg); ``colormap``: a name of ``COLORMAPS``; ``alpha``: the heatmap's
    weight in the overlay, in (0, 1]; ``jpeg_quality``: 1..100. None = the default of
    ``wire.DEFAULTS``. ``tensor_size``: the float32 map's own size when it differs from ``size`` (None =
    ``size``). ``prefix`` is put before field names in messages (``output.`` for camserve.v1).
    Raises an INVALID_INPUT :class:`Failure` naming the valid values.
    """
    size = wire.DEFAULTS["heatmap_size"] if size is None else size
    if size not in wire.HEATMAP_SIZES:
        raise invalid(f"unknown {prefix}size {shown(size)}; valid: {', '.join(wire.HEATMAP_SIZES)}")
    if overlay is not None and overlay not in wire.IMAGE_FORMATS:
        raise invalid(f"unknown {prefix}overlay {shown(overlay)}; valid: {', '.join(wire.IMAGE_FORMATS)}")
    colormap = wire.DEFAULTS["colormap"] if colormap is None else colormap
    if colormap not in wire.COLORMAPS:
        raise invalid(f"unknown {prefix}colormap {shown(colormap)}; valid: {', '.join(wire.COLORMAPS)}")
    alpha = wire.DEFAULTS["overlay_alpha"] if alpha is None else float(alpha)
    if not math.isfinite(alpha) or not 0.0 < alpha <= 1.0:
        raise invalid(f"{prefix}overlay_alpha {alpha} must be in (0, 1] "
                      f"(unset means {wire.DEFAULTS['overlay_alpha']})")
    quality = wire.DEFAULTS["jpeg_quality"] if jpeg_quality is None else jpeg_quality
    if not 1 <= quality <= 100:
        raise invalid(f"{prefix}jpeg_quality {quality} must be in 1..100 "
                      f"(unset means {wire.DEFAULTS['jpeg_quality']})")
    if tensor_size is not None and tensor_size not in wire.HEATMAP_SIZES:
        raise invalid(f"unknown {prefix}tensor_size {shown(tensor_size)}; valid: "
                      f"{', '.join(wire.HEATMAP_SIZES)}")
    return OutputSpec(size=size, tensor=tensor, png=png, overlay=overlay, alpha=alpha, colormap=colormap,
                      jpeg_quality=quality, tensor_size=tensor_size)
