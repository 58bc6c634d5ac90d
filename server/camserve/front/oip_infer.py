"""ModelInfer in camserve's terms: a request into checked rows and one ItemSpec, results into outputs.

Why apart from the servicer: this is the whole mapping between the Open Inference Protocol and
camserve's records, and it is pure (no gRPC calls, no event loop), so it reads like the contract in
``camserve_proto.oip``. Parameters are checked with the same functions as camserve.v1's fields
(``RequestParser.item_spec``, ``output_spec``), so a value means the same through both protocols
and is refused with the same message. A request of N rows becomes N images in the batcher, each
with the same :class:`~camserve.records.ItemSpec`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
from camserve_proto import grpc_service_pb2 as pb
from camserve_proto import oip
from camserve_proto import vocabulary as wire

from camserve.front import codec
from camserve.front.codec import DecodedImage, OutputSpec, map_size
from camserve.front.headers import ImageError, image_header
from camserve.front.replies import ReplyBudget, best_classes
from camserve.front.requests import RequestParser, invalid, output_spec
from camserve.front.status import shown
from camserve.front.tensors import bytes_output, output_tensor, read_input
from camserve.records import ErrorKind, Failure, ItemResult, ItemSpec, ModelSummary
from camserve.repository import ModelConfig

__all__ = ["InferCall", "build_reply", "check_maps", "decode_rows", "model_at", "parse_infer",
           "parse_version"]

# Numbers as text, ASCII only and bounded: Python's int() and float() also take other scripts' digits
# ("٣", and "²" passes str.isdigit() but not int()), underscores ("0_5") and names ("infinity"), and
# int() raises past 4,300 digits; none of that is a number a client means to send.
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")  # int64 and uint64 values
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_VERSION = re.compile(r"[0-9]{1,18}")  # below 2**63: camserve.v1's int64 versions


@dataclass(frozen=True)
class InferCall:
    """A checked ModelInfer request: what to explain, for which rows, and what to send back."""

    config: ModelConfig
    summary: ModelSummary
    spec: ItemSpec
    output: OutputSpec            # how each map is encoded (tensor = HEATMAP asked; overlay = OVERLAY asked)
    target_layer: str             # full path of the layer explained
    outputs: tuple[str, ...]      # output names, in reply order
    rows: list[bytes] | np.ndarray  # IMAGE: encoded bytes per row; PIXELS: (N, H, W, C) uint8
    timeout_s: float | None       # the ``timeout`` parameter, in seconds (None = none)
    request_id: str
    class_count: int = 0          # PROBABILITIES as its best classes' strings (classification); 0 = raw
    sizes: list[tuple[int, int]] = field(default_factory=list)  # each row's (h, w) as sent

    def __len__(self) -> int:
        return len(self.rows)


class _Parameters:
    """The request's parameters read by kind (``oip.PARAMETERS``): None when absent, a refusal saying
    which kind is expected when a value has another kind."""

    _EXPECTED: ClassVar[dict[str, str]] = {"string": "a string (string_param)",
                                           "int": "an integer (int64_param)",
                                           "double": "a number (double_param)"}

    def __init__(self, params: Mapping[str, pb.InferParameter],
                 kinds: Mapping[str, str] = oip.PARAMETERS) -> None:
        self._params = params
        self._kinds = kinds

    def _get(self, name: str) -> tuple[str | None, Any]:
        if name not in self._params:
            return None, None
        p = self._params[name]
        which = p.WhichOneof("parameter_choice")
        return which, (getattr(p, which) if which else None)

    def _refuse(self, name: str, which: str | None, value: Any) -> Failure:
        return invalid(f"parameter {name!r} must be {self._EXPECTED[self._kinds[name]]}; "
                       f"got {which or 'no value'} {shown(value)}")

    def string(self, name: str) -> str | None:
        which, value = self._get(name)
        if which is None or which == "string_param":
            return value
        raise self._refuse(name, which, value)

    def int(self, name: str) -> int | None:
        which, value = self._get(name)
        if which is None or which in ("int64_param", "uint64_param"):
            return value
        if which == "string_param" and _INTEGER.fullmatch(value.strip()):
            return int(value.strip())
        raise self._refuse(name, which, value)

    def float(self, name: str) -> float | None:
        which, value = self._get(name)
        if which is None:
            return None
        if which in ("double_param", "int64_param", "uint64_param"):
            return float(value)
        if which == "string_param" and len(value) <= 64 and _NUMBER.fullmatch(value.strip()):
            return float(value.strip())
        raise self._refuse(name, which, value)


def parse_version(text: str, field: str = "model_version") -> int:
    """A protocol version string as camserve's version number ('' = 0, the newest); INVALID_INPUT
    when it is not 1 to 18 ASCII digits."""
    if text == "":
        return 0
    if not _VERSION.fullmatch(text):
        raise invalid(f"{field} {shown(text)} is not a version number; send up to 18 digits 0-9, or empty "
                      "for the newest")
    return int(text)


def model_at(parser: RequestParser, name: str, version: str, field: str = "model_version") -> ModelConfig:
    """The served model ``name`` ('' = the default model) at the protocol's ``version`` string ('' = the
    newest; unlike camserve.v1's version number, "0" is version 0, as in Triton): NOT_FOUND when it is
    not served, INVALID_INPUT when ``version`` is not a number."""
    number = parse_version(version, field)
    cfg = parser.model(name)
    if version and number != cfg.version:
        raise Failure(f"model {cfg.name!r} has no version {number}; served version: {cfg.version} (an empty "
                      f"{field} asks for the newest)", ErrorKind.UNKNOWN_MODEL)
    return cfg


def _source(request: pb.ModelInferRequest, input_shape: tuple[int, int, int]) -> list[bytes] | np.ndarray:
    """The rows of the one input (IMAGE or PIXELS), checked against the model's input size."""
    h, w, c = input_shape
    inputs = request.inputs
    t = inputs[0] if len(inputs) == 1 else None
    name = t.name if t is not None else ""
    if name not in oip.INPUTS:
        valid = (f"valid: {oip.IMAGE} (BYTES [N, 1], encoded images) or {oip.PIXELS} "
                 f"(UINT8 [N, {h}, {w}, {c}])")
        if t is not None:
            raise invalid(f"unknown input {shown(name)}; {valid}")
        names = [x.name for x in inputs]
        hint = ""
        if set(names) >= set(oip.INPUTS):  # every input filled: what a load generator's made-up data does
            hint = (" (perf_analyzer fills every input with generated data; give it --input-data with a JSON "
                    f"file whose steps name one of {' or '.join(oip.INPUTS)})")
        raise invalid(f"the request has {len(names)} inputs {shown(names)}; send exactly one: {valid}{hint}")
    shape = tuple(t.shape)
    if name == oip.IMAGE:
        ok = t.datatype == "BYTES" and len(shape) in (1, 2) and shape[1:] in ((), (1,))
        want = "BYTES [N, 1], one encoded JPEG/PNG/WebP/BMP image per row"
    else:
        ok = t.datatype == "UINT8" and shape[1:] == (h, w, c)
        want = f"UINT8 [N, {h}, {w}, {c}], RGB pixels at the model's input size"
    if not ok:
        raise invalid(f"input {name!r} must be {want}; got {shown(t.datatype)} {shown(list(shape))}")
    _no_shared_memory(f"input {name!r}", t.parameters)
    if shape[0] < 1:
        raise invalid(f"input {name!r} has no rows (shape {shown(list(shape))}); send at least one image")
    raw = request.raw_input_contents
    if len(raw) > 1:
        raise invalid(f"raw_input_contents has {len(raw)} entries for 1 input; send one per input")
    try:
        return read_input(t, raw[0] if raw else None, shape).value
    except Failure as exc:
        if name == oip.IMAGE and raw and _is_image(raw[0]):
            raise invalid(f"{exc.message}: the content is an encoded image itself, not the raw BYTES form, "
                          "which puts each element's length (uint32, little-endian) before its bytes; "
                          "perf_analyzer's --input-data {\"b64\": ...} for a BYTES input must include that "
                          "length (tritonclient's and KServe's set_data_from_numpy add it)") from None
        raise


def _is_image(data: bytes) -> bool:
    """Whether ``data`` starts with a supported image's header."""
    try:
        image_header(data)
    except ImageError:
        return False
    return True


def _no_shared_memory(what: str, params: Mapping[str, pb.InferParameter]) -> None:
    if oip.SHARED_MEMORY_REGION in params:
        raise invalid(f"{what} is placed in shared memory ({oip.SHARED_MEMORY_REGION!r}); camserve serves "
                      "no shared-memory extension: send inputs in raw_input_contents and read outputs from "
                      "raw_output_contents")


def _class_count(output: pb.ModelInferRequest.InferRequestedOutputTensor) -> int:
    """The ``classification`` count asked of ``output`` (0 = none; the caller caps it at the model's
    classes)."""
    if oip.CLASSIFICATION not in output.parameters:
        return 0
    count = _Parameters(output.parameters, oip.OUTPUT_PARAMETERS).int(oip.CLASSIFICATION)
    if output.name != oip.PROBABILITIES:
        raise invalid(f"output {output.name!r}: the {oip.CLASSIFICATION!r} parameter applies to "
                      f"{oip.PROBABILITIES} only (the model's classes); CLASS_IDS and SCORES are already "
                      "the explained classes, best first")
    if count is None or count < 1:
        raise invalid(f"output {output.name!r}: {oip.CLASSIFICATION} {count} must be >= 1 (how many of the "
                      "best classes to return)")
    return count


def _outputs(request: pb.ModelInferRequest, overlay: str | None) -> tuple[tuple[str, ...], int]:
    """The output names in reply order, and the PROBABILITIES classification count (0 = raw)."""
    asked = [o.name for o in request.outputs]
    if not asked:
        return ((*oip.DEFAULT_OUTPUTS, oip.OVERLAY) if overlay is not None else oip.DEFAULT_OUTPUTS), 0
    for name in asked:
        if name not in oip.OUTPUTS:
            raise invalid(f"unknown output {shown(name)}; valid: {', '.join(oip.OUTPUTS)}")
    if len(set(asked)) != len(asked):
        raise invalid(f"outputs {shown(asked)} name an output twice")
    counts = []
    for o in request.outputs:
        _no_shared_memory(f"output {o.name!r}", o.parameters)
        counts.append(_class_count(o))
    return tuple(asked), max(counts)


def _classification(probs: np.ndarray, count: int, labels: list[str]) -> list[bytes]:
    """One row's ``count`` best classes as Triton's classification strings, best first:
    ``"<probability>:<index>[:<label>]"`` (the value printed like C++ ``std::to_string``: 6 decimals)."""
    out = []
    for i in best_classes(probs, count):
        label = labels[i] if i < len(labels) else ""
        out.append((f"{probs[i]:f}:{i}" + (f":{label}" if label else "")).encode())
    return out


def parse_infer(parser: RequestParser, request: pb.ModelInferRequest,
                max_pixels: int = codec.DEFAULT_MAX_PIXELS) -> InferCall:
    """Every check that needs no decoding; raises :class:`Failure` (NOT_FOUND, UNAVAILABLE while the
    model loads, INVALID_ARGUMENT / FAILED_PRECONDITION with what is valid).

    What the model's config alone can judge (parameters' types and values, outputs, rows and each
    IMAGE row's header against ``max_pixels``) is checked first, so a malformed request is refused
    for what it is even while the model loads; only then the worker's report (NOT_READY until there
    is one) for what needs it: classes, layers, CAM support."""
    cfg = model_at(parser, request.model_name, request.model_version)
    if len(request.id) > wire.MAX_REQUEST_ID_CHARS:
        raise invalid(f"id is {len(request.id)} characters; at most {wire.MAX_REQUEST_ID_CHARS}")
    params = _Parameters(request.parameters)
    method, class_index, top_k = params.string("method"), params.int("class_index"), params.int("top_k")
    parser.check_choice(method, class_index, top_k)
    target_layer = params.string("target_layer")
    overlay = params.string("overlay")
    outputs, classification = _outputs(request, overlay)
    fmt = (overlay or "png") if oip.OVERLAY in outputs else overlay
    output = output_spec(params.string("heatmap_size"), tensor=oip.HEATMAP in outputs, overlay=fmt,
                         alpha=params.float("overlay_alpha"), colormap=params.string("colormap"),
                         jpeg_quality=params.int("jpeg_quality"))
    if output.overlay is not None and oip.OVERLAY not in outputs:
        output = replace(output, overlay=None)  # the options were checked, but there is nothing to draw
    timeout_us = params.int("timeout")  # Triton's: microseconds in the queue; 0 = no limit
    if timeout_us is not None and timeout_us < 0:
        raise invalid(f"parameter 'timeout' is {timeout_us} microseconds; it must be >= 0 (0 = no limit)")
    rows = _source(request, cfg.input_shape)
    limit = min(wire.MAX_BATCH_REQUESTS, cfg.batching.max_queue_size)
    if len(rows) > limit:  # could never fit, so not QUEUE_FULL (which clients retry)
        raise invalid(f"the request carries {len(rows)} images; at most {limit} per request for model "
                      f"{cfg.name!r} (its queue holds {cfg.batching.max_queue_size}); split the request")
    sizes = _row_sizes(rows, cfg.input_shape, max_pixels)
    summary = parser.summary(cfg)
    spec, layer = parser.item_spec(cfg, summary, method=method, class_index=class_index, top_k=top_k,
                                   target_layer=target_layer)
    return InferCall(config=cfg, summary=summary, spec=spec, output=output, target_layer=layer,
                     outputs=outputs, rows=rows, timeout_s=timeout_us / 1e6 if timeout_us else None,
                     request_id=request.id, class_count=min(classification, summary.num_classes),
                     sizes=sizes)


def _row_sizes(rows: list[bytes] | np.ndarray, input_shape: tuple[int, int, int],
               max_pixels: int) -> list[tuple[int, int]]:
    """Each row's (h, w) as sent, without decoding: an IMAGE row's header checked (format, size limits;
    the refusal names the row), a PIXELS row at the model's input size."""
    if isinstance(rows, np.ndarray):
        return [(int(input_shape[0]), int(input_shape[1]))] * len(rows)
    sizes = []
    for i, data in enumerate(rows):
        try:
            _, width, height = codec.probe_encoded(data, max_pixels)
        except Failure as exc:
            raise _row_failure(i, exc) from None
        sizes.append((height, width))
    return sizes


#: What camserve.v1's image refusals offer instead of an encoded image; here that is the PIXELS input.
_V1_ALTERNATIVE = "(or a raw tensor)"


def _row_failure(i: int, exc: Failure) -> Failure:
    message = exc.message.replace(_V1_ALTERNATIVE, f"(or the {oip.PIXELS} input: UINT8 pixels)")
    return Failure(f"input {oip.IMAGE!r} row {i}: {message}", exc.kind)


def decode_rows(call: InferCall, max_pixels: int) -> list[DecodedImage]:
    """Each row as the model's uint8 pixels (PIXELS rows are views, not copies); a row that cannot be
    decoded fails the request, naming the row."""
    if isinstance(call.rows, np.ndarray):
        return [DecodedImage(pixels=row, original=row) for row in call.rows]
    shape = call.summary.input_shape
    out = []
    for i, data in enumerate(call.rows):
        try:
            out.append(codec.decode_encoded(data, shape, max_pixels, full_size=call.output.draws_original))
        except Failure as exc:
            raise _row_failure(i, exc) from None
    return out


def check_maps(call: InferCall, original_sizes: list[tuple[int, int]], limit: int) -> None:
    """Before admission (the rows' (h, w) as sent: ``InferCall.sizes``), and again once decoded (an Exif
    orientation can turn an image): HEATMAP must be one tensor (rows of one size at
    ``heatmap_size=original``) that fits the reply (``limit`` bytes; TOO_LARGE otherwise)."""
    if oip.HEATMAP not in call.outputs or call.output.tensor_at == "grid":
        return
    sizes = {map_size(call.output.tensor_at, call.summary.grid, call.summary.input_shape, size)
             for size in original_sizes}
    if len(sizes) > 1:
        listed = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:4])
        raise invalid(f"HEATMAP at heatmap_size 'original' needs images of one size; the rows are {listed}: "
                      "ask for heatmap_size 'grid' or 'input', or send images of one size per request")
    ((h, w),) = sizes
    need = 4 * h * w * call.spec.top_k * len(original_sizes)
    if need > limit:
        raise Failure(f"the reply would carry {need} bytes of FP32 heatmaps ({len(original_sizes)} x "
                      f"{call.spec.top_k} x {h}x{w}), over the server's {limit}-byte message limit; ask for "
                      "heatmap_size 'grid' or 'input', fewer rows or fewer classes", ErrorKind.TOO_LARGE)


def build_reply(call: InferCall, images: list[DecodedImage], results: list[ItemResult],
                total_s: float, limit: int) -> pb.ModelInferResponse:
    """The ModelInferResponse: the asked outputs in ``raw_output_contents``, in the order asked; a
    TOO_LARGE Failure as soon as its maps pass ``limit`` bytes."""
    n, k = len(results), call.spec.top_k
    budget = ReplyBudget(limit)
    encoded = [[budget.encode(m.heatmap, call.output, img) for m in r.maps]
               for img, r in zip(images, results, strict=True)]
    if any(len(row) != k for row in encoded):
        raise RuntimeError(f"the engine returned {[len(row) for row in encoded]} maps per image, not {k}")
    made = {}
    # Small outputs are packed with struct: for a few numbers it is several times faster than NumPy,
    # and this runs once per call on the event loop (measured: ~60 us less per single-image call).
    for name in call.outputs:
        if name == oip.PROBABILITIES and call.class_count:
            labels = call.config.labels
            made[name] = bytes_output(name, [_classification(np.asarray(r.probabilities, "<f4"),
                                                             call.class_count, labels) for r in results])
        elif name == oip.PROBABILITIES:
            probs = [np.asarray(r.probabilities, "<f4") for r in results]
            made[name] = output_tensor(name, "FP32", (n, probs[0].size), b"".join(p.tobytes() for p in probs))
        elif name == oip.CLASS_IDS:
            ids = [m.class_index for r in results for m in r.maps]
            made[name] = output_tensor(name, "INT32", (n, k), struct.pack(f"<{n * k}i", *ids))
        elif name == oip.SCORES:
            scores = [m.score for r in results for m in r.maps]
            made[name] = output_tensor(name, "FP32", (n, k), struct.pack(f"<{n * k}f", *scores))
        elif name == oip.HEATMAP:
            h, w = encoded[0][0].tensor_shape
            raw = b"".join(e.tensor for row in encoded for e in row)  # row-major [N, K, h, w]
            made[name] = output_tensor(name, "FP32", (n, k, h, w), raw)
        else:
            made[name] = bytes_output(name, [[e.overlay for e in row] for row in encoded])
    param = pb.InferParameter
    return pb.ModelInferResponse(
        model_name=call.config.name, model_version=str(call.config.version), id=call.request_id,
        outputs=[made[name][0] for name in call.outputs],
        raw_output_contents=[made[name][1] for name in call.outputs],
        parameters={"method": param(string_param=call.spec.method),
                    "target_layer": param(string_param=call.target_layer),
                    "score_kind": param(string_param=call.summary.score),
                    "queue_ms": param(double_param=1e3 * sum(r.queue_s for r in results) / n),
                    "compute_ms": param(double_param=1e3 * sum(r.compute_s for r in results) / n),
                    "batch_size": param(double_param=sum(r.batch_size for r in results) / n),
                    "total_ms": param(double_param=1e3 * total_s)})
