"""The Open Inference Protocol endpoint through KServe's Python SDK (kserve 0.21
``InferenceGRPCClient``, ``InferInput``, ``InferRequest``), against a real server serving the demo model.

Each case is its calls and a check of what the SDK got. test_oip_triton.py turns each into one test on
its own server (bearer-token auth on: the SDK sends the token as its ``headers=``, as a KServe user
behind an authenticating gateway does) and makes every case's calls in one SDK process: the SDK's
start (~4 CPU-s) is paid once, not once per case, and no server is started for it alone.

The SDK runs in its own environment (oipkit.kserve). What it cannot do, and how the cases send it
instead, as a KServe user would: its InferParameter has no double (``overlay_alpha`` goes as a string,
which camserve reads as a number), and it cannot read the reply's double parameters (``queue_ms``,
``compute_ms``, ``batch_size``, ``total_ms``: its protocol file predates them), so only the string ones
are checked here.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
from oipkit import array, digit_images, kserve, png

Result = dict[str, Any]
Check = Callable[[list[Result]], None]
#: case name -> (its calls, in kserve_calls.py's plan form; the check of their results, in order)
CASES: dict[str, tuple[list[dict[str, Any]], Check]] = {}
IMAGES = digit_images(3, seed=11)


def case(*calls: dict[str, Any]) -> Callable[[Check], Check]:
    """Register the decorated check, under its name, with the calls whose results it is given."""

    def register(check: Check) -> Check:
        CASES[check.__name__] = (list(calls), check)
        return check

    return register


def run_cases(target: str, headers: dict[str, str]) -> dict[str, list[Result]]:
    """Every case's calls, in one SDK process, with ``headers`` (a call's own "headers" replace them);
    returns each case's results."""
    plan = [call for calls, _ in CASES.values() for call in calls]
    results = iter(kserve(target, plan, headers=headers))
    return {name: [next(results) for _ in calls] for name, (calls, _) in CASES.items()}


def image_input(images: np.ndarray, **extra: object) -> dict[str, object]:
    encoded = [base64.b64encode(png(im)).decode() for im in images]
    return {"name": "IMAGE", "datatype": "BYTES", "data": encoded, **extra}


def pixels_input(images: np.ndarray, **extra: object) -> dict[str, object]:
    return {"name": "PIXELS", "datatype": "UINT8", "data": images.tolist(), **extra}


def value(result: Result) -> Any:
    assert result["ok"], result
    return result["value"]


@case({"op": "live"}, {"op": "ready"}, {"op": "model_ready", "model": "demo"},
      {"op": "model_ready", "model": "nope"})
def health_and_readiness(results: list[Result]) -> None:
    live, ready, model, unknown = results
    assert (value(live), value(ready), value(model)) == (True, True, True)
    words = "model 'nope' is not served; served models: demo, flat, held"
    assert (unknown["code"], words in unknown["message"]) == ("NOT_FOUND", True)


_PARAMS = {"method": "gradcam++", "top_k": 3}


@case({"op": "infer", "inputs": [image_input(IMAGES)], "parameters": _PARAMS, "id": "k-1"},
      {"op": "infer", "inputs": [pixels_input(IMAGES)], "parameters": _PARAMS, "id": "k-2"},
      {"op": "infer", "inputs": [pixels_input(IMAGES, binary=False)], "parameters": _PARAMS})
def image_and_pixels_give_the_same_maps(results: list[Result]) -> None:
    """One request of N rows per input form (IMAGE encoded; PIXELS raw, and as the SDK's typed list),
    with ``method`` and ``top_k``: the same classes and maps (PNG is lossless), id and method echoed."""
    replies = [value(r) for r in results]
    n = len(IMAGES)
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


@case({"op": "infer", "inputs": [image_input(IMAGES[:2])],
       "parameters": {"overlay": "png", "overlay_alpha": "0.3"},
       "outputs": [{"name": "OVERLAY"}, {"name": "CLASS_IDS"}]},
      {"op": "infer", "inputs": [image_input(IMAGES[:2])],
       "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 2}}]})
def overlay_and_classification(results: list[Result]) -> None:
    overlay, classes = results
    outputs = value(overlay)["outputs"]
    assert list(outputs) == ["OVERLAY", "CLASS_IDS"] and outputs["OVERLAY"]["shape"] == [2, 1]
    assert all(png_bytes.startswith(b"\x89PNG") for png_bytes in array(outputs["OVERLAY"]).reshape(-1))
    best = array(value(classes)["outputs"]["PROBABILITIES"])
    assert best.shape == (2, 2)
    for row in best:
        probabilities = [float(entry.decode().split(":")[0]) for entry in row]
        assert probabilities == sorted(probabilities, reverse=True)


MISTAKES = [  # (what, call, code, message fragment)
    ("unknown method", {"parameters": {"method": "nope"}}, "INVALID_ARGUMENT",
     "valid: cam, gradcam, gradcam++"),
    ("top_k as the SDK's bool", {"parameters": {"top_k": True}}, "INVALID_ARGUMENT",
     "parameter 'top_k' must be an integer (int64_param); got bool_param True"),
    ("not an image", {"inputs": [{"name": "IMAGE", "datatype": "BYTES",
                                  "data": [base64.b64encode(b"not an image").decode()]}]},
     "INVALID_ARGUMENT", "send JPEG, PNG, WebP, BMP (or the PIXELS input: UINT8 pixels)"),
    ("pixels of another size", {"inputs": [pixels_input(IMAGES[:1, :32, :32])]}, "INVALID_ARGUMENT",
     "UINT8 [N, 64, 64, 3]"),
    ("both inputs", {"inputs": [image_input(IMAGES[:1]), pixels_input(IMAGES[:1])]}, "INVALID_ARGUMENT",
     "send exactly one"),
    ("unknown model", {"model": "nope"}, "NOT_FOUND", "served models: demo, flat, held"),
    ("unknown version", {"version": "7"}, "NOT_FOUND", "no version 7"),
    ("no token", {"headers": {}}, "UNAUTHENTICATED", "authorization"),
]


@case(*[{"op": "infer", "inputs": [image_input(IMAGES[:1])], **call} for _, call, _, _ in MISTAKES])
def mistakes_get_clear_codes(results: list[Result]) -> None:
    for (what, _, code, fragment), got in zip(MISTAKES, results, strict=True):
        assert not got["ok"], what
        assert (got["code"], fragment in got["message"]) == (code, True), (what, got["code"], got["message"])
