"""Worker pool + dispatcher with REAL worker processes (spawn, pipes, shared memory, signals).

Only the compute is swapped for the NumPy runner in sched_toy_runner.py, whose answers are
checked against an independent reference; everything else is the production code path.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import sched_toy_runner as toy
from camserve.records import ErrorKind, Failure, ItemResult, ItemSpec
from camserve.repository import load_repository
from camserve.scheduling.batcher import WorkItem
from camserve.scheduling.dispatcher import Dispatcher
from camserve.scheduling.handles import WorkerHandle
from camserve.scheduling.placement import WorkerSlot
from camserve.scheduling.pool import WorkerPool
from kinds import raises_kind

RUNNER = f"{toy.__name__}:ToyRunner"
SHAPE = (8, 8, 3)
T = TypeVar("T")


class Recorder:
    """Observer that keeps every event in order (what tests assert on: events and counts, not times)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def _add(self, kind: str, *args: Any) -> None:
        self.events.append((kind, args))

    def batch_formed(self, model: str, size: int) -> None:
        self._add("batch", model, size)

    def queue_depth(self, model: str, depth: int) -> None:
        self._add("depth", model, depth)

    def workers_alive(self, n: int) -> None:
        self._add("alive", n)

    def worker_restarted(self) -> None:
        self._add("restarted")

    def request_dropped(self, model: str, reason: str) -> None:
        self._add("dropped", model, reason)

    def model_ready(self, model: str, ready: bool) -> None:
        self._add("ready", model, ready)

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [args for k, args in self.events if k == kind]


def make_repo(root: Path, models: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    import json

    models = models or {"toy": {}}
    for name, extra in models.items():
        d = root / name
        d.mkdir(parents=True)
        (d / "model.keras").write_bytes(b"")
        cfg = {"model_file": "model.keras", "input_shape": list(SHAPE), "preprocessing": "tf"}
        cfg["batching"] = {"max_batch_size": 8, "max_queue_delay_ms": 20, **extra.pop("batching", {})}
        cfg.update(extra)
        (d / "config.json").write_text(json.dumps(cfg))
    return load_repository(root)


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(cond: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def one_worker(root: Path, batching: dict[str, Any] | None = None, **kwargs: Any
                     ) -> tuple[Dispatcher, WorkerHandle]:
    """A ready Dispatcher (``kwargs`` passed on) with one CPU worker on the toy runner, serving the toy
    model from a repository under ``root`` with these ``batching`` knobs over make_repo's; and that worker."""
    d = Dispatcher(make_repo(root, {"toy": {"batching": dict(batching or {})}}), "cpu:1", runner=RUNNER,
                   **kwargs)
    await d.start()
    await until(d.ready, what="ready")
    (w,) = d.pool.workers
    return d, w


def pixels(seed: int, dtype: Any = np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, SHAPE, dtype=np.uint8)
    return (rng.random(SHAPE) * 255).astype(np.float32)


def check(result: ItemResult, px: np.ndarray, layer: str = "toy", class_index: int | None = None) -> None:
    probs, heat = toy.reference(px, layer)
    np.testing.assert_allclose(result.probabilities, probs, rtol=1e-6)
    (m,) = result.maps
    assert m.class_index == (int(np.argmax(probs)) if class_index is None else class_index)
    np.testing.assert_allclose(m.heatmap, heat, rtol=1e-6)
    assert result.queue_s >= 0 and result.compute_s >= 0 and result.batch_size >= 1


def gone(pid: int) -> bool:
    """True when the process no longer exists (reaped: not even a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "X"
    except FileNotFoundError:
        return True


def test_results_errors_and_batches_through_real_workers(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"toy": {}, "broken": {"target_layer": "broken"}})

    async def main() -> None:
        obs = Recorder()
        d = Dispatcher(repo, "cpu:2", observer=obs, runner=RUNNER)
        await d.start()
        await until(lambda: all(w.summaries for w in d.pool.workers), what="both workers ready")
        assert d.ready("toy")
        pids = d.worker_pids()
        assert not d.ready() and not d.ready("broken")  # strict: every model must be ready
        with raises_kind(ErrorKind.NOT_READY, match="failed to load: ValueError: toy model marked broken"):
            await d.submit(WorkItem("broken", pixels(0)))
        with raises_kind(ErrorKind.UNKNOWN_MODEL, match=r"'nope'.*available: broken, toy"):
            await d.submit(WorkItem("nope", pixels(0)))
        with raises_kind(ErrorKind.INVALID_INPUT, match=r"shape \(4, 4, 3\)"):
            await d.submit(WorkItem("toy", np.zeros((4, 4, 3), np.uint8)))
        summaries = [w.summaries["toy"] for w in d.pool.workers]
        assert sorted(s.worker for s in summaries) == [0, 1]
        assert all(s.cuda_visible_devices == "" and s.threads >= 1 for s in summaries)
        assert d.model_summary("toy").num_classes == toy.NUM_CLASSES
        assert d.model_summary("broken") is None

        # 48 requests at once: mixed layers, dtypes and classes share batches; results match.
        cases = []
        for i in range(48):
            layer = ("toy", "half", None)[i % 3]
            dtype = np.float32 if i % 4 == 0 else np.uint8
            ci = (None, 2)[i % 2]
            cases.append((pixels(i, dtype), ItemSpec("gradcam", class_index=ci, target_layer=layer)))
        results = await asyncio.gather(*(d.submit(WorkItem("toy", px, spec)) for px, spec in cases))
        for (px, spec), res in zip(cases, results, strict=True):
            check(res, px, spec.target_layer or "toy", spec.class_index)
        sizes = [s for _, s in obs.of("batch")]
        assert sum(sizes) == 48 and max(sizes) == 8 and max(r.batch_size for r in results) == 8

        # Caller errors come back per item; the rest of the batch is answered normally.
        specs = [
            ItemSpec("gradcam", class_index=7),
            ItemSpec("gradcam", target_layer="nope"),
            ItemSpec("gradcam"),
            ItemSpec("gradcam", target_layer="half"),
        ]
        outs = await asyncio.gather(
            *(d.submit(WorkItem("toy", pixels(100 + i), s)) for i, s in enumerate(specs)),
            return_exceptions=True,
        )
        assert (
            isinstance(outs[0], Failure)
            and outs[0].kind is ErrorKind.CLASS_INDEX
            and "out of range" in str(outs[0])
        )
        assert isinstance(outs[1], Failure) and outs[1].kind is ErrorKind.UNKNOWN_LAYER
        assert "'nope'" in str(outs[1])
        check(outs[2], pixels(102))
        check(outs[3], pixels(103), "half")

        # A bug in the worker is not the caller's fault and does not kill the worker.
        with raises_kind(ErrorKind.INTERNAL, match="toy bug"):
            await d.submit(WorkItem("toy", pixels(0), ItemSpec("bug")))
        check(await d.submit(WorkItem("toy", pixels(1))), pixels(1))
        assert d.worker_pids() == pids

        slabs = [w.slab.name for w in d.pool.workers]
        procs = [w.process for w in d.pool.workers]
        await d.stop(5)
        assert all(p is not None and p.exitcode == 0 for p in procs), [p.exitcode for p in procs if p]
        assert all(gone(pid) for pid in pids if pid)
        assert not any(os.path.exists(f"/dev/shm/{n}") for n in slabs)
        assert not d.ready("toy")
        with raises_kind(ErrorKind.DRAINING, match="draining"):
            await d.submit(WorkItem("toy", pixels(0)))

    run(main())


def test_each_gpu_worker_sees_exactly_its_gpu(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)

    async def main() -> list[str]:
        d = Dispatcher(repo, "gpu", runner=RUNNER, discover=lambda: ["3", "7"])
        await d.start()
        try:
            await until(lambda: all(w.summaries for w in d.pool.workers), what="both workers ready")
            return [w.summaries["toy"].cuda_visible_devices for w in d.pool.workers]
        finally:
            await d.stop(5)

    assert run(main()) == ["3", "7"]


def test_kill_9_mid_batch_fails_in_flight_at_once_then_worker_comes_back(tmp_path: Path) -> None:
    async def main() -> None:
        obs = Recorder()
        d, w = await one_worker(tmp_path, observer=obs)
        old_pid = w.pid
        assert old_pid is not None
        running = asyncio.ensure_future(d.submit(WorkItem("toy", pixels(0), ItemSpec("sleep", top_k=30))))
        await until(lambda: w.inflight is not None, what="batch in flight")
        queued = asyncio.ensure_future(d.submit(WorkItem("toy", pixels(1))))
        await until(lambda: d.queue_depth("toy") == 1, what="the second call queued")
        os.kill(old_pid, signal.SIGKILL)
        with raises_kind(ErrorKind.WORKER_LOST, match=r"died.*signal 9"):
            # answered when the death is noticed, not when its 30 s batch would have ended
            await asyncio.wait_for(running, 15)
        assert not d.ready() and obs.of("restarted") == []  # before any replacement: at once
        with raises_kind(ErrorKind.WORKER_LOST, match="no live worker"):
            await queued  # nothing can run it now: answered at once too, so the client may retry
        assert not d.ready()
        with raises_kind(ErrorKind.NOT_READY):
            await d.submit(WorkItem("toy", pixels(2)))
        assert obs.of("alive")[-1] == (0,) and ("toy", False) in obs.of("ready")
        await until(d.ready, timeout=30, what="restart")
        assert obs.of("restarted") == [()]
        assert w.pid != old_pid and gone(old_pid)
        check(await d.submit(WorkItem("toy", pixels(3))), pixels(3))
        assert obs.of("alive")[-1] == (1,)
        await d.stop(5)

    run(main())


def test_hung_worker_is_killed_by_the_batch_watchdog(tmp_path: Path) -> None:
    async def main() -> None:
        obs = Recorder()
        d, w = await one_worker(tmp_path, observer=obs, batch_timeout_s=1.5)
        old_pid = w.pid
        assert old_pid is not None
        # a batch shorter than the watchdog is left alone
        check(await d.submit(WorkItem("toy", pixels(1), ItemSpec("sleep", top_k=0.1))), pixels(1))
        assert w.pid == old_pid and obs.of("restarted") == []
        os.kill(old_pid, signal.SIGSTOP)  # hung: alive but never answers
        with raises_kind(ErrorKind.WORKER_LOST, match="watchdog"):
            await asyncio.wait_for(d.submit(WorkItem("toy", pixels(0))), 30)
        await until(d.ready, timeout=30, what="restart")
        assert w.pid != old_pid and gone(old_pid)
        check(await d.submit(WorkItem("toy", pixels(4))), pixels(4))
        await d.stop(5)

    run(main())


def test_crash_loop_backs_off_exponentially_and_resets_after_healthy_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path)
    flag = tmp_path / "crash"
    flag.write_text("1")
    monkeypatch.setenv("CAMSERVE_TOY_CRASH_FILE", str(flag))  # spawned workers inherit it

    async def main() -> None:
        lost: list[tuple[float, float, str]] = []
        ready: list[float] = []
        obs = Recorder()

        def on_lost(w: WorkerHandle, reason: str) -> None:
            lost.append((time.monotonic(), w.backoff_s, reason))

        pool = WorkerPool(
            [WorkerSlot(0, "cpu", {"CUDA_VISIBLE_DEVICES": ""}, 1)],
            worker_spec={"repository": repo, "runner": RUNNER},
            slab_bytes=4096,
            on_ready=lambda w: ready.append(time.monotonic()),
            on_lost=on_lost,
            observer=obs,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            healthy_reset_s=0.5,
        )
        await pool.start()
        await until(lambda: len(lost) >= 5, what="five crashes")
        flag.unlink()
        await until(lambda: bool(ready), what="ready after the crash loop")
        delays = [b for _, b, _ in lost[:5]]
        assert delays == [0.05, 0.1, 0.2, 0.2, 0.2]  # doubling, capped
        # The one wall-clock check kept: a lower bound (the pool waited at least its back-off between
        # two crashes). Load only lengthens the gaps, so it fails only when the back-off is skipped.
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(lost[:5])]
        assert all(g >= d for g, d in zip(gaps, delays, strict=False)), (gaps, delays)
        assert "exit code 5" in lost[0][2]
        assert len(obs.of("restarted")) >= 5
        # healthy for longer than healthy_reset_s (0.5 s): the next crash restarts after the initial delay.
        # (Letting the time pass is what is tested here, not a synchronisation.)
        await asyncio.sleep(0.6)
        n = len(lost)
        (w,) = pool.workers
        assert w.pid is not None
        os.kill(w.pid, signal.SIGKILL)
        await until(lambda: len(lost) > n, what="death noticed")
        assert lost[n][1] == 0.05
        await until(lambda: len(ready) >= 2, what="ready again")
        await pool.stop(5)

    run(main())


def test_queued_work_cancel_and_deadline_never_reach_a_worker(tmp_path: Path) -> None:
    async def main() -> None:
        obs = Recorder()
        d, w = await one_worker(tmp_path, {"max_queue_size": 3, "max_queue_delay_ms": 0}, observer=obs)
        busy = asyncio.ensure_future(d.submit(WorkItem("toy", pixels(0), ItemSpec("sleep", top_k=2))))
        await until(lambda: w.inflight is not None, what="busy worker")
        cancelled = asyncio.ensure_future(d.submit(WorkItem("toy", pixels(1))))
        expiring = asyncio.ensure_future(
            d.submit(WorkItem("toy", pixels(2), deadline=time.monotonic() + 0.2))
        )
        kept = asyncio.ensure_future(d.submit(WorkItem("toy", pixels(3))))
        await until(lambda: d.queue_depth("toy") == 3, what="three calls queued")
        with raises_kind(ErrorKind.QUEUE_FULL, match="full"):
            await d.submit(WorkItem("toy", pixels(4)))
        cancelled.cancel()
        await until(lambda: d.queue_depth("toy") == 2, what="the cancelled call's slot freed")
        with raises_kind(ErrorKind.DEADLINE):
            await expiring
        assert not busy.done()  # answered at its deadline (0.2 s) while the worker is still busy (2 s)
        await busy
        res = await kept
        check(res, pixels(3))
        assert res.batch_size == 1  # the cancelled and the expired requests were not in its batch
        assert [s for _, s in obs.of("batch")] == [1, 1]
        assert sorted(r for _, r in obs.of("dropped")) == ["cancelled", "deadline"]
        # A caller that leaves while its batch computes: the result is discarded, nothing breaks.
        leaving = asyncio.ensure_future(d.submit(WorkItem("toy", pixels(5), ItemSpec("sleep", top_k=0.3))))
        await until(lambda: w.inflight is not None, what="in flight")
        leaving.cancel()
        check(await d.submit(WorkItem("toy", pixels(6))), pixels(6))
        await d.stop(5)

    run(main())


def test_stop_finishes_queued_and_in_flight_work(tmp_path: Path) -> None:
    async def main() -> None:
        d, w = await one_worker(tmp_path, {"max_batch_size": 2})
        subs = [d.enqueue(WorkItem("toy", pixels(i), ItemSpec("sleep", top_k=0.1))) for i in range(6)]
        pid = w.pid
        await d.stop(grace_s=10)
        for i, s in enumerate(subs):
            check(s.future.result(), pixels(i))
        assert w.process is not None and w.process.exitcode == 0
        assert pid is not None and gone(pid)
        assert not os.path.exists(f"/dev/shm/{w.slab.name}")

    run(main())


def test_stop_with_a_short_grace_answers_everything(tmp_path: Path) -> None:
    async def main() -> None:
        d, w = await one_worker(tmp_path, {"max_batch_size": 1})
        # 30 s batches: a stop that waited for the one in flight instead of its grace would time out
        subs = [d.enqueue(WorkItem("toy", pixels(i), ItemSpec("sleep", top_k=30))) for i in range(3)]
        await until(lambda: w.inflight is not None, what="the first batch in flight")
        await d.stop(grace_s=0.2)
        outs = await asyncio.gather(*(s.future for s in subs), return_exceptions=True)
        kinds = [o.kind if isinstance(o, Failure) else type(o) for o in outs]
        # the one in flight lost with its worker after the grace; the two never started told to retry
        assert kinds == [ErrorKind.WORKER_LOST, ErrorKind.NOT_READY, ErrorKind.NOT_READY], outs

    run(main())


PARENT = """
import asyncio, sys
sys.path.insert(0, {here!r})
from camserve.scheduling.dispatcher import Dispatcher
from camserve.repository import load_repository

async def main():
    d = Dispatcher(load_repository({repo!r}), "cpu:1", runner={runner!r})
    await d.start()
    print(d.worker_pids()[0], flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_workers_exit_when_the_server_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the server (no clean-up runs) must not leave an orphan worker behind."""
    import subprocess
    import sys

    make_repo(tmp_path / "repo")
    code = PARENT.format(here=str(Path(__file__).parent), repo=str(tmp_path / "repo"), runner=RUNNER)
    env = {**os.environ, "CAMSERVE_TOY_LOAD_S": "60"}  # the worker is still "loading"
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        assert not gone(worker_pid)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 30  # a wait for the exit, generous for a loaded machine
        while not exited(worker_pid):
            assert time.monotonic() < deadline, "orphan worker still running 30 s after the server died"
            time.sleep(0.1)
    finally:
        parent.kill()


def exited(pid: int) -> bool:
    """Gone, or a zombie waiting for its new parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
