"""Helpers shared by the integration tests: the served repository, test images, request builders."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
from camserve.repository import bundled_repository_path
from camserve_proto import explain_pb2 as pb

HERE = Path(__file__).resolve().parent
FLAT_DIR = HERE / "data" / "repository" / "flat"


def demo_dir() -> Path:
    """The bundled demo model folder (CAMSERVE_IT_DEMO may point at another demo-like folder)."""
    override = os.environ.get("CAMSERVE_IT_DEMO")
    path = Path(override) if override else bundled_repository_path() / "demo"
    if not (path / "config.json").is_file():
        pytest.fail(f"no demo model at {path} (run `python -m camserve.demo.train`)", pytrace=False)
    return path


def make_repository(root: Path, flat: bool = True) -> Path:
    """A repository folder linking the demo model (and the Flatten-head test model)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "demo").symlink_to(demo_dir(), target_is_directory=True)
    if flat:
        (root / "flat").symlink_to(FLAT_DIR, target_is_directory=True)
    return root


@contextlib.contextmanager
def served(server: Any, tmp: Path) -> Iterator[Any]:
    """``server`` (a started ``serverproc.ServerProcess``) for a module's tests; then stopped, which must
    exit 0, and its temporary folder ``tmp`` removed."""
    try:
        yield server
    finally:
        code = server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        assert code == 0, server.log_tail()


def digit_images(n: int, seed: int = 7) -> np.ndarray:
    """(n, 64, 64, 3) uint8 RGB cluttered digits, like the demo model was trained on."""
    from camserve.demo.digits import generate

    return generate(n, "heldout", seed).images


def png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def request(image: bytes | np.ndarray, **kw: object) -> pb.ExplainRequest:
    """An ExplainRequest for encoded bytes or a uint8/float32 array (sent as a raw tensor)."""
    if isinstance(image, bytes):
        img = pb.Image(encoded=image)
    else:
        arr = np.ascontiguousarray(image)
        dtype = pb.UINT8 if arr.dtype == np.uint8 else pb.FLOAT32
        img = pb.Image(tensor=pb.Tensor(dtype=dtype, shape=list(arr.shape), data=arr.astype(
            arr.dtype.newbyteorder("<")).tobytes()))
    return pb.ExplainRequest(image=img, **kw)  # type: ignore[arg-type]


def heatmap(ex: pb.ClassExplanation) -> np.ndarray:
    assert ex.heatmap.dtype == pb.FLOAT32
    return np.frombuffer(ex.heatmap.data, "<f4").reshape(tuple(ex.heatmap.shape))


def code_name(future: grpc.Future) -> str:
    """How a call started with ``stub.Method.future(...)`` ended: "OK" or its status code's name."""
    try:
        future.result()
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name
