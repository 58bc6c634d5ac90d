"""Worker placement: --workers parsing, GPU discovery and per-GPU pinning with a fake discovery."""

from __future__ import annotations

import subprocess

import pytest
from camserve.scheduling.placement import WorkerPlan, WorkerSlot, discover_gpus


@pytest.mark.parametrize(
    ("text", "plan"),
    [
        ("auto", WorkerPlan("auto")),
        (" AUTO ", WorkerPlan("auto")),
        ("cpu:3", WorkerPlan("cpu", count=3)),
        ("cpu", WorkerPlan("cpu", count=1)),
        ("gpu", WorkerPlan("gpu")),
        ("gpu:0,2", WorkerPlan("gpu", count=2, devices=(0, 2))),
        ("gpu:1", WorkerPlan("gpu", count=1, devices=(1,))),
    ],
)
def test_parse_accepts(text: str, plan: WorkerPlan) -> None:
    assert WorkerPlan.parse(text) == plan
    assert WorkerPlan.parse(str(plan)) == plan


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("cpu:0", "1..64"),
        ("cpu:x", "1..64"),
        ("cpu:65", "1..64"),
        ("gpu:", "ordinals"),
        ("gpu:a", "ordinals"),
        ("gpu:0,0", "twice"),
        ("tpu", "expected 'auto', 'cpu:N', 'gpu' or 'gpu:0,1'"),
        ("", "expected"),
    ],
)
def test_parse_rejects_with_the_accepted_forms(text: str, words: str) -> None:
    with pytest.raises(ValueError, match="--workers") as info:
        WorkerPlan.parse(text)
    assert words in str(info.value)


def test_auto_without_gpu_is_one_cpu_worker_with_every_core() -> None:
    slots = WorkerPlan.parse("auto").slots(discover=lambda: [], cpu_count=8)
    assert slots == [WorkerSlot(0, "cpu", {"CUDA_VISIBLE_DEVICES": ""}, threads=8)]


def test_auto_with_gpus_is_one_worker_per_gpu_each_pinned_to_its_own() -> None:
    slots = WorkerPlan.parse("auto").slots(discover=lambda: ["0", "1", "2", "3"], cpu_count=16)
    assert [s.env for s in slots] == [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(4)]
    assert [s.device for s in slots] == ["gpu:0", "gpu:1", "gpu:2", "gpu:3"]
    assert [s.index for s in slots] == [0, 1, 2, 3]
    assert all(s.threads is None for s in slots)


def test_gpu_list_picks_ordinals_among_the_visible_devices() -> None:
    visible = ["2", "3", "GPU-8f1c"]  # e.g. CUDA_VISIBLE_DEVICES=2,3,GPU-8f1c
    slots = WorkerPlan.parse("gpu:1,2").slots(discover=lambda: visible)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["3", "GPU-8f1c"]
    assert [s.index for s in slots] == [0, 1]


def test_gpu_errors_say_what_exists() -> None:
    with pytest.raises(ValueError, match=r"no GPU found.*cpu:N"):
        WorkerPlan.parse("gpu").slots(discover=lambda: [])
    with pytest.raises(ValueError, match=r"ordinal 2 does not exist \(2 visible: 0, 1\)"):
        WorkerPlan.parse("gpu:0,2").slots(discover=lambda: ["0", "1"])


def test_cpu_workers_split_the_cores_and_see_no_gpu() -> None:
    slots = WorkerPlan.parse("cpu:3").slots(discover=lambda: ["0"], cpu_count=8)
    assert [s.threads for s in slots] == [2, 2, 2]
    assert all(s.env == {"CUDA_VISIBLE_DEVICES": ""} for s in slots)
    assert WorkerPlan.parse("cpu:4").slots(cpu_count=2)[0].threads == 1


@pytest.mark.parametrize(
    ("value", "ids"),
    [("0,1", ["0", "1"]), ("", []), ("-1", []), ("1,-1,2", ["1"]), (" 3 , GPU-ab ", ["3", "GPU-ab"])],
)
def test_discovery_honours_cuda_visible_devices_as_cuda_does(value: str, ids: list[str]) -> None:
    def never(*a: object, **k: object) -> subprocess.CompletedProcess[str]:
        raise AssertionError("nvidia-smi must not run when CUDA_VISIBLE_DEVICES is set")

    assert (
        discover_gpus({"CUDA_VISIBLE_DEVICES": value}, run=never, which=lambda _: "/usr/bin/nvidia-smi")
        == ids
    )


def test_discovery_parses_nvidia_smi_list() -> None:
    out = (
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1111)\n"
        "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2222)\n"
        "  MIG 1g.10gb     Device  0: (UUID: MIG-3333)\n"
    )

    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        assert cmd == ["/x/nvidia-smi", "-L"]
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    assert discover_gpus({}, run=fake_run, which=lambda _: "/x/nvidia-smi") == ["0", "1"]


def test_discovery_without_nvidia_smi_or_when_it_fails_finds_none() -> None:
    assert discover_gpus({}, which=lambda _: None) == []

    def failing(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 9, stdout="", stderr="NVIDIA-SMI has failed")

    def crashing(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(cmd, 15)

    assert discover_gpus({}, run=failing, which=lambda _: "/x/nvidia-smi") == []
    assert discover_gpus({}, run=crashing, which=lambda _: "/x/nvidia-smi") == []
