"""The only place that relies on Keras 3 internals: how a layer's call is dispatched and found.

Keras has no public way to intercept one inner layer's call while a model runs, nor to list the
sublayers a custom layer owns. The engine needs both (a zero probe at the target layer's output, the
pre-softmax logits at the head, a record of every layer call), so they live here, behind four small
functions, and ``tests/engine/test_keras_private.py`` checks each one directly: a Keras upgrade that
changes them fails there, loudly, instead of giving wrong maps.

What is relied on (Keras 3.15):
- ``Layer.__call__`` ends in ``Operation.__call__``, which looks up ``self.call`` (or
  ``self.quantized_call`` for a quantized layer) on the *instance* at call time, so an instance
  attribute of that name intercepts every call of that one layer, however it is reached (a Functional
  graph's node, ``Sequential``, a subclassed model's ``call()``, a custom layer calling its sublayers).
  Such an attribute is seen by every thread, so ``intercept`` lets one thread patch at a time and
  passes other threads' calls through to the layer's own ``call``.
- ``Layer._flatten_layers(include_self=False, recursive=False)`` lists the sublayers a layer tracks
  (attributes, lists and dicts of layers), which is how custom layers' blocks are found.
- ``Functional.operations`` (public) also lists the non-layer operations of a graph (``x[:, 0]``,
  ``ops.mean``) so they are seen in the data flow.

Backend-neutral: no TensorFlow or JAX import.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras

CallFn = Callable[..., Any]


def is_functional(op: Any) -> bool:
    """A Functional graph model (its ``inputs``/``operations`` are defined), not Sequential/subclassed."""
    return isinstance(op, keras.Model) and hasattr(op, "operations") and hasattr(op, "_nodes_by_depth")


def children(op: Any) -> list[Any]:
    """The operations directly inside ``op`` whose calls can run when ``op`` is called.

    Sequential: its layers. Functional: its graph's operations (layers and ``keras.ops`` nodes),
    input layers excluded. Any other layer (subclassed model, custom layer): the sublayers it tracks.
    A built Sequential's internal Functional is not listed (it is an implementation detail whose
    ``call`` Sequential invokes directly), so paths name only layers a user created.
    """
    if isinstance(op, keras.Sequential):
        found = list(op.layers)
    elif is_functional(op):
        found = list(op.operations)
    elif isinstance(op, keras.layers.Layer):
        found = list(op._flatten_layers(include_self=False, recursive=False))
    else:
        return []
    return [c for c in found if not isinstance(c, keras.layers.InputLayer) and c is not op]


def walk(root: Any) -> list[Any]:
    """Every operation reachable from ``root`` through ``children``, each once, root excluded."""
    seen: dict[int, Any] = {}
    stack = list(reversed(children(root)))
    while stack:
        op = stack.pop()
        if id(op) in seen:
            continue
        seen[id(op)] = op
        stack.extend(reversed(children(op)))
    return list(seen.values())


def _call_attrs(op: Any) -> tuple[str, ...]:
    """The instance attributes ``Operation.__call__`` dispatches to for this operation."""
    if getattr(op, "quantization_mode", None) is not None:
        return ("call", "quantized_call")
    return ("call",)


#: Held while a thread intercepts a model's calls (``intercept``), and by whatever must not see a
#: model half-patched (``exclusive``). Re-entrant: a thread may intercept inside its own intercept.
_LOCK = threading.RLock()


def exclusive() -> threading.RLock:
    """The process-wide lock ``intercept`` holds; hold it to read a model's layers (their ``call``,
    their ``activation``) while no other thread has them patched."""
    return _LOCK


def on_this_thread(wrapped: CallFn, original: CallFn) -> CallFn:
    """``wrapped`` for calls made on the thread that created this, ``original`` on every other one.

    Why: a patch is an attribute of a layer object, which every thread shares; a web server that
    runs ``model.predict`` for one request while camserve records or traces the same model for
    another must get the model's own result, not the engine's taps (nor feed its calls into the
    engine's recording). Tracing (tf.function, jax.jit) runs the Python call on the calling thread.
    """
    owner = threading.get_ident()

    def call(*args: Any, **kwargs: Any) -> Any:
        return wrapped(*args, **kwargs) if threading.get_ident() == owner else original(*args, **kwargs)

    return call


@contextlib.contextmanager
def intercept(ops: Sequence[Any], make: Callable[[Any, CallFn], CallFn]) -> Iterator[None]:
    """While inside, every call of each op in ``ops`` made on this thread goes through
    ``make(op, original_call)``.

    The wrapper receives the call's ``(*args, **kwargs)`` exactly as ``call`` would (after Keras has
    converted dtypes, built the layer and resolved ``training``). Restored on exit, even on error.
    Thread-safe: one thread intercepts at a time (``exclusive``: another thread's intercept waits,
    so patches never interleave and each is undone in the order it was made), and calls the other
    threads make meanwhile run the layers' own ``call`` (``on_this_thread``).
    """
    patched: list[tuple[Any, str, bool, Any]] = []
    with _LOCK:
        try:
            for op in ops:
                for attr in _call_attrs(op):
                    had_own = attr in vars(op)
                    original = getattr(op, attr)
                    object.__setattr__(op, attr, on_this_thread(make(op, original), original))
                    patched.append((op, attr, had_own, original))
            yield
        finally:
            for op, attr, had_own, original in reversed(patched):
                if had_own:
                    object.__setattr__(op, attr, original)
                else:
                    object.__delattr__(op, attr)


def call_inference(layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call a layer or model in inference mode (BatchNorm moving statistics, no Dropout)."""
    if getattr(layer, "_call_has_training_arg", False) or isinstance(layer, keras.Model):
        kwargs = {**kwargs, "training": False}
    return layer(*args, **kwargs)


def ops_node_kind(op: Any) -> tuple[str, int] | None:
    """What a ``keras.ops`` node of a Functional graph computes, for the head analysis.

    ("softmax" | "log_softmax" | "sigmoid", axis) for those functions applied as graph nodes
    (``keras.ops.softmax(x)`` on a KerasTensor), ("pass", 0) for nodes that only change dtype or
    shape (``ops.cast``, ``ops.reshape``, ``ops.squeeze``, ``ops.expand_dims``), else None. These
    classes live in ``keras.src`` (not exported), hence here.
    """
    from keras.src.ops import core, nn, numpy

    if isinstance(op, nn.Softmax):
        return "softmax", int(op.axis)
    if isinstance(op, nn.LogSoftmax):
        return "log_softmax", int(op.axis)
    if isinstance(op, nn.Sigmoid):
        return "sigmoid", -1
    if isinstance(op, (core.Cast, numpy.Reshape, numpy.Squeeze, numpy.ExpandDims)):
        return "pass", 0
    return None
