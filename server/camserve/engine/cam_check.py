"""Where plain CAM applies: target -> GlobalAveragePooling2D -> [pass-through] -> one Dense = logits.

CAM (Zhou et al. 2016, eq. 2) weights the target's channels by the Dense kernel's column of the
class: M_k = sum_c W[c, k] A_c. That is the class's logit, position by position, only when the
logits are exactly Dense(GAP(A)). Two checks, both must hold:

- the data flow (``structure``): the target's only reader is a GlobalAveragePooling2D (not
  keepdims), whose output reaches one Dense through Dropout / Identity / linear Activation only, and
  that Dense is where ``heads`` takes the logits;
- the gradient (``gradient_matches``): for any cotangent r over the classes, d (r . logits) / d A_ijc
  = (W r)_c / (h*w) at every position. Code outside the layers that also reads the target, or a
  layer that is not what its type says, breaks this; then CAM is refused rather than wrong.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from camserve.engine.activations import applied_activation
from camserve.engine.calls import LayerCall, Recording
from camserve.engine.heads import Head
from camserve.engine.tokens import Grid

NEED = (
    "CAM needs the target layer to feed GlobalAveragePooling2D then one Dense output layer "
    "(optionally through Dropout / linear Activation)"
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


def structure(rec: Recording, head: Head, c: LayerCall, grid: Grid) -> tuple[bool, str, Any | None]:
    """(supported, reason if not, the Dense layer) from the recorded data flow."""
    if grid.tokens:
        return False, f"{NEED}; {c.name!r} outputs tokens, not a (batch, h, w, channels) map", None
    if not head.invertible:
        return False, f"{NEED}; the model's output cannot be turned back into logits", None
    here = f"here {c.op.name} -> {describe_chain(rec, c.outputs[0])}"
    cons = rec.consumers(c.outputs[0])
    if len(cons) != 1 or not isinstance(cons[0].op, keras.layers.GlobalAveragePooling2D):
        return False, f"{NEED}; {here}", None
    if getattr(cons[0].op, "keepdims", False):
        return False, f"{NEED}; {here} (the pooling keeps dims)", None
    serial = cons[0].outputs[0]
    while True:
        cons = rec.consumers(serial)
        if len(cons) != 1:
            return False, f"{NEED}; {here}", None
        op = cons[0].op
        if isinstance(op, keras.layers.Dense):
            dense = cons[0]
            break
        linear = applied_activation(op)
        if not (
            isinstance(op, (keras.layers.Dropout, keras.layers.Identity))
            or (linear and linear[0] == "linear")
        ):
            return False, f"{NEED}; {here}", None
        serial = cons[0].outputs[0]
    if head.logits_call is None or head.logits_call.key != dense.key:
        return False, f"{NEED}; {here} (that Dense does not give the model's logits)", None
    return True, "", dense.op


def kernel(dense: Any, units: int) -> np.ndarray:
    """The (C, classes) CAM weights: the Dense kernel, or [-w, w] for one binary unit (see heads)."""
    w = np.asarray(dense.get_weights()[0], dtype=np.float32)
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
