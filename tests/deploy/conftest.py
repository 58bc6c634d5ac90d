"""Fixtures of the deployment tests: a small served model and two real servers on loopback.

These tests check routing, metrics and scraping, not heatmaps: any small GAP classifier will do, with
batches up to 4 so that warm-up (every bucket compiled) takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from serverproc import ServerProcess, start_server  # noqa: E402

INPUT = (32, 32, 3)
CLASSES = 4

_BUILD = """
import sys
import keras
inputs = keras.Input(shape={shape})
x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
outputs = keras.layers.Dense({classes}, activation="softmax", name="head")(x)
keras.utils.set_random_seed(0)
keras.Model(inputs, outputs).save(sys.argv[1])
"""


@dataclass(frozen=True)
class ServedModel:
    """What the servers serve: repository (None = the bundled demo), model name, input shape."""

    repository: Path | None
    name: str
    input_shape: tuple[int, int, int]


def _bundled_demo() -> ServedModel | None:
    config = ROOT / "server" / "camserve" / "demo" / "repository" / "demo" / "config.json"
    if not (config.is_file() and (config.parent / "model.keras").is_file()):
        return None
    cfg = json.loads(config.read_text())
    return ServedModel(None, cfg["name"], tuple(cfg["input_shape"]))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    """The bundled demo model when it is trained (no build cost), else a tiny GAP classifier
    built here in a subprocess (no TensorFlow in the pytest process)."""
    demo = _bundled_demo()
    if demo is not None:
        return demo
    repo = tmp_path_factory.mktemp("repository")
    folder = repo / "tiny"
    folder.mkdir()
    subprocess.run([sys.executable, "-c", _BUILD.format(shape=INPUT, classes=CLASSES),
                    str(folder / "model.keras")], check=True, timeout=180,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    (folder / "labels.txt").write_text("\n".join(f"class{i}" for i in range(CLASSES)) + "\n")
    (folder / "config.json").write_text(json.dumps({
        "name": "tiny", "version": 1, "model_file": "model.keras", "input_shape": list(INPUT),
        "preprocessing": "tf", "target_layer": "conv", "labels_file": "labels.txt", "score": "logits",
        "batching": {"max_batch_size": 4, "max_queue_delay_ms": 1.0, "max_queue_size": 64}}))
    return ServedModel(repo, "tiny", INPUT)


@pytest.fixture(scope="module")
def two_servers(served_model: ServedModel) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two independent camserve processes (one CPU worker, batches up to 4): the replicas of a
    scaled-out Deployment. The second keeps serving 3 s after SIGTERM (its pre-stop window)."""
    servers = [start_server("--max-batch-size", "4", repository=served_model.repository, wait=False,
                            pre_stop_seconds=p) for p in (0.0, 3.0)]
    try:
        for s in servers:
            s.wait_serving(timeout=180)
        yield servers[0], servers[1]
    finally:
        for s in servers:
            s.stop(timeout=60)
