"""The `camserve` client commands and the load generator, against the scripted loopback server."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from camserve_client.tools.cli import main
from camserve_client.tools.loadgen import LoadConfig, run_load
from camserve_client.tools.loadreport import (
    Sample,
    Window,
    format_table,
    step_problems,
    summarize,
    write_plot,
)
from camserve_client.tools.testimages import encode_png
from client_fake import HEATMAP, FakeServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake():
    with FakeServer() as server:
        yield server


@pytest.fixture
def pngs(tmp_path: Path) -> list[Path]:
    paths = []
    for i, name in enumerate(["cat", "dog", "bird"]):
        p = tmp_path / "in" / f"{name}.png"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(encode_png(np.full((9, 9, 3), 40 * i, np.uint8)))
        paths.append(p)
    return paths


def test_explain_one_image_writes_overlay_and_heatmap(fake, pngs, tmp_path, capsys) -> None:
    out = tmp_path / "o.jpg"
    rc = main(["explain", str(pngs[0]), "--target", fake.target, "--class", "2", "--overlay", str(out),
               "--heatmap", str(tmp_path / "h.npy"), "--method", "layercam"])
    assert rc == 0
    req = fake.service.requests[0]
    assert req.class_index == 2 and req.image.encoded == pngs[0].read_bytes() and req.method == 4
    assert req.output.overlay == 2  # JPEG chosen from the .jpg suffix
    assert out.read_bytes() == b"OVERLAY2"
    assert np.array_equal(np.load(tmp_path / "h.npy"), HEATMAP)
    assert "class 2 'class2'" in capsys.readouterr().out


def test_explain_many_images_names_outputs_by_stem(fake, pngs, tmp_path, capsys) -> None:
    rc = main(["explain", *map(str, pngs), "--target", fake.target, "--overlay", str(tmp_path / "ov") + "/",
               "--heatmap", str(tmp_path / "maps.npy"), "--top-k", "2", "--quiet"])
    assert rc == 0
    for stem in ("cat", "dog", "bird"):
        assert (tmp_path / "ov" / f"{stem}_top1.png").read_bytes() == b"OVERLAY1"
        assert (tmp_path / "ov" / f"{stem}_top2.png").exists()
        stacked = np.load(tmp_path / f"maps_{stem}.npy")
        assert stacked.shape == (2, 4, 5)
    assert fake.service.attempts["Explain"] == 3
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == [str(p) for p in pngs]  # input order


def test_explain_folder_and_json(fake, pngs, capsys) -> None:
    assert main(["explain", str(pngs[0].parent), "--target", fake.target, "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(Path(r["image"]).name for r in rows) == ["bird.png", "cat.png", "dog.png"]
    assert rows[0]["timing_ms"]["batch_size"] == 3


def test_explain_asks_only_for_what_it_writes(fake, pngs, tmp_path) -> None:
    target = ["--target", fake.target]
    assert main(["explain", str(pngs[0]), *target]) == 0
    assert main(["explain", str(pngs[0]), *target, "--overlay", str(tmp_path / "o.png")]) == 0
    assert main(["explain", str(pngs[0]), *target, "--heatmap", str(tmp_path / "h.npy")]) == 0
    assert main(["explain", str(pngs[0]), *target, "--heatmap", str(tmp_path / "h.npy"),
                 "--size", "input"]) == 0
    bare, overlay, tensor, at_input = (r.output for r in fake.service.requests)
    assert bare.omit_tensor and not bare.overlay and not bare.heatmap_png
    assert overlay.omit_tensor and overlay.overlay == 1 and overlay.size == 3  # PNG at ORIGINAL only
    # The float32 map at the original size travels at the conv grid (resized by the SDK).
    assert not tensor.omit_tensor and tensor.size == 3 and tensor.tensor_size == 1 and not tensor.overlay
    assert at_input.size == 2 and at_input.tensor_size == 0


def test_a_reply_over_the_message_limit_names_the_options_that_fit(fake, pngs, tmp_path, capsys) -> None:
    fake.service.script.always = (grpc.StatusCode.RESOURCE_EXHAUSTED,  # the server's words (replies.py)
                                  "the reply would be 40000000 bytes, over the server's 16777216-byte "
                                  "message limit; ask for smaller heatmaps, omit_tensor, JPEG overlays")
    rc = main(["explain", str(pngs[0]), "--target", fake.target, "--retries", "0", "--top-k", "3",
               "--overlay", str(tmp_path / "o.png"), "--heatmap-png", str(tmp_path / "h.png")])
    assert rc == 1
    err = capsys.readouterr().err
    for option in ("--overlay NAME.jpg", "--size input", "--top-k 1", "no --heatmap-png"):
        assert option in err, err
    assert "omit_tensor" not in err  # the CLI's words, not the wire's
    fake.service.script.always = (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue of model 'fake' is full")
    assert main(["explain", str(pngs[0]), "--target", fake.target, "--retries", "0"]) == 1
    err = capsys.readouterr().err
    assert "queue of model 'fake' is full" in err and "message limit" not in err


def test_cli_errors_are_one_line_and_non_zero(fake, pngs, tmp_path, capsys) -> None:
    assert main(["explain", str(tmp_path / "missing.png"), "--target", fake.target]) == 2
    assert "image not found" in capsys.readouterr().err
    assert main(["explain", str(pngs[0]), "--target", fake.target, "--method", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err
    fake.service.script.always = (grpc.StatusCode.INVALID_ARGUMENT, "image is not decodable")
    assert main(["explain", *map(str, pngs), "--target", fake.target, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT: image is not decodable" in err and "3 of 3 image(s) failed" in err
    assert "Traceback" not in err
    with FakeServer() as dead:
        target = dead.target
    assert main(["explain", str(pngs[0]), "--target", target, "--retries", "0"]) == 3
    assert main(["models", "--target", target, "--retries", "0"]) == 3
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["models", "--target", fake.target, "--token-file", str(tmp_path / "none")]) == 2


def test_models_and_health_commands(fake, capsys) -> None:
    assert main(["models", "--target", fake.target]) == 0
    out = capsys.readouterr().out
    assert "fake" in out and "32x32x3" in out
    assert main(["models", "fake", "--target", fake.target]) == 0
    assert "conv" in capsys.readouterr().out
    assert main(["models", "--json", "--target", fake.target]) == 0
    assert json.loads(capsys.readouterr().out)[0]["num_classes"] == 10
    assert main(["health", "--target", fake.target]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert main(["models", "nope", "--target", fake.target]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_loadgen_closed_and_open_loop(fake, tmp_path) -> None:
    fake.service.script.only = {"Explain"}
    fake.service.script.gather = 1
    cfg = LoadConfig(target=fake.target, concurrency=[1], duration_s=0.5, warmup_s=0.1, images="noise",
                     image_count=4, quiet=True)
    (c1,) = run_load(cfg)["steps"]
    assert fake.service.max_in_flight == 1  # one closed-loop caller never has two calls out
    # Four callers: every call is held until four are in the server at once, so only a generator that
    # really keeps four in flight gets answers before the hold gives up (2 s).
    fake.service.script.gather, fake.service.max_in_flight = 4, 0
    cfg.concurrency = [4]
    (c4,) = run_load(cfg)["steps"]
    assert fake.service.max_in_flight == 4
    fake.service.script.gather = 0
    cfg.concurrency, cfg.rates = [], [40.0]
    report = run_load(cfg)
    (r40,) = report["steps"]
    assert c1["mode"] == "closed" and c1["concurrency"] == 1 and c4["concurrency"] == 4
    assert r40["mode"] == "open" and r40["rate"] == 40.0
    for step in (c1, c4, r40):
        assert step["requests_ok"] > 0 and step["errors"] == {} and step["duration_s"] == pytest.approx(0.5)
        assert step["throughput_rps"] == pytest.approx(step["requests_ok"] / 0.5)
    assert c1["latency_ms"]["p99"] >= c1["latency_ms"]["p50"] > 0
    assert c1["server_queue_ms"]["mean"] == 1.5 and c1["server_compute_ms"]["mean"] == 2.5
    assert c1["batch_size_mean"] == 3
    # Every counted call reached the server (warm-up calls and calls after the window are not counted).
    assert c1["requests_ok"] + c4["requests_ok"] + r40["requests_ok"] <= fake.service.attempts["Explain"]
    assert report["model"]["name"] == "fake" and "noise" in report["images"]
    assert "closed" in format_table([c1, c4, r40]) and "open" in format_table([c1, c4, r40])
    assert write_plot({"camserve": [c1, c4, r40]}, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_loadgen_shares_callers_out_over_its_connections(fake) -> None:
    # A server with several front-end processes gives each TCP connection to one of them: the callers
    # must really use `connections` connections (channels alike in one process would share one).
    fake.service.script.only = {"Explain"}
    cfg = LoadConfig(target=fake.target, concurrency=[6], duration_s=0.4, warmup_s=0.1, images="noise",
                     image_count=4, quiet=True, connections=3)
    (step,) = run_load(cfg)["steps"]
    assert step["requests_ok"] > 0 and step["errors"] == {}
    assert len(fake.service.peers) == 3
    fake.service.peers.clear()
    cfg.connections = 1
    run_load(cfg)
    assert len(fake.service.peers) == 1


def test_one_counting_rule_a_call_counts_when_it_completes_inside_the_window() -> None:
    """perf_analyzer's rule: completion time inside [start, end], whenever the call started."""
    window = Window(10.0, 12.0)
    samples = [Sample(9.0, 1500.0, "OK"),    # started in the warm-up, completed inside: counts
               Sample(10.5, 100.0, "OK"),    # inside: counts
               Sample(11.8, 100.0, "UNAVAILABLE"),  # a failure inside counts as a failure
               Sample(11.9, 300.0, "OK"),    # still in flight at the end: counts in no window
               Sample(9.0, 500.0, "OK"),     # completed before the window opened
               Sample(12.0, 0.0, "CLIENT_OVERLOAD")]  # refused at the last instant: inside
    step = summarize(samples, window, 8, "closed", 2)
    assert step["requests_ok"] == 2 and step["errors"] == {"CLIENT_OVERLOAD": 1, "UNAVAILABLE": 1}
    assert step["duration_s"] == 2.0 and step["throughput_img_s"] == 8.0 and step["throughput_rps"] == 1.0
    assert step["latency_ms"]["max"] == 1500.0
    assert [window.holds(s) for s in samples] == [True, True, True, False, False, True]


def test_a_step_with_errors_or_no_success_is_a_problem() -> None:
    window = Window(0.0, 1.0)
    good = summarize([Sample(0.5, 10.0, "OK")], window, 1, "closed", 4)
    failed = summarize([Sample(0.5, 10.0, "OK"), Sample(0.6, 10.0, "RESOURCE_EXHAUSTED")], window, 1,
                       "open", 20.0)
    empty = summarize([Sample(0.9, 500.0, "OK")], window, 1, "closed", 64)
    assert step_problems([good]) == []
    assert step_problems([good, failed, empty], "demo") == [
        "demo rate=20: 1 of 2 calls failed (RESOURCE_EXHAUSTED=1)",
        "demo c=64: no call succeeded (none completed in the window)"]


def test_loadgen_counts_errors_by_code(fake) -> None:
    fake.service.script.always = (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
    fake.service.script.only = {"ExplainBatch"}
    report = run_load(LoadConfig(target=fake.target, concurrency=[2], duration_s=0.5, warmup_s=0,
                                 images="noise", image_count=2, quiet=True, payload="raw", batch_per_call=2))
    (step,) = report["steps"]
    assert step["requests_ok"] == 0 and step["errors"]["RESOURCE_EXHAUSTED"] == step["requests_failed"] > 0
    assert fake.service.attempts["ExplainBatch"] >= step["requests_failed"]  # never retried by the generator


def test_summarize_percentiles_match_numpy() -> None:
    lat = np.random.default_rng(0).exponential(10, 1000)
    samples = [Sample(0.0, float(v), "OK", 1.0, 2.0, 3.0, 4) for v in lat] + [Sample(0, 1, "UNAVAILABLE")] * 3
    s = summarize(samples, Window(0.0, 2.0), 8, "closed", 16)
    assert s["throughput_rps"] == 500 and s["throughput_img_s"] == 4000
    for p in (50, 90, 95, 99):
        assert s["latency_ms"][f"p{p}"] == pytest.approx(np.percentile(lat, p))
    assert s["errors"] == {"UNAVAILABLE": 3} and s["client_overhead_ms_mean"] == pytest.approx(lat.mean() - 3)


def test_bench_command_writes_json_and_plot(fake, tmp_path, capsys) -> None:
    rc = main(["bench", "--target", fake.target, "--concurrency", "2", "--duration", "0.5", "--warmup", "0",
               "--images", "noise", "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png"),
               "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "img/s" in out and "p99" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["steps"][0]["concurrency"] == 2
    assert (tmp_path / "r.png").exists()
    assert main(["bench", "--target", fake.target, "--images", str(tmp_path / "nodir")]) == 2
    fake.service.script.always = (grpc.StatusCode.UNAVAILABLE, "worker lost")
    fake.service.script.only = {"Explain"}
    capsys.readouterr()
    assert main(["bench", "--target", fake.target, "--concurrency", "1", "--duration", "0.2", "--warmup", "0",
                 "--images", "noise", "--quiet", "--retries", "0"]) == 1
    assert "camserve bench: c=1: no call succeeded (UNAVAILABLE=" in capsys.readouterr().err


def test_progress_bar_is_tqdm_on_a_terminal_and_optional(monkeypatch, capsys) -> None:
    import io
    import sys

    from camserve_client.tools import progress
    from tqdm import tqdm

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with progress.bar(3, "explain", unit="img") as b:
        assert isinstance(b, tqdm)
        for _ in range(3):
            b.update()
    assert "explain" in term.getvalue() and "3/3" in term.getvalue()
    assert isinstance(progress.bar(3, "explain", enabled=False), progress.NoBar)  # --quiet
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the light install: no tqdm
    monkeypatch.setattr(progress, "_hinted", False)
    for _ in range(2):
        b = progress.bar(5.0, "closed c=1", unit="s")
        assert isinstance(b, progress.NoBar)
        b.update(2.5)
        b.close()
    assert term.getvalue().count(progress.INSTALL_HINT) == 1  # said once
