"""The benchmark harness: interleaving, statistics, parity, reports; and `backdrop bench` end to end on a tiny UNet."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from comfyui_backdrop.cli.bench import main as bench_main
from comfyui_backdrop.export.bench import Candidate, interleaved, parity, percentile, speedups
from tests.fixtures.tiny_unets import tiny_sd15_unet


def test_rounds_interleave_and_rotate():
    calls = []
    candidates = [Candidate(n, lambda n=n: calls.append(n)) for n in "abc"]
    times = interleaved(candidates, rounds=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then rotated rounds
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_statistics_and_parity():
    assert percentile([4, 1, 3, 2], 50) == 2.5 and percentile([1, 2, 3, 4, 5], 90) == pytest.approx(4.6)
    ratios = speedups({"base": [2.0, 4.0, 3.0], "fast": [1.0, 1.0, 3.0]}, "base")
    assert ratios == {"base": 1.0, "fast": 2.0}  # median of per-round ratios 2, 4, 1
    ref = np.array([[-4.0, 1.0], [0.0, 2.0]])
    assert parity(ref, ref + np.array([[0.0, 0.5], [0.0, 0.0]])) == (0.5, 0.125)


def test_backdrop_bench_writes_json_markdown_and_plot(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(tiny_sd15_unet().config), default=list))
    code = bench_main(["bench", "--unet-config", str(config), "--size", "128", "--width", "192", "--rounds", "2",
                       "--backends", "eager,ort-plain", "--threads", "1", "--out", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    rows = report["sections"]["UNet step"]
    assert [r["name"] for r in rows] == ["torch eager", "onnxruntime (plain export)"]
    eager, ort = rows
    assert eager["speedup"] == 1.0 and eager["max_abs_error"] == 0.0
    assert len(ort["times_s"]) == 2 and ort["p50_s"] > 0 and ort["max_rel_error"] <= 1e-4
    assert report["settings"]["image"] == "192x128" and report["settings"]["batch"] == 2
    markdown = (tmp_path / "out" / "bench.md").read_text()
    assert "| onnxruntime (plain export) |" in markdown and "speed-up vs torch eager" in markdown
    with Image.open(tmp_path / "out" / "bench.png") as plot:
        assert plot.size[0] == 900 and plot.size[1] > 100
        colors = {tuple(c) for c in np.asarray(plot.convert("RGB")).reshape(-1, 3).tolist()}
        assert {(66, 133, 244), (219, 68, 55)} <= colors  # one bar per backend
    bench_main(["bench", "--unet-config", str(config), "--size", "128", "--rounds", "1", "--backends", "eager",
                "--threads", "1", "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "bench-1.json").is_file()  # an earlier report is never overwritten
