"""The CAM family as small ``keras.ops`` functions, run inside the compiled step on the device.

Each gradient method only decides how the target activations ``A`` (B, h, w, C) are weighted, given
the gradients ``G`` (B, K, h, w, C) of each explained class's score with respect to ``A``; the raw maps
(B, K, h, w) then share one normalisation on the host (``normalise``): ReLU, then per-map min-max to
[0, 1], with maps that carry no contrast returned as zeros and flagged instead of NaN.

Why on the device: only the (B, K, h, w) maps then leave it, not A and G. For ResNet50 at 224 those
are 0.8 MB per image (7 x 7 x 2048 float32 each); on a lent H200 shipping them to the host held
Grad-CAM to 0.3-0.4 of a plain forward pass (README, "GPU"). ``keras.ops`` is the one spelling both
backends' steps compile (TensorFlow graph/XLA, ``jax.jit``). Everything runs in float32 (the step's
precision; mixed-precision outputs are cast up in the step); ``normalise`` runs in float64, and so does
Eigen-CAM, on the host (see ``eigencam``).

Equations (S = the map, c = channel, ij = position, Z = h*w):
- Grad-CAM (Selvaraju et al. 2017, eq. 1-2): w_c = 1/Z sum_ij G_cij ; S = sum_c w_c A_c
- HiResCAM (Draelos & Carin 2020): S = sum_c G_c * A_c (element-wise, no spatial averaging)
- XGrad-CAM (Fu et al. 2020, eq. 9): w_c = sum_ij (G_cij A_cij) / (sum_ij A_cij + eps)
- LayerCAM (Jiang et al. 2021, eq. 5): S = sum_c ReLU(G_c) * A_c
- Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with the exponential score's closed form, as
  pytorch-grad-cam): alpha_cij = G^2 / (2 G^2 + sum_ab A_cab * G^3 + eps) (0 where G == 0),
  w_c = sum_ij alpha_cij ReLU(G_cij). tf-keras-vis 0.8.7 instead divides the alphas by their spatial
  sum (``alpha / sum_ij alpha``) and uses exp(score) * G as the gradient, so its maps differ.
- Eigen-CAM (Muhammad & Yeasin 2020): S = projection of the (position x channel) activation matrix,
  centred over positions as pytorch-grad-cam does, onto its first right singular vector v. The SVD's
  sign is arbitrary; we fix it so that v points along the mean activation vector (v . mean_ij A >= 0,
  i.e. the uncentred projection sums to a positive value). pytorch-grad-cam leaves the sign to the
  solver, so an inverted map can come out there.
- CAM (Zhou et al. 2016, eq. 2): S = sum_c W_c,k A_c with W the Dense kernel after global average
  pooling (no bias). On such a head and a logit score, Grad-CAM = CAM / Z.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from keras import ops

from camserve.vocabulary import METHODS

EPS_XGRAD = 1e-7  # as pytorch-grad-cam, so maps are comparable
EPS_PLUSPLUS = 1e-6  # as pytorch-grad-cam
#: A map whose range is below this fraction of its largest magnitude has no contrast (rounding noise).
FLAT_TOLERANCE = 1e-6
#: Each method's number in the step's per-image ``methods`` (B,) int32 argument.
CODES: dict[str, int] = {name: i for i, name in enumerate(METHODS)}


def _weighted_sum(activations: Any, weights: Any) -> Any:
    """sum_c w[b,k,c] * A[b,:,:,c] -> (B, K, h, w)."""
    return ops.einsum("bijc,bkc->bkij", activations, weights)


def gradcam(activations: Any, gradients: Any) -> Any:
    """Grad-CAM: channel weights are the spatially averaged gradients."""
    return _weighted_sum(activations, ops.mean(gradients, axis=(2, 3)))


def hirescam(activations: Any, gradients: Any) -> Any:
    """HiResCAM: element-wise gradient x activation, summed over channels (no averaging)."""
    return ops.einsum("bkijc,bijc->bkij", gradients, activations)


def xgradcam(activations: Any, gradients: Any) -> Any:
    """XGrad-CAM: weights are gradient x activation normalised by the channel's total activation."""
    num = ops.einsum("bkijc,bijc->bkc", gradients, activations)
    den = ops.expand_dims(ops.sum(activations, axis=(1, 2)), 1) + EPS_XGRAD
    return _weighted_sum(activations, num / den)


def layercam(activations: Any, gradients: Any) -> Any:
    """LayerCAM: positive gradients weight each activation element-wise."""
    return ops.einsum("bkijc,bijc->bkij", ops.relu(gradients), activations)


def gradcam_plus_plus(activations: Any, gradients: Any) -> Any:
    """Grad-CAM++ closed form (the paper's eq. 19, as pytorch-grad-cam computes it)."""
    g = gradients
    g2 = g * g
    sum_a = ops.sum(activations, axis=(1, 2))[:, None, None, None, :]  # (B, 1, 1, 1, C)
    alpha = ops.where(g != 0.0, g2 / (2.0 * g2 + sum_a * g2 * g + EPS_PLUSPLUS), 0.0)
    weights = ops.sum(alpha * ops.relu(g), axis=(2, 3))  # (B, K, C)
    return _weighted_sum(activations, weights)


def eigencam(activations: np.ndarray, num_maps: int) -> np.ndarray:
    """Eigen-CAM on the host, in float64: (B, h, w, C) -> (B, num_maps, h, w), the same map for every
    class asked. Not in the step: an SVD compiles slowly under XLA (TF: about 4 s more per batch
    bucket on 2 cores), and the activations leave the device only for batches that ask for it."""
    a = np.asarray(activations, dtype=np.float64)
    b, h, w, c = a.shape
    out = np.zeros((b, h, w), dtype=np.float64)
    for i in range(b):
        m = a[i].reshape(h * w, c)
        mean = m.mean(axis=0)
        centred = m - mean
        if not np.any(centred):
            continue  # constant activations: no component, the map stays flat
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        v = vt[0]
        if float(mean @ v) < 0.0:
            v = -v
        out[i] = (centred @ v).reshape(h, w)
    return np.repeat(out[:, None], num_maps, axis=1)


def cam(activations: Any, kernel: Any, classes: Any) -> Any:
    """CAM: the Dense kernel's (C, N) column of each class (B, K) weights the activations."""
    return _weighted_sum(activations, ops.take(ops.transpose(kernel), classes, axis=0))


GRADIENT_METHODS: dict[str, Callable[[Any, Any], Any]] = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "layercam": layercam,
    "hirescam": hirescam,
    "xgradcam": xgradcam,
}


def gradient_maps(codes: Any, activations: Any, gradients: Any, classes: Any, cam_kernel: Any | None) -> Any:
    """Each image's raw map(s) by its method, all but Eigen-CAM: (B, K, h, w) float32, in the step.

    ``codes`` (B,) int32 (``CODES``); ``activations`` (B, h, w, C) and ``gradients`` (B, K, h, w, C)
    float32; ``classes`` (B, K) int32 and ``cam_kernel`` (C, N) float32 for CAM (None: the model has
    no CAM head, and no image may ask for it). A method runs only when an image of the batch asks for
    it (a ``cond`` per method: a batch of Grad-CAM calls pays for Grad-CAM alone); an image whose
    method is Eigen-CAM gets zeros here (``eigencam`` runs on the host).
    """
    select = codes[:, None, None, None]
    maps = ops.zeros_like(gradients[..., 0])  # (B, K, h, w)
    chosen = dict(GRADIENT_METHODS)
    if cam_kernel is not None:
        chosen["cam"] = lambda a, _: cam(a, cam_kernel, classes)
    for name, method in chosen.items():
        code = CODES[name]
        raw = ops.cond(ops.any(codes == code), lambda m=method: m(activations, gradients),
                       lambda z=maps: z)
        maps = ops.where(select == code, raw, maps)
    return maps


def normalise(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ReLU then per-map min-max to [0, 1] over the last two axes; flat maps become zeros + flag.

    Returns (maps float32 of raw's shape, all_zero bool of raw.shape[:-2]). A map holding NaN or
    infinity comes out NaN, quietly (``Explainer`` refuses its image, saying why).
    """
    r = np.maximum(np.asarray(raw, dtype=np.float64), 0.0)
    lo = r.min(axis=(-2, -1), keepdims=True)
    hi = r.max(axis=(-2, -1), keepdims=True)
    with np.errstate(invalid="ignore"):  # inf - inf in a map that is not finite
        rng = hi - lo
        flat = rng <= FLAT_TOLERANCE * hi  # also true for all-zero maps (0 <= 0)
        safe = np.where(flat, 1.0, rng)
        out = np.where(flat, 0.0, (r - lo) / safe)
    return out.astype(np.float32), flat[..., 0, 0]
