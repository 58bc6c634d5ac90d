"""The JAX step's CPU time against a plain jitted forward pass, interleaved call by call.

    KERAS_BACKEND=jax python -m bench.engine.jax_step [--model MobileNetV2] [--size 96] [--batch 16]
    KERAS_BACKEND=jax python -m bench.engine.jax_step --model ResNet50 --size 224 --batch 8 --rounds 7

A keras.applications ``--model`` (random weights) at ``--size``; prints the median CPU milliseconds of
each and their ratio. What it was made for: the CAM methods' cost inside the compiled step (README,
"GPU": 1.52x a forward pass with every method over the max_k-deep gradient buffer, 1.03x with each
class's maps made in the backward loop), then the serving program without that buffer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.engine.jax_step",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="MobileNetV2", help="a keras.applications name")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras
    import numpy as np
    from camserve.engine import Explainer
    from camserve.engine.backend_jax import build_forward
    from camserve.engine.methods import CODES

    model = getattr(keras.applications, args.model)(weights=None, input_shape=(args.size, args.size, 3))
    e = Explainer(model, None, preprocessing="tf", compile_mode="xla", max_batch_size=args.batch,
                  backend="jax")
    forward = build_forward(e.graph, preprocessing="tf", jit_compile=True)
    x = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    targets = np.full((args.batch, 1), -1, np.int32)
    codes = np.full(args.batch, CODES["gradcam"], np.int32)
    calls = {"forward": lambda: forward(x), "step": lambda: e.step(x, targets, codes)}
    for fn in calls.values():
        fn()  # compile
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(args.rounds):
        for name, fn in calls.items():
            t0 = time.process_time()
            fn()
            cpu[name].append(time.process_time() - t0)
    med = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"forward {1e3 * med['forward']:.1f} CPU-ms, step {1e3 * med['step']:.1f} CPU-ms, "
          f"step / forward {med['step'] / med['forward']:.3f}")


if __name__ == "__main__":
    main()
