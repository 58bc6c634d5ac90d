"""The worker's compute: load every model, then explain one batch at a time (the Runner seam).

:class:`KerasRunner` is the real one (``camserve.engine`` on TensorFlow or JAX). The scheduling
tests plug a NumPy runner into the same seam (named ``"module:attr"``), so the pool's mechanics are
tested with real processes but without TensorFlow. Nothing here imports TensorFlow, Keras or JAX at
module level: the backend is chosen and its thread counts set before Keras is first imported.
"""

from __future__ import annotations

import os
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from camserve.records import ErrorKind, Failure, ItemResult, ItemSpec, ModelSummary
from camserve.repository import ModelConfig
from camserve.worker.cuda_probe import tensorflow_on_cpu
from camserve.worker.slab import stacked

__all__ = ["ExplainerLike", "KerasRunner", "Runner", "explain_items", "log"]

EXTRA_EXPLAINERS = 4  # LRU size of explainers built lazily for other target layers


class ExplainerLike(Protocol):
    """The part of ``camserve.engine.Explainer`` the worker uses (``return_errors=True`` semantics:
    a caller's mistake comes back as that item's ``ItemResult.error``)."""

    def explain_batch(self, images: np.ndarray, specs: Sequence[ItemSpec], *,
                      return_errors: bool = ...) -> list[ItemResult]: ...


class Runner(Protocol):
    """Compute seam of the worker process."""

    def load(self) -> tuple[dict[str, ModelSummary], dict[str, str]]:
        """Load and warm up every model: (summaries by model, failure reasons by model)."""
        ...

    def explainer(self, model: str, target_layer: str | None) -> ExplainerLike:
        """The explainer for this model and target layer (raises :class:`Failure` when there is none)."""
        ...


def log(index: int, message: str) -> None:
    """One line on the worker's stderr, which the server's log collects."""
    print(f"[worker {index}] {message}", file=sys.stderr, flush=True)


def _failed(exc: BaseException) -> ItemResult:
    """A caller's error keeps its kind; anything else is a bug (INTERNAL)."""
    if isinstance(exc, Failure):
        return ItemResult.failed(exc.kind, exc.message)
    return ItemResult.failed(ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}")


def explain_items(runner: Runner, model: str, images: Sequence[np.ndarray],
                  specs: Sequence[ItemSpec]) -> list[ItemResult]:
    """Run one batch: one engine call per target layer, results in item order.

    Images of one model all have the model's input shape; uint8 and float32 (already preprocessed)
    pixels share an explainer, whose step passes float input through its preprocessing unchanged,
    but not a stacked array, so they are grouped by dtype too. A caller's mistake comes back in that
    item's result; if a whole group's call raises instead, its items are retried one by one so that
    only the offending ones fail.
    """
    results: list[ItemResult | None] = [None] * len(specs)
    groups: dict[tuple[str | None, str], list[int]] = {}
    for i, (img, spec) in enumerate(zip(images, specs, strict=True)):
        groups.setdefault((spec.target_layer, img.dtype.str), []).append(i)
    for (layer, _), idx in groups.items():
        try:
            explainer = runner.explainer(model, layer)
            batch = stacked([images[i] for i in idx])
            for i, res in zip(idx, explainer.explain_batch(batch, [specs[i] for i in idx],
                                                           return_errors=True), strict=True):
                results[i] = res
        except Exception as exc:
            if len(idx) == 1 or not isinstance(exc, Failure):
                for i in idx:
                    results[i] = _failed(exc)
                continue
            for i in idx:  # isolate the item(s) at fault
                try:
                    results[i] = explainer.explain_batch(images[i][None], [specs[i]], return_errors=True)[0]
                except Exception as one_exc:
                    results[i] = _failed(one_exc)
    return [r if r is not None else ItemResult.failed(ErrorKind.INTERNAL, "no result") for r in results]


def xla_cpu_thread_flags(existing: str, threads: int) -> str:
    """``XLA_FLAGS`` for a JAX CPU worker kept to ``threads`` threads (CPU workers share the cores).

    The recipe JAX users are given: ``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=N``
    (the value must start with ``--`` or XLA reads it as a file name). Flags the operator already set
    win. XLA also sizes its CPU pools from the schedulable cores, so :func:`pin_cpu_worker` restricts
    those as well.
    """
    flags = existing.split()
    names = {f.lstrip("-").split("=", 1)[0] for f in flags}
    if "xla_cpu_multi_thread_eigen" not in names:
        flags.insert(0, "--xla_cpu_multi_thread_eigen=false")
    if "intra_op_parallelism_threads" not in names:
        flags.append(f"intra_op_parallelism_threads={int(threads)}")
    return " ".join(flags)


def pin_cpu_worker(index: int, threads: int) -> list[int] | None:
    """Restrict this process to ``threads`` of the cores it may use (worker ``index``'s share).

    Used for JAX CPU workers, whose XLA thread pools follow the schedulable cores; returns the cores,
    or None when nothing was changed (enough cores for everyone, or not Linux).
    """
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None
    if threads >= len(cores):
        return None
    start = (index * threads) % len(cores)
    mine = [cores[(start + i) % len(cores)] for i in range(threads)]
    os.sched_setaffinity(0, mine)
    return mine


class KerasRunner:
    """The real compute: Keras models + ``camserve.engine.Explainer`` (TF or JAX backend)."""

    def __init__(self, repository: dict[str, ModelConfig], *, compile_mode: str = "auto",
                 backend: str = "tensorflow", threads: int | None = None, index: int = 0,
                 device: str = "cpu") -> None:
        """``device``: where placement put this worker ("cpu" or "gpu:N")."""
        self.repository = repository
        self.device = device
        self.compile_mode = compile_mode
        self.backend = backend
        self.threads = threads
        self.index = index
        self._default: dict[str, Any] = {}
        self._extra: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def _import_backend(self) -> None:
        """Pick the Keras backend and thread counts before Keras/TF are imported."""
        os.environ["KERAS_BACKEND"] = "jax" if self.backend == "jax" else "tensorflow"
        if self.threads:
            os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(self.threads))
            os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(min(2, self.threads)))
            os.environ.setdefault("OMP_NUM_THREADS", str(self.threads))
            if self.backend == "jax":
                os.environ["XLA_FLAGS"] = xla_cpu_thread_flags(os.environ.get("XLA_FLAGS", ""), self.threads)
                pinned = pin_cpu_worker(self.index, self.threads)
                if pinned is not None:
                    flags = os.environ["XLA_FLAGS"]
                    log(self.index, f"JAX CPU worker pinned to cores {pinned}; XLA_FLAGS={flags}")
        on_cpu = self.device == "cpu"
        if on_cpu and self.backend == "jax":
            os.environ.setdefault("JAX_PLATFORMS", "cpu")  # placed on the CPU: JAX need not look for GPUs
        if self.backend == "jax":
            # Keras builds a loaded model's layers, running every initializer, before it assigns the
            # saved weights, and JAX compiles its random generator once per weight shape; the
            # non-partitionable form compiles faster (a MobileNetV2 .keras loaded on JAX on these
            # CPUs: 23.4-25.2 -> 17.8-18.5 CPU-s). The bits it draws are overwritten by the file's.
            os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")
        if self.backend != "jax":
            if on_cpu:
                tensorflow_on_cpu(lambda message: log(self.index, message))
            import tensorflow as tf

            if self.threads:
                try:
                    tf.config.threading.set_intra_op_parallelism_threads(self.threads)
                    tf.config.threading.set_inter_op_parallelism_threads(min(2, self.threads))
                except RuntimeError:  # TF already initialised its thread pools
                    pass

    def _load_model(self, cfg: ModelConfig) -> Any:
        from camserve.engine import load_model

        return load_model(cfg)

    def _build(self, cfg: ModelConfig, model: Any, target_layer: str | None) -> Any:
        from camserve.engine import Explainer

        return Explainer(model, target_layer=target_layer, preprocessing=cfg.preprocessing,
                         compile_mode=self.compile_mode, max_batch_size=cfg.batching.max_batch_size,
                         score=cfg.score, backend=self.backend)

    def load(self) -> tuple[dict[str, ModelSummary], dict[str, str]]:
        self._import_backend()
        summaries: dict[str, ModelSummary] = {}
        failures: dict[str, str] = {}
        for name, cfg in self.repository.items():
            t0 = time.perf_counter()
            try:
                model = self._load_model(cfg)
                explainer = self._build(cfg, model, cfg.target_layer)
                explainer.warmup()
            except Exception as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
                log(self.index, f"model {name!r} failed to load: {failures[name]}")
                continue
            info: ModelSummary = explainer.info
            self._default[name] = explainer
            summaries[name] = info
            log(self.index, f"model {name!r} ready in {time.perf_counter() - t0:.1f} s: target "
                            f"{info.target_layer!r}, buckets {list(info.buckets)}, "
                            f"compile {info.compile_mode}")
        return summaries, failures

    def explainer(self, model: str, target_layer: str | None) -> Any:
        """Default explainer, or one built lazily for another target layer (small LRU)."""
        default = self._default.get(model)
        if default is None:
            raise Failure(f"model {model!r} is not loaded in this worker", ErrorKind.NOT_READY)
        if target_layer is None or target_layer == default.target.name:
            return default
        key = (model, target_layer)
        found = self._extra.get(key)
        if found is not None:
            self._extra.move_to_end(key)
            return found
        built = default.with_target(target_layer)  # the model's recording is reused
        self._extra[key] = built
        while len(self._extra) > EXTRA_EXPLAINERS:
            self._extra.popitem(last=False)
        return built
