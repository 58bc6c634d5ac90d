"""camserve client: talk to a camserve server with only grpcio (and its health stub), protobuf and numpy."""

__version__ = "0.1.0"

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
