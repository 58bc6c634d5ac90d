"""Model repository parsing: valid configs load, every mistake names its file and field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from camserve.repository import (
    BatchingConfig,
    RepositoryError,
    bundled_repository_path,
    load_repository,
    with_batching,
)

GOOD: dict[str, Any] = {
    "name": "demo",
    "version": 2,
    "model_file": "model.keras",
    "application": None,
    "weights": None,
    "input_shape": [64, 48, 3],
    "preprocessing": "caffe",
    "target_layer": "features",
    "labels_file": "labels.txt",
    "score": "logits",
    "batching": {"max_batch_size": 16, "max_queue_delay_ms": 1.5, "max_queue_size": 100},
}


def write_model(root: Path, cfg: dict[str, Any], folder: str | None = None, files: bool = True) -> Path:
    d = root / (folder or cfg.get("name", "m"))
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    if files:
        (d / "model.keras").write_bytes(b"stand-in: the repository never opens it")
        (d / "labels.txt").write_text("cat\ndog\n\n")
    return d


def test_good_config_loads_with_every_field(tmp_path: Path) -> None:
    d = write_model(tmp_path, GOOD)
    repo = load_repository(tmp_path)
    cfg = repo["demo"]
    assert cfg.version == 2
    assert cfg.directory == d.resolve()
    assert cfg.model_path == d.resolve() / "model.keras"
    assert cfg.input_shape == (64, 48, 3)
    assert cfg.preprocessing == "caffe" and cfg.target_layer == "features" and cfg.score == "logits"
    assert cfg.labels == ["cat", "dog"]
    assert cfg.batching == BatchingConfig(16, 1.5, 100)


def test_defaults_and_application_models(tmp_path: Path) -> None:
    d = write_model(
        tmp_path, {"name": "r50", "application": "ResNet50", "input_shape": [224, 224, 3]}, files=False
    )
    (d / "w.weights.h5").write_bytes(b"x")
    cfg = load_repository(tmp_path)["r50"]
    assert cfg.model_path is None and cfg.weights_path is None
    assert cfg.batching == BatchingConfig(32, 2.0, 256)
    assert cfg.version == 1 and cfg.preprocessing == "none" and cfg.labels == []
    (d / "config.json").write_text(
        json.dumps({"application": "ResNet50", "weights": "w.weights.h5", "input_shape": [224, 224, 3]})
    )
    cfg = load_repository(tmp_path)["r50"]  # name defaults to the folder
    assert cfg.weights_path == (d / "w.weights.h5").resolve()


def test_single_model_folder_and_several_models(tmp_path: Path) -> None:
    a = write_model(tmp_path, {**GOOD, "name": "a"})
    write_model(tmp_path, {**GOOD, "name": "b"})
    (tmp_path / "__pycache__").mkdir()
    assert sorted(load_repository(tmp_path)) == ["a", "b"]
    assert list(load_repository(a)) == ["a"]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"version": 0}, "version", "out of range"),
        ({"version": "1"}, "version", "integer"),
        ({"name": "other"}, "name", "folder name"),
        ({"model_file": None}, "model_file", "exactly one"),
        ({"application": "ResNet50"}, "model_file", "exactly one"),
        ({"model_file": "missing.keras"}, "model_file", "not found"),
        ({"model_file": "model.onnx"}, "model_file", ".keras"),
        ({"weights": "w.h5"}, "weights", "only used with 'application'"),
        ({"input_shape": [64, 64]}, "input_shape", "[height, width, channels]"),
        ({"input_shape": [64, -1, 3]}, "input_shape", "out of range"),
        ({"input_shape": [64, 64, 3.0]}, "input_shape", "integer"),
        ({"preprocessing": "imagenet"}, "preprocessing", "caffe, tf, torch, none"),
        ({"score": "softmax"}, "score", "logits, probability"),
        ({"target_layer": 3}, "target_layer", "string"),
        ({"labels_file": "nope.txt"}, "labels_file", "not found"),
        ({"batching": {"max_batch_size": 0}}, "batching.max_batch_size", "out of range"),
        ({"batching": {"max_batch_size": True}}, "batching.max_batch_size", "integer"),
        ({"batching": {"max_queue_delay_ms": -1}}, "batching.max_queue_delay_ms", "out of range"),
        ({"batching": {"max_queue_size": 0}}, "batching.max_queue_size", "out of range"),
        ({"batching": {"max_batch": 8}}, "batching.max_batch", "unknown field"),
        ({"batching": [8]}, "batching", "object"),
        ({"inputshape": [1, 1, 1]}, "inputshape", "unknown field"),
    ],
)
def test_each_mistake_names_file_and_field(
    tmp_path: Path, change: dict[str, Any], field: str, words: str
) -> None:
    write_model(tmp_path, {**GOOD, **change}, folder="demo")
    with pytest.raises(RepositoryError) as info:
        load_repository(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "demo" / "config.json") in msg
    assert f"field '{field}'" in msg
    assert words in msg


def test_broken_files_and_folders(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="does not exist"):
        load_repository(tmp_path / "nowhere")
    with pytest.raises(RepositoryError, match="holds no model"):
        load_repository(tmp_path)
    d = write_model(tmp_path, GOOD)
    (d / "config.json").write_text("{ not json")
    with pytest.raises(RepositoryError, match=r"config.json: invalid JSON at line 1"):
        load_repository(tmp_path)
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(RepositoryError, match="JSON object"):
        load_repository(tmp_path)
    (d / "config.json").unlink()
    with pytest.raises(RepositoryError, match=r"has no config\.json"):
        load_repository(tmp_path)


def test_command_line_overrides_batching(tmp_path: Path) -> None:
    write_model(tmp_path, GOOD)
    repo = with_batching(load_repository(tmp_path), max_batch_size=4, max_queue_delay_ms=0)
    assert repo["demo"].batching == BatchingConfig(4, 0.0, 100)
    with pytest.raises(RepositoryError, match="command line: field 'max_queue_size'"):
        with_batching(repo, max_queue_size=0)


def test_bundled_demo_repository() -> None:
    assert (bundled_repository_path() / "demo" / "config.json").is_file(), "the package ships the demo model"
    repo = load_repository(None)
    assert "demo" in repo
    cfg = repo["demo"]
    assert cfg.model_path is not None and cfg.model_path.is_file()
    assert len(cfg.labels) == 10


def test_scheduling_modules_import_neither_tensorflow_nor_grpc() -> None:
    code = (
        "import sys, camserve.repository, camserve.records, camserve.vocabulary, "
        "camserve.scheduling.batcher, camserve.scheduling.placement, camserve.scheduling.handles, "
        "camserve.scheduling.pool, camserve.scheduling.dispatcher, "
        "camserve.worker.main, camserve.worker.runner, camserve.worker.slab; "
        "bad = [m for m in ('tensorflow', 'keras', 'jax', 'grpc') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
