"""camserve client: talk to a camserve server with only grpcio (and its health stub), protobuf and numpy."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

# Each public name and the module it lives in. They are imported on first use (PEP 562), so that
# importing a part of the package (the `camserve` command in camserve_client.tools.cli) does not
# import grpc: gRPC reads GRPC_VERBOSITY once, when it is imported, and the command sets its default
# before that. `from camserve_client import Client` works as ever.
_WHERE = {
    "AsyncClient": "client", "Client": "client", "TLSConfig": "client",
    "CamserveError": "errors", "DeadlineExceeded": "errors", "FailedPrecondition": "errors",
    "InvalidArgument": "errors", "NotFound": "errors", "ResourceExhausted": "errors",
    "Unauthenticated": "errors", "Unavailable": "errors",
    "resize_heatmap": "heatmaps",
    "RetryPolicy": "retry",
    "METHODS": "types", "ExplainResult": "types", "Explanation": "types", "LayerInfo": "types",
    "ModelInfo": "types", "OutputOptions": "types", "Prediction": "types", "Timing": "types",
}

if TYPE_CHECKING:
    from camserve_client.client import AsyncClient, Client, TLSConfig
    from camserve_client.errors import (
        CamserveError,
        DeadlineExceeded,
        FailedPrecondition,
        InvalidArgument,
        NotFound,
        ResourceExhausted,
        Unauthenticated,
        Unavailable,
    )
    from camserve_client.heatmaps import resize_heatmap
    from camserve_client.retry import RetryPolicy
    from camserve_client.types import (
        METHODS,
        ExplainResult,
        Explanation,
        LayerInfo,
        ModelInfo,
        OutputOptions,
        Prediction,
        Timing,
    )


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'camserve_client' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"camserve_client.{module}"), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "METHODS",
    "AsyncClient",
    "CamserveError",
    "Client",
    "DeadlineExceeded",
    "ExplainResult",
    "Explanation",
    "FailedPrecondition",
    "InvalidArgument",
    "LayerInfo",
    "ModelInfo",
    "NotFound",
    "OutputOptions",
    "Prediction",
    "ResourceExhausted",
    "RetryPolicy",
    "TLSConfig",
    "Timing",
    "Unauthenticated",
    "Unavailable",
    "__version__",
    "resize_heatmap",
]
