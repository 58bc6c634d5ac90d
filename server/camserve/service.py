"""The `camserve.v1.ExplainService` servicer (grpc.aio): validate, decode, queue, encode, map errors.

Validation against the model's summary and the error -> status mapping live in
`camserve.validation` (the servicer mixes in its `RequestValidator`), so a bad request fails before
it takes a queue slot or a batch position. Decoding and encoding run in a thread pool (OpenCV
releases the GIL), never on the event loop. Only these two modules know gRPC status codes; every
error a caller can cause maps to a precise code, and INTERNAL is reserved for bugs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

import grpc
import numpy as np
from camserve_client._proto import explain_pb2 as pb
from camserve_client._proto import explain_pb2_grpc as pb_grpc

from camserve import codec
from camserve.codec import DecodedImage, ImageError
from camserve.metrics import MIXED_MODELS, Metrics
from camserve.repository import ModelConfig
from camserve.validation import (
    METHOD_ENUMS,
    Prepared,
    RequestError,
    RequestValidator,
    invalid,
    map_error,
)
from camserve.work import (
    QueueFullError,
    WorkItem,
    WorkResult,
)

log = logging.getLogger("camserve.service")

SERVICE_NAME = "camserve.v1.ExplainService"

DTYPES = {pb.UINT8: "UINT8", pb.FLOAT32: "FLOAT32"}

TINY_BYTES = 16 << 10     # encoded images at most this large and ...
TINY_PIXELS = 128 * 128   # ... this many pixels are decoded inline (see ExplainServicer._tiny)
MAX_BATCH_ITEMS = 1024
TOP_PREDICTIONS = 5


def _enum_name(enum: Any, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


class ExplainServicer(RequestValidator, pb_grpc.ExplainServiceServicer):
    """Explain, ExplainBatch, ListModels and GetModel over a Dispatcher (see ARCHITECTURE.md)."""

    def __init__(self, dispatcher: Any, repository: Mapping[str, ModelConfig], metrics: Metrics,
                 executor: Executor, *, max_image_pixels: int = codec.DEFAULT_MAX_PIXELS,
                 max_send_bytes: int = 16 << 20, backend: str = "tensorflow", max_inflight: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not repository:
            raise ValueError("the service needs at least one model")
        self.dispatcher = dispatcher
        self.repository = dict(repository)
        self.default_model = next(iter(self.repository))
        self.metrics = metrics
        self.executor = executor
        self.max_image_pixels = max_image_pixels
        self.max_send_bytes = max_send_bytes
        self.backend = backend
        self.clock = clock
        self.max_inflight = max(0, int(max_inflight))
        self.inflight = 0  # images inside Explain/ExplainBatch calls now (see _admit)

    def decode(self, prep: Prepared) -> DecodedImage:
        """Decode the image for the model (runs in the thread pool); ImageError on bad input."""
        shape = tuple(int(d) for d in prep.summary.get("input_shape") or prep.config.input_shape)
        image = prep.image
        if image.WhichOneof("source") == "encoded":
            decoded = codec.decode_encoded(image.encoded, shape, self.max_image_pixels)  # type: ignore[arg-type]
        else:
            t = image.tensor
            dtype = DTYPES.get(t.dtype, _enum_name(pb.DType, t.dtype))
            decoded = codec.decode_tensor(dtype, list(t.shape), t.data, shape,  # type: ignore[arg-type]
                                          self.max_image_pixels)
        self._check_reply_size(prep, decoded)
        return decoded

    def _check_reply_size(self, prep: Prepared, image: DecodedImage) -> None:
        """Refuse before computing when the float32 maps asked for cannot fit in one reply."""
        if not prep.output.tensor:
            return
        k = 1 if prep.spec.class_index is not None else prep.spec.top_k
        if prep.output.size == "original":
            h, w = image.original_size
        elif prep.output.size == "input":
            h, w = image.pixels.shape[:2]
        else:
            return
        need = 4 * h * w * k
        if need > self.max_send_bytes:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the reply would carry {need} bytes of float32 heatmaps ({k} x {h}x{w}), "
                               f"over the server's {self.max_send_bytes}-byte message limit; ask for "
                               "CONV_GRID or MODEL_INPUT size, omit_tensor with a PNG, or fewer classes")

    # ------------------------------------------------------------------------ replies

    def build_response(self, prep: Prepared, image: DecodedImage, result: WorkResult,
                       started: float) -> pb.ExplainResponse:
        """The reply for one computed image (encoding runs in the thread pool when it is real work)."""
        cfg = prep.config
        labels = cfg.labels
        probs = np.asarray(result.probabilities, dtype=np.float32).reshape(-1)

        def label(i: int) -> str:
            return labels[i] if 0 <= i < len(labels) else str(i)

        resp = pb.ExplainResponse(request_id=prep.request_id, model=cfg.name, model_version=cfg.version,
                                  method=prep.method_enum, target_layer=prep.target_layer)  # type: ignore[arg-type]
        for m in result.maps:
            class_index, score, heatmap, all_zero = (m.class_index, m.score, m.heatmap, m.all_zero) \
                if hasattr(m, "class_index") else m
            enc = codec.encode_map(np.asarray(heatmap, dtype=np.float32), prep.output, image)
            ci = int(class_index)
            ex = resp.explanations.add(class_index=ci, label=label(ci),
                                       probability=float(probs[ci]) if 0 <= ci < probs.size else 0.0,
                                       score=float(score), all_zero=bool(all_zero))
            if prep.output.tensor:
                ex.heatmap.dtype = pb.FLOAT32
                ex.heatmap.shape.extend(enc.shape)
                ex.heatmap.data = enc.tensor
            if enc.png:
                ex.heatmap_png = enc.png
            if enc.overlay:
                ex.overlay = enc.overlay
        for i in np.argsort(-probs, kind="stable")[:TOP_PREDICTIONS]:
            resp.top_predictions.add(class_index=int(i), label=label(int(i)), probability=float(probs[i]))
        resp.timing.queue_ms = result.queue_s * 1e3
        resp.timing.compute_ms = result.compute_s * 1e3
        resp.timing.batch_size = int(result.batch_size)
        resp.timing.total_ms = (self.clock() - started) * 1e3
        return resp

    def _tiny(self, prep: Prepared) -> bool:
        """Decode on the event loop when it costs less than the thread hop would (measured: a 64x64
        JPEG decodes in ~50 us, a hop to the pool costs 40-140 us more); anything larger goes to the pool."""
        image = prep.image
        if image.WhichOneof("source") != "encoded" or len(image.encoded) > TINY_BYTES:
            return False
        try:
            _, width, height = codec.image_header(image.encoded)
        except ImageError:
            return True  # refused at once, inline
        return 0 < width * height <= TINY_PIXELS

    def _needs_pool(self, prep: Prepared) -> bool:
        """Grid-size float maps are a memcpy; anything resized or encoded is real CPU work."""
        o = prep.output
        return o.size != "grid" or o.png or o.overlay is not None

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _deadline(self, context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else self.clock() + remaining

    def _admit(self, n: int) -> None:
        """The in-flight limit (``--max-inflight``): refuse at once when ``n`` more images would pass it.

        Counts images, not calls (Explain 1, ExplainBatch its number of images), because images are
        what costs memory and compute. A call larger than the whole limit is admitted only when
        nothing else is in flight, so it can still run. Health and reflection never pass here.
        """
        limit = self.max_inflight
        if limit and self.inflight and self.inflight + n > limit:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the server is at its in-flight limit ({self.inflight} of {limit} images "
                               "being handled); retry later with back-off")
        self.inflight += n

    def _shed_if_full(self, model: str, n: int = 1) -> None:
        """Refuse before decoding when the model's queue is already full (microseconds, not a decode);
        the queue still refuses atomically at submit."""
        has_room = getattr(self.dispatcher, "has_room", None)
        if has_room is not None and not has_room(model, n):
            raise QueueFullError(f"queue of model {model!r} is full; retry later")

    async def _explain_one(self, request: pb.ExplainRequest, deadline: float | None,
                           started: float) -> pb.ExplainResponse:
        prep = self.prepare(request)
        self._shed_if_full(prep.config.name)
        image = self.decode(prep) if self._tiny(prep) else await self._run(self.decode, prep)
        item = WorkItem(model=prep.config.name, pixels=image.pixels, spec=prep.spec, deadline=deadline)
        result = await self.dispatcher.submit(item)
        self.metrics.record_result(prep.config.name, result.queue_s, result.compute_s)
        if self._needs_pool(prep):
            return await self._run(self.build_response, prep, image, result, started)
        return self.build_response(prep, image, result, started)

    def _check_send_size(self, resp: Any) -> None:
        size = resp.ByteSize()
        if size > self.max_send_bytes:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the reply would be {size} bytes, over the server's "
                               f"{self.max_send_bytes}-byte message limit; ask for smaller heatmaps, "
                               "omit_tensor, JPEG overlays or fewer images per call")

    async def _finish(self, context: grpc.aio.ServicerContext, method: str, model: str | None,
                      started: float, exc: BaseException | None) -> None:
        """Record the RPC and, on error, abort it with the mapped code (never a traceback to the caller)."""
        if exc is None:
            self.metrics.record_rpc(model, method, "OK", self.clock() - started)
            return
        code, message = map_error(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.error("%s failed: %s", method, message, exc_info=exc)
        if context.done():  # the RPC already ended (its deadline passed, or the caller cancelled):
            # aborting a finished call makes grpc log "ExecuteBatchError raised in core" at ERROR.
            ended = "CANCELLED" if context.cancelled() else "DEADLINE_EXCEEDED"
            self.metrics.record_rpc(model, method, ended, self.clock() - started)
            raise asyncio.CancelledError
        self.metrics.record_rpc(model, method, code.name, self.clock() - started)
        await context.abort(code, message)

    # ------------------------------------------------------------------------ RPCs

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
                      ) -> pb.ExplainResponse:
        started = self.clock()
        model = request.model or self.default_model
        admitted = 0
        try:
            self._admit(1)
            admitted = 1
            resp = await self._explain_one(request, self._deadline(context), started)
            self._check_send_size(resp)
        except asyncio.CancelledError:
            self.metrics.record_rpc(model, "Explain", "CANCELLED", self.clock() - started)
            raise
        except Exception as exc:  # every path ends in a status, see map_error
            await self._finish(context, "Explain", model, started, exc)
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            self.inflight -= admitted
        await self._finish(context, "Explain", model, started, None)
        return resp

    async def ExplainBatch(self, request: pb.ExplainBatchRequest, context: grpc.aio.ServicerContext
                           ) -> pb.ExplainBatchResponse:
        started = self.clock()
        models = {r.model or self.default_model for r in request.requests}
        model = next(iter(models)) if len(models) == 1 else (MIXED_MODELS if models else None)
        admitted = 0
        try:
            n = len(request.requests)
            self._admit(n)
            admitted = n
            resp = await self._explain_batch(request, self._deadline(context), started)
            self._check_send_size(resp)
        except asyncio.CancelledError:
            self.metrics.record_rpc(model, "ExplainBatch", "CANCELLED", self.clock() - started)
            raise
        except Exception as exc:
            await self._finish(context, "ExplainBatch", model, started, exc)
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            self.inflight -= admitted
        await self._finish(context, "ExplainBatch", model, started, None)
        return resp

    async def _explain_batch(self, request: pb.ExplainBatchRequest, deadline: float | None,
                             started: float) -> pb.ExplainBatchResponse:
        n = len(request.requests)
        if n > MAX_BATCH_ITEMS:
            raise invalid(f"ExplainBatch carries {n} requests; at most {MAX_BATCH_ITEMS} per call")
        preps: list[Prepared] = []
        for i, r in enumerate(request.requests):
            try:
                preps.append(self.prepare(r))
            except RequestError as exc:
                raise RequestError(exc.code, f"requests[{i}]: {exc.message}") from None
        configs = {p.config.name: p.config for p in preps}
        for name, count in Counter(p.config.name for p in preps).items():
            limit = configs[name].batching.max_queue_size
            if count > limit:  # could never fit, so not RESOURCE_EXHAUSTED (which clients retry)
                raise invalid(f"ExplainBatch carries {count} images for model {name!r}, more than its "
                              f"queue holds ({limit}); split the call")
            self._shed_if_full(name, count)
        images = await asyncio.gather(*(self._run(self._decode_at, i, p) for i, p in enumerate(preps)))
        tasks = [asyncio.ensure_future(self.dispatcher.submit(
            WorkItem(model=p.config.name, pixels=img.pixels, spec=p.spec, deadline=deadline)))
            for p, img in zip(preps, images, strict=True)]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for p, r in zip(preps, results, strict=True):
            self.metrics.record_result(p.config.name, r.queue_s, r.compute_s)

        def build() -> pb.ExplainBatchResponse:
            out = pb.ExplainBatchResponse()
            for p, img, r in zip(preps, images, results, strict=True):
                out.responses.append(self.build_response(p, img, r, started))
            return out

        if any(self._needs_pool(p) for p in preps):
            return await self._run(build)
        return build()

    def _decode_at(self, index: int, prep: Prepared) -> DecodedImage:
        try:
            return self.decode(prep)
        except (ImageError, RequestError) as exc:
            code, message = map_error(exc)
            raise RequestError(code, f"requests[{index}]: {message}") from None

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ListModelsResponse:
        started = self.clock()
        resp = pb.ListModelsResponse(models=[self.model_info(cfg) for cfg in self.repository.values()])
        self.metrics.record_rpc(None, "ListModels", "OK", self.clock() - started)
        return resp

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        started = self.clock()
        try:
            cfg = self._model(request.model, request.model_version)
        except RequestError as exc:
            await self._finish(context, "GetModel", request.model, started, exc)
            raise AssertionError("unreachable: abort raises") from exc
        await self._finish(context, "GetModel", cfg.name, started, None)
        return self.model_info(cfg)

    def model_info(self, cfg: ModelConfig) -> pb.ModelInfo:
        """ModelInfo from the config, completed by the worker's report once the model is loaded."""
        b = cfg.batching
        info = pb.ModelInfo(name=cfg.name, version=cfg.version, ready=bool(self.dispatcher.ready(cfg.name)),
                            input_shape=list(cfg.input_shape), preprocessing=cfg.preprocessing,
                            labels=list(cfg.labels), max_batch_size=b.max_batch_size,
                            max_queue_delay_ms=b.max_queue_delay_ms, backend=self.backend,
                            default_target_layer=cfg.target_layer or "")
        s = self.dispatcher.model_summary(cfg.name)
        if s is None:
            return info
        info.num_classes = int(s.get("num_classes", 0))
        info.default_target_layer = str(s.get("target_layer") or info.default_target_layer)
        info.compile_mode = str(s.get("compile_mode", ""))
        info.backend = str(s.get("backend") or self.backend)
        info.batch_buckets.extend(int(x) for x in s.get("buckets", []))
        for layer in s.get("layers", []):
            info.layers.add(name=str(layer["name"]), grid=[int(g) for g in layer.get("grid", [])],
                            channels=int(layer.get("channels", 0)),
                            cam_supported=bool(layer.get("cam_supported", False)))
        methods = [m for m in s.get("methods", METHOD_ENUMS) if m in METHOD_ENUMS]
        if not s.get("cam_supported", False):
            methods = [m for m in methods if m != "cam"]
        info.methods.extend(METHOD_ENUMS[m] for m in methods)  # type: ignore[misc]
        return info
