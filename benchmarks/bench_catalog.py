"""Catalog runs on Ray (issue 17): scaling, Ray's overhead, a killed worker and an interrupted run.

    .venv/bin/python benchmarks/bench_catalog.py [--photos 200] [--side 512] [--rounds 2] [--out results.json]

Every run is the real CLI in a subprocess on the weight-free studio path (no model weights), over ``--photos``
synthetic product shots drawn in code.

1. **Throughput**, interleaved (single process, ``--workers 1``, ``--workers 2``, repeated ``--rounds`` times, the
   median kept): photos a second in the steady state (from the output files' modification times: first to last
   file written, so Ray's start-up is not counted) and wall-clock including start-up. Targets: 2 workers >= 1.7x
   1 worker; 1 worker costs <= 5% a photo against the single process.
2. **Killed worker**: ``--workers 2 --watermark``; one Ray worker process gets SIGKILL after 30% of the photos.
   The run must finish with one output a photo, one ledger record an output and an intact chain.
3. **Interrupted run**: ``--workers 2 --watermark``; SIGINT to the driver at 50%, then the same command again. The
   second run must process only the rest, and nothing may be duplicated (files or records).

Prints a table with the CPU (model and ISA) and, with ``--out``, every number as JSON. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the shared test helpers (tests.*) are importable
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402

from comfyui_backdrop.cli.catalog.manifest import finished_count  # noqa: E402
from comfyui_backdrop.runtime.engines.precision import cpu_info  # noqa: E402
from tests.fixtures.images import studio_product_photo  # noqa: E402
from tests.fixtures.processes import descendants_titled  # noqa: E402

BACKDROP = str(Path(sys.executable).with_name("backdrop"))
MODES = {"single": [], "workers1": ["--workers", "1"], "workers2": ["--workers", "2"]}


def make_photos(folder: Path, count: int, side: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        photo, _ = studio_product_photo(side, side - side // 8, seed=i)
        cv2.imwrite(str(folder / f"p{i:04d}.png"), photo[..., ::-1])
    return folder


def start(photos: Path, out: Path, home: Path, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "BACKDROP_HOME": str(home)}
    return subprocess.Popen([BACKDROP, "run", str(photos), "--out", str(out), "--quiet", *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=3600)
    return process.returncode, err


def outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.suffix == ".png")


def steady_rate(out: Path) -> float:
    """Photos a second between the first and the last output file written."""
    times = sorted(p.stat().st_mtime for p in outputs(out))
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")


def wait_until(condition, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)


def ledger_check(home: Path) -> dict:
    from comfyui_backdrop.runtime.provenance.keys import load_keys
    from comfyui_backdrop.runtime.provenance.ledger import LEDGER_FILENAME, Ledger

    ledger = Ledger(home / LEDGER_FILENAME, load_keys(home, create=False))
    records = list(ledger.records())
    keys = [r.idempotency_key for r in records]
    return {"records": len(records), "distinct_keys": len(set(keys)), "chain_ok": ledger.verify().ok}


def throughput(photos: Path, work: Path, rounds: int) -> dict:
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for round_ in range(rounds):
        for mode, extra in MODES.items():  # interleaved: each round runs every mode once
            out = work / f"{mode}-{round_}"
            began = time.perf_counter()
            code, err = finish(start(photos, out, work / "home", extra))
            wall = time.perf_counter() - began
            count = len(outputs(out))
            runs[mode].append({"code": code, "wall_s": wall, "outputs": count, "steady_photos_per_s":
                               steady_rate(out), "wall_photos_per_s": count / wall})
            print(f"  round {round_ + 1} {mode:9s}: {runs[mode][-1]['steady_photos_per_s']:.2f} photos/s steady, "
                  f"{wall:.1f} s wall, exit {code}" + (f"\n{err[-2000:]}" if code else ""), flush=True)
    summary = {mode: {key: statistics.median(r[key] for r in rows) for key in ("steady_photos_per_s", "wall_s",
                                                                               "wall_photos_per_s")}
               for mode, rows in runs.items()}
    single, one, two = (summary[m]["steady_photos_per_s"] for m in ("single", "workers1", "workers2"))
    walls = {mode: summary[mode]["wall_photos_per_s"] for mode in MODES}
    return {"runs": runs, "median": summary, "scaling_2_over_1": two / one, "overhead_1_worker": single / one - 1,
            "wall_scaling_2_over_1": walls["workers2"] / walls["workers1"]}


def killed_worker(photos: Path, work: Path, count: int) -> dict:
    out, home = work / "killed", work / "home-killed"
    run = start(photos, out, home, ["--workers", "2", "--watermark", "--no-c2pa"])
    wait_until(lambda: finished_count(out) >= int(0.3 * count) or run.poll() is not None)
    victims = descendants_titled(run.pid, "PhotoStage")
    if victims:
        os.kill(victims[0], signal.SIGKILL)
    code, err = finish(run)
    names = [p.name for p in outputs(out)]
    return {"killed_pid": victims[0] if victims else None, "done_when_killed": int(0.3 * count), "code": code,
            "outputs": len(names), "renamed_copies": sum("-1_" in n for n in names), **ledger_check(home),
            "error_tail": err[-500:] if code else ""}


def interrupted_run(photos: Path, work: Path, count: int) -> dict:
    out, home = work / "interrupted", work / "home-interrupted"
    extra = ["--workers", "2", "--watermark", "--no-c2pa"]
    first = start(photos, out, home, extra)
    wait_until(lambda: finished_count(out) >= count // 2 or first.poll() is not None)
    first.send_signal(signal.SIGINT)
    code1, _ = finish(first)
    done_after_first = finished_count(out)
    began = time.perf_counter()
    code2, err2 = finish(start(photos, out, home, extra))
    skipped = next((int(line.split()[0]) for line in err2.splitlines() if "skipped: finished" in line), 0)
    names = [p.name for p in outputs(out)]
    return {"first_code": code1, "done_after_first": done_after_first, "second_code": code2,
            "second_skipped": skipped, "second_processed": count - skipped,
            "second_wall_s": time.perf_counter() - began,
            "outputs": len(names), "renamed_copies": sum("-1_" in n for n in names), **ledger_check(home)}


def stage_costs(work: Path, side: int, count: int) -> dict:
    """Milliseconds a photo for each step of the weight-free path (prepare, generate, deliver with --watermark), in
    this process: what each actor pool of a split layout would spend (the plan on paper in docs/catalog.md)."""
    from comfyui_backdrop.cli.main import build_parser
    from comfyui_backdrop.cli.photo_steps import (
        deliver_photo,
        generate_backgrounds,
        load_models,
        planned_names,
        prepare_photo,
    )
    from comfyui_backdrop.cli.run_plan import RunPlan

    photos = make_photos(work / f"stage-photos-{side}", count, side)
    os.environ["BACKDROP_HOME"] = str(work / "home-stages")
    plan = RunPlan.from_args(build_parser().parse_args(["run", str(photos), "--out", str(work / "stages-out"),
                                                        "--watermark", "--no-c2pa", "--quiet"]))
    models = load_models(plan)
    times: dict[str, list[float]] = {"prepare": [], "generate": [], "deliver": []}
    for path in plan.inputs:
        t0 = time.perf_counter()
        prepared = prepare_photo(path, plan, models)
        t1 = time.perf_counter()
        generated = generate_backgrounds(prepared, plan, models)
        t2 = time.perf_counter()
        deliver_photo(generated, plan, models, planned_names(path.stem, plan), [])
        t3 = time.perf_counter()
        for name, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            times[name].append(1000 * seconds)
    return {name: statistics.median(values[1:] or values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--side", type=int, default=512, help="photo height in pixels (width is 7/8 of it)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-faults", action="store_true", help="throughput only")
    parser.add_argument("--stage-costs-only", type=int, default=0, metavar="SIDE",
                        help="only time the three steps a photo at SIDE px (in this process) and stop")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cpu = cpu_info()
    print(f"CPU: {cpu.describe()}, {os.cpu_count()} cores; {args.photos} photos of {args.side} px", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        work = Path(tmp)
        if args.stage_costs_only:
            costs = stage_costs(work, args.stage_costs_only, 6)
            print(f"ms a photo at {args.stage_costs_only} px (median of 5): " + json.dumps(
                {k: round(v, 1) for k, v in costs.items()}))
            return 0
        photos = make_photos(work / "photos", args.photos, args.side)
        results = {"cpu": cpu.describe(), "cores": os.cpu_count(), "photos": args.photos, "side": args.side,
                   "throughput": throughput(photos, work, args.rounds)}
        if not args.skip_faults:
            results["killed_worker"] = killed_worker(photos, work, args.photos)
            results["interrupted"] = interrupted_run(photos, work, args.photos)
    report(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


def report(results: dict) -> None:
    t = results["throughput"]
    print(f"\n{results['cpu']}, {results['cores']} cores, {results['photos']} photos of {results['side']} px")
    print("| run | photos/s (steady) | wall s (with start-up) |\n|---|---:|---:|")
    for mode, label in (("single", "single process"), ("workers1", "--workers 1"), ("workers2", "--workers 2")):
        print(f"| {label} | {t['median'][mode]['steady_photos_per_s']:.2f} | {t['median'][mode]['wall_s']:.1f} |")
    print(f"scaling 1 -> 2 workers: {t['scaling_2_over_1']:.2f}x steady, {t['wall_scaling_2_over_1']:.2f}x wall "
          f"(target >= 1.7x); Ray overhead at 1 worker: {100 * t['overhead_1_worker']:+.1f}% a photo (target <= 5%)")
    for name in ("killed_worker", "interrupted"):
        if name in results:
            print(f"{name}: {json.dumps(results[name])}")


if __name__ == "__main__":
    sys.exit(main())
