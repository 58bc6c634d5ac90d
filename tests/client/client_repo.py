"""A tiny model repository for client tests (two small random-weight Keras models, made on the fly).

Client tests check the wire behaviour, not the maps' quality, so untrained seeded weights are
enough; the models are tiny so that the server compiles every bucket in seconds on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

LABELS = ["zero", "one", "two", "three", "four"]


def make_repository(root: Path, max_batch_size: int = 8) -> Path:
    """root/tiny (conv -> GAP -> dense, CAM-capable) and root/flat (conv -> flatten -> dense)."""
    import keras

    keras.utils.set_random_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    for name, head in (("tiny", "gap"), ("flat", "flatten")):
        inp = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv1")(inp)
        x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv2")(x)
        x = keras.layers.GlobalAveragePooling2D()(x) if head == "gap" else keras.layers.Flatten()(x)
        out = keras.layers.Dense(len(LABELS), activation="softmax", name="probs")(x)
        model = keras.Model(inp, out, name=name)
        d = root / name
        d.mkdir(exist_ok=True)
        model.save(d / "model.keras")
        (d / "labels.txt").write_text("\n".join(LABELS) + "\n")
        (d / "config.json").write_text(json.dumps({
            "name": name, "version": 1, "model_file": "model.keras", "input_shape": [32, 32, 3],
            "preprocessing": "tf", "target_layer": None, "labels_file": "labels.txt", "score": "logits",
            "batching": {"max_batch_size": max_batch_size, "max_queue_delay_ms": 2.0, "max_queue_size": 64}}))
    return root
