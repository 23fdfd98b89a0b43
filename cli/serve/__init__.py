"""``backdrop serve``: the HTTP API for brands and studios (FastAPI on uvicorn; ``pip install
'comfyui-backdrop[serve]'``).

    config.py          the data folder's layout and the server's settings
    extras.py          optional dependencies, imported when used; a missing one names its extra
    tiers.py           the editable tiers file (limits per plan)
    api_keys.py        keys shown once, stored as SHA-256
    store.py           accounts, jobs, quota use: one interface and its SQL; the request-rate limiter
    store_sqlite.py    ... on SQLite (the default), store_postgres.py on PostgreSQL; database.py opens one
    legacy_database.py a data folder's old server.sqlite3 merged into the one database, ledger.sqlite3
    params.py          a job's parameters: checked against the catalog and the tier, turned into `backdrop run`'s
    uploads.py         multipart bodies streamed into the data folder under a size cap; the image gate -> 413/415/422
    app.py             the FastAPI application: endpoints, authentication, limits
    runner.py          who runs queued jobs: the JobRunner seam; local worker processes
    ray_runner.py      ... or Ray actors (--ray-address): embedded or a cluster's
    worker.py          one worker process: claims jobs, runs the `backdrop run` pipeline, models kept loaded
    recovery.py        start-up and dead-worker recovery: nothing accepted is lost
    command.py         the command: checks, recovery, uvicorn

Nothing here is imported until the command runs, so ``backdrop`` starts fast without the extra installed.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data`` and ``--database``: shared by ``serve`` and ``accounts`` (they must name the same ones)."""
    from .config import DATABASE_ENV

    parser.add_argument("--data", type=Path, required=True,
                        help="the server's data folder: database, tiers.toml, keys, ledger, uploads and results "
                             "(created when missing)")
    parser.add_argument("--database", default=None,
                        help=f"postgresql://USER@HOST:PORT/DB to keep accounts and jobs in PostgreSQL (needs the "
                             f"'db' extra; ${DATABASE_ENV} is read when this is not given, and keeps a password out "
                             "of the process list); default: SQLite in the data folder")


def add_serve_parser(subparsers) -> None:
    """Register ``backdrop serve`` on the ``backdrop`` parser's subparsers."""
    from ...runtime.inpainting.loader import DTYPES
    from .config import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_MB

    serve = subparsers.add_parser("serve", help="HTTP API with accounts, tiers and async jobs (needs the serve extra)",
                                  description="Serve the backdrop pipeline over HTTP: accounts with API keys, tiers, "
                                              "asynchronous jobs, every delivered image watermarked and recorded. "
                                              "OpenAPI docs at /docs. Create accounts with `backdrop accounts`.")
    add_storage_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                           "only; put a TLS proxy in front for anything else)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1,
                       help="job worker processes (Ray actors with --ray-address), each keeping its models loaded "
                            "(default 1; 0 queues jobs without running them)")
    serve.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="run jobs on Ray (needs the cluster extra): 'local' starts Ray on this machine, "
                            "HOST:PORT joins a cluster started with `ray start --head` (needs --database "
                            "postgresql://..., and the data folder mounted at the same path on every node)")
    serve.add_argument("--ray-gpus-per-worker", type=float, default=0.0, metavar="G",
                       help="GPUs each Ray worker reserves (default 0; e.g. 1 with --device cuda)")
    serve.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                       help=f"largest request body accepted, MiB (default {DEFAULT_MAX_UPLOAD_MB}); larger: 413")
    serve.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                       help=f"largest photo accepted, pixels (default {DEFAULT_MAX_PIXELS}); checked from the "
                            "header before decoding; larger: 413")
    serve.add_argument("--models-dir", type=Path, default=None,
                       help="ComfyUI-style models folder whose checkpoints and LoRAs callers may choose "
                            "(default: $BACKDROP_MODELS_DIR or ./models)")
    serve.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device for models")
    serve.add_argument("--sam", default=None, help="SAM checkpoint in models/sams for masks (default: weight-free)")
    serve.add_argument("--captioner", default=None, help="VLM folder in models/LLM for captions (default: none)")
    serve.add_argument("--tokenizer-dir", default=None, help="CLIP tokenizer folder for single-file checkpoints")
    serve.add_argument("--dtype", choices=list(DTYPES), default="auto", help="diffusion dtype")
    serve.add_argument("--no-access-log", action="store_true", help="no per-request log lines")


def run_serve(args: argparse.Namespace, run_defaults: dict | None = None) -> int:
    """``run_defaults``: ``backdrop run``'s parsed defaults (cli.main passes them; the server cannot import the
    parser, which imports the server)."""
    from .command import serve_command

    return serve_command(args, run_defaults or {})
