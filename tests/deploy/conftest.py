"""Fixtures of the deployment tests: the overlays as `make deploy-check` renders them; a small served
model and two real servers on loopback.

These tests check routing, metrics and scraping, not heatmaps: the servers are the real `camserve
serve` (supervisor, front end, scheduling, worker processes) with the NumPy stand-in engine
(tests/transport/transportkit.py), which starts in about a second where a TensorFlow worker takes ~12
CPU-s; the served models' maps are the engine and integration tests' business.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
for folder in (TESTS, TESTS / "transport", TESTS / "deploy"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from deploymake import make  # noqa: E402
from serverproc import ServerProcess  # noqa: E402
from transportkit import start_toy, toy_repository  # noqa: E402

INPUT = (32, 32, 3)
Doc = dict[str, Any]


@pytest.fixture(scope="session")
def render(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[Doc]]:
    """overlay (base, gpu, cpu) -> its objects, rendered by make deploy-check's rule (kubectl kustomize)."""
    out = tmp_path_factory.mktemp("rendered")

    def objects(overlay: str) -> list[Doc]:
        proc = make(f"DEPLOY_OUT={out}", f"{out}/{overlay}.yaml")
        assert proc.returncode == 0, proc.stdout
        return [d for d in yaml.safe_load_all((out / f"{overlay}.yaml").read_text()) if d]
    return objects


@dataclass(frozen=True)
class ServedModel:
    """What the servers serve: repository, model name, input shape."""

    repository: Path
    name: str
    input_shape: tuple[int, int, int]


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    """The stand-in engine's one model, "toy", at 32x32x3."""
    return ServedModel(toy_repository(tmp_path_factory.mktemp("repository"), INPUT), "toy", INPUT)


@pytest.fixture(scope="module")
def two_servers(served_model: ServedModel) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two independent camserve processes (one CPU worker, batches up to 4): the replicas of a
    scaled-out Deployment. The second keeps serving 3 s after SIGTERM (its pre-stop window)."""
    servers = [start_toy("--max-batch-size", "4", repository=served_model.repository, wait=False,
                         pre_stop_seconds=p) for p in (0.0, 3.0)]
    try:
        for s in servers:
            s.wait_serving(timeout=180)
        yield servers[0], servers[1]
    finally:
        for s in servers:
            s.stop(timeout=60)
