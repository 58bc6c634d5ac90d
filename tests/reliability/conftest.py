"""Fixtures of the reliability tests: one shared server for the suites that need no special flags.

The shared server (``--max-message-mb 4 --max-concurrent-rpcs 12``), once with one front-end process
and once with two (``--frontends``; pytest runs every test of one before starting the other), serves
the fuzz suite (whose
calls are sequential, so the RPC limit never binds there), the in-flight-limit overload variant,
and plays the surviving replica in the drain test. Starting a TensorFlow worker costs 10-20 s on
2 cores, so sharing keeps the room inside its CI budget.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from relserver import FRONTENDS, SHARED_ARGS, RunningServer, start_server


@pytest.fixture(scope="session", params=FRONTENDS, ids=[f"frontends{n}" for n in FRONTENDS])
def shared_server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """A SERVING server on the reliability model repository, one worker, shared by the session."""
    with start_server("shared", SHARED_ARGS, frontends=request.param) as srv:
        yield srv
