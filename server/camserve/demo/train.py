"""Train the bundled demo model: ``python -m camserve.demo.train`` (deterministic; 18 to 45 min on 2 cores).

Determinism: seeds fixed (Python, NumPy, TensorFlow via ``keras.utils.set_random_seed``), TensorFlow's
deterministic ops on, and every epoch's images a pure function of (seed, epoch). Two runs on the same
machine, TensorFlow build and thread count give bit-identical weights (tests/demo checks a tiny run);
another CPU or thread count may round float sums in another order and end a few ULPs apart early on,
which training can amplify into a slightly different model of the same quality.

Why a GAP->Dense head: CAM needs it, and it makes localisation come for free from classification, so
the shipped model can be scored against the generator's boxes. Preprocessing ("tf": x/127.5 - 1) runs
outside the model, as the server applies it inside its compiled step from ``config.json``.

Writes ``model.keras`` (inference only, no optimizer state), ``labels.txt`` and ``config.json`` into
the bundled repository (``server/camserve/demo/repository/demo``) or ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from camserve.demo import MODEL_DIR
from camserve.demo.digits import CANVAS, generate, preprocess

TARGET_LAYER: str = "features"
"""Name of the last conv layer (8x8 grid), the default target of the shipped config."""

LABELS: tuple[str, ...] = tuple(str(d) for d in range(10))

HELDOUT_SAMPLES: int = 1000
HELDOUT_SEED: int = 0
"""The held-out evaluation sets (the generator's held-out split and the printed set) of the training
report, README's table (``bench.engine.localization``) and tests/demo."""


def build_model():  # -> keras.Model (keras imported lazily so --help stays fast)
    """Small GAP classifier, (N, 64, 64, 3) float32 in [-1, 1] -> (N, 10) softmax probabilities.

    A stride-2 stem (the 64x64 grid is only needed for the first edges; full-resolution blocks cost
    most of the training time on two cores), BN conv blocks down to 8x8, one more 8x8 block so the
    last layer sees a whole 46-pixel digit, then 'features' (8x8x96) -> GAP -> Dense (CAM-capable).
    """
    import keras
    from keras import layers

    def block(x, filters: int, name: str, strides: int = 1):
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    inputs = keras.Input((CANVAS, CANVAS, 3), name="image")
    x = block(inputs, 16, "block1", strides=2)  # the stem, 32x32
    x = block(x, 32, "block2")
    x = layers.MaxPooling2D(2, name="block2_pool")(x)  # 16x16
    x = block(x, 48, "block3a")
    x = block(x, 48, "block3b")
    x = layers.MaxPooling2D(2, name="block3_pool")(x)  # 8x8
    x = block(x, 64, "block4")
    x = layers.Conv2D(96, 3, padding="same", activation="relu", name=TARGET_LAYER)(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(len(LABELS), activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="demo_cluttered_digits")


def config_dict() -> dict:
    """The repository config of the demo model, in the format agreed in ARCHITECTURE.md."""
    return {
        "name": "demo",
        "version": 1,
        "model_file": "model.keras",
        "application": None,
        "weights": None,
        "input_shape": [CANVAS, CANVAS, 3],
        "preprocessing": "tf",
        "target_layer": TARGET_LAYER,
        "labels_file": "labels.txt",
        "score": "logits",
        "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2.0, "max_queue_size": 256},
    }


def heldout_accuracy(model, samples: int = HELDOUT_SAMPLES, seed: int = HELDOUT_SEED) -> dict[str, float]:
    """Top-1 accuracy on both deterministic held-out sets: the generator's held-out split
    ("generator": source digits never seen in training, fresh sketches) and the printed set (made
    differently, :mod:`camserve.demo.printed`)."""
    from camserve.demo import printed

    accuracies = {}
    for name, data in (
        ("generator", generate(samples, "heldout", seed=seed)),
        ("printed", printed.generate(samples, seed=seed)),
    ):
        probs = model.predict(preprocess(data.images), batch_size=250, verbose=0)
        accuracies[name] = float(np.mean(np.argmax(probs, axis=1) == data.labels))
    return accuracies


def train(epochs: int, samples_per_epoch: int, batch_size: int, seed: int, verbose: int):
    """Train with fixed seeds; each epoch sees a freshly generated set (more variety, same cost).

    The next epoch's images are generated in a thread while the current one trains: each set is a
    pure function of its seed, so the overlap changes the time, never the data.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    model = build_model()
    steps = epochs * (samples_per_epoch // batch_size)
    warmup = samples_per_epoch // batch_size
    schedule = keras.optimizers.schedules.CosineDecay(
        1e-4, decay_steps=max(1, steps - warmup), alpha=0.01, warmup_target=3e-3, warmup_steps=warmup
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )

    def epoch_set(epoch: int):
        return generate(samples_per_epoch, "train", seed=seed * 1000 + epoch)

    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(epoch_set, 0)
        for epoch in range(epochs):
            data = upcoming.result()
            if epoch + 1 < epochs:
                upcoming = pool.submit(epoch_set, epoch + 1)
            if verbose:
                print(f"epoch {epoch + 1}/{epochs}", flush=True)
            model.fit(
                preprocess(data.images),
                data.labels,
                batch_size=batch_size,
                epochs=1,
                shuffle=True,
                verbose=verbose,
            )
    # A fresh, uncompiled copy: the shipped file carries no optimizer state (smaller, inference only).
    shipped = build_model()
    shipped.set_weights(model.get_weights())
    return shipped


def save(model, out: Path) -> Path:
    """Write model.keras, labels.txt and config.json into ``out``; returns the model file."""
    out.mkdir(parents=True, exist_ok=True)
    model_file = out / "model.keras"
    model.save(model_file)
    (out / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (out / "config.json").write_text(json.dumps(config_dict(), indent=2) + "\n")
    return model_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m camserve.demo.train", description="Train the bundled cluttered-digits demo model."
    )
    parser.add_argument("--out", type=Path, default=MODEL_DIR, help="model folder (default: bundled)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--samples-per-epoch", type=int, default=12000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script (not shipped)")
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.samples_per_epoch = 1, 512
    if min(args.epochs, args.samples_per_epoch, args.batch_size) < 1:
        parser.error("--epochs, --samples-per-epoch and --batch-size must be positive")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    start = time.perf_counter()
    model = train(args.epochs, args.samples_per_epoch, args.batch_size, args.seed, args.verbose)
    seconds = time.perf_counter() - start
    model_file = save(model, args.out)
    accuracy = heldout_accuracy(model)
    print(
        f"held-out accuracy: generator {accuracy['generator']:.4f}, printed {accuracy['printed']:.4f} "
        f"({HELDOUT_SAMPLES} images each); training {seconds:.0f} s; "
        f"{model.count_params()} parameters; {model_file} {model_file.stat().st_size / 1024:.0f} KiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
