"""What a ``backdrop run`` did, photo by photo, and the summary it prints at the end."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PhotoOutcome:
    """What one photo produced: the files written (even when a later step failed) and the error, if any."""

    source: Path
    written: list[Path] = field(default_factory=list)
    error: str | None = None
    ranking: list[dict] | None = None  # --candidates: every candidate's scores, best first (RankedCandidate.as_dict)
    kept: int = 0  # how many of them were written


@dataclass
class RunSummary:
    outcomes: list[PhotoOutcome] = field(default_factory=list)
    not_started: list[Path] = field(default_factory=list)
    interrupted: bool = False
    already_done: list[Path] = field(default_factory=list)  # catalog runs: finished in an earlier run, skipped

    @property
    def written(self) -> list[Path]:
        return [path for outcome in self.outcomes for path in outcome.written]

    @property
    def failed(self) -> list[PhotoOutcome]:
        return [outcome for outcome in self.outcomes if outcome.error is not None]


def print_summary(summary: RunSummary) -> None:
    """Every file written, every photo that failed (with what it had written), and what Ctrl-C left undone."""
    for path in summary.written:
        print(f"wrote {path}")
    for outcome in summary.outcomes:
        if outcome.ranking:
            scores = [f"{r['score']:.2f}" for r in outcome.ranking]
            print(f"ranked {outcome.source}: kept {outcome.kept} of {len(scores)} candidates, defect scores "
                  f"{', '.join(scores[:outcome.kept])} (not kept: {', '.join(scores[outcome.kept:]) or 'none'})")
    for outcome in summary.failed:
        print(f"FAILED {outcome.source}: {outcome.error}", file=sys.stderr)
    for path in summary.not_started:
        print(f"NOT RUN {path}", file=sys.stderr)
    if summary.already_done:
        print(f"{len(summary.already_done)} photo(s) skipped: finished in an earlier run with these settings "
              "(see the run manifest in the output folder)", file=sys.stderr)
    print(f"{len(summary.written)} file(s) written, {len(summary.failed)} input(s) failed"
          + (f", {len(summary.not_started)} not run (interrupted)" if summary.interrupted else ""), file=sys.stderr)
