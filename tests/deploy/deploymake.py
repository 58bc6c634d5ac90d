"""`make` as the deploy tests run it: the Makefile's deploy-check targets, with this interpreter's
environment as the venv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make(*args: str) -> subprocess.CompletedProcess[str]:
    """`make ARGS` at the repository root with this interpreter's environment as the venv (BIN), as
    `make deploy-check` runs its targets once the environments exist; stdout and stderr together. The
    flags of a make that started pytest (`make test`) stay out."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", f"BIN={Path(sys.executable).parent}", *args],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
