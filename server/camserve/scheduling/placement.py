"""Worker placement: where each worker runs (no TF, no gRPC).

:class:`WorkerPlan` (``auto`` | ``cpu:N`` | ``gpu`` | ``gpu:0,1``) turns into :class:`WorkerSlot` s
using an injectable GPU discovery (:func:`discover_gpus`), so the per-GPU logic is tested on
machines without a GPU. Each GPU worker sees exactly one device (``CUDA_VISIBLE_DEVICES`` pinned);
CPU workers see none (``CUDA_VISIBLE_DEVICES=""``) and split the cores between them. The pool
(``camserve.scheduling.pool``) starts one process per slot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MAX_CPU_WORKERS", "WorkerPlan", "WorkerSlot", "discover_gpus"]

MAX_CPU_WORKERS = 64


def discover_gpus(
    env: Mapping[str, str] | None = None,
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    which: Callable[[str], str | None] = shutil.which,
) -> list[str]:
    """Device ids this process may use, as ``CUDA_VISIBLE_DEVICES`` entries.

    ``CUDA_VISIBLE_DEVICES``, when set, is honoured as CUDA does (entries up to the first
    invalid one such as ``-1``; empty = no GPU). Otherwise ``nvidia-smi -L`` is asked; no
    ``nvidia-smi`` or an error means no GPU.
    """
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids: list[str] = []
        for entry in (e.strip() for e in visible.split(",")):
            if not entry or entry.startswith("-"):
                break
            ids.append(entry)
        return ids
    exe = which("nvidia-smi")
    if not exe:
        return []
    try:
        proc = run([exe, "-L"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []
    return re.findall(r"^GPU (\d+):", proc.stdout or "", flags=re.MULTILINE)


@dataclass(frozen=True)
class WorkerSlot:
    """Where one worker runs: its index, device label, environment and CPU thread budget."""

    index: int
    device: str
    env: dict[str, str]
    threads: int | None = None


@dataclass(frozen=True)
class WorkerPlan:
    """How many workers and where: parsed from ``auto`` | ``cpu:N`` | ``gpu`` | ``gpu:0,1``.

    ``auto`` = one worker per visible GPU, or one CPU worker using every core when there is no
    GPU (one TF process with all cores beats several sharing them for a compiled batch).
    ``gpu:0,1`` picks ordinals among the discovered devices (with ``CUDA_VISIBLE_DEVICES=2,3``,
    ``gpu:1`` is device ``3``).
    """

    kind: str = "auto"
    count: int = 1
    devices: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> WorkerPlan:
        """Parse the ``--workers`` value; ValueError with the accepted forms otherwise."""
        forms = "expected 'auto', 'cpu:N', 'gpu' or 'gpu:0,1'"
        t = (text or "").strip().lower()
        if t == "auto":
            return cls("auto")
        if t == "gpu":
            return cls("gpu")
        if t.startswith("cpu:"):
            n = t[4:]
            if not n.isdigit() or not 1 <= int(n) <= MAX_CPU_WORKERS:
                raise ValueError(f"--workers {text!r}: N in cpu:N must be an integer 1..{MAX_CPU_WORKERS}")
            return cls("cpu", count=int(n))
        if t == "cpu":
            return cls("cpu", count=1)
        if t.startswith("gpu:"):
            parts = [p.strip() for p in t[4:].split(",")]
            if not parts or not all(p.isdigit() for p in parts):
                raise ValueError(f"--workers {text!r}: gpu:LIST takes GPU ordinals like gpu:0,1")
            devices = tuple(int(p) for p in parts)
            if len(set(devices)) != len(devices):
                raise ValueError(f"--workers {text!r}: a GPU is listed twice")
            return cls("gpu", count=len(devices), devices=devices)
        raise ValueError(f"--workers {text!r}: {forms}")

    def __str__(self) -> str:
        if self.kind == "cpu":
            return f"cpu:{self.count}"
        if self.kind == "gpu" and self.devices is not None:
            return "gpu:" + ",".join(map(str, self.devices))
        return self.kind

    def slots(
        self, discover: Callable[[], Sequence[str]] = discover_gpus, cpu_count: int | None = None
    ) -> list[WorkerSlot]:
        """Resolve the plan against the machine (GPU ids from ``discover``, cores from ``cpu_count``)."""
        cores = cpu_count or _available_cores()
        if self.kind == "cpu":
            return self._cpu_slots(self.count, cores)
        gpus = list(discover())
        if self.kind == "auto" and not gpus:
            return self._cpu_slots(1, cores)
        if not gpus:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
            raise ValueError(
                f"--workers {self}: no GPU found (CUDA_VISIBLE_DEVICES={visible!r}, nvidia-smi lists none); "
                "use --workers cpu:N"
            )
        chosen = list(range(len(gpus))) if self.devices is None else list(self.devices)
        for ordinal in chosen:
            if ordinal >= len(gpus):
                raise ValueError(
                    f"--workers {self}: GPU ordinal {ordinal} does not exist "
                    f"({len(gpus)} visible: {', '.join(gpus)})"
                )
        return [
            WorkerSlot(index=i, device=f"gpu:{gpus[o]}", env={"CUDA_VISIBLE_DEVICES": gpus[o]}, threads=None)
            for i, o in enumerate(chosen)
        ]

    @staticmethod
    def _cpu_slots(n: int, cores: int) -> list[WorkerSlot]:
        threads = max(1, cores // n)
        return [
            WorkerSlot(index=i, device="cpu", env={"CUDA_VISIBLE_DEVICES": ""}, threads=threads)
            for i in range(n)
        ]


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
