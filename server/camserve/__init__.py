"""camserve: Class Activation Maps for Keras 3 classifiers, as a library and as a gRPC server.

``from camserve import GradCAM`` works without importing TensorFlow at ``import camserve`` time: the
library classes load on first access.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LIBRARY = ("CAM", "GradCAM", "GradCAMPlusPlus", "LayerCAM", "HiResCAM", "XGradCAM", "EigenCAM")
__all__ = [*_LIBRARY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LIBRARY:
        from camserve.engine import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'camserve' has no attribute {name!r}")
