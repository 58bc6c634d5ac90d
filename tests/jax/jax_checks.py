"""The engine's checks on Keras-on-JAX, run as a script in a fresh process (KERAS_BACKEND=jax).

Why a script: Keras picks its backend once, at first import, and the pytest process has already
imported Keras on TensorFlow. ``test_jax_backend.py`` runs this file once per session and turns
each named check into one pytest result. The references are independent of the code under test:
the engine's float64 NumPy formulas (``tests/engine/test_reference.py``), analytic gradients, the
flat twin of a nested model, and maps computed by the TensorFlow backend in the parent process.

usage: python tests/jax/jax_checks.py --out results.json [--cross DIR] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

if "keras" in sys.modules:  # pragma: no cover - only when imported by mistake from a Keras process
    raise RuntimeError("jax_checks must run in a fresh process (Keras already imported)")
os.environ["KERAS_BACKEND"] = "jax"
# TensorFlow as the GPU machines have it: absent (a None entry makes every import of it fail). Else
# keras.utils.set_random_seed, which the model builders call, imports it to seed it too (~8 CPU-s for
# nothing on JAX), and an import of it on the JAX path would go unseen after that.
sys.modules["tensorflow"] = None  # type: ignore[assignment]
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")  # cheaper initializer compiles: jax_env.py
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TESTS = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(TESTS), str(Path(__file__).resolve().parent)]  # ``engine`` package, ``jax_models``

import keras  # noqa: E402
import numpy as np  # noqa: E402
from camserve.engine import (  # noqa: E402
    CamNotSupportedError,
    Explainer,
    GradCAM,
    InvalidInputError,
)
from camserve.engine.preprocess import preprocess_numpy  # noqa: E402
from camserve.records import ItemSpec  # noqa: E402
from engine import test_reference as ref  # noqa: E402
from engine.test_reference import ALL_METHODS, GRADIENT_METHODS  # noqa: E402
from jax_models import flat_and_nested, policy_copy, small_bn_model, small_gap_model  # noqa: E402

CHECKS: dict[str, Callable[[argparse.Namespace], None]] = {}


def check(fn: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
    """Register a check under its function name."""
    CHECKS[fn.__name__] = fn
    return fn


def _maps(results: list[Any]) -> np.ndarray:
    return np.stack([m.heatmap for r in results for m in r.maps])


_SHARED: dict[str, Any] = {}


def shared(name: str, build: Callable[[], Any]) -> Any:
    """``build()`` once per process, for the checks that only read what it builds (an Explainer: one
    recording and one compile per bucket, not one per check)."""
    if name not in _SHARED:
        _SHARED[name] = build()
    return _SHARED[name]


def bn_plain() -> tuple[Any, Explainer]:
    """``small_bn_model()`` and its Explainer (preprocessing 'none', buckets 1, 2, 4)."""
    def build() -> tuple[Any, Explainer]:
        model = small_bn_model()
        return model, Explainer(model, preprocessing="none", max_batch_size=4, backend="jax")

    return shared("bn_plain", build)


def mix_explainer() -> Explainer:
    """The engine on the reference "mix" net (``test_reference.ref_explainer``), on JAX."""
    return shared("mix", lambda: ref.ref_explainer("mix", backend="jax"))


# ---- the engine's float64 references, on JAX ------------------------------------------------------
@check
def keras_runs_on_jax(_: argparse.Namespace) -> None:
    assert keras.backend.backend() == "jax", keras.backend.backend()
    assert sys.modules["tensorflow"] is None, "the JAX path imported TensorFlow"


@check
def gradient_methods_match_float64_formula(_: argparse.Namespace) -> None:
    e = mix_explainer()
    assert e.info.backend == "jax" and e.info.compile_mode == "xla"
    for method in [*GRADIENT_METHODS, "eigencam"]:
        ref.check_method_matches_formula(e, method)


@check
def raw_step_matches_analytic_gradients(_: argparse.Namespace) -> None:
    ref.check_step_matches_analytic_gradients(mix_explainer())


@check
def probability_score_gradient(_: argparse.Namespace) -> None:
    ref.check_probability_score_gradient(ref.ref_explainer("mix", backend="jax", score="probability"))


@check
def cam_matches_formula_and_equals_gradcam(_: argparse.Namespace) -> None:
    ref.check_cam_matches_formula_and_equals_gradcam(ref.ref_explainer("cam", backend="jax"))


@check
def all_zero_maps_flagged_never_nan(_: argparse.Namespace) -> None:
    ref.check_all_zero_maps_flagged_never_nan(backend="jax")


@check
def set_weights_after_build_is_honoured(_: argparse.Namespace) -> None:
    """Variables are jit arguments, not constants: new weights change the next call's result."""
    model = ref._conv_net("mix")
    e = Explainer(model, "target", preprocessing="none", max_batch_size=4, backend="jax")
    x = ref.X.astype(np.float32)
    before = e.step(x, np.array([[0]] * 3, np.int32))
    model.get_layer("target").set_weights([2.0 * ref.K1, 2.0 * ref.B1])
    after = e.step(x, np.array([[0]] * 3, np.int32))
    np.testing.assert_allclose(after.activations, 2.0 * before.activations, rtol=1e-5, atol=1e-5)
    assert e.step.trace_count() == 1  # the step, once


# ---- batching, compilation, preprocessing -----------------------------------------------------------
@check
def nothing_compiles_after_warmup(_: argparse.Namespace) -> None:
    """Every batch size, top_k 1/3/10, class indices, uint8 and float32: no compile, reference maps."""
    ref.check_nothing_compiles_after_warmup(backend="jax")


@check
def batch_equals_one_by_one_and_no_recompile(_: argparse.Namespace) -> None:
    e = Explainer(small_bn_model(), preprocessing="tf", max_batch_size=6, backend="jax")
    e.warmup()
    count = e.step.trace_count()
    assert count == len(e.buckets) == 4, (count, e.buckets)  # one step for each of 1, 2, 4, 6
    pixels = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    for method in ALL_METHODS:
        specs = [ItemSpec(method, c) for c in (None, 3, None, 5, 0)]
        batch = e.explain_batch(pixels, specs)
        single = [e.explain_batch(pixels[i : i + 1], [specs[i]])[0] for i in range(5)]
        np.testing.assert_allclose(_maps(batch), _maps(single), atol=1e-5, err_msg=method)
    assert e.step.trace_count() == count, "a batch size recompiled after warm-up"
    # top-k: k maps per image, best first, each equal to the map asked for that class directly
    res = e.explain_batch(pixels[:2], [ItemSpec("gradcam", top_k=3)] * 2)
    order = np.argsort(-res[0].probabilities, kind="stable")
    assert [m.class_index for m in res[0].maps] == list(order[:3])
    for m in res[0].maps:
        direct = e.explain_batch(pixels[:1], [ItemSpec("gradcam", class_index=m.class_index)])[0].maps[0]
        np.testing.assert_allclose(m.heatmap, direct.heatmap, atol=1e-5)


@check
def inference_mode_matches_model_predict(_: argparse.Namespace) -> None:
    """BatchNorm uses moving statistics and Dropout is off: probabilities equal model.predict."""
    model, e = bn_plain()
    x = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype(np.float32)
    got = np.stack([r.probabilities for r in e.explain_batch(x, [ItemSpec()] * 4)])
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)


@check
def preprocessing_inside_the_step(_: argparse.Namespace) -> None:
    from keras.applications import imagenet_utils

    model, plain = bn_plain()
    pixels = np.random.default_rng(3).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    for mode in ("tf", "torch", "caffe"):
        outside = imagenet_utils.preprocess_input(pixels.astype(np.float32), mode=mode)
        np.testing.assert_allclose(preprocess_numpy(pixels, mode), outside, atol=1e-4)
        inside = Explainer(model, preprocessing=mode, max_batch_size=4, backend="jax")
        a = inside.explain_batch(pixels, [ItemSpec("gradcam")] * 3)
        b = plain.explain_batch(outside, [ItemSpec("gradcam")] * 3)
        np.testing.assert_allclose(_maps(a), _maps(b), atol=1e-5, err_msg=mode)


@check
def nested_submodel_targets(_: argparse.Namespace) -> None:
    flat, nested = flat_and_nested()
    x = np.random.default_rng(1).normal(size=(3, 12, 12, 3)).astype(np.float32)
    ref_c1 = Explainer(flat, "c1", preprocessing="none", max_batch_size=4, backend="jax")
    for name in ("c1", "base/c1"):
        e = Explainer(nested, name, preprocessing="none", max_batch_size=4, backend="jax")
        assert e.info.target_layer == "base/c1"
        for method in GRADIENT_METHODS:
            got = _maps(e.explain_batch(x, [ItemSpec(method)] * 3))
            want = _maps(ref_c1.explain_batch(x, [ItemSpec(method)] * 3))
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=method)
    auto = Explainer(nested, preprocessing="none", max_batch_size=4, backend="jax")
    assert auto.info.target_layer == "base/c2" and auto.info.cam_supported
    ref_c2 = Explainer(flat, "c2", preprocessing="none", max_batch_size=4, backend="jax")
    for method in ("cam", "gradcam"):
        np.testing.assert_allclose(
            _maps(auto.explain_batch(x, [ItemSpec(method)] * 3)),
            _maps(ref_c2.explain_batch(x, [ItemSpec(method)] * 3)),
            atol=1e-5,
        )


@check
def mixed_precision_models(_: argparse.Namespace) -> None:
    """bf16 / fp16 policies: float32 outputs, finite, maps close to the float32 model's."""
    model = small_gap_model()
    x = np.random.default_rng(2).normal(size=(4, 16, 16, 3)).astype(np.float32)
    full = Explainer(model, preprocessing="none", max_batch_size=4, backend="jax")
    for policy, tol in (("mixed_bfloat16", 0.08), ("mixed_float16", 0.03)):
        half = policy_copy(model, policy)
        assert half.get_layer("target").compute_dtype == policy.split("_")[1]
        e = Explainer(half, preprocessing="none", max_batch_size=4, backend="jax")
        for method in ALL_METHODS:
            ra = e.explain_batch(x, [ItemSpec(method, class_index=1)] * 4)
            rb = full.explain_batch(x, [ItemSpec(method, class_index=1)] * 4)
            ma = _maps(ra)
            assert ma.dtype == np.float32 and np.isfinite(ma).all(), (policy, method)
            np.testing.assert_allclose(ma, _maps(rb), atol=tol, err_msg=f"{policy} {method}")
            assert ra[0].probabilities.dtype == np.float32
            np.testing.assert_allclose(ra[0].probabilities, rb[0].probabilities, atol=2e-2)


@check
def clear_errors(_: argparse.Namespace) -> None:
    model = small_gap_model()
    try:
        Explainer(model, backend="tensorflow")
    except InvalidInputError as exc:
        assert "KERAS_BACKEND" in str(exc), exc
    else:
        raise AssertionError("backend='tensorflow' on Keras-on-JAX was accepted")
    e = Explainer(model, backend=None, preprocessing="none", max_batch_size=2)
    assert e.info.backend == "jax"
    assert e.info.compile_mode == "xla", e.info.compile_mode
    assert GradCAM(model).compute_heatmap(np.zeros((16, 16, 3), np.float32)).dtype == np.float32
    try:
        Explainer(model, preprocessing="none", max_batch_size=1, compile_mode="graph")
    except InvalidInputError as exc:
        assert "jax.jit" in str(exc), exc
    else:
        raise AssertionError("compile_mode='graph' on JAX was accepted")
    flat = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    e2 = Explainer(flat, preprocessing="none", max_batch_size=1, backend="jax")
    try:
        e2.explain_batch(np.zeros((1, 8, 8, 3), np.float32), [ItemSpec("cam")])
    except CamNotSupportedError as exc:
        assert "GlobalAveragePooling2D" in str(exc)
    else:
        raise AssertionError("CAM on a Flatten head was accepted")


# ---- heads and model kinds on JAX (jax.nn functions, subclassed, tokens) ----------------------------
@check
def head_spellings_on_jax(_: argparse.Namespace) -> None:
    """jax.nn.softmax / jax.nn.sigmoid recognised by identity; values computed by hand.

    One GAP feature f = 1 and kernel [[1, -0.75]]: z = (1, -0.75), P(0) = 1 / (1 + e^-1.75) = 0.8519528
    (softmax applied twice would give 0.669); a single sigmoid unit with kernel [[2]] and bias -0.5:
    z = 1.5, P(class 1) = sigmoid(1.5) = 0.8175745, class 0 scores -1.5.
    """
    import jax

    def model(units: int, activation: Any, kernel: list[list[float]], bias: list[float]) -> Any:
        inp = keras.Input((3, 3, 1))
        dense = keras.layers.Dense(units, activation=activation)
        m = keras.Model(inp, dense(keras.layers.GlobalAveragePooling2D()(keras.layers.Identity()(inp))))
        dense.set_weights([np.array(kernel), np.array(bias)])
        return m

    x = np.ones((1, 3, 3, 1), np.float32)
    e = Explainer(model(2, jax.nn.softmax, [[1.0, -0.75]], [0.0, 0.0]), preprocessing="none",
                  max_batch_size=1)
    r = e.explain_batch(x, [ItemSpec("gradcam", class_index=0)])[0]
    assert e.info.head_kind == "softmax" and e.info.score == "logits", e.info.head
    np.testing.assert_allclose(r.probabilities, [0.8519528, 0.1480472], atol=1e-6)
    np.testing.assert_allclose(r.maps[0].score, 1.0, atol=1e-6)
    e = Explainer(model(1, jax.nn.sigmoid, [[2.0]], [-0.5]), preprocessing="none", max_batch_size=1)
    assert e.info.head_kind == "binary" and e.num_classes == 2, e.info.head
    r = e.explain_batch(x, [ItemSpec("gradcam", class_index=0)])[0]
    np.testing.assert_allclose(r.probabilities, [1 - 0.8175745, 0.8175745], atol=1e-6)
    np.testing.assert_allclose(r.maps[0].score, -1.5, atol=1e-6)


@check
def new_model_kinds_on_jax(_: argparse.Namespace) -> None:
    """A never-called subclassed model and a token model get the same targets as on TensorFlow."""
    from engine import zoo_models

    # One bucket: what this proves (no trace after warm-up) is the bucket the call uses, not bucketing
    # (batch_equals_one_by_one_and_no_recompile and nothing_compiles_after_warmup prove that).
    e = Explainer(zoo_models.subclassed(), preprocessing="none", max_batch_size=1, input_shape=(32, 32, 3))
    assert e.info.target_layer == "conv2" and e.info.grid == (16, 16), e.info.target_reason
    e.warmup()
    count = e.step.trace_count()
    e.explain_batch(np.zeros((1, 32, 32, 3), np.float32), [ItemSpec("gradcam")])
    assert e.step.trace_count() == count
    v = Explainer(zoo_models.vit_like(), preprocessing="none", max_batch_size=1)
    assert v.info.target_layer == "b1_norm1" and v.info.target_kind == "tokens", v.info.target_reason
    heat = v.explain_batch(np.ones((1, 32, 32, 3), np.float32), [ItemSpec("gradcam")])[0].maps[0].heatmap
    assert heat.shape == (4, 4)


# ---- cross-backend equality (maps computed by TensorFlow in the parent process) --------------------
@check
def cross_backend_maps(args: argparse.Namespace) -> None:
    """Load the .keras files TensorFlow saved, compute the same requests, write the maps back."""
    if args.cross is None:
        raise AssertionError("no --cross folder given")
    root = Path(args.cross)
    cases = json.loads((root / "cases.json").read_text())
    out: dict[str, np.ndarray] = {}
    for case in cases:
        model = keras.saving.load_model(root / case["file"], compile=False)
        x = np.load(root / case["inputs"])
        e = Explainer(
            model, case["target"], preprocessing=case["preprocessing"], max_batch_size=8, backend="jax"
        )
        for method in case["methods"]:
            specs = [ItemSpec(method, c) for c in case["classes"]]
            res = e.explain_batch(x, specs)
            out[f"{case['name']}/{method}/maps"] = _maps(res)
            out[f"{case['name']}/{method}/classes"] = np.array([m.class_index for r in res for m in r.maps])
            out[f"{case['name']}/{method}/probabilities"] = np.stack([r.probabilities for r in res])
    np.savez(root / "jax_maps.npz", **out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file: {check: {ok, error, seconds}}")
    parser.add_argument("--cross", default=None, help="folder written by the TensorFlow side")
    parser.add_argument("--only", nargs="*", default=None, help="run only these checks")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    for name, fn in CHECKS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        error = ""
        try:
            fn(args)
        except Exception:
            error = traceback.format_exc()
        seconds = time.perf_counter() - t0
        results[name] = {"ok": not error, "error": error, "seconds": seconds}
        print(f"{'FAIL' if error else 'PASS'} {name} ({seconds:.1f} s)", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
