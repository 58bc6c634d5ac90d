"""Opening the models users have: ``.keras``, legacy ``.h5``, ``keras.applications`` names.

``load_model`` is what the server's worker calls for each model of the repository, and what a library
user can call too. Formats:

- ``.keras`` (Keras 3 native): ``keras.saving.load_model``. Custom classes (subclassed models,
  custom layers) must be registered before loading: ``imports`` names the modules whose
  ``@keras.saving.register_keras_serializable`` decorators do it (config.json ``imports``), or they
  are passed as ``custom_objects``. Activations Keras 3 saves under TensorFlow's internal names
  (``tf.nn.softmax`` is written as ``softmax_v2``, which Keras alone cannot re-open) are supplied.
- ``.h5`` / ``.hdf5`` (tf.keras 2 / Keras 2 "legacy" HDF5 with the architecture): Keras 3's own
  loader reads them (``keras.saving.load_model`` dispatches on the suffix).
- A TensorFlow **SavedModel** directory is refused with the conversion to run: Keras 3 can open one
  only as an inference-only ``keras.layers.TFSMLayer``, which has no layers to put a target on (one
  written by Keras 3's ``model.export()`` cannot be converted at all: save the model itself).
- A file that holds no model (a truncated or corrupt file, weights alone from ``save_weights``) and a
  class Keras cannot find are refused before or as Keras reads them, saying what to do, never with
  Keras' own "File not found" or OSError.
- ``application``: a ``keras.applications`` constructor name with a weights file (or None for random
  weights: benchmarks) at the configured input shape.

The model is returned with the options that describe how to explain it (input shape, token layout)
remembered beside it (``hints_for``), so an ``Explainer`` built on it later uses them without the
caller passing them again. Nothing is downloaded.
"""

from __future__ import annotations

import importlib
import re
import sys
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camserve.engine.errors import InvalidInputError
from camserve.engine.tokens import TokenLayout
from camserve.vocabulary import MODEL_SUFFIXES, saved_model_dir, saved_model_refusal


@dataclass(frozen=True)
class ModelHints:
    """How to explain a loaded model when the caller does not say: input shape and token layout."""

    input_shape: tuple[int, int, int] | None = None
    token_layout: TokenLayout = field(default_factory=TokenLayout)


_HINTS: weakref.WeakKeyDictionary[Any, ModelHints] = weakref.WeakKeyDictionary()


def hints_for(model: Any) -> ModelHints:
    """The hints ``load_model`` recorded for this model object (empty ones if none)."""
    try:
        return _HINTS.get(model, ModelHints())
    except TypeError:  # an object that cannot be weakly referenced: never loaded here
        return ModelHints()


def load_model(
    source: Any,
    *,
    input_shape: tuple[int, int, int] | None = None,
    weights: str | Path | None = None,
    token_grid: tuple[int, int] | None = None,
    prefix_tokens: int | None = None,
    custom_objects: dict[str, Any] | None = None,
    imports: tuple[str, ...] | list[str] = (),
) -> Any:
    """Open a model for explanation; returns a ``keras.Model``.

    ``source``: a path (``.keras``, ``.h5``/``.hdf5``; a SavedModel directory is refused), a
    ``keras.applications`` name (``"ResNet50"``, with ``weights`` a file or None = random, and
    ``input_shape`` required), or a repository ``ModelConfig`` (anything with ``model_path``,
    ``application``, ``weights_path``, ``input_shape`` and optionally ``token_grid``/``prefix_tokens``:
    its fields fill the keyword arguments). ``input_shape``, ``token_grid`` and ``prefix_tokens`` are
    remembered as the model's hints (``hints_for``). ``imports``: modules imported first (they
    register custom classes).

    Raises ``InvalidInputError`` naming the file, the problem and what to do: missing file, unknown
    suffix, SavedModel directory, a file that is no model (corrupt, truncated, weights only), a class
    Keras cannot find (register it: ``imports``), unknown application name.
    """
    if hasattr(source, "application") and hasattr(source, "model_path"):
        cfg = source
        source = cfg.model_path if cfg.model_path is not None else cfg.application
        input_shape = input_shape or tuple(cfg.input_shape)
        weights = weights if weights is not None else cfg.weights_path
        token_grid = token_grid if token_grid is not None else getattr(cfg, "token_grid", None)
        prefix_tokens = prefix_tokens if prefix_tokens is not None else getattr(cfg, "prefix_tokens", None)
        imports = tuple(imports) or tuple(getattr(cfg, "imports", ()))
    layout = TokenLayout.of(token_grid, prefix_tokens)
    for module in imports:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise InvalidInputError(
                f"cannot import module {module!r} (listed in imports, to register custom classes): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    import keras

    if isinstance(source, (str, Path)) and (isinstance(source, Path) or "/" in source or "." in str(source)):
        model = _load_file(Path(source), custom_objects)
    elif isinstance(source, str):
        model = _application(source, weights, input_shape)
    else:
        raise InvalidInputError(
            f"load_model takes a path, an application name or a ModelConfig, got {source!r}"
        )
    if not isinstance(model, keras.Model):
        raise InvalidInputError(f"{source} holds a {type(model).__name__}, not a keras.Model")
    _HINTS[model] = ModelHints(tuple(int(d) for d in input_shape) if input_shape else None, layout)  # type: ignore[arg-type]
    return model


def _load_file(path: Path, custom_objects: dict[str, Any] | None) -> Any:
    import keras

    path = path.expanduser()
    saved = saved_model_dir(path)
    if saved is not None:
        raise InvalidInputError(saved_model_refusal(saved))
    if not path.exists():
        raise InvalidInputError(f"model file {path} does not exist")
    if path.is_dir():
        raise InvalidInputError(f"{path} is a directory, not a model file ({', '.join(MODEL_SUFFIXES)})")
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise InvalidInputError(
            f"{path}: unknown model file type {path.suffix!r}; use a Keras 3 '.keras' file or a legacy "
            "'.h5' file (tf.keras 2)"
        )
    _check_container(path)
    objects = {**_saved_function_names(), **(custom_objects or {})}
    try:
        return keras.saving.load_model(path, custom_objects=objects, compile=False)
    except Exception as exc:
        raise InvalidInputError(_load_failure(path, exc)) from exc


#: The first bytes of an HDF5 file (the superblock signature at offset 0, where Keras writes it).
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _check_container(path: Path) -> None:
    """Refuse, before Keras reads it, a file that cannot hold a model: not the zip a ``.keras`` is, not
    HDF5, or an HDF5 file of weights alone (``save_weights``: no architecture to rebuild). Keras would
    say "File not found" for a corrupt ``.keras`` and raise OSError or "No model config" for the rest."""
    if path.suffix.lower() == ".keras":
        if not zipfile.is_zipfile(path):
            raise InvalidInputError(
                f"{path} is not a .keras archive (the zip Keras 3 writes with model.save('model.keras')): "
                "the file is truncated, corrupt or in another format; copy or save it again"
            )
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                raise InvalidInputError(
                    f"{path} is a zip without the model's config.json, not a saved Keras model: save "
                    "the whole model with model.save('model.keras')"
                )
        return
    with path.open("rb") as f:
        if f.read(len(_HDF5_SIGNATURE)) != _HDF5_SIGNATURE:
            raise InvalidInputError(
                f"{path} is not an HDF5 file (what model.save('model.h5') writes): the file is truncated, "
                "corrupt or in another format; copy or save it again"
            )
    import h5py

    with h5py.File(path, "r") as f:
        weights_only = "model_config" not in f.attrs
    if weights_only:
        raise InvalidInputError(
            f"{path} holds weights only (model.save_weights), not the model's architecture: save the whole "
            "model with model.save('model.keras'), or, for a keras.applications model, name it in "
            "config.json ('application', with this file as 'weights')"
        )


def _load_failure(path: Path, exc: Exception) -> str:
    """What to do when Keras cannot rebuild a saved model: most often a class it does not know."""
    text = str(exc)
    unknown = re.search(r"Could not locate (?:class|function) '([^']+)'|Unknown \w+: '([^']+)'", text)
    if unknown is not None:
        name = unknown.group(1) or unknown.group(2)
        what = f"{path}: Keras cannot rebuild the model: it does not know the class or function {name!r}."
        register = (
            "A class of your own must be registered before loading: decorate it with "
            "@keras.saving.register_keras_serializable() and list the module that defines it in "
            "config.json 'imports' (library: load_model(path, imports=[...]) or custom_objects="
            f"{{{name!r}: ...}})."
        )
        if path.suffix.lower() != ".keras":
            register = (
                "The legacy .h5 format keeps no module names, so a library's classes (keras-hub's models, "
                "for one) cannot be found in it: save such a model with model.save('model.keras'). "
                + register
            )
        return f"{what} {register}"
    first = text.strip().splitlines()[0][:300] if text.strip() else ""
    return f"{path}: Keras could not open the model: {type(exc).__name__}: {first}"


def _saved_function_names() -> dict[str, Any]:
    """Activations Keras 3 writes under TensorFlow's internal function names, which it cannot re-open.

    ``Dense(.., activation=tf.nn.softmax)`` is saved as ``softmax_v2``: the same function on
    TensorFlow, the same math (``keras.activations``) on any other backend.
    """
    import keras

    tf = sys.modules.get("tensorflow")
    if tf is not None and keras.backend.backend() == "tensorflow":
        return {"softmax_v2": tf.nn.softmax, "log_softmax_v2": tf.nn.log_softmax}
    return {"softmax_v2": keras.activations.softmax, "log_softmax_v2": keras.activations.log_softmax}


def _application(name: str, weights: str | Path | None, input_shape: tuple[int, ...] | None) -> Any:
    import keras

    factory = getattr(keras.applications, name, None)
    if not name[:1].isupper() or factory is None or not callable(factory):
        raise InvalidInputError(f"keras.applications has no model named {name!r}")
    if input_shape is None:
        raise InvalidInputError(f"keras.applications.{name} needs input_shape=(H, W, C)")
    return factory(weights=str(weights) if weights is not None else None, input_shape=tuple(input_shape))
