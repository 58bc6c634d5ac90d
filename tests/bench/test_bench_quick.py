"""`make bench-quick` in `make test`: every command that makes a README figure runs, tiny, and exits 0.

Each figure of ``bench/__main__.py`` runs its quick command (the full command's code path with tiny
budgets and models) in a subprocess, as ``python -m bench --quick NAME`` does; its JSON must hold rows
for what the README table shows. The figures themselves mean nothing here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.__main__ import FIGURES, quick_runs  # noqa: E402 - bench/ is a top-level folder beside tests/

pytestmark = pytest.mark.timeout(300)


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_engine(doc: dict) -> None:
    assert doc["rows"]
    assert all(_positive(r["gradcam_ips"]) and _positive(r["forward_ips"]) for r in doc["rows"])


def check_serve(doc: dict) -> None:
    (r,) = doc["results"]
    assert doc["problems"] == [] and r["served"]["calls"] > 0 and _positive(r["ratio"])
    assert r["server_exit_code"] == 0 and r["served"]["step"]["duration_s"] == pytest.approx(1.0)


def check_protocols(doc: dict) -> None:
    (r,) = doc["results"]
    assert r["problems"] == [] and set(r["protocols"]) == {"camserve", "oip"}
    (row,) = r["protocol_comparison"]
    assert _positive(row["oip"]["ratio"]) and _positive(row["camserve"]["img_s"])
    assert _positive(row["oip"]["parent_cpu_ms"])  # the CPU per call of a server it started


def check_frontend(doc: dict) -> None:
    assert doc["problems"] == [] and [r["case"] for r in doc["rows"]] == ["png64", "batch8"]
    assert all(r["frontends"] == 2 and r["images_in_window"] > 0 and _positive(r["cpu_ms_per_image"])
               for r in doc["rows"])


def check_load(doc: dict) -> None:
    (r,) = doc["results"]
    assert r["problems"] == [] and _positive(r["best_ratio"]) and r["baseline"][0]["requests_ok"] > 0
    (row,) = r["comparison"]
    assert row["concurrency"] == 1 and _positive(row["ratio"])


def check_localization(doc: dict) -> None:
    assert set(doc["sets"]) == {"generator", "printed"}
    assert all(s["images"] == 16 for s in doc["sets"].values())


def check_micro(doc: dict) -> None:
    d, g = doc["decode"], doc["grpc"]
    assert d["max_pixel_difference"] <= 1 and _positive(d["simplejpeg_us"]) and _positive(d["opencv_us"])
    assert _positive(g["plain_round_trip_us"]) and _positive(g["plain_server_cpu_us"])
    assert math.isfinite(g["interceptor_server_cpu_us"])
    assert _positive(doc["hop"]["thread_hop_us"]) and _positive(doc["metrics"]["multiprocess_us"])
    assert doc["records"]["tuple_bytes"] < doc["records"]["default_bytes"]
    assert _positive(doc["reply"]["build_response_us"]) and _positive(doc["reply"]["best_classes_us"])
    assert _positive(doc["batch"]["np_stack_us"]) and _positive(doc["batch"]["stacked_us"])


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}


def test_every_figure_has_a_check() -> None:
    assert sorted(CHECKS) == sorted(f.name for f in FIGURES)


@pytest.mark.parametrize("figure", quick_runs(list(FIGURES)), ids=lambda f: f.name)
def test_quick_command_runs_and_exits_zero(figure, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", figure.name, "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = json.loads((tmp_path / f"{figure.name}.json").read_text())
    covered = [f.name for f in FIGURES if (f.quick_as or f.name) == figure.name]
    for name in covered:  # every figure this quick run stands for
        CHECKS[name](doc)
