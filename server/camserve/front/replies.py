"""camserve.v1 replies: an ExplainResponse from an :class:`~camserve.records.ItemResult`, a ModelInfo
from a config and its :class:`~camserve.records.ModelSummary`, and the reply-size checks.

Why the size checks live here: the float32 maps a caller asks for at the original image size can
exceed the message limit (4 bytes a pixel per class), so the front refuses such a request *before*
admitting it (:func:`check_map_bytes`, from the image's header), stops encoding a reply's maps as
soon as they pass the limit (:class:`ReplyBudget`: PNG maps and overlays at a 20-megapixel original
size take seconds each, and a reply that can never be sent should not take minutes of CPU to
refuse), and checks the finished reply once more (:func:`check_reply`); every refusal is
``TOO_LARGE``, which clients must not retry.
"""

from __future__ import annotations

import numpy as np
from camserve_proto import explain_pb2 as pb
from camserve_proto import vocabulary as wire

from camserve.front.codec import DecodedImage, EncodedMap, OutputSpec, encode_map, map_size
from camserve.front.requests import Prepared
from camserve.records import ErrorKind, Failure, ItemResult, ModelSummary
from camserve.repository import ModelConfig

__all__ = ["ReplyBudget", "best_classes", "build_response", "check_map_bytes", "check_reply", "model_info"]


def best_classes(probs: np.ndarray, k: int) -> np.ndarray:
    """The indices of the ``k`` largest of the 1-D ``probs``, largest first, ties in index order (NaN
    last): exactly ``np.argsort(-probs, kind="stable")[:k]``, without sorting every class.

    Why: every reply lists the best classes, and a full stable sort of 1,000 ImageNet probabilities
    cost ~26 us of CPU against ~10 us for a partition that finds the k-th value and sorts only the
    classes at or above it (``python -m bench.micro --parts reply``).
    """
    if probs.size <= 4 * k:
        return np.argsort(-probs, kind="stable")[:k]
    neg = -probs
    kth = np.partition(neg, k - 1)[k - 1]  # NaN sorts last, so this is NaN only with < k numbers
    if kth != kth:
        return np.argsort(neg, kind="stable")[:k]
    candidates = np.flatnonzero(neg <= kth)  # in index order, so the stable sort keeps ties by index
    return candidates[np.argsort(neg[candidates], kind="stable")[:k]]


def check_map_bytes(prep: Prepared, original_size: tuple[int, int], limit: int) -> None:
    """Refuse (``TOO_LARGE``) before admission when the float32 maps asked for cannot fit one reply;
    ``original_size``: the image's (h, w) as its header or shape says."""
    if not prep.output.tensor or prep.output.tensor_at == "grid":
        return
    h, w = map_size(prep.output.tensor_at, prep.summary.grid, prep.summary.input_shape, original_size)
    k = prep.spec.top_k
    need = 4 * h * w * k
    if need > limit:
        raise Failure(f"the reply would carry {need} bytes of float32 heatmaps ({k} x {h}x{w}), over the "
                      f"server's {limit}-byte message limit; ask for the tensor at CONV_GRID (tensor_size) "
                      "and resize it, omit_tensor with a PNG, or fewer classes", ErrorKind.TOO_LARGE)


class ReplyBudget:
    """The bytes a reply's encoded maps may take (the server's message limit), spent map by map:
    :meth:`encode` refuses (``TOO_LARGE``) at the first map that passes it, so a reply that can never be
    sent stops costing CPU there. One budget per reply (an ExplainBatch or a ModelInfer shares one
    across its images)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spent = 0
        self.maps = 0

    def encode(self, heatmap: np.ndarray, spec: OutputSpec, image: DecodedImage) -> EncodedMap:
        """:func:`~camserve.front.codec.encode_map`, counted against the budget."""
        enc = encode_map(heatmap, spec, image)
        self.maps += 1
        self.spent += len(enc.tensor) + len(enc.png) + len(enc.overlay)
        if self.spent > self.limit:
            raise Failure(f"the reply would be over the server's {self.limit}-byte message limit: its first "
                          f"{self.maps} map(s) already take {self.spent} bytes; ask for smaller heatmaps "
                          "(CONV_GRID or MODEL_INPUT), JPEG overlays, omit_tensor, fewer classes or fewer "
                          "images per call", ErrorKind.TOO_LARGE)
        return enc


def check_reply(reply: pb.ExplainResponse | pb.ExplainBatchResponse, limit: int) -> None:
    """Refuse (``TOO_LARGE``) a finished reply over the message limit."""
    size = reply.ByteSize()
    if size > limit:
        raise Failure(f"the reply would be {size} bytes, over the server's {limit}-byte message limit; ask "
                      "for smaller heatmaps, omit_tensor, JPEG overlays or fewer images per call",
                      ErrorKind.TOO_LARGE)


def build_response(prep: Prepared, image: DecodedImage, result: ItemResult, total_s: float,
                   budget: ReplyBudget | None = None) -> pb.ExplainResponse:
    """The ExplainResponse for one computed image; ``total_s`` is the time since the call arrived.
    ``budget`` (None: unbounded) is spent by its maps; raises a TOO_LARGE Failure when they pass it."""
    cfg = prep.config
    labels = cfg.labels
    probs = np.asarray(result.probabilities, dtype=np.float32).reshape(-1)

    def label(i: int) -> str:
        return labels[i] if 0 <= i < len(labels) else str(i)

    resp = pb.ExplainResponse(request_id=prep.request_id, model=cfg.name, model_version=cfg.version,
                              method=prep.method_enum, target_layer=prep.target_layer,  # type: ignore[arg-type]
                              score_kind=prep.summary.score)
    for m in result.maps:
        enc = encode_map(m.heatmap, prep.output, image) if budget is None else budget.encode(
            m.heatmap, prep.output, image)
        ci = int(m.class_index)
        ex = resp.explanations.add(class_index=ci, label=label(ci),
                                   probability=float(probs[ci]) if 0 <= ci < probs.size else 0.0,
                                   score=float(m.score), all_zero=bool(m.all_zero))
        if prep.output.tensor:
            ex.heatmap.dtype = pb.FLOAT32
            ex.heatmap.shape.extend(enc.tensor_shape)
            ex.heatmap.data = enc.tensor
        if enc.png:
            ex.heatmap_png = enc.png
        if enc.overlay:
            ex.overlay = enc.overlay
    for i in best_classes(probs, wire.TOP_PREDICTIONS):
        resp.top_predictions.add(class_index=int(i), label=label(int(i)), probability=float(probs[i]))
    resp.timing.queue_ms = result.queue_s * 1e3
    resp.timing.compute_ms = result.compute_s * 1e3
    resp.timing.batch_size = int(result.batch_size)
    resp.timing.total_ms = total_s * 1e3
    resp.original_size.extend(image.original_size)
    return resp


def model_info(cfg: ModelConfig, summary: ModelSummary | None, ready: bool, backend: str) -> pb.ModelInfo:
    """ModelInfo from the config, completed by the worker's report once the model is loaded."""
    b = cfg.batching
    info = pb.ModelInfo(name=cfg.name, version=cfg.version, ready=ready, input_shape=list(cfg.input_shape),
                        preprocessing=cfg.preprocessing, labels=list(cfg.labels),
                        max_batch_size=b.max_batch_size, max_queue_delay_ms=b.max_queue_delay_ms,
                        backend=backend, default_target_layer=cfg.target_layer or "")
    if summary is None:
        return info
    info.num_classes = summary.num_classes
    info.default_target_layer = summary.target_layer
    info.compile_mode = summary.compile_mode
    info.backend = summary.backend
    info.batch_buckets.extend(summary.buckets)
    info.default_target_reason = summary.target_reason
    info.preprocessing = summary.preprocessing  # what runs (a keras-hub task's own preprocessor: own:<class>)
    info.score_kind = summary.score
    info.head = summary.head
    info.head_kind = summary.head_kind
    for layer in summary.layers:
        info.layers.add(name=layer.name, grid=list(layer.grid), channels=layer.channels,
                        cam_supported=layer.cam_supported, kind=layer.kind, prefix_tokens=layer.prefix_tokens)
    info.methods.extend(wire.METHODS[m] for m in summary.methods if m in wire.METHODS)  # type: ignore[misc]
    return info
