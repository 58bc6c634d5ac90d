"""The words of the ``camserve.v1`` wire contract, derived from the .proto enums (protobuf only).

Every name below is computed from an enum of ``protos/camserve/v1/explain.proto`` by one stated rule,
so a value added to the .proto appears here without a second list to keep in step. The server's own
words (``camserve.vocabulary``: method names the engine implements, colormaps it draws) are checked
against these by ``tests/test_vocabulary.py``.

- Methods: the enum name lowered, ``_PLUS_PLUS`` spelled ``++``, underscores dropped
  (``GRAD_CAM_PLUS_PLUS`` -> ``"gradcam++"``, ``XGRAD_CAM`` -> ``"xgradcam"``).
- Heatmap sizes: the last word of the enum name lowered (``CONV_GRID`` -> ``"grid"``,
  ``MODEL_INPUT`` -> ``"input"``, ``ORIGINAL`` -> ``"original"``).
- Image formats and colormaps: the enum name lowered (``PNG`` -> ``"png"``, ``TURBO`` -> ``"turbo"``).
- Tensor dtypes: the enum name (``UINT8``, ``FLOAT32``).

``*_UNSPECIFIED`` (the proto3 zero value) is never a name; :data:`DEFAULTS` says what it means, as the
.proto comments do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from camserve_proto import explain_pb2 as pb


def _names(enum: Any, rule: Callable[[str], str]) -> dict[str, int]:
    """{derived name: enum value} for every value of ``enum`` except the zero (unspecified) one."""
    return {rule(v.name): v.number for v in enum.DESCRIPTOR.values if v.number != 0}


#: Method name -> ``camserve.v1.Method`` value (order of the .proto).
METHODS: dict[str, int] = _names(pb.Method, lambda n: n.lower().replace("_plus_plus", "++").replace("_", ""))
#: Heatmap size name -> ``camserve.v1.HeatmapSize`` value.
HEATMAP_SIZES: dict[str, int] = _names(pb.HeatmapSize, lambda n: n.rsplit("_", 1)[-1].lower())
#: Overlay image format name -> ``camserve.v1.ImageFormat`` value.
IMAGE_FORMATS: dict[str, int] = _names(pb.ImageFormat, str.lower)
#: Colormap name -> ``camserve.v1.Colormap`` value.
COLORMAPS: dict[str, int] = _names(pb.Colormap, str.lower)
#: Tensor dtype name -> ``camserve.v1.DType`` value.
DTYPES: dict[str, int] = _names(pb.DType, str)

#: What the zero value of each enum (and of each 0-means-default number) stands for.
DEFAULTS: dict[str, Any] = {
    "method": "gradcam",
    "heatmap_size": "grid",
    "colormap": "jet",
    "overlay_alpha": 0.4,
    "jpeg_quality": 90,
    "top_k": 1,
}

#: Limits of one request that hold whatever the model (model-dependent limits come from ModelInfo).
MAX_REQUEST_ID_CHARS = 256
MAX_BATCH_REQUESTS = 1024
#: How many best classes every ExplainResponse lists in ``top_predictions``.
TOP_PREDICTIONS = 5


def name_of(table: dict[str, int], value: int, default: str | None = None) -> str | None:
    """The name of wire ``value`` in ``table`` (``default`` for 0, None when unknown)."""
    if value == 0:
        return default
    for name, number in table.items():
        if number == value:
            return name
    return None
