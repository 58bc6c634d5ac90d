"""The pieces front-end processes share with the scheduler, without a server: the board (queue depths,
the server-wide in-flight limit), the pixel arena and the hub's message channel.

The board and the arena are exercised from two real processes where it matters (the lock and the
shared memory are the point); the whole path, front ends and all, is covered by the server suites
(tests/reliability, tests/security run with --frontends 1 and 2).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
from pathlib import Path

import numpy as np
from camserve.records import ClassMap, ErrorKind, Failure, ItemResult, ItemSpec
from camserve.scheduling.arena import PixelArena
from camserve.scheduling.batcher import WorkItem
from camserve.scheduling.board import Board
from camserve.scheduling.channel import MessageChannel


def _admit_many(path: str, frontend: int, rounds: int, limit: int, out: multiprocessing.Queue) -> None:
    board = Board.attach(Path(path), ["m"], 2)
    admitted = refused = peak = 0
    for _ in range(rounds):
        if board.admit(frontend, 1, limit) is None:
            admitted += 1
            peak = max(peak, board.total_inflight())
            board.release(frontend, 1)
        else:
            refused += 1
    out.put((admitted, refused, peak))


def test_board_in_flight_limit_holds_across_processes(tmp_path: Path) -> None:
    board = Board.create(tmp_path / "board", ["m"], 2)
    assert board.admit(0, 3, 4) is None and board.admit(1, 1, 4) is None
    assert board.admit(1, 1, 4) == 4          # 4 in flight over both front ends: refused, says how many
    board.release(0, 3)
    assert board.admit(1, 2, 4) is None and board.total_inflight() == 3
    board.reset_frontend(1)                   # a dead front end's calls died with it
    assert board.total_inflight() == 0
    assert board.admit(0, 10, 4) is None      # larger than the limit, but nothing else in flight
    board.release(0, 10)
    # Two processes hammering one limit of 1: never both in flight at once.
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    path = str(tmp_path / "board")
    procs = [ctx.Process(target=_admit_many, args=(path, i, 3000, 1, out)) for i in (0, 1)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(peak <= 1 for _, _, peak in results), results
    assert sum(a for a, _, _ in results) > 0
    board.set_depth("m", 7)
    assert Board.attach(tmp_path / "board", ["m"], 2).queue_depth("m") == 7
    board.close()


def test_arena_slots_views_and_fallbacks() -> None:
    arena = PixelArena.create(2, 12)
    try:
        reader = PixelArena.attach(arena.name, 2, 12)
        a = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
        slot = arena.put(a)
        assert slot is not None
        np.testing.assert_array_equal(reader.view(slot, (2, 2, 3)), a)
        assert arena.put(np.zeros((2, 2, 3), np.float32)) is None   # float32 travels inline
        assert arena.put(np.zeros((3, 3, 3), np.uint8)) is None     # larger than a slot
        other = arena.put(a + 1)
        assert other is not None and arena.put(a) is None           # full: inline, never refused
        arena.free(slot)
        assert arena.put(a) == slot and arena.free_slots == 0
        try:
            reader.view(5, (2, 2, 3))
            raise AssertionError("a slot outside the arena was accepted")
        except ValueError:
            pass
        reader.close()
    finally:
        arena.close()


def test_channel_carries_records_and_large_frames_in_order() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a_sock, b_sock = socket.socketpair()
        got: list[object] = []
        done = loop.create_future()

        def on_b(msg: object) -> None:
            got.append(msg)
            if len(got) == 4:
                done.set_result(None)

        a = MessageChannel(lambda m: None, lambda: None)
        b = MessageChannel(on_b, lambda: None)
        await loop.create_unix_connection(lambda: a, sock=a_sock)
        await loop.create_unix_connection(lambda: b, sock=b_sock)
        big = np.random.default_rng(0).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)  # > the 1 MiB buffer
        heat = np.eye(3, dtype=np.float32)
        result = ItemResult(np.full(5, 0.2, np.float32), [ClassMap(2, 1.5, heat, False)])
        a.send(("submit", 1, WorkItem("m", big, ItemSpec("cam", 3, 1, "x"), 12.5)))
        a.send(("done", 2, result, None))
        a.send(("done", 3, None, Failure("queue full", ErrorKind.QUEUE_FULL)))
        await asyncio.sleep(0)  # a second frame
        a.send(("withdraw", 4))
        await asyncio.wait_for(done, 30)
        kinds = [m[0] for m in got]  # type: ignore[index]
        assert kinds == ["submit", "done", "done", "withdraw"]
        item = got[0][2]  # type: ignore[index]
        np.testing.assert_array_equal(item.pixels, big)
        assert item.spec == ItemSpec("cam", 3, 1, "x") and item.deadline == 12.5
        res = got[1][2]  # type: ignore[index]
        np.testing.assert_array_equal(res.maps[0].heatmap, np.eye(3))
        assert res.maps[0].class_index == 2
        failure = got[2][3]  # type: ignore[index]
        assert isinstance(failure, Failure) and failure.kind is ErrorKind.QUEUE_FULL
        a.close()
        b.close()

    asyncio.run(main())
