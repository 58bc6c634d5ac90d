"""`camserve serve` whose workers compute with the NumPy stand-in engine (scheduling/sched_toy_runner.py).

Everything the transport tests exercise is the real server: the front end, its gRPC and HTTP
transports, the dispatcher, the pool and the worker processes with their pipe and shared memory.
Only the compute inside each worker is the stand-in, so a server starts in about a second instead
of loading TensorFlow, and ``CAMSERVE_TOY_LOAD_S`` holds a worker in its loading phase for exactly
that long. Run as ``python tests/transport/toyserve.py serve ARGS`` (tests/serverproc.py's
``start_server(..., entry=TOY_ENTRY)``).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scheduling"))  # the stand-in runner; spawned workers inherit sys.path

from camserve.front.cli import main  # noqa: E402
from camserve.scheduling.dispatcher import Dispatcher  # noqa: E402

Dispatcher.__init__ = functools.partialmethod(Dispatcher.__init__, runner="sched_toy_runner:ToyRunner")

if __name__ == "__main__":
    sys.exit(main())
