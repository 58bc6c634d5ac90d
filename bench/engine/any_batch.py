"""Graph mode's one trace for every batch size against one trace per batch bucket (TensorFlow).

    python -m bench.engine.any_batch [--model MobileNetV2] [--size 160] [--batch 32] [--rounds 10]

A stock Keras application (random weights) at ``--size``. Prints, in this process's CPU seconds:
tracing and first running (TensorFlow optimises a graph on its first run) one static batch size,
against the same with the batch dimension unknown (what warm-up paid per bucket before, and pays
once now); then the step's CPU time per call at ``--batch`` from each trace, interleaved call by
call, and their ratio; then a partial batch (5 images) run as it is against padded to 8 (what graph
mode no longer computes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.engine.any_batch", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="MobileNetV2")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    import keras
    import numpy as np
    import tensorflow as tf
    from camserve.engine import Explainer
    from camserve.engine.methods import CODES

    model = getattr(keras.applications, args.model)(weights=None, input_shape=(args.size, args.size, 3))
    e = Explainer(model, None, preprocessing="tf", compile_mode="graph", max_batch_size=args.batch)
    s, k = args.size, e.step.max_k

    def trace(batch: int | None) -> tuple[object, float]:
        """The concrete function, and the CPU seconds to trace it and run it once."""
        t0 = time.process_time()
        fn = e.step._fn.get_concrete_function(  # the signature backend_tf.Step traces with
            tf.TensorSpec((batch, s, s, 3), tf.float32), tf.TensorSpec((), tf.bool),
            tf.TensorSpec((batch, k), tf.int32), tf.TensorSpec((), tf.int32),
            tf.TensorSpec((batch,), tf.int32))
        fn(*inputs(args.batch))[3].numpy()
        return fn, time.process_time() - t0

    def inputs(b: int) -> tuple[object, ...]:
        x = np.random.default_rng(0).integers(0, 256, (b, s, s, 3)).astype(np.float32)
        return (tf.constant(x), tf.constant(True), tf.constant(np.full((b, k), -1, np.int32)),
                tf.constant(1), tf.constant(np.full(b, CODES["gradcam"], np.int32)))

    static, t_static = trace(args.batch)
    dynamic, t_dynamic = trace(None)
    print(f"{args.model} {s}x{s}: trace and first run, static batch {args.batch} {t_static:.1f} CPU-s, "
          f"batch unknown {t_dynamic:.1f} CPU-s")

    def cpu(fn: object, x: tuple[object, ...]) -> float:
        t0 = time.process_time()
        fn(*x)[3].numpy()
        return time.process_time() - t0

    full, five, eight = inputs(args.batch), inputs(5), inputs(8)
    for x in (five, eight):
        cpu(dynamic, x)  # first run of each shape: kernels for it
    times: dict[str, list[float]] = {"static": [], "dynamic": [], "5 rows": [], "5 padded to 8": []}
    for _ in range(args.rounds):
        times["static"].append(cpu(static, full))
        times["dynamic"].append(cpu(dynamic, full))
        times["5 rows"].append(cpu(dynamic, five))
        times["5 padded to 8"].append(cpu(dynamic, eight))
    m = {name: 1e3 * statistics.median(v) for name, v in times.items()}
    print(f"batch {args.batch}: static {m['static']:.0f} CPU-ms, batch unknown {m['dynamic']:.0f} CPU-ms, "
          f"unknown / static {m['dynamic'] / m['static']:.3f}")
    print(f"partial batch: 5 rows {m['5 rows']:.0f} CPU-ms, padded to 8 {m['5 padded to 8']:.0f} CPU-ms")


if __name__ == "__main__":
    main()
