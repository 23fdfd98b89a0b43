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
                       "--backends", "eager,ort-plain", "--precisions", "fp32", "--threads", "1",
                       "--out", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    rows = report["sections"]["UNet step"]
    assert [r["name"] for r in rows] == ["torch eager fp32", "onnxruntime (plain export) fp32"]
    eager, ort = rows
    assert eager["speedup"] == 1.0 and eager["max_abs_error"] == 0.0
    assert len(ort["times_s"]) == 2 and ort["p50_s"] > 0 and ort["max_rel_error"] <= 1e-4
    assert report["settings"]["image"] == "192x128" and report["settings"]["batch"] == 2
    assert ort["setup_anon_bytes"] is not None and 0 <= ort["setup_anon_bytes"] <= ort["setup_extra_bytes"] + 2**26
    markdown = (tmp_path / "out" / "bench.md").read_text()
    assert "| onnxruntime (plain export) fp32 |" in markdown and "speed-up vs torch eager fp32" in markdown
    assert "| own peak GiB | own anonymous GiB |" in markdown
    with Image.open(tmp_path / "out" / "bench.png") as plot:
        assert plot.size[0] == 900 and plot.size[1] > 100
        colors = {tuple(c) for c in np.asarray(plot.convert("RGB")).reshape(-1, 3).tolist()}
        assert {(66, 133, 244), (219, 68, 55)} <= colors  # one bar per backend
    bench_main(["bench", "--unet-config", str(config), "--size", "128", "--rounds", "1", "--backends", "eager",
                "--precisions", "fp32", "--threads", "1", "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "bench-1.json").is_file()  # an earlier report is never overwritten


def test_bench_crosses_backends_with_precisions_and_says_why_it_skips(tmp_path):
    pytest.importorskip("openvino", reason="the cpu-engines extra (openvino) is not installed")
    from comfyui_backdrop.runtime.allocator import allocator_state
    from comfyui_backdrop.runtime.engines.precision import cpu_info, native_support

    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(tiny_sd15_unet().config), default=list))
    code = bench_main(["bench", "--unet-config", str(config), "--size", "64", "--rounds", "1", "--threads", "1",
                       "--backends", "eager,ort,openvino", "--precisions", "fp32,bf16,int8",
                       "--out", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    cpu = report["settings"]["machine"]["cpu"]
    assert cpu["model"] == cpu_info().model and cpu["isa"] == cpu_info().isa  # the report names the CPU and ISA
    allocator = report["settings"]["machine"]["allocator"]  # ... and how this process allocates (conftest tunes it)
    assert allocator == allocator_state().to_dict()
    assert report["settings"]["machine"]["allocator_line"] == allocator_state().describe()
    rows = {r["name"]: r for r in report["sections"]["UNet step"]}
    skipped = {s["name"]: s["reason"] for s in report["skipped"]["UNet step"]}
    assert rows["torch eager fp32"]["max_rel_error"] == 0.0
    for name in ("OpenVINO fp32", "onnxruntime (optimized) fp32"):
        assert rows[name]["max_rel_error"] <= 1e-4
    assert 0 < rows["OpenVINO int8"]["max_rel_error"] <= 5e-2
    assert 0 < rows["onnxruntime (optimized) int8"]["max_rel_error"] <= 0.1  # per-tensor dynamic activations
    assert "torch eager int8" in skipped and "onnxruntime (optimized) bf16" in skipped
    if native_support("bf16")[0]:
        assert rows["OpenVINO bf16"]["max_rel_error"] <= 2e-2
    else:  # bf16 without a bf16 unit: OpenVINO refuses it, torch runs it and says it is emulated
        assert "no native bf16" in skipped["OpenVINO bf16"]
        assert rows["torch eager bf16"]["notes"].startswith("emulated")
    assert "kernels:" in rows["OpenVINO fp32"]["notes"]  # which primitives ran
    for row in rows.values():
        assert row["setup_peak_bytes"] > 0 and row["setup_s"] > 0
    markdown = (tmp_path / "out" / "bench.md").read_text()
    assert "skipped:" in markdown and cpu["isa"] in markdown


def test_auto_writes_a_choice_that_respects_the_error_budget(tmp_path):
    pytest.importorskip("openvino", reason="the cpu-engines extra (openvino) is not installed")
    from comfyui_backdrop.export.engine_choice import read_choice

    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(tiny_sd15_unet().config), default=list))
    choice_file = tmp_path / "models" / "engine_choice.json"
    code = bench_main(["bench", "--unet-config", str(config), "--size", "64", "--rounds", "1", "--threads", "1",
                       "--backends", "auto", "--precisions", "fp32,int8", "--error-budget", "1e-4",
                       "--choice-file", str(choice_file), "--out", str(tmp_path / "out")])
    assert code == 0
    choice = read_choice(choice_file)
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    rows = {r["name"]: r for r in report["sections"]["UNet step"]}
    assert choice.max_rel_error <= 1e-4 and choice.precision == "fp32"  # int8 rows are over a 1e-4 budget
    within = [r for r in rows.values() if r["max_rel_error"] <= 1e-4
              and r["backend"] in ("eager", "compile-frozen", "ort", "openvino")]
    assert "torch.compile (frozen) fp32" in rows  # the frozen compile is one of the choices
    assert choice.p50_s == min(r["p50_s"] for r in within)
    assert report["settings"]["engine_choice"]["label"] == choice.label and "auto:" in report["notes"][0]


def test_pipeline_rows_split_the_job_by_stage(tmp_path, inpaint_models):
    pytest.importorskip("openvino", reason="the cpu-engines extra (openvino) is not installed")
    code = bench_main(["bench", "--model", "checkpoints/tiny-sd15-inpaint.safetensors", "--models-dir",
                       str(inpaint_models), "--size", "64", "--rounds", "1", "--threads", "1", "--backends", "eager",
                       "--precisions", "fp32", "--steps", "3", "--feature-cache", "2", "--fast-scheduler", "lcm",
                       "--fast-steps", "2", "--out", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    rows = {r["name"]: r for r in report["sections"]["pipeline"]}
    torch_row = rows["torch eager fp32, 3 steps"]
    engines = rows["OpenVINO fp32 whole pipeline, 3 steps"]
    assert torch_row["max_abs_error"] == 0.0 and engines["max_abs_error"] <= 2e-3
    for row in (torch_row, engines):
        assert {"text encode", "VAE encode", "UNet x3", "VAE decode"} <= set(row["stages"])
        assert sum(row["stages"].values()) == pytest.approx(row["times_s"][0], rel=0.05)
    cached = rows["torch eager fp32 + feature cache every 2, 3 steps"]
    assert cached["max_abs_error"] > 0  # a different output than the full schedule, and reported as such
    engine_cached = rows["OpenVINO fp32 whole pipeline + feature cache every 2, 3 steps"]
    assert abs(engine_cached["max_abs_error"] - cached["max_abs_error"]) <= 2e-3  # the same approximation
    fast = rows["OpenVINO fp32 whole pipeline, lcm 2 steps"]
    assert fast["stages"]["UNet x2"] > 0 and fast["max_abs_error"] > 0
    assert "| pipeline | total s |" in (tmp_path / "out" / "bench.md").read_text()


def test_pipeline_rows_in_bf16_where_the_cpu_has_it(tmp_path, inpaint_models):
    """With bf16 asked for: torch's own bf16 pipeline and the bf16 engines where the CPU has the unit (the cache
    rows then go on the bf16 engines); on a CPU without it neither row is run."""
    pytest.importorskip("openvino", reason="the cpu-engines extra (openvino) is not installed")
    from comfyui_backdrop.runtime.engines.precision import native_support

    code = bench_main(["bench", "--model", "checkpoints/tiny-sd15-inpaint.safetensors", "--models-dir",
                       str(inpaint_models), "--size", "64", "--rounds", "1", "--threads", "1", "--backends", "eager",
                       "--precisions", "fp32,bf16", "--steps", "2", "--feature-cache", "2",
                       "--out", str(tmp_path / "out")])
    assert code == 0
    rows = {r["name"]: r for r in json.loads((tmp_path / "out" / "bench.json").read_text())["sections"]["pipeline"]}
    if not native_support("bf16")[0]:
        assert not any("bf16" in name for name in rows)
        return
    for name in ("torch eager bf16, 2 steps", "OpenVINO bf16 whole pipeline, 2 steps"):
        assert 0 < rows[name]["max_abs_error"] <= 0.1, name  # bf16 rounding, not a different image
    assert "OpenVINO bf16 whole pipeline + feature cache every 2, 2 steps" in rows
    assert "bf16" in rows["OpenVINO bf16 whole pipeline, 2 steps"]["notes"]  # the kernels that ran


def test_rows_that_would_not_fit_are_skipped_and_say_so(tmp_path):
    """A row whose setup would not fit in what is left (here a --memory budget of 0.2 GiB) is a skipped row naming
    what it needs, instead of a run the out-of-memory killer ends without a report; the reference still runs."""
    from comfyui_backdrop.cli.main import main as backdrop
    from comfyui_backdrop.export.bench_memory import MemoryGuard
    from comfyui_backdrop.export.memory_need import GIB, setup_need

    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(tiny_sd15_unet().config), default=list))
    common = ["bench", "--unet-config", str(config), "--size", "64", "--rounds", "1", "--threads", "1",
              "--backends", "eager,ort-plain", "--precisions", "fp32"]
    assert bench_main([*common, "--memory", "0.2", "--out", str(tmp_path / "tight")]) == 0
    report = json.loads((tmp_path / "tight" / "bench.json").read_text())
    assert [r["name"] for r in report["sections"]["UNet step"]] == ["torch eager fp32"]
    (skip,) = report["skipped"]["UNet step"]
    assert skip["name"] == "onnxruntime (plain export) fp32" and "GiB is left" in skip["reason"]
    assert "--backends ort-plain --precisions fp32" in skip["reason"]
    assert bench_main([*common, "--memory", "8", "--out", str(tmp_path / "roomy")]) == 0
    rows = json.loads((tmp_path / "roomy" / "bench.json").read_text())["sections"]["UNet step"]
    assert len(rows) == 2
    assert backdrop([*common, "--memory", "0", "--out", str(tmp_path / "bad")]) == 2  # the backdrop command
    assert not (tmp_path / "bad").exists()
    sd15 = int(3.44e9)  # the measured setup peaks the estimates come from (docs/performance.md)
    assert 9 * GIB < setup_need("openvino", "fp32", sd15) < 10 * GIB
    assert setup_need("openvino", "bf16", sd15) < setup_need("openvino", "fp32", sd15)
    assert MemoryGuard(GIB, rss=GIB).left(rss=GIB + GIB // 2) <= GIB // 2


def test_the_anonymous_peak_counts_allocations_and_not_mapped_files(tmp_path):
    """What runs a machine out of memory: a 256 MiB array held for a moment counts, pages of a mapped 256 MiB file
    read through do not (the kernel can drop them), and the peak is kept after the memory is freed."""
    import mmap
    import time

    from comfyui_backdrop.export.bench import AnonymousPeak

    size = 256 * 2**20
    with AnonymousPeak() as allocated:
        block = np.ones(size // 8)
        time.sleep(0.1)  # held for ten samples, then freed
        del block
    assert allocated.extra >= size * 0.8
    data = tmp_path / "weights.bin"
    data.write_bytes(b"\1" * size)
    with AnonymousPeak() as mapped, data.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        total = sum(view[i] for i in range(0, size, 4096))
    assert total == size // 4096 and mapped.extra < size * 0.2
