"""The gRPC floor under ``bench/frontend``'s load: what a bare gRPC server costs per call, in Python and C++.

The same load generator, callers and messages as ``python -m bench.frontend`` (64 callers of 224x224
JPEG, one per Explain), against one grpc.aio process whose Explain does nothing camserve does (no
validation, no scheduler, no metrics): it returns one reply built beforehand, of the size camserve's
replies have for the stand-in model (5 top predictions, one 7x7 float32 map). Three variants: bare;
with camserve's interceptors (``camserve.front.limits``, ``camserve.front.interceptors``: transport
limits, the body parsed inside the handler); and with them and each JPEG decoded as the front end
does (simplejpeg, on the event loop). The server's CPU-ms per call is then the floor that gRPC's
Python aio server (its Cython layer, C core and system calls) and the decode set for camserve's front
end on this machine; ``bench/frontend`` minus this is camserve's own work.

``--native`` adds the same server in C++ (``bench/frontend/native/floor.cc``, built by ``make
native-floor`` from Debian's gRPC and libjpeg-turbo): gRPC's C++ server, bare and with the decode. The
difference between the two languages' rows is what a front end outside Python could save per call.
``--rounds`` alternates every variant that many times (the machine's speed drifts: compare the rows of
one round).

    python -m bench.frontend.floor                   # bare gRPC, + interceptors, + JPEG decode
    python -m bench.frontend.floor --native --rounds 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.frontend.__main__ import measure

MODEL, SIDE = "m224", 224


def serve(port_file: Path, decode: bool, intercepted: bool) -> None:
    """The bare server: health, GetModel and a canned Explain; writes its port to ``port_file``."""
    import asyncio

    import grpc
    import numpy as np
    import simplejpeg
    from camserve_proto import explain_pb2 as pb
    from camserve_proto import explain_pb2_grpc as pb_grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    reply = pb.ExplainResponse(request_id="0" * 32, model=MODEL, model_version=1, method=pb.GRAD_CAM,
                               target_layer="standin", score_kind="logits")
    ex = reply.explanations.add(class_index=3, label="3", probability=0.01, score=1.5, all_zero=False)
    ex.heatmap.dtype = pb.FLOAT32
    ex.heatmap.shape.extend([7, 7])
    ex.heatmap.data = np.random.default_rng(0).random((7, 7), np.float32).tobytes()
    for i in range(5):
        reply.top_predictions.add(class_index=i, label=str(i), probability=0.01)
    reply.timing.queue_ms, reply.timing.compute_ms, reply.timing.batch_size = 1.0, 2.0, 4
    reply.original_size.extend([SIDE, SIDE])

    class Bare(pb_grpc.ExplainServiceServicer):
        async def Explain(self, request: Any, context: Any) -> Any:
            if decode:
                simplejpeg.decode_jpeg(request.image.encoded, colorspace="RGB")
            return reply

        async def GetModel(self, request: Any, context: Any) -> Any:
            return pb.ModelInfo(name=MODEL, version=1, ready=True, input_shape=[SIDE, SIDE, 3],
                                max_batch_size=32, backend="standin")

    async def main() -> None:
        interceptors: list[Any] = []
        if intercepted:
            from camserve.front.interceptors import MalformedRequestInterceptor
            from camserve.front.limits import LimitsInterceptor
            from camserve.front.server import ServerOptions

            opts = ServerOptions()
            interceptors = [LimitsInterceptor(max_header_bytes=opts.max_header_bytes,
                                              max_message_bytes=opts.max_message_bytes),
                            MalformedRequestInterceptor()]
        server = grpc.aio.server(interceptors=interceptors)
        pb_grpc.add_ExplainServiceServicer_to_server(Bare(), server)
        status = health.aio.HealthServicer()
        for name in ("", MODEL):
            await status.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(status, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_file.write_text(str(port))
        await server.wait_for_termination()

    asyncio.run(main())


@dataclass
class _Server:
    target: str
    pid: int


ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "build" / "native-floor" / "floor"


def run_floor(cmd: list[str], duration_s: float, warmup_s: float, callers: int, clients: int
              ) -> dict[str, Any]:
    """Start the floor server ``cmd`` (``cmd + [PORT_FILE]``: it writes the port it bound there), load it
    as ``bench/frontend`` does, stop it; the measured row."""
    port_file = Path(tempfile.gettempdir()) / f"camserve-floor-{os.getpid()}"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([*cmd, str(port_file)], cwd=ROOT)
    try:
        for _ in range(600):
            if port_file.exists() and port_file.read_text():
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the floor server {cmd} exited with {proc.returncode}")
            time.sleep(0.05)
        row = measure(_Server(f"127.0.0.1:{port_file.read_text()}", proc.pid), "jpeg224", clients, callers,
                      warmup_s, duration_s)
    finally:
        proc.terminate()
        proc.wait(10)
        port_file.unlink(missing_ok=True)
    return row


def variants(native: bool) -> list[tuple[str, list[str]]]:
    """(what, server command) of every floor measured, in the order of a round."""
    py = [sys.executable, "-m", "bench.frontend.floor"]
    rows = [("grpc.aio bare", py), ("+ camserve interceptors", [*py, "--intercepted"]),
            ("+ JPEG decode", [*py, "--intercepted", "--decode"])]
    if native:
        rows += [("C++ gRPC bare", [str(NATIVE), "bare"]),
                 ("C++ gRPC + JPEG decode", [str(NATIVE), "decode"])]
    return [(what, [*cmd, "--serve"] if cmd[0] == sys.executable else cmd) for what, cmd in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.frontend.floor", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.5)
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--native", action="store_true",
                    help="also gRPC's C++ server, bare and with the decode (built by make native-floor)")
    ap.add_argument("--rounds", type=int, default=1, help="alternate every variant this many times")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--decode", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--intercepted", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.decode, args.intercepted)
        return 0
    if args.native:
        subprocess.run(["make", "--no-print-directory", "native-floor"], cwd=ROOT, check=True)
    for _ in range(max(1, args.rounds)):
        for what, cmd in variants(args.native):
            row = run_floor(cmd, args.duration, args.warmup, args.callers, args.clients)
            print(f"{what:<24} {row['images_per_s']:6.0f} calls/s  p50 {row['p50_ms']:6.1f} ms  server CPU "
                  f"{row['cpu_ms_per_image']:.3f} ms/call ({row['server_cores_busy']:.2f} cores busy, errors "
                  f"{row['errors']})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
