"""Benchmark of candidate ranking (issue 20): does the clean candidate rank first among planted defects?

    .venv/bin/python benchmarks/bench_ranking.py [--cases 120] [--start 0] [--out results.json]

Each case (tests/fixtures/ranking_set.py) is a studio product shot (varied seed, size 256x320 to 1080x1350, old
backdrop, style palette, and new background: plain, fine grain, or props far away) with five candidates sharing
its exact product: the clean one and one each with a visible seam, leaked product colour, a colour cast and
clutter beside the product. ``rank_candidates`` ranks the five with the style's palette. Prints the share of cases
where the clean candidate ranks first (target >= 90 %), how often each defect beat it, the time per candidate and
the CPU model. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=120)
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--out", type=Path, default=None, help="also write every case's ranking as JSON")
    args = parser.parse_args()

    from comfyui_backdrop.runtime.ranking import rank_candidates
    from tests.fixtures.ranking_set import DEFECT_KINDS, planted_case

    first, beaten_by, by_texture, records = 0, Counter(), Counter(), []
    texture_total: Counter = Counter()
    seconds, scored = 0.0, 0
    for seed in range(args.start, args.start + args.cases):
        case = planted_case(seed)
        names = list(case.candidates)
        started = time.perf_counter()
        ranked = rank_candidates([case.candidates[n] for n in names], case.alpha, case.palette)
        seconds += time.perf_counter() - started
        scored += len(names)
        order = [names[r.index] for r in ranked]
        clean_score = next(r.score for r in ranked if names[r.index] == "clean")
        texture = case.name.split("-")[2]
        texture_total[texture] += 1
        if order[0] == "clean":
            first += 1
            by_texture[texture] += 1
        for r in ranked:
            if names[r.index] != "clean" and r.score <= clean_score:
                beaten_by[names[r.index]] += 1
        records.append({"case": case.name, "order": order,
                        "scores": {names[r.index]: r.as_dict() for r in ranked}})
    share = first / max(1, args.cases)
    print(f"CPU: {cpu_model()}")
    print(f"cases: {args.cases} (seeds {args.start}..{args.start + args.cases - 1}), five candidates each")
    print(f"clean candidate ranked first: {first}/{args.cases} = {100 * share:.1f} % (target >= 90 %)")
    for texture, total in sorted(texture_total.items()):
        print(f"  background {texture:8s}: {by_texture[texture]}/{total}")
    for kind in DEFECT_KINDS:
        print(f"  {kind:8s} ranked at or above the clean one: {beaten_by[kind]}/{args.cases}")
    print(f"ranking time: {1000 * seconds / max(1, scored):.1f} ms per candidate (one process)")
    if args.out:
        args.out.write_text(json.dumps({"share_clean_first": share, "cases": records, "cpu": cpu_model()},
                                       indent=1))
    return 0 if share >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
