"""Worker process: loads every model of the repository, warms it up, then runs batches.

Protocol with the parent (``camserve.pool``), one pickled tuple per message on a duplex pipe:

* worker -> parent ``("ready", summaries, failures, load_s)``: ``summaries`` maps each loaded model
  to ``dataclasses.asdict(explainer.info)``; ``failures`` maps a model that could not be loaded to
  the reason. Sent once, after every bucket of every model has been compiled.
* worker -> parent ``("fatal", message)``: start-up failed; the process then exits with code 3.
* parent -> worker ``("batch", batch_id, model, refs, specs)``: ``refs`` are
  :class:`camserve.shm.ArrayRef` of the pixels the parent wrote into this worker's slab,
  ``specs`` the matching :class:`camserve.work.ItemRequest`.
* worker -> parent ``("result", batch_id, outcomes, compute_s)``: one outcome per item, either
  ``("ok", probabilities, [(class_index, score, heatmap, all_zero), ...])`` or
  ``("err", kind, message)``. A caller's mistake never kills the worker.
* parent -> worker ``("stop",)``: exit cleanly. EOF on the pipe (parent gone) does the same, and
  a watcher thread exits the process if the parent dies while it is still loading. The parent may
  have sent a second batch before ``stop`` (it double-buffers); the worker reads everything that
  has arrived before starting its next batch, so a ``stop`` behind a not-yet-started batch wins
  (the parent already answered that batch's callers).

The compute itself sits behind a small :class:`Runner` seam: :class:`KerasRunner` (the real one,
camserve.engine) or, in the scheduling tests, a NumPy runner named by ``"module:attr"`` so pool
mechanics are tested with real processes but without TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Protocol

import numpy as np

from camserve.repository import ModelConfig
from camserve.shm import ArrayRef, read_arrays
from camserve.work import ItemRequest

__all__ = ["ExplainerLike", "KerasRunner", "Runner", "explain_items", "main"]

Outcome = tuple[Any, ...]
FATAL_EXIT_CODE = 3
EXTRA_EXPLAINERS = 4  # LRU size of explainers built lazily for other target layers / float input


class ExplainerLike(Protocol):
    """The part of ``camserve.engine.Explainer`` the worker uses."""

    def explain_batch(self, images: np.ndarray, specs: Sequence[Any]) -> list[Any]: ...


class Runner(Protocol):
    """Compute seam of the worker process."""

    def load(self) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Load and warm up every model: (summaries by model, failure reasons by model)."""
        ...

    def explainer(self, model: str, target_layer: str | None, float_input: bool) -> ExplainerLike:
        """The explainer for this model/target layer/input kind (may raise ValueError)."""
        ...

    def item_spec(self, spec: ItemRequest) -> Any:
        """Convert a scheduler ItemRequest to what ``explain_batch`` takes."""
        ...


def _log(index: int, message: str) -> None:
    print(f"[worker {index}] {message}", file=sys.stderr, flush=True)


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


def _error_outcome(exc: BaseException) -> Outcome:
    """ValueErrors are the caller's fault (engine errors carry ``kind``); anything else is a bug."""
    if isinstance(exc, ValueError):
        return ("err", getattr(exc, "kind", "invalid_input"), str(exc) or type(exc).__name__)
    return ("err", "internal", f"{type(exc).__name__}: {exc}")


def _ok_outcome(result: Any) -> Outcome:
    maps = [
        (int(m.class_index), float(m.score), np.asarray(m.heatmap, dtype=np.float32), bool(m.all_zero))
        for m in result.maps
    ]
    return ("ok", np.asarray(result.probabilities, dtype=np.float32), maps)


def explain_items(
    runner: Runner, model: str, images: Sequence[np.ndarray], specs: Sequence[ItemRequest]
) -> list[Outcome]:
    """Run one batch: split by (target layer, input dtype), one engine call per group.

    An explainer may return an exception in place of an item's result (the engine does with
    ``return_errors=True``). When a group's call raises a caller error instead, its items are
    retried one by one so that only the offending items get the error.
    """
    outcomes: list[Outcome | None] = [None] * len(specs)
    groups: dict[tuple[str | None, bool], list[int]] = {}
    for i, (img, spec) in enumerate(zip(images, specs, strict=True)):
        groups.setdefault((spec.target_layer, img.dtype != np.uint8), []).append(i)
    for (layer, float_input), idx in groups.items():
        try:
            explainer = runner.explainer(model, layer, float_input)
        except Exception as exc:
            for i in idx:
                outcomes[i] = _error_outcome(exc)
            continue
        batch = np.stack([images[i] for i in idx])
        try:
            results = explainer.explain_batch(batch, [runner.item_spec(specs[i]) for i in idx])
            for i, res in zip(idx, results, strict=True):
                outcomes[i] = _error_outcome(res) if isinstance(res, BaseException) else _ok_outcome(res)
        except Exception as exc:
            if len(idx) == 1 or not isinstance(exc, ValueError):
                for i in idx:
                    outcomes[i] = _error_outcome(exc)
                continue
            for row, i in enumerate(idx):  # isolate the item(s) at fault
                try:
                    res = explainer.explain_batch(batch[row][None], [runner.item_spec(specs[i])])[0]
                    outcomes[i] = _ok_outcome(res)
                except Exception as one_exc:
                    outcomes[i] = _error_outcome(one_exc)
    return [o if o is not None else ("err", "internal", "no result") for o in outcomes]


class _PerItemErrors:
    """Engine explainer asked to return caller errors per item instead of failing the batch."""

    def __init__(self, explainer: Any) -> None:
        self.explainer = explainer

    def explain_batch(self, images: np.ndarray, specs: Sequence[Any]) -> list[Any]:
        return self.explainer.explain_batch(images, specs, return_errors=True)


class KerasRunner:
    """The real compute: Keras models + ``camserve.engine.Explainer`` (TF or JAX backend)."""

    def __init__(
        self,
        repository: dict[str, ModelConfig],
        *,
        compile_mode: str = "auto",
        backend: str = "tensorflow",
        threads: int | None = None,
        index: int = 0,
    ) -> None:
        self.repository = repository
        self.compile_mode = compile_mode
        self.backend = backend
        self.threads = threads
        self.index = index
        self._default: dict[str, Any] = {}
        self._default_layer: dict[str, str] = {}
        self._models: dict[str, Any] = {}
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
                    _log(self.index, f"JAX CPU worker pinned to cores {pinned}; XLA_FLAGS={flags}")
        if self.backend != "jax":
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

    def _build(self, cfg: ModelConfig, model: Any, target_layer: str | None, preprocessing: str) -> Any:
        from camserve.engine import Explainer

        return Explainer(
            model,
            target_layer=target_layer,
            preprocessing=preprocessing,
            compile_mode=self.compile_mode,
            max_batch_size=cfg.batching.max_batch_size,
            score=cfg.score,
            backend=self.backend,
        )

    def load(self) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        self._import_backend()
        summaries: dict[str, dict[str, Any]] = {}
        failures: dict[str, str] = {}
        for name, cfg in self.repository.items():
            t0 = time.perf_counter()
            try:
                model = self._load_model(cfg)
                explainer = self._build(cfg, model, cfg.target_layer, cfg.preprocessing)
                explainer.warmup()
            except Exception as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
                _log(self.index, f"model {name!r} failed to load: {failures[name]}")
                continue
            info = dataclasses.asdict(explainer.info)
            self._models[name] = model
            self._default[name] = explainer
            self._default_layer[name] = str(info.get("target_layer"))
            summaries[name] = info
            _log(
                self.index,
                f"model {name!r} ready in {time.perf_counter() - t0:.1f} s: "
                f"target {info.get('target_layer')!r}, buckets {info.get('buckets')}, "
                f"compile {info.get('compile_mode')}",
            )
        return summaries, failures

    def explainer(self, model: str, target_layer: str | None, float_input: bool) -> Any:
        """Default explainer, or one built lazily for another target layer (small LRU).

        float32 (already preprocessed) pixels need no other explainer: the engine passes them
        through its preprocessing unchanged.
        """
        if model not in self._default:
            raise ValueError(f"model {model!r} is not loaded in this worker")
        if target_layer is None or target_layer == self._default_layer[model]:
            return _PerItemErrors(self._default[model])
        key = (model, target_layer)
        found = self._extra.get(key)
        if found is not None:
            self._extra.move_to_end(key)
            return found
        cfg = self.repository[model]
        built = _PerItemErrors(self._build(cfg, self._models[model], target_layer, cfg.preprocessing))
        self._extra[key] = built
        while len(self._extra) > EXTRA_EXPLAINERS:
            self._extra.popitem(last=False)
        return built

    def item_spec(self, spec: ItemRequest) -> Any:
        from camserve.engine import ItemSpec

        return ItemSpec(method=spec.method, class_index=spec.class_index, top_k=spec.top_k)


def _make_runner(spec: dict[str, Any]) -> Runner:
    target = spec.get("runner")
    kwargs = {
        "compile_mode": spec.get("compile_mode", "auto"),
        "backend": spec.get("backend", "tensorflow"),
        "threads": spec.get("threads"),
        "index": spec["index"],
    }
    if not target:
        return KerasRunner(spec["repository"], **kwargs)
    module, _, attr = str(target).partition(":")
    factory = getattr(importlib.import_module(module), attr)
    return factory(spec["repository"], **kwargs)


def _exit_with_parent(index: int, parent: int, interval_s: float = 1.0) -> None:
    """Leave when the server process dies (even by SIGKILL), so no orphan holds a GPU or cores.

    ``parent`` is the pid the server recorded before spawning us: if it died while we were still
    starting, ``os.getppid()`` already names our new parent.
    """

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                _log(index, "the server process is gone; exiting")
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(conn: Connection, spec: dict[str, Any]) -> None:
    """Process entry point (``spawn``): pin the device, load, report ready, serve batches."""
    os.environ.update(spec.get("env", {}))
    index = int(spec["index"])
    # Ctrl-C reaches the whole process group; it is the parent's to handle (it drains, then sends
    # "stop"). SIGTERM keeps its default: multiprocessing's exit handler relies on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(index, int(spec.get("parent_pid") or os.getppid()))
    slab = SharedMemory(name=spec["slab_name"])
    code = 0
    try:
        t0 = time.perf_counter()
        _log(
            index,
            f"starting (pid {os.getpid()}, device {spec.get('device', 'cpu')}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r})",
        )
        try:
            runner = _make_runner(spec)
            summaries, failures = runner.load()
        except Exception as exc:
            _log(index, "start-up failed:\n" + traceback.format_exc())
            conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
            code = FATAL_EXIT_CODE
            return
        load_s = time.perf_counter() - t0
        conn.send(("ready", summaries, failures, load_s))
        _log(index, f"ready in {load_s:.1f} s ({len(summaries)} model(s), {len(failures)} failed)")
        buf = slab.buf
        assert buf is not None
        backlog: deque[tuple[Any, ...]] = deque()
        while True:
            try:
                msg = backlog.popleft() if backlog else conn.recv()
                while conn.poll():  # a stop sent behind a queued batch overtakes it
                    backlog.append(conn.recv())
            except (EOFError, OSError):
                _log(index, "parent closed the pipe; exiting")
                break
            if msg[0] == "stop" or any(m[0] == "stop" for m in backlog):
                break
            if msg[0] != "batch":
                _log(index, f"ignoring unknown message {msg[0]!r}")
                continue
            _, batch_id, model, refs, specs = msg
            t1 = time.perf_counter()
            images: list[np.ndarray] = []
            try:
                images = read_arrays(buf, [ArrayRef(*r) for r in refs])
                outcomes = explain_items(runner, model, images, specs)
            except Exception as exc:  # a bug: answer every item, keep the worker alive
                _log(index, "batch failed:\n" + traceback.format_exc())
                outcomes = [("err", "internal", f"{type(exc).__name__}: {exc}")] * len(specs)
            del images
            conn.send(("result", batch_id, outcomes, time.perf_counter() - t1))
    finally:
        conn.close()
        with contextlib.suppress(BufferError):  # a view still alive; the OS frees it at exit anyway
            slab.close()
        if code:
            sys.exit(code)
