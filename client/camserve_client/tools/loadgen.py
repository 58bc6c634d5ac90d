"""Load generator for camserve (`camserve bench`, `python -m bench.load`), in the spirit of perf_analyzer.

Closed loop: C callers each send the next request as soon as the previous answer arrives, for a
fixed duration per concurrency step, after a warm-up that is not counted; the load runs on from the
warm-up into the measured window, and a call counts when it completes inside the window, whenever it
started (perf_analyzer's rule, ``loadreport.Window``). A step with errors or no success makes the
command exit 1. Open loop: requests
arrive as a Poisson process at a fixed rate whatever the server does; latency is measured from
the scheduled arrival time, so a server that falls behind shows it (no coordinated omission).

Requests are serialized once before the run and sent as bytes, so the generator spends its CPU
on gRPC, not on protobuf. Each response's timing gives the server-side queue / compute split and
the size of the batch the request ran in. ``--protocol oip`` sends the same images through the Open
Inference Protocol instead (``inference.GRPCInferenceService/ModelInfer``: IMAGE rows, or PIXELS for
raw payloads; the split comes from the reply's parameters), so both endpoints are measured alike.
Output (``camserve_client.tools.loadreport``): a table, JSON, and a latency-throughput PNG (matplotlib is
imported only then; without it the PNG is skipped). The command line is ``camserve_client.tools.benchcmd``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import numpy as np
from camserve_proto import explain_pb2 as pb
from camserve_proto import grpc_service_pb2 as ipb
from camserve_proto import oip

from camserve_client import __version__
from camserve_client.callargs import call_timeout
from camserve_client.client import AsyncClient
from camserve_client.errors import CamserveError
from camserve_client.tools.loadreport import Sample, Window, clock, summarize
from camserve_client.tools.progress import bar as progress_bar
from camserve_client.tools.testimages import encode_png, folder_images, generated
from camserve_client.types import build_request


@dataclass
class LoadConfig:
    """One benchmark run: which server and model, what to send, and the steps to measure."""

    target: str = "localhost:50051"
    model: str | None = None
    method: str = "gradcam"
    top_k: int = 1
    size: str = "grid"
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    rates: list[float] = field(default_factory=list)
    duration_s: float = 10.0
    warmup_s: float = 3.0
    images: str = "auto"            # a folder, or auto | digits | photos | noise
    image_count: int = 64
    image_size: int | None = None   # generated images: default the model's input size
    payload: str = "png"            # png | jpeg | raw (uint8 tensor) for generated images
    batch_per_call: int = 1         # > 1 sends ExplainBatch with this many images per call
    protocol: str = "camserve"      # camserve (camserve.v1) | oip (Open Inference Protocol ModelInfer)
    timeout_s: float = 30.0
    max_inflight: int = 4096        # open loop: arrivals beyond this are counted as CLIENT_OVERLOAD
    ready_timeout_s: float = 300.0
    seed: int = 0
    quiet: bool = False
    client: dict[str, Any] = field(default_factory=dict)  # TLS / token kwargs for AsyncClient
    connections: int = 1            # TCP connections the callers are shared out over


class LoadGenerator:
    """Runs the steps of a LoadConfig against one server over ``config.connections`` grpc.aio channels.

    ``payloads``: requests already serialized for the configured protocol and ``batch_per_call`` (a
    benchmark that made its own images); otherwise they are made from ``config.images``."""

    def __init__(self, config: LoadConfig, payloads: Sequence[bytes] | None = None,
                 image_note: str = "") -> None:
        self.cfg = config
        self.model_info: dict[str, Any] = {}
        self.image_note = image_note
        self._payloads: list[bytes] = list(payloads or [])
        self._given = bool(payloads)
        self._images_per_call = max(1, config.batch_per_call)

    # -- setup -------------------------------------------------------------------------------
    async def prepare(self, client: AsyncClient) -> None:
        """Wait until the model is SERVING, read its facts, and serialize the payloads (unless given)."""
        cfg = self.cfg
        deadline = clock() + cfg.ready_timeout_s
        status, said, failure = "no answer", "", None
        while True:  # wait until the server (and the model) is SERVING
            try:
                status, failure = await client.health(cfg.model, timeout=5), None
                if status == "SERVING":
                    break
            except CamserveError as exc:
                # Wait only for what a starting server goes through: nothing listening yet, or not
                # ready. An unknown model, a token or a TLS mismatch will not mend: say so at once.
                waits = exc.code == grpc.StatusCode.UNAVAILABLE and (
                    not exc.unreachable or "Connection refused" in exc.details)
                if not waits:
                    raise
                status, failure = str(exc), exc
            if clock() > deadline:
                if failure is not None:
                    raise failure
                raise RuntimeError(f"{cfg.target} not SERVING after {cfg.ready_timeout_s:g} s: {status}")
            if status != said and not cfg.quiet:
                print(f"waiting up to {cfg.ready_timeout_s:g} s for {cfg.target} to serve: {status}",
                      file=sys.stderr)
                said = status
            await asyncio.sleep(0.5)
        info = await client.get_model(cfg.model)
        self.model_info = {"name": info.name, "version": info.version, "input_shape": list(info.input_shape),
                           "max_batch_size": info.max_batch_size, "batch_buckets": info.batch_buckets,
                           "max_queue_delay_ms": info.max_queue_delay_ms, "backend": info.backend,
                           "compile_mode": info.compile_mode, "target_layer": info.default_target_layer}
        if self._given:
            return
        images = self._load_images(int(info.input_shape[0]) if info.input_shape else 64)
        if cfg.protocol == "oip":
            n = self._images_per_call
            self._payloads = [oip_request([images[(i + j) % len(images)] for j in range(n)], info.name,
                                          cfg.method, cfg.top_k, cfg.size).SerializeToString()
                              for i in range(len(images))]
            return
        if cfg.protocol != "camserve":
            raise ValueError(f"unknown protocol {cfg.protocol!r}: camserve or oip")
        reqs = [build_request(img, model=info.name, method=cfg.method, top_k=cfg.top_k,
                              output={"size": cfg.size}) for img in images]
        if self._images_per_call > 1:
            n = self._images_per_call
            self._payloads = [pb.ExplainBatchRequest(requests=[reqs[(i + j) % len(reqs)] for j in range(n)])
                              .SerializeToString() for i in range(len(reqs))]
        else:
            self._payloads = [r.SerializeToString() for r in reqs]

    def _load_images(self, model_size: int) -> list[Any]:
        cfg = self.cfg
        if cfg.images not in ("auto", "digits", "photos", "noise"):
            files = folder_images(cfg.images, cfg.image_count)
            self.image_note = f"{len(files)} files from {cfg.images}"
            return [pb.Image(encoded=data) for _, data in files]
        size = cfg.image_size or model_size
        arrays, source = generated(cfg.image_count, size, cfg.images, cfg.seed)
        self.image_note = f"{len(arrays)} generated {source} images {size}x{size} as {cfg.payload}"
        if cfg.payload == "raw":
            return arrays
        if cfg.payload == "png":
            return [pb.Image(encoded=encode_png(a)) for a in arrays]
        if cfg.payload == "jpeg":
            try:
                import cv2
            except ImportError:
                raise ValueError("--payload jpeg needs opencv (cv2); use png or raw") from None
            return [pb.Image(encoded=cv2.imencode(".jpg", a[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
                             .tobytes()) for a in arrays]
        raise ValueError(f"unknown payload {cfg.payload!r}: png, jpeg or raw")

    # -- calls -------------------------------------------------------------------------------
    def clients(self) -> list[AsyncClient]:
        """``config.connections`` clients, each on a TCP connection of its own (a subchannel pool of its
        own; channels alike in one process otherwise share one connection). Why several: a server with
        several front-end processes gives each *connection* to one of them, so one connection exercises
        one front end, as one caller of many would."""
        cfg = self.cfg
        kwargs = dict(cfg.client)
        if cfg.connections > 1:
            kwargs["options"] = [*kwargs.get("options", ()), ("grpc.use_local_subchannel_pool", 1)]
        return [AsyncClient(cfg.target, model=cfg.model, retries=0, **kwargs)
                for _ in range(max(1, cfg.connections))]

    def rpcs(self, clients: Sequence[AsyncClient]) -> list[Any]:
        """One multi-callable per client (see :meth:`rpc`)."""
        return [self.rpc(client) for client in clients]

    def rpc(self, client: AsyncClient) -> Any:
        """The multi-callable the payloads go to (pre-serialized bytes in, the parsed reply out)."""
        if self.cfg.protocol == "oip":
            return client.channel.unary_unary(f"/{oip.SERVICE_NAME}/ModelInfer", request_serializer=None,
                                              response_deserializer=ipb.ModelInferResponse.FromString)
        batch = self._images_per_call > 1
        method = "/camserve.v1.ExplainService/" + ("ExplainBatch" if batch else "Explain")
        deser = pb.ExplainBatchResponse.FromString if batch else pb.ExplainResponse.FromString
        return client.channel.unary_unary(method, request_serializer=None, response_deserializer=deser)

    async def _one(self, call: Any, payload: bytes, start: float, metadata: Any) -> Sample:
        try:
            resp = await call(payload, timeout=call_timeout(self.cfg.timeout_s), metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            return Sample(start, (clock() - start) * 1e3, code.name if code else "UNKNOWN")
        except asyncio.CancelledError:
            raise
        latency = (clock() - start) * 1e3
        if self.cfg.protocol == "oip":
            p = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in resp.parameters.items()}
            return Sample(start, latency, "OK", p["queue_ms"], p["compute_ms"], p["total_ms"],
                          p["batch_size"])
        t = resp.responses[0].timing if self._images_per_call > 1 else resp.timing
        return Sample(start, latency, "OK", t.queue_ms, t.compute_ms, t.total_ms, t.batch_size)

    async def closed(self, calls: Sequence[Any], metadata: Any, concurrency: int, warmup_s: float,
                     duration_s: float, bar: Any = None) -> tuple[list[Sample], Window]:
        """Closed loop: ``concurrency`` callers back to back from now until the window
        ``[now + warmup_s, now + warmup_s + duration_s]`` has closed, in one continuous run, so the
        window sees steady load; caller k sends on ``calls[k % len(calls)]`` (one per connection, from
        :meth:`rpcs`). Returns every call as a :class:`Sample` (warm-up included; calls in flight at
        the end finish first) and the window: :func:`summarize` counts by completion time."""
        samples: list[Sample] = []
        t0 = clock()
        window = Window(t0 + warmup_s, t0 + warmup_s + duration_s)
        payloads = self._payloads

        async def caller(k: int) -> None:
            i = k * 7919
            call = calls[k % len(calls)]
            while clock() < window.end:
                s = await self._one(call, payloads[i % len(payloads)], clock(), metadata)
                i += 1
                samples.append(s)
                if bar is not None and s.end >= window.start:
                    _advance(bar, min(duration_s, s.end - window.start), f"{len(samples)} calls")

        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        return samples, window

    async def open(self, calls: Sequence[Any], metadata: Any, rate: float, warmup_s: float, duration_s: float,
                   bar: Any = None) -> tuple[list[Sample], Window]:
        """Open loop: Poisson arrivals at ``rate`` per second from now until the window
        ``[now + warmup_s, now + warmup_s + duration_s]`` closes, the i-th sent on
        ``calls[i % len(calls)]``; arrivals beyond ``max_inflight`` calls
        in flight are CLIENT_OVERLOAD samples at their arrival time. Calls still in flight when the window
        closes are cancelled (they could count in no window). Returns every sample and the window."""
        samples: list[Sample] = []
        rng = np.random.default_rng(self.cfg.seed + int(rate * 1000))
        t0 = clock()
        window = Window(t0 + warmup_s, t0 + warmup_s + duration_s)
        tasks: set[asyncio.Task[Sample]] = set()
        i = 0
        next_t = t0 + rng.exponential(1.0 / rate)

        def done(task: asyncio.Task[Sample]) -> None:
            tasks.discard(task)
            if not task.cancelled() and task.exception() is None:
                samples.append(task.result())

        while next_t < window.end:
            delay = next_t - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= self.cfg.max_inflight:
                samples.append(Sample(next_t, 0.0, "CLIENT_OVERLOAD"))
            else:
                task = asyncio.ensure_future(self._one(calls[i % len(calls)],
                                                       self._payloads[i % len(self._payloads)], next_t,
                                                       metadata))
                task.add_done_callback(done)
                tasks.add(task)
            i += 1
            if bar is not None and i % 16 == 0 and clock() >= window.start:
                _advance(bar, min(duration_s, clock() - window.start),
                         f"{len(samples)} done, {len(tasks)} open")
            next_t += rng.exponential(1.0 / rate)
        remaining = window.end - clock()
        if tasks and remaining > 0:
            await asyncio.wait(tasks, timeout=remaining)
        for task in list(tasks):  # answers after the window count in none; do not wait for them
            task.cancel()
        return samples, window

    async def run_async(self) -> dict[str, Any]:
        cfg = self.cfg
        if not cfg.concurrency and not cfg.rates:
            raise ValueError("nothing to run: give --concurrency and/or --rate")
        clients = self.clients()
        try:
            await self.prepare(clients[0])
            calls = self.rpcs(clients)
            metadata = clients[0]._metadata
            steps: list[dict[str, Any]] = []
            plan = [("closed", float(c)) for c in cfg.concurrency] + [("open", float(r)) for r in cfg.rates]
            for mode, level in plan:
                label = f"c={level:g}" if mode == "closed" else f"rate={level:g}/s"
                runner = self.closed if mode == "closed" else self.open
                arg: Any = int(level) if mode == "closed" else level
                bar = progress_bar(cfg.duration_s, f"{mode} {label}", unit="s", enabled=not cfg.quiet)
                samples, window = await runner(calls, metadata, arg, cfg.warmup_s, cfg.duration_s, bar)
                step = summarize(samples, window, self._images_per_call, mode, level)
                _advance(bar, cfg.duration_s, f"{step['throughput_img_s']:.1f} img/s p99 "
                         f"{step['latency_ms']['p99']:.1f} ms errors {step['requests_failed']}")
                bar.close()
                steps.append(step)
        finally:
            await asyncio.gather(*(client.close() for client in clients))
        return {
            "tool": "camserve bench", "version": __version__,
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "host": {"platform": platform.platform(), "python": platform.python_version()},
            "config": {k: v for k, v in asdict(cfg).items() if k != "client"},
            "images": self.image_note, "model": self.model_info, "steps": steps,
        }

    def run(self) -> dict[str, Any]:
        return asyncio.run(self.run_async())


def oip_request(images: Sequence[Any], model: str, method: str, top_k: int,
                size: str) -> ipb.ModelInferRequest:
    """A ModelInfer request for ``images``: encoded ``pb.Image``s as IMAGE rows, or (H, W, C) uint8
    arrays at the model's input size as PIXELS; the method, top-k and heatmap size as parameters."""
    request = ipb.ModelInferRequest(model_name=model)
    if all(isinstance(img, np.ndarray) for img in images):
        pixels = np.stack(images).astype(np.uint8)
        request.inputs.add(name=oip.PIXELS, datatype="UINT8", shape=pixels.shape)
        request.raw_input_contents.append(pixels.tobytes())
    else:
        request.inputs.add(name=oip.IMAGE, datatype="BYTES", shape=[len(images), 1])
        request.raw_input_contents.append(oip.pack_bytes([img.encoded for img in images]))
    request.parameters["method"].string_param = method
    request.parameters["top_k"].int64_param = top_k
    request.parameters["heatmap_size"].string_param = size
    return request


def _advance(bar: Any, seconds: float, postfix: str) -> None:
    """Move a time bar (tqdm or NoBar) to ``seconds`` with ``postfix``; tqdm redraws at most every 0.1 s."""
    bar.set_postfix_str(postfix, refresh=False)
    bar.update(seconds - bar.n)


def run_load(config: LoadConfig) -> dict[str, Any]:
    """Run every step of `config` and return the report (what --json writes)."""
    return LoadGenerator(config).run()
