"""Probe for issue 19: the watermark benchmark with every estimated lattice refined on the whole fold.

    .venv/bin/python benchmarks/probe_lattice_refinement.py --versions 3 --no-baselines --workers 2 \
        --skip speed averaging fp [--attack-set held-out] [--image-set held-out] [--out FILE]

Runs ``bench_watermark.py`` (same arguments) with the detector's ``fold`` replaced: a lattice other than the
embedding grid is first moved, key-free, to the maximum of its folded tile's band energy per period, by a
pattern search over its four basis coordinates (0.25 px down to 1/32 px, each step a new fold of the whole
residual). The comb that estimates lattices sees lags up to 0.6 of a central window; the fold sums every
period, so its energy pins the period down more finely. Measured at stop 29 (docs/watermark.md, Known
limitations): 6 more reads of about 1,000 attacked images, none lost, at 5-8x the detection time; not in the
codec. Compare two ``--out`` files attack by attack to see which images changed. Not collected by pytest.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_watermark

from comfyui_backdrop.runtime.watermark import codec, folding
from comfyui_backdrop.runtime.watermark.lattice import Lattice

FIRST_STEP, LAST_STEP, ROUNDS = 0.25, 1 / 32, 8  # px; rounds at most per step size
MOVES = np.concatenate([np.eye(4), -np.eye(4)])
plain_fold = folding.fold


def band_energy(tile: np.ndarray) -> float:
    """Energy of a folded tile in the pattern's band, DC excluded."""
    energy = np.abs(folding.band(np.fft.fft2(tile))) ** 2
    energy[0, 0] = 0.0
    return float(energy.sum())


def refined_fold(residual: np.ndarray, lattice: Lattice) -> tuple[np.ndarray, float]:
    """``folding.fold`` at the lattice near ``lattice`` whose fold has the most band energy per period."""
    if np.allclose(lattice.matrix(), np.eye(2)):
        return plain_fold(residual, lattice)

    def folded(basis: np.ndarray) -> tuple[float, tuple[np.ndarray, float]]:
        tile, periods = plain_fold(residual, Lattice(tuple(basis[:2]), tuple(basis[2:]), lattice.score))
        return band_energy(tile) / max(periods, 1e-9), (tile, periods)

    basis = np.array([*lattice.v1, *lattice.v2], dtype=np.float64)
    best, out = folded(basis)
    step = FIRST_STEP
    while step >= LAST_STEP:
        for _ in range(ROUNDS):
            trials = [basis + step * move for move in MOVES]
            scored = [folded(trial) for trial in trials]
            k = int(np.argmax([score for score, _ in scored]))
            if scored[k][0] <= best:
                break
            (best, out), basis = scored[k], trials[k]
        step /= 2
    return out


if __name__ == "__main__":
    codec.fold = refined_fold  # the worker processes are forked, so they detect with it too
    sys.exit(bench_watermark.main(sys.argv[1:]))
