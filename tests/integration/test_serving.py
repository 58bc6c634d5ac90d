"""The real server over real gRPC: batching, equality with the in-process engine, every status code.

One server subprocess for the whole module (demo model + a Flatten-head model), one CPU worker.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from camserve_proto import explain_pb2 as pb
from camserve_proto import explain_pb2_grpc as pb_grpc
from front_helpers import code_name, digit_images, heatmap, jpeg, make_repository, png, request, served
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from serverproc import ServerProcess, start_server, wait_for
from shared_dir import contract_check

ALL_METHODS = (pb.CAM, pb.GRAD_CAM, pb.GRAD_CAM_PLUS_PLUS, pb.LAYER_CAM, pb.HIRES_CAM, pb.XGRAD_CAM,
               pb.EIGEN_CAM)
ENGINE_NAMES = {pb.CAM: "cam", pb.GRAD_CAM: "gradcam", pb.GRAD_CAM_PLUS_PLUS: "gradcam++",
                pb.LAYER_CAM: "layercam", pb.HIRES_CAM: "hirescam", pb.XGRAD_CAM: "xgradcam",
                pb.EIGEN_CAM: "eigencam"}


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    tmp = Path(tempfile.mkdtemp(prefix="camserve-it-"))
    repo = make_repository(tmp / "repo")
    with served(start_server(repository=repo, workers="cpu:1"), tmp) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> pb_grpc.ExplainServiceStub:
    channel = server.channel([("grpc.max_receive_message_length", 64 << 20)])
    yield pb_grpc.ExplainServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return digit_images(80)


def code_of(call, req, timeout: float = 30) -> tuple[str, str]:
    try:
        call(req, timeout=timeout)
        return "OK", ""
    except grpc.RpcError as e:
        return e.code().name, e.details() or ""


# ------------------------------------------------------------------------------------- plumbing


def test_health_and_reflection_with_stock_clients(server: ServerProcess) -> None:
    with server.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", "camserve.v1.ExplainService", "demo", "flat"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="no-such-model"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert {"camserve.v1.ExplainService", "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= services
        desc = db.FindFileContainingSymbol("camserve.v1.ExplainService")
        assert desc.package == "camserve.v1"
        # grpc.reflection.v1, which grpcurl and other stock tools ask first: the same answers
        from grpc_reflection.v1alpha import reflection_pb2 as rpb

        v1 = ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                              request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                              response_deserializer=rpb.ServerReflectionResponse.FromString)
        listed, own, ours = v1(iter([
            rpb.ServerReflectionRequest(list_services=""),
            rpb.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
            rpb.ServerReflectionRequest(file_containing_symbol="camserve.v1.ExplainService")]), timeout=10)
        assert {s.name for s in listed.list_services_response.service} == services | {
            "grpc.reflection.v1.ServerReflection"}
        from google.protobuf import descriptor_pb2

        for answer, package in ((own, "grpc.reflection.v1"), (ours, "camserve.v1")):
            files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                     for b in answer.file_descriptor_response.file_descriptor_proto]
            assert files and files[0].package == package, answer


def test_parent_process_never_loads_tensorflow(server: ServerProcess) -> None:
    maps = server.mapped_files()
    assert "tensorflow" not in maps.lower(), "the server's parent process mapped a TensorFlow library"
    fronts = server.frontend_pids()
    assert fronts, "no front-end process found"
    for pid in fronts:
        assert "tensorflow" not in Path(f"/proc/{pid}/maps").read_text().lower(), "a front end mapped TF"
    workers = server.worker_pids()
    assert len(workers) == 1
    assert "tensorflow" in Path(f"/proc/{workers[0]}/maps").read_text().lower()


def test_list_and_get_models(stub: pb_grpc.ExplainServiceStub) -> None:
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert set(models) == {"demo", "flat"}
    demo = models["demo"]
    assert demo.ready and list(demo.input_shape) == [64, 64, 3] and demo.num_classes == 10
    assert list(demo.labels) == [str(i) for i in range(10)] and demo.preprocessing == "tf"
    assert demo.default_target_layer == "features" and demo.compile_mode == "graph"
    assert pb.CAM in demo.methods and list(demo.batch_buckets) == [1, 2, 4, 8, 16, 32]
    features = next(layer for layer in demo.layers if layer.name == "features")
    assert features.cam_supported and list(features.grid) == [8, 8] and features.channels == 96
    flat = stub.GetModel(pb.GetModelRequest(model="flat", model_version=3), timeout=10)
    assert flat.version == 3 and pb.CAM not in flat.methods and pb.GRAD_CAM in flat.methods
    assert not any(layer.cam_supported for layer in flat.layers) and flat.labels[0] == "north"
    for req in (pb.GetModelRequest(model="nope"), pb.GetModelRequest(model="flat", model_version=2)):
        code, details = code_of(stub.GetModel, req)
        assert code == "NOT_FOUND" and ("nope" in details or "served version: 3" in details)


# ------------------------------------------------------------------------------------- batching


def test_64_concurrent_calls_are_batched(server: ServerProcess, stub: pb_grpc.ExplainServiceStub,
                                         images: np.ndarray) -> None:
    before_count = server.metric("camserve_batch_size_count", model="demo")
    before_single = server.metric("camserve_batch_size_bucket", model="demo", le="1.0")
    reqs = [request(jpeg(images[i]), request_id=f"c{i}") for i in range(64)]
    with ThreadPoolExecutor(64) as pool:
        replies = list(pool.map(lambda r: stub.Explain(r, timeout=120), reqs))
    assert [r.request_id for r in replies] == [f"c{i}" for i in range(64)]
    assert all(r.model == "demo" and r.method == pb.GRAD_CAM and len(r.explanations) == 1 for r in replies)
    assert max(r.timing.batch_size for r in replies) > 1
    batches = server.metric("camserve_batch_size_count", model="demo") - before_count
    singles = server.metric("camserve_batch_size_bucket", model="demo", le="1.0") - before_single
    assert batches < 64 and singles < batches, (batches, singles)
    for r in replies:
        hm = heatmap(r.explanations[0])
        assert hm.shape == (8, 8) and np.isfinite(hm).all() and hm.min() >= 0 and hm.max() <= 1
        assert len(r.top_predictions) == 5
        probs = [p.probability for p in r.top_predictions]
        assert probs == sorted(probs, reverse=True) and r.explanations[0].class_index == \
            r.top_predictions[0].class_index
        assert r.timing.total_ms >= r.timing.compute_ms > 0 and r.timing.queue_ms >= 0


def test_heatmaps_equal_the_in_process_engine(stub: pb_grpc.ExplainServiceStub, images: np.ndarray) -> None:
    """Every method, top-2, over gRPC (lossless PNG at the input size) vs Explainer in this process."""
    import keras
    from camserve.engine import Explainer
    from camserve.records import ItemSpec
    from front_helpers import demo_dir

    model = keras.saving.load_model(demo_dir() / "model.keras", compile=False)
    explainer = Explainer(model, target_layer="features", preprocessing="tf", compile_mode="graph",
                          max_batch_size=8)
    batch = images[:6]
    for method in ALL_METHODS:
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda im: stub.Explain(request(png(im), method=method, top_k=2),  # noqa: B023
                                                            timeout=60), batch))
        ref = explainer.explain_batch(batch, [ItemSpec(method=ENGINE_NAMES[method], top_k=2)] * len(batch))
        for reply, want in zip(replies, ref, strict=True):
            assert [e.class_index for e in reply.explanations] == [m.class_index for m in want.maps]
            for got, exp in zip(reply.explanations, want.maps, strict=True):
                np.testing.assert_allclose(heatmap(got), exp.heatmap, atol=1e-5, rtol=0)
                assert got.all_zero == exp.all_zero
                assert got.probability == pytest.approx(float(want.probabilities[exp.class_index]), abs=1e-5)
                assert got.score == pytest.approx(float(exp.score), abs=1e-4)


def test_inputs_tensor_and_encoded_agree(stub: pb_grpc.ExplainServiceStub, images: np.ndarray) -> None:
    """The same pixels as PNG, UINT8 (1,H,W,C) tensor and FLOAT32 preprocessed tensor give the same map."""
    img = images[10]
    a = stub.Explain(request(png(img), class_index=3), timeout=30)
    b = stub.Explain(request(img[None], class_index=3), timeout=30)
    c = stub.Explain(request((img.astype(np.float32) / 127.5 - 1.0), class_index=3), timeout=30)
    for other in (b, c):
        assert other.explanations[0].class_index == 3
        np.testing.assert_allclose(heatmap(other.explanations[0]), heatmap(a.explanations[0]), atol=1e-5)
    # An overlay over the FLOAT32 tensor (alpha ~0: the image alone) shows the pixels it came from
    dim = (img // 2 + 40).astype(np.uint8)
    opts = pb.OutputOptions(size=pb.MODEL_INPUT, overlay=pb.PNG, overlay_alpha=0.001)
    sent = dim.astype(np.float32) / 127.5 - 1.0  # the demo model's 'tf' preprocessing
    over = stub.Explain(request(sent, output=opts), timeout=30).explanations[0].overlay
    drawn = cv2.cvtColor(cv2.imdecode(np.frombuffer(over, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(drawn.astype(int) - dim).max() <= 1
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    d = stub.Explain(request(gray[:, :, None], class_index=3), timeout=30)
    e = stub.Explain(request(png(np.dstack([gray] * 3)), class_index=3), timeout=30)
    np.testing.assert_allclose(heatmap(d.explanations[0]), heatmap(e.explanations[0]), atol=1e-5)


def test_output_sizes_png_and_overlay(stub: pb_grpc.ExplainServiceStub, images: np.ndarray) -> None:
    big = cv2.resize(images[3], (200, 150), interpolation=cv2.INTER_LINEAR)
    grid = stub.Explain(request(png(big), class_index=1), timeout=30).explanations[0]
    opts = pb.OutputOptions(size=pb.ORIGINAL, heatmap_png=True, overlay=pb.JPEG, overlay_alpha=0.5,
                            colormap=pb.TURBO)
    full = stub.Explain(request(png(big), class_index=1, output=opts), timeout=30).explanations[0]
    assert list(full.heatmap.shape) == [150, 200]
    expected = cv2.resize(heatmap(grid), (200, 150), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(heatmap(full), np.clip(expected, 0, 1), atol=1e-6)
    gray = cv2.imdecode(np.frombuffer(full.heatmap_png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert gray.shape == (150, 200) and np.abs(gray.astype(int) - np.rint(heatmap(full) * 255)).max() <= 1
    over = cv2.imdecode(np.frombuffer(full.overlay, np.uint8), cv2.IMREAD_COLOR)
    assert over.shape == (150, 200, 3)
    opts = pb.OutputOptions(size=pb.MODEL_INPUT, omit_tensor=True, overlay=pb.PNG)
    inp = stub.Explain(request(png(big), class_index=1, output=opts), timeout=30).explanations[0]
    assert not inp.HasField("heatmap") and inp.heatmap_png == b""
    assert cv2.imdecode(np.frombuffer(inp.overlay, np.uint8), cv2.IMREAD_COLOR).shape == (64, 64, 3)


def test_explain_batch_matches_single_calls(stub: pb_grpc.ExplainServiceStub, images: np.ndarray) -> None:
    reqs = [request(png(images[i]), method=pb.LAYER_CAM, request_id=f"b{i}") for i in range(5)]
    reqs.append(request(png(images[5][:32, :32]), model="flat", method=pb.GRAD_CAM, top_k=2))
    batch = stub.ExplainBatch(pb.ExplainBatchRequest(requests=reqs), timeout=60)
    assert [r.request_id for r in batch.responses[:5]] == [f"b{i}" for i in range(5)]
    assert batch.responses[5].model == "flat" and len(batch.responses[5].explanations) == 2
    assert batch.responses[5].request_id  # generated when empty
    for req, got in zip(reqs, batch.responses, strict=True):
        single = stub.Explain(req, timeout=30)
        np.testing.assert_allclose(heatmap(got.explanations[0]), heatmap(single.explanations[0]), atol=1e-5)
    bad = [*reqs[:2], request(b"garbage!" * 4)]
    code, details = code_of(stub.ExplainBatch, pb.ExplainBatchRequest(requests=bad))
    assert code == "INVALID_ARGUMENT" and details.startswith("requests[2]:")
    assert stub.ExplainBatch(pb.ExplainBatchRequest(), timeout=10).responses == []
    # More images for one model than its queue can ever hold: INVALID_ARGUMENT (never retried), not
    # RESOURCE_EXHAUSTED (which clients retry in vain).
    too_many = pb.ExplainBatchRequest(requests=[request(png(images[0]))] * 257)  # the demo queue holds 256
    code, details = code_of(stub.ExplainBatch, too_many)
    assert code == "INVALID_ARGUMENT" and "split the call" in details, (code, details)


def test_unparsable_body_is_invalid_argument_and_counted(server: ServerProcess) -> None:
    """A body that is not a protobuf message is refused before the servicer, and still counted."""
    before = server.metric("camserve_requests_total", method="Explain", code="INVALID_ARGUMENT")
    with server.channel() as ch:
        raw = ch.unary_unary("/camserve.v1.ExplainService/Explain")  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff\xff not a protobuf message", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf" in err.value.details()
    assert server.metric("camserve_requests_total", method="Explain", code="INVALID_ARGUMENT") == before + 1


def test_unparsable_reflection_message_is_invalid_argument(server: ServerProcess) -> None:
    """The streaming reflection service too (grpc alone answers UNKNOWN "Unexpected DecodeError"), and
    reflection still answers afterwards."""
    for version in ("v1alpha", "v1"):
        method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
        with server.channel() as ch:
            with pytest.raises(grpc.RpcError) as err:
                list(ch.stream_stream(method)(iter([b"\xff\xff\xff"]), timeout=10))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
            assert f"not a valid protobuf message for grpc.reflection.{version}." in err.value.details()
            assert "camserve.v1.ExplainService" in ProtoReflectionDescriptorDatabase(ch).get_services()


# ------------------------------------------------------------------------------------- status codes


def _png_header_bomb(width: int, height: int) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + b"\x00" * 64)


def status_cases(images: np.ndarray) -> list[tuple[str, pb.ExplainRequest, str, str]]:
    """(label, request, expected code, a regex the message must match): DESIGN.md's table, row by row."""
    ok = png(images[0])
    t = images[0]
    u8 = pb.UINT8
    return [
        ("unknown model", request(ok, model="resnet-9000"), "NOT_FOUND", "not served.*demo, flat"),
        ("unknown version", request(ok, model="demo", model_version=7), "NOT_FOUND", "no version 7"),
        ("garbage bytes", request(b"\x00\x01not an image" * 10), "INVALID_ARGUMENT", "not a supported image"),
        ("truncated PNG", request(ok[:60]), "INVALID_ARGUMENT", "PNG"),
        ("corrupt JPEG", request(jpeg(images[0])[:200]), "INVALID_ARGUMENT", "JPEG"),
        ("empty image", request(b""), "INVALID_ARGUMENT", "empty"),
        ("no image", pb.ExplainRequest(model="demo"), "INVALID_ARGUMENT", "no image"),
        ("decompression bomb", request(_png_header_bomb(30000, 30000)), "INVALID_ARGUMENT", "at most"),
        ("oversized image", request(_png_header_bomb(100_000, 10)), "INVALID_ARGUMENT", "at most 32768"),
        ("tensor bad dtype", pb.ExplainRequest(image=pb.Image(tensor=pb.Tensor(
            dtype=pb.DTYPE_UNSPECIFIED, shape=[64, 64, 3], data=t.tobytes()))), "INVALID_ARGUMENT", "dtype"),
        ("tensor bad shape", pb.ExplainRequest(image=pb.Image(tensor=pb.Tensor(
            dtype=u8, shape=[64, 64, 5], data=b"\x00" * (64 * 64 * 5)))), "INVALID_ARGUMENT", "5 channels"),
        ("tensor short data", pb.ExplainRequest(image=pb.Image(tensor=pb.Tensor(
            dtype=u8, shape=[64, 64, 3], data=t.tobytes()[:-1]))), "INVALID_ARGUMENT", "needs exactly 12288"),
        ("float tensor wrong size", pb.ExplainRequest(image=pb.Image(tensor=pb.Tensor(
            dtype=pb.FLOAT32, shape=[32, 32, 3], data=b"\x00" * (32 * 32 * 3 * 4)))), "INVALID_ARGUMENT",
         "input shape"),
        ("float tensor NaN", pb.ExplainRequest(image=pb.Image(tensor=pb.Tensor(
            dtype=pb.FLOAT32, shape=[64, 64, 3], data=np.full((64, 64, 3), np.nan, "<f4").tobytes()))),
         "INVALID_ARGUMENT", "NaN"),
        ("class index too big", request(ok, class_index=10), "INVALID_ARGUMENT", r"10 classes \(0..9\)"),
        ("class index negative", request(ok, class_index=-1), "INVALID_ARGUMENT", "out of range"),
        ("top_k too big", request(ok, top_k=11), "INVALID_ARGUMENT", "top_k 11"),
        ("class and top_k", request(ok, class_index=1, top_k=3), "INVALID_ARGUMENT", "not both"),
        ("unknown layer", request(ok, target_layer="block9_conv"), "INVALID_ARGUMENT",
         "no target layer 'block9_conv'.*features"),
        ("unknown method", request(ok, method=42), "INVALID_ARGUMENT", "unknown method 42.*GRAD_CAM"),
        ("bad size", request(ok, output=pb.OutputOptions(size=9)), "INVALID_ARGUMENT", "output.size"),
        ("bad alpha", request(ok, output=pb.OutputOptions(overlay=pb.PNG, overlay_alpha=1.5)),
         "INVALID_ARGUMENT", "overlay_alpha"),
        ("bad jpeg quality", request(ok, output=pb.OutputOptions(overlay=pb.JPEG, jpeg_quality=101)),
         "INVALID_ARGUMENT", "jpeg_quality"),
        ("bad colormap", request(ok, output=pb.OutputOptions(colormap=77)), "INVALID_ARGUMENT", "colormap"),
        ("long request id", request(ok, request_id="x" * 1000), "INVALID_ARGUMENT", "request_id"),
        # A caller's 100 KB value is quoted by its start: echoed whole, the status message would pass
        # every client's trailer limit and the call end RESOURCE_EXHAUSTED "Stream removed".
        ("100 KB model name", request(ok, model="m" * 100_000), "NOT_FOUND",
         r"^model 'm{64}'\.\.\. \(100000 characters\) is not served; served models: demo, flat$"),
        ("100 KB target layer", request(ok, target_layer="\u00e9" * 100_000), "INVALID_ARGUMENT",
         r"\(100000 characters\).*valid: features"),
        ("CAM without GAP head", request(png(images[0][:32, :32]), model="flat", method=pb.CAM),
         "FAILED_PRECONDITION", "GlobalAveragePooling2D|global average pooling"),
        ("CAM on an inner layer", request(ok, method=pb.CAM, target_layer="block1_conv"),
         "FAILED_PRECONDITION", "layers where CAM works: features"),
        ("reply too large", request(png(np.zeros((2500, 2500, 3), np.uint8)), top_k=2,
                                    output=pb.OutputOptions(size=pb.ORIGINAL)),
         "RESOURCE_EXHAUSTED", "message limit"),
        ("message too large", request(b"\xff\xd8\xff" + b"\x00" * (17 << 20)), "RESOURCE_EXHAUSTED",
         "more than this server accepts .*--max-message-mb"),
    ]


def test_every_status_code_row(server: ServerProcess, stub: pb_grpc.ExplainServiceStub,
                               images: np.ndarray) -> None:
    failures = []
    for label, req, want, words in status_cases(images):
        code, details = code_of(stub.Explain, req)
        if code != want or not re.search(words, details):
            failures.append(f"{label}: got {code} {details[:300]!r}, want {want} matching {words!r}")
    assert not failures, "\n".join(failures)
    assert server.metric("camserve_requests_total", code="INTERNAL") == 0
    assert code_of(stub.Explain, request(png(images[1])))[0] == "OK"  # still serving
    assert server.health() == "SERVING" and server.alive()


def test_a_reply_past_the_limit_stops_encoding_at_the_map_that_passes_it(
        server: ServerProcess, stub: pb_grpc.ExplainServiceStub) -> None:
    """Ten 1200x1200 images, each map (5.76 MB of float32 at the original size) under the 16 MiB limit,
    all of them over it: refused TOO_LARGE at the third map, not after encoding all ten (PNG maps and
    overlays of 20-megapixel originals take seconds each, so a reply that can never be sent must stop
    costing CPU where it passes the limit)."""
    big = png(cv2.resize(digit_images(1)[0], (1200, 1200), interpolation=cv2.INTER_NEAREST))
    batch = pb.ExplainBatchRequest(requests=[request(big, output=pb.OutputOptions(size=pb.ORIGINAL))] * 10)
    code, details = code_of(stub.ExplainBatch, batch, timeout=120)
    assert code == "RESOURCE_EXHAUSTED", (code, details[:300])
    assert "its first 3 map(s) already take 17280000 bytes" in details and "message limit" in details, details
    two = pb.ExplainBatchRequest(requests=batch.requests[:2])
    assert code_of(stub.ExplainBatch, two, timeout=120)[0] == "OK"


def test_expired_deadlines_are_never_computed(server: ServerProcess, stub: pb_grpc.ExplainServiceStub,
                                              images: np.ndarray) -> None:
    """Calls whose deadline passes while they queue behind others are dropped, never computed: the
    batches formed afterwards hold exactly the images of the calls that succeeded. The worker is
    stopped (SIGSTOP) while they queue, so every short call reaches the queue and expires there however
    slow the machine (with a 10 ms deadline, a loaded machine sometimes let them expire before they
    were queued, and nothing was dropped)."""
    computed0 = server.metric("camserve_batch_size_sum", model="demo")
    dropped0 = server.metric("camserve_requests_dropped_total", model="demo")
    n_load, n_short = 200, 16  # more than the stopped worker takes in (PIPELINE_DEPTH batches); queue: 256
    pids = server.worker_pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        load = stub.ExplainBatch.future(pb.ExplainBatchRequest(
            requests=[request(png(images[i % 80])) for i in range(n_load)]), timeout=120)
        wait_for(lambda: server.metric("camserve_queue_depth", model="demo") > 0, 60)
        # 5 s reaches the queue on any machine; nothing leaves it while the worker is stopped, so
        # each ends at its deadline there (dropped == n_short below fails if one expired before)
        short = [stub.Explain.future(request(png(images[i])), timeout=5) for i in range(n_short)]
        short_codes = [code_name(f) for f in short]
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert set(short_codes) == {"DEADLINE_EXCEEDED"}
    assert len(load.result().responses) == n_load
    wait_for(lambda: server.metric("camserve_queue_depth", model="demo") == 0, 60)
    computed = server.metric("camserve_batch_size_sum", model="demo") - computed0
    dropped = server.metric("camserve_requests_dropped_total", model="demo") - dropped0
    assert computed == n_load, f"{computed} images computed for {n_load} successful calls"
    assert dropped == n_short
    # An RPC that ended at its deadline is not aborted again (grpc would log a traceback at ERROR).
    assert "ExecuteBatchError" not in server.log(), server.log_tail()


def test_contract_check_passes(server: ServerProcess) -> None:
    proc = subprocess.run([sys.executable, str(contract_check()), server.target, server.metrics_url],
                          capture_output=True, text=True, timeout=300)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
