"""The CAM family as small NumPy functions over one compiled step's output.

Each gradient method only decides how the target activations ``A`` (B, h, w, C) are weighted, given
the gradients ``G`` (B, K, h, w, C) of each explained class's score with respect to ``A``; the raw maps
(B, K, h, w) then share one normalisation (``normalise``): ReLU, then per-map min-max to [0, 1], with
maps that carry no contrast returned as zeros and flagged instead of NaN. The weighting runs in
float32 (the step's precision; mixed-precision outputs are cast up in the step), Eigen-CAM's SVD and
the normalisation in float64.

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

import numpy as np

EPS_XGRAD = 1e-7  # as pytorch-grad-cam, so maps are comparable
EPS_PLUSPLUS = 1e-6  # as pytorch-grad-cam
#: A map whose range is below this fraction of its largest magnitude has no contrast (rounding noise).
FLAT_TOLERANCE = 1e-6


def _as64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _weighted_sum(activations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_c w[b,k,c] * A[b,:,:,c] -> (B, K, h, w)."""
    return np.einsum("bijc,bkc->bkij", _f32(activations), _f32(weights))


def gradcam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM: channel weights are the spatially averaged gradients."""
    weights = _f32(gradients).mean(axis=(2, 3))  # (B, K, C)
    return _weighted_sum(activations, weights)


def hirescam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """HiResCAM: element-wise gradient x activation, summed over channels (no averaging)."""
    return np.einsum("bkijc,bijc->bkij", _f32(gradients), _f32(activations))


def xgradcam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """XGrad-CAM: weights are gradient x activation normalised by the channel's total activation."""
    a = _f32(activations)
    num = np.einsum("bkijc,bijc->bkc", _f32(gradients), a)
    den = a.sum(axis=(1, 2))[:, None, :] + EPS_XGRAD
    return _weighted_sum(a, num / den)


def layercam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """LayerCAM: positive gradients weight each activation element-wise."""
    return np.einsum("bkijc,bijc->bkij", np.maximum(_f32(gradients), 0.0), _f32(activations))


def gradcam_plus_plus(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM++ closed form (the paper's eq. 19, as pytorch-grad-cam computes it)."""
    a = _f32(activations)
    g = _f32(gradients)
    g2 = g * g
    g3 = g2 * g
    sum_a = a.sum(axis=(1, 2))[:, None, None, None, :]  # (B, 1, 1, 1, C)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = g2 / (2.0 * g2 + sum_a * g3 + EPS_PLUSPLUS)
    alpha = np.where(g != 0.0, alpha, 0.0)
    weights = (alpha * np.maximum(g, 0.0)).sum(axis=(2, 3))  # (B, K, C)
    return _weighted_sum(a, weights)


def eigencam(activations: np.ndarray, num_maps: int) -> np.ndarray:
    """Eigen-CAM: first principal component of the activations (class-independent), sign-fixed.

    Returns (B, num_maps, h, w), the same map repeated for each requested class.
    """
    a = _as64(activations)
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


def cam(activations: np.ndarray, dense_kernel: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """CAM: the Dense kernel's column of each class weights the (pre-pooling) activations."""
    weights = _as64(dense_kernel).T[np.asarray(classes)]  # (B, K, C)
    return _weighted_sum(activations, weights)


GRADIENT_METHODS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "layercam": layercam,
    "hirescam": hirescam,
    "xgradcam": xgradcam,
}


def normalise(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ReLU then per-map min-max to [0, 1] over the last two axes; flat maps become zeros + flag.

    Returns (maps float32 of raw's shape, all_zero bool of raw.shape[:-2]).
    """
    r = np.maximum(_as64(raw), 0.0)
    lo = r.min(axis=(-2, -1), keepdims=True)
    hi = r.max(axis=(-2, -1), keepdims=True)
    rng = hi - lo
    flat = rng <= FLAT_TOLERANCE * hi  # also true for all-zero maps (0 <= 0)
    safe = np.where(flat, 1.0, rng)
    out = np.where(flat, 0.0, (r - lo) / safe)
    return out.astype(np.float32), flat[..., 0, 0]
