"""Train the bundled demo model: ``python -m camserve.demo.train`` (deterministic, a few CPU minutes).

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
from pathlib import Path

import numpy as np

from camserve.demo import MODEL_DIR
from camserve.demo.digits import CANVAS, generate, preprocess

TARGET_LAYER: str = "features"
"""Name of the last conv layer (8x8 grid), the default target of the shipped config."""

LABELS: tuple[str, ...] = tuple(str(d) for d in range(10))

HELDOUT_SAMPLES: int = 1000
HELDOUT_SEED: int = 0
"""The held-out evaluation set that the training report and tests/demo both use."""


def build_model():  # -> keras.Model (keras imported lazily so --help stays fast)
    """Small GAP classifier: 64x64x3 -> three BN conv blocks -> 'features' (8x8x96) -> GAP -> Dense."""
    import keras
    from keras import layers

    inputs = keras.Input((CANVAS, CANVAS, 3), name="image")
    x = inputs
    for i, filters in enumerate((16, 32, 64), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
        if i == 3:
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv2")(x)
            x = layers.BatchNormalization(name=f"block{i}_bn2")(x)
            x = layers.ReLU(name=f"block{i}_relu2")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
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


def heldout_accuracy(model, samples: int = HELDOUT_SAMPLES, seed: int = HELDOUT_SEED) -> float:
    """Top-1 accuracy on the deterministic held-out set (source digits never seen in training)."""
    data = generate(samples, "heldout", seed=seed)
    probs = model.predict(preprocess(data.images), batch_size=250, verbose=0)
    return float(np.mean(np.argmax(probs, axis=1) == data.labels))


def train(epochs: int, samples_per_epoch: int, batch_size: int, seed: int, verbose: int):
    """Train with fixed seeds; each epoch sees a freshly generated set (more variety, same cost)."""
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
    for epoch in range(epochs):
        data = generate(samples_per_epoch, "train", seed=seed * 1000 + epoch)
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
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--samples-per-epoch", type=int, default=16000)
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
        f"held-out accuracy {accuracy:.4f} on {HELDOUT_SAMPLES} images; training {seconds:.0f} s; "
        f"{model.count_params()} parameters; {model_file} {model_file.stat().st_size / 1024:.0f} KiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
