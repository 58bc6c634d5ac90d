"""How ``tfkeras2_gap.h5`` was made: a legacy HDF5 file written by tf.keras 2 (tf-keras 2.21.0).

Not run by the tests (they only read the file); kept so that the fixture can be rebuilt. Needs the
``tf-keras`` package (not a dependency of camserve):

    pip download --no-deps tf-keras==2.21.0 && unzip it somewhere, then
    PYTHONPATH=<there> python tests/engine/data/make_tfkeras2_h5.py

It also writes ``tfkeras2_gap_io.npz``: two inputs and tf.keras 2's own predictions for them, so the
test can check that Keras 3 restored the weights, not only the architecture.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tf_keras as K

OUT = Path(__file__).resolve().parent


def main() -> None:
    K.utils.set_random_seed(0)
    inp = K.Input((8, 8, 3))
    x = K.layers.Conv2D(4, 3, activation="relu", name="conv1")(inp)
    x = K.layers.BatchNormalization(name="bn")(x)
    x = K.layers.Conv2D(6, 3, activation="relu", name="conv2")(x)
    x = K.layers.GlobalAveragePooling2D(name="gap")(x)
    x = K.layers.Dropout(0.3, name="drop")(x)
    out = K.layers.Dense(3, activation="softmax", name="predictions")(x)
    m = K.Model(inp, out, name="tfkeras2_model")
    m.get_layer("bn").set_weights([np.full(4, 1.5), np.full(4, 0.2), np.full(4, 0.1), np.full(4, 2.0)])
    m.save(OUT / "tfkeras2_gap.h5")
    xs = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.savez(OUT / "tfkeras2_gap_io.npz", x=xs, y=m.predict(xs, verbose=0))


if __name__ == "__main__":
    main()
