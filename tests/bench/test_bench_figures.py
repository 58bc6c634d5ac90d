"""Every README figure names the `make bench-NAME` target that re-makes it, with the exact command;
the Makefile has a target per figure; the load tools exit non-zero when a side measured nothing."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "tests" / "client"):  # bench/ and the scripted loopback server
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from client_fake import FakeServer  # noqa: E402

from bench.__main__ import BY_NAME, FIGURES  # noqa: E402

DOCS = ("README.md", "RELIABILITY.md", "ARCHITECTURE.md")


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_readme_names_each_figure_target_with_its_exact_command() -> None:
    readme = _flat((ROOT / "README.md").read_text())
    for fig in FIGURES:
        assert f"make bench-{fig.name}" in readme, fig.name
        assert f"`{fig.quoted()}`" in readme, f"README does not quote {fig.quoted()!r}"


def test_every_bench_target_the_docs_name_exists_in_the_makefile() -> None:
    makefile = (ROOT / "Makefile").read_text()
    (figures,) = re.findall(r"^BENCH_FIGURES := (.+)$", makefile, re.M)
    assert figures.split() == list(BY_NAME)
    named = {m for doc in DOCS for m in re.findall(r"make (bench(?:-[a-z]+)?)", (ROOT / doc).read_text())}
    assert named, "the docs name no make bench target"
    targets = {"bench", "bench-quick", "bench-gpu"} | {f"bench-{n}" for n in BY_NAME}
    assert named <= targets, named - targets


def test_no_ratio_from_a_side_that_measured_nothing() -> None:
    from bench.load.__main__ import compare, ratio_of

    failed = {"concurrency": 1, "throughput_img_s": 0.0, "latency_ms": {"p99": math.nan}}
    ok = {"concurrency": 1, "throughput_img_s": 50.0, "latency_ms": {"p99": 20.0}}
    (row,) = compare([ok], [failed])
    assert math.isnan(row["ratio"]) and math.isnan(ratio_of(50.0, 0.0)) and ratio_of(50.0, 5.0) == 10.0


def test_bench_load_exits_non_zero_when_no_call_succeeds(tmp_path: Path, capsys) -> None:
    from bench.load.__main__ import main

    with FakeServer(name="demo") as fake:
        fake.service.script.always = (grpc.StatusCode.UNAVAILABLE, "worker lost")
        fake.service.script.only = {"Explain"}
        rc = main(["--target", fake.target, "--models", "demo", "--no-baseline", "--concurrency", "1",
                   "--duration", "0.3", "--warmup", "0", "--image-count", "2", "--quiet",
                   "--out", str(tmp_path), "--json", str(tmp_path / "load.json")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "bench.load: demo camserve c=1: no call succeeded (UNAVAILABLE=" in err
    assert (tmp_path / "load.json").exists()


@pytest.mark.parametrize("protocol", ["camserve"])
def test_bench_serve_counts_through_the_load_generator(protocol: str) -> None:
    """bench.serve's closed loop is the load generator's (one counting rule): failures are counted
    by code and make a step problem."""
    from camserve_client.tools.loadreport import step_problems
    from camserve_proto import explain_pb2 as pb

    from bench.serve.__main__ import closed_loop

    with FakeServer(name="demo") as fake:
        fake.service.script.always = (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        fake.service.script.only = {"Explain"}
        payload = pb.ExplainRequest(model="demo", image=pb.Image(encoded=b"x")).SerializeToString()
        served = closed_loop(fake.target, "demo", [payload], 2, 0.0, 0.3)
    assert served["calls"] == 0 and served["errors"]["RESOURCE_EXHAUSTED"] > 0
    assert step_problems([served["step"]], "demo")[0].startswith("demo c=2: no call succeeded")
