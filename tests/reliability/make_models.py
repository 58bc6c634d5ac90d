"""Regenerate tests/reliability/data/repository/rel: the model the reliability tests serve.

Why a model of its own: overload, fault and drain tests need a predictable, deliberately *slow*
model (capacity of a few dozen images/s on 2 CPU cores), so that three times its capacity is load a
Python client on the same machine can really offer; and the fuzz suite needs known layers (three
conv layers, one CAM-capable) whatever the demo model becomes. Weights are random but seeded: these
tests check behaviour under stress, not map quality. max_batch_size 8 keeps warm-up to 4 buckets.
Run: python tests/reliability/make_models.py   (needs TensorFlow; the tests do not).
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "repository" / "rel"
LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def main() -> None:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((192, 192, 3), name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.Conv2D(48, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.Conv2D(96, 3, strides=2, padding="same", activation="relu", name="conv4")(x)
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(len(LABELS), activation="softmax", name="predictions")(x)
    model = keras.Model(inp, out, name="rel")
    OUT.mkdir(parents=True, exist_ok=True)
    model.save(OUT / "model.keras")
    (OUT / "labels.txt").write_text("\n".join(LABELS) + "\n")
    config = {"name": "rel", "version": 1, "model_file": "model.keras", "input_shape": [192, 192, 3],
              "preprocessing": "tf", "target_layer": "last_conv", "labels_file": "labels.txt",
              "score": "logits",
              "batching": {"max_batch_size": 8, "max_queue_delay_ms": 2.0, "max_queue_size": 64}}
    (OUT / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
