"""`backdrop verify`: a marked file with its C2PA manifest, an unmarked one, a tampered ledger, --json."""

from __future__ import annotations

import argparse
import json
import sqlite3

import cv2
import pytest

from comfyui_backdrop.cli.verify import add_verify_parser, run_verify
from comfyui_backdrop.runtime.provenance.records import RecordContent
from comfyui_backdrop.runtime.saving import SaveOptions, save_image
from comfyui_backdrop.runtime.watermark.service import ProvenanceService
from tests.fixtures.images import studio_product_photo
from tests.fixtures.watermark_images import skimage_photo


def verify(argv: list[str]) -> int:
    """The subcommand as runtime/cli.py wires it."""
    parser = argparse.ArgumentParser(prog="backdrop")
    add_verify_parser(parser.add_subparsers(dest="command", required=True))
    return run_verify(parser.parse_args(["verify", *argv]))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    folder = tmp_path_factory.mktemp("files")
    service = ProvenanceService(home)
    photo = studio_product_photo(320, 384, seed=8)[0]
    marked = service.mark(photo, RecordContent(account="acme", prompt="bottle on marble", seed=99))
    png = save_image(marked.image, folder / "marked.png", SaveOptions(), keys=service.keys,
                     binding=service.provenance_for).path
    cv2.imwrite(str(folder / "plain.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    return home, png, folder / "plain.jpg", marked


def test_marked_file_verifies(files, capsys):
    home, png, _, marked = files
    assert verify([str(png), "--home", str(home), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    [entry] = document["files"]
    assert entry["found"] and entry["watermark_id"] == marked.watermark_id
    assert entry["signature"] == "valid" and entry["chain"] == "intact" and not entry["tampered"]
    assert entry["record"]["prompt"] == "bottle on marble" and entry["record"]["seed"] == 99
    assert entry["pixels"] == "identical to the marked image"
    assert entry["c2pa"]["state"] == "Trusted" and entry["c2pa"]["watermark_ids"] == [marked.watermark_id]
    assert document["ledger"] is None


def test_a_spliced_file_verifies_and_the_report_says_how_much_carries_the_mark(files, tmp_path, capsys):
    """verify always localises, as Backdrop Verify does (the region search included; codec-level tests cover a
    region too small for the whole-image read), with or without --map."""
    home, _, _, marked = files
    other = skimage_photo("rocket")[:320, :384]
    composite = other.copy()
    composite[:, :192] = marked.image[:, :192]  # the marked half beside an unmarked photo
    path = tmp_path / "composite.png"
    cv2.imwrite(str(path), cv2.cvtColor(composite, cv2.COLOR_RGB2BGR))
    assert verify([str(path), "--home", str(home), "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)["files"]
    assert entry["found"] and entry["watermark_id"] == marked.watermark_id and "map" not in entry
    assert 0.3 < entry["presence"]["marked_fraction"] < 0.75
    assert verify([str(path), "--home", str(home)]) == 0
    assert "of the image" in capsys.readouterr().out  # "mark present in NN% of the image"


def test_unmarked_file_and_text_output(files, capsys, monkeypatch):
    home, png, plain, _ = files
    monkeypatch.setenv("BACKDROP_HOME", str(home))
    assert verify([str(plain), "--json"]) == 1
    [entry] = json.loads(capsys.readouterr().out)["files"]
    assert entry["found"] is False and entry["watermark_id"] == "" and entry["record"] is None
    assert entry["c2pa"]["present"] is False

    assert verify([str(png), str(plain), "--ledger"]) == 1
    captured = capsys.readouterr()
    assert "signature: valid; chain: intact" in captured.out and "no watermark found" in captured.out
    assert "1 record(s); signatures valid; chain intact" in captured.out
    assert "1 of 2 file(s) did not verify" in captured.err


def test_missing_and_unreadable_files_are_reported(files, tmp_path, capsys):
    home = files[0]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    assert verify([str(tmp_path / "broken.png"), str(tmp_path / "nope.png"), "--home", str(home), "--json"]) == 1
    entries = json.loads(capsys.readouterr().out)["files"]
    assert [e["found"] for e in entries] == [False, False]
    # issue 14 changed the missing file's wording: it says plainly that the file does not exist
    assert entries[0]["message"].startswith("unreadable") and entries[0]["error"] == entries[0]["message"]
    assert entries[1]["error"] == f"{tmp_path / 'nope.png'} does not exist"


def test_tampered_ledger_fails_verification(files, tmp_path, capsys):
    import shutil

    home, png = files[:2]
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    with sqlite3.connect(copy / "ledger.sqlite3") as con:
        con.execute("UPDATE records SET prompt = 'not what was asked'")
    assert verify([str(png), "--home", str(copy), "--json", "--ledger"]) == 1
    document = json.loads(capsys.readouterr().out)
    [entry] = document["files"]
    assert entry["found"] and entry["tampered"] and entry["signature"] == "invalid" and entry["chain"] == "broken"
    assert document["ledger"]["ok"] is False and document["ledger"]["signature"].startswith("invalid")


# ---- issue 14: records follow delivery; verify reads only ----------------------------------------------------------

def test_run_writes_a_record_only_for_a_file_it_delivered(tmp_path, monkeypatch):
    """Before: `backdrop run --watermark` recorded each output before saving it, so a failing save (here the --out
    folder turns into a file after the run was planned) still left a record."""
    from comfyui_backdrop.cli.main import build_parser
    from comfyui_backdrop.cli.run import RunModels, run_plan
    from comfyui_backdrop.cli.run_plan import RunPlan
    from comfyui_backdrop.runtime.imaging import write_image
    from comfyui_backdrop.runtime.watermark.service import get_service
    from tests.fixtures.images import to_float

    monkeypatch.setenv("BACKDROP_HOME", str(tmp_path / "home"))
    write_image(tmp_path / "bottle.png", to_float(studio_product_photo(256, 320, seed=4)[0]))
    out = tmp_path / "out"
    out.mkdir()
    plan = RunPlan.from_args(build_parser().parse_args(
        ["run", str(tmp_path / "bottle.png"), "--out", str(out), "--watermark", "--quiet"]))
    out.rmdir()
    out.write_bytes(b"a file now stands where the output folder was")
    summary = run_plan(plan, RunModels())
    assert summary.failed and not summary.outcomes[0].written
    assert len(get_service().ledger) == 0, "no record for an image that was never saved"
    assert not list(tmp_path.glob("**/.*.tmp"))

    out.unlink()
    summary = run_plan(plan, RunModels())
    [saved] = summary.outcomes[0].written
    assert not summary.failed and len(get_service().ledger) == 1
    assert verify([str(saved), "--home", str(tmp_path / "home")]) == 0


def test_verify_never_changes_the_ledger(files, tmp_path, capsys):
    import hashlib
    import shutil

    home, png = files[:2]
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    ledger = copy / "ledger.sqlite3"

    def fingerprint():
        return hashlib.sha256(ledger.read_bytes()).hexdigest(), ledger.stat().st_mtime_ns, ledger.stat().st_size

    before = fingerprint()
    assert verify([str(png), "--home", str(copy), "--ledger", "--json"]) == 0
    assert fingerprint() == before
    capsys.readouterr()
    ledger.write_bytes(b"")  # wiped: verify reports it and leaves the evidence as it found it
    assert verify([str(png), "--home", str(copy), "--ledger"]) == 1
    out = capsys.readouterr().out
    assert "0 record(s) (file empty (0 bytes))" in out and "wiped or replaced" in out
    assert ledger.stat().st_size == 0


@pytest.mark.parametrize("codec", [1, 2])
def test_run_marks_with_the_codec_asked_for_and_every_record_says_which(codec, tmp_path, monkeypatch, capsys):
    """``backdrop run --watermark --watermark-codec N``: the pixels carry codec N, the record states N and the
    C2PA soft binding names N; without --watermark the option is refused before any photo."""
    from comfyui_backdrop.cli.main import main
    from comfyui_backdrop.runtime.imaging import write_image
    from comfyui_backdrop.runtime.provenance.c2pa_manifest import read_manifest
    from comfyui_backdrop.runtime.watermark import detect
    from comfyui_backdrop.runtime.watermark.service import get_service
    from tests.fixtures.images import to_float

    monkeypatch.setenv("BACKDROP_HOME", str(tmp_path / "home"))
    write_image(tmp_path / "bottle.png", to_float(studio_product_photo(384, 448, seed=6)[0]))
    assert main(["run", str(tmp_path / "bottle.png"), "--out", str(tmp_path / "o"), "--watermark-codec", "2"]) == 2
    assert "--watermark-codec needs --watermark" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["run", str(tmp_path / "bottle.png"), "--out", str(tmp_path / "out"), "--watermark",
                 "--watermark-codec", str(codec), "--quiet"]) == 0
    [saved] = (tmp_path / "out").glob("*.png")
    service = get_service()
    found = detect(cv2.cvtColor(cv2.imread(str(saved)), cv2.COLOR_BGR2RGB), service.keys.watermark_key)
    [record] = list(service.ledger.records())
    assert found.found and found.version == codec and found.payload == record.id
    assert record.watermark_version == codec
    manifest = read_manifest(saved, keys=service.keys)
    assert manifest.watermark_versions == [codec]
    capsys.readouterr()
    assert verify([str(saved), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"][0]["found"]
