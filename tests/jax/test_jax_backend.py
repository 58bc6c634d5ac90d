"""The engine on Keras-on-JAX: reference checks and cross-backend equality with TensorFlow.

Keras chooses its backend once per process, so the JAX side runs as one subprocess
(``jax_checks.py``, KERAS_BACKEND=jax) and each of its named checks becomes one test here. The
TensorFlow side runs in this process: it builds small models, saves them as ``.keras`` files and
computes the maps with the TF backend; the JAX subprocess loads the same files and computes the same
requests, and the normalised maps must agree within 1e-4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jax_env import JAX_TEST_ENV

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
#: Every check jax_checks.py defines; a check that did not run fails here, not silently.
CHECKS = [
    "keras_runs_on_jax",
    "gradient_methods_match_float64_formula",
    "raw_step_matches_analytic_gradients",
    "probability_score_gradient",
    "cam_matches_formula_and_equals_gradcam",
    "all_zero_maps_flagged_never_nan",
    "set_weights_after_build_is_honoured",
    "nothing_compiles_after_warmup",
    "batch_equals_one_by_one_and_no_recompile",
    "inference_mode_matches_model_predict",
    "preprocessing_inside_the_step",
    "nested_submodel_targets",
    "mixed_precision_models",
    "clear_errors",
    "head_spellings_on_jax",
    "new_model_kinds_on_jax",
    "cross_backend_maps",
]


def _tf_keras() -> Any:
    """Keras in this process, which must be on TensorFlow for the reference side."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.fail(f"the TF side needs Keras on TensorFlow in this process, not {keras.backend.backend()} "
                    "(the suite runs with KERAS_BACKEND unset or tensorflow)", pytrace=False)
    return keras


def _cases(keras: Any) -> list[dict[str, Any]]:
    """(model, inputs, target, requests) for the cross-backend comparison."""
    from engine import zoo_models
    from engine.test_reference import ALL_METHODS, GRADIENT_METHODS
    from jax_models import binary_model, flat_and_nested, flatten_fc_model, small_bn_model

    rng = np.random.default_rng(21)
    pixels = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    _, nested = flat_and_nested()
    return [
        # BatchNorm + Add + Dropout, uint8 pixels preprocessed inside the step, auto target (CAM head)
        dict(name="residual_bn", model=small_bn_model(), x=pixels, target=None, preprocessing="tf",
             methods=ALL_METHODS, classes=[None, 3, None, 5, 0]),
        # a target inside a nested sub-model, float inputs
        dict(name="nested", model=nested, x=rng.normal(size=(4, 12, 12, 3)).astype(np.float32),
             target="base/c1", preprocessing="none", methods=[*GRADIENT_METHODS, "eigencam"],
             classes=[None, 1, 4, None]),
        # a Flatten -> Dense head (no CAM), caffe preprocessing
        dict(name="flatten_fc", model=flatten_fc_model(), x=pixels[:3], target=None, preprocessing="caffe",
             methods=GRADIENT_METHODS, classes=[None, 2, None]),
        # a subclassed model (softmax in call(), outside layers), automatic target
        dict(name="subclassed", model=_called(zoo_models.subclassed(), 32), x=rng.normal(
            size=(3, 32, 32, 3)).astype(np.float32), target=None, preprocessing="none",
             methods=[*GRADIENT_METHODS], classes=[None, 1, 2]),
        # a ViT-like token model: automatic target on the patch grid (class token dropped)
        dict(name="vit_like", model=zoo_models.vit_like(),
             x=rng.normal(size=(3, 32, 32, 3)).astype(np.float32), target=None, preprocessing="none",
             methods=[*GRADIENT_METHODS, "eigencam"], classes=[None, 0, 2]),
        # one sigmoid unit: a binary logit, two classes
        dict(name="binary", model=binary_model(), x=pixels[:3], target=None, preprocessing="tf",
             methods=["cam", *GRADIENT_METHODS], classes=[0, 1, None]),
    ]


def _called(model: Any, size: int) -> Any:
    model(np.zeros((1, size, size, 3), np.float32))  # saved built: the file records its input shape
    return model


@pytest.fixture(scope="module")
def cross(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """Saved .keras files + inputs for the JAX side, and the TensorFlow backend's maps."""
    keras = _tf_keras()
    from camserve.engine import Explainer
    from camserve.records import ItemSpec

    root = tmp_path_factory.mktemp("cross")
    manifest, tf_maps = [], {}
    for case in _cases(keras):
        model = case["model"]
        model.save(root / f"{case['name']}.keras")
        np.save(root / f"{case['name']}.npy", case["x"])
        e = Explainer(model, case["target"], preprocessing=case["preprocessing"], max_batch_size=8)
        for method in case["methods"]:
            res = e.explain_batch(case["x"], [ItemSpec(method, c) for c in case["classes"]])
            key = f"{case['name']}/{method}"
            tf_maps[f"{key}/maps"] = np.stack([m.heatmap for r in res for m in r.maps])
            tf_maps[f"{key}/classes"] = np.array([m.class_index for r in res for m in r.maps])
            tf_maps[f"{key}/probabilities"] = np.stack([r.probabilities for r in res])
        manifest.append({k: case[k] for k in ("name", "target", "preprocessing", "methods", "classes")}
                        | {"file": f"{case['name']}.keras", "inputs": f"{case['name']}.npy"})
    (root / "cases.json").write_text(json.dumps(manifest))
    return root, tf_maps


@pytest.fixture(scope="module")
def jax_results(cross: tuple[Path, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Run every JAX check once in a fresh process with KERAS_BACKEND=jax."""
    root, _ = cross
    out = root / "results.json"
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONUNBUFFERED="1", **JAX_TEST_ENV)
    proc = subprocess.run(
        [sys.executable, str(HERE / "jax_checks.py"), "--out", str(out), "--cross", str(root)],
        capture_output=True, text=True, timeout=480, env=env, cwd=ROOT,
    )
    if not out.is_file():
        tail = proc.stderr[-4000:]
        pytest.fail(f"jax_checks.py wrote no results (exit {proc.returncode}):\n{proc.stdout}\n{tail}")
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", CHECKS)
def test_jax_check(jax_results: dict[str, dict[str, Any]], name: str) -> None:
    assert name in jax_results, f"check {name!r} did not run in the JAX subprocess"
    result = jax_results[name]
    assert result["ok"], result["error"]


def test_every_check_is_listed(jax_results: dict[str, dict[str, Any]]) -> None:
    assert sorted(jax_results) == sorted(CHECKS)


def test_cross_backend_equality(cross: tuple[Path, dict[str, np.ndarray]], jax_results: dict) -> None:
    """The same .keras weights give the same classes, probabilities and maps (1e-4) on both backends."""
    root, tf_maps = cross
    assert jax_results["cross_backend_maps"]["ok"], jax_results["cross_backend_maps"]["error"]
    jx = dict(np.load(root / "jax_maps.npz"))
    assert sorted(jx) == sorted(tf_maps)
    informative = 0
    for key, want in tf_maps.items():
        if key.endswith("/classes"):
            np.testing.assert_array_equal(jx[key], want, err_msg=key)
        elif key.endswith("/probabilities"):
            np.testing.assert_allclose(jx[key], want, atol=1e-5, err_msg=key)
        else:
            assert jx[key].dtype == np.float32
            np.testing.assert_allclose(jx[key], want, atol=1e-4, err_msg=key)
            informative += int(np.count_nonzero(want.reshape(len(want), -1).max(axis=1) > 0))
    assert informative > 50, "too few non-zero maps: the comparison would prove little"
