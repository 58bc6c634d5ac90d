"""The hub: the scheduler's end of the front-end processes' channels (no TF, no gRPC).

Every front-end process (``camserve.scheduling.remote.RemoteDispatcher``) connects to the hub's
Unix socket. The hub feeds their images into the one :class:`~camserve.scheduling.dispatcher.Dispatcher`
of the server, so batches fill across all front ends exactly as they would from one, and routes each
result back to the front end that asked. Protocol (tuples over :class:`~.channel.MessageChannel`):

* front -> hub ``("hello", index, pid)`` once, then ``("serving", index, bool)`` when its gRPC
  server starts or stops accepting calls;
* front -> hub ``("submit", id, WorkItem)``: queue one image (``id`` unique within the front end);
  ``("submit_slot", id, model, slot, shape, ItemSpec, deadline)``: the same, with the pixels in slot
  ``slot`` of the front end's :class:`~camserve.scheduling.arena.PixelArena` (the usual case);
  ``("withdraw", id)``: its caller left (deadline or cancel) before the answer;
* hub -> front ``("done", id, ItemResult | None, Failure | None)``: the answer for ``id``;
* hub -> front ``("state", State)``: readiness, model summaries and draining, sent on every change.

A front end whose connection ends (it died) has all its queued images withdrawn at once; whatever is
already in a batch runs and its results are dropped. ``State.serving`` is True only when every one
of the ``frontends`` is connected and accepting, every model is warm on a live worker, and the server
is not draining: each front end reports it through ``grpc.health.v1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camserve.records import Failure, ItemResult, ModelSummary
from camserve.scheduling.arena import PixelArena
from camserve.scheduling.batcher import Pending, WorkItem
from camserve.scheduling.channel import MessageChannel
from camserve.scheduling.dispatcher import Dispatcher

__all__ = ["Hub", "State"]

log = logging.getLogger("camserve.hub")


@dataclass(frozen=True)
class State:
    """What every front end mirrors: health and the summaries it validates requests against."""

    serving: bool = False                                  # the server as a whole (health "")
    ready: dict[str, bool] = field(default_factory=dict)  # per model: warm on a live worker
    summaries: dict[str, ModelSummary] = field(default_factory=dict)
    draining: bool = False


class _Link:
    """One connected front end."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.index = -1
        self.pid = 0
        self.serving = False
        self.pending: dict[int, Pending] = {}
        self.channel = MessageChannel(self.on_message, self.on_lost)

    def on_message(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "submit_slot":
            _, item_id, model, slot, shape, spec, deadline = msg
            try:
                pixels = self.hub.arenas[self.index].view(slot, shape)
            except (ValueError, IndexError) as exc:
                self.channel.send(("done", item_id, None, Failure(f"bad pixel slot: {exc}")))
                return
            self.hub.submit(self, item_id, WorkItem(model, pixels, spec, deadline))
        elif kind == "submit":
            self.hub.submit(self, msg[1], msg[2])
        elif kind == "withdraw":
            pending = self.pending.pop(msg[1], None)
            if pending is not None:
                self.hub.dispatcher.withdraw(pending)
        elif kind == "serving":
            self.serving = bool(msg[2])
            self.hub.refresh()
        elif kind == "hello":
            self.index, self.pid = int(msg[1]), int(msg[2])
            self.hub.links[self.index] = self
            self.channel.send(("state", self.hub.state))
            if self.hub.draining:  # started while the server drains: it must not wait for a drain
                self.channel.send(("drain", True))
        else:
            log.warning("hub: unknown message %r from front end %d", kind, self.index)

    def on_lost(self) -> None:
        for pending in self.pending.values():
            self.hub.dispatcher.withdraw(pending)
        if self.pending:
            log.warning("front end %d gone: %d queued image(s) withdrawn", self.index, len(self.pending))
        self.pending.clear()
        if self.hub.links.get(self.index) is self:
            del self.hub.links[self.index]
        self.hub.refresh()


class Hub:
    """Serves ``frontends`` front-end processes on a Unix socket at ``path`` over ``dispatcher``."""

    def __init__(self, dispatcher: Dispatcher, path: Path, frontends: int,
                 arenas: list[PixelArena] | None = None,
                 on_result: Callable[[str, float, float], None] | None = None) -> None:
        """``on_result(model, queue_s, compute_s)`` is told of every image computed for a caller."""
        self.dispatcher = dispatcher
        self.on_result = on_result
        self.arenas = arenas or []
        self.path = Path(path)
        self.frontends = int(frontends)
        self.links: dict[int, _Link] = {}
        self.state = State()
        self.draining = False
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = await loop.create_unix_server(lambda: _Link(self).channel, str(self.path))
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links.values()):
            link.channel.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    # ------------------------------------------------------------------ work

    def submit(self, link: _Link, item_id: int, item: WorkItem) -> None:
        try:
            pending = self.dispatcher.enqueue(item)
        except Failure as exc:
            link.channel.send(("done", item_id, None, exc))
            return
        link.pending[item_id] = pending
        pending.future.add_done_callback(lambda fut: self._answer(link, item_id, item.model, fut))

    def _answer(self, link: _Link, item_id: int, model: str, fut: asyncio.Future[ItemResult]) -> None:
        if link.pending.pop(item_id, None) is None or fut.cancelled():
            return  # withdrawn: the caller left
        exc = fut.exception()
        if exc is None:
            result = fut.result()
            if self.on_result is not None:
                self.on_result(model, result.queue_s, result.compute_s)
            link.channel.send(("done", item_id, result, None))
        else:
            failure = exc if isinstance(exc, Failure) else Failure(f"{type(exc).__name__}: {exc}")
            link.channel.send(("done", item_id, None, failure))

    # ------------------------------------------------------------------ state

    def refresh(self) -> None:
        """Recompute the state every front end mirrors; send it when it changed."""
        d = self.dispatcher
        ready = {name: bool(d.ready(name)) for name in d.models}
        summaries = {name: s for name in d.models if (s := d.model_summary(name)) is not None}
        fronts_up = (len(self.links) == self.frontends
                     and all(link.serving for link in self.links.values()))
        serving = fronts_up and bool(d.ready()) and not self.draining
        state = State(serving=serving, ready=ready, summaries=summaries, draining=self.draining)
        if state != self.state:
            if state.serving != self.state.serving:
                log.info("health: %s (front ends accepting %d of %d, models ready %s)",
                         "SERVING" if serving else "NOT_SERVING",
                         sum(link.serving for link in self.links.values()), self.frontends,
                         ", ".join(f"{k}={v}" for k, v in ready.items()))
            self.state = state
            for link in self.links.values():
                link.channel.send(("state", state))

    def drain(self, hurry: bool = False) -> None:
        """Tell every front end to drain (NOT_SERVING, pre-stop window, finish in-flight calls)."""
        self.draining = True
        self.refresh()
        for link in self.links.values():
            link.channel.send(("drain", hurry))

    def frontend_pids(self) -> dict[int, int]:
        return {i: link.pid for i, link in self.links.items()}
