"""Target layers: what can be explained, which one by default and why, and where CAM applies.

``ModelGraph`` runs the model once, eagerly, on a small random batch and records every layer call
(``calls.record``), so it sees any model kind the same way: Functional, Sequential (called or never
called), nested, subclassed, custom layers that own sublayers. From the recording:

- **candidates** are layer calls whose output is a grid: (B, h, w, C) conv-like maps, or (B, N, C)
  tokens with a patch grid (``tokens``); they are listed by path (``outer/inner/sub``, ``@k`` for the
  k-th call of a layer called more than once);
- the **default target** is the last candidate on the way to the output whose grid is larger than
  1x1, is not a pooling, padding or cropping layer, and whose positions the score actually depends
  on. That last part is measured, not guessed: one backward pass from a random combination of the
  class scores to zero probes at the late candidates (``gradients``, given by the backend) shows
  which grids the output depends on position by position. It is what makes a ViT that classifies
  from its class token get the last block's first LayerNorm (before the attention mixes the patches
  into that token), not the final LayerNorm, whose patch tokens the output never reads;
- **CAM** support is checked on the data flow and on the same gradients (``cam_check``), so CAM
  never gives a silently wrong map.

Backend-neutral: Keras and NumPy only (the gradients come from the backend module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from camserve.engine import activations, calls, cam_check, heads
from camserve.engine.calls import CallKey, LayerCall
from camserve.engine.errors import EngineError, InvalidInputError, UnknownLayerError
from camserve.engine.keras_private import call_inference, is_functional, walk
from camserve.engine.model_io import classes_of, declared_input_shape, input_shape_of, refuse_channels_first
from camserve.engine.tokens import Grid, TokenLayout, conv_grid, image_like, to_grid_numpy, token_grid
from camserve.records import LayerInfo

#: Images in the inspection batch (2, so that a batch axis is told apart from a size-1 axis).
PROBE_BATCH = 2
#: Late candidates probed per backward pass while looking for the default target.
PROBE_CHUNK = 16
Gradients = Callable[["ModelGraph", list[LayerCall], np.ndarray], dict[CallKey, np.ndarray]]
"""``gradients(graph, calls, cotangent (B, classes))`` -> d (cotangent . score vector) / d output of
each call, (B, *call.shape) float32, computed by the backend on ``graph.probe_input``."""

#: Layers that only pool, pad or crop the grid before them: not chosen automatically (the layer
#: before them holds the same features, unpadded and at full resolution).
_MOVERS = {
    word: tuple(
        getattr(keras.layers, n)
        for n in dir(keras.layers)
        if word.lower() in n.lower() and isinstance(getattr(keras.layers, n), type)
    )
    for word in ("Pooling", "Padding", "Cropping")
}


@dataclass(frozen=True)
class Target:
    """A resolved target (one call of one layer) and what the engine needs to know about it."""

    call: LayerCall
    grid: Grid
    cam_supported: bool
    cam_reason: str  # "" when supported
    cam_kernel_value: np.ndarray | None  # (C, classes) float32 when CAM applies
    reason: str = ""  # why this target (the automatic choice), or "requested"

    @property
    def name(self) -> str:
        return self.call.name

    @property
    def key(self) -> CallKey:
        return self.call.key

    @property
    def shape(self) -> tuple[int, ...]:
        """The layer's output shape without the batch axis: (h, w, C) or (N, C)."""
        assert self.call.shape is not None
        return self.call.shape

    @property
    def channels(self) -> int:
        return int(self.shape[-1])

    def cam_kernel(self) -> np.ndarray:
        """The (C, classes) weights CAM uses (the Dense kernel; [-w, w] for one binary unit)."""
        if self.cam_kernel_value is None:
            raise RuntimeError("no CAM head")
        return self.cam_kernel_value


class ModelGraph:
    """A Keras model's recorded forward pass: candidates, the head, the default target, CAM support.

    Raises ``InvalidInputError`` for a model the engine cannot explain (not a keras.Model, image
    layers in channels_first, input shape unknown, several inputs or outputs, an output that is not
    (batch, classes) or (batch, 1, 1, classes), a forward pass that fails on a (2, H, W, C) batch).
    ``probe_input`` is that batch as the model takes it (``model_input``).
    """

    def __init__(
        self,
        model: Any,
        input_shape: tuple[int, ...] | None = None,
        token_layout: TokenLayout | None = None,
        gradients: Gradients | None = None,
    ) -> None:
        if not isinstance(model, keras.Model):
            raise InvalidInputError(f"expected a keras.Model, got {type(model).__name__}")
        self.model = model
        refuse_channels_first(model)
        self.input_shape = input_shape_of(model, input_shape)
        # A (batch, H, W) input is a grayscale image without its channel axis: the engine's images
        # are (B, H, W, 1), and ``model_input`` drops that axis where the model is called.
        self.channel_axis = len(declared_input_shape(model)) != 3
        self.layout = token_layout or TokenLayout()
        self._gradients = gradients
        rng = np.random.default_rng(1234)
        dtype = "float32"
        if is_functional(model) and model.inputs:
            dtype = keras.backend.standardize_dtype(model.inputs[0].dtype)
        probe = rng.normal(size=(PROBE_BATCH, *self.input_shape)).astype(dtype)
        self.probe_input = probe if self.channel_axis else probe[..., 0]  # what the model takes
        try:
            x = keras.ops.convert_to_tensor(self.probe_input)
            if not all(getattr(op, "built", True) for op in [model, *walk(model)]):
                # Building runs call() symbolically once more; do it before recording, not during.
                call_inference(model, (x,), {})
            y, self.rec = calls.record(model, x, activations.record_taps(walk(model)))
        except EngineError:
            raise
        except Exception as exc:
            raise InvalidInputError(
                f"model {model.name!r} failed on a batch of shape {self.probe_input.shape}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self.head = heads.analyse(self.rec, classes_of(model, y))
        self.rec.forget_values()  # the head is found: the recorded activations are not needed again
        self.num_classes = self.head.classes
        self._cotangent = rng.normal(size=(PROBE_BATCH, self.num_classes)).astype(np.float32)
        self._grads: dict[CallKey, np.ndarray] = {}
        self._grids: dict[CallKey, Grid] = {}
        for c in self.rec.calls:
            grid = self._grid_of(c)
            if grid is not None:
                self._grids[c.key] = grid
        self._targets: dict[CallKey, Target] = {}

    def model_input(self, x: Any) -> Any:
        """The model's input from (B, H, W, C) images: as they are, or (B, H, W) for a model whose
        input has no channel axis (``keras.ops``, inside the backends' steps)."""
        return x if self.channel_axis else keras.ops.squeeze(x, axis=-1)

    # ---- candidates -------------------------------------------------------------------------
    @property
    def image_hw(self) -> tuple[int, int]:
        return self.input_shape[0], self.input_shape[1]

    def _grid_of(self, c: LayerCall) -> Grid | None:
        # Layers, and the keras.ops nodes of Functional graphs (a residual ``x + y`` is often the last
        # grid before the pooling: ConvNeXt's blocks end that way).
        if c.shape is None or len(c.outputs) != 1:
            return None
        return conv_grid(c.shape) or token_grid(c.shape, self.image_hw, self.layout)

    def candidates(self) -> list[LayerCall]:
        """Layer calls with a grid whose axes look like the image's (``tokens.image_like``), in the order
        they finish; a container that only passes on its last sublayer's output is left out (the
        sublayer is listed), though it can still be named as a target."""
        out = [
            c
            for c in self.rec.calls
            if c.key in self._grids and image_like(self._grids[c.key], self.image_hw) and self._own_output(c)
        ]
        return sorted(out, key=lambda c: c.end)

    def layer_infos(self) -> list[LayerInfo]:
        """The candidate targets as plain records (for ModelSummary.layers), in execution order.

        CAM support is the checked one for every layer whose gradient was measured (the target and
        every layer the data flow shows feeding GAP -> Dense), the data-flow one otherwise.
        """
        infos = []
        for c in self.candidates():
            t = self.target_for(c, verify_cam=c.key in self._grads)
            grid = (int(t.grid.h), int(t.grid.w))
            infos.append(LayerInfo(c.name, grid, t.channels, t.cam_supported, t.grid.kind, t.grid.prefix))
        return infos

    # ---- resolution -------------------------------------------------------------------------
    def resolve(self, target_layer: Any) -> Target:
        """The target: None = automatic (module docstring); else a name, ``outer/inner`` path, ``name@k``,
        or the layer object itself (``model.get_layer("conv")``, as pytorch-grad-cam users pass it).

        Raises ``UnknownLayerError`` (not found, ambiguous, a layer called several times without
        ``@k``, an output without a grid, no automatic target).
        """
        if target_layer is None:
            return self._default()
        if isinstance(target_layer, keras.layers.Layer):
            target_layer = self._name_of(target_layer)
        if not isinstance(target_layer, str) or not target_layer.strip("/"):
            hint = " (one target per explainer)" if isinstance(target_layer, (list, tuple)) else ""
            raise UnknownLayerError(
                f"target layer must be a layer's name or path, or the layer, got {target_layer!r}{hint}; "
                "None chooses it automatically (tf-keras-vis' penultimate_layer=-1)"
            )
        wanted = target_layer.strip("/")
        layer_calls = self.rec.calls
        matches = [c for c in layer_calls if c.name == wanted]
        if not matches and "/" not in wanted:
            matches = [c for c in layer_calls if c.name.rsplit("/", 1)[-1] == wanted]
        if not matches:
            base = [c for c in layer_calls if c.name.split("@")[0] in (wanted, wanted.split("@")[0])]
            if base and base[0].shared:
                names = ", ".join(c.name for c in base[:8])
                raise UnknownLayerError(
                    f"layer {target_layer!r} is called {len(base)} times in the model; pick one call: {names}"
                )
            try:
                inputs = {t.name for t in self.model.inputs}
            except (AttributeError, ValueError, TypeError):  # subclassed, or never built
                inputs = set()
            what = (
                f"{target_layer!r} is an Input of model {self.model.name!r}, not a layer call"
                if wanted.rsplit("/", 1)[-1] in inputs
                else f"no layer named {target_layer!r} in model {self.model.name!r}"
            )
            raise UnknownLayerError(f"{what}; layers with a grid are: {self._some_names()}")
        names = sorted({c.name for c in matches})
        if len(names) > 1:
            raise UnknownLayerError(
                f"layer name {target_layer!r} is ambiguous in model {self.model.name!r}; use one of the "
                f"paths {names}"
            )
        c = matches[0]
        if c.key not in self._grids:
            raise UnknownLayerError(
                f"layer {c.name!r} has output shape {self._shape_text(c)}, not (batch, h, w, channels) "
                "nor (batch, tokens, channels) with a patch grid (token_grid/prefix_tokens set it); "
                f"layers with a grid are: {self._some_names()}"
            )
        return self._with_reason(self.target_for(c), "requested")

    def _name_of(self, layer: Any) -> str:
        """The path of the one call of ``layer`` in the recorded forward pass (``name@k`` choices
        when it is called several times)."""
        names = list(dict.fromkeys(c.name for c in self.rec.calls if c.op is layer))
        if not names:
            raise UnknownLayerError(
                f"layer {layer.name!r} is not called when model {self.model.name!r} runs; layers with a "
                f"grid are: {self._some_names()}"
            )
        if len(names) > 1:
            raise UnknownLayerError(
                f"layer {layer.name!r} is called {len(names)} times in the model; pick one call: "
                f"{', '.join(names[:8])}"
            )
        return names[0]

    def _shape_text(self, c: LayerCall) -> str:
        return (
            "(batch, " + ", ".join(str(d) for d in c.shape) + ")" if c.shape is not None else "not one tensor"
        )

    def _some_names(self, limit: int = 12) -> str:
        names = [c.name for c in self.candidates()]
        if len(names) > limit:
            return ", ".join(names[-limit:]) + f" (last {limit} of {len(names)})"
        return ", ".join(names) or "(none)"

    @staticmethod
    def _with_reason(t: Target, reason: str) -> Target:
        return Target(t.call, t.grid, t.cam_supported, t.cam_reason, t.cam_kernel_value, reason)

    # ---- the default target -----------------------------------------------------------------
    def _own_output(self, c: LayerCall) -> bool:
        """The call's output is made at this level (a leaf, or a container ending in its own code)."""
        return c.leaf or self.rec.producer(c.outputs[0]) is c

    def _default(self) -> Target:
        order = list(reversed(self.candidates()))
        skipped: list[str] = []
        unreached: LayerCall | None = None  # the first grid the score does not depend on
        for i, c in enumerate(order):
            grid = self._grids[c.key]
            why = None
            if grid.size <= 1:
                why = "1x1 grid"
            elif any(isinstance(c.op, kinds) for kinds in _MOVERS.values()):
                why = next(w.lower() for w, kinds in _MOVERS.items() if isinstance(c.op, kinds))
            else:
                chunk = [d for d in order[i:] if self._grids[d.key].size > 1][:PROBE_CHUNK]
                self._ensure_grads(chunk + self._cam_shaped())
                why = self._no_reach(c, grid)
                unreached = unreached or c
            if why is None:
                return self._with_reason(self.target_for(c), self._reason(grid, "", skipped))
            skipped.append(f"{c.name} ({why})")
        if unreached is not None:  # the score depends on no grid at all (a constant output)
            grid = self._grids[unreached.key]
            return self._with_reason(
                self.target_for(unreached),
                self._reason(grid, "; the score depends on no layer's positions (a constant output?)", []),
            )
        raise UnknownLayerError(
            f"model {self.model.name!r} has no layer whose output has a spatial grid larger than 1x1 (a conv "
            "map (batch, h, w, channels) or tokens (batch, tokens, channels) with a patch grid); layers "
            f"with a grid: {self._some_names()}"
        )

    @staticmethod
    def _reason(grid: Grid, extra: str, skipped: list[str]) -> str:
        if grid.tokens:
            kind = f"{grid.h}x{grid.w} patch-token grid ({grid.prefix} prefix token(s) dropped)"
        else:
            kind = f"{grid.h}x{grid.w} grid"
        if extra:
            reason = f"the last layer with a {kind}{extra}"
        else:
            reason = f"the last layer on the way to the output with a {kind} the score depends on"
        if skipped:
            more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
            reason += "; after it: " + ", ".join(skipped[:3]) + more
        return reason

    def _no_reach(self, c: LayerCall, grid: Grid) -> str | None:
        """None if the score depends on at least two grid positions of this output, else why not."""
        g = np.abs(self._grads[c.key])
        positions = to_grid_numpy(g, grid).max(axis=(0, 3)) > 0.0
        if int(positions.sum()) >= 2:
            return None
        if grid.tokens and grid.prefix and g[:, : grid.prefix].max() > 0.0:
            return "only its class/prefix tokens reach the output"
        return "the output does not depend on its positions"

    def _ensure_grads(self, wanted: list[LayerCall]) -> None:
        missing = [c for c in dict.fromkeys(wanted) if c.key not in self._grads]
        if not missing:
            return
        if self._gradients is None:
            raise RuntimeError("ModelGraph needs the backend's gradients to choose or check targets")
        self._grads.update(self._gradients(self, missing, self._cotangent))

    # ---- CAM --------------------------------------------------------------------------------
    def _cam_shaped(self) -> list[LayerCall]:
        return [
            c for c in self.candidates() if cam_check.structure(self.rec, self.head, c, self._grids[c.key])[0]
        ]

    def target_for(self, c: LayerCall, verify_cam: bool = True) -> Target:
        """The Target for a candidate call, CAM support checked (numerically unless verify_cam=False)."""
        if verify_cam and c.key in self._targets:
            return self._targets[c.key]
        grid = self._grids[c.key]
        ok, reason, dense = cam_check.structure(self.rec, self.head, c, grid)
        weights = cam_check.kernel(dense, self.head.units) if ok else None
        if ok and verify_cam:
            self._ensure_grads([c, *self._cam_shaped()])
            if not cam_check.gradient_matches(self._grads[c.key], self._cotangent, weights, c.dtype):
                ok, weights = False, None
                reason = (
                    f"{cam_check.NEED}; {c.name!r} seems to feed it, but the score's gradient is not that of "
                    "GlobalAveragePooling2D -> Dense (a layer between them, or code outside the layers, "
                    "changes it)"
                )
        t = Target(c, grid, ok, "" if ok else reason, weights)
        if verify_cam:
            self._targets[c.key] = t
        return t
