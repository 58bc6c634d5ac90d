"""The Dispatcher as a front-end process sees it: the same facade, over the hub's channel (no gRPC).

``RemoteDispatcher`` offers what the servicer uses of :class:`~camserve.scheduling.dispatcher.Dispatcher`
(``submit``, ``has_room``, ``ready``, ``model_summary``) in a front-end process, where the batcher and
the workers live in the supervisor (``camserve.scheduling.hub``). ``submit`` sends the
:class:`~camserve.scheduling.batcher.WorkItem` and awaits the answer; a caller who leaves (deadline,
cancel) withdraws it at the hub, so it is dropped before a batch forms. ``has_room`` reads the
board's queue depth (no round trip); ``ready`` and ``model_summary`` read the last
:class:`~camserve.scheduling.hub.State` the hub sent.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from camserve.records import ErrorKind, Failure, ItemResult, ModelSummary
from camserve.repository import ModelConfig
from camserve.scheduling.arena import PixelArena
from camserve.scheduling.batcher import WorkItem
from camserve.scheduling.board import Board
from camserve.scheduling.channel import MessageChannel
from camserve.scheduling.hub import State

__all__ = ["RemoteDispatcher"]


class RemoteDispatcher:
    """Front end ``index``'s handle on the server's scheduler (see the module docstring)."""

    def __init__(self, index: int, repository: Mapping[str, ModelConfig], board: Board,
                 arena: PixelArena | None = None) -> None:
        self.index = index
        self.board = board
        self.arena = arena
        self._limits = {name: cfg.batching.max_queue_size for name, cfg in repository.items()}
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[ItemResult]] = {}
        self.state = State()
        self.on_state: Callable[[State], None] | None = None
        self.on_drain: Callable[[bool], None] | None = None
        self.lost = asyncio.Event()
        self._channel = MessageChannel(self._on_message, self._on_lost)

    async def connect(self, path: Path) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: self._channel, str(path))
        self._channel.send(("hello", self.index, os.getpid()))

    def close(self) -> None:
        self._channel.close()

    def serving(self, accepting: bool) -> None:
        """Tell the hub whether this front end's gRPC server accepts calls."""
        self._channel.send(("serving", self.index, accepting))

    # ------------------------------------------------------------------ the Dispatcher facade

    def ready(self, model: str | None = None) -> bool:
        if model is None:
            return self.state.serving
        return self.state.ready.get(model, False) and not self.state.draining

    def model_summary(self, name: str) -> ModelSummary | None:
        return self.state.summaries.get(name)

    def has_room(self, model: str, n: int = 1) -> bool:
        limit = self._limits.get(model)
        return limit is None or self.board.queue_depth(model) + n <= limit

    def admit(self, n: int, limit: int) -> int | None:
        """Count ``n`` images in flight against the server-wide ``limit`` (0 = none): None when
        admitted, else the images in flight now (see :meth:`Board.admit`)."""
        return self.board.admit(self.index, n, limit)

    def release(self, n: int) -> None:
        self.board.release(self.index, n)

    async def submit(self, item: WorkItem) -> ItemResult:
        """Queue ``item`` at the hub and wait for its answer; cancelling withdraws it.

        Raises :class:`Failure` as ``Dispatcher.submit`` does, and ``DRAINING`` when the scheduler
        is unreachable (it is stopping).
        """
        if self._channel.closed:
            raise Failure("the server is stopping; retry", ErrorKind.DRAINING)
        item_id = next(self._ids)
        fut: asyncio.Future[ItemResult] = asyncio.get_running_loop().create_future()
        self._waiting[item_id] = fut
        slot = None if self.arena is None else self.arena.put(item.pixels)
        if slot is None:  # does not fit a slot: the pixels travel in the message
            self._channel.send(("submit", item_id, item))
        else:
            self._channel.send(("submit_slot", item_id, item.model, slot, item.pixels.shape, item.spec,
                                item.deadline))
        try:
            return await fut
        except asyncio.CancelledError:
            if self._waiting.pop(item_id, None) is not None:
                self._channel.send(("withdraw", item_id))
            raise
        finally:
            if slot is not None:
                self.arena.free(slot)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ channel events

    def _on_message(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "done":
            fut = self._waiting.pop(msg[1], None)
            if fut is None or fut.done():
                return
            if msg[3] is not None:
                fut.set_exception(msg[3])
            else:
                fut.set_result(msg[2])
        elif kind == "state":
            self.state = msg[1]
            if self.on_state is not None:
                self.on_state(self.state)
        elif kind == "drain" and self.on_drain is not None:
            self.on_drain(bool(msg[1]))

    def _on_lost(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(Failure("the server's scheduler is gone; retry", ErrorKind.WORKER_LOST))
        self.state = State()
        if self.on_state is not None:
            self.on_state(self.state)
        self.lost.set()
