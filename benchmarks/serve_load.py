"""Load benchmark of ``backdrop serve`` (issue 18): loopback only, bounded loops, the weight-free studio path.

    .venv/bin/python benchmarks/serve_load.py [--clients 50] [--jobs 20] [--workers 1] [--quota 100] [--out f.json]

Starts the real server (``backdrop serve``) in a temporary data folder and talks to it with httpx (asyncio, one
connection per client). Three phases:

1. **load**: ``--clients`` clients, one account each, ``--jobs`` jobs each, arriving over ``--ramp-s`` seconds.
   A client submits a job (with an Idempotency-Key), polls it every ``--poll-s`` until it ends, downloads its
   image (checking its SHA-256), then submits the next: an integration that waits for each result. Reports jobs
   lost (accepted but unknown or unfinished) or duplicated (one submission, two jobs; the database holds exactly
   the accepted jobs), 5xx answers, submission latency p50/p90/p99/max as the clients see it and the server's
   own share (its Server-Timing header), throughput, and whether a result is
   pixel-identical to ``backdrop run`` with the same seed (rebuilt from the CLI's output and the image's watermark
   ID: nothing else may differ).
2. **quota**: ``--clients`` clients race one account whose tier allows ``--quota`` images a day, 3 one-image jobs
   each, all released at once. Accepted jobs and delivered images must both be exactly ``--quota``. Their
   submission latencies are the burst figures (150 submissions in the same instant).
3. **sigkill**: the clients submit in a burst; the server is killed with SIGKILL after ``--kill-after``
   acceptances and restarted; requests that got no answer are re-sent with their Idempotency-Key. Every job
   accepted before the kill must be found after the restart and end (succeeded, or failed as retryable if it
   was running); the ledger must hold one record per delivered image.

Prints a summary (with the CPU model) and, with ``--out``, every number as JSON. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the shared test helpers (tests.*) are importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.serve.server_process import ServerProcess, create_account, png_bytes, write_tiers  # noqa: E402

TIERS = """
[tiers.bench]
requests_per_minute = 1000000
images_per_day = 1000000
max_resolution = 4096
max_variations = 8
concurrent_jobs = 1000

[tiers.quota]
requests_per_minute = 1000000
images_per_day = {quota}
max_resolution = 4096
max_variations = 8
concurrent_jobs = 1000
"""
TERMINAL = ("succeeded", "failed", "canceled")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


class Tally:
    """Every answer of a phase: status counts, submission latencies, ids per Idempotency-Key."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.latencies_ms: list[float] = []
        self.server_ms: list[float] = []  # the server's own time (its Server-Timing header)
        self.accepted: dict[str, str] = {}  # Idempotency-Key -> job id
        self.replayed = 0
        self.unanswered: list[tuple[str, bytes, dict]] = []  # (key, photo, fields) of requests without an answer
        self.errors: list[str] = []

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


async def submit(client: httpx.AsyncClient, tally: Tally, key: str, photo: bytes, fields: dict) -> str | None:
    started = time.perf_counter()
    try:
        answer = await client.post("/v1/jobs", files={"photo": ("p.png", photo, "image/png")}, data=fields,
                                   headers={"Idempotency-Key": key})
    except httpx.HTTPError as exc:
        tally.unanswered.append((key, photo, fields))
        tally.errors.append(f"submit {key}: {type(exc).__name__}")
        return None
    tally.latencies_ms.append((time.perf_counter() - started) * 1000)
    timing = answer.headers.get("server-timing", "")
    if "dur=" in timing:
        tally.server_ms.append(float(timing.split("dur=")[1].split(",")[0]))
    tally.count(answer.status_code)
    if answer.status_code != 202:
        return None
    job_id = answer.json()["id"]
    if answer.headers.get("idempotent-replayed") == "true":
        tally.replayed += 1
    previous = tally.accepted.setdefault(key, job_id)
    if previous != job_id:
        tally.errors.append(f"key {key} gave two jobs: {previous} and {job_id}")
    return job_id


async def finish(client: httpx.AsyncClient, tally: Tally, job_id: str, poll_s: float = 1.0, timeout: float = 1800.0
                 ) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = await client.get(f"/v1/jobs/{job_id}")
        tally.count(answer.status_code)
        if answer.status_code != 200:
            return {"id": job_id, "status": f"http {answer.status_code}", "images": []}
        job = answer.json()
        if job["status"] in TERMINAL or time.monotonic() > deadline:
            return job
        await asyncio.sleep(poll_s)


async def download(client: httpx.AsyncClient, tally: Tally, job: dict) -> list[bytes]:
    images = []
    for image in job["images"]:
        answer = await client.get(image["url"])
        tally.count(answer.status_code)
        if answer.status_code != 200 or hashlib.sha256(answer.content).hexdigest() != image["sha256"]:
            tally.errors.append(f"image {image['url']}: http {answer.status_code} or wrong SHA-256")
        images.append(answer.content)
    return images


def connect(server: ServerProcess, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=300,
                             limits=httpx.Limits(max_connections=1))


# ---- phase 1: load ---------------------------------------------------------------------------------------

async def load_phase(server: ServerProcess, keys: list[str], jobs: int, ramp_s: float, poll_s: float
                     ) -> tuple[Tally, dict[str, dict], float]:
    tally, finals = Tally(), {}
    photos = [png_bytes(160, 192, seed=i) for i in range(len(keys))]

    # Every client is made before the clock starts: making an httpx client costs ~20 ms of this process's CPU (its
    # SSL context), and making 50 inside the ramp stalled this event loop for a second, so that the clients meant
    # to arrive over ramp_s arrived together, in one burst (the quota phase measures bursts).
    clients = [connect(server, key) for key in keys]
    loop = asyncio.get_running_loop()
    begin = loop.time()

    async def client_loop(index: int) -> None:
        async with clients[index] as client:
            # clients arrive over ramp_s, not in one ms
            await asyncio.sleep(max(0.0, begin + ramp_s * index / max(1, len(keys)) - loop.time()))
            for j in range(jobs):
                fields = {"style": "Soft Spring", "seed": str(1000 * index + j)}
                job_id = await submit(client, tally, f"load-{index}-{j}", photos[index], fields)
                if job_id is None:
                    continue
                job = await finish(client, tally, job_id, poll_s)
                finals[job_id] = job
                await download(client, tally, job)

    started = time.perf_counter()
    await asyncio.gather(*(client_loop(i) for i in range(len(keys))))
    return tally, finals, time.perf_counter() - started


def pixel_identical(server: ServerProcess, key: str, job: dict, seed: int, client_index: int) -> bool:
    """The served image is `backdrop run`'s output (same photo, style, seed) with the server's mark embedded
    around the exact product."""
    import cv2
    import numpy as np

    from comfyui_backdrop.cli.main import main
    from comfyui_backdrop.runtime.provenance.keys import load_keys
    from comfyui_backdrop.runtime.watermark.codec import embed
    from comfyui_backdrop.runtime.watermark.service import ProvenanceService

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "p.png").write_bytes(png_bytes(160, 192, seed=client_index))
        code = main(["run", str(folder / "p.png"), "--style", "Soft Spring", "--seed", str(seed), "--out",
                     str(folder / "o"), "--save-mask", "--quiet"])
        cli = cv2.cvtColor(cv2.imread(str(folder / "o" / "p_soft-spring.png")), cv2.COLOR_BGR2RGB)
        product = cv2.imread(str(folder / "o" / "p_mask.png"), cv2.IMREAD_GRAYSCALE) >= 128
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as client:
        data = client.get(job["images"][0]["url"]).content
    served = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    mark = int(ProvenanceService(server.data).verify_image(served).watermark_id, 16)
    rebuilt = np.where(product[..., None], cli, embed(cli, mark, load_keys(server.data).watermark_key))
    return code == 0 and bool(np.array_equal(served, rebuilt))


# ---- phase 2: quota --------------------------------------------------------------------------------------

async def quota_phase(server: ServerProcess, key: str, clients: int) -> tuple[Tally, int]:
    tally, photo, ids = Tally(), png_bytes(160, 192, seed=77), []
    start = asyncio.Event()

    async def racer(index: int) -> None:
        async with connect(server, key) as client:
            await start.wait()
            for j in range(3):
                job_id = await submit(client, tally, f"quota-{index}-{j}", photo, {"seed": str(index * 3 + j)})
                if job_id:
                    ids.append(job_id)

    tasks = [asyncio.create_task(racer(i)) for i in range(clients)]
    await asyncio.sleep(0.2)
    start.set()
    await asyncio.gather(*tasks)
    delivered = 0
    async with connect(server, key) as client:
        for job_id in ids:
            delivered += len((await finish(client, tally, job_id))["images"])
    return tally, delivered


# ---- phase 3: sigkill ------------------------------------------------------------------------------------

async def sigkill_phase(server: ServerProcess, keys: list[str], per_client: int, kill_after: int
                        ) -> tuple[Tally, ServerProcess, float]:
    tally, killed = Tally(), threading.Event()
    photos = [png_bytes(160, 192, seed=100 + i) for i in range(len(keys))]
    loop = asyncio.get_running_loop()
    kill_started = asyncio.Event()

    async def burst(index: int) -> None:
        async with connect(server, keys[index]) as client:
            for j in range(per_client):
                if killed.is_set():
                    tally.unanswered.append((f"kill-{index}-{j}", photos[index], {"seed": str(j)}))
                    continue
                await submit(client, tally, f"kill-{index}-{j}", photos[index], {"seed": str(j)})
                if len(tally.accepted) >= kill_after and not kill_started.is_set():
                    kill_started.set()
                    await loop.run_in_executor(None, server.kill)
                    killed.set()

    await asyncio.gather(*(burst(i) for i in range(len(keys))))
    accepted_before = dict(tally.accepted)
    restarted = ServerProcess(server.data, workers=server.workers, args=server.args).start()  # jobs queue meanwhile
    started = time.perf_counter()
    for key, photo, fields in list(tally.unanswered):
        async with connect(restarted, keys[int(key.split("-")[1])]) as client:
            await submit(client, tally, key, photo, fields)
    tally.accepted_before_kill = accepted_before  # type: ignore[attr-defined]
    tally.finals = {}  # type: ignore[attr-defined]
    for key, job_id in tally.accepted.items():
        owner = int(key.split("-")[1])
        async with connect(restarted, keys[owner]) as client:
            tally.finals[job_id] = await finish(client, tally, job_id)  # type: ignore[attr-defined]
    return tally, restarted, time.perf_counter() - started


# ---- main ------------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=20, help="jobs per client in the load phase")
    parser.add_argument("--workers", type=int, default=1, help="job worker processes of the server")
    parser.add_argument("--quota", type=int, default=100, help="images a day of the quota phase's tier")
    parser.add_argument("--poll-s", type=float, default=1.0, help="load phase: a client's interval between status "
                                                                  "requests while its job runs")
    parser.add_argument("--ramp-s", type=float, default=2.0,
                        help="load phase: clients start spread over this many seconds (the quota phase's clients "
                             "all fire at once: its latencies are the burst figures)")
    parser.add_argument("--kill-jobs", type=int, default=4, help="jobs per client in the sigkill phase's burst")
    parser.add_argument("--kill-after", type=int, default=100, help="acceptances before the SIGKILL")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args()

    from comfyui_backdrop.cli.serve.database import open_store
    from comfyui_backdrop.runtime.provenance.keys import load_keys
    from comfyui_backdrop.runtime.provenance.ledger import Ledger

    results: dict = {"cpu": cpu_model(), "cores": _cores(), "clients": args.clients, "jobs_per_client": args.jobs,
                     "workers": args.workers, "load_average_at_start": _load()}
    with tempfile.TemporaryDirectory(prefix="backdrop-serve-load-") as scratch:
        data = Path(scratch) / "data"
        write_tiers(data, TIERS.format(quota=args.quota))
        keys = [create_account(data, f"brand{i}", "bench")["api_key"] for i in range(args.clients)]
        quota_key = create_account(data, "quota", "quota")["api_key"]
        server = ServerProcess(data, workers=args.workers, args=("--no-access-log",)).start().wait_for_workers()
        try:
            tally, finals, seconds = asyncio.run(load_phase(server, keys, args.jobs, args.ramp_s, args.poll_s))
            store = open_store(None, data)
            in_database = sum(store.count_jobs(s) for s in ("queued", "running", *TERMINAL))
            store.close()
            expected = args.clients * args.jobs
            results["load"] = {
                "submitted": expected, "accepted": len(tally.accepted),
                "succeeded": sum(job["status"] == "succeeded" for job in finals.values()),
                "lost": expected - sum(job["status"] == "succeeded" for job in finals.values()),
                "duplicated": len(tally.accepted) - len(set(tally.accepted.values())) + (in_database - expected),
                "jobs_in_database": in_database, "http_5xx": tally.server_errors, "statuses": tally.statuses,
                "submit_ms_p50": round(percentile(tally.latencies_ms, 50), 1),
                "submit_ms_p90": round(percentile(tally.latencies_ms, 90), 1),
                "submit_ms_p99": round(percentile(tally.latencies_ms, 99), 1),
                "submit_ms_max": round(max(tally.latencies_ms), 1),
                "submits_within_50ms": f"{sum(ms <= 50 for ms in tally.latencies_ms) / len(tally.latencies_ms):.1%}",
                "server_ms_p50": round(percentile(tally.server_ms, 50), 1),
                "server_ms_p99": round(percentile(tally.server_ms, 99), 1),
                "poll_s": args.poll_s, "seconds": round(seconds, 1),
                "jobs_per_s": round(expected / seconds, 2),
                "errors": tally.errors[:10]}
            print(_line("load", results["load"]), flush=True)
            first = finals.get(tally.accepted.get("load-0-0", ""))
            try:
                identical = bool(first and first["status"] == "succeeded"
                                 and pixel_identical(server, keys[0], first, seed=0, client_index=0))
            except Exception as exc:  # report it; the other phases still run
                identical = f"not checked: {type(exc).__name__}: {exc}"
            results["load"]["pixel_identical_to_backdrop_run"] = identical
            print(f"load: pixel_identical_to_backdrop_run={identical}", flush=True)

            quota, delivered = asyncio.run(quota_phase(server, quota_key, args.clients))
            results["quota"] = {"limit": args.quota, "asked": 3 * args.clients, "accepted": len(quota.accepted),
                                "refused_429": quota.statuses.get(429, 0), "delivered_images": delivered,
                                "exact": len(quota.accepted) == delivered == args.quota,
                                "http_5xx": quota.server_errors,
                                "burst_submit_ms_p50": round(percentile(quota.latencies_ms, 50), 1),
                                "burst_submit_ms_p99": round(percentile(quota.latencies_ms, 99), 1)}
            print(_line("quota", results["quota"]), flush=True)

            kill, server, seconds = asyncio.run(sigkill_phase(server, keys, args.kill_jobs, args.kill_after))
            before = kill.accepted_before_kill
            finals = kill.finals
            found = [job_id for job_id in before.values() if job_id in finals and finals[job_id]["status"]
                     in TERMINAL]
            store = open_store(None, data)
            delivered_total = int(store.reading().one("SELECT COUNT(*) FROM job_images")[0])
            store.close()
            records = len(Ledger(data / "ledger.sqlite3", load_keys(data)))
            results["sigkill"] = {
                "accepted_before_kill": len(before), "found_after_restart": len(found),
                "lost": len(before) - len(found),
                "unanswered_resent": len(kill.unanswered), "replayed_after_restart": kill.replayed,
                "succeeded": sum(j["status"] == "succeeded" for j in finals.values()),
                "failed_retryable": sum(j["status"] == "failed" and j.get("retryable") for j in finals.values()),
                "other": sum(j["status"] not in ("succeeded", "failed") for j in finals.values()),
                "http_5xx": kill.server_errors, "seconds_to_drain_after_restart": round(seconds, 1),
                "delivered_images_total": delivered_total, "ledger_records_total": records,
                "one_record_per_delivered_image": records == delivered_total}
            print(_line("sigkill", results["sigkill"]), flush=True)
        finally:
            server.stop()
            results["server_log_tail"] = server.log()[-2000:]
    results.pop("server_log_tail")
    results["load_average_at_end"] = _load()
    print(f"\nCPU: {results['cpu']} ({results['cores']} cores); {args.workers} worker(s); "
          f"{args.clients} clients x {args.jobs} jobs; load average {results['load_average_at_start']} at the start, "
          f"{results['load_average_at_end']} at the end (other processes share the machine)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    ok = (results["load"]["lost"] == 0 and results["load"]["duplicated"] == 0 and results["load"]["http_5xx"] == 0
          and results["quota"]["exact"] and results["sigkill"]["lost"] == 0)
    return 0 if ok else 1


def _load() -> str:
    import os

    return " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def _line(name: str, figures: dict) -> str:
    shown = {k: v for k, v in figures.items() if k not in ("errors", "statuses")}
    return f"{name}: " + ", ".join(f"{k}={v}" for k, v in shown.items()) + (
        f"\n  errors: {figures['errors']}" if figures.get("errors") else "")


if __name__ == "__main__":
    sys.exit(main())
