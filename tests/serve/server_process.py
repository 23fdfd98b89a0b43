"""Helpers for the ``backdrop serve`` tests: the real server in its own process on a loopback port, accounts made
with the real command, test photos."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from tests.fixtures.images import studio_product_photo

TEST_TIERS = """
[tiers.test]
requests_per_minute = 100000
images_per_day = 100000
max_resolution = 4096
max_variations = 8
concurrent_jobs = 1000

[tiers.small]
requests_per_minute = 100000
images_per_day = 100000
max_resolution = 150
max_variations = 1
concurrent_jobs = 1

[tiers.slow]
requests_per_minute = 3
images_per_day = 100
max_resolution = 4096
max_variations = 1
concurrent_jobs = 10

[tiers.edited]
requests_per_minute = 100000
images_per_day = 100000
max_resolution = 4096
max_variations = 1
concurrent_jobs = 1000

[tiers.race]
requests_per_minute = 100000
images_per_day = 100
max_resolution = 4096
max_variations = 8
concurrent_jobs = 1000
"""


def backdrop_command() -> list[str]:
    script = Path(sys.executable).with_name("backdrop")
    return [str(script)] if script.exists() else [sys.executable, "-m", "comfyui_backdrop.cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_bytes(height: int = 160, width: int = 192, seed: int = 3) -> bytes:
    photo, _ = studio_product_photo(height, width, seed=seed)
    ok, data = cv2.imencode(".png", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def decode(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def create_account(data: Path, name: str, tier: str, database: str | None = None) -> dict:
    """``backdrop accounts create NAME --tier TIER --data DATA --json``, in this process; returns its JSON."""
    from comfyui_backdrop.cli.main import main

    argv = ["accounts", "create", name, "--tier", tier, "--data", str(data), "--json"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv + (["--database", database] if database else [])) == 0
    return json.loads(out.getvalue())


class ServerProcess:
    """``backdrop serve`` in a child process on a free loopback port; its output goes to ``log_path``."""

    def __init__(self, data: Path, *, workers: int = 1, database: str | None = None, args: tuple[str, ...] = (),
                 tmpdir: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.data, self.workers, self.database, self.args, self.extra_env = data, workers, database, args, env or {}
        self.tmpdir = tmpdir or data.parent / f"{data.name}-systmp"
        self.log_path = data.parent / f"{data.name}-server.log"
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> ServerProcess:
        import httpx

        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [*backdrop_command(), "serve", "--data", str(self.data), "--port", str(self.port), "--workers",
                str(self.workers), *self.args]
        if self.database:
            argv += ["--database", self.database]
        env = {**os.environ, "TMPDIR": str(self.tmpdir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "OMP_NUM_THREADS": "1", **self.extra_env}
        env.pop("BACKDROP_HOME", None)  # the server's home is its data folder
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it)
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"backdrop serve exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"backdrop serve did not answer within {timeout} s:\n{self.log()}")

    def wait_for_workers(self, timeout: float = 120.0) -> ServerProcess:
        """Until every worker has loaded the pipeline (/healthz says so)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = httpx.get(f"{self.url}/healthz", timeout=5).json()
            if health["workers_started"] >= health["workers"]:
                return self
            time.sleep(0.2)
        raise AssertionError(f"the workers did not start within {timeout} s:\n{self.log()}")

    def client(self, key: str | None = None, headers: dict[str, str] | None = None):
        import httpx

        headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""


def wait_for(client, job_id: str, statuses=("succeeded", "failed", "canceled"), timeout: float = 120.0,
             predicate=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses and (predicate is None or predicate(job)):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {statuses} in {timeout} s: {job}")


def write_tiers(data: Path, text: str = TEST_TIERS) -> None:
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    (data / "tiers.toml").write_text(text, encoding="utf-8")
