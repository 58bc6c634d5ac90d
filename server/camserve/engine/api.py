"""The library API of the original cam-keras README, thin over ``Explainer``.

```python
from camserve import GradCAM
gradcam = GradCAM(model, target_layer="block5_conv3")     # optional; a name, path or the layer
heatmap = gradcam.compute_heatmap(x, class_idx=None)       # (H,W,C) or (1,H,W,C) -> (h,w) in [0,1]
heatmaps = gradcam.compute_heatmaps(batch, class_idx=[3, None, 7])  # (B,h,w); None = top-1
results = gradcam.explain(batch, top_k=3)                  # ItemResults: probabilities + maps
```
Inputs are already preprocessed float arrays (``preprocessing="none"`` by default; pass another mode
to give uint8 RGB instead). The step compiles on first use (in graph mode, the CPU default, once for
every batch size; under XLA once per batch bucket), and instances on the same model with the same
settings share what was compiled (one ``GradCAM(...)`` per image in a loop compiles once).
Any ``keras.Model`` works (Functional, Sequential, nested, subclassed, custom layers with sublayers,
vision transformers: ``token_grid`` / ``prefix_tokens`` override the patch grid found for (B, N, C)
outputs); a model that was never called is built from the first input's shape; one whose Input leaves H
or W open (None) takes any size (the model is recorded and compiled again for each new size). A
one-channel model also takes (H, W) and (B, H, W) arrays, and a model whose Input is (batch, H, W)
(grayscale without a channel axis) is one with (H, W, 1).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from camserve.engine.errors import CamNotSupportedError, InvalidInputError
from camserve.engine.explainer import Explainer
from camserve.engine.pixels import image_array
from camserve.records import ItemResult, ItemSpec
from camserve.vocabulary import METHODS


def _resize(maps: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Bilinear resize of (..., h, w) maps to size = (height, width), kept in [0, 1]."""
    if size is None:
        return maps
    import cv2

    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"size must be (height, width), got {size!r}") from exc
    if height < 1 or width < 1:
        raise InvalidInputError(f"size must be positive, got {size!r}")
    flat = maps.reshape(-1, *maps.shape[-2:])
    out = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in flat])
    return np.clip(out, 0.0, 1.0).reshape(*maps.shape[:-2], height, width).astype(np.float32)


def class_index(value: Any, what: str = "class_idx") -> int | None:
    """A class index as an int: None, an int, a NumPy integer, or a 0-d integer array or tensor (what
    ``np.argmax``, ``tf.argmax(preds[0])`` and ``keras.ops.argmax`` return). Raises
    ``InvalidInputError`` for anything else (bools, floats, arrays of several values)."""
    if value is None:
        return None
    try:
        arr = np.asarray(value)
    except Exception:  # any object NumPy cannot read is not an index
        arr = np.asarray(None)
    if arr.ndim != 0 or arr.dtype.kind not in "iu":
        raise InvalidInputError(f"{what} must be an int or None, got {value!r}")
    return int(arr)


#: Image sizes whose Explainer is kept for a model that takes any size (each holds compiled steps).
MAX_SIZES = 8
#: Explainers kept on one model object (each holds its compiled steps), least recently used dropped.
MAX_SHARED = 8
_SHARED = "_camserve_explainers"


def _structure(model: Any) -> tuple[tuple[int, int], ...]:
    """Identity of every operation the model can run and of its activation: a layer swapped, added
    or given another activation (``model.layers[-1].activation = None``, Keras' own Grad-CAM
    recipe) changes what a step traced before computes, so such a step must not be reused."""
    from camserve.engine.keras_private import walk

    return tuple((id(op), id(getattr(op, "activation", None))) for op in walk(model))


def _shared_explainer(model: Any, input_shape: tuple[int, ...] | None, kwargs: dict[str, Any]) -> Explainer:
    """The Explainer for (model, input shape, settings): built once, kept on the model object.

    Why: ``for x in images: GradCAM(model, layer).compute_heatmap(x)`` is how users of the Keras
    example and of pytorch-grad-cam write it, and tracing a step costs ~0.3 CPU-s even for a tiny
    model, 50x the call itself; so a new instance reuses the steps an earlier one compiled. Kept on
    the model (an attribute Keras neither tracks nor saves), they live exactly as long as the model.
    Weights are read when a step runs, so training between calls is seen; a changed structure is
    another key (``_structure``). An object that takes no attributes gets a new Explainer each time.
    """
    from camserve.engine.keras_private import exclusive

    settings = tuple(
        (k, v if isinstance(v, (str, int, tuple, type(None))) else id(v)) for k, v in sorted(kwargs.items())
    )
    # Under the lock every recording and trace takes: the structure is read while no other thread
    # has the model's layers patched, and threads asking for the same Explainer at once build one.
    with exclusive():
        key = (input_shape, settings, _structure(model))
        shared = getattr(model, "__dict__", {}).get(_SHARED)
        if shared is not None and (found := shared.get(key)) is not None:
            shared.move_to_end(key)
            return found
        explainer = Explainer(model, input_shape=input_shape, **kwargs)
        if shared is None:
            try:  # object.__setattr__: Keras' own __setattr__ would track the dict as model state
                object.__setattr__(model, _SHARED, shared := OrderedDict())
            except (AttributeError, TypeError):
                return explainer
        shared[key] = explainer
        while len(shared) > MAX_SHARED:
            shared.popitem(last=False)
        return explainer


class _BaseCAM:
    """Shared behaviour of the library classes; subclasses only name their method (``method=`` in the
    class statement, one of :data:`camserve.vocabulary.METHODS`)."""

    method: ClassVar[str] = "gradcam"

    def __init_subclass__(cls, method: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if method not in METHODS:
            raise TypeError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
        cls.method = method

    def __init__(
        self,
        model: Any,
        target_layer: Any = None,
        *,
        score: str = "logits",
        preprocessing: str = "none",
        compile_mode: str = "auto",
        max_batch_size: int = 32,
        input_shape: tuple[int, int, int] | None = None,
        backend: str | None = None,
        token_grid: tuple[int, int] | None = None,
        prefix_tokens: int | None = None,
    ) -> None:
        self.model = model
        self._kwargs = dict(
            target_layer=target_layer,
            preprocessing=preprocessing,
            compile_mode=compile_mode,
            max_batch_size=max_batch_size,
            score=score,
            backend=backend,
            token_grid=token_grid,
            prefix_tokens=prefix_tokens,
        )
        self._explainer: Explainer | None = None
        self._lock = threading.Lock()  # one instance may serve several threads (a web server's)
        # A model whose Input leaves H or W open takes any image size: one Explainer per size seen
        # (each records the model and compiles its own step), the most recent few kept.
        self._by_size: dict[tuple[int, ...], Explainer] = {}
        self._any_size = input_shape is None and self._sizes_open()
        if input_shape is not None or self._input_shape_known():
            self._build(input_shape)

    def _input_shape_known(self) -> bool:
        """Whether the model can tell its input shape (an Input, a build, or ``load_model``'s hints).

        False only when the first image must tell (a model never called, or an Input that leaves H or
        W open); a model the engine cannot take (several inputs, no image input) raises its refusal
        here, at construction, rather than as a wrong hint about the input shape later.
        """
        from camserve.engine.loading import hints_for
        from camserve.engine.model_io import declared_input_shape, refuse_non_image

        if hints_for(self.model).input_shape is not None:
            return True
        shape = declared_input_shape(self.model)  # raises for several inputs
        if not shape:
            return False
        refuse_non_image(self.model, shape)
        return not any(d is None for d in shape[1:])

    def _sizes_open(self) -> bool:
        """Whether the model's declared input leaves its height or width open (None)."""
        from camserve.engine.loading import hints_for
        from camserve.engine.model_io import declared_input_shape

        if hints_for(self.model).input_shape is not None:
            return False
        try:
            shape = declared_input_shape(self.model)
        except InvalidInputError:
            return False
        return len(shape) in (3, 4) and any(d is None for d in shape[1:3])

    def _build(self, input_shape: tuple[int, ...] | None) -> Explainer:
        explainer = _shared_explainer(self.model, input_shape, self._kwargs)
        if self.method == "cam" and not explainer.target.cam_supported:
            raise CamNotSupportedError(
                f"CAM is not available for layer {explainer.target.name!r}: {explainer.target.cam_reason}"
            )
        self._explainer = explainer
        if self._any_size:
            self._by_size[explainer.input_shape] = explainer
            while len(self._by_size) > MAX_SIZES:
                self._by_size.pop(next(iter(self._by_size)))
        return explainer

    @property
    def explainer(self) -> Explainer:
        """The underlying batch engine (built on first input for never-called Sequential models)."""
        if self._explainer is None:
            raise InvalidInputError(
                "the model's input shape is unknown until the first image (it was never called and has "
                "no Input): call compute_heatmap(s) first, or pass input_shape=(H, W, C)"
            )
        return self._explainer

    @property
    def target_layer(self) -> str:
        """The resolved target layer's name ("outer/inner" inside nested models)."""
        return self.explainer.target.name

    def _gray(self, arr: np.ndarray) -> np.ndarray:
        """(H, W) or (B, H, W) images of a one-channel model with their channel axis added."""
        if self._explainer is not None and arr.ndim in (2, 3):
            h, w, c = self._explainer.input_shape
            if c == 1 and arr.shape[-2:] == (h, w):
                return arr[..., None]
        return arr

    def _batch(self, batch: Any) -> tuple[np.ndarray, Explainer]:
        """The batch as (B, H, W, C) and the Explainer for its size. That Explainer is returned,
        not only kept: another thread may switch ``self._explainer`` to another size meanwhile."""
        arr = self._gray(image_array(batch))
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise InvalidInputError(
                f"expected a batch (B, H, W, C) or one image (H, W, C), got shape {arr.shape}"
            )
        shape = tuple(int(d) for d in arr.shape[1:])
        with self._lock:
            if self._explainer is None:
                return arr, self._build(shape)
            if self._any_size and shape != self._explainer.input_shape:
                known = self._by_size.pop(shape, None)  # re-inserted: the most recent last
                if known is None:
                    return arr, self._build(shape)
                self._by_size[shape] = self._explainer = known
            return arr, self._explainer

    def _specs(self, n: int, class_idx: Any, top_k: int) -> list[ItemSpec]:
        if class_idx is None or np.ndim(class_idx) == 0:  # one index (or None) for every image
            per_item: Sequence[Any] = [class_idx] * n
        else:
            per_item = list(class_idx)
            if len(per_item) != n:
                raise InvalidInputError(f"class_idx has {len(per_item)} entries for a batch of {n} images")
        return [ItemSpec(self.method, class_index(ci, "class_idx entries"), top_k) for ci in per_item]

    def explain(self, batch: Any, class_idx: Any = None, top_k: int = 1) -> list[ItemResult]:
        """Full results per image: probabilities and one ClassMap per class (top_k best if no index;
        class_idx as for :meth:`compute_heatmaps`)."""
        arr, explainer = self._batch(batch)
        return explainer.explain_batch(arr, self._specs(arr.shape[0], class_idx, top_k))

    def compute_heatmaps(
        self, batch: Any, class_idx: Any = None, size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """(B, h, w) float32 maps in [0, 1] for (B, H, W, C) images ((B, H, W) for a one-channel
        model). class_idx: None (each image's top-1), one index for every image, or one per image (a
        list, which may hold None, or a 1-D integer array or tensor); an index is an int, a NumPy
        integer or a 0-d integer array or tensor (``tf.argmax(preds[0])``), see :func:`class_index`."""
        results = self.explain(batch, class_idx)
        maps = np.stack([r.maps[0].heatmap for r in results])
        return _resize(maps, size)

    def compute_heatmap(
        self, x: Any, class_idx: int | None = None, size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """(h, w) float32 map in [0, 1] for one image (H, W, C) or (1, H, W, C) ((H, W) for a
        one-channel model)."""
        arr = self._gray(image_array(x))
        if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[0] == 1)):
            raise InvalidInputError(
                f"compute_heatmap takes one image (H, W, C) or (1, H, W, C), got {arr.shape}"
            )
        return self.compute_heatmaps(arr, class_index(class_idx, "class_idx"), size)[0]

    def predict(self, batch: Any) -> np.ndarray:
        """(B, N) class probabilities from the same compiled step."""
        return np.stack([r.probabilities for r in self.explain(batch)])


class CAM(_BaseCAM, method="cam"):
    """Class Activation Mapping (Zhou et al. 2016): needs target -> GAP -> one Dense."""


class GradCAM(_BaseCAM, method="gradcam"):
    """Grad-CAM (Selvaraju et al. 2017)."""


class GradCAMPlusPlus(_BaseCAM, method="gradcam++"):
    """Grad-CAM++ (Chattopadhay et al. 2018), closed form as pytorch-grad-cam."""


class LayerCAM(_BaseCAM, method="layercam"):
    """LayerCAM (Jiang et al. 2021)."""


class HiResCAM(_BaseCAM, method="hirescam"):
    """HiResCAM (Draelos & Carin 2020)."""


class XGradCAM(_BaseCAM, method="xgradcam"):
    """XGrad-CAM (Fu et al. 2020)."""


class EigenCAM(_BaseCAM, method="eigencam"):
    """Eigen-CAM (Muhammad & Yeasin 2020): class-independent first principal component."""
