"""camserve benchmarks (``python -m bench.<name>``); figures quoted in the README come from here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_TESTS = Path(__file__).resolve().parents[1] / "tests"


def start_server(*args: Any, **kwargs: Any) -> Any:
    """``tests/serverproc.start_server`` (the real ``camserve serve`` subprocess the tests use).

    Imported by path, not as ``tests.serverproc``: tf-keras-vis 0.8.7 (a dev dependency) installs a
    top-level ``tests`` package of its own, which shadows this repository's ``tests`` folder.
    """
    if str(_TESTS) not in sys.path:
        sys.path.insert(0, str(_TESTS))
    from serverproc import start_server as start

    return start(*args, **kwargs)


def finish(tool: str, out: Path | None, doc: dict[str, Any], problems: list[str]) -> int:
    """Write ``doc`` as JSON to ``out`` (when given), print each problem, and return the exit status:
    1 when a step had errors or no success (``loadreport.step_problems``), else 0."""
    import json

    from camserve_client.tools.loadreport import json_safe

    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(json_safe(doc), indent=2) + "\n")
        print(f"wrote {out}")
    for line in problems:
        print(f"{tool}: {line}", file=sys.stderr)
    return 1 if problems else 0
