"""Exact values: every method against a float64 NumPy implementation of its published formula.

The networks are tiny with fixed weights, and the reference computes the activations and the
gradients analytically in float64 (no TensorFlow), so engine and reference cannot agree by accident.
The README's library classes (``GradCAM``, ...) are checked the same way, each against the method it
is named for, and a class wired to another method is shown to be caught.
"""

from __future__ import annotations

import itertools
from typing import Any

import camserve
import keras
import numpy as np
import pytest
from camserve.engine import CamNotSupportedError, Explainer
from camserve.engine.explainer import buckets_for
from camserve.engine.methods import CODES
from camserve.records import ItemSpec

H = W = 5
CIN, C, D, N = 2, 3, 4, 3
RNG = np.random.default_rng(7)
K1 = RNG.normal(size=(3, 3, CIN, C))
B1 = RNG.normal(scale=0.1, size=C)
V = RNG.normal(size=(C, D))
BV = RNG.normal(scale=0.1, size=D)
WD = RNG.normal(size=(D, N))
BD = RNG.normal(scale=0.1, size=N)
WC = RNG.normal(size=(C, N))  # the CAM net's Dense
X = RNG.normal(size=(3, H, W, CIN))
NW = 12  # the "wide" net: the "mix" net with more classes, so that top_k 10 can be asked
WW = RNG.normal(size=(D, NW))
BW = RNG.normal(scale=0.1, size=NW)
#: The methods that differentiate the score (all but CAM, which reads the Dense kernel, and Eigen-CAM).
GRADIENT_METHODS = ["gradcam", "gradcam++", "layercam", "hirescam", "xgradcam"]
ALL_METHODS = ["cam", *GRADIENT_METHODS, "eigencam"]


def _conv_net(head: str) -> keras.Model:
    inp = keras.Input((H, W, CIN))
    a = keras.layers.Conv2D(C, 3, padding="same", activation="relu", name="target")(inp)
    if head in ("mix", "wide"):
        a = keras.layers.Conv2D(D, 1, activation="relu", name="mix")(a)
        g = keras.layers.GlobalAveragePooling2D()(a)
        out = keras.layers.Dense(NW if head == "wide" else N, activation="softmax", name="out")(g)
    else:
        g = keras.layers.GlobalAveragePooling2D()(a)
        out = keras.layers.Dense(N, activation="softmax", name="out")(g)
    model = keras.Model(inp, out)
    model.get_layer("target").set_weights([K1, B1])
    if head in ("mix", "wide"):
        model.get_layer("mix").set_weights([V[None, None], BV])
        model.get_layer("out").set_weights([WW, BW] if head == "wide" else [WD, BD])
    else:
        model.get_layer("out").set_weights([WC, BD])
    return model


def ref_forward(x: np.ndarray, head: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 activations A (B,h,w,C), logits (B,N) and d logits / d A (B,N,h,w,C)."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    pre = np.zeros((x.shape[0], H, W, C))
    for i in range(H):
        for j in range(W):
            pre[:, i, j, :] = np.einsum("bxyc,xycd->bd", xp[:, i : i + 3, j : j + 3, :], K1) + B1
    a = np.maximum(pre, 0.0)
    if head in ("mix", "wide"):
        wd, bd = (WW, BW) if head == "wide" else (WD, BD)
        zpre = a @ V + BV
        z = np.maximum(zpre, 0.0)
        logits = z.mean(axis=(1, 2)) @ wd + bd
        # d logit_k / d A[i,j,c] = sum_d WD[d,k] 1[zpre>0] V[c,d] / (h w)
        grad = np.einsum("dk,bijd,cd->bkijc", wd, (zpre > 0).astype(float), V) / (H * W)
    else:
        logits = a.mean(axis=(1, 2)) @ WC + BD
        grad = np.broadcast_to(WC.T[None, :, None, None, :], (x.shape[0], N, H, W, C)) / (H * W)
    return a, logits, np.array(grad)


def ref_normalise(s: np.ndarray) -> np.ndarray:
    s = np.maximum(s, 0.0)
    return (s - s.min()) / (s.max() - s.min())


def ref_map(method: str, a: np.ndarray, g: np.ndarray, kernel_col: np.ndarray | None = None) -> np.ndarray:
    """One image's normalised map from the published formula, written out channel by channel."""
    maps = np.zeros((H, W))
    if method == "eigencam":
        m = a.reshape(-1, C)
        centred = m - m.mean(axis=0)
        v = np.linalg.svd(centred)[2][0]
        v = v if m.mean(axis=0) @ v >= 0 else -v
        return ref_normalise((centred @ v).reshape(H, W))
    for c in range(C):
        ac = a[..., c]
        gc = g[..., c] if g is not None else None
        if method == "gradcam":
            maps += gc.mean() * ac
        elif method == "hirescam":
            maps += gc * ac
        elif method == "layercam":
            maps += np.maximum(gc, 0) * ac
        elif method == "xgradcam":
            maps += (gc * ac).sum() / (ac.sum() + 1e-7) * ac
        elif method == "gradcam++":
            alpha = gc**2 / (2 * gc**2 + ac.sum() * gc**3 + 1e-6)
            alpha = np.where(gc != 0, alpha, 0.0)
            maps += (alpha * np.maximum(gc, 0)).sum() * ac
        elif method == "cam":
            maps += kernel_col[c] * ac
    return ref_normalise(maps)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---- the engine's checks, for any backend (tests/jax/jax_checks.py runs them on Keras-on-JAX) -------

def ref_explainer(head: str, backend: str | None = None, **kwargs: Any) -> Explainer:
    """The engine on ``_conv_net(head)``: "mix" with its target named, "cam" with the target left for
    the engine to find (the CAM check asserts it finds ``target``)."""
    return Explainer(_conv_net(head), "target" if head == "mix" else None, preprocessing="none",
                     max_batch_size=4, backend=backend, **kwargs)


def check_method_matches_formula(e: Explainer, method: str) -> None:
    """Top-1 and asked classes on the "mix" net: probabilities, scores and maps equal the float64
    reference of ``method``; maps are float32 and not flagged all-zero."""
    a, logits, grad = ref_forward(X, "mix")
    classes = [2, None, 0]
    res = e.explain_batch(X.astype(np.float32), [ItemSpec(method, c) for c in classes])
    for b, (r, c) in enumerate(zip(res, classes, strict=True)):
        k = int(np.argmax(logits[b])) if c is None else c
        assert r.maps[0].class_index == k, (method, b)
        np.testing.assert_allclose(r.probabilities, softmax(logits[b]), atol=1e-6)
        np.testing.assert_allclose(r.maps[0].score, logits[b, k], atol=1e-5)
        np.testing.assert_allclose(r.maps[0].heatmap, ref_map(method, a[b], grad[b, k]), atol=2e-5,
                                   err_msg=method)
        assert r.maps[0].heatmap.dtype == np.float32 and not r.maps[0].all_zero


def check_step_matches_analytic_gradients(e: Explainer) -> None:
    """The raw compiled step on the "mix" net: float32 activations, gradients and scores equal the
    analytic ones; negative class slots are the top-k in order (int32)."""
    a, logits, grad = ref_forward(X, "mix")
    out = e.step(X.astype(np.float32), np.array([[0, 1], [2, 0], [-1, -2]], np.int32))
    for name in ("probabilities", "scores", "activations", "gradients"):
        assert getattr(out, name).dtype == np.float32, name
    assert out.classes.dtype == np.int32
    np.testing.assert_allclose(out.activations, a, rtol=1e-5, atol=1e-5)
    order = np.argsort(-logits[2])
    np.testing.assert_array_equal(out.classes, [[0, 1], [2, 0], order[:2]])
    for b in range(3):
        for k in range(2):
            np.testing.assert_allclose(out.gradients[b, k], grad[b, out.classes[b, k]], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(out.scores[b, k], logits[b, out.classes[b, k]], rtol=1e-5)
    # Serving's call: raw maps by each image's method, computed on the device from the same tensors;
    # the gradients stay there, and the activations too unless an image asks for Eigen-CAM (host-made).
    targets = np.array([[0, 1], [2, 0], [-1, -2]], np.int32)
    for last, fetched in (("gradcam", False), ("eigencam", True)):
        codes = np.array([CODES["gradcam"], CODES["hirescam"], CODES[last]], np.int32)
        served = e.step(X.astype(np.float32), targets, codes)
        assert served.gradients is None and (served.activations is not None) == fetched, last
        assert served.maps.shape == (3, 2, H, W) and served.maps.dtype == np.float32
        np.testing.assert_array_equal(served.classes, out.classes)
        a32, g32 = out.activations.astype(np.float64), out.gradients.astype(np.float64)
        want = [np.einsum("ijc,kc->kij", a32[0], g32[0].mean(axis=(1, 2))),
                np.einsum("kijc,ijc->kij", g32[1], a32[1])]
        for b in range(2):
            np.testing.assert_allclose(served.maps[b], want[b], rtol=1e-4, atol=1e-5)


def check_probability_score_gradient(e: Explainer) -> None:
    """score="probability": d p_k / d A = p_k (d z_k - sum_j p_j d z_j) (softmax chain rule)."""
    _, logits, grad = ref_forward(X, "mix")
    p = softmax(logits)
    out = e.step(X.astype(np.float32), np.array([[1], [1], [1]], np.int32))
    for b in range(3):
        want = p[b, 1] * (grad[b, 1] - np.einsum("n,nijc->ijc", p[b], grad[b]))
        np.testing.assert_allclose(out.gradients[b, 0], want, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(out.scores[b, 0], p[b, 1], rtol=1e-5)


def check_cam_matches_formula_and_equals_gradcam(e: Explainer) -> None:
    """CAM from the Dense kernel; on GAP -> Dense with logits Grad-CAM = CAM / (h w) after normalising."""
    assert e.info.cam_supported and e.info.target_layer == "target"
    a, logits, _ = ref_forward(X, "cam")
    classes = [0, 1, None]
    xs = X.astype(np.float32)
    cam = e.explain_batch(xs, [ItemSpec("cam", c) for c in classes])
    grad = e.explain_batch(xs, [ItemSpec("gradcam", c) for c in classes])
    for b, c in enumerate(classes):
        k = int(np.argmax(logits[b])) if c is None else c
        want = ref_map("cam", a[b], None, WC[:, k])
        np.testing.assert_allclose(cam[b].maps[0].heatmap, want, atol=2e-5)
        np.testing.assert_allclose(cam[b].maps[0].heatmap, grad[b].maps[0].heatmap, atol=1e-5)


def check_all_zero_maps_flagged_never_nan(backend: str | None = None) -> None:
    """A net whose target output is zero everywhere gives zero maps flagged all_zero, not NaN."""
    model = _conv_net("cam")
    model.get_layer("target").set_weights([np.zeros_like(K1), -np.ones_like(B1)])  # ReLU(-1) = 0
    e = Explainer(model, preprocessing="none", max_batch_size=2, backend=backend)
    for method in ALL_METHODS:
        r = e.explain_batch(X[:1].astype(np.float32), [ItemSpec(method)])[0]
        assert r.maps[0].all_zero, method
        assert np.array_equal(r.maps[0].heatmap, np.zeros((H, W), np.float32)), method


def check_nothing_compiles_after_warmup(backend: str | None = None, compile_mode: str = "auto") -> None:
    """After ``warmup()`` every request the server accepts reuses a compiled step, and its maps are
    the float64 reference of each class asked (as if computed one K at a time): every batch size up
    to the largest bucket, uint8 pixels (preprocessed in the step) and float32 tensors, items asking
    top_k 1, 3 and 10 and a class index mixed in one batch, and alone."""
    e = Explainer(_conv_net("wide"), "target", preprocessing="tf", max_batch_size=4, backend=backend,
                  compile_mode=compile_mode)
    e.warmup()
    count = e.step.trace_count()
    pixels = np.random.default_rng(3).integers(0, 256, (4, H, W, CIN), dtype=np.uint8)
    # float32 input as tf preprocessing gives it, in [-1, 1] (values beyond are refused, not explained)
    tensors = np.clip(np.concatenate([X, X[:1] * -0.5]), -1, 1).astype(np.float32)
    asks = [ItemSpec("hirescam", top_k=3), ItemSpec("gradcam", class_index=7),
            ItemSpec("hirescam", top_k=10), ItemSpec("gradcam", top_k=1)]
    for images, model_input in ((pixels, pixels / 127.5 - 1.0), (tensors, tensors.astype(np.float64))):
        a, logits, grad = ref_forward(model_input, "wide")
        for size in range(1, e.max_batch_size + 1):
            batches = [asks[:size]] + [[s] * size for s in asks]  # mixed K in one batch, then each alone
            for specs in batches:
                results = e.explain_batch(images[:size], specs)
                for b, (r, spec) in enumerate(zip(results, specs, strict=True)):
                    order = np.argsort(-logits[b], kind="stable")
                    want = [spec.class_index] if spec.class_index is not None else list(order[: spec.top_k])
                    assert [m.class_index for m in r.maps] == want, (size, spec)
                    for m in r.maps:
                        with np.errstate(invalid="ignore"):
                            ref = ref_map(spec.method, a[b], grad[b, m.class_index])
                        if np.isnan(ref).all():  # no contrast: the engine flags it instead of NaN
                            assert m.all_zero and not m.heatmap.any(), (size, spec)
                            continue
                        np.testing.assert_allclose(m.heatmap, ref, atol=2e-5, err_msg=f"{size} {spec}")
                        np.testing.assert_allclose(m.score, logits[b, m.class_index], rtol=1e-4, atol=1e-5)
    assert e.step.trace_count() == count, "a request compiled after warm-up"


@pytest.mark.parametrize("mode", ["graph", "xla"])
def test_nothing_compiles_after_warmup(mode: str) -> None:
    check_nothing_compiles_after_warmup(compile_mode=mode)


@pytest.fixture(scope="module")
def mix_explainer() -> Explainer:
    return ref_explainer("mix")


@pytest.mark.parametrize("method", [*GRADIENT_METHODS, "eigencam"])
def test_gradient_methods_match_float64_formula(mix_explainer: Explainer, method: str) -> None:
    check_method_matches_formula(mix_explainer, method)


def test_raw_step_matches_analytic_gradients(mix_explainer: Explainer) -> None:
    check_step_matches_analytic_gradients(mix_explainer)


def test_probability_score_gradient() -> None:
    check_probability_score_gradient(ref_explainer("mix", score="probability"))


def test_cam_matches_formula_and_equals_gradcam() -> None:
    check_cam_matches_formula_and_equals_gradcam(ref_explainer("cam"))


def test_normalise_all_zero_flag_never_nan() -> None:
    check_all_zero_maps_flagged_never_nan()


def test_buckets() -> None:
    assert buckets_for(1) == [1]
    assert buckets_for(32) == [1, 2, 4, 8, 16, 32]
    assert buckets_for(24) == [1, 2, 4, 8, 16, 24]


# ---- the library classes (README): each one's maps are its own method's float64 reference ----------

#: Each class's published method, written out here, independently of the classes' own ``method``.
LIBRARY = {"CAM": "cam", "GradCAM": "gradcam", "GradCAMPlusPlus": "gradcam++", "LayerCAM": "layercam",
           "HiResCAM": "hirescam", "XGradCAM": "xgradcam", "EigenCAM": "eigencam"}
ASKED = [2, None, 0]  # class indices: None = that image's top-1
ATOL = 2e-5


def reference_maps(method: str) -> np.ndarray:
    """(3, H, W) float64 maps of ``method`` for X and ASKED: CAM on the GAP -> Dense net (the only kind
    it explains), every other method on the net with a 1x1 conv between target and GAP."""
    head = "cam" if method == "cam" else "mix"
    a, logits, grad = ref_forward(X, head)
    maps = []
    for b, c in enumerate(ASKED):
        k = int(np.argmax(logits[b])) if c is None else c
        maps.append(ref_map(method, a[b], grad[b, k], WC[:, k] if method == "cam" else None))
    return np.stack(maps)


def check_library_class(cls: type, method: str) -> None:
    """AssertionError unless ``cls`` computes ``method``: its maps equal the method's reference, and a
    CAM class refuses a layer CAM cannot explain (on GAP -> Dense, Grad-CAM's map equals CAM's)."""
    head = "cam" if method == "cam" else "mix"
    try:
        got = cls(_conv_net(head), target_layer="target").compute_heatmaps(X.astype(np.float32), ASKED)
    except CamNotSupportedError as exc:
        raise AssertionError(f"{cls.__name__} refused a {head} net: {exc}") from exc
    np.testing.assert_allclose(got, reference_maps(method), atol=ATOL, err_msg=f"{cls.__name__} vs {method}")
    if method == "cam":
        try:
            cls(_conv_net("mix"), target_layer="target")
        except CamNotSupportedError:
            return
        raise AssertionError(f"{cls.__name__} accepted a target CAM cannot explain: it is not CAM")


def test_the_reference_tells_every_method_apart() -> None:
    """On these nets no two methods' maps are within the tolerance of each other (so a class wired to
    any other method fails check_library_class); CAM is told from the rest by its refusal."""
    maps = {m: reference_maps(m) for m in LIBRARY.values() if m != "cam"}
    for m1, m2 in itertools.combinations(maps, 2):
        assert np.abs(maps[m1] - maps[m2]).max() > 100 * ATOL, (m1, m2)


@pytest.mark.parametrize("name", list(LIBRARY))
def test_library_class_equals_its_methods_reference(name: str) -> None:
    check_library_class(getattr(camserve, name), LIBRARY[name])


# A class wired to another method, once per way the check catches it (the reference test above shows
# every other pair of methods differs as the first one does): different maps; CAM wired to Grad-CAM,
# whose map on GAP -> Dense is CAM's (caught by the refusal); a class wired to CAM (refused).
MISWIRED = {"GradCAM": "gradcam++", "CAM": "gradcam", "EigenCAM": "cam"}


@pytest.fixture(params=list(MISWIRED))
def miswired(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[type, str]:
    """A library class wired to another method (its ``method`` replaced), and the method it should run."""
    cls = getattr(camserve, request.param)
    monkeypatch.setattr(cls, "method", MISWIRED[request.param])
    return cls, LIBRARY[request.param]


def test_a_library_class_wired_to_another_method_is_caught(miswired: tuple[type, str]) -> None:
    cls, method = miswired
    assert cls.method != method
    with pytest.raises(AssertionError):
        check_library_class(cls, method)
