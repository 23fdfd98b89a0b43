"""Who runs queued jobs. The API only queues them in the database; a runner takes them from there.

:class:`JobRunner` is the seam: ``start`` when the server starts, ``notify`` after each accepted job, ``status``
for /healthz, ``stop`` at shutdown. :class:`LocalWorkers` runs ``--workers N`` processes on this machine, each a loop of
``worker.work`` keeping its models loaded. ``ray_runner.RayWorkers`` (``--ray-address``) implements the same
methods with Ray actors running the same loop and claiming jobs from the same store, so the API, the database,
quotas and recovery stay as they are.

Worker processes are started with ``spawn`` (no inherited sockets, locks or threads), run at a lower CPU priority
than the API (``SCHED_IDLE`` on Linux, else nice 10: a busy worker does not slow submissions), ignore Ctrl-C
(the server stops them), and die with the server (``PR_SET_PDEATHSIG`` on Linux, a parent check elsewhere): a
server killed with SIGKILL leaves no worker behind to race its successor. A worker that dies is replaced, and the
job it was running is failed as retryable, with the images it had delivered kept.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .config import ServeConfig
from .worker import worker_main, worker_name

log = logging.getLogger("backdrop.serve")
SUPERVISE_EVERY_S = 0.5
MAX_RESTART_DELAY_S = 30.0


class JobRunner(Protocol):
    def start(self) -> None: ...

    def notify(self) -> None: ...

    def status(self) -> dict[str, int | str]: ...

    def stop(self) -> None: ...


class LocalWorkers:
    """``count`` worker processes on this machine. ``on_lost(worker name, why)`` is called (from the supervisor
    thread, or from ``stop``) for a worker that ended while it may have held a job."""

    def __init__(self, config: ServeConfig, on_lost: Callable[[str, str], None]) -> None:
        self.config, self.count, self.on_lost = config, config.workers, on_lost
        self._context = multiprocessing.get_context("spawn")
        self._wake = self._context.Event()
        self._stop = self._context.Event()
        self._ready = self._context.Value("i", 0)
        self._processes: list = [None] * self.count
        self._restarts = [0] * self.count
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start(self) -> None:
        for index in range(self.count):
            self._spawn(index)
        if self.count:
            self._supervisor = threading.Thread(target=self._supervise, name="backdrop-supervisor", daemon=True)
            self._supervisor.start()

    def notify(self) -> None:
        self._wake.set()

    def status(self) -> dict[str, int | str]:
        """Workers configured, and how many have loaded the pipeline since the server started."""
        return {"runner": "local", "workers": self.count, "workers_started": int(self._ready.value)}

    def _spawn(self, index: int) -> None:
        process = self._context.Process(target=worker_main, name=f"backdrop-worker-{index}", daemon=True,
                                        args=(self.config, index, self._wake, self._stop, os.getpid(), self._ready))
        process.start()
        self._processes[index] = process

    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_EVERY_S):
            for index, process in enumerate(self._processes):
                if process is None or process.is_alive() or self._stopping.is_set():
                    continue
                name = worker_name(index, process.pid)
                log.error("worker %s exited (code %s); its job, if any, is failed as retryable and the worker is "
                          "restarted", name, process.exitcode)
                try:
                    self.on_lost(name, f"the worker running this job exited (code {process.exitcode}); submit the "
                                       "job again")
                except Exception:
                    log.exception("recovering the job of worker %s failed", name)
                self._restarts[index] += 1
                delay = min(MAX_RESTART_DELAY_S, 0.5 * 2 ** min(self._restarts[index], 6))
                if self._stopping.wait(delay):
                    return
                self._spawn(index)

    def stop(self) -> None:
        """Let each worker finish its job for up to ``shutdown_grace_s``, then end it; fail what it left."""
        self._stopping.set()
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + self.config.shutdown_grace_s
        for index, process in enumerate(self._processes):
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
            if process.exitcode != 0:
                self.on_lost(worker_name(index, process.pid), "the server stopped while this job ran; submit it "
                                                              "again")
