"""The Open Inference Protocol endpoint through KServe's Python SDK (kserve 0.21
``InferenceGRPCClient``, ``InferInput``, ``InferRequest``), against a real server serving the demo model.

The SDK runs in its own environment (oipkit.kserve). What it cannot do, and how the tests send it
instead, as a KServe user would: its InferParameter has no double (``overlay_alpha`` goes as a string,
which camserve reads as a number), and it cannot read the reply's double parameters (``queue_ms``,
``compute_ms``, ``batch_size``, ``total_ms``: its protocol file predates them), so only the string ones
are checked here.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
from oipkit import array, digit_images, kserve, png
from serverproc import ServerProcess, server_fixture

server = server_fixture(workers="cpu:1")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return digit_images(3, seed=11)


def image_input(images: np.ndarray, **extra: object) -> dict[str, object]:
    encoded = [base64.b64encode(png(im)).decode() for im in images]
    return {"name": "IMAGE", "datatype": "BYTES", "data": encoded, **extra}


def pixels_input(images: np.ndarray, **extra: object) -> dict[str, object]:
    return {"name": "PIXELS", "datatype": "UINT8", "data": images.tolist(), **extra}


def value(result: dict) -> dict:
    assert result["ok"], result
    return result["value"]


def test_health_and_readiness(server: ServerProcess) -> None:
    live, ready, model, unknown = kserve(server.target, [
        {"op": "live"}, {"op": "ready"}, {"op": "model_ready", "model": "demo"},
        {"op": "model_ready", "model": "nope"}])
    assert (value(live), value(ready), value(model)) == (True, True, True)
    assert (unknown["code"], "model 'nope' is not served; served models: demo" in unknown["message"]) == (
        "NOT_FOUND", True)


def test_image_and_pixels_give_the_same_maps(server: ServerProcess, images: np.ndarray) -> None:
    """One request of N rows per input form (IMAGE encoded; PIXELS raw, and as the SDK's typed list),
    with ``method`` and ``top_k``: the same classes and maps (PNG is lossless), id and method echoed."""
    params = {"method": "gradcam++", "top_k": 3}
    replies = [value(r) for r in kserve(server.target, [
        {"op": "infer", "inputs": [image_input(images)], "parameters": params, "id": "k-1"},
        {"op": "infer", "inputs": [pixels_input(images)], "parameters": params, "id": "k-2"},
        {"op": "infer", "inputs": [pixels_input(images, binary=False)], "parameters": params}])]
    n = len(images)
    first = replies[0]
    shapes = [first["outputs"][name]["shape"] for name in ("PROBABILITIES", "HEATMAP", "CLASS_IDS", "SCORES")]
    assert shapes == [[n, 10], [n, 3, 8, 8], [n, 3], [n, 3]]
    assert (replies[0]["id"], replies[1]["id"]) == ("k-1", "k-2")
    for reply in replies:
        echoed = reply["parameters"]
        assert (echoed["method"], echoed["target_layer"]) == ("gradcam++", "features")
        assert array(reply["outputs"]["CLASS_IDS"]).tolist() == array(first["outputs"]["CLASS_IDS"]).tolist()
        np.testing.assert_allclose(array(reply["outputs"]["HEATMAP"]), array(first["outputs"]["HEATMAP"]),
                                   atol=1e-5)
    probs = array(first["outputs"]["PROBABILITIES"])
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert array(first["outputs"]["CLASS_IDS"])[:, 0].tolist() == probs.argmax(axis=1).tolist()


def test_overlay_and_classification(server: ServerProcess, images: np.ndarray) -> None:
    overlay, classes = kserve(server.target, [
        {"op": "infer", "inputs": [image_input(images[:2])],
         "parameters": {"overlay": "png", "overlay_alpha": "0.3"},
         "outputs": [{"name": "OVERLAY"}, {"name": "CLASS_IDS"}]},
        {"op": "infer", "inputs": [image_input(images[:2])],
         "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 2}}]}])
    outputs = value(overlay)["outputs"]
    assert list(outputs) == ["OVERLAY", "CLASS_IDS"] and outputs["OVERLAY"]["shape"] == [2, 1]
    assert all(png_bytes.startswith(b"\x89PNG") for png_bytes in array(outputs["OVERLAY"]).reshape(-1))
    best = array(value(classes)["outputs"]["PROBABILITIES"])
    assert best.shape == (2, 2)
    for row in best:
        probabilities = [float(entry.decode().split(":")[0]) for entry in row]
        assert probabilities == sorted(probabilities, reverse=True)


def test_mistakes_get_clear_codes(server: ServerProcess, images: np.ndarray) -> None:
    cases = [  # (what, call, code, message fragment)
        ("unknown method", {"parameters": {"method": "nope"}}, "INVALID_ARGUMENT",
         "valid: cam, gradcam, gradcam++"),
        ("top_k as the SDK's bool", {"parameters": {"top_k": True}}, "INVALID_ARGUMENT",
         "parameter 'top_k' must be an integer (int64_param); got bool_param True"),
        ("not an image", {"inputs": [{"name": "IMAGE", "datatype": "BYTES",
                                      "data": [base64.b64encode(b"not an image").decode()]}]},
         "INVALID_ARGUMENT", "send JPEG, PNG, WebP, BMP (or the PIXELS input: UINT8 pixels)"),
        ("pixels of another size", {"inputs": [pixels_input(images[:1, :32, :32])]}, "INVALID_ARGUMENT",
         "UINT8 [N, 64, 64, 3]"),
        ("both inputs", {"inputs": [image_input(images[:1]), pixels_input(images[:1])]}, "INVALID_ARGUMENT",
         "send exactly one"),
        ("unknown model", {"model": "nope"}, "NOT_FOUND", "served models: demo"),
        ("unknown version", {"version": "7"}, "NOT_FOUND", "no version 7"),
    ]
    results = kserve(server.target, [{"op": "infer", "inputs": [image_input(images[:1])], **call}
                                     for _, call, _, _ in cases])
    for (what, _, code, fragment), got in zip(cases, results, strict=True):
        assert not got["ok"], what
        assert (got["code"], fragment in got["message"]) == (code, True), (what, got["code"], got["message"])
