"""The ``camserve.v1.ExplainService`` servicer (grpc.aio): admit, validate, decode, queue, reply.

``requests`` validates a call against the model's summary (so a bad request fails before it takes a
queue slot), ``codec`` decodes (tiny images inline on the event loop, where a thread hop would cost
more than the decode; the rest, and reply encoding that resizes or draws, in the codec thread pool),
the dispatcher computes, ``replies`` builds the answer, and every failure ends the call through
``status``'s one table. INTERNAL is reserved for bugs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import grpc
from camserve_proto import explain_pb2 as pb
from camserve_proto import explain_pb2_grpc as pb_grpc
from camserve_proto import vocabulary as wire

from camserve.front import codec
from camserve.front.codec import DecodedImage
from camserve.front.metrics import MIXED_MODELS, Metrics
from camserve.front.replies import build_response, check_map_bytes, check_reply, model_info
from camserve.front.requests import Prepared, RequestParser, invalid
from camserve.front.status import failure_of, status_of, trailers_of
from camserve.records import ErrorKind, Failure, ItemResult
from camserve.scheduling.batcher import WorkItem

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ExplainService"].full_name

TINY_BYTES = 16 << 10     # encoded images at most this large and ...
TINY_PIXELS = 128 * 128   # ... this many pixels are decoded inline (see ExplainServicer._tiny)


class ExplainServicer(pb_grpc.ExplainServiceServicer):
    """Explain, ExplainBatch, ListModels and GetModel over a Dispatcher (see ARCHITECTURE.md)."""

    def __init__(self, dispatcher: Any, parser: RequestParser, metrics: Metrics, executor: Executor, *,
                 max_image_pixels: int = codec.DEFAULT_MAX_PIXELS, max_send_bytes: int = 16 << 20,
                 backend: str = "tensorflow", max_inflight: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dispatcher = dispatcher
        self.parser = parser
        self.metrics = metrics
        self.executor = executor
        self.max_image_pixels = max_image_pixels
        self.max_send_bytes = max_send_bytes
        self.backend = backend
        self.clock = clock
        self.max_inflight = max(0, int(max_inflight))
        self.inflight = 0  # images inside Explain/ExplainBatch calls now (see _admit)

    # ------------------------------------------------------------------------ per image

    def decode(self, prep: Prepared) -> DecodedImage:
        """Decode the image for the model; raises ImageError (INVALID_INPUT) or TOO_LARGE."""
        image = prep.image
        shape = prep.summary.input_shape
        if image.WhichOneof("source") == "encoded":
            decoded = codec.decode_encoded(image.encoded, shape, self.max_image_pixels)
        else:
            t = image.tensor
            dtype = wire.name_of(wire.DTYPES, t.dtype) or str(t.dtype)
            decoded = codec.decode_tensor(dtype, list(t.shape), t.data, shape, self.max_image_pixels)
        check_map_bytes(prep, decoded, self.max_send_bytes)
        return decoded

    def _tiny(self, prep: Prepared) -> bool:
        """Decode on the event loop when it costs less than the thread hop would (measured: a 64x64
        JPEG decodes in ~50 us, a hop to the pool costs 40-140 us more); anything larger goes to the pool."""
        image = prep.image
        if image.WhichOneof("source") != "encoded" or len(image.encoded) > TINY_BYTES:
            return False
        try:
            _, width, height = codec.image_header(image.encoded)
        except codec.ImageError:
            return True  # refused at once, inline
        return 0 < width * height <= TINY_PIXELS

    @staticmethod
    def _needs_pool(prep: Prepared) -> bool:
        """Grid-size float maps are a memcpy; anything resized or encoded is real CPU work."""
        o = prep.output
        return o.size != "grid" or o.png or o.overlay is not None

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _deadline(self, context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else self.clock() + remaining

    def _admit(self, n: int) -> None:
        """The in-flight limit (``--max-inflight``): refuse at once (BUSY) when ``n`` more images would
        pass it.

        Counts images, not calls (Explain 1, ExplainBatch its number of images), because images are
        what costs memory and compute. A call larger than the whole limit is admitted only when
        nothing else is in flight, so it can still run. Health and reflection never pass here.
        """
        limit = self.max_inflight
        if limit and self.inflight and self.inflight + n > limit:
            raise Failure(f"the server is at its in-flight limit ({self.inflight} of {limit} images being "
                          "handled); retry later with back-off", ErrorKind.BUSY)
        self.inflight += n

    def _shed_if_full(self, model: str, n: int = 1) -> None:
        """Refuse before decoding when the model's queue is already full (microseconds, not a decode);
        the queue still refuses atomically at submit."""
        if not self.dispatcher.has_room(model, n):
            raise Failure(f"queue of model {model!r} is full; retry later", ErrorKind.QUEUE_FULL)

    async def _compute(self, prep: Prepared, image: DecodedImage, deadline: float | None) -> ItemResult:
        result: ItemResult = await self.dispatcher.submit(
            WorkItem(model=prep.config.name, pixels=image.pixels, spec=prep.spec, deadline=deadline))
        self.metrics.record_result(prep.config.name, result.queue_s, result.compute_s)
        return result

    async def _explain_one(self, request: pb.ExplainRequest, deadline: float | None,
                           started: float) -> pb.ExplainResponse:
        prep = self.parser.prepare(request)
        self._shed_if_full(prep.config.name)
        image = self.decode(prep) if self._tiny(prep) else await self._run(self.decode, prep)
        result = await self._compute(prep, image, deadline)
        if self._needs_pool(prep):
            return await self._run(lambda: build_response(prep, image, result, self.clock() - started))
        return build_response(prep, image, result, self.clock() - started)

    async def _explain_batch(self, request: pb.ExplainBatchRequest, deadline: float | None,
                             started: float) -> pb.ExplainBatchResponse:
        n = len(request.requests)
        if n > wire.MAX_BATCH_REQUESTS:
            raise invalid(f"ExplainBatch carries {n} requests; at most {wire.MAX_BATCH_REQUESTS} per call")
        preps = [_at(i, self.parser.prepare, r) for i, r in enumerate(request.requests)]
        configs = {p.config.name: p.config for p in preps}
        for name, count in Counter(p.config.name for p in preps).items():
            limit = configs[name].batching.max_queue_size
            if count > limit:  # could never fit, so not QUEUE_FULL (which clients retry)
                raise invalid(f"ExplainBatch carries {count} images for model {name!r}, more than its "
                              f"queue holds ({limit}); split the call")
            self._shed_if_full(name, count)
        images = await asyncio.gather(*(self._run(_at, i, self.decode, p) for i, p in enumerate(preps)))
        tasks = [asyncio.ensure_future(self._compute(p, img, deadline))
                 for p, img in zip(preps, images, strict=True)]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

        def build() -> pb.ExplainBatchResponse:
            total = self.clock() - started
            return pb.ExplainBatchResponse(responses=[
                build_response(p, img, r, total) for p, img, r in zip(preps, images, results, strict=True)])

        if any(self._needs_pool(p) for p in preps):
            return await self._run(build)
        return build()

    # ------------------------------------------------------------------------ ending a call

    async def _finish(self, context: grpc.aio.ServicerContext, method: str, model: str | None,
                      started: float, exc: BaseException | None) -> None:
        """Record the RPC and, on error, abort it with the mapped code (never a traceback to the caller)."""
        if exc is None:
            self.metrics.record_rpc(model, method, "OK", self.clock() - started)
            return
        failure = failure_of(exc)
        if failure.kind is ErrorKind.INTERNAL:
            log.error("%s failed: %s", method, failure.message, exc_info=exc)
        if context.done():  # the RPC already ended (its deadline passed, or the caller cancelled):
            # aborting a finished call makes grpc log "ExecuteBatchError raised in core" at ERROR.
            ended = "CANCELLED" if context.cancelled() else "DEADLINE_EXCEEDED"
            self.metrics.record_rpc(model, method, ended, self.clock() - started)
            raise asyncio.CancelledError
        code = status_of(failure.kind)
        self.metrics.record_rpc(model, method, code.name, self.clock() - started)
        await context.abort(code, failure.message, trailing_metadata=trailers_of(failure.kind, context))

    async def _call(self, context: grpc.aio.ServicerContext, method: str, model: str | None, images: int,
                    work: Callable[[float | None, float], Any]) -> Any:
        """Run one Explain/ExplainBatch call: admission, work, reply-size check, status and metrics."""
        started = self.clock()
        admitted = 0
        try:
            self._admit(images)
            admitted = images
            reply = await work(self._deadline(context), started)
            check_reply(reply, self.max_send_bytes)
        except asyncio.CancelledError:
            self.metrics.record_rpc(model, method, "CANCELLED", self.clock() - started)
            raise
        except Exception as exc:  # every path ends in a status, see camserve.front.status
            await self._finish(context, method, model, started, exc)
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            self.inflight -= admitted
        await self._finish(context, method, model, started, None)
        return reply

    # ------------------------------------------------------------------------ RPCs

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
                      ) -> pb.ExplainResponse:
        model = request.model or self.parser.default_model
        return await self._call(context, "Explain", model, 1,
                                lambda deadline, started: self._explain_one(request, deadline, started))

    async def ExplainBatch(self, request: pb.ExplainBatchRequest, context: grpc.aio.ServicerContext
                           ) -> pb.ExplainBatchResponse:
        models = {r.model or self.parser.default_model for r in request.requests}
        model = next(iter(models)) if len(models) == 1 else (MIXED_MODELS if models else None)
        return await self._call(context, "ExplainBatch", model, len(request.requests),
                                lambda deadline, started: self._explain_batch(request, deadline, started))

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ListModelsResponse:
        started = self.clock()
        resp = pb.ListModelsResponse(models=[self._info(cfg) for cfg in self.parser.repository.values()])
        self.metrics.record_rpc(None, "ListModels", "OK", self.clock() - started)
        return resp

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        started = self.clock()
        try:
            cfg = self.parser.model(request.model, request.model_version)
        except Failure as exc:
            await self._finish(context, "GetModel", request.model, started, exc)
            raise AssertionError("unreachable: abort raises") from exc
        await self._finish(context, "GetModel", cfg.name, started, None)
        return self._info(cfg)

    def _info(self, cfg: Any) -> pb.ModelInfo:
        return model_info(cfg, self.dispatcher.model_summary(cfg.name), bool(self.dispatcher.ready(cfg.name)),
                          self.backend)


def _at(index: int, fn: Callable[[Any], Any], arg: Any) -> Any:
    """``fn(arg)`` for item ``index`` of an ExplainBatch: a refusal names the item (``requests[i]: ...``)."""
    try:
        return fn(arg)
    except Failure as exc:
        raise Failure(f"requests[{index}]: {exc.message}", exc.kind) from None
