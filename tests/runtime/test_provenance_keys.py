"""Key store: generated once on first use, reused, private permissions, safe under concurrent first use."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.provenance.keys import KEY_FILES, load_keys, provenance_home

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX-only")


def _snapshot(folder):
    return {name: ((folder / name).read_bytes(), (folder / name).stat().st_mtime_ns) for name in KEY_FILES}


def test_home_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKDROP_HOME", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert provenance_home() == tmp_path / "explicit"
    monkeypatch.delenv("BACKDROP_HOME")
    assert provenance_home() == tmp_path / "xdg" / "comfyui-backdrop"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert provenance_home() == tmp_path / "user" / ".config" / "comfyui-backdrop"


def test_keys_are_created_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKDROP_HOME", str(tmp_path / "home"))
    first = load_keys()
    before = _snapshot(first.folder)
    second = load_keys()
    assert second.folder == tmp_path / "home" / "keys"
    assert _snapshot(second.folder) == before, "existing keys must never be regenerated or rewritten"
    assert second.ledger_public_key_hex == first.ledger_public_key_hex
    assert len(second.watermark_key) == 32 and second.watermark_key == first.watermark_key
    assert len(set(second.watermark_key)) > 8, "the watermark key must be random bytes"
    # a second home gets different secrets
    other = load_keys(tmp_path / "other")
    assert other.watermark_key != first.watermark_key
    assert other.ledger_public_key_hex != first.ledger_public_key_hex


def test_signing_key_signs_and_chain_is_issued_by_root(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = load_keys(tmp_path)
    signature = keys.sign(b"hello")
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(keys.ledger_public_key_hex)).verify(signature, b"hello")
    leaf, root = x509.load_pem_x509_certificates(keys.c2pa_chain_pem.encode())
    assert leaf.issuer == root.subject and root.issuer == root.subject
    leaf.verify_directly_issued_by(root)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature


@posix_only
def test_private_permissions(tmp_path):
    keys = load_keys(tmp_path / "home")
    assert stat.S_IMODE(keys.folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
    for name in KEY_FILES:
        assert stat.S_IMODE((keys.folder / name).stat().st_mode) == 0o600, name


@posix_only
def test_readable_key_files_are_refused_with_the_fix(tmp_path):
    keys = load_keys(tmp_path)
    os.chmod(keys.folder / "watermark.key", 0o644)
    with pytest.raises(InvalidInputError, match="chmod 700"):
        load_keys(tmp_path)


def test_incomplete_key_folder_is_reported_not_regenerated(tmp_path):
    keys = load_keys(tmp_path)
    (keys.folder / "ledger_ed25519.pem").unlink()
    with pytest.raises(InvalidInputError, match="ledger_ed25519.pem"):
        load_keys(tmp_path)
    assert not (keys.folder / "ledger_ed25519.pem").exists()


def test_concurrent_first_use_yields_one_key_set(tmp_path):
    home = tmp_path / "race"
    results, errors = [], []
    barrier = threading.Barrier(6)

    def worker():
        try:
            barrier.wait()
            results.append(load_keys(home).ledger_public_key_hex)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert [p.name for p in home.iterdir()] == ["keys"], "losers' staging folders must be cleaned up"
