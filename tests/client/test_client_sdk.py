"""Client SDK behaviour that needs exact counts: retries, deadlines, metadata, balancing, encoding.

Runs against a scripted gRPC server (client_fake.py) on loopback; calls to the real camserve
server are in test_client_server.py. Retries are gRPC's own (the SDK's service config), so the
scripted server's count of attempts is what shows them.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path

import camserve_client as cc
import grpc
import numpy as np
import pytest
from camserve_client.client import resolve_targets
from camserve_client.retry import RetryPolicy
from camserve_client.tools.testimages import encode_png
from camserve_proto import explain_pb2 as pb
from client_fake import HEATMAP, FakeServer
from grpc_health.v1 import health_pb2
from serverproc import free_port

pytestmark = pytest.mark.timeout(60)

FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture
def fake():
    with FakeServer() as server:
        yield server


def test_every_image_kind_reaches_the_server_exactly(fake, tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    png = encode_png(rgb)
    path = tmp_path / "x.png"
    path.write_bytes(png)
    gray = rgb[:, :, 0].copy()
    f32 = np.random.default_rng(1).standard_normal((6, 7, 3)).astype(np.float32)
    with cc.Client(fake.target, retries=FAST) as client:
        for image in (str(path), path, png, bytearray(png), memoryview(png), rgb, gray, rgb[None], f32,
                      f32.astype(np.float64), f32.astype(">f4"), rgb[:, ::2]):
            client.explain(image)
    got = [r.image for r in fake.service.requests]
    for msg in got[:5]:
        assert msg.WhichOneof("source") == "encoded" and msg.encoded == png
    t = got[5].tensor
    assert t.dtype == pb.UINT8 and list(t.shape) == [6, 7, 3] and t.data == rgb.tobytes()
    assert list(got[6].tensor.shape) == [6, 7, 1] and got[6].tensor.data == gray.tobytes()
    assert list(got[7].tensor.shape) == [1, 6, 7, 3]
    for msg in got[8:11]:  # float32, float64 and big-endian all travel as little-endian float32
        assert msg.tensor.dtype == pb.FLOAT32
        assert np.array_equal(np.frombuffer(msg.tensor.data, "<f4").reshape(6, 7, 3), f32)
    assert got[11].tensor.data == np.ascontiguousarray(rgb[:, ::2]).tobytes()  # strided view


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4, 3), np.int64), "dtype int64"),
    (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (b"", "empty"),
    (12, "cannot send an image of type int"),
])
def test_bad_images_fail_in_the_client_with_a_message(fake, bad, message) -> None:
    with cc.Client(fake.target) as client, pytest.raises((cc.InvalidArgument, TypeError), match=message):
        client.explain(bad)
    assert fake.service.attempts["Explain"] == 0


def test_missing_file_is_a_clear_error(fake, tmp_path: Path) -> None:
    with cc.Client(fake.target) as client, pytest.raises(FileNotFoundError, match=r"nope\.png"):
        client.explain(tmp_path / "nope.png")


def test_request_fields_and_result_parsing(fake) -> None:
    with cc.Client(fake.target, model="m1") as client:
        r = client.explain(np.zeros((8, 8, 3), np.uint8), method="Grad-CAM++", class_index=3, top_k=2,
                           target_layer="outer/inner", request_id="rid-1",
                           output={"size": "input", "heatmap_png": True, "overlay": "jpeg", "alpha": 0.7,
                                   "colormap": "turbo", "jpeg_quality": 80})
    req = fake.service.requests[0]
    assert req.model == "m1" and req.method == pb.GRAD_CAM_PLUS_PLUS and req.class_index == 3
    assert req.top_k == 2 and req.target_layer == "outer/inner" and req.request_id == "rid-1"
    o = req.output
    assert (o.size, o.heatmap_png, o.overlay, o.colormap, o.jpeg_quality) == (pb.MODEL_INPUT, True, pb.JPEG,
                                                                              pb.TURBO, 80)
    assert o.overlay_alpha == pytest.approx(0.7)
    assert r.request_id == "rid-1" and r.method == "gradcam++" and r.model == "m1"
    assert [e.class_index for e in r.explanations] == [3, 4] and r.label == "class3"
    assert r.heatmap.dtype == np.float32 and np.array_equal(r.heatmap, HEATMAP)
    assert r.explanations[0].heatmap_png == b"PNG" and r.overlay == b"OVERLAY2"
    t = r.timing
    assert (t.queue_ms, t.compute_ms, t.batch_size, t.total_ms) == (1.5, 2.5, 3, 5.0)
    assert r.timing.latency_ms > 0
    assert r.top_predictions == [cc.Prediction(0, "class0", 0.5)]
    r.heatmap[0, 0] = 1.0  # results are writable copies


def test_omitted_tensor_gives_none_and_class_index_unset_by_default(fake) -> None:
    with cc.Client(fake.target) as client:
        r = client.explain(np.zeros((8, 8, 3), np.uint8), output=cc.OutputOptions(heatmap=False))
    req = fake.service.requests[0]
    assert not req.HasField("class_index") and req.output.omit_tensor and req.request_id
    assert r.heatmap is None


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "scorecam"}, "unknown method"),
    ({"top_k": 0}, "top_k"),
    ({"class_index": -1}, "class_index"),
    ({"class_index": 3.7}, "class_index"),  # not class 3
    ({"class_index": True}, "class_index"),
    ({"output": {"size": "huge"}}, "size"),
    ({"output": {"overlay": "gif"}}, "overlay"),
    ({"output": {"alpha": 0}}, "alpha"),
    ({"output": {"colour": "jet"}}, "unknown output option"),
])
def test_bad_arguments_raise_invalid_argument_before_sending(fake, kwargs, message) -> None:
    with cc.Client(fake.target) as client, pytest.raises(cc.InvalidArgument, match=message) as info:
        client.explain(np.zeros((4, 4, 3), np.uint8), **kwargs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fake.service.attempts["Explain"] == 0


def test_retries_unavailable_queue_full_and_a_server_cancel_then_succeeds(fake) -> None:
    # CANCELLED from the server: what gRPC's core answers for a call it held when a draining server stopped
    fake.service.script.failures = [(grpc.StatusCode.UNAVAILABLE, "worker lost"),
                                    (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full (256)"),
                                    (grpc.StatusCode.CANCELLED, "server shutdown")]
    with cc.Client(fake.target, retries=FAST) as client:
        r = client.explain(np.zeros((4, 4, 3), np.uint8))
    assert fake.service.attempts["Explain"] == 4
    assert r.heatmap is not None
    ids = {m.request_id for m in fake.service.requests}
    assert len(ids) == 1  # every attempt carries the same request id


@pytest.mark.parametrize("code, cls", [
    (grpc.StatusCode.INVALID_ARGUMENT, cc.InvalidArgument),
    (grpc.StatusCode.NOT_FOUND, cc.NotFound),
    (grpc.StatusCode.FAILED_PRECONDITION, cc.FailedPrecondition),
    (grpc.StatusCode.UNAUTHENTICATED, cc.Unauthenticated),
    (grpc.StatusCode.INTERNAL, cc.CamserveError),
])
def test_non_retryable_codes_are_sent_once_and_typed(fake, code, cls) -> None:
    fake.service.script.always = (code, "what was wrong and what is valid")
    with cc.Client(fake.target, retries=FAST) as client, pytest.raises(cls) as info:
        client.explain(np.zeros((4, 4, 3), np.uint8))
    assert fake.service.attempts["Explain"] == 1
    assert info.value.code == code and info.value.details == "what was wrong and what is valid"


def test_a_refusal_the_server_marks_permanent_is_not_retried(fake) -> None:
    """camserve answers a request, metadata or reply too large with grpc-retry-pushback-ms: -1."""
    fake.service.script.always = (grpc.StatusCode.RESOURCE_EXHAUSTED, "the request message is 20 MiB")
    fake.service.script.trailers = (("grpc-retry-pushback-ms", "-1"),)
    with cc.Client(fake.target, retries=FAST) as client, pytest.raises(cc.ResourceExhausted):
        client.explain(np.zeros((4, 4, 3), np.uint8))
    assert fake.service.attempts["Explain"] == 1


def test_size_refusals_made_by_the_client_are_never_sent_or_retried(fake) -> None:
    with cc.Client(fake.target, retries=FAST, max_send_message_mb=0.001) as client, \
            pytest.raises(cc.ResourceExhausted, match="larger than max"):
        client.explain(np.zeros((64, 64, 3), np.uint8))
    assert fake.service.attempts["Explain"] == 0
    with cc.Client(fake.target, retries=FAST, max_receive_message_mb=1e-5) as client, \
            pytest.raises(cc.ResourceExhausted, match="larger than max"):
        client.explain(np.zeros((4, 4, 3), np.uint8))
    assert fake.service.attempts["Explain"] == 1  # answered once; the reply was too large to take


def test_retries_are_bounded(fake) -> None:
    fake.service.script.always = (grpc.StatusCode.UNAVAILABLE, "draining")
    with cc.Client(fake.target, retries=FAST) as client, pytest.raises(cc.Unavailable):
        client.explain(np.zeros((4, 4, 3), np.uint8))
    assert fake.service.attempts["Explain"] == 4
    with cc.Client(fake.target, retries=0) as client, pytest.raises(cc.Unavailable):
        client.list_models()
    assert fake.service.attempts["ListModels"] == 1
    with pytest.raises(ValueError, match="at most 5 attempts"):
        cc.Client(fake.target, retries=5)


def test_a_large_batch_is_retried_too(fake) -> None:
    """gRPC retries only what fits its per-call retry buffer (256 KiB by default): the SDK sizes it to
    the largest message it sends, so an ExplainBatch of several raw images is retried like a small call."""
    fake.service.script.failures = [(grpc.StatusCode.UNAVAILABLE, "worker lost")]
    images = [np.zeros((224, 224, 3), np.uint8)] * 8  # 1.2 MB of raw pixels
    with cc.Client(fake.target, retries=FAST) as client:
        assert len(client.explain_batch(images)) == 8
    assert fake.service.attempts["ExplainBatch"] == 2


def test_a_server_pushback_past_the_deadline_ends_the_call_at_its_deadline(fake) -> None:
    fake.service.script.always = (grpc.StatusCode.UNAVAILABLE, "not ready")
    fake.service.script.trailers = (("grpc-retry-pushback-ms", "60000"),)
    with cc.Client(fake.target) as client, pytest.raises(cc.DeadlineExceeded):
        client.explain(np.zeros((4, 4, 3), np.uint8), timeout=0.5)
    assert fake.service.attempts["Explain"] == 1


def test_policy_is_a_grpc_service_config() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.2, max_backoff_s=1.5)
    config = policy.service_config("round_robin")
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "camserve.v1.ExplainService"}] and method["waitForReady"] is True
    assert method["retryPolicy"] == {"maxAttempts": 3, "initialBackoff": "0.200s", "maxBackoff": "1.500s",
                                     "backoffMultiplier": 2.0,
                                     "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED",
                                                              "CANCELLED"]}
    assert config["retryThrottling"] == {"maxTokens": 200, "tokenRatio": 0.1}
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": ""}
    none = RetryPolicy.coerce(0).service_config()
    assert none == {"methodConfig": [{"name": [{"service": "camserve.v1.ExplainService"}],
                                      "waitForReady": False}]}
    with cc.Client("127.0.0.1:1", retries=policy) as client:  # what the channel is given
        assert json.loads(dict(client._options)["grpc.service_config"]) == policy.service_config()
    for bad in (dict(max_attempts=6), dict(max_attempts=0), dict(retry_on=("NOPE",)), dict(budget_tokens=0)):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


def test_deadline_exceeded(fake) -> None:
    # The server holds the call until the test releases it (after the client returned): a client that
    # waited for the answer instead of its 0.2 s deadline would get the answer after 60 s, not the error.
    fake.service.script.hold = threading.Event()
    try:
        with cc.Client(fake.target, retries=FAST) as client, pytest.raises(cc.DeadlineExceeded):
            client.explain(np.zeros((4, 4, 3), np.uint8), timeout=0.2)
    finally:
        fake.service.script.hold.set()
    assert fake.service.attempts["Explain"] == 1  # DEADLINE_EXCEEDED is never retried


def test_token_and_metadata_are_sent(fake) -> None:
    """A token read from a file with its newline is sent without it (gRPC refused the whole call as
    INTERNAL "Invalid metadata"); -bin metadata travels as bytes."""
    with cc.Client(fake.target, token="s3cret\n", metadata=[("x-team", "vision"), ("x-trace-bin", b"\0\xff")]
                   ) as client:
        client.list_models()
    md = fake.service.metadata[0]
    assert md["authorization"] == "Bearer s3cret" and md["x-team"] == "vision"
    assert md["x-trace-bin"] == b"\0\xff"
    assert md["user-agent"].startswith("camserve-client/")


@pytest.mark.parametrize("kwargs, says", [
    ({"metadata": [("X-Team", "vision")]}, "metadata key 'X-Team' is not a gRPC metadata key"),
    ({"metadata": [(":path", "/x")]}, "metadata key ':path'"),
    ({"metadata": [("x-team", "a\nb")]}, "metadata 'x-team' holds '\\n' at 1"),
    ({"metadata": [("x-team", 7)]}, "has a int value"),
    ({"token": "t\u00f6ken"}, "the token holds '\u00f6' at 1"),
])
def test_metadata_grpc_would_refuse_is_refused_before_sending(kwargs: dict, says: str) -> None:
    """gRPC Python refused such metadata only at the call, INTERNAL "Invalid metadata" (the reason in its
    log, grpc/grpc#3042); both clients name the entry when they are made."""
    for make in (cc.Client, cc.AsyncClient):
        with pytest.raises(ValueError) as exc:
            make("localhost:1", **kwargs)
        assert says in str(exc.value)


def test_list_get_model_and_batch(fake) -> None:
    with cc.Client(fake.target) as client:
        (m,) = client.list_models()
        assert m == client.get_model("fake")
        assert m.input_shape == (32, 32, 3) and m.methods == ["cam", "gradcam"]
        assert m.batch_buckets == [1, 2, 4, 8]
        assert m.layers == [cc.LayerInfo("conv", (4, 5), 8, True)]
        with pytest.raises(cc.NotFound, match="unknown model 'nope'"):
            client.get_model("nope")
        imgs = [np.full((4, 4, 3), i, np.uint8) for i in range(3)]
        rs = client.explain_batch(imgs, class_index=[1, None, 7], request_ids=["a", "b", "c"])
        assert [r.request_id for r in rs] == ["a", "b", "c"]
        assert [r.class_index for r in rs] == [1, 0, 7]
        with pytest.raises(cc.InvalidArgument, match="image 1"):
            client.explain_batch([imgs[0], np.zeros((4, 4), np.int32)])
        with pytest.raises(ValueError, match="class_index has 2 entries for 3 images"):
            client.explain_batch(imgs, class_index=[1, 2])
        # NumPy: one index per image as a 1-D array (np.argmax(p, axis=1)), or one for all
        rs = client.explain_batch(imgs, class_index=np.array([2, 0, 5]))
        assert [r.class_index for r in rs] == [2, 0, 5]
        assert [r.class_index for r in client.explain_batch(imgs, class_index=np.int64(4))] == [4, 4, 4]
        assert client.explain(imgs[0], class_index=np.array(6)).class_index == 6
    assert fake.service.attempts["ExplainBatch"] == 3  # the first and the two NumPy ones


def test_health_matches_the_stock_health_service(fake) -> None:
    with cc.Client(fake.target) as client:
        assert client.health() == "SERVING" and client.health("fake") == "SERVING"
        fake.health.set("fake", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert client.health("fake") == "NOT_SERVING"
        with pytest.raises(cc.NotFound):
            client.health("other")
        client.wait_ready(timeout=2)


def test_health_is_never_retried(fake) -> None:
    with cc.Client(fake.target, retries=FAST) as client:
        fake.server.stop(0).wait()
        with pytest.raises(cc.Unavailable):  # at once: a waiting check would end DEADLINE_EXCEEDED
            client.health(timeout=30)


def test_round_robin_over_a_list_of_targets() -> None:
    with FakeServer("a") as a, FakeServer("b") as b:
        target = f"{a.target},localhost:{b.port}"
        assert resolve_targets(target)[0] == f"ipv4:{a.target},127.0.0.1:{b.port}"
        with cc.Client(target) as client:
            # Round robin picks among the connected servers: until the second connection is up (later on
            # a loaded machine), calls all go to the first, so count calls, not time, until both served.
            for _ in range(500):
                client.list_models()
                if min(a.service.attempts["ListModels"], b.service.attempts["ListModels"]) >= 5:
                    break
        assert a.service.attempts["ListModels"] >= 5 and b.service.attempts["ListModels"] >= 5


def test_a_server_that_is_not_serving_gets_no_calls_while_another_serves() -> None:
    """Several targets: client-side health checking keeps calls off a warming-up or draining server."""
    with FakeServer("a") as a, FakeServer("b") as b:
        a.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        with cc.Client(f"{a.target},{b.target}") as client:
            for _ in range(20):
                client.list_models()
        assert a.service.attempts["ListModels"] == 0 and b.service.attempts["ListModels"] == 20


def test_unreachable_server_without_retries_is_unavailable_at_once() -> None:
    with FakeServer() as dead:
        target = dead.target
    with cc.Client(target, retries=0) as client, pytest.raises(cc.Unavailable):
        client.list_models(timeout=30)


def test_a_call_waits_for_a_server_that_is_not_there_yet() -> None:
    """With retries, a call made while nothing listens waits for the server (gRPC waitForReady) until
    its deadline instead of failing: a restart shorter than the deadline costs no call."""
    port = free_port()
    with cc.Client(f"127.0.0.1:{port}", retries=FAST, timeout=60) as client:
        failed = threading.Event()  # the channel tried to connect and found nothing: the call is waiting
        client.channel.subscribe(lambda state: state == grpc.ChannelConnectivity.TRANSIENT_FAILURE
                                 and failed.set())
        result: list[object] = []
        caller = threading.Thread(target=lambda: result.append(client.list_models()))
        caller.start()
        assert failed.wait(30)
        with FakeServer(port=port) as late:
            caller.join(60)
            assert result and result[0][0].name == "fake"
            assert late.service.attempts["ListModels"] == 1
    with cc.Client(f"127.0.0.1:{port}", retries=FAST) as client, pytest.raises(cc.DeadlineExceeded):
        client.list_models(timeout=0.5)  # nobody came: the deadline ends the wait


def test_target_resolution() -> None:
    assert resolve_targets("localhost:50051") == ("localhost:50051", False)
    assert resolve_targets("dns:///camserve.ns.svc:50051") == ("dns:///camserve.ns.svc:50051", True)
    assert resolve_targets(["[::1]:1", "[::1]:2"]) == ("ipv6:[::1]:1,[::1]:2", True)
    with pytest.raises(ValueError, match="host:port"):
        resolve_targets(["a", "b"])
    # An IPv6 address without brackets: gRPC read "::1:50051" as a host name that does not resolve, and
    # "::1" as an address without a port (it dialled 443).
    for target, fix in (("::1:50051", "write [::1]:50051"), ("::1", "write [::1]:PORT"),
                        (["[::1]:1", "::1:2"], "write [::1]:2 or [::1:2]:PORT"),
                        ("2001:db8::7", "[2001:db8::7]:PORT")):
        with pytest.raises(ValueError, match=re.escape(fix)):
            resolve_targets(target)
    assert resolve_targets("ipv6:[::1]:1") == ("ipv6:[::1]:1", True)


def test_async_client_retries_and_explains(fake) -> None:
    fake.service.script.failures = [(grpc.StatusCode.UNAVAILABLE, "restarting")]

    async def go() -> list[cc.ExplainResult]:
        async with cc.AsyncClient(fake.target, retries=FAST) as client:
            assert await client.health() == "SERVING"
            rs = await asyncio.gather(*(client.explain(np.zeros((4, 4, 3), np.uint8), class_index=i)
                                        for i in range(8)))
            assert (await client.get_model()).name == "fake"
            assert len(await client.explain_batch([b"x", b"y"])) == 2
            with pytest.raises(cc.InvalidArgument):
                await client.explain(np.zeros((4, 4, 3), np.complex64))
            fake.service.script.always = (grpc.StatusCode.INVALID_ARGUMENT, "bad image")
            with pytest.raises(cc.InvalidArgument, match="bad image"):
                await client.explain(b"x")
            return rs

    rs = asyncio.run(go())
    assert sorted(r.class_index for r in rs) == list(range(8))
    assert fake.service.attempts["Explain"] == 8 + 1 + 1  # one retry (by gRPC), one non-retried failure


def test_method_names() -> None:
    from camserve_client.types import method_enum, method_name

    for name, value in cc.METHODS.items():
        assert method_enum(name) == value and method_name(value) == name
    assert method_enum("GRAD_CAM_PLUS_PLUS") == pb.GRAD_CAM_PLUS_PLUS == method_enum("gradcampp")
    assert method_enum("Layer-CAM") == pb.LAYER_CAM


def test_dns_target_with_round_robin(fake) -> None:
    # localhost resolves to 127.0.0.1 (served) and maybe ::1 (not): round_robin uses the live one.
    with cc.Client(f"dns:///localhost:{fake.port}", retries=FAST) as client:
        assert dict(client._options)["grpc.lb_policy_name"] == "round_robin"
        for _ in range(5):
            assert client.list_models()[0].name == "fake"
