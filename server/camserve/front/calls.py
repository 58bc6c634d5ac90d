"""One unary RPC, run the same way by every front-end service: admission, deadline, queueing, status,
metrics.

Why one place: camserve.v1 and the Open Inference Protocol share the server's in-flight limit (an
image counts whichever protocol brought it), queue their images the same way (:func:`shed_if_full`
before decoding, :func:`compute` for the images of one call), end every failure through
``status``'s one table, and record every call in the same counters. A servicer hands
:meth:`CallRunner.run` the work of a call; the runner passes it a :class:`Call` (the caller's
deadline, and :meth:`Call.admit`), releases what it admitted, and turns whatever escapes into the
status code the table gives (INTERNAL only for bugs, logged with the traceback).
:class:`FrontServicer` is what each servicer is built from.

The order every call with images follows: check the whole request (fields, parameters, shapes, each
image's header: no decoding), then :meth:`Call.admit` its exact image count (the in-flight limit),
then :func:`shed_if_full` (the queue), then decode and compute. So a malformed request gets the
status of what is wrong with it whether or not the server is busy, and a request is admitted for the
images it carries, never for a count it claims. Only what decoding alone finds (pixel data corrupt
past a valid header) is found after admission.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol

import grpc

from camserve.front import codec
from camserve.front.metrics import Metrics
from camserve.front.requests import RequestParser
from camserve.front.status import abort, failure_of, status_of, trailers_of
from camserve.records import ErrorKind, Failure, ItemResult
from camserve.scheduling.batcher import WorkItem, past_deadline

__all__ = ["Call", "CallRunner", "FrontServicer", "compute", "shed_if_full"]

log = logging.getLogger(__name__)


class Admission(Protocol):
    """Where in-flight images are counted (``scheduling.remote.RemoteDispatcher``: the board every
    front end shares, so the limit holds server-wide)."""

    def admit(self, n: int, limit: int) -> int | None: ...
    def release(self, n: int) -> None: ...


class _LocalAdmission:
    """In-flight images counted in this process only (a front end alone, and tests)."""

    def __init__(self) -> None:
        self.inflight = 0

    def admit(self, n: int, limit: int) -> int | None:
        if limit and self.inflight and self.inflight + n > limit:
            return self.inflight
        self.inflight += n
        return None

    def release(self, n: int) -> None:
        self.inflight -= n


class Call:
    """One call inside :meth:`CallRunner.run`: when it ``started`` and the caller's ``deadline`` (both
    on the runner's clock; deadline None = the caller set none), and, once its images are computed,
    their mean ``timing`` (queue, compute seconds): what the inference statistics count per call."""

    def __init__(self, runner: CallRunner, started: float, deadline: float | None) -> None:
        self._runner = runner
        self.started = started
        self.deadline = deadline
        self.admitted = 0
        self.timing: tuple[float, float] | None = None

    def admit(self, n: int) -> None:
        """Count this call's ``n`` images against the in-flight limit (BUSY when they do not fit), once
        the whole request is checked (see the module docstring); released when the call ends."""
        if self.admitted:
            raise RuntimeError("a call is admitted once")
        self._runner.admit(n)
        self.admitted = n

    def computed(self, results: Sequence[ItemResult]) -> None:
        """The call's images came back from the workers: keep their mean queue and compute times (a
        call's images can run in several batches; Triton's statistics time each request once)."""
        ok = [r for r in results if r.error is None]
        if ok:
            self.timing = (sum(r.queue_s for r in ok) / len(ok), sum(r.compute_s for r in ok) / len(ok))


#: ``work(call)``: a call's reply, its images admitted through ``call.admit`` once checked.
Work = Callable[[Call], Awaitable[Any]]


class CallRunner:
    """Runs calls for one front-end process; shared by its services so the in-flight limit is one.

    ``max_inflight`` (``--max-inflight``; 0 = none) bounds the images inside calls at once, across
    protocols, counted by ``admission`` (None = in this process); ``clock`` is monotonic seconds.
    """

    def __init__(self, metrics: Metrics, max_inflight: int = 0, admission: Admission | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.clock = clock
        self.max_inflight = max(0, int(max_inflight))
        self.admission: Admission = admission if admission is not None else _LocalAdmission()
        self.active = 0  # calls inside run() now (what a drain window leaves is lost)
        self.arrived = clock()  # when the last call entered run()
        self.closing: Failure | None = None  # set by a drain: every new call is refused with it

    def admit(self, n: int) -> None:
        """The in-flight limit: refuse at once (BUSY) when ``n`` more images would pass it.

        Counts images, not calls (Explain 1, ExplainBatch and ModelInfer their number of images),
        because images are what costs memory and compute. A call larger than the whole limit is
        admitted only when nothing else is in flight, so it can still run. Health, metadata and
        reflection never pass here.
        """
        busy = self.admission.admit(n, self.max_inflight)
        if busy is not None:
            raise Failure(f"the server is at its in-flight limit ({busy} of {self.max_inflight} images "
                          "being handled); retry later with back-off", ErrorKind.BUSY)

    def deadline(self, context: grpc.aio.ServicerContext) -> float | None:
        """The caller's deadline on :attr:`clock`, or None."""
        remaining = context.time_remaining()
        return None if remaining is None else self.clock() + remaining

    async def run(self, context: grpc.aio.ServicerContext, method: str, model: str | None, work: Work) -> Any:
        """Run ``work`` for one call of ``method`` and return its reply; on any failure the call ends with
        its mapped status instead."""
        self.arrived = self.clock()
        if self.closing is not None:  # draining: refused before it is accepted, so never in progress
            await self.finish(context, method, model, self.arrived, self.closing)
        self.active += 1
        try:
            return await self._run(context, method, model, work)
        finally:
            self.active -= 1

    async def quiet(self, quiet_s: float, timeout_s: float) -> None:
        """Wait until no call has arrived for ``quiet_s`` seconds, ``timeout_s`` seconds at most.

        A drain sets :attr:`closing` first, so calls arriving meanwhile are refused at once (DRAINING:
        UNAVAILABLE, retryable). Why wait for quiet before ``server.stop``: gRPC cancels (CANCELLED,
        which clients do not retry) a call its core has received but not yet handed to a handler when
        the stop begins; refused here instead, its client retries. Callers refused once back off
        (``status.DRAINING_PUSHBACK_S``), so the gap comes quickly; callers that retry without pause
        would keep it from coming, hence ``timeout_s``.
        """
        end = self.clock() + max(0.0, timeout_s)
        while True:
            now = self.clock()
            wait = min(quiet_s - (now - self.arrived), end - now)
            if wait <= 0:
                return
            await asyncio.sleep(wait)  # until the quiet period (or the time allowed) would end

    async def _run(self, context: grpc.aio.ServicerContext, method: str, model: str | None,
                   work: Work) -> Any:
        started = self.clock()
        deadline = self.deadline(context)
        call = Call(self, started, deadline)
        try:
            reply = await work(call)
        except asyncio.CancelledError:  # the caller left: cancelled, or gRPC ended it at its deadline
            self.metrics.record_rpc(model, method, self.ended(deadline, started), self.clock() - started)
            raise
        except Exception as exc:  # every path ends in a status, see camserve.front.status
            await self.finish(context, method, model, started, exc, deadline)
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            if call.admitted:
                self.admission.release(call.admitted)
        await self.finish(context, method, model, started, None, timing=call.timing)
        return reply

    def ended(self, deadline: float | None, started: float) -> str:
        """The code of a call the caller left: DEADLINE_EXCEEDED at its deadline, else CANCELLED.
        gRPC ends a call at its deadline by cancelling the handler, so the time itself tells the two
        apart (``scheduling.batcher.past_deadline``: the queue's rule for drops too)."""
        return "DEADLINE_EXCEEDED" if past_deadline(deadline, self.clock(), started) else "CANCELLED"

    async def finish(self, context: grpc.aio.ServicerContext, method: str, model: str | None,
                     started: float, exc: BaseException | None, deadline: float | None = None,
                     timing: tuple[float, float] | None = None) -> None:
        """Record the RPC (with its images' mean ``timing`` when OK) and, on error, abort it with the
        mapped code (never a traceback to the caller)."""
        if exc is None:
            self.metrics.record_rpc(model, method, "OK", self.clock() - started, timing)
            return
        failure = failure_of(exc)
        if failure.kind is ErrorKind.INTERNAL:
            log.error("%s failed: %s", method, failure.message, exc_info=exc)
        if context.done() or (failure.kind is ErrorKind.DEADLINE
                              and past_deadline(deadline, self.clock(), started)):
            # The caller left, or the queue's timer found the RPC's own deadline passed: gRPC ends (or
            # has ended) the RPC itself, DEADLINE_EXCEEDED at its deadline (the two timers fire
            # microseconds apart); aborting an ended RPC makes grpc log "ExecuteBatchError raised in
            # core" at ERROR. A shorter deadline of the protocol's own (Triton's ``timeout``
            # parameter) is not the RPC's: that call is aborted DEADLINE_EXCEEDED below.
            self.metrics.record_rpc(model, method, self.ended(deadline, started), self.clock() - started)
            raise asyncio.CancelledError
        code = status_of(failure.kind)
        self.metrics.record_rpc(model, method, code.name, self.clock() - started)
        await abort(context, failure, trailers_of(failure.kind, context))


def shed_if_full(dispatcher: Any, model: str, n: int = 1) -> None:
    """Refuse (QUEUE_FULL) before decoding when ``n`` more images cannot fit the model's queue now
    (microseconds, not a decode); the queue still refuses atomically at submit."""
    if not dispatcher.has_room(model, n):
        raise Failure(f"queue of model {model!r} is full; retry later", ErrorKind.QUEUE_FULL)


async def compute(dispatcher: Any, items: Sequence[WorkItem]) -> list[ItemResult]:
    """Queue every image of one call and wait for all of them; the first failure withdraws the others
    from the queue and is raised. (Queue and compute times are recorded by the scheduler's process,
    which measured them.)"""
    if len(items) == 1:
        return [await dispatcher.submit(items[0])]
    tasks = [asyncio.ensure_future(dispatcher.submit(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class FrontServicer:
    """What every front-end servicer is built from: the front process's dispatcher, request parser,
    metrics, codec thread pool and :class:`CallRunner` (its in-flight limit; None = one without a
    limit, for this service alone), and the server's image and message limits. Each front-end
    process builds its own servicers from its own parts."""

    def __init__(self, dispatcher: Any, parser: RequestParser, metrics: Metrics, executor: Executor, *,
                 max_image_pixels: int = codec.DEFAULT_MAX_PIXELS, max_send_bytes: int = 16 << 20,
                 calls: CallRunner | None = None) -> None:
        self.dispatcher = dispatcher
        self.parser = parser
        self.metrics = metrics
        self.executor = executor
        self.max_image_pixels = max_image_pixels
        self.max_send_bytes = max_send_bytes
        self.calls = calls if calls is not None else CallRunner(metrics)
        self.clock = self.calls.clock

    async def in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the codec thread pool (decoding, resizing, drawing: CPU work off the loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
