"""Shared test helpers: nothing here knows about a particular room of the code."""

from __future__ import annotations

import os

# Keep TensorFlow quiet and deterministic enough for tests on 2 cores.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")
# XLA (JAX's jit, TensorFlow's jit_compile) builds CPU code with LLVM at -O0: the suite's models are tiny,
# so compiling, not running, is their cost (tests/jax/jax_checks.py: 111 -> 47 CPU-s on 2 cores); the
# maps agree within every test's tolerance. Servers and scripts the tests start inherit it.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
