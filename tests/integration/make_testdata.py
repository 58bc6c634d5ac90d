"""Regenerate tests/integration/data/repository/flat: a tiny model WITHOUT a GAP->Dense head.

Why it is committed: the integration server serves it beside the demo model, so that CAM on a
model that cannot have CAM (Flatten -> Dense, like VGG16's head) is answered FAILED_PRECONDITION.
Weights are random but seeded; the tests need its structure, not its accuracy.
Run: python tests/integration/make_testdata.py   (needs TensorFlow; the tests do not).
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "repository" / "flat"


def main() -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(2, name="pool"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(4, activation="softmax", name="predictions"),
    ], name="flat")
    OUT.mkdir(parents=True, exist_ok=True)
    model.save(OUT / "model.keras")
    (OUT / "labels.txt").write_text("north\neast\nsouth\nwest\n")
    config = {"name": "flat", "version": 3, "model_file": "model.keras", "input_shape": [32, 32, 3],
              "preprocessing": "tf", "target_layer": "conv2", "labels_file": "labels.txt", "score": "logits",
              "batching": {"max_batch_size": 4, "max_queue_delay_ms": 2.0, "max_queue_size": 64}}
    (OUT / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
