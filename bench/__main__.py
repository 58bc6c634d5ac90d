"""Every figure the README quotes, each made by one command: ``python -m bench [--quick] [NAME ...]``.

``make bench`` runs them all (``make bench-NAME`` one), exactly as README's figure sections name them;
``make bench-quick`` (and ``tests/bench``, in ``make test``) runs the same commands with tiny budgets and
models, so that none of them can rot unseen: the quick figures mean nothing, the exit codes do. Each
command exits non-zero when a step had an error or no success; this runner exits 1 when any did.

    python -m bench                  # all full commands (hours on 2 CPU cores; a quiet machine)
    python -m bench serve load       # two of them
    python -m bench --quick          # every command, tiny (about a minute or two)
    python -m bench --list           # the table below, as commands

JSON goes to ``--out`` (default bench/results, quick: bench/results/quick), one file per figure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Figure:
    """One README figure: its name (``make bench-NAME``), the README section it fills, the full command
    (the module and its arguments, as README quotes it), the quick command, and how it is told where
    its JSON goes. ``quick_as``: another figure whose quick command also runs this one's code (the
    same module, with the union of both figures' flags), so quick runs start one server, not two."""

    name: str
    section: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    out_flag: str = "--out"
    quick_as: str = ""

    def command(self, quick: bool, out_dir: Path) -> list[str]:
        args = list(self.quick if quick else self.full)
        return [sys.executable, "-m", *args, self.out_flag, str(out_dir / f"{self.name}.json")]

    def quoted(self) -> str:
        """The full command as README writes it."""
        return "python -m " + " ".join(self.full)


FIGURES = (
    Figure("engine", "Engine: Grad-CAM vs plain forward",
           ("bench.engine", "--budget", "10"),
           ("bench.engine", "--models", "demo", "--batches", "2", "--modes", "graph", "--budget", "0.1")),
    Figure("serve", "Serving: gRPC at saturation vs the in-process engine",
           ("bench.serve", "--models", "mobilenetv2,resnet50,demo", "--duration", "20"),
           ("bench.serve", "--models", "demo", "--duration", "1", "--warmup", "0.5", "--max-batch-size", "4",
            "--images", "8")),
    Figure("protocols", "Open Inference Protocol vs camserve.v1, same server",
           ("bench.load", "--protocols", "camserve,oip", "--rounds", "5", "--concurrency", "16,64",
            "--duration", "10", "--warmup", "3", "--no-baseline", "--workers", "cpu:1"),
           (), "--json", quick_as="load"),
    Figure("frontend", "Front end: images/s and CPU per image by `--frontends`",
           ("bench.frontend", "--frontends", "1,2", "--duration", "10"),
           ("bench.frontend", "--frontends", "2", "--cases", "png64,batch8", "--duration", "1.5",
            "--warmup", "0.5", "--callers", "4")),
    Figure("load", "Served vs a per-request tf-keras-vis loop, and latency by concurrency",
           ("bench.load", "--models", "mobilenetv2,resnet50", "--concurrency", "1,4,16,64",
            "--duration", "10",
            "--baseline-concurrency", "1,4", "--baseline-duration", "10"),
           ("bench.load", "--models", "demo", "--protocols", "camserve,oip", "--rounds", "1",
            "--concurrency", "1", "--duration", "1", "--warmup", "0.3", "--baseline-concurrency", "1",
            "--baseline-duration", "1", "--workers", "cpu:1", "--max-batch-size", "4", "--image-count", "4",
            "--quiet"),
           "--json"),
    Figure("localization", "Localisation on the demo sets",
           ("bench.engine.localization",),
           ("bench.engine.localization", "--samples", "16", "--batch-size", "4")),
    Figure("micro", "Front-end costs: JPEG decode and the request-parsing interceptor",
           ("bench.micro",),
           ("bench.micro", "--quick")),
)
BY_NAME = {f.name: f for f in FIGURES}


def quick_runs(figures: list[Figure]) -> list[Figure]:
    """The figures whose quick commands cover ``figures``, each once, in order."""
    owners: list[Figure] = []
    for fig in figures:
        owner = BY_NAME[fig.quick_as] if fig.quick_as else fig
        if owner not in owners:
            owners.append(owner)
    return owners


def run(figures: list[Figure], quick: bool, out_dir: Path) -> int:
    """Run each figure's command in turn (a subprocess each); 1 when any exited non-zero."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    results = []
    for fig in figures:
        cmd = fig.command(quick, out_dir)
        print(f"\n== bench-{fig.name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(cmd, cwd=ROOT, env=env)
        results.append((fig.name, rc, time.monotonic() - t0))
    print("\n" + "\n".join(f"bench-{name:<13} {'ok' if rc == 0 else f'FAILED (exit {rc})':<16} {s:6.1f} s"
                           for name, rc, s in results))
    return 1 if any(rc for _, rc, _ in results) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"figures to make (default all): "
                   f"{', '.join(BY_NAME)}")
    p.add_argument("--quick", action="store_true", help="tiny budgets and models: checks the commands")
    p.add_argument("--out", type=Path, help="JSON folder (default bench/results, quick: bench/results/quick)")
    p.add_argument("--list", action="store_true", help="print each figure's make target and command")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in BY_NAME]
    if unknown:
        p.error(f"unknown figure {', '.join(unknown)}; one of {', '.join(BY_NAME)}")
    figures = [BY_NAME[n] for n in args.names] or list(FIGURES)
    if args.list:
        for fig in figures:
            print(f"make bench-{fig.name:<13} {fig.quoted()}   # {fig.section}")
        return 0
    out = args.out or ROOT / "bench" / "results" / ("quick" if args.quick else "")
    return run(quick_runs(figures) if args.quick else figures, args.quick, out)


if __name__ == "__main__":
    sys.exit(main())
