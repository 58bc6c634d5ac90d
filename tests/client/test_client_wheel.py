"""`pip install camserve` (no extras) is the light client: build the wheel, install it into a fresh
venv with only grpcio, grpcio-health-checking, protobuf and numpy, prove TensorFlow is absent, and use
it against a server.

The server is the real `camserve serve` with the NumPy stand-in engine (tests/transport/transportkit.py:
the front end, scheduling and worker processes are the real ones): what is under test is the light
client, and a TensorFlow worker would add a model build and ~12 CPU-s of start to prove nothing more
(tests/client/test_client_server.py drives the client against TensorFlow workers).

Offline and fast: the wheel is built without isolation from a copy of the sources, installed with
`--no-deps --no-index`, and the base dependencies are the dev venv's own installed copies (exactly the
pinned versions), linked in through a .pth file that names only them.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from camserve_client.tools.testimages import encode_png, generated
from serverproc import ROOT

sys.path.insert(0, str(ROOT / "tests" / "transport"))
from transportkit import start_toy, toy_repository

pytestmark = pytest.mark.timeout(300)
BASE_DEPS = ("grpcio", "grpcio-health-checking", "protobuf", "numpy")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIP_NO_INPUT"] = "1"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, **kw)
    return proc


def build_wheel(out: Path) -> Path:
    src = out / "src"
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("server", "client"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    proc = _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out / "dist"),
                 str(src)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = (out / "dist").glob("camserve-*.whl")
    return wheel


def closure(names: tuple[str, ...]) -> list[str]:
    """The distributions `names` need at run time (no extras), themselves included."""
    seen: list[str] = []
    todo = list(names)
    while todo:
        name = todo.pop()
        if name.lower() in (s.lower() for s in seen):
            continue
        seen.append(name)
        for req in md.requires(name) or []:
            if "extra ==" not in req:
                todo.append(re.split(r"[=<>!~ ;\[(]", req, maxsplit=1)[0])
    return seen


def link_base_deps(venv_python: Path, stage: Path) -> list[str]:
    """Make exactly the base dependencies (and what they need) importable in the fresh venv."""
    stage.mkdir()
    names = closure(BASE_DEPS)
    for dist_name in names:
        dist = md.distribution(dist_name)
        site = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            if top == "google":  # namespace package: link only protobuf's parts of it
                (stage / "google").mkdir(exist_ok=True)
                for sub in ("protobuf", "_upb"):
                    if (site / "google" / sub).exists():
                        (stage / "google" / sub).symlink_to(site / "google" / sub)
            elif (site / top).exists() and not (stage / top).exists():
                (stage / top).symlink_to(site / top)
    purelib = _run([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    Path(purelib.stdout.strip(), "camserve_base_deps.pth").write_text(str(stage) + "\n")
    return names


def test_light_install_has_no_tensorflow_and_talks_to_a_server(tmp_path: Path) -> None:
    # the stand-in serves model "toy" (32x32x3) with maps at the input size (grid 32x32)
    srv = start_toy(repository=toy_repository(tmp_path / "repo", (32, 32, 3)), wait=False)
    try:
        wheel = build_wheel(tmp_path)
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            requires = [ln.split(":", 1)[1].strip() for ln in z.read(meta).decode().splitlines()
                        if ln.startswith("Requires-Dist:")]
            names = z.namelist()
        base = sorted(re.split(r"[=<> ;\[]", r)[0].lower() for r in requires if "extra ==" not in r)
        assert base == sorted(BASE_DEPS), requires
        assert "camserve_proto/explain_pb2.py" in names and "camserve_proto/vocabulary.py" in names
        assert "camserve_client/tools/cli.py" in names

        venv = tmp_path / "fresh"
        proc = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
        assert proc.returncode == 0, proc.stderr
        py = venv / "bin" / "python"
        proc = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                     "--no-cache-dir", "--quiet", str(wheel)])
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        linked = link_base_deps(py, tmp_path / "base-deps")
        assert {n.lower() for n in linked} <= {*BASE_DEPS, "typing_extensions", "typing-extensions"}, linked
        proc = _run([sys.executable, "-m", "pip", "--python", str(py), "check"])
        assert proc.returncode == 0, proc.stdout + proc.stderr  # requirements met by exactly those

        probe = _run([str(py), "-c", "import tensorflow"])
        assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr
        for heavy in ("keras", "cv2", "prometheus_client", "grpc_reflection"):
            assert _run([str(py), "-c", f"import {heavy}"]).returncode != 0, heavy

        img = generated(1, 32, "noise")[0][0]
        (tmp_path / "x.png").write_bytes(encode_png(img))
        srv.wait_serving()
        script = f"""
import asyncio, sys, numpy as np
import camserve_client as cc
with cc.Client({srv.target!r}, model="toy") as c:
    assert c.health("toy") == "SERVING"
    r = c.explain({str(tmp_path / "x.png")!r}, output={{"overlay": "png"}})
    assert r.heatmap.shape == (32, 32) and r.overlay[:4] == b"\\x89PNG", r
    assert len(c.explain_batch([np.zeros((32, 32, 3), np.uint8)] * 3)) == 3
    try:
        c.explain(b"junk")
    except cc.InvalidArgument as e:
        print("invalid:", e.code.name)
async def go():
    async with cc.AsyncClient({srv.target!r}, model="toy") as a:
        return await asyncio.gather(*(a.explain(np.zeros((32, 32, 3), np.uint8)) for _ in range(4)))
assert len(asyncio.run(go())) == 4
assert not any(m.split(".")[0] in ("tensorflow", "keras", "cv2") for m in sys.modules)
print("ok", cc.__file__)
"""
        run = _run([str(py), "-c", script])
        assert run.returncode == 0, run.stdout + run.stderr
        assert "invalid: INVALID_ARGUMENT" in run.stdout and str(venv) in run.stdout

        cli = venv / "bin" / "camserve"
        # a 40x48 photo: the map travels at the grid (32x32) and the light client resizes it to the photo
        (tmp_path / "photo.png").write_bytes(encode_png(generated(1, 48, "noise")[0][0][:40]))
        run = _run([str(cli), "explain", str(tmp_path / "photo.png"), "--target", srv.target,
                    "--model", "toy", "--heatmap", str(tmp_path / "h.npy")])
        assert run.returncode == 0, run.stdout + run.stderr
        assert np.load(tmp_path / "h.npy").shape == (40, 48)
        assert _run([str(py), "-c", "import tqdm"]).returncode != 0  # tqdm is the tools extra's
        run = _run([str(cli), "explain", str(tmp_path / "x.png"), str(tmp_path / "x.png"), "--target",
                    srv.target, "--model", "toy"])  # several images want a progress bar: runs without
        assert run.returncode == 0 and "Traceback" not in run.stderr, run.stdout + run.stderr
        run = _run([str(cli), "bench", "--target", srv.target, "--model", "toy", "--concurrency", "2",
                    "--duration", "1", "--warmup", "0.5", "--images", "noise", "--quiet",
                    "--json", str(tmp_path / "b.json")])
        assert run.returncode == 0, run.stdout + run.stderr
        assert "matplotlib" not in run.stdout and (tmp_path / "b.json").exists()
        run = _run([str(cli), "serve"])
        assert run.returncode == 2 and "camserve[server]" in run.stderr
    finally:
        srv.stop()
