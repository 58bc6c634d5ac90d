"""Output heads by what they compute: one test per spelling, each against values computed by hand.

Every model is the same fixed-weight network, conv (2x2, 3 channels) -> GlobalAveragePooling2D ->
Dense(units) with the head spelled differently after it. The expected numbers come from NumPy in
float64 on the same weights: the conv by explicit patch sums, logits z = mean(A) @ W + b, then the
probabilities and scores the head's convention defines, and Grad-CAM from the analytic gradient
d score_k / d A_ijc = sum_u (d score_k / d z_u) W[c, u] / (h*w). Nothing here runs the engine's
head code to make its own expectation.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from camserve.engine import Explainer
from camserve.records import ItemSpec

from engine.test_model_kinds import ConvGapDense

RNG = np.random.default_rng(7)
CONV_K = RNG.normal(size=(2, 2, 1, 3))
CONV_B = RNG.normal(size=3) * 0.1
X = RNG.normal(size=(2, 4, 4, 1)).astype(np.float32)


def _weights(units: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(100 + units)
    return r.normal(size=(3, units)) * 1.5, r.normal(size=units) * 0.5


def _conv_np(x: np.ndarray) -> np.ndarray:
    a = np.zeros((x.shape[0], 3, 3, 3))
    for i in range(3):
        for j in range(3):
            a[:, i, j] = np.einsum("bhwc,hwcd->bd", x[:, i : i + 2, j : j + 2].astype(np.float64), CONV_K)
    return a + CONV_B


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _norm(m: np.ndarray) -> np.ndarray:
    m = np.maximum(m, 0.0)
    rng = m.max() - m.min()
    return np.zeros_like(m) if rng <= 1e-6 * m.max() else (m - m.min()) / rng


# expectation per convention: z (units,) -> (probabilities, scores, d score / d z) over the classes
def _softmax_logits(z):
    return _softmax(z), z, np.eye(len(z))


def _softmax_prob(z):
    p = _softmax(z)
    return p, p, p[:, None] * (np.eye(len(z)) - p[None, :])


def _multilabel(z):
    return _sig(z), z, np.eye(len(z))


def _binary(z):
    p = _sig(z[0])
    return np.array([1 - p, p]), np.array([-z[0], z[0]]), np.array([[-1.0], [1.0]])


def _squared_prob(z):
    p = _softmax(z)
    dp = p[:, None] * (np.eye(len(z)) - p[None, :])
    return p * p, p * p, 2 * p[:, None] * dp


def _base(
    units: int, activation=None, dtype=None
) -> tuple[keras.KerasTensor, keras.KerasTensor, keras.layers.Dense]:
    inp = keras.Input((4, 4, 1))
    conv = keras.layers.Conv2D(3, 2, name="conv")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(conv(inp))
    dense = keras.layers.Dense(units, activation=activation, name="head", dtype=dtype)
    out = dense(x)
    conv.set_weights([CONV_K, CONV_B])
    dense.set_weights(list(_weights(units)))
    return inp, out, dense


def _model(units: int, activation=None, tail=(), dtype=None) -> keras.Model:
    inp, out, _ = _base(units, activation, dtype)
    for layer in tail:
        out = layer(out)
    return keras.Model(inp, out)


def my_softmax(t):
    """A softmax no table knows: found by comparing values."""
    e = keras.ops.exp(t - keras.ops.max(t, axis=-1, keepdims=True))
    return e / keras.ops.sum(e, axis=-1, keepdims=True)


class SubclassedHead(ConvGapDense):
    """tf.nn.softmax applied in call(), outside any layer."""

    conv_size = 2

    def call(self, x):
        return tf.nn.softmax(self.head(self.gap(self.conv(x))))


class TupleHead(SubclassedHead):
    """Logits returned alone in a tuple (as ``return logits, features`` models do, minus the rest)."""

    def call(self, x):
        return (self.head(self.gap(self.conv(x))),)


def _subclassed(cls: type[ConvGapDense] = SubclassedHead) -> keras.Model:
    m = cls()
    m(X)
    m.conv.set_weights([CONV_K, CONV_B])
    m.head.set_weights(list(_weights(2)))
    return m


def _mixed() -> keras.Model:
    inp, out, _ = _base(3, None, dtype="mixed_float16")
    return keras.Model(inp, keras.layers.Activation("softmax", dtype="float32", name="act")(out))


CASES = {
    # name: (model factory, units, head_kind, effective score, expectation, score option)
    "dense_softmax_string": (lambda: _model(3, "softmax"), 3, "softmax", "logits", _softmax_logits, "logits"),
    "dense_keras_activations": (
        lambda: _model(3, keras.activations.softmax),
        3,
        "softmax",
        "logits",
        _softmax_logits,
        "logits",
    ),
    "dense_keras_ops": (
        lambda: _model(3, keras.ops.softmax),
        3,
        "softmax",
        "logits",
        _softmax_logits,
        "logits",
    ),
    "dense_tf_nn": (lambda: _model(2, tf.nn.softmax), 2, "softmax", "logits", _softmax_logits, "logits"),
    "dense_tf_math": (lambda: _model(2, tf.math.softmax), 2, "softmax", "logits", _softmax_logits, "logits"),
    "dense_tf_log_softmax": (
        lambda: _model(3, tf.nn.log_softmax),
        3,
        "softmax",
        "logits",
        _softmax_logits,
        "logits",
    ),
    "activation_string": (
        lambda: _model(3, tail=[keras.layers.Activation("softmax")]),
        3,
        "softmax",
        "logits",
        _softmax_logits,
        "logits",
    ),
    "activation_tf_nn": (
        lambda: _model(2, tail=[keras.layers.Activation(tf.nn.softmax)]),
        2,
        "softmax",
        "logits",
        _softmax_logits,
        "logits",
    ),
    "softmax_layer": (
        lambda: _model(3, tail=[keras.layers.Softmax()]),
        3,
        "softmax",
        "logits",
        _softmax_logits,
        "logits",
    ),
    "ops_node": (
        lambda: _model(3, tail=[keras.ops.softmax]),
        3,
        "softmax",
        "logits",
        _softmax_logits,
        "logits",
    ),
    "lambda_tf_nn": (
        lambda: _model(3, tail=[keras.layers.Lambda(tf.nn.softmax)]),
        3,
        "softmax",
        "logits",
        _softmax_logits,
        "logits",
    ),
    "custom_function": (
        lambda: _model(3, tail=[keras.layers.Activation(my_softmax)]),
        3,
        "softmax",
        "logits",
        _softmax_logits,
        "logits",
    ),
    "pass_throughs_after": (
        lambda: _model(
            3,
            "softmax",
            tail=[
                keras.layers.Dropout(0.5),
                keras.layers.Reshape((3,)),
                lambda t: keras.ops.cast(t, "float32"),
                keras.layers.Activation("linear", dtype="float32"),
            ],
        ),
        3,
        "softmax",
        "logits",
        _softmax_logits,
        "logits",
    ),
    "softmax_on_singleton_axis": (
        lambda: _model(
            3, tail=[keras.layers.Reshape((1, 3)), keras.layers.Softmax(), keras.layers.Flatten()]
        ),
        3,
        "softmax",
        "logits",
        _softmax_logits,
        "logits",
    ),
    # fully convolutional heads end (batch, 1, 1, classes) when nothing flattens them
    "output_batch_1_1_classes": (
        lambda: _model(3, "softmax", tail=[keras.layers.Reshape((1, 1, 3))]),
        3,
        "softmax",
        "logits",
        _softmax_logits,
        "logits",
    ),
    "binary_output_batch_1_1_1": (
        lambda: _model(1, tail=[keras.layers.Reshape((1, 1, 1)), keras.layers.Activation("sigmoid")]),
        1,
        "binary",
        "logits",
        _binary,
        "logits",
    ),
    "subclassed_tf_nn_outside_layers": (_subclassed, 2, "softmax", "logits", _softmax_logits, "logits"),
    "mixed_precision_float32_softmax": (_mixed, 3, "softmax", "logits", _softmax_logits, "logits"),
    "probability_score_option": (
        lambda: _model(2, tf.nn.softmax),
        2,
        "softmax",
        "probability",
        _softmax_prob,
        "probability",
    ),
    "no_activation_is_logits": (lambda: _model(3), 3, "softmax", "logits", _softmax_logits, "logits"),
    # the one output in a container: a Functional's outputs={"name": z}, a subclassed return (z,)
    "logits_in_a_dict": (
        lambda: _model(3, tail=[lambda t: {"logits": t}]),
        3,
        "softmax",
        "logits",
        _softmax_logits,
        "logits",
    ),
    "subclassed_logits_in_a_tuple": (
        lambda: _subclassed(TupleHead), 2, "softmax", "logits", _softmax_logits, "logits"
    ),
    "sigmoid_multilabel": (lambda: _model(3, "sigmoid"), 3, "sigmoid", "logits", _multilabel, "logits"),
    "sigmoid_tf_nn_layer": (
        lambda: _model(3, tail=[keras.layers.Activation(tf.nn.sigmoid)]),
        3,
        "sigmoid",
        "logits",
        _multilabel,
        "logits",
    ),
    "sigmoid_keras_ops": (
        lambda: _model(3, keras.ops.sigmoid),
        3,
        "sigmoid",
        "logits",
        _multilabel,
        "logits",
    ),
    "binary_sigmoid": (lambda: _model(1, "sigmoid"), 1, "binary", "logits", _binary, "logits"),
    "binary_logit": (lambda: _model(1), 1, "binary", "logits", _binary, "logits"),
    "binary_tf_nn_then_reshape": (
        lambda: _model(1, tf.nn.sigmoid, tail=[keras.layers.Reshape((1,))]),
        1,
        "binary",
        "logits",
        _binary,
        "logits",
    ),
    "not_invertible": (
        lambda: _model(3, "softmax", tail=[keras.layers.Lambda(lambda p: p * p)]),
        3,
        "probability",
        "probability",
        _squared_prob,
        "logits",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_head_spelling(name: str) -> None:
    factory, units, kind, effective, expect, score = CASES[name]
    model = factory()
    e = Explainer(model, preprocessing="none", max_batch_size=2, score=score)
    info = e.info
    assert info.head_kind == kind, info.head
    assert info.score == effective and info.target_layer == "conv" and info.grid == (3, 3)
    a = _conv_np(X)
    w, b = _weights(units)
    z = a.mean(axis=(1, 2)) @ w + b
    loose = name.startswith("mixed")
    classes = 2 if units == 1 else units
    assert e.num_classes == classes
    for k in range(classes):
        res = e.explain_batch(X, [ItemSpec("gradcam", class_index=k)] * 2)
        for i in range(2):
            probs, scores, jac = expect(z[i])
            np.testing.assert_allclose(res[i].probabilities, probs, rtol=1e-2 if loose else 1e-5, atol=1e-6)
            np.testing.assert_allclose(
                res[i].maps[0].score, scores[k], rtol=1e-2 if loose else 1e-5, atol=1e-6
            )
            grad_c = jac[k] @ w.T / 9.0  # (C,) the same at every position: GAP then Dense
            want = _norm(np.einsum("ijc,c->ij", a[i], grad_c))
            np.testing.assert_allclose(
                res[i].maps[0].heatmap, want, atol=2e-2 if loose else 1e-4, err_msg=name
            )
    if kind != "probability":
        assert e.info.cam_supported, e.info.cam_reason
        cam = e.explain_batch(X, [ItemSpec("cam", class_index=classes - 1)] * 2)
        gc = e.explain_batch(X, [ItemSpec("gradcam", class_index=classes - 1)] * 2)
        if effective == "logits":  # on logits, CAM == Grad-CAM after normalisation
            np.testing.assert_allclose(
                cam[0].maps[0].heatmap, gc[0].maps[0].heatmap, atol=2e-2 if loose else 1e-5
            )
    else:
        assert not e.info.cam_supported and "cannot be turned back into logits" in e.info.cam_reason
        assert "cannot be turned back into logits" in e.info.head


def test_issue_reproduction_tf_nn_softmax_dense() -> None:
    """Dense(2, activation=tf.nn.softmax): its own probabilities (0.852, not 0.669) and a logit map.

    Hand-computed: one feature f = 1 (GAP of a constant 1 map), kernel [[1, -0.75]], bias 0, so
    z = (1, -0.75) and P(class 0) = 1 / (1 + e^-1.75) = 0.8519528. Softmaxing that twice would give
    1 / (1 + e^-(0.8519528 - 0.1480472)) = 0.6690.
    """
    inp = keras.Input((3, 3, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Identity(name="features")(inp))
    dense = keras.layers.Dense(2, activation=tf.nn.softmax, name="probs")
    model = keras.Model(inp, dense(x))
    dense.set_weights([np.array([[1.0, -0.75]]), np.zeros(2)])
    image = np.ones((1, 3, 3, 1), np.float32)
    image[0, 0, 0, 0] = 4.0  # the map must point here; f = 12/9 then, so recompute z by hand below
    e = Explainer(model, preprocessing="none", max_batch_size=1)
    f = 12.0 / 9.0
    z = np.array([f * 1.0, f * -0.75])
    p0 = 1.0 / (1.0 + np.exp(-(z[0] - z[1])))
    res = e.explain_batch(image, [ItemSpec("gradcam", class_index=0)])[0]
    assert res.probabilities[0] == pytest.approx(p0, abs=1e-6)
    assert res.maps[0].score == pytest.approx(z[0], abs=1e-6)  # the logit, not a probability
    assert e.info.score == "logits" and e.info.head_kind == "softmax"
    assert "Dense 'probs'" in e.info.head
    # a logit map: Grad-CAM of z0 = ReLU(sum_c (W_c0 / 9) A_c) = the image itself, normalised
    want = (image[0, ..., 0] - 1.0) / 3.0
    np.testing.assert_allclose(res.maps[0].heatmap, want, atol=1e-6)
    # with f = 1 exactly: the issue's numbers
    res1 = e.explain_batch(np.ones((1, 3, 3, 1), np.float32), [ItemSpec("gradcam", class_index=0)])[0]
    assert res1.probabilities[0] == pytest.approx(0.8519528, abs=1e-6)


def test_binary_class_maps_are_opposite() -> None:
    """One unit: class 0's Grad-CAM is the negative of class 1's before the ReLU."""
    e = Explainer(_model(1, "sigmoid"), preprocessing="none", max_batch_size=2)
    a = _conv_np(X)
    w, _ = _weights(1)
    for k, sign in ((0, -1.0), (1, 1.0)):
        res = e.explain_batch(X, [ItemSpec("gradcam", class_index=k)] * 2)
        want = _norm(np.einsum("ijc,c->ij", a[0], sign * w[:, 0] / 9.0))
        np.testing.assert_allclose(res[0].maps[0].heatmap, want, atol=1e-4)
    assert "class 0 scores -z" in e.info.head


def test_softmax_over_one_unit_is_explained_on_probability() -> None:
    e = Explainer(_model(1, "softmax"), preprocessing="none", max_batch_size=2)
    assert e.info.head_kind == "probability" and "single unit" in e.info.head
    res = e.explain_batch(X, [ItemSpec("gradcam", class_index=1)] * 2)
    np.testing.assert_allclose(res[0].probabilities, [0.0, 1.0], atol=1e-6)
    assert res[0].maps[0].all_zero  # a constant output explains nothing: zeros, flagged, never NaN
