"""Errors a caller of the engine can cause.

Every one is a ``ValueError`` so that library users can catch the usual type, and a
:class:`camserve.records.Failure` whose ``kind`` the server maps to a gRPC status (INVALID_ARGUMENT,
or FAILED_PRECONDITION for CAM). Messages say what was wrong and what would have been valid. This
module imports nothing heavy: the server's parent process (no TensorFlow) uses it too.
"""

from __future__ import annotations

from camserve.records import ErrorKind, Failure


class EngineError(Failure, ValueError):
    """Base class of the engine's caller errors."""

    kind = ErrorKind.INVALID_INPUT

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message,))


class UnknownLayerError(EngineError):
    """The named target layer does not exist, is ambiguous, or has no spatial (B, h, w, C) output."""

    kind = ErrorKind.UNKNOWN_LAYER


class ClassIndexError(EngineError):
    """A class index (or top_k) outside the model's classes."""

    kind = ErrorKind.CLASS_INDEX


class CamNotSupportedError(EngineError):
    """Plain CAM asked for where the target layer does not feed global average pooling then one Dense."""

    kind = ErrorKind.CAM_NOT_SUPPORTED


class InvalidInputError(EngineError):
    """Images, methods or options of the wrong shape, type or value."""

    kind = ErrorKind.INVALID_INPUT


def not_finite_reason(bad_class: int | None, layer: str, method: str) -> str:
    """Why one image's answer cannot be given because it holds NaN or infinity: its model output
    (``bad_class`` None), or the map of class ``bad_class`` made at ``layer`` by ``method`` from
    gradients (Eigen-CAM: activations) that are not finite although the output is."""
    if bad_class is None:
        return ("the model's output for this image is not finite (NaN or infinity), so there is nothing "
                "to explain: check that the image is preprocessed as the model was trained (values far "
                "outside that range overflow, float16 first) and that the model's weights are finite")
    what = "activations" if method == "eigencam" else f"gradient of class {bad_class}'s score"
    return (f"the {what} at layer {layer!r} is not finite (NaN or infinity) for this image, although the "
            f"model's output is, so its {method} map cannot be computed: an operation between that layer "
            "and the output has no finite derivative at these values (such as sqrt or log at 0)")
