"""Model formats users have: .keras, legacy .h5 from tf.keras 2, SavedModel (refused), applications;
and the repository keys that say how to explain a model (token_grid, prefix_tokens)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from camserve.engine import Explainer, InvalidInputError, load_model
from camserve.engine.loading import hints_for
from camserve.records import ItemSpec
from camserve.repository import RepositoryError, load_model_config

from engine import zoo_models as zoo

DATA = Path(__file__).resolve().parent / "data"


def test_legacy_h5_written_by_tf_keras_2() -> None:
    """A real tf.keras 2.21 HDF5 file (see data/make_tfkeras2_h5.py): architecture and weights."""
    model = load_model(DATA / "tfkeras2_gap.h5")
    io = np.load(DATA / "tfkeras2_gap_io.npz")
    np.testing.assert_allclose(model.predict(io["x"], verbose=0), io["y"], rtol=1e-5, atol=1e-6)
    e = Explainer(model, preprocessing="none", max_batch_size=2)
    assert e.info.target_layer == "conv2" and e.info.cam_supported and e.info.head_kind == "softmax"
    res = e.explain_batch(io["x"], [ItemSpec("gradcam"), ItemSpec("cam")])
    np.testing.assert_allclose(res[0].probabilities, io["y"][0], rtol=1e-5, atol=1e-6)
    cam = e.explain_batch(io["x"][:1], [ItemSpec("cam")])[0].maps[0].heatmap
    np.testing.assert_allclose(res[0].maps[0].heatmap, cam, atol=1e-5)  # CAM == Grad-CAM on logits


def test_keras_file_subclassed_and_hints(tmp_path: Path) -> None:
    model = zoo.subclassed()
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    model(x)
    model.save(tmp_path / "sub.keras")
    loaded = load_model(tmp_path / "sub.keras", input_shape=(32, 32, 3))
    assert hints_for(loaded).input_shape == (32, 32, 3)
    a = Explainer(model, preprocessing="none", max_batch_size=2, input_shape=(32, 32, 3))
    b = Explainer(loaded, preprocessing="none", max_batch_size=2)  # input shape from the hints
    ra, rb = (e.explain_batch(x, [ItemSpec("gradcam", top_k=2)] * 2) for e in (a, b))
    for i in range(2):
        for ma, mb in zip(ra[i].maps, rb[i].maps, strict=True):
            assert ma.class_index == mb.class_index
            np.testing.assert_allclose(ma.heatmap, mb.heatmap, atol=1e-6)


def test_h5_written_by_keras_3(tmp_path: Path) -> None:
    """The legacy format from Keras 3 too (it cannot hold keras.ops graph nodes: Keras' limit)."""
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(2, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.save(tmp_path / "m.h5")
    loaded = load_model(tmp_path / "m.h5")
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 1)).astype(np.float32)
    maps = [
        Explainer(m, preprocessing="none", max_batch_size=2).explain_batch(x, [ItemSpec()] * 2)
        for m in (model, loaded)
    ]
    np.testing.assert_allclose(maps[0][1].maps[0].heatmap, maps[1][1].maps[0].heatmap, atol=1e-6)


def test_saved_model_directory_is_refused_with_the_conversion(tmp_path: Path) -> None:
    """Keras 3's export() keeps no layers (only save() can help); tf.keras 2's SavedModel can be
    converted where it was made (its keras_metadata.pb says which is which)."""
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten()])
    model.export(str(tmp_path / "sm"), verbose=False)
    assert (tmp_path / "sm" / "saved_model.pb").is_file()
    says = r"SavedModel.*TFSMLayer.*export\(\).*model\.save\('model\.keras'\)"
    for path in (tmp_path / "sm", tmp_path / "sm" / "saved_model.pb"):  # the folder, or its graph file
        with pytest.raises(InvalidInputError, match=says) as info:
            load_model(path)
        assert "load_model(DIR)" not in str(info.value)  # tf.keras 2 cannot re-open an export() either
    tf2 = tmp_path / "tf2"
    tf2.mkdir()
    for name in ("saved_model.pb", "keras_metadata.pb"):  # what tf.keras 2's model.save(DIR) writes
        (tf2 / name).write_bytes(b"")
    with pytest.raises(InvalidInputError, match=r"SavedModel.*load_model\(DIR\).*save\('model.h5'\)"):
        load_model(tf2)
    folder = tmp_path / "repo" / "m"
    folder.mkdir(parents=True)
    (folder / "sm").symlink_to(tmp_path / "sm")
    for model_file in ("sm", "sm/saved_model.pb"):
        (folder / "config.json").write_text(json.dumps({"model_file": model_file, "input_shape": [4, 4, 1]}))
        with pytest.raises(RepositoryError, match=r"field 'model_file'.*SavedModel.*save\('model.keras'\)"):
            load_model_config(folder)


def _gap_model() -> keras.Model:
    inp = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3, name="conv")(inp))
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))


@pytest.mark.parametrize(
    ("name", "write", "says"),
    [
        ("m.weights.h5", lambda p: _gap_model().save_weights(p), r"weights only.*save\('model\.keras'\)"),
        ("m.keras", lambda p: p.write_bytes(b"not a zip"), r"not a \.keras archive.*truncated, corrupt"),
        ("m.keras", "truncate", r"not a \.keras archive.*truncated, corrupt"),
        ("m.h5", lambda p: p.write_bytes(b""), r"not an HDF5 file.*truncated, corrupt"),
        ("m.h5", lambda p: p.write_bytes(b"\x00" * 64), r"not an HDF5 file"),
    ],
)
def test_files_that_hold_no_model_are_refused_with_what_to_do(tmp_path: Path, name, write, says) -> None:
    """Keras alone says "File not found" for a broken .keras, OSError for a broken .h5 and "No model
    config found" for weights: the engine names the file, what it is and what to do."""
    path = tmp_path / name
    if write == "truncate":
        _gap_model().save(tmp_path / "whole.keras")
        path.write_bytes((tmp_path / "whole.keras").read_bytes()[:300])
    else:
        write(path)
    with pytest.raises(InvalidInputError, match=says):
        load_model(path)


def test_unregistered_custom_class_says_how_to_register_it(tmp_path: Path) -> None:
    class Doubler(keras.layers.Layer):  # not registered: Keras cannot find it again
        def call(self, x):
            return x * 2.0

    inp = keras.Input((8, 8, 3))
    x = Doubler(name="double")(keras.layers.Conv2D(2, 3)(inp))
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    with pytest.raises(InvalidInputError, match=r"know the class or function 'Doubler'.*'imports'") as e:
        load_model(tmp_path / "m.keras")
    assert "legacy" not in str(e.value) and len(str(e.value)) < 600  # not Keras' config dump
    with pytest.raises(InvalidInputError, match=r"'Doubler'.*legacy \.h5.*save\('model\.keras'\).*'imports'"):
        load_model(tmp_path / "m.h5")
    assert load_model(tmp_path / "m.keras", custom_objects={"Doubler": Doubler}).get_layer("double")


def test_input_shape_that_contradicts_the_models_input_is_refused(tmp_path: Path) -> None:
    """A repository's input_shape must be the saved model's (the forward pass would fail with Keras'
    shape error otherwise); sizes the Input leaves open, and subclassed models, take any."""
    model = _gap_model()
    with pytest.raises(InvalidInputError, match=r"input_shape \(16, 16, 3\) does not fit.*takes \(8, 8, 3\)"):
        Explainer(model, preprocessing="none", input_shape=(16, 16, 3))
    model.save(tmp_path / "m.keras")
    with pytest.raises(InvalidInputError, match=r"does not fit.*config\.json 'input_shape'"):
        Explainer(load_model(tmp_path / "m.keras", input_shape=(8, 8, 1)), preprocessing="none")
    inp = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3, name="conv")(inp))
    open_size = keras.Model(inp, keras.layers.Dense(3)(x))
    assert Explainer(open_size, preprocessing="none", input_shape=(12, 10, 3)).info.grid == (10, 8)
    built = zoo.subclassed()
    built(np.zeros((1, 32, 32, 3), np.float32))  # built at 32: not a limit
    assert Explainer(built, preprocessing="none", input_shape=(16, 16, 3)).info.grid == (8, 8)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_model(tmp_path / "nope.keras")
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(InvalidInputError, match=r"unknown model file type '.onnx'"):
        load_model(tmp_path / "m.onnx")
    with pytest.raises(InvalidInputError, match=r"keras\.applications has no model named 'ResNet9'"):
        load_model("ResNet9", input_shape=(32, 32, 3))
    with pytest.raises(InvalidInputError, match="token_grid must be"):
        load_model(DATA / "tfkeras2_gap.h5", token_grid=(0, 3))


def test_application_by_name_keeps_its_input_shape() -> None:
    model = load_model("MobileNetV2", input_shape=(32, 32, 3))
    assert tuple(model.inputs[0].shape[1:]) == (32, 32, 3) and hints_for(model).input_shape == (32, 32, 3)


def _config(folder: Path, **fields: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.h5").write_bytes(b"")
    cfg = {"model_file": "model.h5", "input_shape": [32, 32, 3], **fields}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_repository_token_keys_and_h5(tmp_path: Path) -> None:
    cfg = load_model_config(_config(tmp_path / "vit", token_grid=[4, 4], prefix_tokens=1))
    assert (
        cfg.token_grid == (4, 4)
        and cfg.prefix_tokens == 1
        and cfg.model_path == tmp_path / "vit" / "model.h5"
    )
    assert load_model_config(_config(tmp_path / "plain")).token_grid is None
    for bad, msg in (
        ({"token_grid": [4]}, "token_grid"),
        ({"token_grid": [4, 0]}, "token_grid"),
        ({"prefix_tokens": -1}, "prefix_tokens"),
        ({"prefix_tokens": "1"}, "prefix_tokens"),
    ):
        with pytest.raises(RepositoryError, match=f"field '{msg}'"):
            load_model_config(_config(tmp_path / "bad", **bad))
    folder = tmp_path / "onnx"
    folder.mkdir()
    (folder / "m.onnx").write_bytes(b"")
    (folder / "config.json").write_text(json.dumps({"model_file": "m.onnx", "input_shape": [8, 8, 3]}))
    with pytest.raises(RepositoryError, match=r"'.keras' file or a legacy '.h5' file"):
        load_model_config(folder)


def test_load_model_from_a_repository_config(tmp_path: Path) -> None:
    folder = tmp_path / "vit"
    folder.mkdir()
    zoo.vit_like().save(folder / "model.keras")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_file": "model.keras",
                "input_shape": [32, 32, 3],
                "token_grid": [4, 4],
                "prefix_tokens": 1,
            }
        )
    )
    model = load_model(load_model_config(folder))
    hints = hints_for(model)
    assert hints.input_shape == (32, 32, 3) and hints.token_layout.grid == (4, 4)
    assert hints.token_layout.prefix == 1


def test_tf_nn_activations_reopen(tmp_path: Path) -> None:
    """Keras 3 saves tf.nn.softmax as 'softmax_v2', which keras.saving.load_model alone cannot re-open."""
    import tensorflow as tf

    inp = keras.Input((3, 3, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 1)(inp))
    model = keras.Model(inp, keras.layers.Dense(2, activation=tf.nn.softmax)(x))
    model.save(tmp_path / "m.keras")
    with pytest.raises(TypeError, match="softmax_v2"):
        keras.saving.load_model(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert loaded.layers[-1].activation is tf.nn.softmax
    assert Explainer(loaded, preprocessing="none", max_batch_size=1).info.head_kind == "softmax"


def test_imports_register_custom_classes(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_file": "model.keras", "input_shape": [32, 32, 3], "imports": ["engine.zoo_models", "json"]}))
    zoo.vit_like().save(folder / "model.keras")
    cfg = load_model_config(folder)
    assert cfg.imports == ("engine.zoo_models", "json")
    assert load_model(cfg).get_layer("cls").__class__ is zoo.ClassToken
    with pytest.raises(InvalidInputError, match=r"cannot import module 'no_such_module_xyz'"):
        load_model(folder / "model.keras", imports=["no_such_module_xyz"])
    (folder / "config.json").write_text(json.dumps(
        {"model_file": "model.keras", "input_shape": [32, 32, 3], "imports": ["bad name"]}))
    with pytest.raises(RepositoryError, match="field 'imports'"):
        load_model_config(folder)
