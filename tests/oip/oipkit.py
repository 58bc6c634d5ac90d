"""Helpers of the Open Inference Protocol tests: the stock clients (tritonclient, KServe's SDK,
perf_analyzer) in their environments, the served repository, images.

Each stock client lives in its own virtual environment (tritonclient 2.73 pins protobuf < 7; the
server needs 7; KServe's SDK brings its whole model server): `make tritonclient` makes
``.venv/tritonclient``, `make kserve-client` ``.venv/kserve``, `make perf-analyzer`
``.venv/perf-analyzer``. The tests find them beside the Python running them (``sys.prefix/<name>``),
or where ``CAMSERVE_TRITONCLIENT_PYTHON``, ``CAMSERVE_KSERVE_PYTHON`` and ``CAMSERVE_PERF_ANALYZER``
say; without them they fail, saying how to make them: they never skip.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CALLS = HERE / "triton_calls.py"
FLAT_DIR = ROOT / "tests" / "integration" / "data" / "repository" / "flat"
if str(ROOT / "tests" / "integration") not in sys.path:  # the integration tests' image helpers
    sys.path.insert(0, str(ROOT / "tests" / "integration"))

from front_helpers import digit_images, png  # noqa: E402  (re-exported for the tests here)

__all__ = ["array", "b64", "digit_images", "image_input", "kserve", "kserve_python", "make_repository",
           "perf_analyzer", "perf_analyzer_binary", "perf_analyzer_data", "pixels_input", "png", "triton",
           "triton_descriptors", "triton_python"]


def _stock_python(folder: str, variable: str, module: str, target: str, pin: str) -> Path:
    """The Python of a stock client's environment (``.venv/<folder>``, beside the Python running the
    tests, or ``$variable``) that imports ``module``; fails the test (never skips) when it is missing."""
    env = os.environ.get(variable)
    candidates = [Path(env)] if env else [Path(sys.prefix) / folder / "bin" / "python",
                                          ROOT / ".venv" / folder / "bin" / "python"]
    for path in candidates:
        if path.exists():
            probe = subprocess.run([str(path), "-c", f"import {module}"], capture_output=True, text=True,
                                   timeout=120)
            if probe.returncode != 0:
                pytest.fail(f"{path} cannot import {module}:\n{probe.stderr[-2000:]}\n"
                            f"rebuild it with `make {target}`")
            return path
    pytest.fail(f"the stock client environment {folder} is missing (looked for "
                f"{', '.join(map(str, candidates))}); `make {target}` makes it (`make test` does it "
                f"first), or set {variable} to a Python with {pin}")


def triton_python() -> Path:
    """The Python of the tritonclient environment (``make tritonclient``)."""
    return _stock_python("tritonclient", "CAMSERVE_TRITONCLIENT_PYTHON", "tritonclient.grpc", "tritonclient",
                         "tritonclient[grpc]==2.73.0")


def kserve_python() -> Path:
    """The Python of KServe's SDK environment (``make kserve-client``)."""
    return _stock_python("kserve", "CAMSERVE_KSERVE_PYTHON", "kserve", "kserve-client", "kserve==0.21.0")


def perf_analyzer_binary() -> Path:
    """Triton's perf_analyzer (``make perf-analyzer``: ``.venv/perf-analyzer``, beside the Python running
    the tests, or ``CAMSERVE_PERF_ANALYZER``); fails the test (never skips) when it is missing."""
    env = os.environ.get("CAMSERVE_PERF_ANALYZER")
    candidates = [Path(env)] if env else [Path(sys.prefix) / "perf-analyzer" / "bin" / "perf_analyzer",
                                          ROOT / ".venv" / "perf-analyzer" / "bin" / "perf_analyzer"]
    for path in candidates:
        if path.exists():
            return path
    pytest.fail(f"perf_analyzer is missing (looked for {', '.join(map(str, candidates))}); "
                "`make perf-analyzer` makes it (`make test` does it first), or set CAMSERVE_PERF_ANALYZER "
                "to a perf_analyzer 2.60")


def perf_analyzer(target: str, model: str, *args: str, headers: dict[str, str] | None = None,
                  timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``perf_analyzer -m model -i grpc -u target`` with ``args`` (its exit status is the caller's to
    judge); ``headers`` travel as gRPC metadata (its -H)."""
    command = [str(perf_analyzer_binary()), "-m", model, "-i", "grpc", "-u", target, *args]
    for key, val in (headers or {}).items():
        command += ["-H", f"{key}:{val}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def perf_analyzer_data(path: Path, name: str, rows: list[bytes] | np.ndarray, *,
                       length_prefix: bool = True) -> Path:
    """An --input-data JSON file for perf_analyzer: one step per row of ``name``, nothing for the other
    input. IMAGE rows (encoded images) go as {"b64": ...} of the raw BYTES form, each with its 4-byte
    length (``length_prefix`` False leaves it out, the mistake the server names); PIXELS rows as flat
    uint8 lists."""
    if name == "IMAGE":
        prefix = (lambda r: len(r).to_bytes(4, "little")) if length_prefix else (lambda r: b"")
        steps = [{name: {"b64": b64(prefix(r) + r)}} for r in rows]
    else:
        steps = [{name: np.asarray(r, np.uint8).reshape(-1).tolist()} for r in rows]
    path.write_text(json.dumps({"data": steps}))
    return path


def _run_plan(python: Path, script: list[str], plan: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="camserve-oip-") as tmp:
        plan_path, out = Path(tmp, "plan.json"), Path(tmp, "out.json")
        plan_path.write_text(json.dumps(plan))
        proc = subprocess.run([str(python), *script, str(plan_path), str(out)], capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, f"{script[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        results: list[dict[str, Any]] = json.loads(out.read_text())
    assert len(results) == len(plan["calls"])
    return results


def triton(target: str, calls: list[dict[str, Any]], headers: dict[str, str] | None = None,
           timeout: float = 300) -> list[dict[str, Any]]:
    """Run ``calls`` (see triton_calls.py) with the stock tritonclient; one result per call."""
    return _run_plan(triton_python(), [str(CALLS), "run"],
                     {"target": target, "headers": headers or {}, "calls": calls}, timeout)


def kserve(target: str, calls: list[dict[str, Any]], timeout: float = 300,
           headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run ``calls`` (see kserve_calls.py) with KServe's SDK, ``headers`` sent with each; one result per
    call."""
    return _run_plan(kserve_python(), [str(HERE / "kserve_calls.py")],
                     {"target": target, "headers": headers or {}, "calls": calls}, timeout)


def triton_descriptors() -> dict[str, Any]:
    """The stock client's protocol descriptors (oip_descriptors.describe run in its environment)."""
    proc = subprocess.run([str(triton_python()), str(CALLS), "descriptors"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def array(output: dict[str, Any]) -> np.ndarray:
    """An infer result's output (from triton_calls) as an array of its datatype and shape."""
    if output["datatype"] == "BYTES":
        return np.array([base64.b64decode(x) for x in output["data"]], dtype=object).reshape(output["shape"])
    return np.array(output["data"], dtype=output["dtype"]).reshape(output["shape"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_input(encoded: list[bytes], **extra: Any) -> dict[str, Any]:
    """An IMAGE input spec for triton_calls (BYTES [N, 1])."""
    return {"name": "IMAGE", "datatype": "BYTES", "data": [b64(e) for e in encoded], **extra}


def pixels_input(pixels: np.ndarray, name: str = "PIXELS", datatype: str = "UINT8") -> dict[str, Any]:
    """A PIXELS input spec for triton_calls ([N, H, W, C])."""
    return {"name": name, "datatype": datatype, "data": pixels.tolist(), "dtype": str(pixels.dtype)}


def make_repository(root: Path, demo: Path) -> Path:
    """demo, flat (a Flatten head: CAM refused), and ``held``: the demo model again, whose batches form
    only when full (4 images; the queue delay is a minute, the most a config allows), so which calls
    share a batch is known."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "demo").symlink_to(demo, target_is_directory=True)
    (root / "flat").symlink_to(FLAT_DIR, target_is_directory=True)
    held = root / "held"
    held.mkdir()
    config = json.loads((demo / "config.json").read_text())
    for name in {config.get("model_file", "model.keras"), config.get("labels_file", "labels.txt")}:
        (held / name).symlink_to(demo / name)
    config.update(name="held", batching={"max_batch_size": 4, "max_queue_delay_ms": 60_000.0,
                                         "max_queue_size": 64})
    (held / "config.json").write_text(json.dumps(config))
    return root
