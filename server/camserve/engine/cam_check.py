"""Where plain CAM applies: target -> GlobalAveragePooling2D -> [pass-through] -> one Dense = logits
(or a 1x1 Conv2D in the Dense's place, or before the pooling).

CAM (Zhou et al. 2016, eq. 2) weights the target's channels by the Dense kernel's column of the
class: M_k = sum_c W[c, k] A_c. That is the class's logit, position by position, only when the
logits are exactly Dense(GAP(A)). Two checks, both must hold:

- the data flow (``structure``): the target's only reader leads through one GlobalAveragePooling2D
  (keepdims or not) and one linear classifier (a Dense after it, or a 1x1 Conv2D before or after it:
  a Dense of the channels at every position, which commutes with the pooling), with only
  pass-throughs besides (Dropout, Identity, Flatten, Reshape, linear Activation), ending where
  ``heads`` takes the logits;
- the gradient (``gradient_matches``): for any cotangent r over the classes, d (r . logits) / d A_ijc
  = (W r)_c / (h*w) at every position. Code outside the layers that also reads the target, or a
  layer that is not what its type says, breaks this; then CAM is refused rather than wrong.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from camserve.engine.activations import function_kind, is_pass_through
from camserve.engine.calls import LayerCall, Recording
from camserve.engine.heads import Head
from camserve.engine.tokens import Grid

NEED = (
    "CAM needs the target layer to feed GlobalAveragePooling2D then one Dense output layer "
    "(or a 1x1 Conv2D, before or after the pooling; optionally through Dropout / Flatten / Reshape / "
    "linear Activation)"
)


def describe_chain(rec: Recording, serial: int, steps: int = 4) -> str:
    """The layers reading ``serial`` one after the other, for error messages."""
    parts = []
    for _ in range(steps):
        cons = rec.consumers(serial)
        if len(cons) != 1:
            if len(cons) > 1:
                parts.append(f"[{len(cons)} branches]")
            break
        parts.append(f"{type(cons[0].op).__name__}({cons[0].op.name})")
        if not cons[0].outputs:
            break
        serial = cons[0].outputs[0]
    return " -> ".join(parts) if parts else "(no layer reads it)"


def _classifier(op: Any) -> bool:
    """A linear map of the channels at every position: Dense, or a 1x1 Conv2D (stride 1, one group)."""
    if isinstance(op, keras.layers.Dense):
        return True
    return (
        type(op) is keras.layers.Conv2D
        and tuple(op.kernel_size) == (1, 1)
        and tuple(op.strides) == (1, 1)
        and getattr(op, "groups", 1) == 1
    )


def structure(rec: Recording, head: Head, c: LayerCall, grid: Grid) -> tuple[bool, str, Any | None]:
    """(supported, reason if not, the classifier layer) from the recorded data flow.

    The target's output must reach the logits through exactly one GlobalAveragePooling2D and one
    classifier (``_classifier``: after the pooling, or a 1x1 Conv2D before it), with only
    pass-throughs (Dropout, Identity, Flatten, Reshape, linear Activation) besides, and no other reader.
    The classifier's own activation may be the head's softmax/sigmoid only where the logits end.
    """
    if grid.tokens:
        return False, f"{NEED}; {c.name!r} outputs tokens, not a (batch, h, w, channels) map", None
    if not head.invertible:
        return False, f"{NEED}; the model's output cannot be turned back into logits", None
    here = f"here {c.op.name} -> {describe_chain(rec, c.outputs[0])}"
    serial = c.outputs[0]
    pooled, classifier = False, None
    end = head.logits_call.key if head.logits_call is not None else None
    while True:
        cons = rec.consumers(serial)
        if len(cons) != 1 or not cons[0].outputs:
            if not cons and pooled and classifier is not None:
                return False, f"{NEED}; {here} (that classifier does not give the model's logits)", None
            return False, f"{NEED}; {here}", None
        call, op = cons[0], cons[0].op
        if isinstance(op, keras.layers.GlobalAveragePooling2D) and not pooled:
            pooled = True
        elif _classifier(op) and classifier is None:
            classifier = call
            act = function_kind(op.activation)
            head_activation = head.capture == "pre_activation" and call.key == end
            if not (act and act[0] == "linear") and not head_activation:
                return False, f"{NEED}; {here} ({op.name}'s activation is not linear)", None
        elif not is_pass_through(op):
            return False, f"{NEED}; {here}", None
        if pooled and classifier is not None and call.key == end:
            return True, "", classifier.op
        serial = call.outputs[0]


def kernel(dense: Any, units: int) -> np.ndarray:
    """The (C, classes) CAM weights: the classifier's kernel (a 1x1 Conv2D's as (C, classes)), or
    [-w, w] for one binary unit (see heads)."""
    w = np.asarray(dense.get_weights()[0], dtype=np.float32)
    w = w.reshape(w.shape[-2], w.shape[-1])
    return np.concatenate([-w, w], axis=1) if units == 1 else w


def gradient_matches(grad: np.ndarray, cotangent: np.ndarray, weights: np.ndarray, dtype: str | None) -> bool:
    """Whether d (cotangent . logits) / d A (B, h, w, C) equals (weights @ cotangent) / (h*w) everywhere."""
    g = grad.astype(np.float64)
    h, w = g.shape[1], g.shape[2]
    want = (cotangent.astype(np.float64) @ weights.T.astype(np.float64)) / (h * w)  # (B, C)
    want = np.broadcast_to(want[:, None, None, :], g.shape)
    tol = 2e-2 if dtype not in ("float32", "float64") else 1e-3
    scale = max(float(np.abs(want).max()), 1e-12)
    return bool(np.abs(g - want).max() <= tol * scale)
