"""``backdrop run --workers N``: the options of a catalog run on Ray, parsed and checked once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ...runtime.errors import InvalidInputError

STAGE_LAYOUTS = ("auto", "fused", "split")
MAX_WORKERS = 1024


def add_catalog_arguments(run: argparse.ArgumentParser) -> None:
    group = run.add_argument_group("catalog runs on Ray (resumable: a rerun skips the photos that finished)")
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="process photos in N Ray workers (embedded Ray on this machine unless --ray-address); "
                            "without it the run stays in this process and Ray is not imported")
    group.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="join an existing Ray cluster (e.g. 'auto' or 'ray://head:10001', after `ray start "
                            "--head` there) instead of starting one here")
    group.add_argument("--stages", choices=STAGE_LAYOUTS, default="auto",
                       help="split: masking+captioning, generation (one pipeline a GPU) and delivery in separate "
                            "actor pools; fused: each worker runs all three (no copies between processes); auto: "
                            "split when the cluster has GPUs and the run uses a checkpoint, fused otherwise")
    group.add_argument("--ray-dashboard", action="store_true",
                       help="start Ray's dashboard with the embedded cluster and print its address")


@dataclass(frozen=True)
class CatalogOptions:
    """How a catalog run is spread over Ray workers."""

    workers: int
    address: str | None = None
    stages: str = "auto"
    dashboard: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CatalogOptions | None:
        """None when the run stays in this process (no --workers)."""
        if args.workers is None:
            if args.ray_address or args.ray_dashboard or args.stages != "auto":
                raise InvalidInputError("--ray-address, --ray-dashboard and --stages need --workers N")
            return None
        if not 1 <= args.workers <= MAX_WORKERS:
            raise InvalidInputError(f"--workers must be between 1 and {MAX_WORKERS}, got {args.workers}")
        if args.ray_address and args.ray_dashboard:
            raise InvalidInputError("--ray-dashboard starts the dashboard of an embedded cluster; a cluster joined "
                                    "with --ray-address has its own (ray start --head --include-dashboard true)")
        return cls(workers=args.workers, address=args.ray_address, stages=args.stages, dashboard=args.ray_dashboard)
