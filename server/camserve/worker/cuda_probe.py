"""TensorFlow's CUDA probe on a CPU worker: quiet where the answer is known, loud everywhere else.

Why: a TensorFlow wheel built with CUDA probes the driver when it first lists its devices, whatever
``CUDA_VISIBLE_DEVICES`` says; on a machine without a driver it logs ``failed call to cuInit ...
(303)`` at ERROR level, which reads like a fault. A CPU worker was placed on the CPU on purpose
(``scheduling.placement``: no GPU found, or ``--workers cpu:N``), so that outcome is the expected one.
:func:`tensorflow_on_cpu` imports TensorFlow and lists its devices with file descriptor 2 (where
TensorFlow's C++ logging writes) sent to a temporary file, then writes back every line except those
of the failed probe, and says in one line of its own what it left out. Anything else TensorFlow says
there (and everything a GPU worker's TensorFlow says) reaches the log as it was written.
``TF_CPP_MIN_LOG_LEVEL`` would hide every C++ error, real ones included: it is left to the operator.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable

__all__ = ["NO_DRIVER_LINES", "tensorflow_on_cpu", "without_probe_lines"]

#: Substrings of the lines a CPU-only machine's failed CUDA probe writes (TensorFlow 2.1x-2.2x): the
#: cuInit failure (ERROR), the stub's "no driver" notice, and absl's notice that it is not set up yet.
NO_DRIVER_LINES = (
    "failed call to cuInit",
    "Could not find cuda drivers on your machine",
    "All log messages before absl::InitializeLog() is called are written to STDERR",
)


def without_probe_lines(text: str) -> tuple[str, int]:
    """``text`` without the lines of a failed CUDA probe (:data:`NO_DRIVER_LINES`), and how many
    were left out."""
    kept, dropped = [], 0
    for line in text.splitlines(keepends=True):
        if any(s in line for s in NO_DRIVER_LINES):
            dropped += 1
        else:
            kept.append(line)
    return "".join(kept), dropped


def tensorflow_on_cpu(log: Callable[[str], None]) -> None:
    """Import TensorFlow and initialise its devices on a CPU worker, its failed CUDA probe (if any)
    left out of the log and named by ``log`` instead; every other line written meanwhile is kept."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                import tensorflow as tf

                tf.config.list_physical_devices("GPU")  # the probe (TensorFlow would run it later)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                captured.seek(0)
                text, dropped = without_probe_lines(captured.read().decode(errors="replace"))
                with contextlib.suppress(OSError):
                    sys.stderr.write(text)
                    sys.stderr.flush()
    finally:
        os.close(saved)
    if dropped:
        log(f"CPU worker: TensorFlow's CUDA probe failed, as expected here ({dropped} line(s) of it not "
            "shown: no GPU driver, or CUDA_VISIBLE_DEVICES='' hides the GPUs); computing on the CPU")
