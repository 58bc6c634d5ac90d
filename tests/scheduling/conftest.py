"""Scheduling tests: never leave a worker process behind, even when a test fails midway."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_leftover_workers() -> Iterator[None]:
    """Kill and reap the children a failed test did not stop (a hang at exit otherwise)."""
    yield
    for proc in multiprocessing.active_children():
        if proc.name.startswith("camserve-worker-"):
            proc.kill()
            proc.join(5)
