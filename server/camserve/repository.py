"""Model repository: one sub-folder per model with a ``config.json`` (no TensorFlow here).

Layout (see ARCHITECTURE.md, "Model repository")::

    <repository>/<model-name>/config.json
    <repository>/<model-name>/model.keras      (or model.h5, or "application" + "weights" in the config)
    <repository>/<model-name>/labels.txt       (one label per line, optional)

The server parent process reads names and batching settings from here without importing
TensorFlow; the worker process uses the same objects to load the models. Every mistake in a
config is reported as :class:`RepositoryError` naming the file and the field, because operators
meet these errors at start-up and must be able to fix them without reading code.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camserve.vocabulary import MODEL_SUFFIXES, PREPROCESSING, SCORES, saved_model_dir, saved_model_refusal

__all__ = [
    "BatchingConfig",
    "ModelConfig",
    "RepositoryError",
    "bundled_repository_path",
    "load_model_config",
    "load_repository",
    "with_batching",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_APP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
#: The fields a config.json may hold (ARCHITECTURE.md, "Model repository").
_TOP_KEYS = frozenset(["name", "version", "model_file", "application", "weights", "input_shape",
                       "preprocessing", "target_layer", "labels_file", "score", "batching", "description",
                       "token_grid", "prefix_tokens", "imports"])
_BATCH_KEYS = {"max_batch_size", "max_queue_delay_ms", "max_queue_size"}
MAX_BATCH_LIMIT = 1024
MAX_QUEUE_DELAY_MS_LIMIT = 60_000.0


class RepositoryError(ValueError):
    """A model repository or one of its configs is invalid; the message names file and field."""


@dataclass(frozen=True)
class BatchingConfig:
    """Dynamic-batching knobs of one model (Triton's names in brackets).

    max_batch_size: most requests per batch, also the largest compiled bucket [max_batch_size].
    max_queue_delay_ms: longest wait after the oldest queued request for the batch to fill
        [max_queue_delay_microseconds].
    max_queue_size: queued requests beyond which new ones are refused at once [max_queue_size].
    """

    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 256


@dataclass(frozen=True)
class ModelConfig:
    """One model of the repository, validated; paths are absolute."""

    name: str
    version: int
    directory: Path
    model_file: str | None
    application: str | None
    weights: str | None
    input_shape: tuple[int, int, int]
    preprocessing: str
    target_layer: str | None
    labels: list[str] = field(default_factory=list)
    score: str = "logits"
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    token_grid: tuple[int, int] | None = None  # (h, w) patch grid of (B, N, C) token outputs; None = found
    prefix_tokens: int | None = None  # leading non-patch tokens (class/register); None = found
    imports: tuple[str, ...] = ()  # modules the worker imports before loading (custom classes)

    @property
    def model_path(self) -> Path | None:
        """Absolute path of the ``.keras``/``.h5`` file, or None for a ``keras.applications`` model."""
        return self.directory / self.model_file if self.model_file else None

    @property
    def weights_path(self) -> Path | None:
        """Absolute path of the weights of an ``application`` model (None = random init)."""
        return self.directory / self.weights if self.weights else None


def bundled_repository_path() -> Path:
    """Folder of the demo repository shipped inside the package."""
    return Path(__file__).resolve().parent / "demo" / "repository"


def load_repository(path: Path | str | None) -> dict[str, ModelConfig]:
    """Read every ``<path>/<model>/config.json``; ``None`` = the bundled demo repository.

    ``path`` may also be a single model folder (one holding ``config.json``). Sub-folders whose
    name starts with ``.`` or ``_`` are ignored (``__pycache__``, editor files).
    """
    root = bundled_repository_path() if path is None else Path(path).expanduser()
    if not root.exists():
        hint = (
            " (the bundled demo model is missing: run `python -m camserve.demo.train`)"
            if path is None
            else ""
        )
        raise RepositoryError(f"model repository {root} does not exist{hint}")
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a folder")
    root = root.resolve()
    if (root / "config.json").is_file():
        folders = [root]
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    models: dict[str, ModelConfig] = {}
    for folder in folders:
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise RepositoryError(
                f"{folder}: model folder has no config.json (every sub-folder of the repository is a model)"
            )
        cfg = load_model_config(folder)
        if cfg.name in models:
            raise RepositoryError(
                f"{cfg_file}: field 'name': model name {cfg.name!r} is also used by "
                f"{models[cfg.name].directory}"
            )
        models[cfg.name] = cfg
    if not models:
        raise RepositoryError(f"model repository {root} holds no model (expected <model>/config.json)")
    return models


def load_model_config(folder: Path | str) -> ModelConfig:
    """Parse and validate ``<folder>/config.json`` (see the module docstring)."""
    folder = Path(folder).resolve()
    cfg_file = folder / "config.json"
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RepositoryError(f"{cfg_file}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{cfg_file}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise RepositoryError(
            f"{cfg_file}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    return _parse(raw, folder, cfg_file)


def with_batching(
    repository: dict[str, ModelConfig],
    *,
    max_batch_size: int | None = None,
    max_queue_delay_ms: float | None = None,
    max_queue_size: int | None = None,
) -> dict[str, ModelConfig]:
    """Copy of ``repository`` with batching fields overridden (CLI flags win over configs)."""
    where = "command line"
    over: dict[str, Any] = {}
    if max_batch_size is not None:
        over["max_batch_size"] = _int_in(max_batch_size, 1, MAX_BATCH_LIMIT, where, "max_batch_size")
    if max_queue_delay_ms is not None:
        over["max_queue_delay_ms"] = _float_in(
            max_queue_delay_ms, 0.0, MAX_QUEUE_DELAY_MS_LIMIT, where, "max_queue_delay_ms"
        )
    if max_queue_size is not None:
        over["max_queue_size"] = _int_in(max_queue_size, 1, 1_000_000, where, "max_queue_size")
    return {
        name: dataclasses.replace(cfg, batching=dataclasses.replace(cfg.batching, **over))
        for name, cfg in repository.items()
    }


# --------------------------------------------------------------------------- parsing helpers


def _fail(where: Path | str, key: str, msg: str) -> RepositoryError:
    return RepositoryError(f"{where}: field '{key}': {msg}")


def _int_in(value: Any, lo: int, hi: int, where: Path | str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, key, f"expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise _fail(where, key, f"{value} is out of range [{lo}, {hi}]")
    return value


def _float_in(value: Any, lo: float, hi: float, where: Path | str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, key, f"expected a number, got {value!r}")
    if not lo <= float(value) <= hi:
        raise _fail(where, key, f"{value} is out of range [{lo}, {hi}]")
    return float(value)


def _opt_str(raw: dict[str, Any], key: str, where: Path) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, key, f"expected a non-empty string or null, got {value!r}")
    return value


def _inside(folder: Path, rel: str, where: Path, key: str) -> Path:
    """Resolve ``rel`` against the model folder and insist the file exists."""
    path = (folder / rel).resolve()
    if not path.is_file():
        raise _fail(where, key, f"file {rel!r} not found in {folder}")
    return path


def _parse(raw: Any, folder: Path, where: Path) -> ModelConfig:
    if not isinstance(raw, dict):
        raise RepositoryError(f"{where}: expected a JSON object at the top level, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise _fail(where, unknown[0], f"unknown field (allowed: {', '.join(sorted(_TOP_KEYS))})")

    name = raw.get("name", folder.name)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail(where, "name", f"{name!r} is not a valid model name (letters, digits, '_', '.', '-')")
    if name != folder.name:
        raise _fail(where, "name", f"{name!r} differs from the folder name {folder.name!r}; they must match")
    version = _int_in(raw.get("version", 1), 1, 2**31 - 1, where, "version")

    model_file = _opt_str(raw, "model_file", where)
    application = _opt_str(raw, "application", where)
    weights = _opt_str(raw, "weights", where)
    if (model_file is None) == (application is None):
        raise _fail(
            where,
            "model_file",
            "give exactly one of 'model_file' (a .keras file) or 'application' (a keras.applications name)",
        )
    if model_file is not None:
        if weights is not None:
            raise _fail(where, "weights", "only used with 'application'; a .keras file holds its own weights")
        saved = saved_model_dir(folder / model_file)
        if saved is not None:
            raise _fail(where, "model_file", saved_model_refusal(saved))
        if not model_file.lower().endswith(MODEL_SUFFIXES):
            raise _fail(
                where,
                "model_file",
                f"{model_file!r} must be a Keras 3 '.keras' file or a legacy '.h5' file (tf.keras 2)",
            )
        _inside(folder, model_file, where, "model_file")
    else:
        assert application is not None
        if not _APP_RE.match(application):
            raise _fail(
                where, "application", f"{application!r} is not a keras.applications name (e.g. 'ResNet50')"
            )
        if weights is not None:
            _inside(folder, weights, where, "weights")

    shape = raw.get("input_shape")
    if not isinstance(shape, list) or len(shape) != 3:
        raise _fail(where, "input_shape", f"expected [height, width, channels], got {shape!r}")
    h = _int_in(shape[0], 1, 8192, where, "input_shape")
    w = _int_in(shape[1], 1, 8192, where, "input_shape")
    c = _int_in(shape[2], 1, 4, where, "input_shape")

    preprocessing = raw.get("preprocessing", "none")
    if preprocessing not in PREPROCESSING:
        raise _fail(where, "preprocessing", f"{preprocessing!r} is not one of {', '.join(PREPROCESSING)}")
    score = raw.get("score", "logits")
    if score not in SCORES:
        raise _fail(where, "score", f"{score!r} is not one of {', '.join(SCORES)}")
    target_layer = _opt_str(raw, "target_layer", where)
    token_grid = raw.get("token_grid")
    if token_grid is not None:
        if not isinstance(token_grid, list) or len(token_grid) != 2:
            raise _fail(where, "token_grid", f"expected [h, w] (the patch grid) or null, got {token_grid!r}")
        token_grid = (
            _int_in(token_grid[0], 1, 8192, where, "token_grid"),
            _int_in(token_grid[1], 1, 8192, where, "token_grid"),
        )
    prefix_tokens = raw.get("prefix_tokens")
    if prefix_tokens is not None:
        prefix_tokens = _int_in(prefix_tokens, 0, 1024, where, "prefix_tokens")
    imports = raw.get("imports", [])
    if not isinstance(imports, list) or not all(isinstance(m, str) and _MODULE_RE.match(m) for m in imports):
        raise _fail(where, "imports", f"expected a list of Python module names (a.b.c), got {imports!r}")

    labels: list[str] = []
    labels_file = _opt_str(raw, "labels_file", where)
    if labels_file is not None:
        path = _inside(folder, labels_file, where, "labels_file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _fail(where, "labels_file", f"cannot read {path}: {exc}") from None
        labels = [line.strip() for line in text.splitlines()]
        while labels and not labels[-1]:
            labels.pop()

    batching_raw = raw.get("batching", {})
    if not isinstance(batching_raw, dict):
        raise _fail(where, "batching", f"expected an object, got {batching_raw!r}")
    unknown = sorted(set(batching_raw) - _BATCH_KEYS)
    if unknown:
        raise _fail(
            where, f"batching.{unknown[0]}", f"unknown field (allowed: {', '.join(sorted(_BATCH_KEYS))})"
        )
    defaults = BatchingConfig()
    batching = BatchingConfig(
        max_batch_size=_int_in(
            batching_raw.get("max_batch_size", defaults.max_batch_size),
            1,
            MAX_BATCH_LIMIT,
            where,
            "batching.max_batch_size",
        ),
        max_queue_delay_ms=_float_in(
            batching_raw.get("max_queue_delay_ms", defaults.max_queue_delay_ms),
            0.0,
            MAX_QUEUE_DELAY_MS_LIMIT,
            where,
            "batching.max_queue_delay_ms",
        ),
        max_queue_size=_int_in(
            batching_raw.get("max_queue_size", defaults.max_queue_size),
            1,
            1_000_000,
            where,
            "batching.max_queue_size",
        ),
    )
    return ModelConfig(
        name=name,
        version=version,
        directory=folder,
        model_file=model_file,
        application=application,
        weights=weights,
        input_shape=(h, w, c),
        preprocessing=preprocessing,
        target_layer=target_layer,
        labels=labels,
        score=score,
        batching=batching,
        token_grid=token_grid,
        prefix_tokens=prefix_tokens,
        imports=tuple(imports),
    )
