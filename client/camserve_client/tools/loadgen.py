"""Load generator for camserve (`camserve bench`, `python -m bench.load`), in the spirit of perf_analyzer.

Closed loop: C callers each send the next request as soon as the previous answer arrives, for a
fixed duration per concurrency step, after a warm-up that is not counted. Open loop: requests
arrive as a Poisson process at a fixed rate whatever the server does; latency is measured from
the scheduled arrival time, so a server that falls behind shows it (no coordinated omission).

Requests are serialized once before the run and sent as bytes, so the generator spends its CPU
on gRPC, not on protobuf. Each response's timing gives the server-side queue / compute split and
the size of the batch the request ran in. ``--protocol oip`` sends the same images through the Open
Inference Protocol instead (``inference.GRPCInferenceService/ModelInfer``: IMAGE rows, or PIXELS for
raw payloads; the split comes from the reply's parameters), so both endpoints are measured alike.
Output (``camserve_client.tools.loadreport``): a table, JSON, and a latency-throughput PNG (matplotlib is
imported only then; without it the PNG is skipped).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from camserve_proto import explain_pb2 as pb
from camserve_proto import grpc_service_pb2 as ipb
from camserve_proto import oip

from camserve_client import __version__
from camserve_client.client import AsyncClient
from camserve_client.tools.loadreport import Sample, format_table, json_safe, summarize, write_plot
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


class LoadGenerator:
    """Runs the steps of a LoadConfig against one server over one grpc.aio channel."""

    def __init__(self, config: LoadConfig) -> None:
        self.cfg = config
        self.model_info: dict[str, Any] = {}
        self.image_note = ""
        self._payloads: list[bytes] = []
        self._images_per_call = max(1, config.batch_per_call)

    # -- setup -------------------------------------------------------------------------------
    async def _prepare(self, client: AsyncClient) -> None:
        cfg = self.cfg
        deadline = time.monotonic() + cfg.ready_timeout_s
        status = "no answer"
        while True:  # wait until the server (and the model) is SERVING
            try:
                status = await client.health(cfg.model, timeout=5)
                if status == "SERVING":
                    break
            except Exception as exc:  # keep polling while the server starts
                status = str(getattr(exc, "code", exc))
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cfg.target} not SERVING after {cfg.ready_timeout_s:.0f} s ({status})")
            await asyncio.sleep(0.5)
        info = await client.get_model(cfg.model)
        self.model_info = {"name": info.name, "version": info.version, "input_shape": list(info.input_shape),
                           "max_batch_size": info.max_batch_size, "batch_buckets": info.batch_buckets,
                           "max_queue_delay_ms": info.max_queue_delay_ms, "backend": info.backend,
                           "compile_mode": info.compile_mode, "target_layer": info.default_target_layer}
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
    def _callable(self, client: AsyncClient) -> Any:
        if self.cfg.protocol == "oip":
            return client.channel.unary_unary(f"/{oip.SERVICE_NAME}/ModelInfer", request_serializer=None,
                                              response_deserializer=ipb.ModelInferResponse.FromString)
        batch = self._images_per_call > 1
        method = "/camserve.v1.ExplainService/" + ("ExplainBatch" if batch else "Explain")
        deser = pb.ExplainBatchResponse.FromString if batch else pb.ExplainResponse.FromString
        return client.channel.unary_unary(method, request_serializer=None, response_deserializer=deser)

    async def _one(self, call: Any, payload: bytes, start: float, metadata: Any) -> Sample:
        try:
            resp = await call(payload, timeout=self.cfg.timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            return Sample(start, (time.perf_counter() - start) * 1e3, code.name if code else "UNKNOWN")
        except asyncio.CancelledError:
            raise
        latency = (time.perf_counter() - start) * 1e3
        if self.cfg.protocol == "oip":
            p = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in resp.parameters.items()}
            return Sample(start, latency, "OK", p["queue_ms"], p["compute_ms"], p["total_ms"],
                          p["batch_size"])
        t = resp.responses[0].timing if self._images_per_call > 1 else resp.timing
        return Sample(start, latency, "OK", t.queue_ms, t.compute_ms, t.total_ms, t.batch_size)

    async def _closed(self, call: Any, metadata: Any, concurrency: int, duration: float,
                      bar: Any) -> tuple[list[Sample], float]:
        samples: list[Sample] = []
        t0 = time.perf_counter()
        end = t0 + duration
        payloads = self._payloads

        async def caller(k: int) -> None:
            i = k * 7919
            while time.perf_counter() < end:
                s = await self._one(call, payloads[i % len(payloads)], time.perf_counter(), metadata)
                i += 1
                if s.start + s.latency_ms / 1e3 <= end:
                    samples.append(s)
                    if bar is not None:
                        _advance(bar, min(duration, time.perf_counter() - t0), f"{len(samples)} ok+err")

        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        return samples, duration

    async def _open(self, call: Any, metadata: Any, rate: float, duration: float,
                    bar: Any) -> tuple[list[Sample], float]:
        samples: list[Sample] = []
        rng = np.random.default_rng(self.cfg.seed + int(rate * 1000))
        t0 = time.perf_counter()
        end = t0 + duration
        tasks: set[asyncio.Task[Sample]] = set()
        overload = 0
        i = 0
        next_t = t0 + rng.exponential(1.0 / rate)

        def done(task: asyncio.Task[Sample]) -> None:
            tasks.discard(task)
            if not task.cancelled() and task.exception() is None:
                s = task.result()
                if s.start + s.latency_ms / 1e3 <= end:
                    samples.append(s)

        while next_t < end:
            delay = next_t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= self.cfg.max_inflight:
                overload += 1
            else:
                task = asyncio.ensure_future(self._one(call, self._payloads[i % len(self._payloads)],
                                                       next_t, metadata))
                task.add_done_callback(done)
                tasks.add(task)
            i += 1
            if bar is not None and i % 16 == 0:
                _advance(bar, min(duration, time.perf_counter() - t0),
                         f"{len(samples)} done, {len(tasks)} open")
            next_t += rng.exponential(1.0 / rate)
        remaining = end - time.perf_counter()
        if tasks and remaining > 0:
            await asyncio.wait(tasks, timeout=remaining)
        for task in list(tasks):  # answers after the window do not count; do not wait for them
            task.cancel()
        samples += [Sample(end, 0.0, "CLIENT_OVERLOAD")] * overload
        return samples, duration

    async def run_async(self) -> dict[str, Any]:
        cfg = self.cfg
        if not cfg.concurrency and not cfg.rates:
            raise ValueError("nothing to run: give --concurrency and/or --rate")
        client = AsyncClient(cfg.target, model=cfg.model, retries=0, **cfg.client)
        try:
            await self._prepare(client)
            call = self._callable(client)
            metadata = client._metadata
            steps: list[dict[str, Any]] = []
            plan = [("closed", float(c)) for c in cfg.concurrency] + [("open", float(r)) for r in cfg.rates]
            for mode, level in plan:
                label = f"c={level:g}" if mode == "closed" else f"rate={level:g}/s"
                runner = self._closed if mode == "closed" else self._open
                arg: Any = int(level) if mode == "closed" else level
                if cfg.warmup_s > 0:
                    await runner(call, metadata, arg, cfg.warmup_s, None)
                bar = progress_bar(cfg.duration_s, f"{mode} {label}", unit="s", enabled=not cfg.quiet)
                samples, dur = await runner(call, metadata, arg, cfg.duration_s, bar)
                step = summarize(samples, dur, self._images_per_call, mode, level)
                _advance(bar, cfg.duration_s, f"{step['throughput_img_s']:.1f} img/s p99 "
                         f"{step['latency_ms']['p99']:.1f} ms errors {step['requests_failed']}")
                bar.close()
                steps.append(step)
        finally:
            await client.close()
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


def _levels(text: str, kind: type) -> list[Any]:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("levels must be > 0")
    return values


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The load flags, shared by `camserve bench` and `python -m bench.load`."""
    parser.add_argument("--model", help="model name (default: the server's default model)")
    parser.add_argument("--method", default="gradcam", help="CAM method (default gradcam)")
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--size", default="grid", choices=["grid", "input", "original"],
                        help="heatmap size requested (default grid: the least output work)")
    parser.add_argument("--concurrency", type=lambda t: _levels(t, int), default=None,
                        help="closed-loop sweep, e.g. 1,4,16,64 (default 1,4,16,64 unless --rate)")
    parser.add_argument("--rate", type=lambda t: _levels(t, float), default=[],
                        help="open-loop Poisson request rates per second, e.g. 20,50,100")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per step (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each step")
    parser.add_argument("--images", default="auto",
                        help="a folder of images, or generated: auto|digits|photos|noise (default auto)")
    parser.add_argument("--image-count", type=int, default=64)
    parser.add_argument("--image-size", type=int, help="generated image side (default: the model input)")
    parser.add_argument("--payload", default="png", choices=["png", "jpeg", "raw"],
                        help="how generated images travel: encoded png/jpeg, or raw uint8 tensor")
    parser.add_argument("--batch-per-call", type=int, default=1,
                        help="images per call; > 1 uses ExplainBatch, or ModelInfer rows (default 1)")
    parser.add_argument("--protocol", default="camserve", choices=["camserve", "oip"],
                        help="camserve: camserve.v1 Explain (default); oip: the Open Inference Protocol's "
                             "ModelInfer (KServe v2), IMAGE rows (PIXELS for --payload raw)")
    parser.add_argument("--max-inflight", type=int, default=4096, help="open-loop cap on calls in flight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    parser.add_argument("--plot", metavar="PATH.png", help="write a latency-throughput plot")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: concurrency 1,4, 2 s per step, 1 s warm-up")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace, client_kwargs: dict[str, Any]) -> LoadConfig:
    cfg = LoadConfig(
        target=args.target, model=args.model, method=args.method, top_k=args.top_k, size=args.size,
        concurrency=(args.concurrency if args.concurrency is not None
                     else ([] if args.rate else [1, 4, 16, 64])),
        rates=args.rate, duration_s=args.duration, warmup_s=args.warmup, images=args.images,
        image_count=args.image_count, image_size=args.image_size, payload=args.payload,
        batch_per_call=args.batch_per_call, protocol=args.protocol,
        timeout_s=client_kwargs.get("timeout") or 30.0,
        max_inflight=args.max_inflight, seed=args.seed, quiet=args.quiet,
        client={k: v for k, v in client_kwargs.items() if k in ("tls", "token")})
    if args.quick:
        cfg.concurrency = [1, 4] if args.concurrency is None and not args.rate else cfg.concurrency
        cfg.duration_s, cfg.warmup_s = min(cfg.duration_s, 2.0), min(cfg.warmup_s, 1.0)
        cfg.image_count = min(cfg.image_count, 16)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """`camserve bench`: run the sweep, print the table, write JSON / PNG if asked."""
    from camserve_client.tools.cli import UsageError, add_connection_arguments, client_kwargs

    parser = argparse.ArgumentParser(prog="camserve bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_arguments(parser)
    add_connection_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args, client_kwargs(args))
        report = run_load(cfg)
    except (UsageError, ValueError, OSError, RuntimeError) as exc:
        print(f"camserve bench: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, RuntimeError) else 3
    except Exception as exc:  # a CamserveError from setup (model unknown, auth, ...)
        if getattr(exc, "code", None) is not None:
            print(f"camserve bench: {exc}", file=sys.stderr)
            return 1
        raise
    print(f"{cfg.target}  model {report['model'].get('name')}  {report['images']}")
    print(format_table(report["steps"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_safe(report), indent=2))
        print(f"wrote {args.json}")
    if args.plot and write_plot({"camserve": report["steps"]}, args.plot,
                                f"camserve {report['model'].get('name')} {cfg.method}"):
        print(f"wrote {args.plot}")
    failed = sum(s["requests_ok"] == 0 for s in report["steps"])
    return 1 if failed else 0
