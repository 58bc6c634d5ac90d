"""The ``camserve.v1.ExplainService`` servicer (grpc.aio): validate, admit, decode, queue, reply.

``requests`` validates a call against the model's summary and ``headers`` each image's header or
tensor shape (so a bad request fails for what it is before it is admitted or takes a queue slot,
busy server or not), ``codec`` decodes (tiny images inline on the event loop, where a thread hop would cost
more than the decode; the rest, and reply encoding that resizes or draws, in the codec thread pool),
the dispatcher computes, ``replies`` builds the answer, and ``calls`` runs each call (the in-flight
limit, shared with the Open Inference Protocol service, and the end of every failure through
``status``'s one table). INTERNAL is reserved for bugs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any

import grpc
from camserve_proto import explain_pb2 as pb
from camserve_proto import explain_pb2_grpc as pb_grpc
from camserve_proto import vocabulary as wire

from camserve.front import codec
from camserve.front.calls import Call, CallRunner, FrontServicer, compute, shed_if_full
from camserve.front.codec import DecodedImage, OutputSpec
from camserve.front.metrics import MIXED_MODELS, Metrics
from camserve.front.replies import ReplyBudget, build_response, check_map_bytes, check_reply, model_info
from camserve.front.requests import Prepared, RequestParser, invalid
from camserve.records import Failure
from camserve.repository import ModelConfig
from camserve.scheduling.batcher import WorkItem

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ExplainService"].full_name



class ExplainServicer(FrontServicer, pb_grpc.ExplainServiceServicer):
    """Explain, ExplainBatch, ListModels and GetModel over a Dispatcher (see ARCHITECTURE.md); built
    from the parts of :class:`~camserve.front.calls.FrontServicer`, and the backend GetModel names."""

    def __init__(self, dispatcher: Any, parser: RequestParser, metrics: Metrics, executor: Executor, *,
                 max_image_pixels: int = codec.DEFAULT_MAX_PIXELS, max_send_bytes: int = 16 << 20,
                 backend: str = "tensorflow", calls: CallRunner | None = None) -> None:
        super().__init__(dispatcher, parser, metrics, executor, max_image_pixels=max_image_pixels,
                         max_send_bytes=max_send_bytes, calls=calls)
        self.backend = backend

    # ------------------------------------------------------------------------ per image

    def check(self, request: pb.ExplainRequest) -> Prepared:
        """Every check of one request before it is admitted: its fields (``RequestParser.prepare``), its
        image without decoding it (the header, or the tensor's shape, dtype and bytes) and that its maps
        can fit a reply; raises a Failure (INVALID_INPUT, TOO_LARGE, ...). The Prepared carries the
        image's shape as sent (``sent_shape``). What needs no worker's report comes first
        (:meth:`check_request`), so a malformed request is refused as such while its model loads."""
        return self.complete(request, *self.check_request(request))

    def check_request(self, request: pb.ExplainRequest
                      ) -> tuple[tuple[ModelConfig, OutputSpec], tuple[int, int, int]]:
        """The checks of :meth:`check` that the model's config can judge alone: the request's fields
        (``RequestParser.fields``) and its image (header, or tensor against the configured input
        shape and preprocessing). Returns those fields and the image's (H, W, C) as sent (C 0:
        encoded)."""
        fields = self.parser.fields(request)
        cfg, image = fields[0], request.image
        if image.WhichOneof("source") == "encoded":
            _, width, height = codec.probe_encoded(image.encoded, self.max_image_pixels)
            return fields, (height, width, 0)
        t = image.tensor
        return fields, codec.probe_tensor(_dtype(t), list(t.shape), t.data, cfg.input_shape,
                                          self.max_image_pixels, cfg.preprocessing)

    def complete(self, request: pb.ExplainRequest, fields: tuple[ModelConfig, OutputSpec],
                 sent_shape: tuple[int, int, int]) -> Prepared:
        """The rest of :meth:`check`, with the worker's report (NOT_READY while there is none)."""
        prep = replace(self.parser.prepare(request, fields), sent_shape=sent_shape)
        check_map_bytes(prep, sent_shape[:2], self.max_send_bytes)
        return prep

    def decode(self, prep: Prepared) -> DecodedImage:
        """Decode the image :meth:`check` passed; raises ImageError (INVALID_INPUT) for pixel data that
        cannot be decoded."""
        image = prep.image
        shape = prep.summary.input_shape
        if image.WhichOneof("source") == "encoded":
            return codec.decode_encoded(image.encoded, shape, self.max_image_pixels,
                                        full_size=prep.output.draws_original)
        return codec.tensor_image(_dtype(image.tensor), prep.sent_shape, image.tensor.data, shape,
                                  prep.summary.preprocessing)

    @staticmethod
    def _inline(prep: Prepared) -> bool:
        """Decode on the event loop (see ``codec.inline``); raw tensors too unless large (a copy, or a
        resize)."""
        return codec.inline(*prep.sent_shape[:2])

    def _work(self, prep: Prepared, image: DecodedImage, deadline: float | None) -> WorkItem:
        return WorkItem(model=prep.config.name, pixels=image.pixels, spec=prep.spec, deadline=deadline)

    async def _explain_one(self, request: pb.ExplainRequest, call: Call) -> pb.ExplainResponse:
        prep = self.check(request)
        call.admit(1)
        shed_if_full(self.dispatcher, prep.config.name)
        image = self.decode(prep) if self._inline(prep) else await self.in_pool(self.decode, prep)
        (result,) = await compute(self.dispatcher, [self._work(prep, image, call.deadline)])
        call.computed([result])
        budget = ReplyBudget(self.max_send_bytes)
        if prep.output.costly:
            return await self.in_pool(lambda: build_response(prep, image, result,
                                                             self.clock() - call.started, budget))
        return build_response(prep, image, result, self.clock() - call.started, budget)

    async def _decode_at(self, index: int, prep: Prepared) -> DecodedImage:
        if self._inline(prep):
            return _at(index, self.decode, prep)
        return await self.in_pool(_at, index, self.decode, prep)

    async def _explain_batch(self, request: pb.ExplainBatchRequest, call: Call) -> pb.ExplainBatchResponse:
        n = len(request.requests)
        if n > wire.MAX_BATCH_REQUESTS:
            raise invalid(f"ExplainBatch carries {n} requests; at most {wire.MAX_BATCH_REQUESTS} per call")
        # The whole call first as far as the configs can judge it, then what needs the models' reports.
        checked = [_at(i, self.check_request, r) for i, r in enumerate(request.requests)]
        configs = {fields[0].name: fields[0] for fields, _ in checked}
        counts = Counter(fields[0].name for fields, _ in checked)
        for name, count in counts.items():
            limit = configs[name].batching.max_queue_size
            if count > limit:  # could never fit, so not QUEUE_FULL (which clients retry)
                raise invalid(f"ExplainBatch carries {count} images for model {name!r}, more than its "
                              f"queue holds ({limit}); split the call")
        preps = [_at(i, self.complete, r, *c) for i, (r, c) in enumerate(zip(request.requests, checked,
                                                                              strict=True))]
        call.admit(n)
        for name, count in counts.items():
            shed_if_full(self.dispatcher, name, count)
        images = await asyncio.gather(*(self._decode_at(i, p) for i, p in enumerate(preps)))
        results = await compute(self.dispatcher, [self._work(p, img, call.deadline)
                                                  for p, img in zip(preps, images, strict=True)])
        call.computed(results)

        def build() -> pb.ExplainBatchResponse:
            total = self.clock() - call.started
            budget = ReplyBudget(self.max_send_bytes)
            rows = zip(preps, images, results, strict=True)
            return pb.ExplainBatchResponse(
                responses=[build_response(p, img, r, total, budget) for p, img, r in rows])

        if any(p.output.costly for p in preps):
            return await self.in_pool(build)
        return build()

    # ------------------------------------------------------------------------ RPCs

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext
                      ) -> pb.ExplainResponse:
        model = request.model or self.parser.default_model
        return await self.calls.run(context, "Explain", model,
                                    lambda call: self._checked(self._explain_one(request, call)))

    async def ExplainBatch(self, request: pb.ExplainBatchRequest, context: grpc.aio.ServicerContext
                           ) -> pb.ExplainBatchResponse:
        models = {r.model or self.parser.default_model for r in request.requests}
        model = next(iter(models)) if len(models) == 1 else (MIXED_MODELS if models else None)
        return await self.calls.run(context, "ExplainBatch", model,
                                    lambda call: self._checked(self._explain_batch(request, call)))

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
            await self.calls.finish(context, "GetModel", request.model, started, exc)
            raise AssertionError("unreachable: abort raises") from exc
        await self.calls.finish(context, "GetModel", cfg.name, started, None)
        return self._info(cfg)

    async def _checked(self, work: Any) -> Any:
        """The reply of ``work``, refused (TOO_LARGE) when it is over the message limit."""
        reply = await work
        check_reply(reply, self.max_send_bytes)
        return reply

    def _info(self, cfg: Any) -> pb.ModelInfo:
        return model_info(cfg, self.dispatcher.model_summary(cfg.name), bool(self.dispatcher.ready(cfg.name)),
                          self.backend)


def _dtype(t: pb.Tensor) -> str:
    """A camserve.v1 tensor's dtype in the wire's words (the number itself when it names none)."""
    return wire.name_of(wire.DTYPES, t.dtype) or str(t.dtype)


def _at(index: int, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` for item ``index`` of an ExplainBatch: its refusal names it (``requests[i]: ...``)."""
    try:
        return fn(*args)
    except Failure as exc:
        raise Failure(f"requests[{index}]: {exc.message}", exc.kind) from None
