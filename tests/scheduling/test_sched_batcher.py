"""The batch-formation rule of camserve.scheduling.batcher, with no model and no process at all.

Every test runs its event loop on virtual time (aiotools' ``VirtualClock``: the loop's clock jumps to
the next timer whenever nothing is ready to run) and gives the batcher that clock, so "the batch forms
at the oldest request's arrival + max_queue_delay" is asserted exactly, on the loop's clock, however
loaded the machine is, and no test waits for real.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest
from aiotools import VirtualClock
from camserve.records import ErrorKind, Failure, ItemSpec
from camserve.scheduling.batcher import Batch, Batcher, WorkItem, past_deadline
from kinds import raises_kind

PX = np.zeros((2, 2, 3), np.uint8)
T = TypeVar("T")


class Recorder:
    """Observer that keeps every call (a collaborator of the batcher, not the part under test)."""

    def __init__(self) -> None:
        self.dropped: list[tuple[str, str]] = []
        self.batches: list[tuple[str, int]] = []
        self.depths: list[tuple[str, int]] = []

    def batch_formed(self, model: str, size: int) -> None:
        self.batches.append((model, size))

    def queue_depth(self, model: str, depth: int) -> None:
        self.depths.append((model, depth))

    def workers_alive(self, n: int) -> None:
        pass

    def worker_restarted(self) -> None:
        pass

    def request_dropped(self, model: str, reason: str) -> None:
        self.dropped.append((model, reason))

    def model_ready(self, model: str, ready: bool) -> None:
        pass


def tags(batch: Batch | None) -> list[int]:
    assert batch is not None
    return [int(p.item.pixels[0, 0, 0]) for p in batch.items]


def tagged(n: int, model: str = "m", deadline: float | None = None) -> WorkItem:
    """An item whose pixels carry ``n`` so batches can be read back in order."""
    return WorkItem(model, np.full((2, 2, 3), n, np.uint8), ItemSpec(), deadline)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on virtual time; a batcher that never answers fails at 20 virtual seconds."""

    async def virtual() -> T:
        with VirtualClock().patch_loop():
            return await asyncio.wait_for(coro, 20)

    return asyncio.run(virtual())


def now() -> float:
    """The running loop's (virtual) clock: what the batcher's deadlines and delays are measured on."""
    return asyncio.get_running_loop().time()


def batcher(models: dict[str, tuple[int, float, int]], observer: Recorder | None = None) -> Batcher:
    """A Batcher on the loop's clock (as the Dispatcher builds it: asyncio's clock is its clock)."""
    return Batcher(models, observer=observer, clock=now)


#: The loop runs a timer up to its clock resolution early (aiotools sets 1 ms on virtual time).
RESOLUTION = 1e-3


def test_takes_at_most_max_batch_size_in_arrival_order() -> None:
    async def main() -> list[list[int]]:
        b = batcher({"m": (4, 0.0, 100)})
        for i in range(10):
            b.put(tagged(i))
        return [tags(await b.next_batch()) for _ in range(3)]

    assert run(main()) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_full_batch_does_not_wait_for_the_delay() -> None:
    async def main() -> float:
        b = batcher({"m": (4, 10.0, 100)})
        for i in range(4):
            b.put(tagged(i))
        t0 = now()
        assert tags(await b.next_batch()) == [0, 1, 2, 3]
        return now() - t0

    assert run(main()) == 0.0  # formed at once, not 10 s later


def test_partial_batch_waits_max_delay_from_the_oldest_request() -> None:
    """A at t0, B at t0+100 ms, delay 150 ms: one batch [A, B] at ~t0+150 ms, not t0+250 ms."""

    async def main() -> tuple[list[int], float]:
        b = batcher({"m": (8, 0.150, 100)})
        t0 = now()
        b.put(tagged(1))
        consumer = asyncio.ensure_future(b.next_batch())
        await asyncio.sleep(0.100)
        assert not consumer.done()
        b.put(tagged(2))
        batch = await consumer
        return tags(batch), now() - t0

    got, formed_after = run(main())
    assert got == [1, 2]
    assert formed_after == pytest.approx(0.150, abs=RESOLUTION), formed_after


def test_zero_delay_takes_what_is_there() -> None:
    async def main() -> list[int]:
        b = batcher({"m": (8, 0.0, 100)})
        b.put(tagged(1))
        b.put(tagged(2))
        return tags(await b.next_batch())

    assert run(main()) == [1, 2]


def test_arrival_wakes_a_waiting_worker_and_filling_the_batch_releases_it() -> None:
    async def main() -> tuple[list[int], float]:
        b = batcher({"m": (3, 5.0, 100)})
        consumer = asyncio.ensure_future(b.next_batch())
        await asyncio.sleep(0.02)
        t0 = now()
        for i in range(3):
            assert not consumer.done()
            b.put(tagged(i))
            await asyncio.sleep(0.01)
        batch = await consumer
        return tags(batch), now() - t0

    got, formed_after = run(main())
    assert got == [0, 1, 2]
    # released by the third arrival (t0 + 20 ms; the consumer ran during the last sleep), not the 5 s delay
    assert formed_after == pytest.approx(0.03, abs=RESOLUTION)


def test_bounded_queue_refuses_at_once_and_frees_space_when_taken() -> None:
    async def main() -> None:
        obs = Recorder()
        b = batcher({"m": (2, 0.0, 3)}, observer=obs)
        for i in range(3):
            b.put(tagged(i))
        with raises_kind(ErrorKind.QUEUE_FULL, match="full"):
            b.put(tagged(9))  # put is synchronous: it refuses, it cannot wait for room
        assert b.depth("m") == 3
        assert tags(await b.next_batch()) == [0, 1]
        b.put(tagged(3))  # room again
        assert b.depth("m") == 2
        assert obs.depths[-1] == ("m", 2)

    run(main())


def test_cancelled_requests_free_their_queue_slot() -> None:
    async def main() -> None:
        b = batcher({"m": (8, 0.0, 2)})
        p1 = b.put(tagged(1))
        b.put(tagged(2))
        assert b.withdraw(p1)
        b.put(tagged(3))  # the withdrawn slot is free
        assert tags(await b.next_batch()) == [2, 3]

    run(main())


def test_expired_request_is_answered_at_its_deadline_and_never_batched() -> None:
    async def main() -> None:
        obs = Recorder()
        b = batcher({"m": (8, 0.300, 100)}, observer=obs)
        t0 = now()
        doomed = b.put(tagged(1, deadline=t0 + 0.05))
        b.put(tagged(2))
        with raises_kind(ErrorKind.DEADLINE, match="deadline"):
            await doomed.future
        assert now() - t0 == pytest.approx(0.05, abs=RESOLUTION)  # at its deadline, not at batch time
        assert obs.dropped == [("m", "deadline")]
        assert tags(await b.next_batch()) == [2]
        assert b.depth("m") == 0

    run(main())


def test_expired_request_dropped_when_batch_forms_even_without_its_timer() -> None:
    """The sweep before forming a batch is the rule; the timer only answers earlier."""

    async def main() -> None:
        obs = Recorder()
        b = batcher({"m": (8, 0.0, 100)}, observer=obs)
        t0 = now()
        p = b.put(tagged(1, deadline=t0 + 0.03))
        assert p.timer is not None
        p.timer.cancel()  # simulate a timer that did not fire yet
        p.timer = None
        b.put(tagged(2))
        await asyncio.sleep(0.05)  # the clock passes the deadline; no timer answers the caller
        assert not p.future.done()
        assert tags(await b.next_batch()) == [2]
        with raises_kind(ErrorKind.DEADLINE):
            await p.future
        assert obs.dropped == [("m", "deadline")]

    run(main())


def test_already_expired_request_is_refused_at_put() -> None:
    async def main() -> None:
        obs = Recorder()
        b = batcher({"m": (8, 0.0, 100)}, observer=obs)
        with raises_kind(ErrorKind.DEADLINE):
            b.put(tagged(1, deadline=now() - 1))
        assert obs.dropped == [("m", "deadline")]
        assert b.depth("m") == 0

    run(main())


def test_cancelled_caller_is_dropped_and_its_future_never_set() -> None:
    """Ray Serve's old bug: completing a cancelled caller's future broke the loop for good."""

    async def main() -> None:
        obs = Recorder()
        b = batcher({"m": (8, 0.100, 100)}, observer=obs)
        p1 = b.put(tagged(1))
        p2 = b.put(tagged(2))

        async def caller() -> object:
            return await p1.future

        task = asyncio.ensure_future(caller())
        await asyncio.sleep(0.01)
        task.cancel()  # the caller leaves; nobody calls withdraw: the sweep must notice
        await asyncio.sleep(0)
        assert p1.future.cancelled()
        batch = await b.next_batch()
        assert tags(batch) == [2]
        assert obs.dropped == [("m", "cancelled")]
        assert batch is not None
        batch.items[0].future.set_result("ok")
        assert await p2.future == "ok"
        # the loop keeps working after the cancellation
        b.put(tagged(3))
        assert tags(await b.next_batch()) == [3]

    run(main())


def test_a_caller_that_leaves_at_its_deadline_is_dropped_as_deadline() -> None:
    """gRPC ends a call at its deadline by cancelling it, so a caller leaving then was timed out:
    counted "deadline" whether withdraw or the sweep notices; one leaving earlier is "cancelled"."""

    async def main() -> None:
        obs = Recorder()
        skew = [0.0]  # moves the batcher's clock past the deadline without letting the loop's timer fire
        b = Batcher({"m": (8, 0.0, 100)}, observer=obs, clock=lambda: now() + skew[0])
        deadline = now() + 60.0  # its timer never fires during the test
        early, late, swept = (b.put(tagged(i, deadline=deadline)) for i in range(3))
        assert b.withdraw(early)  # a real cancel, a minute before the deadline
        skew[0] = 60.0
        assert b.withdraw(late)  # the handler cancelled by gRPC at the deadline
        swept.future.cancel()  # ... or gone before anyone withdrew it: the sweep finds it
        b.put(tagged(9))
        assert tags(await b.next_batch()) == [9]
        assert obs.dropped == [("m", "cancelled"), ("m", "deadline"), ("m", "deadline")]
        assert not swept.future.done() or swept.future.cancelled()  # never answered

    run(main())


def test_requests_with_different_specs_share_a_batch() -> None:
    async def main() -> list[ItemSpec]:
        b = batcher({"m": (8, 0.0, 100)})
        specs = [
            ItemSpec("gradcam"),
            ItemSpec("cam", class_index=3),
            ItemSpec("layercam", top_k=3),
            ItemSpec("gradcam", target_layer="block1"),
        ]
        for s in specs:
            b.put(WorkItem("m", PX, s))
        batch = await b.next_batch()
        assert batch is not None
        return [p.item.spec for p in batch.items]

    assert run(main()) == [
        ItemSpec("gradcam"),
        ItemSpec("cam", class_index=3),
        ItemSpec("layercam", top_k=3),
        ItemSpec("gradcam", target_layer="block1"),
    ]


def test_free_worker_serves_the_queue_whose_oldest_request_is_oldest() -> None:
    async def main() -> list[str]:
        b = batcher({"a": (8, 0.0, 100), "b": (8, 0.0, 100), "c": (8, 0.0, 100)})
        b.put(tagged(1, model="b"))
        await asyncio.sleep(0.002)
        b.put(tagged(2, model="c"))
        await asyncio.sleep(0.002)
        b.put(tagged(3, model="a"))
        b.put(tagged(4, model="b"))
        order = []
        for _ in range(3):
            batch = await b.next_batch()
            assert batch is not None
            order.append(batch.model)
        return order

    assert run(main()) == ["b", "c", "a"]


def test_a_full_queue_is_not_held_behind_one_still_waiting_for_its_delay() -> None:
    async def main() -> tuple[str, float]:
        b = batcher({"slow": (8, 5.0, 100), "busy": (2, 5.0, 100)})
        b.put(tagged(1, model="slow"))  # oldest, but its delay runs 5 s
        await asyncio.sleep(0.01)
        b.put(tagged(2, model="busy"))
        b.put(tagged(3, model="busy"))  # full
        t0 = now()
        batch = await b.next_batch()
        assert batch is not None
        return batch.model, now() - t0

    model, waited = run(main())
    assert model == "busy" and waited == 0.0


def test_unknown_model_and_closed_batcher() -> None:
    async def main() -> None:
        b = batcher({"m": (8, 5.0, 100)})
        with raises_kind(ErrorKind.UNKNOWN_MODEL, match="'x'"):
            b.put(tagged(1, model="x"))
        b.put(tagged(1))
        b.put(tagged(2))
        b.close()
        with raises_kind(ErrorKind.DRAINING, match="draining"):
            b.put(tagged(3))
        t0 = now()
        assert tags(await b.next_batch()) == [1, 2]
        assert now() == t0  # draining: no 5 s wait
        assert await b.next_batch() is None

    run(main())


def test_close_wakes_idle_workers() -> None:
    async def main() -> None:
        b = batcher({"m": (8, 0.0, 100)})
        waiters = [asyncio.ensure_future(b.next_batch()) for _ in range(3)]
        await asyncio.sleep(0.01)
        b.close()
        assert await asyncio.gather(*waiters) == [None, None, None]

    run(main())


def test_random_traffic_every_request_answered_exactly_once() -> None:
    """Producers with random deadlines and cancellations against 3 consumers (several seeds).

    Invariants: no batch exceeds max size or mixes models; each model's batches keep arrival
    order; every request is batched once, or expired, or withdrawn - never two of these; the
    queue counters return to zero.
    """

    async def scenario(seed: int) -> None:
        rng = random.Random(seed)
        obs = Recorder()
        limits = {"a": (4, 0.004, 50), "b": (3, 0.0, 50)}
        b = batcher(limits, observer=obs)
        batched: Counter[int] = Counter()
        last_seen: dict[str, int] = {}
        outcomes: dict[int, str] = {}

        async def consumer() -> None:
            while True:
                batch = await b.next_batch()
                if batch is None:
                    return
                assert 1 <= len(batch.items) <= limits[batch.model][0]
                for p in batch.items:
                    assert p.item.model == batch.model
                    n = int(p.item.pixels.reshape(-1)[:4].view(np.int32)[0])
                    assert n > last_seen.get(batch.model, -1)
                    last_seen[batch.model] = n
                    batched[n] += 1
                    if not p.future.done():
                        p.future.set_result(n)
                await asyncio.sleep(rng.random() * 0.003)

        async def caller(n: int) -> None:
            model = rng.choice("ab")
            px = np.zeros((2, 2, 3), np.uint8)
            px.reshape(-1)[:4].view(np.int32)[0] = n
            deadline = now() + rng.random() * 0.02 if rng.random() < 0.3 else None
            try:
                p = b.put(WorkItem(model, px, ItemSpec(), deadline))
            except Failure as exc:
                outcomes[n] = {ErrorKind.QUEUE_FULL: "full", ErrorKind.DEADLINE: "expired"}[exc.kind]
                return
            try:
                if rng.random() < 0.2:
                    await asyncio.sleep(rng.random() * 0.005)
                    late_before = past_deadline(deadline, now(), p.arrived)
                    if b.withdraw(p):  # a caller leaving at its deadline counts as timed out
                        late_after = past_deadline(deadline, now(), p.arrived)
                        reason = obs.dropped[-1][1]
                        rule = "deadline" if late_before else "cancelled"
                        assert reason == rule or late_before != late_after  # (on the boundary: either)
                        outcomes[n] = "withdrawn" if reason == "cancelled" else "withdrawn late"
                        return
                assert await p.future == n
                outcomes[n] = "ok"
            except Failure as exc:
                assert exc.kind is ErrorKind.DEADLINE, exc
                outcomes[n] = "expired"

        consumers = [asyncio.ensure_future(consumer()) for _ in range(3)]
        callers = []
        for n in range(300):
            callers.append(asyncio.ensure_future(caller(n)))
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.002)
        await asyncio.gather(*callers)
        b.close()
        await asyncio.gather(*consumers)

        assert len(outcomes) == 300
        assert all(v == 1 for v in batched.values())
        for n, how in outcomes.items():
            if how == "ok":
                assert batched[n] == 1
            elif how in ("expired", "withdrawn", "withdrawn late", "full"):
                assert batched[n] == 0, (n, how)
        assert b.depth("a") == b.depth("b") == 0
        drops = Counter(r for _, r in obs.dropped)
        assert drops["cancelled"] == sum(1 for v in outcomes.values() if v == "withdrawn")
        assert drops["deadline"] == sum(1 for v in outcomes.values() if v in ("expired", "withdrawn late"))
        assert sum(s for _, s in obs.batches) == sum(batched.values())

    async def main() -> None:
        for seed in range(5):
            await scenario(seed)

    run(main())
