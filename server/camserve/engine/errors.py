"""Errors a caller of the engine can cause.

Every one is a ``ValueError`` so that library users can catch the usual type, while the server maps
each class to its own gRPC status (INVALID_ARGUMENT, or FAILED_PRECONDITION for CAM). Messages say what
was wrong and what would have been valid. This module imports nothing heavy: the server's parent
process (no TensorFlow) uses it too.
"""

from __future__ import annotations


class EngineError(ValueError):
    """Base class of the engine's caller errors; ``kind`` is the stable name used across processes."""

    kind = "invalid_input"


class UnknownLayerError(EngineError):
    """The named target layer does not exist, is ambiguous, or has no 4-D (B, h, w, C) output."""

    kind = "unknown_layer"


class ClassIndexError(EngineError):
    """A class index (or top_k) outside the model's classes."""

    kind = "class_index"


class CamNotSupportedError(EngineError):
    """Plain CAM asked for where the target layer does not feed global average pooling then one Dense."""

    kind = "cam_not_supported"


class InvalidInputError(EngineError):
    """Images, methods or options of the wrong shape, type or value."""

    kind = "invalid_input"


ERRORS_BY_KIND: dict[str, type[EngineError]] = {
    cls.kind: cls for cls in (UnknownLayerError, ClassIndexError, CamNotSupportedError, InvalidInputError)
}
