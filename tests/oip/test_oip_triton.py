"""The Open Inference Protocol endpoint through the stock tritonclient, against a real server.

One server for the module (demo, flat, and ``held``: the demo model with batches that form only when
full), one CPU worker, bearer-token auth on (every RPC but grpc.health and reflection needs it) and a
60 s pre-stop window, which the last test uses to watch readiness during a drain. tritonclient runs
in its own environment (oipkit.triton); camserve.v1 calls made here give the reference maps. KServe's
Python SDK drives the same server (kserve_sdk_cases.py).
"""

from __future__ import annotations

import base64
import shutil
import signal
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import grpc
import kserve_sdk_cases
import numpy as np
import pytest
from camserve.repository import bundled_repository_path
from camserve_proto import explain_pb2 as pb
from camserve_proto import explain_pb2_grpc as pb_grpc
from camserve_proto import grpc_service_pb2 as ipb
from camserve_proto import grpc_service_pb2_grpc as ipb_grpc
from camserve_proto import oip
from camserve_proto import vocabulary as wire
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from oipkit import (
    array,
    digit_images,
    image_input,
    make_repository,
    perf_analyzer,
    perf_analyzer_data,
    pixels_input,
    png,
    triton,
)
from serverproc import ServerProcess, start_server

TOKEN = "oip-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
METADATA = (("authorization", f"Bearer {TOKEN}"),)
DEFAULT_ORDER = ["PROBABILITIES", "HEATMAP", "CLASS_IDS", "SCORES"]


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    tmp = Path(tempfile.mkdtemp(prefix="camserve-oip-"))
    demo = bundled_repository_path() / "demo"
    repo = make_repository(tmp / "repo", demo)
    tokens = tmp / "tokens.txt"
    tokens.write_text(TOKEN + "\n")
    srv = start_server("--auth-token-file", str(tokens), repository=repo, workers="cpu:1",
                       pre_stop_seconds=60)
    try:
        yield srv
    finally:
        code = srv.stop(sig=signal.SIGINT)  # SIGINT skips what is left of the pre-stop window
        shutil.rmtree(tmp, ignore_errors=True)
        assert code == 0, srv.log_tail()


@pytest.fixture(scope="module")
def explain(server: ServerProcess) -> pb_grpc.ExplainServiceStub:
    channel = server.channel()
    yield pb_grpc.ExplainServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return digit_images(8)


def calls(server: ServerProcess, *plan: dict[str, Any], headers: dict[str, str] | None = None) -> list[dict]:
    return triton(server.target, list(plan), AUTH if headers is None else headers)


def value(result: dict[str, Any]) -> Any:
    assert result["ok"], result
    return result["value"]


def explain_maps(stub: pb_grpc.ExplainServiceStub, **kw: Any) -> pb.ExplainResponse:
    return stub.Explain(pb.ExplainRequest(**kw), timeout=120, metadata=METADATA)


# ------------------------------------------------------------------------------ health and metadata


def test_health_metadata_and_config(server: ServerProcess) -> None:
    r = calls(server, {"op": "live"}, {"op": "ready"}, {"op": "model_ready"},
              {"op": "model_ready", "model": "flat", "version": "3"},
              {"op": "model_ready", "model": "flat", "version": "2"}, {"op": "model_ready", "model": "nope"},
              {"op": "server_metadata"}, {"op": "model_metadata"}, {"op": "model_config"},
              {"op": "model_metadata", "model": "flat"}, {"op": "model_config", "model": "held"})
    assert [value(x) for x in r[:4]] == [True, True, True, True]
    assert [(x["ok"], x.get("code")) for x in r[4:6]] == [(False, "NOT_FOUND")] * 2
    assert "served models: demo, flat, held" in r[5]["message"]
    meta = value(r[6])
    assert meta["name"] == "camserve" and meta["version"]
    assert meta["extensions"] == ["parameters", "model_configuration", "statistics", "classification"]

    demo = value(r[7])
    assert demo["name"] == "demo" and demo["versions"] == ["1"] and demo["platform"] == "camserve"
    assert [(t["name"], t["datatype"], t["shape"]) for t in demo["inputs"]] == [
        ("IMAGE", "BYTES", ["-1", "1"]), ("PIXELS", "UINT8", ["-1", "64", "64", "3"])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in demo["outputs"]] == [
        ("PROBABILITIES", "FP32", ["-1", "10"]), ("HEATMAP", "FP32", ["-1", "-1", "-1", "-1"]),
        ("CLASS_IDS", "INT32", ["-1", "-1"]), ("SCORES", "FP32", ["-1", "-1"]),
        ("OVERLAY", "BYTES", ["-1", "-1"])]

    config = value(r[8])["config"]
    assert config["name"] == "demo" and config["max_batch_size"] == 32 and config["backend"] == "camserve"
    assert [(i["name"], i["data_type"], i["dims"], i["optional"]) for i in config["input"]] == [
        ("IMAGE", "TYPE_STRING", ["1"], True), ("PIXELS", "TYPE_UINT8", ["64", "64", "3"], True)]
    assert [(o["name"], o["data_type"]) for o in config["output"]] == [
        ("PROBABILITIES", "TYPE_FP32"), ("HEATMAP", "TYPE_FP32"), ("CLASS_IDS", "TYPE_INT32"),
        ("SCORES", "TYPE_FP32"), ("OVERLAY", "TYPE_STRING")]
    batching = config["dynamic_batching"]
    assert batching["preferred_batch_size"] == [1, 2, 4, 8, 16, 32]
    assert batching["max_queue_delay_microseconds"] == "2000"
    assert batching["default_queue_policy"]["max_queue_size"] == 256
    assert config["parameters"]["target_layer"]["string_value"] == "features"

    flat = value(r[9])
    assert flat["versions"] == ["3"] and flat["inputs"][1]["shape"] == ["-1", "32", "32", "3"]
    held = value(r[10])["config"]
    assert held["max_batch_size"] == 4 and held["dynamic_batching"]["preferred_batch_size"] == [1, 2, 4]


def test_reflection_and_health_answer_what_stock_tools_ask(server: ServerProcess) -> None:
    """grpcurl's `list`, `describe SERVICE` and `describe SERVICE.METHOD` (file_containing_symbol of the
    method, which grpcio-reflection answered NOT_FOUND: grpc/grpc#34743) under both reflection names, for
    every listed service; and grpc.health.v1's List (which reflection lists too), with every name."""
    with server.channel() as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert {"camserve.v1.ExplainService", oip.SERVICE_NAME} <= services
        file = db.FindFileContainingSymbol(oip.SERVICE_NAME)
        assert file.package == "inference"
        methods = {m.name: m.input_type for s in file.service for m in s.method}
        described = {}
        for path in ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"):
            ask = ch.stream_stream(f"/{path}/ServerReflectionInfo",
                                   request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                   response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
            for service in sorted(services):
                owner = db.FindFileContainingSymbol(service)
                (proto,) = [x for x in owner.service if f"{owner.package}.{x.name}" == service]
                symbols = [f"{service}.{m.name}" for m in proto.method]
                answers = list(ask(iter(reflection_pb2.ServerReflectionRequest(file_containing_symbol=sym)
                                        for sym in symbols), timeout=30, metadata=METADATA))
                for sym, answer in zip(symbols, answers, strict=True):
                    files = answer.file_descriptor_response.file_descriptor_proto
                    described[path, sym] = [descriptor_pb2.FileDescriptorProto.FromString(f).name
                                            for f in files][:1] == [owner.name]
        listed = health_pb2_grpc.HealthStub(ch).List(health_pb2.HealthListRequest(), timeout=30)
    assert set(methods) == set(oip.RPC_METHODS)
    assert methods["ModelInfer"] == ".inference.ModelInferRequest"
    assert ("grpc.reflection.v1.ServerReflection", f"{oip.SERVICE_NAME}.ModelInfer") in described
    assert [key for key, ok in described.items() if not ok] == []
    statuses = {name: health_pb2.HealthCheckResponse.ServingStatus.Name(x.status)
                for name, x in listed.statuses.items()}
    names = ("", "camserve.v1.ExplainService", oip.SERVICE_NAME, "demo", "flat", "held")
    assert statuses == dict.fromkeys(names, "SERVING")


def test_token_is_required(server: ServerProcess, images: np.ndarray) -> None:
    infer = {"op": "infer", "inputs": [image_input([png(images[0])])]}
    for headers in ({}, {"authorization": "Bearer wrong"}):
        r = calls(server, {"op": "live"}, infer, headers=headers)
        assert [x.get("code") for x in r] == ["UNAUTHENTICATED"] * 2, r


def test_unimplemented_methods(server: ServerProcess) -> None:
    """Every protocol method camserve does not serve is UNIMPLEMENTED at once, saying why and what to do
    instead (gRPC's own answer was "Method not found!"), the stock client's stream included (which also
    says it in a reply's error_message first, as Triton reports stream errors); so is a name the protocol
    does not have, whatever the call's shape."""
    def unimplemented() -> float:
        return server.metric("camserve_requests_total", method="other", code="UNIMPLEMENTED")

    counted = unimplemented()
    r = calls(server, {"op": "unimplemented"}, {"op": "aio_stream"})
    answers, (aio_code, aio_message) = value(r[0]), value(r[1])
    # The refusal's words reach the aio client in the reply's error_message. The stream's status is
    # UNIMPLEMENTED, or INTERNAL when requests the client is still sending race the stream's end (gRPC
    # resets a stream ended before its requests were read; seen once in a full suite run).
    assert aio_code in ("UNIMPLEMENTED", "INTERNAL"), r[1]
    assert "nor the aio client's stream_infer" in aio_message, r[1]
    assert set(answers) == {"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
                            "SystemSharedMemoryStatus", "CudaSharedMemoryStatus", "TraceSetting",
                            "LogSettings", "ModelStreamInfer"}
    served = ", ".join(oip.RPC_METHODS)
    instead = {"Repository": "--model-repository", "SharedMemory": "raw_input_contents", "Trace": "queue_ms",
               "Log": "--log-level", "ModelStreamInfer": "send each request with ModelInfer"}
    for method, (code, message) in answers.items():
        said_why = f"camserve does not serve {method}: no " in message and f"It serves {served}" in message
        assert (code, said_why) == ("UNIMPLEMENTED", True), (method, code, message)
        said = [words in message for key, words in instead.items() if key in method]
        assert said == [True], (method, message)
    unknown = f"/{oip.SERVICE_NAME}/ModelExplain"
    with server.channel() as ch:
        errors = [_refused(lambda: ch.unary_unary(unknown)(b"", timeout=30, metadata=METADATA)),
                  _refused(lambda: list(ch.stream_stream(unknown)(iter([b""] * 3), timeout=30,
                                                                  metadata=METADATA)))]
        no_token = _refused(lambda: ch.unary_unary(f"/{oip.SERVICE_NAME}/RepositoryIndex")(b"", timeout=30))
    assert no_token.code() == grpc.StatusCode.UNAUTHENTICATED  # the token is checked first, and counted once
    assert unimplemented() == counted + len(answers) + 1 + len(errors)
    for error in errors:
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED, error
        assert f"has no method 'ModelExplain'. camserve serves {served}" in error.details()
        assert dict(error.trailing_metadata())["grpc-retry-pushback-ms"] == "-1"  # no retry makes it served


def _refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


# ------------------------------------------------------------------------------ inference


def test_image_maps_equal_explain_for_every_method(server: ServerProcess, explain: Any,
                                                   images: np.ndarray) -> None:
    encoded = [png(images[0]), png(images[1])]
    plan = [{"op": "infer", "inputs": [image_input(encoded)], "id": f"req-{m}",
             "parameters": {"method": m, "top_k": 2}} for m in wire.METHODS]
    for method, result in zip(wire.METHODS, calls(server, *plan), strict=True):
        got = value(result)
        assert got["id"] == f"req-{method}" and got["order"] == DEFAULT_ORDER
        assert got["parameters"]["method"] == method
        assert got["parameters"]["target_layer"] == "features"
        out = {name: array(t) for name, t in got["outputs"].items()}
        assert [got["outputs"][n]["datatype"] for n in DEFAULT_ORDER] == ["FP32", "FP32", "INT32", "FP32"]
        assert out["PROBABILITIES"].shape == (2, 10) and out["HEATMAP"].shape == (2, 2, 8, 8)
        assert out["CLASS_IDS"].shape == out["SCORES"].shape == (2, 2)
        for row, data in enumerate(encoded):
            ref = explain_maps(explain, image=pb.Image(encoded=data), method=wire.METHODS[method], top_k=2)
            assert [e.class_index for e in ref.explanations] == out["CLASS_IDS"][row].tolist(), method
            for k, e in enumerate(ref.explanations):
                heatmap = np.frombuffer(e.heatmap.data, "<f4").reshape(tuple(e.heatmap.shape))
                np.testing.assert_allclose(out["HEATMAP"][row, k], heatmap, atol=1e-5, err_msg=method)
                np.testing.assert_allclose(out["SCORES"][row, k], e.score, rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(out["PROBABILITIES"][row, e.class_index], e.probability,
                                           rtol=1e-5, atol=1e-7)
        assert out["HEATMAP"].min() >= 0.0 and out["HEATMAP"].max() <= 1.0


def test_pixels_class_index_and_size_equal_explain(server: ServerProcess, explain: Any,
                                                   images: np.ndarray) -> None:
    pixels = images[2:5]
    call = {"inputs": [pixels_input(pixels)], "parameters": {"class_index": 3, "heatmap_size": "input",
                                                             "method": "layercam"}}
    r = calls(server, {"op": "infer", **call}, {"op": "async_infer", "id": "async-7", **call},
              {"op": "async_infer", **call, "model": "nope"})
    got, through_callback = value(r[0]), value(r[1])
    assert through_callback["id"] == "async-7"  # the stock client's async_infer: same answer, id echoed
    for name, tensor in got["outputs"].items():
        np.testing.assert_allclose(array(through_callback["outputs"][name]), array(tensor), atol=1e-6)
    assert (r[2]["code"], "served models" in r[2]["message"]) == ("NOT_FOUND", True)
    out = {name: array(t) for name, t in got["outputs"].items()}
    assert out["HEATMAP"].shape == (3, 1, 64, 64) and out["CLASS_IDS"].tolist() == [[3]] * 3
    for row, rgb in enumerate(pixels):
        tensor = pb.Tensor(dtype=pb.UINT8, shape=list(rgb.shape), data=rgb.tobytes())
        ref = explain_maps(explain, image=pb.Image(tensor=tensor), method=pb.LAYER_CAM, class_index=3,
                           output=pb.OutputOptions(size=pb.MODEL_INPUT))
        (e,) = ref.explanations
        heatmap = np.frombuffer(e.heatmap.data, "<f4").reshape(tuple(e.heatmap.shape))
        np.testing.assert_allclose(out["HEATMAP"][row, 0], heatmap, atol=1e-5)
        np.testing.assert_allclose(out["SCORES"][row, 0], e.score, rtol=1e-5, atol=1e-6)


def test_requested_outputs_order_and_overlays(server: ServerProcess, images: np.ndarray) -> None:
    r = calls(server,
              {"op": "infer", "inputs": [image_input([png(images[0])])],
               "outputs": ["SCORES", "OVERLAY", "CLASS_IDS"],
               "parameters": {"top_k": 2, "overlay": "jpeg", "colormap": "turbo", "overlay_alpha": 0.6}},
              {"op": "infer", "inputs": [pixels_input(images[:2])], "parameters": {"overlay": "png"}})
    first, second = value(r[0]), value(r[1])
    assert first["order"] == ["SCORES", "OVERLAY", "CLASS_IDS"]
    overlays = array(first["outputs"]["OVERLAY"])
    assert first["outputs"]["OVERLAY"]["datatype"] == "BYTES" and overlays.shape == (1, 2)
    for data in overlays.reshape(-1):
        assert data[:3] == b"\xff\xd8\xff"
        drawn = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert drawn.shape == (64, 64, 3)  # a grid-size map is drawn over the image at the model's input size
    assert second["order"] == [*DEFAULT_ORDER, "OVERLAY"]
    assert all(d[:8] == b"\x89PNG\r\n\x1a\n" for d in array(second["outputs"]["OVERLAY"]).reshape(-1))


def test_target_layer_and_cam_on_flat_model(server: ServerProcess, explain: Any, images: np.ndarray) -> None:
    info = explain.GetModel(pb.GetModelRequest(model="flat"), timeout=30, metadata=METADATA)
    other = next(layer.name for layer in info.layers if layer.name != info.default_target_layer)
    small = np.ascontiguousarray(images[:1, :32, :32])
    r = calls(server, {"op": "infer", "model": "flat", "inputs": [pixels_input(small)],
                       "parameters": {"target_layer": other}},
              {"op": "infer", "model": "flat", "inputs": [pixels_input(small)],
               "parameters": {"method": "cam"}})
    got = value(r[0])
    assert got["parameters"]["target_layer"] == other and got["model_version"] == "3"
    assert r[1]["code"] == "FAILED_PRECONDITION" and "GRAD_CAM works on any layer" in r[1]["message"]


def test_bad_requests_get_clear_codes(server: ServerProcess, images: np.ndarray) -> None:
    ok_image = image_input([png(images[0])])
    ok_pixels = pixels_input(images[:1])
    as_base64 = base64.b64encode(png(images[0]))
    cases = [  # (what, call, code, message fragment)
        ("unknown model", {"model": "nope"}, "NOT_FOUND", "served models: demo, flat, held"),
        ("unknown version", {"version": "9"}, "NOT_FOUND", "no version 9"),
        ("version 0 (not the newest, as in Triton)", {"version": "0"}, "NOT_FOUND",
         "no version 0; served version: 1 (an empty model_version asks for the newest)"),
        ("version not a number", {"version": "v1"}, "INVALID_ARGUMENT", "not a version number"),
        ("version of a superscript digit", {"version": "\u00b2"}, "INVALID_ARGUMENT", "not a version number"),
        ("version of 5,000 digits", {"version": "9" * 5000}, "INVALID_ARGUMENT", "(5000 characters)"),
        ("top_k of 5,000 digits", {"parameters": {"top_k": "9" * 5000}}, "INVALID_ARGUMENT",
         "must be an integer"),
        ("100 KB model name", {"model": "m" * 100_000}, "NOT_FOUND", "(100000 characters) is not served"),
        ("100 KB method", {"parameters": {"method": "m" * 100_000}}, "INVALID_ARGUMENT",
         "(100000 characters); valid: cam, gradcam"),
        ("unknown method", {"parameters": {"method": "gradcam+"}}, "INVALID_ARGUMENT",
         "valid: cam, gradcam, gradcam++, layercam, hirescam, xgradcam, eigencam"),
        ("method not a string", {"parameters": {"method": 3}}, "INVALID_ARGUMENT", "must be a string"),
        ("top_k zero", {"parameters": {"top_k": 0}}, "INVALID_ARGUMENT", "out of range: 1..10"),
        ("top_k too large", {"parameters": {"top_k": 11}}, "INVALID_ARGUMENT", "out of range: 1..10"),
        ("top_k not a number", {"parameters": {"top_k": "many"}}, "INVALID_ARGUMENT", "must be an integer"),
        ("class_index out of range", {"parameters": {"class_index": 10}}, "INVALID_ARGUMENT",
         "10 classes (0..9)"),
        ("class_index and top_k", {"parameters": {"class_index": 1, "top_k": 3}}, "INVALID_ARGUMENT",
         "not both"),
        ("unknown layer", {"parameters": {"target_layer": "nope"}}, "INVALID_ARGUMENT",
         "no target layer 'nope'"),
        ("unknown heatmap size", {"parameters": {"heatmap_size": "huge"}}, "INVALID_ARGUMENT",
         "valid: grid, input, original"),
        ("unknown overlay format", {"parameters": {"overlay": "gif"}}, "INVALID_ARGUMENT",
         "valid: png, jpeg"),
        ("alpha out of range", {"parameters": {"overlay_alpha": 1.5}}, "INVALID_ARGUMENT", "in (0, 1]"),
        ("negative timeout", {"parameters": {"top_k": 1}, "timeout": -5}, "INVALID_ARGUMENT", "timeout"),
        ("unknown output", {"outputs": ["LOGITS"]}, "INVALID_ARGUMENT",
         "valid: PROBABILITIES, HEATMAP, CLASS_IDS, SCORES, OVERLAY"),
        ("unknown input", {"inputs": [{**ok_pixels, "name": "INPUT__0"}]}, "INVALID_ARGUMENT",
         "unknown input 'INPUT__0'"),
        # What perf_analyzer's generated data sends (it fills every input): the way out is named.
        ("two inputs", {"inputs": [ok_image, ok_pixels]}, "INVALID_ARGUMENT",
         "send exactly one: valid: IMAGE (BYTES [N, 1], encoded images) or PIXELS (UINT8 [N, 64, 64, 3]) "
         "(perf_analyzer fills every input with generated data; give it --input-data"),
        ("pixels of another size", {"inputs": [pixels_input(images[:1, :32, :32])]}, "INVALID_ARGUMENT",
         "UINT8 [N, 64, 64, 3]"),
        ("pixels as FP32", {"inputs": [pixels_input(images[:1].astype(np.float32), datatype="FP32")]},
         "INVALID_ARGUMENT", "must be UINT8"),
        ("image as UINT8", {"inputs": [pixels_input(images[:1], name="IMAGE")]}, "INVALID_ARGUMENT",
         "must be BYTES [N, 1]"),
        ("not an image", {"inputs": [image_input([b"GIF89a not really"])]}, "INVALID_ARGUMENT",
         "row 0: not a supported image: the bytes start with b'GIF89a n'; send JPEG, PNG, WebP, BMP "
         "(or the PIXELS input: UINT8 pixels)"),
        # A caller used to JSON APIs base64-encodes the image (or sends a data: URI): the fix is named.
        ("base64 text of a PNG", {"inputs": [image_input([as_base64])]}, "INVALID_ARGUMENT",
         "row 0: the bytes are base64 text of a PNG image"),
        ("a data: URI", {"inputs": [image_input([b"data:image/png;base64," + as_base64])]},
         "INVALID_ARGUMENT", "send the image's bytes themselves"),
        ("original maps of two sizes", {"inputs": [image_input([png(images[0]), png(images[1][:40])])],
                                        "parameters": {"heatmap_size": "original"}},
         "INVALID_ARGUMENT", "needs images of one size"),
    ]
    results = calls(server, *({"op": "infer", "inputs": [ok_image], **call} for _, call, _, _ in cases))
    for (what, _, code, fragment), got in zip(cases, results, strict=True):
        assert not got["ok"], what
        assert (got["code"], fragment in got["message"]) == (code, True), (
            what, got["code"], got["message"][:300])


def test_classification_extension(server: ServerProcess, images: np.ndarray) -> None:
    """Triton's classification extension, as its image_client asks for it: PROBABILITIES with
    ``class_count`` comes back as BYTES [N, count] "<probability>:<index>:<label>", best first; a count
    past the classes gives them all; elsewhere the parameter is refused, never ignored."""
    rows = image_input([png(images[0]), png(images[1])])
    def classes(name: str, n: int) -> dict[str, Any]:
        return {"name": name, "class_count": n}

    r = calls(server, {"op": "infer", "inputs": [rows], "outputs": ["PROBABILITIES"]},
              {"op": "infer", "inputs": [rows], "outputs": [classes("PROBABILITIES", 3), "CLASS_IDS"]},
              {"op": "infer", "inputs": [rows], "outputs": [classes("PROBABILITIES", 50)]},
              {"op": "infer", "inputs": [rows], "outputs": [classes("SCORES", 3)]},
              {"op": "infer", "inputs": [rows], "outputs": [classes("PROBABILITIES", -2)]})
    probs = array(value(r[0])["outputs"]["PROBABILITIES"])
    top = value(r[1])["outputs"]
    assert top["PROBABILITIES"]["datatype"] == "BYTES" and top["PROBABILITIES"]["shape"] == [2, 3]
    got = [[s.decode().split(":") for s in row] for row in array(top["PROBABILITIES"])]
    for row, p in zip(got, probs, strict=True):
        best = np.argsort(-p, kind="stable")[:3]
        assert [int(i) for _, i, _ in row] == best.tolist()
        assert [label for _, _, label in row] == [str(i) for i in best]  # the demo's labels are its digits
        np.testing.assert_allclose([float(v) for v, _, _ in row], p[best], atol=1e-6)
    assert array(top["CLASS_IDS"])[:, 0].tolist() == [int(row[0][1]) for row in got]
    assert value(r[2])["outputs"]["PROBABILITIES"]["shape"] == [2, 10]
    assert (r[3]["code"], "applies to PROBABILITIES only" in r[3]["message"]) == ("INVALID_ARGUMENT", True)
    assert (r[4]["code"], "must be >= 1" in r[4]["message"]) == ("INVALID_ARGUMENT", True)


def test_typed_contents_through_the_generated_stub(server: ServerProcess, images: np.ndarray) -> None:
    """KServe clients may send typed contents instead of raw bytes: the same answer comes back."""
    rgb = images[5:6]
    raw = ipb.ModelInferRequest(model_name="demo", raw_input_contents=[rgb.tobytes()], inputs=[
        ipb.ModelInferRequest.InferInputTensor(name="PIXELS", datatype="UINT8", shape=rgb.shape)])
    typed = ipb.ModelInferRequest(model_name="demo", inputs=[ipb.ModelInferRequest.InferInputTensor(
        name="PIXELS", datatype="UINT8", shape=rgb.shape,
        contents=ipb.InferTensorContents(uint_contents=rgb.reshape(-1).tolist()))])
    image = ipb.ModelInferRequest(model_name="demo", inputs=[ipb.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[1, 1],
        contents=ipb.InferTensorContents(bytes_contents=[png(rgb[0])]))])
    bad = ipb.ModelInferRequest()
    bad.CopyFrom(typed)
    bad.inputs[0].contents.uint_contents[0] = 300
    with server.channel() as ch:
        stub = ipb_grpc.GRPCInferenceServiceStub(ch)
        replies = [stub.ModelInfer(r, timeout=120, metadata=METADATA) for r in (raw, typed, image)]
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(bad, timeout=60, metadata=METADATA)
        both = ipb.ModelInferRequest()
        both.CopyFrom(typed)
        both.raw_input_contents.append(rgb.tobytes())
        with pytest.raises(grpc.RpcError) as err2:
            stub.ModelInfer(both, timeout=60, metadata=METADATA)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "outside 0..255" in err.value.details()
    assert err2.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "one form only" in err2.value.details()
    heat = [np.frombuffer(r.raw_output_contents[1], "<f4") for r in replies]
    assert all(not r.outputs[0].HasField("contents") for r in replies)  # replies are raw only
    np.testing.assert_array_equal(heat[0], heat[1])
    np.testing.assert_array_equal(heat[0], heat[2])  # PNG is lossless: the same pixels


# ----------------------------------------------------------------------- batching, deadlines, accounting


def test_oip_and_camserve_callers_share_a_batch(server: ServerProcess, explain: Any,
                                                images: np.ndarray) -> None:
    """``held`` forms a batch only when 4 images wait: 2 rows of one ModelInfer + 2 Explain calls."""
    before = server.metric("camserve_batch_size_count", model="held")
    with ThreadPoolExecutor(3) as pool:
        oip_call = pool.submit(calls, server, {"op": "infer", "model": "held",
                                               "inputs": [image_input([png(images[0]), png(images[1])])]})
        v1 = [pool.submit(explain_maps, explain, model="held", image=pb.Image(encoded=png(images[i])))
              for i in (2, 3)]
        got = value(oip_call.result()[0])
        timings = [f.result().timing for f in v1]
    assert got["parameters"]["batch_size"] == 4.0
    assert [t.batch_size for t in timings] == [4, 4]
    assert server.metric("camserve_batch_size_count", model="held") == before + 1


def test_timeout_parameter_is_honoured_and_priority_ignored(server: ServerProcess,
                                                            images: np.ndarray) -> None:
    dropped = server.metric("camserve_requests_dropped_total", model="held", reason="deadline")
    r = calls(server, {"op": "infer", "model": "held", "inputs": [image_input([png(images[0])])],
                       "timeout": 200_000},  # 0.2 s: a lone image on `held` never makes a full batch
              {"op": "infer", "inputs": [image_input([png(images[0])])], "priority": 3})
    assert r[0]["code"] == "DEADLINE_EXCEEDED", r[0]
    assert r[1]["ok"], r[1]
    assert server.metric("camserve_requests_dropped_total", model="held", reason="deadline") == dropped + 1


def test_statistics_count_requests_and_images_as_triton_does(server: ServerProcess,
                                                           images: np.ndarray) -> None:
    """Triton's statistics extension: success, fail, queue and compute_infer count requests (a 3-row
    ModelInfer once), inference_count counts images, execution_count batches."""
    def stats() -> dict[str, Any]:
        (s,) = value(calls(server, {"op": "statistics", "model": "demo"})[0])["model_stats"]
        return s

    ok_before = server.metric("camserve_requests_total", model="demo", method="ModelInfer", code="OK")
    bad_before = server.metric("camserve_requests_total", model="demo", method="ModelInfer",
                               code="INVALID_ARGUMENT")
    before = stats()
    r = calls(server, {"op": "infer", "inputs": [pixels_input(images[:3])]},
              {"op": "infer", "inputs": [pixels_input(images[:1])], "parameters": {"method": "nope"}})
    assert r[0]["ok"] and not r[1]["ok"]
    after = stats()

    def n(s: dict[str, Any], *path: str) -> int:
        for key in path:
            s = s.get(key, {})
        return int(s or 0)

    assert n(after, "inference_count") - n(before, "inference_count") == 3
    assert n(after, "execution_count") - n(before, "execution_count") >= 1
    for part in ("success", "queue", "compute_infer"):
        counted = n(after, "inference_stats", part, "count") - n(before, "inference_stats", part, "count")
        assert counted == 1, part
        assert n(after, "inference_stats", part, "ns") > n(before, "inference_stats", part, "ns"), part
    # Triton counts its three compute phases alike, and perf_analyzer aborts when they differ
    # ("Server side statistics compute counts must be the same"): decoding and encoding are not timed
    # apart, so compute_input and compute_output carry compute_infer's count and no time.
    computed = n(after, "inference_stats", "compute_infer", "count")
    for part in ("compute_input", "compute_output"):
        assert n(after, "inference_stats", part, "count") == computed, part
        assert n(after, "inference_stats", part, "ns") == 0, part
    assert n(after, "inference_stats", "fail", "count") - n(before, "inference_stats", "fail", "count") == 1
    assert int(after["last_inference"]) >= int(before.get("last_inference", 0))
    ok_after = server.metric("camserve_requests_total", model="demo", method="ModelInfer", code="OK")
    assert ok_after == ok_before + 1
    assert server.metric("camserve_requests_total", model="demo", method="ModelInfer",
                         code="INVALID_ARGUMENT") == bad_before + 1
    assert server.metric("camserve_requests_total", method="ModelStatistics", code="OK") >= 2
    every = value(calls(server, {"op": "statistics"})[0])["model_stats"]
    assert [s["name"] for s in every] == ["demo", "flat", "held"]


# ------------------------------------------------------------------------------ perf_analyzer


def test_perf_analyzer_measures_images_and_pixels(server: ServerProcess, images: np.ndarray,
                                                  tmp_path: Path) -> None:
    """Triton's perf_analyzer, as a Triton user runs it: real images for IMAGE, then pixels for PIXELS
    (--input-data naming one input: generated data cannot be an image), at concurrency 1 and 3. It reads
    ServerMetadata, ModelMetadata, ModelConfig and ModelStatistics around each window, and completes with
    the server-side split (it aborted on unequal compute counts before)."""
    data = [perf_analyzer_data(tmp_path / "images.json", "IMAGE", [png(im) for im in images[:4]]),
            perf_analyzer_data(tmp_path / "pixels.json", "PIXELS", images[:4])]
    for i, path in enumerate(data):
        report = tmp_path / f"report{i}.csv"
        # Few requests per window and any spread counts as stable: this checks the protocol, not speed.
        run = perf_analyzer(server.target, "demo", "--input-data", str(path), "--concurrency-range", "1:3:2",
                            "--measurement-mode", "count_windows", "--measurement-request-count", "10",
                            "--stability-percentage", "1000", "--max-trials", "3", "-f", str(report),
                            headers=AUTH)
        assert run.returncode == 0, f"{path.name}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        assert "compute counts must be the same" not in run.stdout + run.stderr
        rows = report.read_text().splitlines()
        assert [r.split(",")[0] for r in rows[1:]] == ["1", "3"], rows
        assert "Server:" in run.stdout and "compute infer" in run.stdout, run.stdout[-2000:]


def test_perf_analyzer_mistakes_are_named(server: ServerProcess, images: np.ndarray, tmp_path: Path) -> None:
    """What perf_analyzer users get wrong ends at the first request with a message saying what to do,
    never a hang: its generated data (it fills every input, and random bytes are no image), and an image
    given as "b64" without the raw BYTES form's length prefix, --streaming (camserve serves no stream)."""
    unprefixed = perf_analyzer_data(tmp_path / "bare.json", "IMAGE", [png(images[0])], length_prefix=False)
    good = perf_analyzer_data(tmp_path / "images.json", "IMAGE", [png(images[0])])
    for args, words in [((), "perf_analyzer fills every input with generated data; give it --input-data"),
                        (("--input-data", str(unprefixed)), "the content is an encoded image itself"),
                        # its C++ client ignores a stream's status: before the error_message reply it hung
                        (("--input-data", str(good), "--streaming"), "perf_analyzer: without --streaming")]:
        run = perf_analyzer(server.target, "demo", *args, "--measurement-mode", "count_windows",
                            "--measurement-request-count", "5", headers=AUTH, timeout=120)
        assert run.returncode != 0 and words in run.stdout + run.stderr, (args, run.stdout[-2000:])


# ----------------------------------------------------------------------- KServe's Python SDK


@pytest.fixture(scope="module")
def kserve_results(server: ServerProcess) -> dict[str, list[dict]]:
    return kserve_sdk_cases.run_cases(server.target, AUTH)  # every case's calls, one SDK process


@pytest.mark.parametrize("case", list(kserve_sdk_cases.CASES))
def test_kserve_sdk(case: str, kserve_results: dict[str, list[dict]]) -> None:
    """kserve_sdk_cases.py: what KServe's SDK, as its users call it, gets from this server."""
    _, check = kserve_sdk_cases.CASES[case]
    check(kserve_results[case])


# ----------------------------------------------------------------------- drain (last: it stops the server)


def test_drain_not_ready_but_live_and_serving(server: ServerProcess, images: np.ndarray) -> None:
    server.send_signal(signal.SIGTERM)
    server.wait_health("NOT_SERVING", timeout=60)
    r = calls(server, {"op": "live"}, {"op": "ready"}, {"op": "model_ready"},
              {"op": "infer", "inputs": [image_input([png(images[0])])]})
    assert [value(x) for x in r[:3]] == [True, False, False]
    assert r[3]["ok"], r[3]  # the pre-stop window still serves (Kubernetes may still route here)
    assert server.health(oip.SERVICE_NAME) == "NOT_SERVING"

