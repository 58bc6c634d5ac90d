"""The import-layer contract in pyproject.toml ([tool.importlinter]) holds, and catches what it forbids.

The contract states the architecture (front -> scheduling -> worker -> engine; no TensorFlow/Keras/JAX
in the front, scheduling or client; no gRPC below the front; a client without server code). Each
injection below copies the source tree, adds one forbidden import, and checks that the matching
contract is reported broken: a contract that could never fail would prove nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the sources in ``tree`` (only the contracts with these ids, when given)."""
    env = {**os.environ, "PYTHONPATH": f"{tree / 'server'}{os.pathsep}{tree / 'client'}"}
    only = [arg for c in contracts for arg in ("--contract", c)]
    return subprocess.run([str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache", *only],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=300)


def test_the_contract_holds() -> None:
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("server/camserve/scheduling/batcher.py", "import tensorflow", "no-ml-in-parent"),
    ("server/camserve/front/codec.py", "import keras", "no-ml-in-parent"),
    ("server/camserve/engine/methods.py", "import grpc", "no-grpc-below-front"),
    ("server/camserve/worker/runner.py", "from camserve.front import status", "layers"),
    ("client/camserve_client/types.py", "import camserve.records", "light-client"),
])
def test_a_forbidden_import_breaks_the_contract(tmp_path: Path, module: str, line: str,
                                                contract: str) -> None:
    for part in ("server", "client"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "*.keras"))
    assert lint(tmp_path, contract).returncode == 0  # the copy holds before the injection
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # injected by the test\n")
    proc = lint(tmp_path, contract)
    assert proc.returncode != 0 and "1 broken" in proc.stdout, proc.stdout
