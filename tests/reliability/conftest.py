"""Fixtures of the reliability tests: one shared server for the suites that need no special flags.

The shared server (``--max-message-mb 4 --max-concurrent-rpcs 12``, one front-end process, the
TensorFlow rel model) serves the fuzz suite (whose calls are sequential, so the RPC limit never binds
there). Starting a TensorFlow worker costs 10-20 s on 2 cores; the scenarios whose subject is the
serving machinery (drain, overload, worker faults) run their own servers on the stand-in engine
(relstandin.py) instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from relserver import SHARED_ARGS, RunningServer, start_server


@pytest.fixture(scope="session")
def shared_server() -> Iterator[RunningServer]:
    """A SERVING server on the reliability model repository, one worker, shared by the session."""
    with start_server("shared", SHARED_ARGS) as srv:
        yield srv
