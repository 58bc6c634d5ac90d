"""Open Inference Protocol tensors: a request's inputs as NumPy arrays (or lists of bytes), and
replies in ``raw_output_contents``.

Why a module of its own: the protocol lets a caller send a tensor two ways, raw (``raw_input_contents``,
what tritonclient and perf_analyzer send: little-endian bytes, BYTES as length-prefixed elements) or
typed (``contents``, what some KServe clients send: one repeated field per datatype, 8- and 16-bit
integers widened to 32 bits), and a server must accept both, checking sizes, counts and ranges
before anything is allocated from a caller's numbers. Replies always travel raw: both Triton
clients read only ``raw_output_contents``. Every refusal is an INVALID_INPUT
:class:`~camserve.records.Failure` naming the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from camserve_proto import grpc_service_pb2 as pb
from camserve_proto import oip

from camserve.front.status import shown
from camserve.records import ErrorKind, Failure

__all__ = ["Tensor", "bytes_output", "output_tensor", "read_input", "read_inputs"]

#: The typed ``contents`` field of each datatype (BYTES: ``bytes_contents``; FP16/BF16: raw only).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
#: Elements one tensor may claim before anything is allocated (a 16 MiB message holds fewer).
MAX_ELEMENTS = 1 << 31


def _invalid(message: str) -> Failure:
    return Failure(message, ErrorKind.INVALID_INPUT)


@dataclass(frozen=True)
class Tensor:
    """One input: its name, datatype, shape and value (an array of ``shape``; for BYTES the flat list
    of its elements, row-major)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    value: np.ndarray | list[bytes]


def read_inputs(request: pb.ModelInferRequest) -> list[Tensor]:
    """Every input of ``request``, from ``raw_input_contents`` (one entry per input, in order) or from
    each input's typed ``contents``; raises an INVALID_INPUT Failure on any mismatch."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise _invalid(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
                       "send one per input, in the order of inputs")
    return [read_input(t, raw[i] if raw else None) for i, t in enumerate(request.inputs)]


def read_input(t: pb.ModelInferRequest.InferInputTensor, raw: bytes | None,
               shape: tuple[int, ...] | None = None) -> Tensor:
    """One input from its raw content (``raw``; None = its typed ``contents``); ``shape`` is
    ``t.shape`` when the caller has it already."""
    what = f"input {shown(t.name)}"
    if t.datatype != "BYTES" and t.datatype not in oip.DTYPES:
        raise _invalid(f"{what} has unknown datatype {shown(t.datatype)}; valid: "
                       f"{', '.join([*oip.DTYPES, 'BYTES'])}")
    shape = tuple(t.shape) if shape is None else shape
    if any(d < 0 for d in shape):
        raise _invalid(f"{what} has shape {shown(list(shape))}; every dimension must be >= 0")
    count = 1
    for d in shape:
        count *= d
        if count > MAX_ELEMENTS:
            raise _invalid(f"{what} claims shape {shown(list(shape))}: more than {MAX_ELEMENTS} elements")
    field = CONTENTS_FIELD.get(t.datatype)
    if raw is not None:
        if field is not None and t.HasField("contents") and t.contents.ListFields():
            raise _invalid(f"{what} has typed contents and raw_input_contents; send one form only")
        return Tensor(t.name, t.datatype, shape, _from_raw(what, raw, t.datatype, shape, count))
    if field is None:
        raise _invalid(f"{what} is {t.datatype}, which travels only in raw_input_contents")
    values = getattr(t.contents, field)
    if len(values) != count:
        raise _invalid(f"{what} has {len(values)} elements in contents.{field}; its shape "
                       f"{shown(list(shape))} says {count}")
    if t.datatype == "BYTES":
        return Tensor(t.name, t.datatype, shape, list(values))
    dtype = np.dtype(oip.DTYPES[t.datatype])
    wide = np.asarray(values)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if int(wide.min()) < info.min or int(wide.max()) > info.max:
            raise _invalid(f"{what} is {t.datatype}; contents.{field} holds values outside "
                           f"{info.min}..{info.max}")
    return Tensor(t.name, t.datatype, shape, wide.astype(dtype).reshape(shape))


def _from_raw(what: str, raw: bytes, datatype: str, shape: tuple[int, ...],
              count: int) -> np.ndarray | list[bytes]:
    try:
        if datatype == "BYTES":
            return oip.unpack_bytes(raw, count)
        return oip.as_array(raw, datatype, shape)
    except ValueError as exc:
        raise _invalid(f"{what}: its raw content {exc}") from None


def output_tensor(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> tuple[
        pb.ModelInferResponse.InferOutputTensor, bytes]:
    """An output's metadata and its raw content, as they go into the reply."""
    return pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=shape), raw


def bytes_output(name: str, rows: list[list[bytes]]) -> tuple[pb.ModelInferResponse.InferOutputTensor, bytes]:
    """A BYTES output of shape [len(rows), len(rows[0])] from rows of equal length."""
    shape = (len(rows), len(rows[0]) if rows else 0)
    return output_tensor(name, "BYTES", shape, oip.pack_bytes([e for row in rows for e in row]))
