"""A malformed request gets the status of what is wrong with it whether or not the server is busy.

One server (the real one, its workers computing with the NumPy stand-in, so it starts in seconds) whose
queue can never fill a batch: ``--max-batch-size 8`` with a queue of 2 and a queue delay of a minute,
so an admitted image stays in flight until its caller leaves; ``--max-inflight 3``. An ExplainBatch of
2 images then holds the server busy on both counts: the queue is full (a 1-image call is shed,
RESOURCE_EXHAUSTED) and a 2-image call passes the in-flight limit (RESOURCE_EXHAUSTED). Every
malformed request of Explain, ExplainBatch and ModelInfer is sent once idle and once busy: the
code, message and retry pushback must be the same, and never the busy refusal.
"""

from __future__ import annotations

import struct
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from camserve_proto import explain_pb2 as pb
from camserve_proto import explain_pb2_grpc as pb_grpc
from camserve_proto import grpc_service_pb2 as ipb
from camserve_proto import grpc_service_pb2_grpc as ipb_grpc
from camserve_proto import oip
from front_helpers import png, served
from serverproc import ServerProcess, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transport"))
from transportkit import start_toy, toy_repository

SHAPE = (16, 16, 3)
QUEUE = 2
MAX_INFLIGHT = 3
MESSAGE_LIMIT = 1 << 20  # --max-message-mb 1: an ORIGINAL-size map of a 1000x1000 image cannot fit
FLAGS = ("--max-inflight", str(MAX_INFLIGHT), "--max-queue-size", str(QUEUE), "--max-batch-size", "8",
         "--max-queue-delay-ms", "60000", "--max-message-mb", str(MESSAGE_LIMIT >> 20))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    tmp = Path(tempfile.mkdtemp(prefix="camserve-admission-"))
    with served(start_toy(*FLAGS, repository=toy_repository(tmp / "repo", SHAPE)), tmp) as srv:
        yield srv


def _pixels(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, np.uint8)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that is only its signature and IHDR: it claims ``width`` x ``height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


GOOD = png(_pixels())


def _explain(image: bytes | pb.Image = GOOD, **kw: Any) -> pb.ExplainRequest:
    img = image if isinstance(image, pb.Image) else pb.Image(encoded=image)
    return pb.ExplainRequest(image=img, **{"model": "toy", **kw})


def _tensor(dtype: int, shape: list[int], data: bytes) -> pb.Image:
    return pb.Image(tensor=pb.Tensor(dtype=dtype, shape=shape, data=data))


def _infer(rows: list[bytes] | None = None, *, shape: list[int] | None = None,
           params: dict[str, ipb.InferParameter] | None = None, **kw: Any) -> ipb.ModelInferRequest:
    rows = [GOOD] if rows is None else rows
    tensor = ipb.ModelInferRequest.InferInputTensor(name=oip.IMAGE, datatype="BYTES",
                                                    shape=shape or [len(rows), 1])
    request = ipb.ModelInferRequest(inputs=[tensor], raw_input_contents=[oip.pack_bytes(rows)],
                                    **{"model_name": "toy", **kw})
    for name, value in (params or {}).items():
        request.parameters[name].CopyFrom(value)
    return request


def _pixels_infer(pixels: np.ndarray) -> ipb.ModelInferRequest:
    tensor = ipb.ModelInferRequest.InferInputTensor(name=oip.PIXELS, datatype="UINT8",
                                                    shape=list(pixels.shape))
    return ipb.ModelInferRequest(model_name="toy", inputs=[tensor], raw_input_contents=[pixels.tobytes()])


P = ipb.InferParameter
NAN = np.full(SHAPE, np.nan, "<f4").tobytes()
PIXELS_AS_FLOAT = _pixels().astype("<f4").tobytes()  # 0..255: not what the model's "tf" preprocessing gives
#: The malformed requests (by id) that only the loaded model can judge: classes, top-k, map sizes.
NEEDS_MODEL: set[int] = set()


def _needs_model(request: Any) -> Any:
    NEEDS_MODEL.add(id(request))
    return request


BOMB = _png_header(100_000, 100_000)
BIG = _png_header(1000, 1000)  # a valid header: refused for its map's size before it is decoded
ORIGINAL = pb.OutputOptions(size=pb.ORIGINAL)
# (method, request): every one malformed in its own way, one or several images, both protocols.
MALFORMED: list[tuple[str, Any]] = [
    ("Explain", _explain(model="nope")),
    ("Explain", _explain(method=999)),
    ("Explain", _needs_model(_explain(class_index=7))),
    ("Explain", _needs_model(_explain(top_k=9))),
    ("Explain", pb.ExplainRequest(model="toy")),
    ("Explain", _explain(b"GIF89a not an image")),
    ("Explain", _explain(BOMB)),
    ("Explain", _explain(b"\xff\xd8\xff\xe0 a JPEG without its frame")),
    ("Explain", _explain(_tensor(pb.UINT8, [16, 16, 3], b"\x00" * 7))),
    ("Explain", _explain(_tensor(pb.UINT8, [2, 16, 16, 3], b"\x00" * 1536))),
    ("Explain", _explain(_tensor(pb.FLOAT32, list(SHAPE), NAN))),
    ("Explain", _explain(_tensor(pb.FLOAT32, list(SHAPE), PIXELS_AS_FLOAT))),
    ("Explain", _explain(output=pb.OutputOptions(colormap=99))),
    ("Explain", _explain(class_index=1, top_k=3)),
    ("Explain", _needs_model(_explain(BIG, output=ORIGINAL))),
    ("ExplainBatch", pb.ExplainBatchRequest(requests=[_explain(), _explain(b"not an image")])),
    ("ExplainBatch", _needs_model(pb.ExplainBatchRequest(requests=[_explain(), _explain(class_index=-2)]))),
    ("ExplainBatch", pb.ExplainBatchRequest(requests=[_explain(class_index=-2), _explain(method=999)])),
    ("ExplainBatch", pb.ExplainBatchRequest(requests=[_explain()] * (QUEUE + 1))),
    ("ExplainBatch", _needs_model(pb.ExplainBatchRequest(requests=[_explain(BIG, output=ORIGINAL)] * 2))),
    ("ModelInfer", _infer(model_name="nope")),
    ("ModelInfer", _infer(model_version="2")),
    ("ModelInfer", _infer(params={"method": P(string_param="gradcam+")})),
    ("ModelInfer", _infer(params={"top_k": P(bool_param=True)})),
    ("ModelInfer", _infer(shape=[1024, 1])),  # claims 1024 rows, carries 1
    ("ModelInfer", _infer(shape=[1 << 40, 1])),
    ("ModelInfer", _infer([GOOD, GOOD], shape=[1, 1])),  # claims 1 row, carries 2
    ("ModelInfer", _infer([GOOD, b"GIF89a"])),
    ("ModelInfer", _infer([BOMB])),
    ("ModelInfer", _infer([GOOD] * (QUEUE + 1))),
    ("ModelInfer", _needs_model(_infer([GOOD, BIG], params={"heatmap_size": P(string_param="original")}))),
    ("ModelInfer", _needs_model(_infer([BIG, BIG], params={"heatmap_size": P(string_param="original")}))),
    ("ModelInfer", _infer(params={"colormap": P(string_param="rainbow")})),
    ("ModelInfer", _pixels_infer(_pixels(shape=(2, 8, 8, 3)))),
    ("ModelInfer", _infer(outputs=[ipb.ModelInferRequest.InferRequestedOutputTensor(name="LOGITS")])),
]


def _stubs(channel: grpc.Channel) -> dict[str, Callable[..., Any]]:
    explain, infer = pb_grpc.ExplainServiceStub(channel), ipb_grpc.GRPCInferenceServiceStub(channel)
    return {"Explain": explain.Explain, "ExplainBatch": explain.ExplainBatch, "ModelInfer": infer.ModelInfer}


def _answer(call: Callable[..., Any], request: Any) -> tuple[str, str, str | None]:
    """(code, details, grpc-retry-pushback-ms) of a call that must fail."""
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)
    pushback = dict(err.value.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
    return err.value.code().name, err.value.details(), pushback


def test_malformed_requests_get_the_same_status_busy_or_idle(server: ServerProcess) -> None:
    with server.channel() as channel:
        stubs = _stubs(channel)
        idle = [_answer(stubs[method], request) for method, request in MALFORMED]
        assert server.metric("camserve_queue_depth", model="toy") == 0  # nothing malformed was queued
        holder = stubs["ExplainBatch"].future(pb.ExplainBatchRequest(requests=[_explain()] * QUEUE),
                                              timeout=120)
        try:
            wait_for(lambda: server.metric("camserve_queue_depth", model="toy") == QUEUE, timeout=30)
            # Busy on both counts: a valid 1-image call is shed (queue full), a 2-image call is not admitted.
            full = [_answer(stubs["Explain"], _explain()), _answer(stubs["ModelInfer"], _infer())]
            limit = [_answer(stubs["ExplainBatch"], pb.ExplainBatchRequest(requests=[_explain()] * 2)),
                     _answer(stubs["ModelInfer"], _infer([GOOD, GOOD]))]
            busy = [_answer(stubs[method], request) for method, request in MALFORMED]
            assert not holder.done()  # still in flight: every busy answer above was given while busy
        finally:
            holder.cancel()
    assert [code for code, _, _ in full + limit] == ["RESOURCE_EXHAUSTED"] * 4, full + limit
    assert all("full" in details for _, details, _ in full), full
    assert all("in-flight limit" in details for _, details, _ in limit), limit
    differ = [f"{method} {str(request)[:100]!r}: idle {before[:2]}, busy {after[:2]}"
              for (method, request), before, after in zip(MALFORMED, idle, busy, strict=True)
              if after != before]
    assert not differ, f"{len(differ)} of {len(MALFORMED)} answers depend on load:\n" + "\n".join(differ)
    for (method, request), (code, details, pushback) in zip(MALFORMED, busy, strict=True):
        what = f"{method} {str(request)[:120]!r}"
        assert "in-flight limit" not in details and "is full" not in details, (what, details)
        assert code in ("INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"), (what, code, details)
        if code == "RESOURCE_EXHAUSTED":  # the message limit: TOO_LARGE, which no retry can fix
            assert "message limit" in details and pushback == "-1", (what, details, pushback)


def test_malformed_requests_get_the_same_status_while_the_model_loads(server: ServerProcess) -> None:
    """The admission order: check the whole request first. While the model loads, a request malformed
    in a way its config can judge (fields, options, image headers and tensors) is refused as it is
    once the model is ready (INVALID_ARGUMENT: retrying cannot fix it), not told UNAVAILABLE (retry)
    only to be refused then. What only the loaded model can judge (classes, top-k, map sizes) waits
    for it: UNAVAILABLE, retryable."""
    with server.channel() as channel:
        ready = [_answer(_stubs(channel)[method], request) for method, request in MALFORMED]
    tmp = Path(tempfile.mkdtemp(prefix="camserve-loading-"))
    with served(start_toy(*FLAGS, repository=toy_repository(tmp / "repo", SHAPE), wait=False,
                          env={"CAMSERVE_TOY_LOAD_S": "300"}), tmp) as loading:
        wait_for(lambda: loading.health() == "NOT_SERVING", timeout=60)  # the port answers; still loading
        with loading.channel() as channel:
            stubs = _stubs(channel)
            answers = [_answer(stubs[method], request) for method, request in MALFORMED]
            assert loading.health() == "NOT_SERVING"  # every answer above came while it loaded
    wrong = []
    for (method, request), (code, details, _), (ready_code, ready_details, _) in zip(
            MALFORMED, answers, ready, strict=True):
        if id(request) in NEEDS_MODEL:
            ok = code == "UNAVAILABLE" and "still loading" in details
        else:
            ok = (code, details) == (ready_code, ready_details)
        if not ok:
            wrong.append(f"{method} {str(request)[:100]!r}: loading {code} {details[:80]!r}, "
                         f"ready {ready_code}")
    assert not wrong, f"{len(wrong)} of {len(MALFORMED)} answers while loading:\n" + "\n".join(wrong)
