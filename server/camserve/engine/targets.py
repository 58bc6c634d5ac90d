"""Model inspection: target-layer resolution, the CAM head check and the graph run with hooks.

Nested sub-models are flattened into one list of leaf-layer calls whose tensors are identified across
model boundaries, so a target inside ``Sequential([base, GAP, Dense])`` is found by name (or by an
``"outer/inner"`` path) and its consumers can be followed up to the output. The model is then run
layer by layer through the same graph (``run_model``) with hooks at chosen layers: this is how the
backends add the zero probe at the target's output and take the pre-softmax logits, without building
a second Keras model (which raises "not connected" for nested targets). Backend-neutral: Keras only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from camserve.engine.errors import InvalidInputError, UnknownLayerError
from camserve.engine.keras_graph import call_inference, functional_of, graph_nodes, run_functional
from camserve.records import LayerInfo

Key = tuple[int, int]  # (id of the Functional graph, id of the KerasTensor) after aliasing
PathIds = tuple[int, ...]  # ids of the layers from the top-level model down to one layer

_PASS_THROUGH = (keras.layers.Dropout, keras.layers.Identity)
_POOLING = (
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
)


def _activation_name(layer: Any) -> str | None:
    """'softmax' / 'sigmoid' / 'linear' / ... for Dense and Activation layers, else None."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    fn = getattr(layer, "activation", None)
    if fn is None:
        return None
    return getattr(fn, "__name__", str(fn))


@dataclass(frozen=True)
class FlatOp:
    """One call of a leaf layer (or of a nested model used as a whole) in the flattened graph."""

    path: tuple[Any, ...]  # layers from the top-level model down to this one
    inputs: tuple[Key, ...]
    outputs: tuple[Key, ...]
    shape: tuple[int | None, ...]  # first output's shape, batch axis included
    dtype: str
    leaf: bool  # False for a nested model entry (kept for name resolution)

    @property
    def layer(self) -> Any:
        return self.path[-1]

    @property
    def name(self) -> str:
        return "/".join(layer.name for layer in self.path)

    @property
    def ids(self) -> PathIds:
        return tuple(id(layer) for layer in self.path)


@dataclass(frozen=True)
class Target:
    """A resolved target layer (one call site) and what the engine needs to know about it."""

    op: FlatOp
    cam_supported: bool
    cam_reason: str  # "" when supported
    cam_dense: Any | None  # the Dense layer whose kernel gives CAM weights

    @property
    def name(self) -> str:
        return self.op.name

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.op.shape[1]), int(self.op.shape[2])  # type: ignore[arg-type]

    @property
    def channels(self) -> int:
        return int(self.op.shape[3])  # type: ignore[arg-type]

    def cam_kernel(self) -> np.ndarray:
        """The (C, N) Dense kernel used by CAM, as float32 NumPy."""
        if self.cam_dense is None:
            raise RuntimeError("no CAM head")
        return np.asarray(self.cam_dense.get_weights()[0], dtype=np.float32)


@dataclass(frozen=True)
class Head:
    """How the score is taken at the model's output.

    ``mode``: "dense" (final Dense with a softmax/sigmoid activation: recompute its pre-activation),
    "input" (final Activation/Softmax layer: take its input), "output" (the output is already logits).
    ``kind``: the normalisation that turns logits into probabilities ("softmax" or "sigmoid").
    """

    op: FlatOp
    mode: str
    kind: str


class ModelGraph:
    """A Keras model's flattened graph: candidate targets, resolution, CAM support, head, runner."""

    def __init__(self, model: Any, input_shape: tuple[int, ...] | None = None) -> None:
        if not isinstance(model, keras.Model):
            raise InvalidInputError(f"expected a keras.Model, got {type(model).__name__}")
        self.model = model
        self.functional = self._ensure_built(model, input_shape)
        if len(self.functional.inputs) != 1 or len(self.functional.outputs) != 1:
            raise InvalidInputError(
                f"model {model.name!r} has {len(self.functional.inputs)} inputs and "
                f"{len(self.functional.outputs)} outputs; the engine needs one image input and one "
                "(batch, classes) output"
            )
        in_shape = tuple(self.functional.inputs[0].shape)
        out_shape = tuple(self.functional.outputs[0].shape)
        if len(in_shape) != 4 or any(d is None for d in in_shape[1:]):
            raise InvalidInputError(
                f"model input shape {in_shape} is not (batch, H, W, C) with known H, W, C; "
                "pass input_shape=(H, W, C)"
            )
        if len(out_shape) != 2 or out_shape[1] is None:
            raise InvalidInputError(f"model output shape {out_shape} is not (batch, classes)")
        self.input_shape: tuple[int, int, int] = tuple(int(d) for d in in_shape[1:])  # type: ignore[assignment]
        self.num_classes = int(out_shape[1])
        self.ops: list[FlatOp] = []
        self._alias: dict[Key, Key] = {}
        self._expand(self.functional, ())
        self.output_key = self._canon(self.functional, self.functional.outputs[0])
        self.consumers: dict[Key, list[FlatOp]] = {}
        for op in self.ops:
            if op.leaf:
                for k in op.inputs:
                    self.consumers.setdefault(k, []).append(op)
        self.head = self._find_head()

    # ---- building the flat view -------------------------------------------------------------
    @staticmethod
    def _ensure_built(model: Any, input_shape: tuple[int, ...] | None) -> Any:
        functional = functional_of(model)
        if functional is None and isinstance(model, keras.Sequential):
            if input_shape is None:
                raise InvalidInputError(
                    f"Sequential model {model.name!r} was never called and has no Input: "
                    "pass input_shape=(H, W, C) (the library API takes it from the first image)"
                )
            model.build((None, *tuple(int(d) for d in input_shape)))
            functional = functional_of(model)
        if functional is None:
            raise InvalidInputError(
                f"model {model.name!r} ({type(model).__name__}) is not a Functional or Sequential "
                "model; subclassed models have no graph to find a target layer in"
            )
        return functional

    def _canon(self, functional: Any, tensor: Any) -> Key:
        key = (id(functional), id(tensor))
        return self._alias.get(key, key)

    def _expand(self, functional: Any, prefix: tuple[Any, ...]) -> None:
        for node in graph_nodes(functional):
            op = node.operation
            in_keys = tuple(self._canon(functional, t) for t in node.inputs)
            inner = functional_of(op) if isinstance(op, keras.Model) else None
            path = (*prefix, op)
            shape = tuple(node.outputs[0].shape) if node.outputs else ()
            dtype = str(node.outputs[0].dtype) if node.outputs else "float32"
            if inner is not None and len(inner.inputs) == len(in_keys):
                for t_inner, k in zip(inner.inputs, in_keys, strict=True):
                    self._alias[(id(inner), id(t_inner))] = k
                self._expand(inner, path)
                out_keys = tuple(self._canon(inner, t) for t in inner.outputs)
                for t, k in zip(node.outputs, out_keys, strict=False):
                    self._alias[(id(functional), id(t))] = k
                self.ops.append(FlatOp(path, in_keys, out_keys, shape, dtype, leaf=False))
            else:
                outs = tuple(self._canon(functional, t) for t in node.outputs)
                self.ops.append(FlatOp(path, in_keys, outs, shape, dtype, leaf=True))

    # ---- targets ----------------------------------------------------------------------------
    @staticmethod
    def _is_4d(op: FlatOp) -> bool:
        return len(op.shape) == 4 and all(d is not None for d in op.shape[1:]) and len(op.outputs) == 1

    def candidates(self) -> list[FlatOp]:
        """Leaf layers with a single 4-D output, in execution order."""
        return [op for op in self.ops if op.leaf and self._is_4d(op)]

    def layer_infos(self) -> list[LayerInfo]:
        """The candidate targets as plain records (for ModelSummary.layers)."""
        infos = []
        for op in self.candidates():
            t = self.target_for(op)
            infos.append(LayerInfo(op.name, (int(t.grid[0]), int(t.grid[1])), t.channels, t.cam_supported))
        return infos

    def resolve(self, target_layer: str | None) -> Target:
        """Find the target layer: None = the last 4-D layer that is not pooling; else name or path."""
        if target_layer is None:
            cands = [op for op in self.candidates() if not isinstance(op.layer, _POOLING)]
            if not cands:
                raise UnknownLayerError(
                    f"model {self.model.name!r} has no layer with a 4-D (batch, h, w, channels) "
                    "output to explain"
                )
            return self.target_for(cands[-1])
        if not isinstance(target_layer, str) or not target_layer.strip("/"):
            raise UnknownLayerError(f"target layer must be a non-empty name, got {target_layer!r}")
        wanted = target_layer.strip("/")
        matches = [op for op in self.ops if op.name == wanted]
        if not matches and "/" not in wanted:
            matches = [op for op in self.ops if op.layer.name == wanted]
        names = sorted({op.name for op in matches})
        if not matches:
            raise UnknownLayerError(
                f"no layer named {target_layer!r} in model {self.model.name!r}; "
                f"4-D layers are: {self._some_names()}"
            )
        if len(names) > 1:
            raise UnknownLayerError(
                f"layer name {target_layer!r} is ambiguous in model {self.model.name!r}; "
                f"use one of the paths {names}"
            )
        if len(matches) > 1:
            raise UnknownLayerError(
                f"layer {target_layer!r} is called {len(matches)} times in the model (shared); "
                "pick a layer that is called once"
            )
        op = matches[0]
        if not self._is_4d(op):
            raise UnknownLayerError(
                f"layer {op.name!r} has output shape {op.shape}, not (batch, h, w, channels); "
                f"4-D layers are: {self._some_names()}"
            )
        return self.target_for(op)

    def _some_names(self, limit: int = 12) -> str:
        names = [op.name for op in self.candidates()]
        if len(names) > limit:
            return ", ".join(names[-limit:]) + f" (last {limit} of {len(names)})"
        return ", ".join(names)

    def target_for(self, op: FlatOp) -> Target:
        ok, reason, dense = self._cam_head(op)
        return Target(op, ok, reason, dense)

    # ---- CAM head check ---------------------------------------------------------------------
    def _describe_chain(self, key: Key, steps: int = 4) -> str:
        parts = []
        for _ in range(steps):
            cons = self.consumers.get(key, [])
            if len(cons) != 1:
                if len(cons) > 1:
                    parts.append(f"[{len(cons)} branches]")
                break
            parts.append(f"{type(cons[0].layer).__name__}({cons[0].layer.name})")
            key = cons[0].outputs[0]
        return " -> ".join(parts) if parts else "(model output)"

    def _cam_head(self, op: FlatOp) -> tuple[bool, str, Any | None]:
        """target -> GlobalAveragePooling2D -> [Dropout / linear Activation]* -> one Dense -> output."""
        start = op.outputs[0]
        need = (
            "CAM needs the target layer to feed GlobalAveragePooling2D then one Dense output layer "
            "(optionally through Dropout / linear Activation)"
        )
        here = f"here {op.layer.name} -> {self._describe_chain(start)}"
        cons = self.consumers.get(start, [])
        if len(cons) != 1 or not isinstance(cons[0].layer, keras.layers.GlobalAveragePooling2D):
            return False, f"{need}; {here}", None
        gap = cons[0].layer
        if getattr(gap, "keepdims", False):
            return False, f"{need}; {here} (the pooling keeps dims)", None
        key = cons[0].outputs[0]
        dense = None
        while True:
            cons = self.consumers.get(key, [])
            if len(cons) != 1:
                return False, f"{need}; {here}", None
            layer = cons[0].layer
            if isinstance(layer, keras.layers.Dense):
                dense = layer
                key = cons[0].outputs[0]
                break
            passes = isinstance(layer, _PASS_THROUGH) or (
                isinstance(layer, keras.layers.Activation) and _activation_name(layer) == "linear"
            )
            if not passes:
                return False, f"{need}; {here}", None
            key = cons[0].outputs[0]
        # After the Dense only a softmax/sigmoid/linear activation may follow before the output.
        while key != self.output_key:
            cons = self.consumers.get(key, [])
            if len(cons) != 1 or _activation_name(cons[0].layer) not in ("softmax", "sigmoid", "linear"):
                return False, f"{need}; {here} (the Dense does not give the model's output)", None
            key = cons[0].outputs[0]
        return True, "", dense

    # ---- output head ------------------------------------------------------------------------
    def _find_head(self) -> Head:
        producer = next(op for op in reversed(self.ops) if op.leaf and self.output_key in op.outputs)
        act = _activation_name(producer.layer)
        if isinstance(producer.layer, keras.layers.Dense) and act in ("softmax", "sigmoid"):
            return Head(producer, "dense", act)
        if isinstance(producer.layer, (keras.layers.Activation, keras.layers.Softmax)) and act in (
            "softmax",
            "sigmoid",
        ):
            return Head(producer, "input", act)
        return Head(producer, "output", "softmax")

    # ---- running the graph with hooks -------------------------------------------------------
    def run(self, x: Any, hooks: dict[PathIds, Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]]) -> Any:
        """Run the model on ``x`` in inference mode; ``hooks[path ids](layer, args, kwargs)`` replaces
        the call of that layer (nested models on the way to a hook are run node by node)."""
        descend = {ids[:i] for ids in hooks for i in range(1, len(ids))}
        return _run(self.functional, x, (), hooks, descend)

    def logits_hooks(self) -> dict[PathIds, Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]]:
        """Hooks that make the run return pre-activation logits at the output (float32)."""
        head = self.head
        if head.mode == "dense":

            def dense_logits(layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                ops = keras.ops
                y = ops.matmul(ops.cast(args[0], "float32"), ops.cast(layer.kernel, "float32"))
                if layer.use_bias:
                    y = y + ops.cast(layer.bias, "float32")
                return y

            return {head.op.ids: dense_logits}
        if head.mode == "input":
            return {head.op.ids: lambda layer, args, kwargs: keras.ops.cast(args[0], "float32")}
        return {}


def _unpack(out: Any) -> Any:
    if isinstance(out, (list, tuple)) and len(out) == 1:
        return out[0]
    return out


def _run(functional: Any, x: Any, prefix: PathIds, hooks: dict, descend: set[PathIds]) -> Any:
    def call(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = (*prefix, id(op))
        if key in hooks:
            return hooks[key](op, args, kwargs)
        if key in descend:
            inner = functional_of(op)
            return _run(inner, args[0], key, hooks, descend)
        return call_inference(op, args, kwargs)

    inputs = list(x) if isinstance(x, (list, tuple)) else [x]
    return _unpack(run_functional(functional, inputs, call))
