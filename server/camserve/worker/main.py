"""Worker process entry point and its protocol with the parent (``camserve.scheduling.pool``).

One pickled tuple per message on a duplex pipe; the records inside are :mod:`camserve.records` as
they are:

* worker -> parent ``("ready", summaries, failures, load_s)``: ``summaries`` maps each loaded model
  to its :class:`~camserve.records.ModelSummary`; ``failures`` maps a model that could not be loaded
  to the reason. Sent once, after every bucket of every model has been compiled.
* worker -> parent ``("fatal", message)``: start-up failed; the process then exits with code 3.
* parent -> worker ``("batch", batch_id, model, refs, specs)``: ``refs`` are
  :class:`~camserve.worker.slab.ArrayRef` s of the pixels the parent wrote into this worker's slab,
  ``specs`` the matching :class:`~camserve.records.ItemSpec` s.
* worker -> parent ``("result", batch_id, results, compute_s)``: one
  :class:`~camserve.records.ItemResult` per item, in order; a caller's mistake is that item's
  ``error`` and never kills the worker.
* parent -> worker ``("cancel", batch_id)``: every caller of that batch has left. If the worker has
  not started it, it answers ``("skipped", batch_id)`` and never computes it; otherwise the message
  is ignored (the parent drops the results).
* parent -> worker ``("stop",)``: exit cleanly. EOF on the pipe (parent gone) does the same, and a
  watcher thread exits the process if the parent dies while it is still loading. The parent may have
  sent a second batch before ``stop`` (it double-buffers); the worker reads everything that has
  arrived before starting its next batch, so a ``stop`` behind a not-yet-started batch wins (the
  parent already answered that batch's callers).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

from camserve.records import ErrorKind, ItemResult
from camserve.worker.runner import KerasRunner, Runner, explain_items, log
from camserve.worker.slab import ArrayRef, read_arrays

__all__ = ["FATAL_EXIT_CODE", "main"]

FATAL_EXIT_CODE = 3


def _make_runner(spec: dict[str, Any]) -> Runner:
    kwargs = {"compile_mode": spec.get("compile_mode", "auto"), "backend": spec.get("backend", "tensorflow"),
              "threads": spec.get("threads"), "index": spec["index"]}
    target = spec.get("runner")
    if not target:
        return KerasRunner(spec["repository"], device=spec.get("device", "cpu"), **kwargs)
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
                log(index, "the server process is gone; exiting")
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _serve(conn: Connection, buf: memoryview, runner: Runner, index: int) -> None:
    """Answer batches until ``stop`` or EOF."""
    backlog: deque[tuple[Any, ...]] = deque()
    while True:
        try:
            msg = backlog.popleft() if backlog else conn.recv()
            while conn.poll():  # a stop sent behind a queued batch overtakes it
                backlog.append(conn.recv())
        except (EOFError, OSError):
            log(index, "parent closed the pipe; exiting")
            return
        if msg[0] == "stop" or any(m[0] == "stop" for m in backlog):
            return
        if msg[0] == "cancel":  # for a batch already answered (or skipped): nothing to do
            continue
        if msg[0] != "batch":
            log(index, f"ignoring unknown message {msg[0]!r}")
            continue
        _, batch_id, model, refs, specs = msg
        if ("cancel", batch_id) in backlog:  # every caller left before it started
            conn.send(("skipped", batch_id))
            continue
        t1 = time.perf_counter()
        images: list[Any] = []
        try:
            images = read_arrays(buf, [ArrayRef(*r) for r in refs])
            results = explain_items(runner, model, images, specs)
        except Exception as exc:  # a bug: answer every item, keep the worker alive
            log(index, "batch failed:\n" + traceback.format_exc())
            results = [ItemResult.failed(ErrorKind.INTERNAL, f"{type(exc).__name__}: {exc}")] * len(specs)
        del images
        conn.send(("result", batch_id, results, time.perf_counter() - t1))


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
        log(index, f"starting (pid {os.getpid()}, device {spec.get('device', 'cpu')}, "
                   f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r})")
        try:
            runner = _make_runner(spec)
            summaries, failures = runner.load()
        except Exception as exc:
            log(index, "start-up failed:\n" + traceback.format_exc())
            conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
            code = FATAL_EXIT_CODE
            return
        load_s = time.perf_counter() - t0
        conn.send(("ready", summaries, failures, load_s))
        log(index, f"ready in {load_s:.1f} s ({len(summaries)} model(s), {len(failures)} failed)")
        assert slab.buf is not None
        _serve(conn, slab.buf, runner, index)
    finally:
        conn.close()
        with contextlib.suppress(BufferError):  # a view still alive; the OS frees it at exit anyway
            slab.close()
        if code:
            sys.exit(code)
