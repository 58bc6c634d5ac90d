"""Every layer call of a forward pass, found and intercepted where it happens (call-time hooks).

A target is a *call* of a layer during the model's forward pass, addressed by the layers enclosing it:
``outer/inner/sub``, with ``@k`` for the k-th call when the same layer is called more than once at the
same place (``relu@1``). This covers every model kind alike, because it does not read a graph: Keras
runs the model (Functional graph, Sequential, a subclassed ``call()``, a custom layer calling its own
blocks) and each call of a layer passes through a wrapper (``keras_private.intercept``) that knows
the stack of enclosing calls. The same mechanism serves two purposes:

- ``record``: one eager run on a small batch lists every call (``LayerCall``: path, output shape,
  tensors consumed and produced, so the data flow between layers is known), and keeps the values for
  the analysis of the head (``heads``) and of the targets (``targets``);
- ``run``: inside a compiled step, ``Tap`` functions replace chosen calls (a zero probe added to the
  target's output, the logits captured at the head). Nothing else changes: the forward pass is the
  model's own, so the step costs what a forward pass costs.

Backend-neutral: Keras only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import keras
import numpy as np

from camserve.engine.keras_private import CallFn, call_inference, intercept, walk

CallKey = tuple[
    tuple[int, ...], int
]  # (ids of the layers from the model's child down to this one, k-th call)


@dataclass(frozen=True)
class LayerCall:
    """One call of one operation during a recorded forward pass.

    ``shape`` is the output's shape without the batch axis when the output is one tensor whose first
    axis is the batch (else None). ``inputs``/``outputs`` are serial numbers of the tensors consumed and
    produced (the same serial for the same tensor across model boundaries); ``pre_activation`` is the
    serial of the value before the layer's own activation, when it was recorded (see ``heads``).
    """

    path: tuple[Any, ...]
    occurrence: int
    start: int  # when the call began, on one clock with ``end``
    end: int  # when it finished (a container ends after its children)
    shape: tuple[int, ...] | None
    dtype: str | None
    leaf: bool  # no recorded call inside it
    is_layer: bool  # False for a keras.ops node of a Functional graph (x[:, 0], ops.mean, ...)
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    shared: bool = False  # the same path is called more than once
    pre_activation: int | None = None

    @property
    def op(self) -> Any:
        return self.path[-1]

    @property
    def key(self) -> CallKey:
        return tuple(id(o) for o in self.path), self.occurrence

    @property
    def name(self) -> str:
        base = "/".join(o.name for o in self.path)
        return f"{base}@{self.occurrence}" if self.shared else base


@dataclass
class Site:
    """The call being made, as a Tap sees it: its key, and a place to leave values for the caller."""

    key: CallKey
    op: Any
    notes: dict[str, Any]


Tap = Callable[[CallFn, tuple[Any, ...], dict[str, Any], Site], Any]
"""Replaces one call: ``tap(call, args, kwargs, site)`` must return what ``call(*args, **kwargs)`` would
(e.g. that plus a zero probe); ``site.notes`` carries values out of the forward pass."""


def compose(taps: list[Tap]) -> Tap:
    """One tap from several on the same call; the first in the list is the innermost."""

    def composed(call: CallFn, args: tuple[Any, ...], kwargs: dict[str, Any], site: Site) -> Any:
        inner = call
        for tap in taps:
            inner = _bind(tap, inner, site)
        return inner(*args, **kwargs)

    return composed


def _bind(tap: Tap, call: CallFn, site: Site) -> CallFn:
    return lambda *a, **k: tap(call, a, k, site)


@dataclass
class _Frame:
    op: Any
    start: int
    children: int = 0


@dataclass
class _Run:
    taps: dict[CallKey, Tap]
    by_op: dict[int, Tap]
    record: bool
    batch: int = 0  # the batch size of a recorded run: outputs whose first axis differs are not grids
    notes: dict[str, Any] = field(default_factory=dict)
    stack: list[_Frame] = field(default_factory=list)
    counts: dict[tuple[int, ...], int] = field(default_factory=dict)
    clock: int = 0  # one counter for starts and ends, so "ended before that started" is comparable
    calls: list[LayerCall] = field(default_factory=list)
    serial_of: dict[int, int] = field(default_factory=dict)  # id(tensor) -> serial
    values: dict[int, Any] = field(default_factory=dict)  # serial -> tensor (record only)
    unknown: list[tuple[int, int]] = field(default_factory=list)  # (serial, start) of inputs never produced

    def serial(self, tensor: Any, start: int | None = None) -> int:
        s = self.serial_of.get(id(tensor))
        if s is None:
            s = len(self.serial_of)
            self.serial_of[id(tensor)] = s
            self.values[s] = tensor  # also keeps the object alive, so its id is not reused
            if start is not None:
                self.unknown.append((s, start))
        return s

    def wrapper(self, op: Any, original: CallFn) -> CallFn:
        def call(*args: Any, **kwargs: Any) -> Any:
            parent = self.stack[-1] if self.stack else None
            if parent is not None:
                parent.children += 1
            ids = (*(id(f.op) for f in self.stack), id(op))
            occurrence = self.counts.get(ids, 0)
            self.counts[ids] = occurrence + 1
            frame = _Frame(op, self.clock)
            self.clock += 1
            in_serials = _tensors(args, kwargs) if self.record else []
            ins = tuple(self.serial(t, frame.start) for t in in_serials)
            key = (ids, occurrence)
            site = Site(key, op, self.notes)
            tap = self.taps.get(key) or self.by_op.get(id(op))
            self.stack.append(frame)
            try:
                out = tap(original, args, kwargs, site) if tap is not None else original(*args, **kwargs)
            finally:
                self.stack.pop()
            if self.record:
                self._record(op, frame, occurrence, ins, out, site)
            self.clock += 1
            return out

        return call

    def _record(
        self, op: Any, frame: _Frame, occurrence: int, ins: tuple[int, ...], out: Any, site: Site
    ) -> None:
        flat = keras.tree.flatten(out)
        outs = tuple(self.serial(t) for t in flat if _is_tensor(t))
        shape = dtype = None
        if len(flat) == 1 and _is_tensor(flat[0]):
            full = tuple(int(d) for d in flat[0].shape)
            if len(full) >= 1 and full[0] == self.batch:
                shape = full[1:]
                dtype = keras.backend.standardize_dtype(flat[0].dtype)
        pre = site.notes.pop("pre_activation", None)
        path = (*(f.op for f in self.stack), op)
        self.calls.append(
            LayerCall(
                path=path,
                occurrence=occurrence,
                start=frame.start,
                end=self.clock,
                shape=shape,
                dtype=dtype,
                leaf=frame.children == 0,
                is_layer=isinstance(op, keras.layers.Layer),
                inputs=ins,
                outputs=outs,
                pre_activation=None if pre is None else self.serial(pre),
            )
        )


def _is_tensor(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (keras.Variable, np.dtype))


def _tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    return [t for t in keras.tree.flatten((args, kwargs)) if _is_tensor(t)]


def run(model: Any, x: Any, taps: dict[CallKey, Tap] | None = None) -> tuple[Any, dict[str, Any]]:
    """Run ``model(x, training=False)`` with ``taps`` replacing chosen calls; returns (output, notes).

    Used inside compiled steps: the wrappers run at trace time only, so they cost nothing per batch.
    """
    state = _Run(taps=dict(taps or {}), by_op={}, record=False)
    with intercept(walk(model), state.wrapper):
        y = call_inference(model, (x,), {})
    return y, state.notes


@dataclass
class Recording:
    """The calls of one eager forward pass (see the module docstring) and the values seen."""

    calls: list[LayerCall]
    input: int  # serial of the model's input
    output: int  # serial of the model's output
    values: dict[int, Any]  # serial -> tensor, for the analysis; ``numpy(serial)`` reads one
    alias: dict[int, int]  # serial of a converted copy (autocast) -> serial it was converted from
    _producers: dict[int, LayerCall] | None = field(default=None, repr=False)
    _consumers: dict[int, list[LayerCall]] | None = field(default=None, repr=False)

    def numpy(self, serial: int) -> np.ndarray:
        return np.asarray(keras.ops.convert_to_numpy(self.values[self.canon(serial)]))

    def canon(self, serial: int) -> int:
        while serial in self.alias:
            serial = self.alias[serial]
        return serial

    def producer(self, serial: int) -> LayerCall | None:
        """The innermost call that produced this tensor (None: the model input or code outside layers)."""
        return self._index()[0].get(self.canon(serial))

    def consumers(self, serial: int) -> list[LayerCall]:
        """Innermost (leaf) calls that take this tensor as an input (calls returning it unchanged,
        such as Dropout at inference, are transparent: their consumers count instead)."""
        return self._index()[1].get(self.canon(serial), [])

    def _index(self) -> tuple[dict[int, LayerCall], dict[int, list[LayerCall]]]:
        if self._producers is None or self._consumers is None:
            producers: dict[int, LayerCall] = {}
            consumers: dict[int, list[LayerCall]] = {}
            for c in sorted(self.calls, key=lambda c: c.end):  # innermost first: it ends first
                for s in c.outputs:
                    producers.setdefault(self.canon(s), c)
                if c.leaf and not set(c.outputs) <= set(
                    c.inputs
                ):  # identity returns (inference Dropout) skipped
                    for s in dict.fromkeys(self.canon(s) for s in c.inputs):
                        consumers.setdefault(s, []).append(c)
            self._producers, self._consumers = producers, consumers
        return self._producers, self._consumers

    def forget_values(self) -> None:
        self.values = {}


def record(model: Any, x: Any, by_op: dict[int, Tap] | None = None) -> tuple[Any, Recording]:
    """Run ``model(x, training=False)`` eagerly once, recording every call (see ``LayerCall``).

    ``by_op`` taps every call of an operation (by ``id``); a tap may leave ``site.notes
    ["pre_activation"]`` to record the value before the layer's activation. Builds a model that was
    never called. Raises whatever the model's own call raises.
    """
    state = _Run(taps={}, by_op=dict(by_op or {}), record=True)
    state.batch = int(x.shape[0])
    x_serial = state.serial(x)
    with intercept(walk(model), state.wrapper):
        y = call_inference(model, (x,), {})
    flat = keras.tree.flatten(y)
    out_serial = state.serial(flat[0]) if len(flat) == 1 else -1
    counts: dict[tuple[int, ...], int] = {}
    for c in state.calls:
        counts[c.key[0]] = counts.get(c.key[0], 0) + 1
    calls = sorted((replace(c, shared=counts[c.key[0]] > 1) for c in state.calls), key=lambda c: c.start)
    rec = Recording(calls, x_serial, out_serial, state.values, {})
    _resolve_conversions(rec, state.unknown)
    return y, rec


def _resolve_conversions(rec: Recording, unknown: list[tuple[int, int]]) -> None:
    """Link inputs that no call produced to the tensor they were converted from (dtype autocast).

    Keras casts a layer's inputs to its compute dtype before ``call`` (mixed precision: a float32
    Softmax after a float16 Dense), which makes a new tensor. The value, cast, is the same: find the
    latest output of the same shape, finished before the consuming call began, whose values match.
    """
    produced = [(c.end, s) for c in rec.calls for s in c.outputs] + [(-1, rec.input)]
    for serial, began in unknown:
        t = rec.values[serial]
        want = np.asarray(keras.ops.convert_to_numpy(t))
        best: tuple[int, int] | None = None
        for end, s in produced:
            if s == serial or end >= began or (best is not None and end <= best[0]):
                continue
            cand = rec.values.get(s)
            if cand is None or tuple(cand.shape) != tuple(t.shape) or cand.dtype == t.dtype:
                continue  # a conversion changes the dtype; same-dtype look-alikes are not linked
            if np.array_equal(np.asarray(keras.ops.convert_to_numpy(cand)).astype(want.dtype), want):
                best = (end, s)
        if best is not None:
            rec.alias[serial] = best[1]
