"""The stand-in engine of the reliability scenarios whose subject is the serving machinery, not the model.

Drain, overload, shedding and worker faults are properties of the front ends, the scheduler and the
worker pool; TensorFlow is not the part under test there, and a TensorFlow worker costs 10-20 CPU-s
to start on 2 cores (every replacement in a fault scenario too). These scenarios run the real
``camserve serve`` (supervisor, front ends, transports, scheduler, pool, worker processes, pipes,
shared-memory pixels, watchdog, restarts) with only the compute replaced: the NumPy stand-in of the
pool tests (``tests/scheduling/sched_toy_runner.py``), slowed to the rel model's scale.

:class:`SlowToyRunner` holds each batch ``BATCH_S + ITEM_S`` per item in the worker (a sleep: the
compute's duration is what the scenarios need, and a sleeping worker leaves the 2 cores to the load
generator, so its capacity depends little on the machine's load): ~40 images/s at full batches of 8, the
"few dozen images/s" the scenarios are sized for (make_models.py). The answers are the stand-in's
(tests/scheduling checks them against a NumPy reference).

The end-to-end TensorFlow versions of these kinds stay elsewhere: tests/integration/test_faults.py
(kill -9 of the worker, SIGTERM under load), tests/integration/test_overload.py (shedding),
test_rel_frontends.py and test_rel_fuzz.py (this folder's TensorFlow model).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEDULING = HERE.parent / "scheduling"  # sched_toy_runner.py
if str(SCHEDULING) not in sys.path:  # for the test process (server processes get it on PYTHONPATH)
    sys.path.insert(0, str(SCHEDULING))

from sched_toy_runner import ToyExplainer, ToyRunner  # noqa: E402

RUNNER = "relstandin:SlowToyRunner"
BATCH_S = 0.04   # per batch: the fixed cost of one engine call
ITEM_S = 0.02    # per image: a batch of 8 takes 0.2 s, ~40 images/s

# The config of the TensorFlow rel model, less what only that model has (its layers, labels, score):
# the same name, input shape and batching, so requests and queue sizes are the same.
_TF_CONFIG = HERE / "data" / "repository" / "rel" / "config.json"
_KEEP = ("name", "version", "input_shape", "preprocessing", "batching")


def repository(root: Path) -> Path:
    """A model repository with the rel model's config for the stand-in (its model file is never read),
    written under ``root``; returns ``root``."""
    raw = json.loads(_TF_CONFIG.read_text())
    model = root / raw["name"]
    model.mkdir(parents=True, exist_ok=True)
    (model / "model.keras").write_bytes(b"")
    (model / "config.json").write_text(json.dumps({**{k: raw[k] for k in _KEEP if k in raw},
                                                   "model_file": "model.keras"}, indent=2))
    return root


class SlowExplainer:
    """The stand-in's explainer, each engine call held ``BATCH_S + ITEM_S * len(images)`` seconds."""

    def __init__(self, inner: ToyExplainer) -> None:
        self.inner = inner

    def explain_batch(self, images: Any, specs: list[Any], *, return_errors: bool = False) -> list[Any]:
        time.sleep(BATCH_S + ITEM_S * len(images))
        return self.inner.explain_batch(images, specs, return_errors=return_errors)


class SlowToyRunner(ToyRunner):
    """The runner seam (``--runner relstandin:SlowToyRunner``): the stand-in at the rel model's pace."""

    def explainer(self, model: str, target_layer: str | None) -> SlowExplainer:  # type: ignore[override]
        return SlowExplainer(super().explainer(model, target_layer))
