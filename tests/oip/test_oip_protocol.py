"""The Open Inference Protocol without a server: camserve's .proto against the stock client's, the
tensor codec, and the mapping of ModelInfer requests onto camserve's records (a real RequestParser
over the bundled demo model's config and a summary like the one its worker reports)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from camserve.front.oip_infer import parse_infer
from camserve.front.requests import RequestParser
from camserve.front.status import MAX_MESSAGE_BYTES, message_of
from camserve.front.tensors import read_inputs
from camserve.records import ErrorKind, Failure, LayerInfo, ModelSummary
from camserve.repository import load_repository
from camserve_proto import grpc_service_pb2 as pb
from camserve_proto import oip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oip_descriptors import describe
from oipkit import triton_descriptors

Tensor = pb.ModelInferRequest.InferInputTensor


def test_every_field_matches_the_stock_client() -> None:
    """Each message, field (number, type, label, type name, oneof), enum value and method camserve's
    .proto declares is the stock tritonclient's, so both ends read the same bytes."""
    theirs = triton_descriptors()
    ours = describe(pb.DESCRIPTOR)
    assert ours, "nothing described"
    problems = []
    for name, entries in ours.items():
        if name not in theirs:
            problems.append(f"{name}: not in tritonclient's protocol")
            continue
        for entry, spec in entries.items():
            if theirs[name].get(entry) != spec:
                problems.append(f"{name}.{entry}: ours {spec}, tritonclient's {theirs[name].get(entry)}")
    assert not problems, "\n".join(problems)
    served = set(ours["inference.GRPCInferenceService"])
    assert served == set(oip.RPC_METHODS) == {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                                              "ModelMetadata", "ModelInfer", "ModelConfig", "ModelStatistics"}


def test_wire_words_name_the_contract() -> None:
    assert oip.INPUTS == {"IMAGE": "BYTES", "PIXELS": "UINT8"}
    assert oip.OUTPUTS == {"PROBABILITIES": "FP32", "HEATMAP": "FP32", "CLASS_IDS": "INT32",
                           "SCORES": "FP32", "OVERLAY": "BYTES"}
    assert oip.config_type("BYTES") == pb.TYPE_STRING and oip.config_type("UINT8") == pb.TYPE_UINT8


# ------------------------------------------------------------------------------ BYTES and tensors


def test_bytes_round_trip_and_malformed_buffers() -> None:
    elements = [b"ab", b"", b"\x00" * 300]
    raw = oip.pack_bytes(elements)
    assert raw[:6] == b"\x02\x00\x00\x00ab" and oip.unpack_bytes(raw, 3) == elements
    for bad, count, words in [(raw, 2, "more than the 2"), (raw, 4, "holds 3 elements"),
                              (raw[:-1], 3, "claims 300 bytes"), (raw[:3], 1, "cut inside its 4-byte"),
                              (b"\xff\xff\xff\xff", 1, "claims 4294967295")]:
        with pytest.raises(ValueError, match=words):
            oip.unpack_bytes(bad, count)


def _request(*tensors: Tensor, raw: list[bytes] | None = None) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="demo", inputs=list(tensors), raw_input_contents=raw or [])


def _refused(request: pb.ModelInferRequest, words: str) -> None:
    with pytest.raises(Failure, match=words) as err:
        read_inputs(request)
    assert err.value.kind is ErrorKind.INVALID_INPUT


def test_tensors_raw_and_typed() -> None:
    pixels = np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3)
    raw = read_inputs(_request(Tensor(name="PIXELS", datatype="UINT8", shape=pixels.shape),
                               raw=[pixels.tobytes()]))[0]
    typed = read_inputs(_request(Tensor(name="PIXELS", datatype="UINT8", shape=pixels.shape,
                                        contents=pb.InferTensorContents(uint_contents=pixels.ravel().tolist()))))[0]
    for t in (raw, typed):
        assert t.value.dtype == np.uint8 and np.array_equal(t.value, pixels)
    scores = read_inputs(_request(Tensor(name="X", datatype="FP32", shape=[2],
                                         contents=pb.InferTensorContents(fp32_contents=[0.5, -1.0]))))[0]
    assert scores.value.dtype == np.float32 and scores.value.tolist() == [0.5, -1.0]
    images = read_inputs(_request(Tensor(name="IMAGE", datatype="BYTES", shape=[2, 1]),
                                  raw=[oip.pack_bytes([b"one", b"two"])]))[0]
    assert images.value == [b"one", b"two"]


def test_tensor_refusals() -> None:
    t = Tensor(name="PIXELS", datatype="UINT8", shape=[1, 2, 2, 3])
    _refused(_request(t, raw=[b"\0" * 11]), "has 11 bytes; a UINT8 tensor of shape")
    _refused(_request(t, t, raw=[b"\0" * 12]), "1 entries for 2 inputs")
    wide = pb.InferTensorContents(uint_contents=[256] + [0] * 11)
    _refused(_request(Tensor(name="PIXELS", datatype="UINT8", shape=[1, 2, 2, 3], contents=wide)),
             "outside 0..255")
    _refused(_request(Tensor(name="PIXELS", datatype="UINT8", shape=[1, 2, 2, 3],
                             contents=pb.InferTensorContents(uint_contents=[1]))), "1 elements in contents")
    half = pb.InferTensorContents(fp32_contents=[1.0])
    _refused(_request(Tensor(name="X", datatype="FP16", shape=[1], contents=half)),
             "only in raw_input_contents")
    _refused(_request(Tensor(name="X", datatype="COMPLEX64", shape=[1]), raw=[b""]), "unknown datatype")
    _refused(_request(Tensor(name="X", datatype="UINT8", shape=[-1, 3]), raw=[b""]), "must be >= 0")
    # A shape that claims more than anything could carry is refused before any allocation.
    _refused(_request(Tensor(name="X", datatype="UINT8", shape=[1 << 20, 1 << 20, 1 << 20]), raw=[b""]),
             "more than")
    _refused(_request(Tensor(name="IMAGE", datatype="BYTES", shape=[1, 1]), raw=[b"\x05\0\0\0ab"]),
             "claims 5 bytes")


# ------------------------------------------------------------------------------ ModelInfer -> records


@pytest.fixture(scope="module")
def parser() -> RequestParser:
    repository = load_repository(None)
    layers = (LayerInfo("block1", (32, 32), 16, False), LayerInfo("features", (8, 8), 64, True))
    summary = ModelSummary(input_shape=(64, 64, 3), num_classes=10, target_layer="features", grid=(8, 8),
                           channels=64, cam_supported=True, cam_reason="", layers=layers,
                           buckets=(1, 2, 4, 8, 16, 32), compile_mode="graph", backend="tensorflow",
                           preprocessing="tf", score="logits", methods=("cam", "gradcam"), max_top_k=10)
    return RequestParser(repository, lambda name: summary if name == "demo" else None)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that is only its signature and IHDR: parse_infer reads each IMAGE row's header, no more."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


ROW = _png_header(64, 64)


def _infer(params: dict[str, pb.InferParameter] | None = None, rows: int = 1, outputs: tuple[str, ...] = (),
           **fields: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name="demo", inputs=[Tensor(name="IMAGE", datatype="BYTES", shape=[rows, 1])],
        raw_input_contents=[oip.pack_bytes([ROW] * rows)],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs], **fields)
    for key, value in (params or {}).items():
        request.parameters[key].CopyFrom(value)
    return request


def P(**kind: object) -> pb.InferParameter:
    return pb.InferParameter(**kind)


def test_encoded_image_without_length_prefix_is_named(parser: RequestParser) -> None:
    """An encoded image sent as IMAGE's raw content without the raw BYTES form's length prefix (what
    perf_analyzer sends for {"b64": <the image>}) is refused saying so, not only "claims N bytes"."""
    image = b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + b"\0\0\0\x40" * 2 + b"\0" * 40
    request = _infer()
    request.raw_input_contents[0] = image
    words = r"claims 1196314761 bytes.*an encoded image itself.*--input-data"
    with pytest.raises(Failure, match=words) as err:
        parse_infer(parser, request)
    assert err.value.kind is ErrorKind.INVALID_INPUT
    request.raw_input_contents[0] = b"\x05\0\0\0ab"  # not an image: the plain refusal
    with pytest.raises(Failure, match="claims 5 bytes") as err:
        parse_infer(parser, request)
    assert "encoded image" not in err.value.message


def test_parameters_map_onto_the_item_spec(parser: RequestParser) -> None:
    call = parse_infer(parser, _infer({"method": P(string_param="layercam"), "top_k": P(int64_param=3),
                                       "target_layer": P(string_param="block1"),
                                       "heatmap_size": P(string_param="input"),
                                       "timeout": P(int64_param=250_000),
                                       "priority": P(uint64_param=7), "sequence_id": P(int64_param=9)},
                                      rows=2, id="r1"))
    assert (call.spec.method, call.spec.top_k, call.spec.class_index, call.spec.target_layer) == (
        "layercam", 3, None, "block1")
    assert call.output.size == "input" and call.output.tensor and call.output.overlay is None
    assert call.timeout_s == 0.25 and call.request_id == "r1" and call.rows == [ROW, ROW]
    assert call.outputs == oip.DEFAULT_OUTPUTS
    default = parse_infer(parser, _infer())
    assert (default.spec.method, default.spec.top_k, default.target_layer, default.timeout_s) == (
        "gradcam", 1, "features", None)


def test_parameter_kinds(parser: RequestParser) -> None:
    """Numbers may come as int64, uint64 or a numeric string (clients that send every parameter as a
    string); other kinds are refused, naming the kind expected."""
    for top_k in (P(uint64_param=2), P(string_param=" 2"), P(int64_param=2)):
        assert parse_infer(parser, _infer({"top_k": top_k})).spec.top_k == 2
    alpha = parse_infer(parser, _infer({"overlay_alpha": P(int64_param=1), "overlay": P(string_param="png")},
                                       outputs=("OVERLAY",))).output
    assert (alpha.alpha, alpha.overlay, alpha.tensor) == (1.0, "png", False)
    for name, bad, words in [("top_k", P(bool_param=True), "must be an integer"),
                             ("top_k", P(string_param="two"), "must be an integer"),
                             ("method", P(int64_param=1), "must be a string"),
                             ("overlay_alpha", P(string_param="half"), "must be a number"),
                             ("class_index", P(double_param=1.0), "must be an integer")]:
        with pytest.raises(Failure, match=words):
            parse_infer(parser, _infer({name: bad}))


def test_numbers_as_text_are_ascii_and_bounded(parser: RequestParser) -> None:
    """Versions and numeric parameters sent as text: ASCII digits only, and no more than an int64
    holds. Python's own int() takes other scripts' digits ("١"), raises on "²" (which passes
    str.isdigit()) and past 4,300 digits; each is a caller's mistake, refused INVALID_ARGUMENT."""
    assert parse_infer(parser, _infer(model_version="01")).config.version == 1
    assert parse_infer(parser, _infer({"top_k": P(string_param="+3 ")})).spec.top_k == 3
    alpha = {"overlay_alpha": P(string_param=" .5"), "overlay": P(string_param="png")}
    assert parse_infer(parser, _infer(alpha, outputs=("OVERLAY",))).output.alpha == 0.5
    for version in ("\u00b2", "\u0661", "9" * 5000, " 1", "1.0", "-1"):
        with pytest.raises(Failure, match="not a version number") as err:
            parse_infer(parser, _infer(model_version=version))
        assert err.value.kind is ErrorKind.INVALID_INPUT and len(err.value.message) < 300
    for name, text in [("top_k", "\u0663"), ("top_k", "9" * 5000), ("class_index", "-" + "9" * 20),
                       ("timeout", "1_000"), ("overlay_alpha", "0_5"), ("overlay_alpha", "infinity"),
                       ("overlay_alpha", "\u0663"), ("overlay_alpha", "1" * 100)]:
        with pytest.raises(Failure, match=f"parameter '{name}' must be") as err:
            parse_infer(parser, _infer({name: P(string_param=text), "overlay": P(string_param="png")}))
        assert err.value.kind is ErrorKind.INVALID_INPUT and len(err.value.message) < 300, err.value.message


def test_echoed_values_are_shortened(parser: RequestParser) -> None:
    """A caller's long name or value is quoted by its start and length: the message still says what
    is valid, and stays far below the trailer limits of gRPC clients."""
    long = "x" * 100_000

    def one_input(**fields: object) -> pb.ModelInferRequest:
        return pb.ModelInferRequest(model_name="demo", inputs=[Tensor(**fields)])

    unknown_model = _infer()
    unknown_model.model_name = long
    cases = [(unknown_model, "served models: demo"),
             (_infer({"method": P(string_param=long)}), "valid: cam, gradcam"),
             (_infer({"target_layer": P(string_param=long)}), "valid: features"),
             (_infer({"heatmap_size": P(string_param=long)}), "valid: grid, input, original"),
             (_infer({"top_k": P(string_param=long)}), "must be an integer"),
             (_infer(outputs=(long,)), "valid: PROBABILITIES"),
             (one_input(name=long, datatype="BYTES", shape=[1, 1]), "valid: IMAGE"),
             (one_input(name="IMAGE", datatype=long, shape=[1] * 50_000), "must be BYTES"),
             (pb.ModelInferRequest(model_name="demo", inputs=[Tensor(name="x" * 100)] * 1000),
              "send exactly one")]
    for request, words in cases:
        with pytest.raises(Failure, match=words) as err:
            parse_infer(parser, request)
        assert "... (" in err.value.message and len(err.value.message) < 800, err.value.message


def test_status_messages_fit_any_client_trailer() -> None:
    """Whatever a message says, what goes on the wire fits MAX_MESSAGE_BYTES (percent-encoded), and
    says that it was cut."""
    for text in ("a" * 5000, "\u00e9" * 5000, "%" * 5000, "\u2603\n" * 3000):
        sent = message_of(Failure(text, ErrorKind.INVALID_INPUT))
        wire_bytes = sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in sent.encode())
        assert wire_bytes <= MAX_MESSAGE_BYTES and sent.endswith("characters in all)") and text.startswith(
            sent[:10])
    assert message_of(Failure("short", ErrorKind.INVALID_INPUT)) == "short"


def test_classification_and_shared_memory_parameters(parser: RequestParser) -> None:
    """Output parameters are read, never ignored: ``classification`` on PROBABILITIES (at most the
    model's classes); refused elsewhere or below 1; shared-memory placement refused (no extension)."""
    def asking(name: str, **params: pb.InferParameter) -> pb.ModelInferRequest:
        request = _infer()
        out = request.outputs.add(name=name)
        for key, value in params.items():
            out.parameters[key].CopyFrom(value)
        return request

    assert parse_infer(parser, asking("PROBABILITIES", classification=P(int64_param=3))).class_count == 3
    assert parse_infer(parser, asking("PROBABILITIES", classification=P(uint64_param=99))).class_count == 10
    assert parse_infer(parser, asking("PROBABILITIES")).class_count == 0
    for request, words in [(asking("SCORES", classification=P(int64_param=3)), "to PROBABILITIES only"),
                           (asking("PROBABILITIES", classification=P(int64_param=0)), "must be >= 1"),
                           (asking("PROBABILITIES", classification=P(bool_param=True)), "must be an integer"),
                           (asking("HEATMAP", shared_memory_region=P(string_param="r0")), "shared memory")]:
        with pytest.raises(Failure, match=words) as err:
            parse_infer(parser, request)
        assert err.value.kind is ErrorKind.INVALID_INPUT
    placed = _infer()
    placed.inputs[0].parameters["shared_memory_region"].CopyFrom(P(string_param="r0"))
    del placed.raw_input_contents[:]
    with pytest.raises(Failure, match="input 'IMAGE' is placed in shared memory"):
        parse_infer(parser, placed)


def test_outputs_and_overlay_choice(parser: RequestParser) -> None:
    with_overlay = parse_infer(parser, _infer({"overlay": P(string_param="jpeg")}))
    assert with_overlay.outputs == (*oip.DEFAULT_OUTPUTS, "OVERLAY") and with_overlay.output.overlay == "jpeg"
    asked = parse_infer(parser, _infer({"overlay": P(string_param="jpeg")}, outputs=("CLASS_IDS",)))
    assert asked.outputs == ("CLASS_IDS",) and asked.output.overlay is None and not asked.output.tensor
    assert parse_infer(parser, _infer(outputs=("OVERLAY",))).output.overlay == "png"
    with pytest.raises(Failure, match="name an output twice"):
        parse_infer(parser, _infer(outputs=("SCORES", "SCORES")))


def test_request_limits(parser: RequestParser) -> None:
    queue = parser.repository["demo"].batching.max_queue_size
    with pytest.raises(Failure, match=f"at most {queue} per request") as err:
        parse_infer(parser, _infer(rows=queue + 1))
    assert err.value.kind is ErrorKind.INVALID_INPUT  # never fits: not a retryable QUEUE_FULL
    with pytest.raises(Failure, match="at most 256"):
        parse_infer(parser, _infer(id="x" * 257))
    with pytest.raises(Failure, match="no rows"):
        parse_infer(parser, _infer(rows=0))
    assert len(parse_infer(parser, _infer(rows=3))) == 3  # what admission counts: the rows carried
    huge = pb.ModelInferRequest(inputs=[Tensor(name="IMAGE", datatype="BYTES", shape=[1 << 40, 1])])
    with pytest.raises(Failure, match="more than 2147483648 elements") as err:  # a claim, refused as one
        parse_infer(parser, huge)
    assert err.value.kind is ErrorKind.INVALID_INPUT


def test_unready_model_is_unavailable_not_an_error_of_the_caller(parser: RequestParser) -> None:
    strict = RequestParser(parser.repository, lambda name: None)
    with pytest.raises(Failure) as err:
        parse_infer(strict, _infer())
    assert err.value.kind is ErrorKind.NOT_READY


# ------------------------------------------------------------------------------ hostile requests

_NAMES = st.sampled_from(["IMAGE", "PIXELS", "INPUT__0", "", "image"])
_TYPES = st.sampled_from(["BYTES", "UINT8", "FP32", "FP16", "INT64", "BOOL", "COMPLEX", ""])
_DIMS = st.lists(st.integers(min_value=-3, max_value=70) | st.sampled_from([1 << 40, 64]), max_size=5)
# Text a number parser may choke on: other scripts' digits, superscripts, underscores, 5,000 digits.
_NUMERIC = (st.text(st.sampled_from("0123456789\u00b2\u0661\u0663\uff11"), min_size=1, max_size=4)
            | st.text(st.sampled_from("0123456789+-._eE "), max_size=8)
            | st.builds(lambda n: "9" * n, st.integers(15, 5000)))
_PARAM = st.one_of(st.builds(lambda v: pb.InferParameter(string_param=v), st.text(max_size=12) | _NUMERIC),
                   st.builds(lambda v: pb.InferParameter(int64_param=v),
                             st.integers(-(1 << 63), (1 << 63) - 1)),
                   st.builds(lambda v: pb.InferParameter(uint64_param=v), st.integers(0, (1 << 64) - 1)),
                   st.builds(lambda v: pb.InferParameter(double_param=v), st.floats(allow_nan=True)),
                   st.builds(lambda v: pb.InferParameter(bool_param=v), st.booleans()),
                   st.just(pb.InferParameter()))


@st.composite
def _hostile(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=draw(st.sampled_from(["demo", "", "nope"])),
                                   model_version=draw(st.sampled_from(["", "1", "2", "x", "-1"]) | _NUMERIC))
    for _ in range(draw(st.integers(0, 2))):
        t = request.inputs.add(name=draw(_NAMES), datatype=draw(_TYPES), shape=draw(_DIMS))
        if draw(st.booleans()):
            t.contents.uint_contents.extend(draw(st.lists(st.integers(0, (1 << 32) - 1), max_size=8)))
        if draw(st.booleans()):
            t.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=16), max_size=3)))
    for _ in range(draw(st.integers(0, 2))):
        request.raw_input_contents.append(draw(st.binary(max_size=64) | st.builds(
            lambda n: oip.pack_bytes([b"x"] * n), st.integers(0, 3))))
    for name in draw(st.lists(st.sampled_from([*oip.PARAMETERS, "sequence_id", ""]), max_size=5)):
        request.parameters[name].CopyFrom(draw(_PARAM))
    for name in draw(st.lists(st.sampled_from([*oip.OUTPUTS, "LOGITS"]), max_size=3)):
        request.outputs.add(name=name)
    return request


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=_hostile())
def test_hostile_requests_are_refused_by_kind_never_by_a_bug(parser: RequestParser,
                                                             request: pb.ModelInferRequest) -> None:
    """Whatever a caller sends, parsing either succeeds or raises a Failure of a caller's kind (never
    INTERNAL, never another exception, never an allocation sized by the caller's numbers)."""
    try:
        call = parse_infer(parser, request)
    except Failure as exc:
        assert exc.kind is not ErrorKind.INTERNAL and exc.message
        return
    assert 1 <= len(call) <= parser.repository["demo"].batching.max_queue_size
