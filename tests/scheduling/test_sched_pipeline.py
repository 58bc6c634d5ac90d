"""Pipelining: a worker holds up to two batches (double-buffered slab), only at saturation.

The batcher part needs no process; the pool part runs REAL worker processes with the NumPy toy
runner (answers checked against its independent reference), as in test_sched_pool.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from camserve.records import ErrorKind, Failure, ItemSpec
from camserve.scheduling.batcher import Batcher, WorkItem
from camserve.scheduling.pool import PIPELINE_DEPTH
from camserve.worker.slab import ALIGN, read_arrays, stacked, write_arrays
from test_sched_pool import Recorder, check, one_worker, pixels, run, until


def lost(outcome: object) -> bool:
    return isinstance(outcome, Failure) and outcome.kind is ErrorKind.WORKER_LOST


def item(n: int) -> WorkItem:
    return WorkItem("m", np.full((2, 2, 3), n, np.uint8), ItemSpec())


#: Batches of two with no delay: every two calls make one full batch at once.
PAIRS = {"max_batch_size": 2, "max_queue_delay_ms": 0}


# --------------------------------------------------------------------------- batcher (no process)


def test_take_full_only_takes_a_full_batch_and_yields_to_idle_workers() -> None:
    async def main() -> None:
        b = Batcher({"m": (3, 10.0, 100)})
        b.put(item(0))
        b.put(item(1))
        assert b.take_full() is None  # 2 of 3 queued: light load, nothing is taken early
        signal_ = b.full_signal()
        assert not signal_.done()
        b.put(item(2))
        assert signal_.done()  # the queue reached a full batch
        # An idle worker waiting in next_batch goes first.
        idle = asyncio.ensure_future(b.next_batch())
        await asyncio.sleep(0)
        b.put(item(3))
        b.put(item(4))
        b.put(item(5))
        first = await idle
        assert [int(p.item.pixels[0, 0, 0]) for p in first.items] == [0, 1, 2]  # type: ignore[union-attr]
        waiter = asyncio.ensure_future(b.next_batch())
        await asyncio.sleep(0)
        assert b.take_full() is None  # someone idle is waiting: the pipelining worker must not take
        second = await waiter
        assert [int(p.item.pixels[0, 0, 0]) for p in second.items] == [3, 4, 5]  # type: ignore[union-attr]
        for n in range(6, 10):
            b.put(item(n))
        took = b.take_full()
        assert took is not None and [int(p.item.pixels[0, 0, 0]) for p in took.items] == [6, 7, 8]
        assert b.take_full() is None and b.depth("m") == 1
        # Draining: whatever is left counts as full, and the signal fires (and stays fired).
        later = b.full_signal()
        b.close()
        assert later.done() and b.full_signal().done()
        rest = b.take_full()
        assert rest is not None and [int(p.item.pixels[0, 0, 0]) for p in rest.items] == [9]

    run(main())


def test_has_room_matches_put() -> None:
    async def main() -> None:
        b = Batcher({"m": (4, 1.0, 2)})
        assert b.has_room("m")
        b.put(item(0))
        assert b.has_room("m")
        b.put(item(1))
        assert not b.has_room("m")
        assert b.has_room("unknown")  # put raises its own NOT_FOUND-style error
        b.close()
        b2 = Batcher({"m": (4, 1.0, 2)})
        b2.close()
        assert not b2.has_room("m")

    run(main())


def test_write_arrays_region_offsets_are_absolute_and_bounded() -> None:
    buf = memoryview(bytearray(4096))
    a = [np.arange(12, dtype=np.uint8).reshape(2, 2, 3), np.ones((3, 3), np.float32)]
    refs = write_arrays(buf, a, 1000, 2048)
    assert refs[0].offset == 1024 and all(r.offset % ALIGN == 0 for r in refs)
    for got, want in zip(read_arrays(buf, refs), a, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="slab"):
        write_arrays(buf, [np.zeros(1100, np.uint8)], 1000, 2048)


def test_stacked_is_a_view_of_a_batch_written_back_to_back_and_a_copy_otherwise() -> None:
    buf = memoryview(bytearray(1 << 20))
    rng = np.random.default_rng(0)
    aligned = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(4)]  # 192 bytes: no gaps
    views = read_arrays(buf, write_arrays(buf, aligned, 128))
    batch = stacked(views)
    np.testing.assert_array_equal(batch, np.stack(aligned))
    assert np.shares_memory(batch, views[0]) and batch.flags.c_contiguous
    gapped = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(3)]  # 105 bytes: padded
    for arrays in (read_arrays(buf, write_arrays(buf, gapped, 4096)),  # gaps between images
                   [views[0], views[2]],                                # not neighbours
                   [views[1], views[0]],                                # out of order
                   [views[0], aligned[1]]):                             # another buffer
        copy = stacked(arrays)
        np.testing.assert_array_equal(copy, np.stack(arrays))
        assert not np.shares_memory(copy, views[0])


# --------------------------------------------------------------------------- real worker processes


def test_worker_holds_a_second_full_batch_and_answers_both(tmp_path: Path) -> None:
    async def main() -> None:
        d, w = await one_worker(tmp_path, PAIRS)
        seen: list[int] = []

        async def watch() -> None:
            while True:
                seen.append(len(w.batches))
                await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch())
        specs = [ItemSpec("sleep", top_k=0.1)] * 6
        res = await asyncio.gather(*(d.submit(WorkItem("toy", pixels(i), s)) for i, s in enumerate(specs)))
        watcher.cancel()
        for i, r in enumerate(res):
            assert r.batch_size == 2
            probs, _ = __import__("sched_toy_runner").reference(pixels(i))
            np.testing.assert_allclose(r.probabilities, probs, rtol=1e-6)
        assert max(seen) == PIPELINE_DEPTH  # the second batch was sent before the first was answered
        # The queue time of the batch sent early counts its wait behind the first (started_at): at
        # least one batch's compute time (both measured on the one monotonic clock).
        assert max(r.queue_s for r in res) >= min(r.compute_s for r in res) > 0
        # Light load: one request at a time never makes the worker hold two.
        seen.clear()
        watcher = asyncio.ensure_future(watch())
        check(await d.submit(WorkItem("toy", pixels(9))), pixels(9))
        watcher.cancel()
        assert max(seen) <= 1
        await d.stop(5)

    run(main())


def test_a_batch_whose_callers_all_left_before_it_started_is_not_computed(tmp_path: Path) -> None:
    """A batch already sent to the worker (here held behind another on a stopped worker) whose
    callers all leave before the worker starts it is skipped by the worker and counted as dropped."""
    async def main() -> None:
        obs = Recorder()
        d, w = await one_worker(tmp_path, PAIRS, observer=obs)
        assert w.pid is not None
        os.kill(w.pid, signal.SIGSTOP)
        try:
            first = [asyncio.ensure_future(d.submit(WorkItem("toy", pixels(i)))) for i in range(2)]
            await until(lambda: len(w.batches) == 1, what="the first batch sent")
            second = [asyncio.ensure_future(d.submit(WorkItem("toy", pixels(i)))) for i in (2, 3)]
            await until(lambda: len(w.batches) == 2, what="the second batch sent behind it")
            behind = list(w.batches.values())[1]
            for caller in second:
                caller.cancel()
            await until(lambda: len(behind.left) == 2, what="its callers gone (the worker told)")
        finally:
            os.kill(w.pid, signal.SIGCONT)
        for i, caller in enumerate(first):
            check(await caller, pixels(i))
        await until(behind.done.done, what="the second batch answered")
        assert obs.of("dropped") == [("toy", "cancelled"), ("toy", "cancelled")]  # only a skip counts
        assert not w.batches and w.state.value == "ready"
        check(await d.submit(WorkItem("toy", pixels(5))), pixels(5))  # the slab half is free again
        await d.stop(5)

    run(main())


def test_kill_9_fails_both_held_batches_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        d, w = await one_worker(tmp_path, PAIRS)
        subs = [asyncio.ensure_future(d.submit(WorkItem("toy", pixels(i), ItemSpec("sleep", top_k=30))))
                for i in range(4)]
        await until(lambda: len(w.batches) == 2, what="two batches held")
        assert w.pid is not None
        os.kill(w.pid, signal.SIGKILL)
        # both answered when the death is noticed, not after their 60 s batches, before any replacement
        outs = await asyncio.wait_for(asyncio.gather(*subs, return_exceptions=True), 20)
        assert not d.ready()
        assert all(lost(o) and "signal 9" in str(o) for o in outs), outs
        await until(d.ready, timeout=30, what="restart")
        check(await d.submit(WorkItem("toy", pixels(7))), pixels(7))
        await d.stop(5)

    run(main())


def test_watchdog_times_each_batch_from_its_start(tmp_path: Path) -> None:
    async def main() -> None:
        d, w = await one_worker(tmp_path, PAIRS, batch_timeout_s=2.0)
        pid = w.pid
        # Two batches of 2 x 0.6 s, the second sent while the first computes: 2.4 s from the first send,
        # each 1.2 s from its own start, under the 2 s watchdog -> nobody is killed.
        ok = await asyncio.gather(*(d.submit(WorkItem("toy", pixels(i), ItemSpec("sleep", top_k=0.6)))
                                    for i in range(4)))
        assert [r.batch_size for r in ok] == [2] * 4 and w.pid == pid
        # The second batch hangs (2 x 30 s): the watchdog kills it; the first is answered.
        first = [asyncio.ensure_future(d.submit(WorkItem("toy", pixels(i), ItemSpec("sleep", top_k=0.2))))
                 for i in range(2)]
        await until(lambda: len(w.batches) == 1, what="first batch sent")
        second = [asyncio.ensure_future(d.submit(WorkItem("toy", pixels(i), ItemSpec("sleep", top_k=30))))
                  for i in range(2)]
        for f in first:
            check(await f, pixels(first.index(f)))
        outs = await asyncio.wait_for(asyncio.gather(*second, return_exceptions=True), 30)
        assert all(lost(o) and "watchdog" in str(o) for o in outs), outs
        await until(d.ready, timeout=30, what="restart")
        assert w.pid != pid
        await d.stop(5)

    run(main())
