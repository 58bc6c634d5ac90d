"""The project's shared folder beside the checkout (``../shared``): the wire-contract check lives there.

CI runs on a clean clone with a copy of shared/ beside it, and so does every worktree; a missing folder
fails the test that needs it, saying where it looked (it never skips: a skipped contract check would
count as a pass).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def contract_check() -> Path:
    """Path of ``shared/tools/contract_check.py``: ``$CAMSERVE_SHARED`` if set, else ``../shared``."""
    override = os.environ.get("CAMSERVE_SHARED")
    shared = Path(override) if override else ROOT.parent / "shared"
    path = shared / "tools" / "contract_check.py"
    if not path.is_file():
        where = "$CAMSERVE_SHARED" if override else f"the shared/ folder beside the checkout {ROOT}"
        pytest.fail(f"the wire-contract check is missing: looked for {path} ({where}); "
                    "put a copy of the project's shared/ folder beside the checkout or set CAMSERVE_SHARED",
                    pytrace=False)
    return path
