"""Imported first by the single-thread benchmark scripts (``import one_thread`` before numpy or OpenCV loads).

Sets one BLAS/OpenMP/numexpr thread and one OpenCV thread, as the codec's speed targets are stated per core, and
puts the repository root on ``sys.path`` so that a script run as ``benchmarks/x.py`` can import ``tests.*``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import cv2  # noqa: E402  (after the variables above)

cv2.setNumThreads(1)
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
