from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    CAM: _ClassVar[Method]
    GRAD_CAM: _ClassVar[Method]
    GRAD_CAM_PLUS_PLUS: _ClassVar[Method]
    LAYER_CAM: _ClassVar[Method]
    HIRES_CAM: _ClassVar[Method]
    XGRAD_CAM: _ClassVar[Method]
    EIGEN_CAM: _ClassVar[Method]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    UINT8: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]

class HeatmapSize(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEATMAP_SIZE_UNSPECIFIED: _ClassVar[HeatmapSize]
    CONV_GRID: _ClassVar[HeatmapSize]
    MODEL_INPUT: _ClassVar[HeatmapSize]
    ORIGINAL: _ClassVar[HeatmapSize]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    PNG: _ClassVar[ImageFormat]
    JPEG: _ClassVar[ImageFormat]

class Colormap(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLORMAP_UNSPECIFIED: _ClassVar[Colormap]
    JET: _ClassVar[Colormap]
    TURBO: _ClassVar[Colormap]
    VIRIDIS: _ClassVar[Colormap]
    INFERNO: _ClassVar[Colormap]
METHOD_UNSPECIFIED: Method
CAM: Method
GRAD_CAM: Method
GRAD_CAM_PLUS_PLUS: Method
LAYER_CAM: Method
HIRES_CAM: Method
XGRAD_CAM: Method
EIGEN_CAM: Method
DTYPE_UNSPECIFIED: DType
UINT8: DType
FLOAT32: DType
HEATMAP_SIZE_UNSPECIFIED: HeatmapSize
CONV_GRID: HeatmapSize
MODEL_INPUT: HeatmapSize
ORIGINAL: HeatmapSize
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
PNG: ImageFormat
JPEG: ImageFormat
COLORMAP_UNSPECIFIED: Colormap
JET: Colormap
TURBO: Colormap
VIRIDIS: Colormap
INFERNO: Colormap

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "tensor")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    tensor: Tensor
    def __init__(self, encoded: _Optional[bytes] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("size", "omit_tensor", "heatmap_png", "overlay", "overlay_alpha", "colormap", "jpeg_quality", "tensor_size")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OMIT_TENSOR_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_ALPHA_FIELD_NUMBER: _ClassVar[int]
    COLORMAP_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    TENSOR_SIZE_FIELD_NUMBER: _ClassVar[int]
    size: HeatmapSize
    omit_tensor: bool
    heatmap_png: bool
    overlay: ImageFormat
    overlay_alpha: float
    colormap: Colormap
    jpeg_quality: int
    tensor_size: HeatmapSize
    def __init__(self, size: _Optional[_Union[HeatmapSize, str]] = ..., omit_tensor: _Optional[bool] = ..., heatmap_png: _Optional[bool] = ..., overlay: _Optional[_Union[ImageFormat, str]] = ..., overlay_alpha: _Optional[float] = ..., colormap: _Optional[_Union[Colormap, str]] = ..., jpeg_quality: _Optional[int] = ..., tensor_size: _Optional[_Union[HeatmapSize, str]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "model_version", "image", "method", "class_index", "top_k", "target_layer", "output", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TARGET_LAYER_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: int
    image: Image
    method: Method
    class_index: int
    top_k: int
    target_layer: str
    output: OutputOptions
    request_id: str
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., method: _Optional[_Union[Method, str]] = ..., class_index: _Optional[int] = ..., top_k: _Optional[int] = ..., target_layer: _Optional[str] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ClassExplanation(_message.Message):
    __slots__ = ("class_index", "label", "probability", "score", "heatmap", "heatmap_png", "overlay", "all_zero")
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    ALL_ZERO_FIELD_NUMBER: _ClassVar[int]
    class_index: int
    label: str
    probability: float
    score: float
    heatmap: Tensor
    heatmap_png: bytes
    overlay: bytes
    all_zero: bool
    def __init__(self, class_index: _Optional[int] = ..., label: _Optional[str] = ..., probability: _Optional[float] = ..., score: _Optional[float] = ..., heatmap: _Optional[_Union[Tensor, _Mapping]] = ..., heatmap_png: _Optional[bytes] = ..., overlay: _Optional[bytes] = ..., all_zero: _Optional[bool] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("class_index", "label", "probability")
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    class_index: int
    label: str
    probability: float
    def __init__(self, class_index: _Optional[int] = ..., label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ms", "compute_ms", "batch_size", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    compute_ms: float
    batch_size: int
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., batch_size: _Optional[int] = ..., total_ms: _Optional[float] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("request_id", "model", "model_version", "method", "target_layer", "explanations", "top_predictions", "timing", "original_size", "score_kind")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_LAYER_FIELD_NUMBER: _ClassVar[int]
    EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SCORE_KIND_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    model_version: int
    method: Method
    target_layer: str
    explanations: _containers.RepeatedCompositeFieldContainer[ClassExplanation]
    top_predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    timing: Timing
    original_size: _containers.RepeatedScalarFieldContainer[int]
    score_kind: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., method: _Optional[_Union[Method, str]] = ..., target_layer: _Optional[str] = ..., explanations: _Optional[_Iterable[_Union[ClassExplanation, _Mapping]]] = ..., top_predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., original_size: _Optional[_Iterable[int]] = ..., score_kind: _Optional[str] = ...) -> None: ...

class ExplainBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ExplainRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ExplainRequest, _Mapping]]] = ...) -> None: ...

class ExplainBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[ExplainResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[ExplainResponse, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: int
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class LayerInfo(_message.Message):
    __slots__ = ("name", "grid", "channels", "cam_supported", "kind", "prefix_tokens")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRID_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CAM_SUPPORTED_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PREFIX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    name: str
    grid: _containers.RepeatedScalarFieldContainer[int]
    channels: int
    cam_supported: bool
    kind: str
    prefix_tokens: int
    def __init__(self, name: _Optional[str] = ..., grid: _Optional[_Iterable[int]] = ..., channels: _Optional[int] = ..., cam_supported: _Optional[bool] = ..., kind: _Optional[str] = ..., prefix_tokens: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "ready", "input_shape", "preprocessing", "num_classes", "labels", "default_target_layer", "layers", "methods", "max_batch_size", "batch_buckets", "max_queue_delay_ms", "backend", "compile_mode", "default_target_reason", "score_kind", "head", "head_kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TARGET_LAYER_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    COMPILE_MODE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TARGET_REASON_FIELD_NUMBER: _ClassVar[int]
    SCORE_KIND_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    HEAD_KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    ready: bool
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    preprocessing: str
    num_classes: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    default_target_layer: str
    layers: _containers.RepeatedCompositeFieldContainer[LayerInfo]
    methods: _containers.RepeatedScalarFieldContainer[Method]
    max_batch_size: int
    batch_buckets: _containers.RepeatedScalarFieldContainer[int]
    max_queue_delay_ms: float
    backend: str
    compile_mode: str
    default_target_reason: str
    score_kind: str
    head: str
    head_kind: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., ready: _Optional[bool] = ..., input_shape: _Optional[_Iterable[int]] = ..., preprocessing: _Optional[str] = ..., num_classes: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ..., default_target_layer: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[LayerInfo, _Mapping]]] = ..., methods: _Optional[_Iterable[_Union[Method, str]]] = ..., max_batch_size: _Optional[int] = ..., batch_buckets: _Optional[_Iterable[int]] = ..., max_queue_delay_ms: _Optional[float] = ..., backend: _Optional[str] = ..., compile_mode: _Optional[str] = ..., default_target_reason: _Optional[str] = ..., score_kind: _Optional[str] = ..., head: _Optional[str] = ..., head_kind: _Optional[str] = ...) -> None: ...
