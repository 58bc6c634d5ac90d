"""camserve's explanation engine: the CAM family over one compiled step per (model, layer, bucket).

Light names (errors, overlay) import without TensorFlow; ``Explainer`` and the library classes load
the backend on first access, so the server's parent process can use this package too. The records
it takes and returns (``ItemSpec``, ``ItemResult``, ``ClassMap``, ``ModelSummary``) are
:mod:`camserve.records`, shared with every layer of the server.
"""

from __future__ import annotations

from typing import Any

from camserve.engine.errors import (
    CamNotSupportedError,
    ClassIndexError,
    EngineError,
    InvalidInputError,
    UnknownLayerError,
)

_LAZY = {
    "Explainer": "camserve.engine.explainer",
    "buckets_for": "camserve.engine.explainer",
    "CAM": "camserve.engine.api",
    "GradCAM": "camserve.engine.api",
    "GradCAMPlusPlus": "camserve.engine.api",
    "LayerCAM": "camserve.engine.api",
    "HiResCAM": "camserve.engine.api",
    "XGradCAM": "camserve.engine.api",
    "EigenCAM": "camserve.engine.api",
    "load_model": "camserve.engine.loading",
}

__all__ = [
    "CAM",
    "CamNotSupportedError",
    "ClassIndexError",
    "EigenCAM",
    "EngineError",
    "Explainer",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "InvalidInputError",
    "LayerCAM",
    "UnknownLayerError",
    "XGradCAM",
    "buckets_for",
    "load_model",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'camserve.engine' has no attribute {name!r}")
