"""Where the server's CPU goes per image: ``bench/frontend``'s load, with each server process profiled.

Runs one ``bench/frontend`` case (default ``jpeg224``: 64 single-image 224x224 JPEG callers) against a
real server with the stand-in model step, and while the load runs samples every server process with
Linux ``perf`` (on-CPU samples only, so idle waits never count). It prints each process's CPU-ms per
image and splits it by the code that ran:

* ``JPEG decode`` (libjpeg-turbo inside simplejpeg), ``gRPC core`` (grpc's C core and its Cython
  layer), ``protobuf`` (upb), ``NumPy``, ``pickle``;
* ``kernel`` (system calls: socket reads and writes, wake-ups, the context switches of a loaded machine);
* ``libc`` (memcpy, malloc) and ``Python`` (the interpreter running camserve, asyncio and gRPC's
  Python-level callbacks; with ``--py-spy``, that share is split by function too).

    python -m bench.frontend.profile                  # 1 front end, jpeg224, 8 s of samples
    python -m bench.frontend.profile --frontends 2 --py-spy

Needs ``perf`` (linux-tools) with permission to trace this user's processes; ``--py-spy`` needs the
``py-spy`` command. Neither is a camserve dependency: this is a tool for the people tuning it.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import start_server
from bench.frontend.__main__ import _role, measure, process_cpu, write_repository

#: Shared-object name fragment -> what it does (first match wins; everything else is "other").
#: The load's warm-up before measuring (seconds); sampling starts half a second after it.
WARMUP_S = 3.0

COMPONENTS = (
    ("_jpeg.", "JPEG decode"), ("cygrpc", "gRPC core"), ("_message", "protobuf"),
    ("kernel", "kernel"), ("libpython", "Python"), ("_multiarray", "NumPy"), ("_pickle", "pickle"),
    ("libc.so", "libc"), ("_asyncio", "Python"), ("cv2", "OpenCV"),
)


def component(dso: str) -> str:
    return next((name for frag, name in COMPONENTS if frag in dso), "other")


def perf_split(path: Path) -> dict[str, float]:
    """Share of on-CPU samples per component, from ``perf report --sort dso``."""
    out = subprocess.run(["perf", "report", "-i", str(path), "--no-children", "--sort", "dso", "--stdio",
                          "-g", "none"], capture_output=True, text=True, check=False).stdout
    split: dict[str, float] = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
        if m:
            split[component(m.group(2))] += float(m.group(1)) / 100
    return dict(split)


def spy_split(path: Path, top: int) -> list[tuple[str, float]]:
    """Inclusive share of GIL-holding samples per camserve function, from py-spy's raw output."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        total += int(n)
        frames = {re.sub(r":\d+\)$", ")", f) for f in stack.split(";")}
        for f in frames:
            if "camserve/" in f or "prometheus_client" in f:
                inclusive[f] += int(n)
    return [(f, c / max(1, total)) for f, c in inclusive.most_common(top)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.frontend.profile",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--frontends", type=int, default=1)
    ap.add_argument("--case", default="jpeg224", help="png64, jpeg224 or batch8")
    ap.add_argument("--seconds", type=float, default=8.0, help="sampling time (the load runs 4 s longer)")
    ap.add_argument("--py-spy", action="store_true", help="also split Python time by function (py-spy)")
    ap.add_argument("--top", type=int, default=25, help="functions listed per process with --py-spy")
    args = ap.parse_args(argv)
    if shutil.which("perf") is None:
        print("bench.frontend.profile: needs Linux perf (linux-tools) on PATH", file=sys.stderr)
        return 2
    if args.py_spy and shutil.which("py-spy") is None:
        print("bench.frontend.profile: --py-spy needs the py-spy command on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        repo = write_repository(out / "repository")
        with start_server("--frontends", str(args.frontends), "--runner",
                          "bench.frontend.standin:StandInRunner", repository=repo, workers="cpu:1",
                          env={"CAMSERVE_STANDIN_STEP_MS": "2"}) as server:
            roles = {p: ("supervisor" if p == server.pid else _role(p)) for p in process_cpu(server.pid)}
            roles = {p: r for p, r in roles.items() if r in ("supervisor", "front ends", "workers")}
            samplers: list[tuple[int, str, Path, subprocess.Popen[bytes]]] = []

            def sample() -> None:
                time.sleep(WARMUP_S + 0.5)  # a timed window: the load's warm-up is over
                for pid in roles:
                    data = out / f"{pid}.perf"
                    samplers.append((pid, "perf", data, subprocess.Popen(
                        ["perf", "record", "-F", "499", "-p", str(pid), "-o", str(data), "--", "sleep",
                         str(args.seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
                    if args.py_spy:
                        raw = out / f"{pid}.spy"
                        samplers.append((pid, "spy", raw, subprocess.Popen(
                            ["py-spy", "record", "-p", str(pid), "-d", str(int(args.seconds)), "-r", "200",
                             "-f", "raw", "-o", str(raw), "--nonblocking", "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))

            thread = threading.Thread(target=sample)
            thread.start()
            row = measure(server, args.case, 2, 64, WARMUP_S, args.seconds + 4.0)
            thread.join()
            for *_, proc in samplers:
                proc.wait()
            print(f"{args.case}, {args.frontends} front end(s): {row['images_per_s']:.0f} img/s, server CPU "
                  f"{row['cpu_ms_per_image']:.3f} ms/img {row['cpu_ms_per_image_by_process']}")
            per_role = row["cpu_ms_per_image_by_process"]
            for pid, kind, path, _ in samplers:
                role = roles[pid]
                if not path.exists() or path.stat().st_size == 0:
                    print(f"  {role} {pid}: no {kind} samples (permission? see perf_event_paranoid)")
                    continue
                share = 1.0 / sum(1 for r in roles.values() if r == role)  # several front ends share it
                if kind == "perf":
                    split = perf_split(path)
                    ms = per_role.get(role, 0.0) * share
                    ranked = sorted(split.items(), key=lambda kv: -kv[1])
                    parts = ", ".join(f"{k} {v * ms:.3f}" for k, v in ranked if v >= 0.005)
                    print(f"  {role} {pid}: ~{ms:.3f} CPU-ms/img = {parts}")
                else:
                    print(f"  {role} {pid}, share of GIL-holding samples (inclusive):")
                    for f, v in spy_split(path, args.top):
                        print(f"      {100 * v:5.1f}%  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
