"""The real worker process (Keras + camserve.engine) behind the dispatcher, on a tiny model.

Reference: the same .keras file explained in this process by ``camserve.engine.Explainer``;
what comes back through spawn + shared memory + pipe must match it to 1e-5.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest
from camserve.records import ErrorKind, Failure, ItemResult, ItemSpec, ModelSummary
from camserve.repository import ModelConfig, load_repository
from camserve.scheduling.batcher import WorkItem
from camserve.scheduling.dispatcher import Dispatcher

pytestmark = pytest.mark.timeout(300)
SHAPE = (16, 16, 3)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelConfig]:
    import keras  # the worker side of this test builds a real model; Keras is a server dependency
    keras.utils.set_random_seed(3)
    inp = keras.Input(SHAPE)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(5, activation="softmax", name="head")(x)
    root = tmp_path_factory.mktemp("repo")
    d = root / "tiny"
    d.mkdir()
    keras.Model(inp, out).save(d / "model.keras")
    (d / "labels.txt").write_text("\n".join("abcde") + "\n")
    cfg = {
        "name": "tiny",
        "model_file": "model.keras",
        "input_shape": list(SHAPE),
        "preprocessing": "tf",
        "target_layer": "features",
        "labels_file": "labels.txt",
        "batching": {"max_batch_size": 4, "max_queue_delay_ms": 20},
    }
    (d / "config.json").write_text(json.dumps(cfg))
    return load_repository(root)


def reference(cfg: ModelConfig, images: list[np.ndarray], specs: list[ItemSpec]) -> list[Any]:
    import keras
    from camserve.engine import Explainer

    assert cfg.model_path is not None
    model = keras.saving.load_model(cfg.model_path, compile=False)
    out = []
    cache: dict[str | None, Any] = {}
    for img, s in zip(images, specs, strict=True):
        layer = s.target_layer or cfg.target_layer
        if layer not in cache:
            cache[layer] = Explainer(
                model, target_layer=layer, preprocessing="tf", compile_mode="graph", max_batch_size=4
            )
        spec = ItemSpec(method=s.method, class_index=s.class_index, top_k=s.top_k)
        out.append(cache[layer].explain_batch(img[None], [spec])[0])
    return out


def test_real_worker_matches_the_in_process_engine(repo: dict[str, ModelConfig]) -> None:
    rng = np.random.default_rng(7)
    images: list[np.ndarray] = [rng.integers(0, 256, SHAPE, dtype=np.uint8) for _ in range(8)]
    images[7] = (images[7].astype(np.float32) / 127.5 - 1.0).astype(np.float32)  # already preprocessed
    specs = [
        ItemSpec("gradcam"),
        ItemSpec("cam", class_index=2),
        ItemSpec("layercam", top_k=2),
        ItemSpec("gradcam++"),
        ItemSpec("eigencam"),
        ItemSpec("hirescam", class_index=4),
        ItemSpec("gradcam", target_layer="c1"),
        ItemSpec("xgradcam"),
    ]
    bad = [
        ItemSpec("gradcam", class_index=9),
        ItemSpec("gradcam", target_layer="nope"),
        ItemSpec("cam", target_layer="c1"),
    ]

    async def main() -> tuple[list[ItemResult], list[BaseException | ItemResult], ModelSummary]:
        d = Dispatcher(repo, "cpu:1", compile_mode="graph")
        await d.start()
        try:
            assert not d.ready()
            deadline = time.monotonic() + 240
            while not d.ready():
                assert time.monotonic() < deadline, "worker not ready in 240 s"
                await asyncio.sleep(0.1)
            summary = d.model_summary("tiny")
            assert summary is not None
            pid = d.worker_pids()[0]
            good = await asyncio.gather(
                *(d.submit(WorkItem("tiny", im, s)) for im, s in zip(images, specs, strict=True))
            )
            errs = await asyncio.gather(
                *(d.submit(WorkItem("tiny", images[0], s)) for s in bad), return_exceptions=True
            )
            assert d.worker_pids() == [pid]  # caller errors never kill the worker
            return list(good), list(errs), summary
        finally:
            await d.stop(10)

    good, errs, summary = asyncio.run(main())
    assert summary.buckets == (1, 2, 4)
    assert summary.target_layer == "features" and summary.num_classes == 5
    assert summary.compile_mode == "graph" and summary.cam_supported is True
    assert {layer.name for layer in summary.layers} >= {"c1", "features"}

    assert max(r.batch_size for r in good) > 1
    for got, want, spec in zip(good, reference(repo["tiny"], images, specs), specs, strict=True):
        np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-5)
        assert [m.class_index for m in got.maps] == [m.class_index for m in want.maps], spec
        for gm, wm in zip(got.maps, want.maps, strict=True):
            np.testing.assert_allclose(gm.heatmap, wm.heatmap, atol=1e-5, err_msg=str(spec))
            assert gm.all_zero == wm.all_zero
            assert gm.score == pytest.approx(wm.score, abs=1e-5)

    kinds = [e.kind if isinstance(e, Failure) else repr(e) for e in errs]
    assert kinds == [ErrorKind.CLASS_INDEX, ErrorKind.UNKNOWN_LAYER, ErrorKind.CAM_NOT_SUPPORTED]
    assert "0..4" in str(errs[0]) and "'nope'" in str(errs[1]) and "c1" in str(errs[2])
