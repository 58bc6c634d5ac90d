"""Softmax, sigmoid and pass-through layers, recognised by what they are, not how they are spelled.

Known functions are matched by identity (and through ``functools.wraps`` / ``functools.partial``)
across ``keras.activations``, ``keras.ops``, ``tf.nn``/``tf.math`` and ``jax.nn``, whichever of
TensorFlow and JAX the process already imported (the JAX backend never imports TensorFlow). A layer
can apply one as its own activation (``Dense(.., activation=tf.nn.softmax)``: the logits are its
pre-activation) or to its whole input (``Softmax()``, ``Activation(..)``, ``Lambda(..)``, a
``keras.ops`` graph node: the logits are its input). ``heads`` decides which one makes the output.
"""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any

import keras

from camserve.engine.calls import Site, Tap
from camserve.engine.keras_private import CallFn, on_this_thread, ops_node_kind

#: Layers that do not change a class vector's values at inference (noise and dropout are off).
_PASS_LAYERS = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.AlphaDropout,
    keras.layers.Identity,
    keras.layers.Reshape,
    keras.layers.Flatten,
    keras.layers.ActivityRegularization,
)


@functools.cache
def _known_table() -> dict[int, str]:
    table: dict[int, str] = {}

    def add(kind: str, *fns: Any) -> None:
        for fn in fns:
            if fn is not None:
                table[id(fn)] = kind
                table[id(inspect.unwrap(fn))] = kind

    k = keras
    add("softmax", k.activations.softmax, k.ops.softmax, k.ops.nn.softmax)
    add("log_softmax", k.activations.log_softmax, k.ops.log_softmax, k.ops.nn.log_softmax)
    add("sigmoid", k.activations.sigmoid, k.ops.sigmoid, k.ops.nn.sigmoid)
    add("linear", k.activations.linear)
    tf = sys.modules.get("tensorflow")  # only if already imported: the JAX backend never imports it
    if tf is not None:
        add("softmax", tf.nn.softmax, tf.math.softmax)
        add("log_softmax", tf.nn.log_softmax, tf.math.log_softmax)
        add("sigmoid", tf.nn.sigmoid, tf.math.sigmoid, tf.sigmoid)
    jax = sys.modules.get("jax")
    if jax is not None:
        import jax.nn

        add("softmax", jax.nn.softmax)
        add("log_softmax", jax.nn.log_softmax)
        add("sigmoid", jax.nn.sigmoid)
    return table


def function_kind(fn: Any) -> tuple[str, int] | None:
    """("softmax" | "log_softmax" | "sigmoid" | "linear", axis) for a known function, else None."""
    if fn is None:
        return "linear", -1
    axis = -1
    if isinstance(fn, functools.partial):
        axis = int(fn.keywords.get("axis", -1))
        fn = fn.func
    kind = _known_table().get(id(fn)) or _known_table().get(id(inspect.unwrap(fn)))
    return (kind, axis) if kind else None


def applied_activation(op: Any) -> tuple[str, int] | None:
    """The known function an operation applies to its input as a whole (its input is the logits)."""
    if isinstance(op, keras.layers.Softmax):
        axis = op.axis if isinstance(op.axis, int) else -1
        return "softmax", int(axis)
    if isinstance(op, keras.layers.Activation):
        return function_kind(op.activation)
    if isinstance(op, keras.layers.Lambda):
        return function_kind(op.function)
    node = ops_node_kind(op)
    return node if node is not None and node[0] != "pass" else None


def attribute_activation(op: Any) -> tuple[str, int] | None:
    """A softmax/sigmoid a layer applies at the end of its own call (``Dense(.., activation=..)``)."""
    if isinstance(op, (keras.layers.Activation, keras.layers.Softmax)) or not hasattr(op, "activation"):
        return None
    found = function_kind(op.activation)
    return found if found is not None and found[0] != "linear" else None


def is_pass_through(op: Any) -> bool:
    """Layers that do not change a class vector's values at inference (dtype, shape, noise, identity)."""
    if isinstance(op, _PASS_LAYERS):
        return True
    found = applied_activation(op)
    if found is not None and found[0] == "linear":
        return True
    node = ops_node_kind(op)
    return node is not None and node[0] == "pass"


def pre_activation_tap(call: CallFn, args: tuple[Any, ...], kwargs: dict[str, Any], site: Site) -> Any:
    """Run a layer with its activation set to linear, note that value, then apply the activation.

    The output is unchanged (act(z) is what the layer's call computes last); the note is the logits.
    """
    op = site.op
    act = op.activation
    # Linear on this thread only: another thread calling the same layer meanwhile (``intercept``
    # lets its calls through) must still get the layer's activation.
    object.__setattr__(op, "activation", on_this_thread(keras.activations.linear, act))
    try:
        z = call(*args, **kwargs)
    finally:
        object.__setattr__(op, "activation", act)
    site.notes["pre_activation"] = z
    return act(z)


def record_taps(ops: list[Any]) -> dict[int, Tap]:
    """Taps (by operation id) that record the pre-activation of every layer with a softmax/sigmoid one."""
    return {id(op): pre_activation_tap for op in ops if attribute_activation(op) is not None}
