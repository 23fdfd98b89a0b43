"""Jobs run on Ray: ``backdrop serve --ray-address local|HOST:PORT`` (the catalog-run issue's cluster).

:class:`RayWorkers` is a ``runner.JobRunner``: ``--workers N`` Ray actors (:class:`JobWorkerActor`, one CPU each,
``--ray-gpus-per-worker`` GPUs), each running the local workers' own loop (``worker.work``: claim the oldest
queued job from the store, run ``backdrop run``'s pipeline, models kept loaded). The API, the database, quotas,
fencing and recovery are the local runner's; only where the loop runs changes.

* Waiting for work: an actor polls the store every :data:`POLL_S` seconds, and the server wakes every actor at
  once when it accepts a job (a ``wake`` call in the actor's own thread, beside its job).
* An actor process that dies is restarted by Ray (``max_restarts=-1``); the server fails the job it held as
  retryable through the same ``on_lost`` path as a dead local worker (``recovery.recover_running``), then has the
  new process claim jobs again. Each actor process has its own worker name, so the job a restarted actor has
  just claimed is never mistaken for the lost one.
* ``stop`` lets running jobs finish for ``shutdown_grace_s``, then kills the actors and fails what they left.
  :func:`ray_session` disconnects from a joined cluster (never stopping it) and shuts embedded Ray down.

A joined cluster's actors run on other machines: the server requires ``--database postgresql://`` (jobs and the
ledger in one database every node reaches; ``config.ServeConfig.ledger_location``) and hands them the provenance
keys in memory (``KeyStore.secrets``), never written to their disks. Photos and results stay in the data folder,
which every node must mount at the same path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ...runtime.errors import InvalidInputError
from .config import ServeConfig
from .extras import require
from .runner import MAX_RESTART_DELAY_S, SUPERVISE_EVERY_S
from .worker import JobExecutor, start_worker, work

log = logging.getLogger("backdrop.serve")
LOCAL = "local"  # --ray-address local: Ray embedded in the server, on this machine
POLL_S = 0.5  # an idle actor looks for queued jobs this often (a wake call comes sooner)
WORK = "work"  # the actor's concurrency group of ready() and serve(): one thread, so jobs run in the thread
#               that was set up (its lowered priority: Linux keeps the policy and nice value per thread)


def joins_cluster(address: str | None) -> bool:
    return address is not None and address != LOCAL


def check_cluster_config(config: ServeConfig) -> None:
    """What ``--ray-address`` needs before anything starts; InvalidInputError says what to change."""
    from ...runtime.provenance.ledger_backends import is_database_url

    if config.ray_gpus_per_worker < 0:
        raise InvalidInputError(f"--ray-gpus-per-worker must be 0 or more, got {config.ray_gpus_per_worker}")
    if config.ray_gpus_per_worker and config.ray_address is None:
        raise InvalidInputError("--ray-gpus-per-worker needs --ray-address")
    if joins_cluster(config.ray_address) and not is_database_url(config.database or ""):
        raise InvalidInputError(f"--ray-address {config.ray_address} runs jobs on other machines, which cannot reach "
                                "the server's SQLite database: give --database postgresql://USER@HOST/DB (jobs, "
                                "accounts and the provenance ledger in one database every node reaches), or use "
                                "--ray-address local")


@contextlib.contextmanager
def ray_session(config: ServeConfig) -> Iterator[dict[str, bytes] | None]:
    """Join the cluster at ``config.ray_address`` (a dead address is an error within seconds) or start Ray here;
    yields the provenance keys for actors on other machines (None for embedded Ray: they read the data folder).
    On exit the server disconnects: a joined cluster keeps running, embedded Ray is shut down."""
    from ..ray_start import check_reachable, init_ray

    require("ray", "cluster", f"backdrop serve --ray-address {config.ray_address}")
    import ray

    address, joined = config.ray_address, joins_cluster(config.ray_address)
    secrets = None
    if joined:
        from ...runtime.provenance.keys import load_keys

        check_reachable(address)
        secrets = load_keys(config.data.root, create=False).secrets()
    # the actors' log lines join the server's
    init_ray(address if joined else None, num_cpus=max(1, config.workers), log_to_driver=True)
    try:
        needed = config.ray_gpus_per_worker
        gpus = ray.cluster_resources().get("GPU", 0)
        if needed and gpus < needed:
            raise InvalidInputError(f"--ray-gpus-per-worker {needed:g}: the Ray cluster has {gpus:g} GPU(s)")
        yield secrets
    finally:
        ray.shutdown()


class JobWorkerActor:
    """One Ray actor: a job worker whose models stay loaded. ``ready`` and ``serve`` run in the actor's ``work``
    thread; ``wake`` and ``stop`` in its default thread, so they reach a busy loop."""

    def __init__(self, config: ServeConfig, index: int, key_secrets: dict[str, bytes] | None) -> None:
        self.config, self.index, self.key_secrets = config, index, key_secrets
        self._wake, self._stop = threading.Event(), threading.Event()
        self._executor: JobExecutor | None = None

    def ready(self) -> str:
        """Open the store and import the pipeline (once per process); returns this process's worker name."""
        if self._executor is None:
            provenance = None
            if self.key_secrets is not None:
                from ...runtime.provenance.keys import KeyStore
                from ...runtime.watermark.service import ProvenanceService

                provenance = ProvenanceService(keys=KeyStore.from_secrets(self.key_secrets),
                                               ledger=self.config.ledger_location)
            name = f"ray{self.index}.{socket.gethostname()}.{os.getpid()}"
            self._executor = start_worker(self.config, name, provenance)
        return self._executor.name

    def serve(self) -> None:
        """Claim and run jobs until ``stop``; the job in progress is finished first."""
        assert self._executor is not None, "ready() first"
        work(self._executor, self._stop.is_set, self._idle, POLL_S)

    def _idle(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


class RayWorkers:
    """``config.workers`` :class:`JobWorkerActor` on the Ray of :func:`ray_session`. ``on_lost(worker name, why)``
    is called (from the supervisor thread, or from ``stop``) for an actor that ended while it may have held a job."""

    def __init__(self, config: ServeConfig, on_lost: Callable[[str, str], None],
                 key_secrets: dict[str, bytes] | None = None) -> None:
        self.config, self.count, self.on_lost, self.key_secrets = config, config.workers, on_lost, key_secrets
        self._actors: list[Any] = [None] * self.count
        self._names: list[str | None] = [None] * self.count
        self._calls: dict[Any, tuple[int, str]] = {}  # pending ready/serve call -> (actor index, method)
        self._retry_at: dict[int, float] = {}  # actor index -> when to ask it to be ready again
        self._restarts = [0] * self.count
        self._started = 0
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._remote_class: Any = None

    def start(self) -> None:
        import ray

        self._remote_class = ray.remote(num_cpus=1, num_gpus=self.config.ray_gpus_per_worker, max_restarts=-1,
                                        max_task_retries=0, concurrency_groups={WORK: 1})(JobWorkerActor)
        for index in range(self.count):
            self._actors[index] = self._remote_class.remote(self.config, index, self.key_secrets)
            self._call(index, "ready")
        if self.count:
            self._supervisor = threading.Thread(target=self._supervise, name="backdrop-ray-supervisor", daemon=True)
            self._supervisor.start()

    def notify(self) -> None:
        for actor in self._actors:
            if actor is not None:
                actor.wake.remote()

    def status(self) -> dict[str, int | str]:
        """Workers configured, and how many actor processes have loaded the pipeline since the server started."""
        return {"runner": "ray", "workers": self.count, "workers_started": self._started}

    def _call(self, index: int, method: str) -> None:
        self._calls[getattr(self._actors[index], method).options(concurrency_group=WORK).remote()] = (index, method)

    def _supervise(self) -> None:
        import ray

        while not self._stopping.is_set():
            now = time.monotonic()
            for index, due in list(self._retry_at.items()):
                if due <= now:
                    del self._retry_at[index]
                    self._call(index, "ready")
            if not self._calls:
                self._stopping.wait(SUPERVISE_EVERY_S)
                continue
            done, _ = ray.wait(list(self._calls), num_returns=1, timeout=SUPERVISE_EVERY_S)
            for ref in done:
                if self._stopping.is_set():
                    return  # stop() takes over the calls left
                index, method = self._calls.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    self._failed(index, method, exc)
                    continue
                if method == "ready":
                    self._names[index] = result
                    self._started += 1
                    log.info("Ray worker %s ready", result)
                    self._call(index, "serve")

    def _failed(self, index: int, method: str, exc: Exception) -> None:
        """An actor died (Ray restarts it) or its loop raised: fail its job, then have it claim jobs again."""
        import ray

        name, why = self._names[index], _first_line(exc)
        if method == "ready" and isinstance(exc, ray.exceptions.ActorUnavailableError):
            self._retry_at[index] = time.monotonic() + SUPERVISE_EVERY_S  # Ray is restarting it: ask again soon
            return
        if method == "serve" and name is not None:
            log.error("Ray worker %s was lost (%s); its job, if any, is failed as retryable and the worker is "
                      "restarted", name, why)
            try:
                self.on_lost(name, "the Ray worker running this job was lost; submit the job again")
            except Exception:
                log.exception("recovering the job of Ray worker %s failed", name)
        else:
            log.error("Ray worker %d did not start (%s); it is replaced", index, why)
            with contextlib.suppress(Exception):  # already dead, most likely
                ray.kill(self._actors[index], no_restart=True)
            self._actors[index] = self._remote_class.remote(self.config, index, self.key_secrets)
        self._restarts[index] += 1
        self._retry_at[index] = time.monotonic() + min(MAX_RESTART_DELAY_S, 0.5 * 2 ** min(self._restarts[index], 6))

    def stop(self) -> None:
        """Let each actor finish its job for up to ``shutdown_grace_s``, then kill it; fail what it left."""
        import ray

        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
        for actor in self._actors:
            if actor is not None:
                actor.stop.remote()
        serving = {ref: index for ref, (index, method) in self._calls.items() if method == "serve"}
        done, _ = ray.wait(list(serving), num_returns=len(serving), timeout=self.config.shutdown_grace_s)
        left = [index for ref, index in serving.items() if ref not in done or not _succeeded(ref)]
        for actor in self._actors:
            if actor is not None:
                ray.kill(actor, no_restart=True)
        for index in left:
            name = self._names[index]
            if name is not None:
                self.on_lost(name, "the server stopped while this job ran; submit it again")


def _succeeded(ref) -> bool:
    import ray

    try:
        ray.get(ref, timeout=0)
    except ray.exceptions.RayError:
        return False
    return True


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
