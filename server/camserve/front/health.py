"""grpc.health.v1 for a front end (Check, List, Watch), and the end of its long-lived streams at drain.

Why not grpcio-health-checking's servicer as it is: two of its answers hurt callers.

* Its ``Watch`` never ends. Every gRPC client with client-side health checking (round_robin with a
  ``healthCheckConfig``, as the camserve SDK uses for several targets) keeps one Watch stream open per
  connection, and a stream still open when a draining front end stops gRPC holds
  ``server.stop(grace)`` to the whole grace: measured, one watcher made every SIGTERM take all of
  ``--drain-seconds`` (30 s by default) instead of about a second, and the watcher was then cut
  UNAVAILABLE "Cancelling all calls". Here a watcher gets NOT_SERVING when the drain begins (the
  pre-stop window, for balancers) and its stream ends (OK) once the front end refuses new calls, as
  grpc-dotnet ends its Watch calls at shutdown (grpc/grpc-dotnet#2582); the health-checking protocol
  tells clients to retry a Watch that ended with any status but UNIMPLEMENTED, and by then the
  server is leaving.
* It leaves ``List`` (added to health.proto in 2024, and listed by reflection) unimplemented: a caller
  got UNIMPLEMENTED "Unexpected <class 'NotImplementedError'>: Method not implemented!". Here it
  answers every name's status.

:class:`StreamsEnd` is the one signal both long-lived streams a front end serves listen to (health
Watch here, reflection in ``camserve.front.reflection``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["HealthServicer", "StreamsEnd"]

T = TypeVar("T")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class StreamsEnd:
    """Set once by a draining front end (:meth:`end`): the long-lived streams it serves stop waiting
    for their client and end. Made outside an event loop; used inside the front end's."""

    #: What :meth:`first` returns when the end came first.
    ENDED: Any = object()

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def end(self) -> None:
        """End every stream waiting on this, and any that starts later, at its next wait."""
        self._event.set()

    @property
    def ended(self) -> bool:
        return self._event.is_set()

    async def first(self, awaitable: Awaitable[T]) -> T | Any:
        """``awaitable``'s result, or :attr:`ENDED` (``awaitable`` cancelled) if the end comes first."""
        task = asyncio.ensure_future(awaitable)
        if self.ended:
            task.cancel()
            return self.ENDED
        ended = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait((task, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (task, ended):
                if not waiter.done():
                    waiter.cancel()
        return task.result() if task.done() and not task.cancelled() else self.ENDED

    async def until_end(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """``items`` as they come, until they run out or the end comes (whichever is first)."""
        iterator = aiter(items)
        while True:
            try:
                item = await self.first(anext(iterator))
            except StopAsyncIteration:
                return
            if item is self.ENDED:
                return
            yield item


class HealthServicer(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 (https://github.com/grpc/grpc/blob/master/doc/health-checking.md), asyncio.

    The same calls as grpcio-health-checking's aio servicer for the one who sets statuses
    (``await set(name, status)``, ``await enter_graceful_shutdown()``: NOT_SERVING on every name, for
    good); to callers ``Check`` (NOT_FOUND for a name never set), ``List`` (every name) and ``Watch``
    (the status now, then each change; SERVICE_UNKNOWN for a name not set yet), whose stream ends when
    ``streams`` ends (see the module docstring).
    """

    def __init__(self, streams: StreamsEnd | None = None) -> None:
        self._status: dict[str, int] = {"": SERVING}
        self._changed = asyncio.Event()  # replaced at every change; the old one is set (a broadcast)
        self._shutting_down = False
        self.streams = streams if streams is not None else StreamsEnd()

    async def set(self, service: str, status: int) -> None:
        """Set ``service``'s status (ignored once :meth:`enter_graceful_shutdown` ran)."""
        if not self._shutting_down:
            self._set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING on every name, for good (later :meth:`set` calls are ignored)."""
        self._shutting_down = True
        for service in list(self._status):
            self._set(service, NOT_SERVING)

    def _set(self, service: str, status: int) -> None:
        if self._status.get(service) == status:
            return
        self._status[service] = status
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
                    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:  # no details, as grpcio-health-checking answers (the SDK words it for callers)
            await context.abort(grpc.StatusCode.NOT_FOUND)
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
                   ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(statuses={
            name: health_pb2.HealthCheckResponse(status=status) for name, status in self._status.items()})

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
                    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            changed = self._changed  # taken before the status is read, so no change is missed
            status = self._status.get(request.service, SERVICE_UNKNOWN)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self.streams.ended or await self.streams.first(changed.wait()) is StreamsEnd.ENDED:
                return
