"""The client SDK against the real camserve server (subprocess on loopback, tiny models).

One server serves the module. (SDK calls riding out a server restart on the same port are
tests/transport/test_transport_sdk_restart.py, on the NumPy stand-in runner, which restarts in seconds.)
The server's own Prometheus counter of answered RPCs is the independent count of attempts.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from pathlib import Path
from typing import Any

import camserve_client as cc
import numpy as np
import pytest
from camserve_client.client import MAX_TIMEOUT_S
from camserve_client.retry import RetryPolicy
from camserve_client.tools.testimages import encode_png, generated
from client_repo import LABELS, make_repository
from serverproc import ServerProcess, start_server

pytestmark = pytest.mark.timeout(300)


class Holder:
    """The module's server and its model repository."""

    srv: ServerProcess
    repo: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    h = Holder()
    h.repo = make_repository(tmp_path_factory.mktemp("repo"))
    h.srv = start_server(repository=h.repo)
    yield h
    h.srv.stop()


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return generated(6, 32, "digits", seed=3)[0]


def _count(srv: ServerProcess, code: str, method: str = "Explain") -> float:
    return srv.metric("camserve_requests_total", code=code, method=method)


def test_list_get_model_and_health(server) -> None:
    with cc.Client(server.srv.target) as client:
        models = {m.name: m for m in client.list_models()}
        assert set(models) == {"tiny", "flat"} and all(m.ready for m in models.values())
        tiny = client.get_model("tiny")
        assert tiny.input_shape == (32, 32, 3) and tiny.labels == LABELS and tiny.num_classes == 5
        assert tiny.default_target_layer == "conv2" and "cam" in tiny.methods
        assert {la.name: la.cam_supported for la in tiny.layers}["conv2"] is True
        assert client.health() == "SERVING" and client.health("tiny") == "SERVING"
        with pytest.raises(cc.NotFound):
            client.get_model("nope")
        with pytest.raises(cc.NotFound):
            client.health("nope")
    # /metrics: a call that names no model carries an empty model label (Prometheus: no label), a
    # name nobody serves `_unknown`; neither is mistaken for the other.
    srv = server.srv
    assert _count(srv, "OK", "ListModels") == srv.metric("camserve_requests_total", method="ListModels",
                                                         model="") >= 1
    assert srv.metric("camserve_requests_total", method="GetModel", model="_unknown", code="NOT_FOUND") >= 1
    assert srv.metric("camserve_requests_total", model="_unknown", code="OK") == 0


def test_every_input_kind_gives_the_same_map(server, images, tmp_path: Path) -> None:
    img = images[0]
    png = encode_png(img)
    path = tmp_path / "x.png"
    path.write_bytes(png)
    preprocessed = img.astype(np.float32) / 127.5 - 1.0  # the model's "tf" preprocessing
    with cc.Client(server.srv.target, model="tiny") as client:
        ref = client.explain(img, class_index=1)
        assert ref.heatmap.shape == (7, 7) and ref.heatmap.dtype == np.float32
        assert ref.heatmap.min() >= 0.0 and ref.heatmap.max() <= 1.0
        rgba = np.concatenate([img, np.full((*img.shape[:2], 1), 128, np.uint8)], axis=2)  # alpha dropped
        kinds = (path, str(path), png, bytearray(png), memoryview(png), img[None], rgba, encode_png(rgba))
        for kind in kinds:
            r = client.explain(kind, class_index=1)
            np.testing.assert_allclose(r.heatmap, ref.heatmap, atol=1e-5, err_msg=type(kind).__name__)
        r = client.explain(preprocessed, class_index=1)
        np.testing.assert_allclose(r.heatmap, ref.heatmap, atol=1e-4)
        gray = client.explain(img[:, :, 0], class_index=1)  # (H, W) travels as (H, W, 1)
        np.testing.assert_allclose(gray.heatmap, ref.heatmap, atol=1e-5)  # the digits are gray
        big = client.explain(np.kron(img, np.ones((2, 2, 1), np.uint8)), class_index=1,
                             output={"size": "original"})
        assert big.heatmap.shape == (64, 64)


def test_explain_options_and_top_k(server, images) -> None:
    with cc.Client(server.srv.target, model="tiny") as client:
        r = client.explain(images[1], top_k=3, method="gradcam++", request_id="abc",
                           output={"size": "input", "heatmap_png": True, "overlay": "jpeg", "alpha": 0.5})
        assert r.request_id == "abc" and r.model == "tiny" and r.method == "gradcam++"
        assert r.target_layer == "conv2"
        top = [p.class_index for p in r.top_predictions]
        assert [e.class_index for e in r.explanations] == top[:3]
        assert [e.label for e in r.explanations] == [LABELS[i] for i in top[:3]]
        probs = [e.probability for e in r.explanations]
        assert probs == sorted(probs, reverse=True)
        assert sum(p.probability for p in r.top_predictions) <= 1.0001
        for e in r.explanations:
            assert e.heatmap.shape == (32, 32)
            assert e.heatmap_png[:8] == b"\x89PNG\r\n\x1a\n" and e.overlay[:2] == b"\xff\xd8"
        t = r.timing
        assert t.batch_size >= 1 and t.compute_ms > 0 and t.latency_ms >= t.total_ms
        png = client.explain(images[1], output={"overlay": "png", "heatmap": False})
        assert png.heatmap is None and png.overlay[:4] == b"\x89PNG"
        cam = client.explain(images[1], method="cam", class_index=2, target_layer="conv2")
        assert cam.class_index == 2 and cam.method == "cam"


#: The OpenCV colormap each wire name means, written out here.
OPENCV = {"jet": "COLORMAP_JET", "turbo": "COLORMAP_TURBO", "viridis": "COLORMAP_VIRIDIS",
          "inferno": "COLORMAP_INFERNO"}


def _decode_rgb(data: bytes) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_overlay_colormap_and_jpeg_quality_reach_the_drawing(server, images) -> None:
    """The wire's colormap draws OpenCV's map of the returned heatmap (alpha 1: the map alone), each
    its own; the wire's jpeg_quality changes the bytes: lower is smaller and decodes a little further
    from the lossless overlay."""
    import cv2

    drawn = {}
    with cc.Client(server.srv.target, model="tiny") as client:
        for cmap, name in OPENCV.items():
            r = client.explain(images[2], class_index=1,
                               output={"size": "input", "overlay": "png", "alpha": 1.0, "colormap": cmap})
            want = cv2.applyColorMap(np.uint8(255 * r.heatmap), getattr(cv2, name))
            drawn[cmap] = _decode_rgb(r.overlay)
            np.testing.assert_array_equal(drawn[cmap], cv2.cvtColor(want, cv2.COLOR_BGR2RGB), err_msg=cmap)
        for a, b in itertools.combinations(drawn, 2):
            assert not np.array_equal(drawn[a], drawn[b]), (a, b)
        blend = {"size": "input", "alpha": 0.5, "colormap": "turbo"}
        png = client.explain(images[2], class_index=1, output={**blend, "overlay": "png"}).overlay
        lossless = _decode_rgb(png)
        sizes, errors = [], []
        for quality in (20, 95):
            jpeg = client.explain(images[2], class_index=1,
                                  output={**blend, "overlay": "jpeg", "jpeg_quality": quality}).overlay
            assert jpeg[:2] == b"\xff\xd8"
            sizes.append(len(jpeg))
            errors.append(np.abs(_decode_rgb(jpeg).astype(int) - lossless.astype(int)).mean())
    assert sizes[0] < sizes[1], sizes
    assert errors[0] > errors[1] and errors[0] < 20 and errors[1] < 5, errors


def test_explain_batch_equals_single_calls(server, images) -> None:
    classes = [0, None, 4, None, 2, 1]
    with cc.Client(server.srv.target, model="tiny") as client:
        batch = client.explain_batch(images, class_index=classes)
        singles = [client.explain(img, class_index=c) for img, c in zip(images, classes, strict=True)]
    assert len(batch) == len(images)
    for b, s in zip(batch, singles, strict=True):
        assert b.class_index == s.class_index
        np.testing.assert_allclose(b.heatmap, s.heatmap, atol=1e-5)


def test_caller_errors_are_typed_and_never_retried(server, images) -> None:
    srv = server.srv
    before = {c: _count(srv, c) for c in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND")}
    policy = RetryPolicy(initial_backoff_s=0.01)
    with cc.Client(srv.target, model="tiny", retries=policy) as client:
        bad = [
            (cc.InvalidArgument, dict(image=b"definitely not an image"), "INVALID_ARGUMENT"),
            (cc.InvalidArgument, dict(image=images[0], class_index=99), "INVALID_ARGUMENT"),
            (cc.InvalidArgument, dict(image=images[0], target_layer="no_such_layer"), "INVALID_ARGUMENT"),
            (cc.InvalidArgument, dict(image=np.zeros((8, 8, 3), np.float32)), "INVALID_ARGUMENT"),
            (cc.FailedPrecondition, dict(image=images[0], model="flat", method="cam"), "FAILED_PRECONDITION"),
            (cc.NotFound, dict(image=images[0], model="nope"), "NOT_FOUND"),
        ]
        for cls, kwargs, _ in bad:
            with pytest.raises(cls) as info:
                client.explain(**kwargs)
            assert info.value.details, kwargs
        assert client.explain(images[0]).heatmap is not None  # still serving
    for code in before:
        sent = sum(1 for *_, c in bad if c == code)
        assert _count(srv, code) - before[code] == sent, code  # the server saw each call exactly once


def test_float_pixels_for_a_tf_model_are_refused_not_explained(server, images) -> None:
    """A FLOAT32 tensor is taken as preprocessed: pixels 0..255 as floats (Keras' img_to_array) for a
    model whose preprocessing is tf ([-1, 1]) are refused before admission, saying what to send."""
    srv = server.srv
    before = _count(srv, "INVALID_ARGUMENT")
    with cc.Client(srv.target, model="tiny") as client:
        with pytest.raises(cc.InvalidArgument, match=r"\(here 'tf', which gives values -1\.\.1\), but this "
                                                     r"holds \d+\.\.\d+: it looks like pixels 0\.\.255"):
            client.explain(images[0].astype(np.float32))
        with pytest.raises(cc.InvalidArgument, match=r"neither pixels 0\.\.255 nor input preprocessed"):
            client.explain(images[0].astype(np.float32) / 255 * 5 - 2.5)  # another scale: not tf's
    assert _count(srv, "INVALID_ARGUMENT") - before == 2


def test_a_cpu_worker_starts_quietly_and_says_so(server) -> None:
    """On a machine without a GPU driver TensorFlow's CUDA probe logs "failed call to cuInit ... (303)"
    at ERROR; a CPU worker expects that outcome, so the line is left out and the worker says why."""
    log = server.srv.log()
    assert "device cpu" in log and "cuInit" not in log, server.srv.log_tail()
    if "CUDA probe failed" in log:  # a machine without a driver (with one, there is nothing to say)
        assert "as expected here" in log and "computing on the CPU" in log


def test_the_cli_prints_only_its_own_message_and_the_sdk_leaves_grpc_logging_alone(server) -> None:
    """A TLS handshake refused (--tls to a plaintext port): the command prints its one line, without
    gRPC's "ssl_transport_security.cc ... Handshake failed" line first; importing and using the SDK
    does not choose gRPC's log verbosity for its user."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    cli = subprocess.run([sys.executable, "-m", "camserve_client.tools.cli", "models", "--target",
                          server.srv.target, "--tls", "--timeout", "5", "--retries", "0"],
                         capture_output=True, text=True, timeout=120, env=env)
    lines = cli.stderr.splitlines()
    assert cli.returncode == 3 and len(lines) == 1, cli.stderr
    assert lines[0].startswith("camserve models: UNAVAILABLE") and "does not speak TLS" in lines[0], lines
    sdk = ("import os, camserve_client\n"
           f"c = camserve_client.Client({server.srv.target!r}, model='tiny')\n"
           "assert c.list_models()\n"
           "assert 'GRPC_VERBOSITY' not in os.environ, os.environ['GRPC_VERBOSITY']\n")
    subprocess.run([sys.executable, "-c", sdk], check=True, timeout=120, env=env)


def test_deadline_exceeded(server, images) -> None:
    with cc.Client(server.srv.target, model="tiny") as client, pytest.raises(cc.DeadlineExceeded):
        client.explain(images[0], timeout=0.0005)


def test_a_deadline_too_far_for_grpc_is_no_deadline(server, images) -> None:
    """gRPC Python ends a call whose deadline overflows its clock at once, DEADLINE_EXCEEDED, without
    sending it (a timeout of 1e10 s or infinity): the SDK gives such a call no deadline, which is what
    it means, in both clients and in wait_ready; NaN is refused before anything is sent."""
    far = (float("inf"), 1e10, MAX_TIMEOUT_S * 10)
    for timeout in far:
        with cc.Client(server.srv.target, model="tiny", timeout=timeout) as client:
            client.wait_ready(timeout=timeout)
            assert client.explain(images[0]).heatmap.shape == (7, 7)
            assert client.health(timeout=timeout) == "SERVING"

    async def go() -> str:
        async with cc.AsyncClient(server.srv.target, model="tiny", timeout=float("inf")) as client:
            return (await client.explain(images[0], timeout=1e10)).label

    assert asyncio.run(go()) in LABELS
    for bad in (float("nan"), "30"):
        with pytest.raises(ValueError, match="timeout must be a number of seconds"):
            cc.Client(server.srv.target, timeout=bad)


def test_async_client_concurrent_calls_batch(server, images) -> None:
    async def go() -> list[cc.ExplainResult]:
        async with cc.AsyncClient(server.srv.target, model="tiny") as client:
            assert await client.health("tiny") == "SERVING"
            assert (await client.get_model()).name in ("tiny", "flat")
            return await asyncio.gather(*(client.explain(images[i % len(images)]) for i in range(48)))

    results = asyncio.run(go())
    assert len(results) == 48 and all(r.heatmap.shape == (7, 7) for r in results)
    assert max(r.timing.batch_size for r in results) > 1


def test_cli_against_the_server(server, images, tmp_path: Path, capsys) -> None:
    from camserve_client.tools.cli import main

    for i, img in enumerate(images[:3]):
        (tmp_path / f"d{i}.png").write_bytes(encode_png(img))
    rc = main(["explain", *(str(tmp_path / f"d{i}.png") for i in range(3)), "--target", server.srv.target,
               "--model", "tiny", "--overlay", str(tmp_path / "out") + "/", "--heatmap",
               str(tmp_path / "h.npy"), "--quiet"])
    assert rc == 0
    for i in range(3):
        assert (tmp_path / "out" / f"d{i}.png").read_bytes()[:4] == b"\x89PNG"
        assert np.load(tmp_path / f"h_d{i}.npy").shape == (32, 32)  # CLI default: the image's size
    assert main(["health", "--target", server.srv.target, "--model", "tiny"]) == 0
    assert main(["explain", str(tmp_path / "d0.png"), "--target", server.srv.target, "--model", "flat",
                 "--method", "cam"]) == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().err


def test_the_readme_sdk_snippet_runs_as_written(server, images, tmp_path: Path, monkeypatch) -> None:
    """README.md's client SDK block, run against this module's server: only the address, the model
    (tiny, 32x32, for the demo's 64x64) and the files are swapped; a swap that no longer finds its
    text fails, so the README cannot drift from what the SDK does."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## The client SDK and CLI", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "server/camserve/demo/samples").mkdir(parents=True)
    (tmp_path / "server/camserve/demo/samples/digit6.png").write_bytes(encode_png(images[0]))
    for old, new in (('"localhost:50051"', repr(server.srv.target)), ('"demo"', '"tiny"'),
                     ("(64, 64, 3)", "(32, 32, 3)")):
        assert old in code, f"README's SDK snippet no longer has {old}"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)  # the snippet's relative paths: the sample image, overlay.png
    scope: dict[str, Any] = {}
    exec(compile(code, "README.md (client SDK)", "exec"), scope)
    r = scope["r"]
    assert r.heatmap.shape == (32, 32) and r.heatmap.dtype == np.float32  # "original": the image's size
    assert r.heatmap.min() >= 0.0 and r.heatmap.max() <= 1.0 and len(r.explanations) == 2
    assert (tmp_path / "overlay.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def phone_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-megapixel JPEG as a phone writes one: a bundled photograph at 4000x3000 with sensor-like noise."""
    import cv2
    from skimage import data

    img = cv2.resize(data.astronaut(), (4000, 3000), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    img += np.random.default_rng(0).normal(0.0, 3.0, img.shape).astype(np.float32)  # hard to compress
    ok, jpeg = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8)[:, :, ::-1],
                            [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    path.write_bytes(jpeg.tobytes())
    return path


def test_original_size_map_travels_at_the_grid_and_equals_the_servers(server, images) -> None:
    img = np.kron(images[0], np.ones((20, 20, 1), np.uint8))  # 640x640: small enough to get it whole too
    assert cc.OutputOptions(size="original").to_proto().tensor_size == 1  # CONV_GRID on the wire
    with cc.Client(server.srv.target, model="tiny") as client:
        here = client.explain(img, class_index=1, output={"size": "original"})
        whole = client.explain(img, class_index=1, output={"size": "original", "tensor_size": "original"})
        grid = client.explain(img, class_index=1, output={"size": "original", "tensor_size": "grid",
                                                          "overlay": "jpeg"})
    assert here.heatmap.shape == whole.heatmap.shape == (640, 640)
    np.testing.assert_allclose(here.heatmap, whole.heatmap, atol=1e-6)
    assert grid.heatmap.shape == (7, 7) and grid.overlay[:2] == b"\xff\xd8"  # asked for: not resized


def test_cli_explains_a_12_megapixel_photo(server, phone_photo: Path, tmp_path: Path, capsys) -> None:
    """The first-hour acceptance: no flags, --overlay out.png, --top-k 3 --heatmap m.npy."""
    import cv2
    from camserve_client.tools.cli import main

    base = ["explain", str(phone_photo), "--target", server.srv.target, "--model", "tiny"]
    assert main(base) == 0
    assert "class" in capsys.readouterr().out
    assert main([*base, "--overlay", str(tmp_path / "out.png")]) == 0
    overlay = cv2.imread(str(tmp_path / "out.png"))
    assert overlay.shape == (3000, 4000, 3)
    assert main([*base, "--top-k", "3", "--heatmap", str(tmp_path / "m.npy")]) == 0
    maps = np.load(tmp_path / "m.npy")
    assert maps.shape == (3, 3000, 4000) and maps.dtype == np.float32
    with cc.Client(server.srv.target, model="tiny") as client:
        r = client.explain(phone_photo, top_k=3)  # the same classes' maps at the conv grid
        for k, e in enumerate(r.explanations):  # resized here as the server resizes (cv2 INTER_LINEAR)
            ref = np.clip(cv2.resize(e.heatmap, (4000, 3000), interpolation=cv2.INTER_LINEAR), 0, 1)
            np.testing.assert_allclose(maps[k], ref, atol=1e-5)
        with pytest.raises(cc.ResourceExhausted, match="message limit"):  # the whole tensor: 48 MB
            client.explain(phone_photo, output={"size": "original", "tensor_size": "original"})
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(b"\xff\xd8\xff" + bytes(17 << 20))  # over the server's 16 MiB message limit
    capsys.readouterr()
    assert main(["explain", str(huge), "--target", server.srv.target, "--model", "tiny"]) == 1
    assert "over the server's 16 MiB message limit: resize or recompress it" in capsys.readouterr().err
