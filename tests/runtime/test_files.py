"""Writers that never hang, never overwrite and never leave partial files (runtime/files.py)."""

from __future__ import annotations

import errno
import os
import stat
import threading

import numpy as np
import pytest

from comfyui_backdrop.runtime import files
from comfyui_backdrop.runtime.files import replace_bytes_atomic, unique_path, write_bytes_exclusive
from comfyui_backdrop.runtime.imaging import write_image


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _in_thread(fn, timeout: float = 20.0):
    """Run ``fn`` in a daemon thread; fail (instead of hanging the suite) if it does not finish."""
    result: list = []

    def target() -> None:
        try:
            result.append(("ok", fn()))
        except BaseException as exc:
            result.append(("error", exc))

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        pytest.fail(f"did not finish within {timeout} s (the old writer looped forever here)")
    return result[0]


def test_a_dangling_symlink_at_the_name_is_skipped_not_followed_and_nothing_hangs(tmp_path):
    # before: Path.exists() is False for a dangling link, os.link says the name exists: 100% CPU forever
    target = tmp_path / "good_minimal-studio.png"
    target.symlink_to("/nonexistent/elsewhere.png")
    assert unique_path(target).name == "good_minimal-studio-1.png"
    kind, written = _in_thread(lambda: write_bytes_exclusive(target, b"payload"))
    assert kind == "ok" and written.name == "good_minimal-studio-1.png" and written.read_bytes() == b"payload"
    assert os.readlink(target) == "/nonexistent/elsewhere.png" and not os.path.exists("/nonexistent/elsewhere.png")
    assert _leftovers(tmp_path) == []


def test_image_writer_with_a_dangling_link_at_the_name(tmp_path):
    (tmp_path / "out.png").symlink_to(tmp_path / "missing.png")
    kind, written = _in_thread(lambda: write_image(tmp_path / "out.png", np.zeros((4, 4, 3), np.float32)))
    assert kind == "ok" and written.name == "out-1.png"
    assert not (tmp_path / "missing.png").exists()  # the link was not followed to create its target


@pytest.mark.parametrize("odd", ["folder", "fifo", "link_to_file", "dangling"])
def test_odd_entries_at_the_name_are_left_alone(tmp_path, odd):
    target = tmp_path / "result.json"
    if odd == "folder":
        target.mkdir()
    elif odd == "fifo":
        os.mkfifo(target)
    elif odd == "link_to_file":
        (tmp_path / "user.txt").write_text("user data")
        target.symlink_to(tmp_path / "user.txt")
    else:
        target.symlink_to(tmp_path / "nothing")
    kind, written = _in_thread(lambda: write_bytes_exclusive(target, b"{}"))
    assert kind == "ok" and written.name == "result-1.json"
    kind, error = _in_thread(lambda: write_bytes_exclusive(target, b"{}", rename=False))
    assert kind == "error" and isinstance(error, FileExistsError)
    assert "already exists" in str(error) and "never overwritten" in str(error) and "Errno" not in str(error)
    if odd == "dangling":
        assert "dangling" in str(error)
    if odd == "link_to_file":
        assert (tmp_path / "user.txt").read_text() == "user data"
    assert _leftovers(tmp_path) == []


def test_the_search_for_a_free_name_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_NAME_ATTEMPTS", 5)
    for name in ("a.png", "a-1.png", "a-2.png", "a-3.png", "a-4.png"):
        (tmp_path / name).symlink_to(tmp_path / "gone")
    kind, error = _in_thread(lambda: write_bytes_exclusive(tmp_path / "a.png", b"x"))
    assert kind == "error" and isinstance(error, FileExistsError)
    assert "no free name for a.png" in str(error) and "another folder" in str(error)
    assert _leftovers(tmp_path) == []


def test_a_name_taken_again_and_again_in_a_race_gives_up_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_NAME_ATTEMPTS", 7)

    def always_taken(_src, _dst):
        raise FileExistsError(errno.EEXIST, "File exists")

    monkeypatch.setattr(files.os, "link", always_taken)
    kind, error = _in_thread(lambda: write_bytes_exclusive(tmp_path / "a.png", b"x"))
    assert kind == "error" and "could not claim a free name for a.png" in str(error)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_output_modes_follow_the_umask_like_comfyui_saveimage(tmp_path, umask, expected):
    # before: every output was 0600 whatever the umask (mkstemp's mode survives the hard link)
    previous = os.umask(umask)
    try:
        assert files.current_umask() == umask
        written = write_bytes_exclusive(tmp_path / "out.png", b"x")
        image = write_image(tmp_path / "img.png", np.zeros((4, 4, 3), np.float32))
        cache = replace_bytes_atomic(tmp_path / "cache.bin", b"y")
        with open(tmp_path / "plain.txt", "w") as fh:  # what SaveImage's PIL save does
            fh.write("z")
    finally:
        os.umask(previous)
    for path in (written, image, cache, tmp_path / "plain.txt"):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path.name
    private = write_bytes_exclusive(tmp_path / "secret.key", b"k", mode=0o600)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


@pytest.mark.parametrize("where", ["fsync", "link"])
def test_no_temp_file_is_left_on_ctrl_c(tmp_path, monkeypatch, where):
    def interrupt(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, where, interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_exclusive(tmp_path / "out.png", b"x" * 1000)
    assert list(tmp_path.iterdir()) == []


def test_no_temp_file_is_left_when_replacing_fails(tmp_path, monkeypatch):
    (tmp_path / "cache").mkdir()  # os.replace of a file onto a folder fails

    with pytest.raises(OSError):
        replace_bytes_atomic(tmp_path / "cache", b"x")
    assert _leftovers(tmp_path) == []

    def interrupt(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        replace_bytes_atomic(tmp_path / "other.bin", b"x")
    assert _leftovers(tmp_path) == [] and not (tmp_path / "other.bin").exists()


def test_file_systems_without_hard_links_still_write_atomically_without_overwriting(tmp_path, monkeypatch):
    def no_links(_src, _dst):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(files.os, "link", no_links)
    (tmp_path / "out.png").write_bytes(b"user data")
    written = write_bytes_exclusive(tmp_path / "out.png", b"new")
    assert written.name == "out-1.png" and written.read_bytes() == b"new"
    assert (tmp_path / "out.png").read_bytes() == b"user data"
    with pytest.raises(FileExistsError, match="a file"):
        write_bytes_exclusive(tmp_path / "out.png", b"new", rename=False)
    assert _leftovers(tmp_path) == []


def test_an_output_folder_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "out").write_text("user file")
    with pytest.raises(NotADirectoryError, match="exists and is not a folder"):
        write_bytes_exclusive(tmp_path / "out" / "a.png", b"x")
    assert (tmp_path / "out").read_text() == "user file"
