"""`camserve serve --backend jax`: the real server with Keras-on-JAX workers, over real gRPC.

Serves the bundled demo model, passes
the shared wire-contract check, reports backend "jax", keeps TensorFlow out of the worker process
(the GPU machines have none), and returns the maps the TensorFlow engine computes in-process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from camserve.repository import load_repository
from camserve_proto import explain_pb2 as pb
from camserve_proto import explain_pb2_grpc as pb_grpc
from jax_env import JAX_TEST_ENV
from serverproc import ServerProcess, start_server
from shared_dir import contract_check


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = start_server("--backend", "jax", repository=None, workers="cpu:1",
                       env=dict(JAX_TEST_ENV))
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, srv.log_tail()


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.ExplainServiceStub]:
    channel = server.channel()
    yield pb_grpc.ExplainServiceStub(channel)
    channel.close()


def test_workers_run_keras_on_jax_without_tensorflow(server: ServerProcess,
                                                     stub: pb_grpc.ExplainServiceStub) -> None:
    models = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
    assert models and all(m.backend == "jax" and m.compile_mode == "xla" for m in models), models
    pids = server.worker_pids()
    assert pids, "no worker process found"
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libjax" in maps or "xla_extension" in maps or "jaxlib" in maps, "worker did not load JAX"
        assert "libtensorflow" not in maps, "a JAX worker loaded TensorFlow"


def test_served_maps_equal_tensorflow_engine(stub: pb_grpc.ExplainServiceStub) -> None:
    """Same .keras file: JAX-served heatmaps == the TF engine's in-process maps (1e-4)."""
    import keras
    from camserve.engine import Explainer
    from camserve.records import ItemSpec

    if keras.backend.backend() != "tensorflow":
        pytest.fail("the reference side needs Keras on TensorFlow in this process, not "
                    f"{keras.backend.backend()} (run the suite with KERAS_BACKEND unset)", pytrace=False)
    cfg = next(iter(load_repository(None).values()))
    model = keras.saving.load_model(cfg.model_path, compile=False)
    ref = Explainer(model, cfg.target_layer, preprocessing=cfg.preprocessing, max_batch_size=4)
    pixels = np.random.default_rng(4).integers(0, 256, (3, *cfg.input_shape), dtype=np.uint8)
    for method, name in ((pb.GRAD_CAM, "gradcam"), (pb.LAYER_CAM, "layercam"), (pb.EIGEN_CAM, "eigencam")):
        want = ref.explain_batch(pixels, [ItemSpec(name, top_k=2)] * len(pixels))
        for img, expected in zip(pixels, want, strict=True):
            tensor = pb.Tensor(dtype=pb.UINT8, shape=list(img.shape), data=img.tobytes())
            reply = stub.Explain(pb.ExplainRequest(
                model=cfg.name, image=pb.Image(tensor=tensor), method=method, top_k=2,
                output=pb.OutputOptions(size=pb.CONV_GRID)), timeout=60)
            assert [e.class_index for e in reply.explanations] == [m.class_index for m in expected.maps]
            for ex, m in zip(reply.explanations, expected.maps, strict=True):
                got = np.frombuffer(ex.heatmap.data, "<f4").reshape(tuple(ex.heatmap.shape))
                np.testing.assert_allclose(got, m.heatmap, atol=1e-4, err_msg=name)


def test_contract_check_passes(server: ServerProcess) -> None:
    proc = subprocess.run([sys.executable, str(contract_check()), server.target, server.metrics_url],
                          capture_output=True, text=True, timeout=300)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
