"""One front-end process: the gRPC server on the shared port, over the supervisor's scheduler.

`camserve serve --frontends N` runs N of these (spawned by `camserve.front.supervisor`). Each binds
the server's port with SO_REUSEPORT (the kernel spreads new connections across them), terminates
gRPC for every service (`build_grpc_server`: camserve.v1, the Open Inference Protocol, health,
reflection, TLS, tokens),
validates and decodes, and hands images to the one scheduler through
`camserve.scheduling.remote.RemoteDispatcher`. Health mirrors the hub's state: SERVING only while
every front end accepts calls, every model is warm on a live worker and the server is not draining.

Drain (the supervisor's ``drain`` message after SIGTERM): NOT_SERVING at once, keep serving for the
pre-stop window (skipped if this front end never reported SERVING: no balancer routes to it), then
refuse new calls in the handlers (UNAVAILABLE with a retry pushback) and end the health Watch and
reflection streams (`camserve.front.health`) until callers are quiet (a second at most), stop gRPC
and let the calls in progress finish (`server.stop(grace)`), exit 0; or exit
``EXIT_DRAIN_LOST`` when calls were still in progress at the end of the drain window (gRPC cancels
them: accepted calls lost, which the supervisor's own exit status then reports). If the supervisor
disappears, the process stops at once (its calls cannot be answered any more).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2

from camserve.front.calls import CallRunner
from camserve.front.health import HealthServicer, StreamsEnd
from camserve.front.metrics import Metrics
from camserve.front.security import add_listening_port
from camserve.front.server import (
    EXIT_DRAIN_LOST,
    SERVICE_NAMES,
    ServerOptions,
    build_grpc_server,
    listen_address,
)
from camserve.front.statistics import InferenceStatistics, shared_table
from camserve.front.status import DRAINING_PUSHBACK_S
from camserve.records import ErrorKind, Failure
from camserve.repository import ModelConfig
from camserve.scheduling.arena import PixelArena
from camserve.scheduling.board import Board
from camserve.scheduling.hub import State
from camserve.scheduling.remote import RemoteDispatcher

__all__ = ["FrontEnd", "main"]

log = logging.getLogger("camserve.frontend")

#: After a drain's refusals begin, gRPC is stopped once no call has arrived for this long (seconds),
#: or after ``status.DRAINING_PUSHBACK_S`` at most.
DRAIN_QUIET_S = 0.2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FrontEnd:
    """Front end ``index`` of a server (see the module docstring)."""

    def __init__(self, index: int, repository: dict[str, ModelConfig], opts: ServerOptions, port: int,
                 hub_path: Path, board_path: Path, frontends: int,
                 arena: tuple[str, int, int] | None = None, statistics_path: Path | None = None) -> None:
        self.index = index
        self.repository = repository
        self.opts = opts
        self.port = port
        self.hub_path = hub_path
        self.board = Board.attach(board_path, list(repository), frontends)
        max_batch = max(c.batching.max_batch_size for c in repository.values())
        statistics = None
        if statistics_path is not None:  # the server's shared ModelStatistics table, this front end's row
            table = shared_table(statistics_path, frontends + 1, len(repository), create=False)
            statistics = InferenceStatistics(list(repository), table, row=index)
        self.metrics = Metrics(list(repository), max_batch_size=max_batch, statistics=statistics)
        self.arena = PixelArena.attach(*arena) if arena is not None else None
        self.dispatcher = RemoteDispatcher(index, repository, self.board, self.arena)
        self.calls = CallRunner(self.metrics, max_inflight=opts.max_inflight, admission=self.dispatcher)
        self.executor = ThreadPoolExecutor(max_workers=max(1, opts.codec_threads),
                                           thread_name_prefix="camserve-codec")
        self.streams = StreamsEnd()  # ends health Watch and reflection streams when the drain refuses calls
        self.health = HealthServicer(self.streams)
        self.names = ["", *SERVICE_NAMES, *repository]
        self._health: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._drain: asyncio.Future[bool] | None = None
        self.served = False  # reported SERVING at least once (else a drain skips the pre-stop window)
        self._hurry = asyncio.Event()

    def _count_rejected(self, method: str, code: str) -> None:
        self.metrics.record_rpc(None, method.rsplit("/", 1)[-1], code, None)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._drain = loop.create_future()
        for name in self.names:
            await self.health.set(name, NOT_SERVING)
        self.dispatcher.on_state = lambda _state: self._wake.set()
        self.dispatcher.on_drain = self._on_drain
        await self.dispatcher.connect(self.hub_path)
        server = build_grpc_server(self.repository, self.opts, self.dispatcher, self.metrics, self.executor,
                                   self.health, self._count_rejected,
                                   draining=lambda: self.dispatcher.state.draining or self._drain.done(),
                                   calls=self.calls, streams=self.streams)
        add_listening_port(server, listen_address(self.opts, self.port), self.opts.security)
        await server.start()
        self.dispatcher.serving(True)
        health_task = asyncio.create_task(self._mirror_health())
        lost = asyncio.create_task(self.dispatcher.lost.wait())
        await asyncio.wait({self._drain, lost}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if self._drain.done():
            if await self._drain_calls(server):
                code = EXIT_DRAIN_LOST
        else:
            log.error("front end %d: the supervisor is gone; stopping", self.index)
            await server.stop(0)
            code = 1
        health_task.cancel()
        lost.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.dispatcher.close()
        await asyncio.sleep(0)  # let the channel write what is queued
        return code

    def _on_drain(self, hurry: bool) -> None:
        if hurry:
            self._hurry.set()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(hurry)

    async def _drain_calls(self, server: Any) -> int:
        """NOT_SERVING, the pre-stop window, then refuse new calls until callers are quiet, stop gRPC
        and wait for the calls in progress up to ``drain_s`` in all; returns how many were still in
        progress when that window ended (gRPC cancels them)."""
        await self.health.enter_graceful_shutdown()  # NOT_SERVING on every name, for good
        if not self.served:  # never in a load balancer's rotation: nobody to wait for
            log.info("front end %d never reported SERVING, so no pre-stop window", self.index)
        elif self.opts.pre_stop_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), self.opts.pre_stop_s)
        self.dispatcher.serving(False)
        # Refuse new calls in the handlers first and stop gRPC only once callers have gone quiet: a call
        # gRPC has received but not yet handed to a handler when server.stop() begins is cancelled by
        # gRPC (CANCELLED, which no retry policy retries); refused here it gets UNAVAILABLE with a retry
        # pushback. The refusals last DRAINING_PUSHBACK_S at most; then gRPC refuses new calls itself
        # (GOAWAY, which clients retry transparently) while the accepted ones finish within the drain
        # window. The count is taken by a timer set before gRPC's grace starts, so it runs first: the
        # calls it finds in progress are those the end of the grace cancels. stop() returns earlier
        # (and the timer never runs) once every call has ended.
        loop = asyncio.get_running_loop()
        drain_end = loop.time() + self.opts.drain_s
        self.calls.closing = Failure("the server is shutting down; retry on another replica or after the "
                                     "restart", ErrorKind.DRAINING)
        # Watch and reflection streams stay open as long as their clients like: left open, they would hold
        # server.stop() to the end of the drain window. Watchers were told NOT_SERVING at the drain's start.
        self.streams.end()
        await self.calls.quiet(DRAIN_QUIET_S, min(DRAINING_PUSHBACK_S, self.opts.drain_s))
        grace = max(0.0, drain_end - loop.time())
        left: list[int] = []
        timer = loop.call_later(grace, lambda: left.append(self.calls.active))
        await server.stop(grace)
        timer.cancel()
        lost = left[0] if left else 0
        if lost:
            log.error("front end %d: %d accepted call(s) still in progress when the drain window "
                      "(--drain-seconds %.1f) ended were cancelled", self.index, lost, self.opts.drain_s)
        return lost

    async def _mirror_health(self) -> None:
        """Set grpc.health.v1 from the hub's state whenever it changes."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            state: State = self.dispatcher.state
            if state.draining:
                continue  # enter_graceful_shutdown already set NOT_SERVING for good
            overall = SERVING if state.serving else NOT_SERVING
            status = dict.fromkeys(("", *SERVICE_NAMES), overall)
            for model in self.repository:
                status[model] = SERVING if state.ready.get(model) else NOT_SERVING
            self.served = self.served or overall == SERVING
            for name, value in status.items():
                if self._health.get(name) != value:
                    await self.health.set(name, value)
                    self._health[name] = value


def main(argv: list[str] | None = None) -> int:
    """`python -m camserve.front.frontend SPEC INDEX`: the front end ``INDEX`` of the server whose
    supervisor wrote ``SPEC`` (repository, options, port, hub and board paths); returns the exit code."""
    spec_path, index = (sys.argv[1:] if argv is None else argv)[:2]
    spec = pickle.loads(Path(spec_path).read_bytes())
    idx = int(index)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    logging.basicConfig(level=spec.get("log_level", "INFO"), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s front{idx} %(name)s: %(message)s")
    front = FrontEnd(idx, spec["repository"], spec["options"], spec["port"], Path(spec["hub"]),
                     Path(spec["board"]), spec["frontends"], spec["arenas"][idx], Path(spec["statistics"]))
    try:
        return asyncio.run(front.run())
    except OSError as exc:  # cannot bind the port, cannot reach the supervisor
        log.error("front end %d: %s", idx, exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
