"""The only place that touches private Keras 3 APIs (Functional graph internals).

Keras has no public way to run a Functional model while intercepting one inner layer's output, nor to
list a graph's nodes. Everything that needs it goes through the three functions below, and
``tests/engine/test_keras_graph.py`` checks them directly, so a Keras upgrade that changes the
internals fails there, loudly, instead of giving wrong maps. Backend-neutral (no TensorFlow import).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras


@dataclass(frozen=True)
class NodeView:
    """One call of an operation inside a Functional graph."""

    operation: Any
    inputs: tuple[Any, ...]  # KerasTensors consumed
    outputs: tuple[Any, ...]  # KerasTensors produced


def functional_of(model: Any) -> Any | None:
    """The Functional graph behind a model: itself, a built Sequential's inner graph, or None."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if hasattr(model, "_nodes_by_depth") and hasattr(model, "_run_through_graph"):
        return model
    return None


def graph_nodes(functional: Any) -> list[NodeView]:
    """Every non-input node of a Functional graph, in topological (execution) order."""
    nodes_by_depth = functional._nodes_by_depth
    out: list[NodeView] = []
    for depth in sorted(nodes_by_depth.keys(), reverse=True):
        for node in nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            out.append(NodeView(node.operation, tuple(node.input_tensors), tuple(node.outputs)))
    return out


def run_functional(
    functional: Any, inputs: Sequence[Any], call: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]
) -> Any:
    """Run a Functional graph on tensors, computing each node as ``call(operation, args, kwargs)``.

    ``call`` decides how each layer runs (inference mode, a probe added to one output, a nested
    model run recursively, a pre-activation instead of a softmax, ...).
    """

    def operation_fn(operation: Any) -> Callable[..., Any]:
        return lambda *args, **kwargs: call(operation, args, kwargs)

    return functional._run_through_graph(
        list(inputs), operation_fn=operation_fn, call_fn=lambda op, *args, **kwargs: op(*args, **kwargs)
    )


def call_inference(layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call a layer in inference mode (BatchNorm moving statistics, no Dropout)."""
    if getattr(layer, "_call_has_training_arg", False) or isinstance(layer, keras.Model):
        kwargs = {**kwargs, "training": False}
    return layer(*args, **kwargs)
