"""What a model takes and gives, as the engine reads it: one channels-last image input and one
class-score output.

- input: (batch, H, W, C), or (batch, H, W) (a grayscale image without its channel axis, taken as
  (H, W, 1)); its shape from the model's Input or build, or given;
- output: (batch, classes), or (batch, 1, ..., 1, classes) (a fully convolutional head);
- refused with the way out: channels_first image layers, several inputs or outputs; refused as what
  they are: inputs that are not 2-D images (frames, volumes, vectors, sequences);
- a keras-hub task's own ``preprocessor``, which its ``predict`` applies and its ``call`` does not:
  the engine applies it too (``own_preprocessing``), so maps and probabilities are those of
  ``predict``.

Keras only (no backend import).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from camserve.engine.errors import InvalidInputError
from camserve.engine.keras_private import is_functional, walk


def input_shape_of(model: Any, given: tuple[int, ...] | None) -> tuple[int, int, int]:
    """(H, W, C): ``given``, else the model's Input, else the shape it was built with; a model whose
    input is (batch, H, W) (grayscale without a channel axis) takes (H, W, 1) images.

    Raises ``InvalidInputError`` when none says (a model never called, with no Input) or the shape is
    not an image's (not 3- or 4-D, unknown sizes, several inputs).
    """
    if given is not None:
        try:
            shape = tuple(int(d) for d in given)
        except (TypeError, ValueError):
            raise InvalidInputError(f"input_shape must be (H, W, C), got {given!r}") from None
        if len(shape) != 3 or min(shape) < 1:
            raise InvalidInputError(f"input_shape must be three positive integers (H, W, C), got {given!r}")
        _refuse_conflict(model, shape)
        return shape  # type: ignore[return-value]
    shape = declared_input_shape(model)
    if not shape:
        kind = "Sequential model" if isinstance(model, keras.Sequential) else f"{type(model).__name__}"
        raise InvalidInputError(
            f"{kind} {model.name!r} was never called and has no Input, so its input shape is unknown: "
            "pass input_shape=(H, W, C) (the library API takes it from the first image)"
        )
    refuse_non_image(model, shape)
    if any(d is None for d in shape[1:]):
        raise InvalidInputError(
            f"model input shape {shape} leaves its sizes open; pass input_shape=(H, W, C)"
        )
    dims = tuple(int(d) for d in shape[1:])
    return dims if len(dims) == 3 else (*dims, 1)  # type: ignore[return-value]


def _refuse_conflict(model: Any, given: tuple[int, ...]) -> None:
    """Raise ``InvalidInputError`` when ``given`` (H, W, C) contradicts a size the model's Input fixes
    (a repository's ``input_shape`` that is not the saved model's): the forward pass would otherwise
    fail with Keras' shape error, which names neither the setting nor its value."""
    if not (isinstance(model, keras.Sequential) or is_functional(model)):
        return  # a subclassed model's build shape is where it was first called, not a limit
    declared = declared_input_shape(model)
    if len(declared) not in (3, 4):
        return
    dims = tuple(declared[1:]) if len(declared) == 4 else (*declared[1:], 1)
    if any(d is not None and int(d) != g for d, g in zip(dims, given, strict=True)):
        fixed = tuple(d if d is not None else "any" for d in dims)
        raise InvalidInputError(
            f"input_shape {tuple(given)} does not fit model {model.name!r}, whose Input takes {fixed} "
            "images: set input_shape (config.json 'input_shape') to the model's, or rebuild the model "
            "for the other size"
        )


def declared_input_shape(model: Any) -> tuple[Any, ...]:
    """The model's input shape with the batch axis, from its Input or its build; () if unknown."""
    inputs = None
    if isinstance(model, keras.Sequential) or is_functional(model):
        try:
            inputs = list(model.inputs)
        except (AttributeError, ValueError):
            inputs = None
    if inputs:
        if len(inputs) != 1:
            raise InvalidInputError(
                f"model {model.name!r} has {len(inputs)} inputs; the engine needs one image input: explain "
                "the image alone through a model that takes only it and supplies the other inputs itself "
                "(a keras.Model subclass whose call(image) returns model([image, other]))"
            )
        return tuple(inputs[0].shape)
    build = model.get_build_config() if hasattr(model, "get_build_config") else None
    return tuple((build or {}).get("input_shape") or ())


#: Layers that read a (batch, steps, features) input as a sequence, and image layers that read 2-D grids.
_SEQUENCE_LAYERS = (keras.layers.Conv1D, keras.layers.SeparableConv1D, keras.layers.DepthwiseConv1D,
                    keras.layers.Conv1DTranspose, keras.layers.RNN, keras.layers.LSTM, keras.layers.GRU,
                    keras.layers.SimpleRNN, keras.layers.Bidirectional)
_IMAGE_LAYERS = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D,
                 keras.layers.Conv2DTranspose, keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


def refuse_non_image(model: Any, shape: tuple[Any, ...]) -> None:
    """Raise ``InvalidInputError`` unless ``shape`` (with its batch axis) is an image's: (batch, H, W,
    C), or (batch, H, W) read as a grayscale image, not as a sequence (a model of 1-D convolutions or
    recurrent layers and no 2-D image layer, whose maps would be a sequence folded into a grid). No
    ``input_shape`` changes that, so the message does not offer one."""
    what = ""
    if len(shape) not in (3, 4):
        what = "frames or volumes (batch, T, H, W, C) (TimeDistributed, Conv3D) or vectors"
    elif len(shape) == 3:
        ops = list(walk(model))
        sequence = next((op for op in ops if isinstance(op, _SEQUENCE_LAYERS)), None)
        if sequence is not None and not any(isinstance(op, _IMAGE_LAYERS) for op in ops):
            what = f"sequences (batch, steps, features) ({type(sequence).__name__} {sequence.name!r})"
    if what:
        raise InvalidInputError(
            f"model {model.name!r} takes {shape}, not images: the engine explains one 2-D image per "
            f"item, (batch, H, W, C) or (batch, H, W); models over {what} are not supported"
        )


def refuse_channels_first(model: Any) -> None:
    """Raise ``InvalidInputError`` if an image layer computes in channels_first (batch, C, h, w).

    Grids are read as (batch, h, w, C) everywhere (candidates, maps, the input's shape), so a
    channels_first model would otherwise meet "no layer with a grid" or, worse, a map over its
    channel axis."""
    for op in walk(model):
        if getattr(op, "data_format", None) == "channels_first" and type(op).__name__.endswith("2D"):
            raise InvalidInputError(
                f"layer {op.name!r} ({type(op).__name__}) of model {model.name!r} computes in "
                "channels_first (batch, channels, h, w); the engine reads images and grids as channels_last "
                "(batch, h, w, channels): rebuild the model with data_format='channels_last' (Keras "
                "convolution kernels have the same shape in both layouts) and feed (B, H, W, C) images"
            )


def classes_of(model: Any, y: Any) -> int:
    """The number of class values per image of the model's output ``y``: (batch, classes), or a
    fully convolutional head's (batch, 1, ..., 1, classes) (a 1x1 conv after pooling that keeps its
    dims, with no Flatten). Raises ``InvalidInputError`` for anything else, several outputs included."""
    flat = keras.tree.flatten(y)
    shape = tuple(int(d) for d in flat[0].shape) if len(flat) == 1 else ()
    if len(shape) >= 2 and all(d == 1 for d in shape[1:-1]):
        return shape[-1]
    shapes = [tuple(t.shape) for t in flat]
    if len(flat) > 1:
        # keras.Model(model.inputs, model.outputs[i]) needs a graph: a subclassed model has neither
        way_out = (
            "keras.Model(model.inputs, model.outputs[i])"
            if isinstance(model, keras.Sequential) or is_functional(model)
            else "a keras.Model subclass whose call(image) returns that one output of model(image) "
            "(its [i] or ['name'])"
        )
        raise InvalidInputError(
            f"model {model.name!r} returns {len(flat)} outputs {shapes}; the engine needs one (batch, "
            f"classes) output: explain one of them with {way_out}"
        )
    raise InvalidInputError(
        f"model {model.name!r} returns {shapes}; the engine needs one (batch, classes) output "
        "(or (batch, 1, 1, classes))"
    )


def own_preprocessing(
    model: Any, preprocessing: str, input_shape: tuple[int, int, int]
) -> Callable[[Any], Any] | None:
    """The preprocessing a keras-hub task applies to images in ``predict``/``fit`` but not in its
    ``call`` (its ``preprocessor``, run through the task's own ``preprocess_samples``); None for a
    model without one (plain Keras models preprocess inside ``call``, e.g. with ``Rescaling``).

    Raises ``InvalidInputError`` when camserve's ``preprocessing`` is not ``"none"`` (the images would
    be preprocessed twice) or the preprocessor resizes images to another size than ``input_shape``.
    """
    run = getattr(model, "preprocess_samples", None)
    if getattr(model, "preprocessor", None) is None or not callable(run):
        return None
    name = f"{type(model.preprocessor).__name__} of model {model.name!r}"
    if preprocessing != "none":
        raise InvalidInputError(
            f"the model carries its own preprocessor ({name}), which the engine applies as its predict() "
            f"does; preprocessing {preprocessing!r} would preprocess the images twice: use 'none'"
        )
    size = getattr(getattr(model.preprocessor, "image_converter", None), "image_size", None)
    if size is not None and tuple(int(d) for d in size) != tuple(input_shape[:2]):
        raise InvalidInputError(
            f"the model's own preprocessor ({name}) resizes images to {tuple(size)}, but the engine "
            f"explains {tuple(input_shape[:2])} images: use input_shape=({size[0]}, {size[1]}, "
            f"{input_shape[2]})"
        )
    return run
