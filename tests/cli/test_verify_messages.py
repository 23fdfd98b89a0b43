"""Issue 14: `backdrop verify` messages say plainly what happened and what to do, and verify never creates keys.

Before: `--home typo` silently generated a fresh key set and then said "no watermark found"; a missing file read
"no watermark found (unreadable: ... does not exist)"; a wiped ledger read "0 record(s), chain intact"; a ledger
readable by other users went unmentioned."""

from __future__ import annotations

import json
import os

import pytest

from comfyui_backdrop.cli.main import main
from comfyui_backdrop.runtime.provenance.records import RecordContent
from comfyui_backdrop.runtime.saving import SaveOptions, save_image
from comfyui_backdrop.runtime.watermark.service import ProvenanceService
from tests.fixtures.images import studio_product_photo


@pytest.fixture(scope="module")
def marked_file(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    service = ProvenanceService(home)
    marked = service.mark(studio_product_photo(256, 320, seed=9)[0], RecordContent(account="acme", prompt="p"))
    path = save_image(marked.image, tmp_path_factory.mktemp("files") / "marked.png", SaveOptions(),
                      keys=service.keys, binding=service.provenance_for).path
    return home, path


def test_a_home_without_keys_is_an_error_and_nothing_is_created(marked_file, tmp_path, capsys):
    _, png = marked_file
    typo = tmp_path / "hoem"
    assert main(["verify", str(png), "--home", str(typo)]) == 2
    err = capsys.readouterr().err
    assert f"no provenance keys: the home {typo} (as given) does not exist; looked for {typo / 'keys'}" in err
    assert "--home" in err and "no watermark found" not in err
    assert not typo.exists(), "verify must never create a key set"
    typo.mkdir()
    assert main(["verify", str(png), "--home", str(typo)]) == 2
    assert "has no keys/ folder" in capsys.readouterr().err and os.listdir(typo) == []


def test_the_default_home_without_keys_names_the_environment_variable(marked_file, tmp_path, monkeypatch, capsys):
    _, png = marked_file
    monkeypatch.setenv("BACKDROP_HOME", str(tmp_path / "empty"))
    assert main(["verify", str(png)]) == 2
    assert "(from $BACKDROP_HOME) does not exist" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


def test_a_missing_file_says_it_does_not_exist(marked_file, tmp_path, capsys):
    home, png = marked_file
    missing = tmp_path / "nope.png"
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    assert main(["verify", str(missing), str(tmp_path / "dangling.png"), str(png), "--home", str(home)]) == 1
    out = capsys.readouterr().out
    assert f"{missing}:\n  not checked: {missing} does not exist\n" in out
    assert "a link to a missing file" in out
    assert out.count("no watermark found") == 0 and "unreadable" not in out


def test_a_wiped_ledger_is_reported_even_without_the_ledger_option(marked_file, tmp_path, capsys):
    import shutil

    home, png = marked_file
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    (copy / "ledger.sqlite3").write_bytes(b"")
    assert main(["verify", str(png), "--home", str(copy), "--json"]) == 1
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    [entry] = document["files"]
    assert entry["found"] and entry["record"] is None and any("wiped" in p for p in entry["problems"])
    assert any("wiped or replaced" in w for w in document["warnings"])
    assert "warning: the ledger" in captured.err and "wiped" in captured.err
    assert main(["verify", str(png), "--home", str(copy), "--ledger"]) == 1
    assert "chain broken: the ledger" in capsys.readouterr().out


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_ledger_readable_by_others_is_warned_about(marked_file, tmp_path, capsys):
    import shutil

    home, png = marked_file
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    assert main(["verify", str(png), "--home", str(copy)]) == 0
    assert "warning" not in capsys.readouterr().err
    (copy / "ledger.sqlite3").chmod(0o644)
    assert main(["verify", str(png), "--home", str(copy)]) == 0, "a warning, not a failure"
    err = capsys.readouterr().err
    assert "warning:" in err and "readable by other users (mode 0644)" in err and "chmod 600" in err
