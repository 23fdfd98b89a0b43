"""Benchmark: one very large product photo through the weight-free path of ``backdrop run``.

    .venv/bin/python benchmarks/large_photo.py [--width 8000] [--height 6000] [--keep DIR]

Draws a studio product shot (a shaded bottle on a light sweep with a floor shadow; the drawing of
``tests/fixtures/images.py`` at a quarter of the size, enlarged, plus sensor-like noise), writes it as
JPEG, then runs ``backdrop run big.jpg --out OUT`` (mask, studio backdrop, contact shadow, exact
composite, PNG write) in a child process under ``/usr/bin/time -v``. Prints wall seconds, peak RSS and
the CPU, and checks that the output's product core holds the input's pixels. The target (issue 14): an
8000x6000 photo in under 30 s within 4 GB peak RSS on the 2-core dev machine. Not collected by pytest.

Measured 2026-12-04 on the 2-core AMD EPYC dev VM, shared with other jobs (load average 2.5-3.5):
the bottle 20.5-21.1 s and 2.70 GiB, the ``--wide`` product 26.6-29.0 s and 3.13 GiB (before: 89 s
and 4.45 GiB for the bottle, the contact-shadow blur alone growing with the product's width).
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.fixtures (the package itself is installed as comfyui_backdrop)

from tests.fixtures.images import studio_product_photo  # noqa: E402


def large_product_photo(height: int, width: int, seed: int = 0, wide: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB [H,W,3], bool product mask [H,W]) drawn at 1/4 size and enlarged, with mild noise.

    ``wide`` replaces the bottle by a dark sofa-like block 85% of the photo wide: the worst case for the
    contact shadow, whose blur grows with the product's width."""
    small, mask = studio_product_photo(max(64, height // 4), max(64, width // 4), seed=seed)
    if wide:
        sh, sw = small.shape[:2]
        small = studio_product_photo(sh, sw, seed=seed)[0]
        background = small[2, 2].copy()
        small[mask] = background
        mask = np.zeros((sh, sw), np.uint8)
        cv2.rectangle(mask, (int(0.075 * sw), int(0.45 * sh)), (int(0.925 * sw), int(0.85 * sh)), 1, -1)
        cv2.rectangle(mask, (int(0.075 * sw), int(0.30 * sh)), (int(0.2 * sw), int(0.85 * sh)), 1, -1)
        cv2.rectangle(mask, (int(0.8 * sw), int(0.30 * sh)), (int(0.925 * sw), int(0.85 * sh)), 1, -1)
        mask = mask.astype(bool)
        small[mask] = (70, 60, 90)
    photo = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    product = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    noise = np.random.default_rng(seed).integers(-2, 3, size=photo.shape, dtype=np.int8)
    photo = np.clip(photo.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return photo, product


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        match = re.search(r"Model name:\s*(.+)", out)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_cli(photo: Path, out: Path) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in KiB, combined output) of ``backdrop run photo --out out``."""
    backdrop = Path(sys.executable).with_name("backdrop")
    command = [str(backdrop), "run", str(photo), "--out", str(out), "--quiet"]
    timer = Path("/usr/bin/time")
    if timer.exists():
        command = [str(timer), "-v", *command]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"backdrop run failed ({proc.returncode}):\n{text}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    elapsed = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if elapsed:
        parts = [float(p) for p in elapsed.group(1).split(":")]
        wall = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    return wall, int(rss.group(1)) if rss else -1, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=8000)
    parser.add_argument("--height", type=int, default=6000)
    parser.add_argument("--keep", type=Path, default=None, help="write the photo and output here (kept)")
    parser.add_argument("--wide", action="store_true", help="a product 85%% of the photo wide (the worst case)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        photo, product = large_product_photo(args.height, args.width, wide=args.wide)
        source = folder / "big.jpg"
        cv2.imwrite(str(source), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        decoded = cv2.cvtColor(cv2.imread(str(source)), cv2.COLOR_BGR2RGB)
        del photo
        wall, rss_kib, _ = run_cli(source, folder / "out")
        written = sorted((folder / "out").glob("big_*.png"))
        result = cv2.cvtColor(cv2.imread(str(written[-1])), cv2.COLOR_BGR2RGB)
        core = cv2.erode(product.astype(np.uint8), np.ones((41, 41), np.uint8)).astype(bool)
        exact = bool(np.array_equal(result[core], decoded[core]))
        changed = float((np.abs(result.astype(np.int16) - decoded).max(axis=2) > 8)[~product].mean())

    target_ok = wall < 30 and rss_kib < 4 * 1024 * 1024
    print("| photo | CPU | wall s | peak RSS | product core exact | background changed | target (<30 s, <4 GB) |")
    print("|---|---|---|---|---|---|---|")
    kind = "wide product" if args.wide else "bottle"
    print(f"| {args.width}x{args.height} JPEG, {kind} | {cpu_name()} | {wall:.1f} | {rss_kib / 1024 ** 2:.2f} GiB | "
          f"{exact} | {changed:.0%} | {'met' if target_ok else 'MISSED'} |")
    return 0 if exact and target_ok else 1


if __name__ == "__main__":
    sys.exit(main())
