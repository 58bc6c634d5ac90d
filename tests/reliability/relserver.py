"""Start the real server for reliability tests: tests/serverproc.py serving this folder's repository, on
TensorFlow or (``standin=True``) on the stand-in engine of relstandin.py."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import relstandin
from relkit import cmdline, descendants
from serverproc import ServerProcess
from serverproc import start_server as _start_server

REPOSITORY = Path(__file__).resolve().parent / "data" / "repository"
# An injected defect (defects/sitecustomize.py) the tests must fail on; "" in every normal run.
DEFECT = os.environ.get("CAMSERVE_TEST_DEFECT", "")
DEFECTS_DIR = Path(__file__).resolve().parent / "defects"
MODEL = "rel"
RunningServer = ServerProcess

# Flags of the session-wide shared server (tests/reliability/conftest.py).
SHARED_MAX_MESSAGE_MB = 4
SHARED_MAX_CONCURRENT_RPCS = 12
SHARED_ARGS = ["--max-message-mb", str(SHARED_MAX_MESSAGE_MB),
               "--max-concurrent-rpcs", str(SHARED_MAX_CONCURRENT_RPCS)]
# Front-end counts of the scenarios whose fault is in the front-end processes themselves (the drain
# across front ends; a front end killed): only they run with two front ends as well. The worker, queue
# and input scenarios cannot fail differently with two, so in `make test` they run with one;
# CAMSERVE_TEST_FRONTENDS=2 runs them (and the shared server) with two front ends on demand.
FRONTENDS = (1, 2)
DEFAULT_FRONTENDS = int(os.environ.get("CAMSERVE_TEST_FRONTENDS", "1"))


@functools.cache
def _standin_repository() -> Path:
    root = Path(tempfile.mkdtemp(prefix="camserve-standin-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return relstandin.repository(root)


@contextlib.contextmanager
def start_server(name: str, extra_args: list[str] | tuple[str, ...] = (), workers: str = "cpu:1",
                 frontends: int | None = None, standin: bool = False,
                 **kwargs: Any) -> Iterator[ServerProcess]:
    """A SERVING server on free loopback ports; always stopped and reaped after, workers and front
    ends included.

    ``name`` only labels failures: on any failure inside the block the server's log tail is attached.
    With ``CAMSERVE_TEST_DEFECT`` set, the server runs with that injected defect (``defects/``).
    ``frontends``: None = ``DEFAULT_FRONTENDS``. ``standin``: the workers run the stand-in engine
    (relstandin.py: same model name, input shape and batching, no TensorFlow), for scenarios whose
    subject is the serving machinery; otherwise the TensorFlow rel model.
    """
    frontends = DEFAULT_FRONTENDS if frontends is None else frontends
    paths = [str(DEFECTS_DIR)] if DEFECT else []  # its sitecustomize.py patches the defect into every process
    repository = REPOSITORY
    if standin:  # the runner's modules, importable by the supervisor and the workers it spawns
        paths += [str(relstandin.HERE), str(relstandin.SCHEDULING)]
        extra_args = [*extra_args, "--runner", relstandin.RUNNER]
        repository = _standin_repository()
    if paths:
        env = dict(kwargs.pop("env", None) or {})
        env["PYTHONPATH"] = os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])
        kwargs["env"] = env
    srv = _start_server(*extra_args, "--frontends", str(frontends), repository=repository, workers=workers,
                        **kwargs)
    srv.frontends = frontends
    try:
        yield srv
    except BaseException as e:
        e.add_note(f"--- {name} server log tail ---\n{srv.log_tail(80)}")
        raise
    finally:
        kids = descendants(srv.pid) if srv.alive() else []
        if srv.alive():
            srv.stop(timeout=60)
        for pid in kids:  # a server killed mid-test must not leave workers behind
            if any(k in cmdline(pid) for k in ("spawn_main", "resource_tracker", "camserve.front.frontend")):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            srv.log_path.unlink()
