"""The model's output head, recognised by what it computes: where the logits are, and what they mean.

Scores are pre-softmax logits by default (gradients through a softmax saturate: Selvaraju et al.
2017 sec. 3 use the score "before the softmax"). So the engine must find the softmax or sigmoid that
turns logits into the model's output, however it is written:

- as a layer's own activation (``Dense(10, activation="softmax")``, ``Dense(2, activation=tf.nn.softmax)``,
  ``Conv2D(.., activation=keras.ops.sigmoid)``): the logits are the value before that activation;
- as a layer or graph node (``Softmax()``, ``Activation(tf.nn.softmax)``, ``Lambda(keras.ops.softmax)``,
  ``keras.ops.softmax(x)`` in a Functional graph): the logits are its input;
- followed by pass-through layers (Reshape, Flatten, cast, Identity, Dropout, linear Activation);
- in code outside any layer (a subclassed model's ``return tf.nn.softmax(self.head(x))``): found by
  comparing, on the recorded values, the output with softmax/sigmoid of the last layer's output.

Known functions are matched by identity (``activations``); any other single-input layer at the
head is tested numerically. Every
choice is then checked on the recorded values (the output must equal f(logits)); what fails the
check, or a softmax followed by anything that is not a pass-through, "cannot be inverted": the model
is then explained on its output, taken as probabilities, and ``Head.description`` says so.

Class conventions (``Head.outputs``): N > 1 units with softmax (or no activation found): probabilities
softmax(z); with sigmoid: multi-label, sigmoid(z) per class. **One unit is a binary logit** z (with or
without its sigmoid): two classes, class 1 = the unit (score z, probability sigmoid(z)), class 0 = its
complement (score -z, probability 1 - sigmoid(z)), as log P0/P1 = -z; so class 0's Grad-CAM is the
negative of class 1's before the ReLU (the evidence against class 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from camserve.engine.activations import (
    applied_activation,
    attribute_activation,
    is_pass_through,
    pre_activation_tap,
)
from camserve.engine.calls import CallKey, LayerCall, Recording, Site, Tap
from camserve.engine.keras_private import CallFn

KINDS = ("softmax", "sigmoid", "binary", "probability")


def _input_tap(call: CallFn, args: tuple[Any, ...], kwargs: dict[str, Any], site: Site) -> Any:
    site.notes["logits"] = args[0]
    return call(*args, **kwargs)


def _output_tap(call: CallFn, args: tuple[Any, ...], kwargs: dict[str, Any], site: Site) -> Any:
    out = call(*args, **kwargs)
    site.notes["logits"] = out
    return out


def _pre_tap(call: CallFn, args: tuple[Any, ...], kwargs: dict[str, Any], site: Site) -> Any:
    out = pre_activation_tap(call, args, kwargs, site)
    site.notes["logits"] = site.notes.pop("pre_activation")
    return out


@dataclass(frozen=True)
class Head:
    """Where the logits are taken and how scores and probabilities follow from them.

    ``capture``: "pre_activation" (before ``call``'s own activation), "input" (``call``'s input),
    "output" (``call``'s output), "model" (the model's output itself). ``kind`` in KINDS.
    """

    kind: str
    capture: str
    call: LayerCall | None
    units: int
    description: str
    logits_call: LayerCall | None = None  # the call whose output/pre-activation are the logits

    @property
    def classes(self) -> int:
        """Classes exposed: the units, or 2 for a single binary unit."""
        return 2 if self.units == 1 else self.units

    @property
    def invertible(self) -> bool:
        return self.kind != "probability"

    def taps(self) -> dict[CallKey, Tap]:
        """Taps that leave the logits in ``notes["logits"]`` during a run (none for "model")."""
        tap = {"pre_activation": _pre_tap, "input": _input_tap, "output": _output_tap}.get(self.capture)
        return {} if tap is None or self.call is None else {self.call.key: tap}

    def outputs(self, notes: dict[str, Any], y: Any, score: str) -> tuple[Any, Any]:
        """(probabilities (B, classes), score vector (B, classes)) as float32 ``keras.ops`` tensors.

        ``score`` "logits" or "probability"; a head that is not invertible always scores probabilities.
        ``y`` is the model's output as its call returns it: one tensor, or that tensor alone in a
        list, tuple or dict (``outputs={"logits": z}``, a subclassed ``return [z]``).
        """
        ops = keras.ops
        t = keras.tree.flatten(y)[0] if self.capture == "model" else notes["logits"]
        t = ops.cast(ops.reshape(t, (-1, self.units)), "float32")
        if self.kind == "softmax":
            probs, logits = ops.softmax(t, axis=-1), t
        elif self.kind == "sigmoid":
            probs, logits = ops.sigmoid(t), t
        elif self.kind == "binary":
            probs = ops.concatenate([ops.sigmoid(-t), ops.sigmoid(t)], axis=-1)
            logits = ops.concatenate([-t, t], axis=-1)
        else:
            probs = t if self.units > 1 else ops.concatenate([1.0 - t, t], axis=-1)
            logits = probs
        return probs, (logits if score == "logits" and self.invertible else probs)


# --------------------------------------------------------------------------- analysis of a recording


def _f(kind: str, z: np.ndarray) -> np.ndarray:
    if kind == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if kind == "log_softmax":
        m = z.max(axis=-1, keepdims=True)
        return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    return z


def _matches(kind: str, z: np.ndarray, y: np.ndarray, loose: bool) -> bool:
    if z.size != y.size:
        return False
    z64 = z.astype(np.float64).reshape(y.shape[0], -1)
    y64 = y.astype(np.float64).reshape(y.shape[0], -1)
    tol = 4e-3 if loose else 2e-5
    return bool(np.allclose(_f(kind, z64), y64, rtol=tol, atol=tol))


def _name(c: LayerCall) -> str:
    return f"{type(c.op).__name__} {c.name!r}"


def _fn_kind_name(kind: str) -> str:
    return "softmax" if kind == "log_softmax" else kind


def analyse(rec: Recording, units: int) -> Head:
    """Find the head of a recorded model whose output has ``units`` values per image (module docstring)."""
    y = rec.numpy(rec.output)
    loose = y.dtype != np.float32 and y.dtype != np.float64
    serial, passes = rec.output, []
    p = rec.producer(serial)
    while p is not None and p.leaf and is_pass_through(p.op) and p.inputs:
        passes.append(p)
        serial = p.inputs[0]
        p = rec.producer(serial)
    after = f" (then {', '.join(_name(c) for c in reversed(passes))})" if passes else ""
    if p is None or not p.leaf:
        return _opaque(rec, units, y, loose, p)
    found = _candidate(rec, p, loose)
    if found is not None:
        kind, axis, capture, z = found
        z_shape = rec.values[rec.canon(z)].shape
        if not _class_axis_ok(tuple(int(d) for d in z_shape), axis):
            return _probability(units, f"{_name(p)} applies {kind} over an axis other than the classes")
        if not _matches(kind, rec.numpy(z), y, loose):
            return _probability(units, f"{_name(p)} looks like {kind} but its output is not {kind}(logits)")
        if kind in ("softmax", "log_softmax") and units == 1:
            return _probability(units, f"{_name(p)} applies softmax to a single unit (always 1)")
        name = _fn_kind_name(kind)
        if capture == "pre_activation":
            where, logits_call = f"{name} is {_name(p)}'s activation{after}: scores are its pre-activation", p
        else:
            where, logits_call = (
                f"{name} applied by {_name(p)}{after}: scores are its input",
                _through_passes(rec, z),
            )
        return Head(
            "binary" if units == 1 else name,
            capture,
            p,
            units,
            f"{where} (logits)" + _binary_note(units),
            logits_call,
        )
    upstream = _softmax_upstream(rec, p, loose)
    if upstream is not None:
        return _probability(
            units, f"the output is computed from {upstream} by {_name(p)}{after}, which is not a pass-through"
        )
    return Head(
        "binary" if units == 1 else "softmax",
        "model",
        None,
        units,
        f"no softmax or sigmoid at the output ({_name(p)}{after}): the output is taken as logits"
        + _binary_note(units),
        p,
    )


def _binary_note(units: int) -> str:
    if units != 1:
        return ""
    return (
        "; one unit = a binary logit z: class 1 scores z (probability sigmoid(z)), class 0 scores -z "
        "(probability 1 - sigmoid(z))"
    )


def _class_axis_ok(shape: tuple[int, ...], axis: int) -> bool:
    """The function normalises over the class axis: the last one, every other non-batch axis 1."""
    rank = len(shape)
    return axis in (-1, rank - 1) and int(np.prod(shape[1:-1], dtype=np.int64)) == 1


def _candidate(rec: Recording, p: LayerCall, loose: bool) -> tuple[str, int, str, int] | None:
    """(kind, axis, capture, serial of the logits) if ``p`` applies softmax/sigmoid to logits."""
    attr = attribute_activation(p.op)
    if attr is not None and p.pre_activation is not None:
        return attr[0], attr[1], "pre_activation", p.pre_activation
    applied = applied_activation(p.op)
    if applied is not None and applied[0] != "linear" and p.inputs:
        return applied[0], applied[1], "input", p.inputs[0]
    if applied is None and attr is None and len(p.inputs) == 1 and p.outputs:
        z, out = rec.numpy(p.inputs[0]), rec.numpy(p.outputs[0])
        for kind in ("softmax", "sigmoid", "log_softmax"):
            if z.shape == out.shape and _matches(kind, z, out, loose):
                return kind, -1, "input", p.inputs[0]
    return None


def _through_passes(rec: Recording, serial: int) -> LayerCall | None:
    p = rec.producer(serial)
    while p is not None and p.leaf and is_pass_through(p.op) and p.inputs:
        p = rec.producer(p.inputs[0])
    return p


def _softmax_upstream(rec: Recording, p: LayerCall, loose: bool) -> str | None:
    """A softmax/sigmoid on a class-like vector a few single-input steps before ``p``, if any."""
    c: LayerCall | None = p
    for _ in range(4):
        if c is None or len(c.inputs) != 1:
            return None
        c = _through_passes(rec, c.inputs[0])
        if c is None or c.shape is None or len(c.shape) != 1:
            return None
        found = _candidate(rec, c, loose)
        if found is not None:
            return f"probabilities ({found[0]} in {_name(c)})"
    return None


def _probability(units: int, why: str) -> Head:
    return Head(
        "probability",
        "model",
        None,
        units,
        f"{why}; it cannot be turned back into logits, so the model is explained on its output, "
        "taken as probabilities",
    )


def _opaque(rec: Recording, units: int, y: np.ndarray, loose: bool, container: LayerCall | None) -> Head:
    """The output comes from code outside any layer: compare it with f(last layer outputs)."""
    inside = [
        c
        for c in rec.calls
        if c.leaf
        and c.is_layer
        and c.outputs
        and (container is None or c.path[: len(container.path)] == container.path)
    ]
    inside.sort(key=lambda c: c.end)
    tried = 0
    for c in reversed(inside):
        if c.shape is None or int(np.prod(c.shape, dtype=np.int64)) != units:
            continue
        z = rec.numpy(c.outputs[0])
        for kind in ("linear", "softmax", "sigmoid", "log_softmax"):
            if _matches(kind, z, y, loose):
                if kind == "linear":
                    return Head(
                        "binary" if units == 1 else "softmax",
                        "model",
                        None,
                        units,
                        f"the output equals {_name(c)}'s output: taken as logits" + _binary_note(units),
                        c,
                    )
                if kind in ("softmax", "log_softmax") and units == 1:
                    return _probability(
                        units, "a softmax over a single unit (always 1) follows the last layer"
                    )
                return Head(
                    "binary" if units == 1 else _fn_kind_name(kind),
                    "output",
                    c,
                    units,
                    f"{_fn_kind_name(kind)} computed outside any layer after {_name(c)} (found by comparing "
                    f"values): scores are {_name(c)}'s outputs (logits)" + _binary_note(units),
                    c,
                )
        tried += 1
        if tried == 3:
            break
    rows = y.reshape(y.shape[0], -1).astype(np.float64)
    if units > 1 and (rows >= 0).all() and np.allclose(rows.sum(axis=-1), 1.0, atol=1e-3):
        return _probability(units, "the output is a probability distribution computed outside any layer")
    return Head(
        "binary" if units == 1 else "softmax",
        "model",
        None,
        units,
        "the output comes from code outside any layer and matches no softmax/sigmoid of a layer's "
        "output: taken as logits" + _binary_note(units),
    )
