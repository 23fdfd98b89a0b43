"""``backdrop run --workers N`` on a real embedded Ray (2 CPUs): same pixels as the single-process run, resumable after
Ctrl-C, a killed worker retried, and exactly one output set and one ledger record a photo."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from comfyui_backdrop.cli.catalog.manifest import finished_count
from tests.fixtures.images import studio_product_photo
from tests.fixtures.processes import descendants_titled

pytest.importorskip("ray", reason="catalog runs need ray[data]: pip install 'comfyui-backdrop[cluster]'")

BACKDROP = str(Path(sys.executable).with_name("backdrop"))
RUN_TIMEOUT_S = 600


def _photos(folder: Path, count: int, side: int = 192) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"p{i:03d}.png"), studio_product_photo(side, side - 32, seed=i)[0][..., ::-1])
    return folder


def _env(home: Path) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "BACKDROP_ALLOCATOR")}
    return {**inherited, "BACKDROP_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def _start(args: list[str], home: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([BACKDROP, "run", *args, "--quiet"], env={**_env(home), **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    return process.returncode, out, err


def _wait_for(condition, what: str, timeout: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _outputs(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


def test_workers_give_the_single_process_pixels_in_both_layouts_and_a_rerun_skips_everything(tmp_path):
    photos = _photos(tmp_path / "in", 6)
    code, _, err = _finish(_start([str(photos), "--out", str(tmp_path / "ray"), "--workers", "2"], tmp_path / "home"))
    assert code == 0, err
    code, _, err = _finish(_start([str(photos), "--out", str(tmp_path / "single")], tmp_path / "home"))
    assert code == 0, err
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "single") == [f"p{i:03d}_minimal-studio.png"
                                                                           for i in range(6)]
    code, _, err = _finish(_start([str(photos), "--out", str(tmp_path / "split"), "--workers", "1", "--stages",
                                   "split"], tmp_path / "home"))  # the GPU layout's three pools, here on CPUs
    assert code == 0, err
    for name in _outputs(tmp_path / "ray"):
        single = cv2.imread(str(tmp_path / "single" / name), cv2.IMREAD_UNCHANGED)
        for layout in ("ray", "split"):
            assert np.array_equal(cv2.imread(str(tmp_path / layout / name), cv2.IMREAD_UNCHANGED), single), name
    code, _, err = _finish(_start([str(photos), "--out", str(tmp_path / "ray"), "--workers", "2"], tmp_path / "home"))
    assert code == 0, err
    assert "6 photo(s) skipped: finished in an earlier run" in err and "0 file(s) written" in err
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "single")


def test_an_interrupted_run_resumes_without_duplicates(tmp_path):
    count = 24  # enough that a fast machine is still mid-run when Ctrl-C lands
    photos, out = _photos(tmp_path / "in", count, side=320), tmp_path / "out"  # slow enough to act mid-run
    args = [str(photos), "--out", str(out), "--workers", "2", "--watermark", "--no-c2pa"]
    first = _start(args, tmp_path / "home")
    _wait_for(lambda: finished_count(out) >= 3 or first.poll() is not None, "3 photos done")
    first.send_signal(signal.SIGINT)  # Ctrl-C early in the run
    code, _, err = _finish(first)
    assert code == 130, err
    done_before = finished_count(out)
    assert 3 <= done_before < count and "not run (interrupted)" in err
    code, _, err = _finish(_start(args, tmp_path / "home"))
    assert code == 0, err
    assert f"{done_before} photo(s) skipped" in err
    assert _outputs(out) == [f"p{i:03d}_minimal-studio.png" for i in range(count)]  # no -1 copies
    _assert_one_record_each(tmp_path / "home", count)


def test_a_killed_worker_is_retried_and_nothing_is_duplicated(tmp_path):
    photos, out = _photos(tmp_path / "in", 12, side=320), tmp_path / "out"  # slow enough to act mid-run
    run = _start([str(photos), "--out", str(out), "--workers", "2", "--watermark", "--no-c2pa"], tmp_path / "home")
    _wait_for(lambda: finished_count(out) >= 3 or run.poll() is not None, "3 photos done")
    workers = descendants_titled(run.pid, "PhotoStage")
    assert workers, "no Ray photo worker found"
    environ = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")  # the command's malloc threshold
    assert b"GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432" in environ  # (the worker sets the trim itself)
    os.kill(workers[0], signal.SIGKILL)
    code, _, err = _finish(run)
    assert code == 0, err
    assert "12 file(s) written, 0 input(s) failed" in err
    assert _outputs(out) == [f"p{i:03d}_minimal-studio.png" for i in range(12)]
    _assert_one_record_each(tmp_path / "home", 12)


def _assert_one_record_each(home: Path, count: int) -> None:
    from comfyui_backdrop.runtime.provenance.keys import load_keys
    from comfyui_backdrop.runtime.provenance.ledger import LEDGER_FILENAME, Ledger

    ledger = Ledger(home / LEDGER_FILENAME, load_keys(home, create=False))
    records = list(ledger.records())
    keys = [r.metadata.get("idempotency_key") for r in records]
    assert len(records) == count and len(set(keys)) == count and None not in keys
    report = ledger.verify()
    assert report.ok, report.problems


def test_a_cluster_run_records_into_postgresql_with_keys_held_in_memory(tmp_path, postgres_url):
    """`ray start --head` as another machine would (its own, empty provenance home), then `--ray-address`: the workers
    sign with the driver's keys, received in memory, into the PostgreSQL ledger, and write no key anywhere."""
    from tests.fixtures.ray_cluster import ray_head

    photos, out, node_home = _photos(tmp_path / "in", 4), tmp_path / "out", tmp_path / "node-home"
    node_home.mkdir()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}  # as on a real cluster
    with ray_head({**os.environ, "BACKDROP_HOME": str(node_home), **auth}) as address:
        run = _start([str(photos), "--out", str(out), "--workers", "2", "--ray-address", address,
                      "--watermark", "--no-c2pa", "--ledger", postgres_url], tmp_path / "home", **auth)
        code, _, err = _finish(run)
    assert code == 0, err
    assert _outputs(out) == [f"p{i:03d}_minimal-studio.png" for i in range(4)]
    assert list(node_home.iterdir()) == []  # the node never created or wrote keys
    from comfyui_backdrop.runtime.provenance.keys import load_keys
    from comfyui_backdrop.runtime.provenance.ledger_backends import open_ledger

    ledger = open_ledger(postgres_url, load_keys(tmp_path / "home", create=False))
    records = list(ledger.records())
    assert len(records) == 4 and len({r.idempotency_key for r in records}) == 4
    assert ledger.verify().ok


def test_a_cluster_run_with_watermarks_needs_a_shared_ledger(tmp_path):
    code, _, err = _finish(_start([str(_photos(tmp_path / "in", 1)), "--out", str(tmp_path / "o"), "--workers", "1",
                                   "--ray-address", "127.0.0.1:1", "--watermark"], tmp_path / "home"))
    assert code == 2 and "--ledger postgresql://" in err, err


def test_joining_no_cluster_is_a_clear_error(tmp_path):
    code, _, err = _finish(_start([str(_photos(tmp_path / "in", 1)), "--out", str(tmp_path / "o"), "--workers", "1",
                                   "--ray-address", "127.0.0.1:9"], tmp_path / "home"))
    assert code == 2 and "cannot join the Ray cluster at --ray-address 127.0.0.1:9" in err and "Traceback" not in err


def test_without_workers_ray_is_not_imported(tmp_path):
    photos = _photos(tmp_path / "in", 1)
    script = ("import sys; from comfyui_backdrop.cli.main import main; "
              f"code = main(['run', {str(photos)!r}, '--out', {str(tmp_path / 'o')!r}, '--quiet']); "
              "print(code, 'ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.stdout.split()[-2:] == ["0", "False"], done.stderr


def test_a_workflow_catalog_publishes_one_folder_a_photo_and_resumes(tmp_path):
    import json

    photos, out = _photos(tmp_path / "in", 3), tmp_path / "out"
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "p000.png"}},
             "2": {"class_type": "BackdropProductMask",
                   "inputs": {"image": ["1", 0], "fill_holes": True, "keep": "main", "grow_px": 0,
                              "edge_refine": True, "feather_px": 0.0}},
             "3": {"class_type": "BackdropStudioBackdrop",
                   "inputs": {"image": ["1", 0], "product_mask": ["2", 0], "style": "Minimal Studio", "shadow": 0.5,
                              "vignette": 0.2, "seed": 0}},
             "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "studio"}}}
    workflow = tmp_path / "studio.json"
    workflow.write_text(json.dumps(graph))
    args = ["--workflow", str(workflow), str(photos), "--out", str(out), "--workers", "2"]
    code, _, err = _finish(_start(args, tmp_path / "home"))
    assert code == 0, err
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == [f"p{i:03d}_studio" for i in range(3)]
    assert all([f.name for f in (out / name).iterdir()] == ["studio_00001_.png"] for name in folders)
    summary = json.loads((out / "backdrop-summary.json").read_text())
    assert (summary["runs"], summary["ok"], summary["failed"]) == (3, 3, 0)
    assert not any((out / ".backdrop-staging").iterdir())
    code, _, err = _finish(_start(args, tmp_path / "home"))
    assert code == 0 and "3 run(s) skipped: finished in an earlier run" in err, err
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == folders


def test_the_dashboard_is_there_when_asked_for(tmp_path):
    code, _, err = _finish(_start([str(_photos(tmp_path / "in", 1)), "--out", str(tmp_path / "o"), "--workers", "1",
                                   "--ray-dashboard"], tmp_path / "home"))
    assert code == 0 and "Ray dashboard (while the run lasts): http://127.0.0.1:" in err, err


def test_a_catalog_larger_than_a_window_streams_window_by_window(tmp_path, monkeypatch):
    """The driver plans and streams WINDOW photos at a time (bounded memory); windows already done are skipped."""
    from comfyui_backdrop.cli.catalog import ray_run
    from comfyui_backdrop.cli.catalog.options import CatalogOptions
    from comfyui_backdrop.cli.main import build_parser
    from comfyui_backdrop.cli.run_plan import RunPlan

    monkeypatch.setattr(ray_run, "WINDOW", 2)
    photos, out = _photos(tmp_path / "in", 5), tmp_path / "out"
    plan = RunPlan.from_args(build_parser().parse_args(["run", str(photos / "p000.png"), str(photos / "p001.png"),
                                                        "--out", str(out), "--quiet"]))
    assert len(ray_run.run_catalog(plan, CatalogOptions(workers=1)).written) == 2
    plan = RunPlan.from_args(build_parser().parse_args(["run", str(photos), "--out", str(out), "--quiet"]))
    summary = ray_run.run_catalog(plan, CatalogOptions(workers=1))
    assert len(summary.already_done) == 2 and len(summary.written) == 3 and not summary.failed
    assert _outputs(out) == [f"p{i:03d}_minimal-studio.png" for i in range(5)]


def test_a_photo_whose_worker_dies_on_every_attempt_fails_and_the_run_ends(tmp_path):
    """Like a photo that runs its worker out of memory each time: bounded attempts, then FAILED and exit 1 (no
    endless restarts); a rerun tries it again and delivers it."""
    import threading

    photos, out = _photos(tmp_path / "in", 1, side=2048), tmp_path / "out"  # seconds of work: killed mid-task
    run = _start([str(photos), "--out", str(out), "--workers", "1"], tmp_path / "home")
    kills, first_seen = [], {}

    def killer() -> None:
        while run.poll() is None:
            for pid in descendants_titled(run.pid, "PhotoStage"):
                try:  # Ray titles an actor "ray::Class" when idle and "ray::Class.method" inside a call
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                except OSError:
                    continue
                method = title.rsplit(")", 1)[-1]
                busy = method.startswith(".") and method != ".__init__"  # on a photo: not starting, not idle
                if busy and time.monotonic() - first_seen.setdefault(pid, time.monotonic()) > 0.3:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    code, _, err = _finish(run)
    thread.join(10)
    assert code == 1 and "died (or failed) on all 4 attempts" in err and "1 input(s) failed" in err, err
    assert 1 <= len(kills) <= 4 and _outputs(out) == []
    code, _, err = _finish(_start([str(photos), "--out", str(out), "--workers", "1"], tmp_path / "home"))
    assert code == 0 and _outputs(out) == ["p000_minimal-studio.png"], err
