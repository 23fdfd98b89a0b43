"""The catalog run's manifest and exactly-once delivery, without Ray: keys, claimed names, resumption."""

from __future__ import annotations

import os

import cv2
import pytest

from comfyui_backdrop.cli.catalog.manifest import DONE, MANIFEST_FILENAME, RunManifest, settings_digest
from comfyui_backdrop.cli.main import build_parser
from comfyui_backdrop.cli.run_plan import RunPlan
from tests.fixtures.images import studio_product_photo


def _plan(tmp_path, *extra: str) -> RunPlan:
    return RunPlan.from_args(build_parser().parse_args(["run", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                                        "--quiet", *extra]))


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"p{i}.png"), studio_product_photo(96, 80, seed=i)[0])
    return folder


def test_a_photo_is_claimed_once_and_skipped_when_done(tmp_path, photos):
    plan = _plan(tmp_path)
    manifest = RunManifest(plan.out)
    first = manifest.plan_work(plan)
    assert len(first.jobs) == 3 and not first.already_done
    assert [job.names.images[0].name for job in first.jobs] == [f"p{i}_minimal-studio.png" for i in range(3)]
    manifest.finish(first.jobs[0].key, [first.jobs[0].names.images[0]], None)
    manifest.finish(first.jobs[1].key, [], "refused")
    again = manifest.plan_work(plan)
    assert [job.key for job in again.already_done] == [first.jobs[0].key]
    assert [job.key for job in again.jobs] == [first.jobs[1].key, first.jobs[2].key]  # a failed photo is retried
    assert again.jobs[0].names == first.jobs[1].names  # with the names it claimed the first time
    assert manifest.status(first.jobs[0].key) == DONE
    manifest.close()
    assert (plan.out / MANIFEST_FILENAME).exists()


def test_claimed_names_avoid_files_on_disk_and_other_claims(tmp_path, photos):
    plan = _plan(tmp_path)
    plan.out.mkdir()
    (plan.out / "p0_minimal-studio.png").write_bytes(b"the user's file")
    os.symlink(tmp_path / "nowhere", plan.out / "p1_minimal-studio.png")  # dangling links count as taken
    manifest = RunManifest(plan.out)
    names = [job.names.images[0].name for job in manifest.plan_work(plan).jobs]
    assert names == ["p0-1_minimal-studio.png", "p1-1_minimal-studio.png", "p2_minimal-studio.png"]
    other = _plan(tmp_path, "--seed", "7")  # other settings: other work, and names free of the first claims
    assert [job.names.images[0].name for job in manifest.plan_work(other).jobs] == [
        "p0-2_minimal-studio.png", "p1-2_minimal-studio.png", "p2-1_minimal-studio.png"]
    manifest.close()


def test_the_key_follows_content_name_and_settings(tmp_path, photos):
    plan = _plan(tmp_path)
    manifest = RunManifest(plan.out)
    keys = {job.source.name: job.key for job in manifest.plan_work(plan).jobs}
    cv2.imwrite(str(photos / "p0.png"), studio_product_photo(96, 80, seed=9)[0])  # edited since: new work
    os.utime(photos / "p0.png", ns=(1, 1))
    changed = {job.source.name: job.key for job in manifest.plan_work(plan).jobs}
    assert changed["p0.png"] != keys["p0.png"] and changed["p1.png"] == keys["p1.png"]
    (photos / "copy.png").write_bytes((photos / "p1.png").read_bytes())  # same bytes, another name: its own photo
    assert len({job.key for job in manifest.plan_work(_plan(tmp_path)).jobs}) == 4
    assert settings_digest(plan)[0] != settings_digest(_plan(tmp_path, "--style", "soft spring"))[0]
    assert settings_digest(plan)[0] == settings_digest(_plan(tmp_path, "--quiet"))[0]
    manifest.close()


def test_idempotency_keys_are_one_a_picture(tmp_path, photos):
    plan = _plan(tmp_path)
    manifest = RunManifest(plan.out)
    job = manifest.plan_work(plan).jobs[0]
    assert job.idempotency_keys == (f"backdrop-run/{job.key}/0",)
    assert type(job).from_json(job.to_json()) == job
    manifest.close()


def test_one_run_at_a_time_writes_into_a_folder(tmp_path, photos):
    from comfyui_backdrop.runtime.errors import InvalidInputError

    plan = _plan(tmp_path)
    first = RunManifest(plan.out)
    with pytest.raises(InvalidInputError, match="another catalog run is writing into"):
        RunManifest(plan.out)
    first.close()
    RunManifest(plan.out).close()  # free again once the first run ended


def test_a_damaged_manifest_is_a_clear_error_not_a_traceback(tmp_path, photos):
    from comfyui_backdrop.runtime.errors import InvalidInputError

    plan = _plan(tmp_path)
    plan.out.mkdir()
    (plan.out / MANIFEST_FILENAME).write_bytes(b"not a database at all, just bytes" * 100)
    with pytest.raises(InvalidInputError, match="move it away to start this catalog afresh"):
        RunManifest(plan.out)
    RunManifest(tmp_path / "elsewhere").close()  # the lock of the failed open was released
    (plan.out / MANIFEST_FILENAME).unlink()
    RunManifest(plan.out).close()
