"""Sweep (a script, not a CI test): model files users bring to the model repository, each taken the
way a worker takes it (``load_model_config`` -> ``load_model`` -> ``Explainer`` -> warm-up -> one
batch of two uint8 images). Each must be SERVED with finite maps or REFUSED with camserve's own error
(``EngineError`` / ``RepositoryError``) saying what to do; "FAULT" marks a raw error from elsewhere.

    PYTHONPATH=server:client:tests python tests/engine/sweep_model_files.py [case ...]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from camserve.engine import EngineError, Explainer, load_model
from camserve.records import ItemSpec
from camserve.repository import RepositoryError, load_model_config

from engine import hub_zoo
from engine import zoo_models as zoo

SHAPE = (16, 16, 3)


def _small() -> keras.Model:
    keras.utils.set_random_seed(1)
    inp = keras.Input(SHAPE)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))


def _unregistered(folder: Path) -> str:
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inp = keras.Input(SHAPE)
    x = Scale(name="scale")(keras.layers.Conv2D(4, 3, name="conv")(inp))
    keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))).save(folder / "m.keras")
    return "m.keras"


def _truncated(folder: Path) -> str:
    _small().save(folder / "whole.keras")
    data = (folder / "whole.keras").read_bytes()
    (folder / "m.keras").write_bytes(data[: len(data) // 2])
    return "m.keras"


def _saved(make: Callable[[], keras.Model], name: str) -> Callable[[Path], str]:
    def write(folder: Path) -> str:
        make().save(folder / name)
        return name

    return write


def _raw(name: str, data: bytes) -> Callable[[Path], str]:
    def write(folder: Path) -> str:
        (folder / name).write_bytes(data)
        return name

    return write


def _weights(folder: Path) -> str:
    _small().save_weights(folder / "m.weights.h5")
    return "m.weights.h5"


def _export(folder: Path) -> str:
    _small().export(str(folder / "sm"), verbose=False)
    return "sm"


def _hub(name: str, pre: bool, size: int = 16) -> Callable[[], keras.Model]:
    def build() -> keras.Model:
        keras.utils.set_random_seed(3)
        return hub_zoo.HUB[name][0](size, pre)

    return build


#: case -> (writer(folder) -> model_file, config.json extras, input_shape)
CASES: dict[str, tuple[Callable[[Path], str], dict, tuple[int, int, int]]] = {
    "keras": (_saved(_small, "m.keras"), {}, SHAPE),
    "h5 (Keras 3 legacy)": (_saved(_small, "m.h5"), {}, SHAPE),
    "weights-only .weights.h5": (_weights, {}, SHAPE),
    "model.export() directory": (_export, {}, SHAPE),
    "truncated .keras": (_truncated, {}, SHAPE),
    "not a zip .keras": (_raw("m.keras", b"not a model"), {}, SHAPE),
    "empty .h5": (_raw("m.h5", b""), {}, SHAPE),
    "unregistered custom class": (_unregistered, {}, SHAPE),
    "registered custom classes (zoo ViT)": (
        _saved(lambda: zoo.vit_like(size=16, patch=4), "m.keras"), {}, SHAPE
    ),
    "keras-hub ResNet .keras": (_saved(_hub("resnet", False), "m.keras"), {}, SHAPE),
    "keras-hub ResNet + preprocessor": (_saved(_hub("resnet", True), "m.keras"), {}, SHAPE),
    "keras-hub + preprocessor, config 'tf'": (
        _saved(_hub("resnet", True), "m.keras"), {"preprocessing": "tf"}, SHAPE
    ),
    "keras-hub any-size ResNet + pre": (_saved(_hub("resnet_any_size", True), "m.keras"), {}, SHAPE),
    "keras-hub, config input_shape wrong": (_saved(_hub("resnet", True), "m.keras"), {}, (20, 20, 3)),
    "keras-hub ViT + preprocessor": (_saved(_hub("vit_token", True), "m.keras"), {}, SHAPE),
    "keras-hub DeiT": (_saved(_hub("deit", False), "m.keras"), {}, SHAPE),
    "keras-hub MiT + preprocessor": (_saved(_hub("mit", True), "m.keras"), {}, SHAPE),
    "keras-hub Swin (window 4 needs 32 px)": (_saved(_hub("swin", False, 32), "m.keras"), {}, (32, 32, 3)),
    "keras-hub ResNet as .h5": (_saved(_hub("resnet", False), "m.h5"), {}, SHAPE),
}


def run(name: str, root: Path) -> str:
    write, extras, shape = CASES[name]
    folder = root / f"case{list(CASES).index(name)}"
    folder.mkdir()
    try:
        model_file = write(folder)
    except Exception as exc:
        return f"not saved by Keras: {type(exc).__name__}: {str(exc)[:160]}"
    config = {"model_file": model_file, "input_shape": list(shape), "preprocessing": "none", **extras}
    (folder / "config.json").write_text(json.dumps(config))
    try:
        cfg = load_model_config(folder)
        e = Explainer(load_model(cfg), target_layer=cfg.target_layer, preprocessing=cfg.preprocessing,
                      max_batch_size=2, score=cfg.score)
        e.warmup()
        x = np.random.default_rng(0).integers(0, 256, (2, *shape), dtype=np.uint8)
        res = e.explain_batch(x, [ItemSpec("gradcam", top_k=2)] * 2)
        finite = all(np.isfinite(m.heatmap).all() for r in res for m in r.maps)
        return f"{'SERVED' if finite else 'FAULT NaN'} target={e.info.target_layer} grid={e.info.grid}"
    except (EngineError, RepositoryError) as exc:
        return f"REFUSED {type(exc).__name__}: {str(exc).replace(str(folder), '<dir>')[:260]}"
    except Exception as exc:
        return f"FAULT {type(exc).__name__}: {str(exc)[:260]}"


def main(names: list[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="camserve-files-"))
    for name in names or list(CASES):
        print(f"{name:40s} {run(name, root)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
