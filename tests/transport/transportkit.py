"""Helpers of the transport tests: start a stand-in-compute server, read a process's descriptors and
threads, make encoded test images, wait for a condition."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from camserve_client.tools.testimages import encode_png
from camserve_proto import explain_pb2 as pb
from serverproc import ServerProcess, start_server

HERE = Path(__file__).resolve().parent
SCHEDULING = HERE.parent / "scheduling"  # the stand-in runner: sched_toy_runner.py
TOY_RUNNER = "sched_toy_runner:ToyRunner"
if str(SCHEDULING) not in sys.path:  # for a Dispatcher in this process (its workers inherit sys.path)
    sys.path.insert(0, str(SCHEDULING))


def toy_repository(root: Path, shape: tuple[int, int, int] = (8, 8, 3)) -> Path:
    """A one-model repository the stand-in runner serves (its model file is never read)."""
    model = root / "toy"
    model.mkdir(parents=True)
    (model / "model.keras").write_bytes(b"")
    (model / "config.json").write_text(json.dumps({"model_file": "model.keras", "input_shape": list(shape),
                                                   "preprocessing": "tf"}))
    return root


def start_toy(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> ServerProcess:
    """The real `camserve serve` (supervisor, front end, workers, transports) whose workers compute with
    the NumPy stand-in engine (``--runner``): it starts in seconds, no TensorFlow, and
    ``CAMSERVE_TOY_LOAD_S`` holds a worker in its loading phase that long. Bundled demo repository
    (64x64x3)."""
    path = os.pathsep.join(p for p in (str(SCHEDULING), os.environ.get("PYTHONPATH", "")) if p)
    return start_server("--runner", TOY_RUNNER, *args, env={"PYTHONPATH": path, **(env or {})}, **kwargs)


def explain_request(seed: int = 0, size: int = 64) -> pb.ExplainRequest:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)
    return pb.ExplainRequest(image=pb.Image(encoded=encode_png(pixels)))


def descriptors(pid: int) -> int:
    """Open file descriptors of ``pid`` (Linux /proc)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    """Threads of ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no thread count for {pid}")


def log_has(server: ServerProcess, text: str) -> bool:
    return text in server.log()
