"""Shared test helpers: nothing here knows about a particular room of the code."""

from __future__ import annotations

import os

# Keep TensorFlow quiet and deterministic enough for tests on 2 cores.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")
