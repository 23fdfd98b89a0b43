"""``backdrop serve``: check the extras, take the data folder, recover, start the workers and uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from ...runtime.errors import InvalidInputError
from .config import DATABASE_ENV, DataFolder, ServeConfig
from .extras import require
from .server_lock import exclusive_lock

log = logging.getLogger("backdrop.serve")


def serve_command(args: argparse.Namespace, run_defaults: dict) -> int:
    for module in ("fastapi", "uvicorn", "python_multipart"):
        require(module, "serve", "backdrop serve")
    config = config_from_args(args, run_defaults)
    _setup_logging()
    data = config.data.prepare()
    with _exclusive(data.lock_path):
        return _serve(config)


def config_from_args(args: argparse.Namespace, run_defaults: dict) -> ServeConfig:
    if not 0 <= args.workers <= 64:
        raise InvalidInputError(f"--workers must be 0..64, got {args.workers}")
    if not 0 < args.max_upload_mb <= 4096:
        raise InvalidInputError(f"--max-upload-mb must be above 0 and at most 4096, got {args.max_upload_mb}")
    if args.max_pixels < 1:
        raise InvalidInputError(f"--max-pixels must be positive, got {args.max_pixels}")
    config = ServeConfig(
        data=DataFolder.at(args.data), database=args.database or os.environ.get(DATABASE_ENV), host=args.host,
        port=args.port, workers=args.workers, max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels, models_dir=Path(args.models_dir).resolve() if args.models_dir else None,
        device=args.device, sam=args.sam, captioner=args.captioner, tokenizer_dir=args.tokenizer_dir, dtype=args.dtype,
        access_log=not args.no_access_log, run_defaults=dict(run_defaults), ray_address=args.ray_address,
        ray_gpus_per_worker=args.ray_gpus_per_worker)
    if config.ray_address is not None or config.ray_gpus_per_worker:
        from .ray_runner import check_cluster_config

        check_cluster_config(config)
    return config


def _serve(config: ServeConfig) -> int:
    from ...runtime.provenance.keys import HOME_ENV, load_keys
    from .database import open_store
    from .tiers import TierBook, ensure_tiers_file

    data = config.data
    # The data folder is this server's provenance home: keys, ledger. `write_marked` (the CLI's marking) reads the
    # home from $BACKDROP_HOME, and the worker processes inherit it.
    os.environ[HOME_ENV] = str(data.root)
    load_keys(data.root)  # created once here, before workers could race for it
    tiers = TierBook(ensure_tiers_file(data.tiers_path))
    store = open_store(config.database, data.root)
    try:
        with store.server_lock():
            return _recover_and_run(config, store, tiers)
    finally:
        store.close()


def _recover_and_run(config: ServeConfig, store, tiers) -> int:
    import uvicorn

    from .app import ServerState, create_app
    from .recovery import clean_leftovers, recover_running
    from .store import QUEUED

    data = config.data
    failed = recover_running(store, data, ledger=config.ledger_location)
    uploads, orphans = clean_leftovers(store, data)
    log.info("data %s, %s; tiers %s; %d queued job(s) resume, %d interrupted job(s) failed as retryable%s",
             data.root, config.database_label, ", ".join(tiers.names()), store.count_jobs(QUEUED), len(failed),
             f", {uploads} unfinished upload(s) and {orphans} uncommitted job folder(s) removed"
             if uploads or orphans else "")
    with _runner(config, on_lost=lambda worker, why: recover_running(store, data, why, worker,
                                                                    config.ledger_location)) as runner:
        app = create_app(ServerState(config, store, tiers, runner))
        where = f" on Ray ({config.ray_address})" if config.ray_address else ""
        print(f"backdrop serve: http://{_host(config.host)}:{config.port} (API docs at /docs), {config.workers} "
              f"worker(s){where}; create accounts with: backdrop accounts create NAME --data {data.root}",
              file=sys.stderr, flush=True)
        server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info",
                                               access_log=config.access_log, server_header=False,
                                               timeout_graceful_shutdown=int(config.shutdown_grace_s)))
        server.run()
    return 0 if server.started else 2


@contextlib.contextmanager
def _runner(config: ServeConfig, on_lost):
    """Local worker processes, or Ray actors on the Ray joined or started here (and left or shut down after)."""
    if config.ray_address is None or not config.workers:
        from .runner import LocalWorkers

        yield LocalWorkers(config, on_lost)
        return
    from .ray_runner import RayWorkers, ray_session

    with ray_session(config) as key_secrets:
        yield RayWorkers(config, on_lost, key_secrets)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _setup_logging() -> None:
    logger = logging.getLogger("backdrop.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _exclusive(path: Path):
    """One server per data folder: an exclusive lock on ``server.lock`` for the server's lifetime."""
    return exclusive_lock(path, f"another backdrop serve is running on {path.parent}; one server per data folder "
                                "(give this one its own --data)", write_pid=True)
