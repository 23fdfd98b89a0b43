"""`backdrop accounts`, the tiers file and the extras check."""

from __future__ import annotations

import json

import pytest

from comfyui_backdrop.cli.main import main
from comfyui_backdrop.cli.serve.api_keys import hash_api_key, well_formed
from comfyui_backdrop.cli.serve.tiers import DEFAULT_TIERS_TOML, LIMITS, TierBook, parse_tiers
from comfyui_backdrop.runtime.errors import InvalidInputError


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_create_shows_the_key_once_and_stores_only_its_hash(tmp_path, capsys):
    data = tmp_path / "data"
    code, out, _ = run(capsys, "accounts", "create", "acme", "--tier", "pro", "--data", str(data))
    assert code == 0 and "created account acme (acct_" in out and "tier pro" in out
    key = out.strip().splitlines()[-1]
    assert well_formed(key)
    stored = b"".join(path.read_bytes() for path in data.glob("ledger.sqlite3*"))
    assert key.encode() not in stored and hash_api_key(key).encode() in stored
    code, out, _ = run(capsys, "accounts", "list", "--data", str(data))
    assert code == 0 and key not in out and key[:10] in out and "0/1000" in out
    assert (data / "tiers.toml").read_text() == DEFAULT_TIERS_TOML
    assert (data.stat().st_mode & 0o077) == 0, "the data folder is readable by others"


def test_revoke_set_tier_and_their_errors(tmp_path, capsys):
    data = str(tmp_path / "data")
    assert run(capsys, "accounts", "create", "acme", "--data", data)[0] == 0
    code, _, err = run(capsys, "accounts", "create", "acme", "--data", data)
    assert code == 2 and "already exists" in err
    code, _, err = run(capsys, "accounts", "create", "x y", "--data", data)
    assert code == 2 and "account name 'x y'" in err
    code, _, err = run(capsys, "accounts", "create", "other", "--tier", "gold", "--data", data)
    assert code == 2 and "no tier 'gold'" in err and "free, pro, studio" in err
    code, out, _ = run(capsys, "accounts", "set-tier", "acme", "studio", "--data", data, "--json")
    assert code == 0 and json.loads(out)["tier"] == "studio"
    code, _, err = run(capsys, "accounts", "revoke", "nobody", "--data", data)
    assert code == 2 and "no account is named 'nobody' (accounts: acme)" in err
    code, out, _ = run(capsys, "accounts", "revoke", "acme", "--data", data, "--json")
    assert code == 0 and json.loads(out)["status"] == "revoked"
    code, out, _ = run(capsys, "accounts", "list", "--data", data, "--json")
    (row,) = json.loads(out)
    assert row["status"] == "revoked" and row["tier"] == "studio" and "api_key" not in row


def test_default_tiers_set_every_limit():
    tiers = parse_tiers(DEFAULT_TIERS_TOML)
    assert list(tiers) == ["free", "pro", "studio"]
    for tier in tiers.values():
        assert set(tier.limits()) == set(LIMITS) and all(value > 0 for value in tier.limits().values())


@pytest.mark.parametrize("text, message", [
    ("[tiers.a]\nrequests_per_minute = 1", "lacks images_per_day, max_resolution"),
    ("[tiers.a]\nrequests_per_minute = 1\nimages_per_day = 1\nmax_resolution = 1\nmax_variations = 1\n"
     "concurrent_jobs = 1\ncolour = 2", "unknown settings colour"),
    ("[tiers.a]\nrequests_per_minute = -1\nimages_per_day = 1\nmax_resolution = 1\nmax_variations = 1\n"
     "concurrent_jobs = 1", "requests_per_minute must be a whole number"),
    ("[tiers", "is not valid TOML"),
    ("title = 'x'", "defines no tiers"),
])
def test_tier_file_mistakes_are_named(text, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_tiers(text)


def test_a_broken_edit_keeps_the_last_good_tiers(tmp_path, monkeypatch):
    from comfyui_backdrop.cli.serve import tiers as tiers_module

    path = tmp_path / "tiers.toml"
    path.write_text(DEFAULT_TIERS_TOML)
    book = TierBook(path)
    monkeypatch.setattr(tiers_module, "RELOAD_CHECK_S", 0.0)
    path.write_text("[tiers")
    assert book.get("pro").images_per_day == 1000 and "not valid TOML" in book.last_error
    path.write_text(DEFAULT_TIERS_TOML.replace("images_per_day = 1000", "images_per_day = 7"))
    assert book.get("pro").images_per_day == 7 and book.last_error is None
    with pytest.raises(InvalidInputError):
        path.write_text("[tiers")
        book.reload(strict=True)


def test_a_missing_extra_names_the_install_command():
    from comfyui_backdrop.cli.serve.extras import MissingExtraError, require

    with pytest.raises(MissingExtraError, match=r"pip install 'comfyui-backdrop\[db\]'"):
        require("no_such_module_for_backdrop", "db", "A PostgreSQL database")


def test_bad_database_setting(tmp_path, capsys):
    code, _, err = run(capsys, "accounts", "list", "--data", str(tmp_path), "--database", "mysql://x")
    assert code == 2 and "--database takes postgresql://" in err
