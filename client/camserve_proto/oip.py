"""The words of camserve's Open Inference Protocol endpoint (``inference.GRPCInferenceService``).

The messages are generated from ``protos/inference/v2/grpc_service.proto`` (``grpc_service_pb2``);
this module names what camserve puts in them, for the server (``camserve.front.oip``) and for any
client (``bench``, tests): the tensor names and datatypes, the request parameters and the response
parameters, and the protocol's raw ``BYTES`` form. Needs only protobuf and NumPy.

A request carries one input, ``IMAGE`` (BYTES, shape [N, 1]: one encoded JPEG/PNG/WebP/BMP per row)
or ``PIXELS`` (UINT8, [N, H, W, C] at the model's input size), and gets, in the order it asks for
them (all of :data:`DEFAULT_OUTPUTS` when it asks for none): ``PROBABILITIES`` (FP32 [N, classes]),
``HEATMAP`` (FP32 [N, K, h, w], in [0, 1]), ``CLASS_IDS`` (INT32 [N, K]), ``SCORES`` (FP32 [N, K],
the explained score: the logit unless the model is configured to explain probabilities) and
``OVERLAY`` (BYTES [N, K], PNG or JPEG) when asked for. K is ``top_k`` (1 with ``class_index``).
"""

from __future__ import annotations

import struct

import numpy as np

from camserve_proto import grpc_service_pb2 as pb

_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = _SERVICE.full_name
#: The RPCs camserve implements (every other method of the protocol is UNIMPLEMENTED).
RPC_METHODS: tuple[str, ...] = tuple(m.name for m in _SERVICE.methods)

IMAGE = "IMAGE"
PIXELS = "PIXELS"
#: Input name -> datatype.
INPUTS: dict[str, str] = {IMAGE: "BYTES", PIXELS: "UINT8"}

PROBABILITIES = "PROBABILITIES"
HEATMAP = "HEATMAP"
CLASS_IDS = "CLASS_IDS"
SCORES = "SCORES"
OVERLAY = "OVERLAY"
#: Output name -> datatype, in the order of the default reply.
OUTPUTS: dict[str, str] = {PROBABILITIES: "FP32", HEATMAP: "FP32", CLASS_IDS: "INT32", SCORES: "FP32",
                           OVERLAY: "BYTES"}
#: What a request that names no output gets (OVERLAY too when the ``overlay`` parameter is set).
DEFAULT_OUTPUTS: tuple[str, ...] = (PROBABILITIES, HEATMAP, CLASS_IDS, SCORES)

#: Request parameters camserve reads, and the InferParameter kinds each accepts (a string holding a
#: number is accepted for the numeric ones, for clients that send every parameter as a string).
#: Values: ``method`` one of ``camserve_proto.vocabulary.METHODS``; ``heatmap_size`` one of
#: ``HEATMAP_SIZES``; ``overlay`` one of ``IMAGE_FORMATS``; ``colormap`` one of ``COLORMAPS``.
PARAMETERS: dict[str, str] = {
    "method": "string",
    "top_k": "int",
    "class_index": "int",
    "target_layer": "string",
    "heatmap_size": "string",
    "overlay": "string",
    "overlay_alpha": "double",
    "colormap": "string",
    "jpeg_quality": "int",
    # Triton's reserved parameters (tritonclient sets them itself):
    "timeout": "int",    # microseconds the request may wait in the queue; 0 = no limit (honoured)
    "priority": "int",   # ignored: camserve has one priority level
}
#: Output parameters camserve reads. ``classification`` (Triton's classification extension, what
#: Triton's image_client and ``InferRequestedOutput(name, class_count=n)`` send): on ``PROBABILITIES``
#: only, that output as BYTES [N, n], the n best classes of each row, best first, each
#: ``"<probability>:<index>[:<label>]"`` (n past the number of classes gives them all).
CLASSIFICATION = "classification"
OUTPUT_PARAMETERS: dict[str, str] = {CLASSIFICATION: "int"}
#: The parameter with which Triton clients place an input or output in registered shared memory: camserve
#: serves no shared-memory extension, so it is refused, never read as an empty tensor.
SHARED_MEMORY_REGION = "shared_memory_region"

#: Response parameters camserve sets (means over the rows of the request for the times).
RESPONSE_PARAMETERS: dict[str, str] = {
    "method": "string", "target_layer": "string", "score_kind": "string",  # "logits" | "probability"
    "queue_ms": "double", "compute_ms": "double", "batch_size": "double", "total_ms": "double",
}

#: KServe v2 datatype -> NumPy dtype of its raw little-endian form (BYTES has none: see pack_bytes).
DTYPES: dict[str, str] = {
    "BOOL": "|b1", "UINT8": "|u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "|i1",
    "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}


def config_type(datatype: str) -> int:
    """The Triton model-configuration ``DataType`` of a KServe datatype (``BYTES`` -> ``TYPE_STRING``)."""
    return pb.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


_LENGTH = struct.Struct("<I")


def pack_bytes(elements: list[bytes]) -> bytes:
    """The raw form of a BYTES tensor: per element, a uint32 little-endian length, then the bytes."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def unpack_bytes(raw: bytes, count: int) -> list[bytes]:
    """The ``count`` elements of a raw BYTES tensor; ValueError when the buffer does not hold exactly
    that many length-prefixed elements."""
    out: list[bytes] = []
    view = memoryview(raw)
    i, n = 0, len(raw)
    while i < n:
        if len(out) == count:
            raise ValueError(f"holds more than the {count} elements its shape says ({n - i} bytes left over)")
        if i + 4 > n:
            raise ValueError(f"element {len(out)} is cut inside its 4-byte length prefix")
        (length,) = _LENGTH.unpack_from(raw, i)
        i += 4
        if i + length > n:
            raise ValueError(f"element {len(out)} claims {length} bytes but only {n - i} remain")
        out.append(bytes(view[i:i + length]))
        i += length
    if len(out) != count:
        raise ValueError(f"holds {len(out)} elements; its shape says {count}")
    return out


def as_array(raw: bytes, datatype: str, shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """A fixed-size datatype's raw bytes as an array of ``shape`` (a view; ValueError on a size mismatch)."""
    dtype = np.dtype(DTYPES[datatype])
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != count * dtype.itemsize:
        raise ValueError(f"has {len(raw)} bytes; a {datatype} tensor of shape {list(shape)} needs "
                         f"{count * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)
