import pytest
import torch
from safetensors.torch import save_file

from comfyui_backdrop.runtime.errors import InvalidModelError, MissingModelError
from comfyui_backdrop.runtime.models import (
    MODEL_FOLDERS,
    ModelCache,
    ModelLocator,
    get_locator,
    load_state_dict,
)


def test_listing_only_shows_allowed_kinds(models_dir):
    (models_dir / "sams" / "sub").mkdir()
    (models_dir / "sams" / "a.pth").write_bytes(b"x")
    (models_dir / "sams" / "sub" / "b.safetensors").write_bytes(b"x")
    (models_dir / "sams" / "notes.txt").write_text("not a model")
    (models_dir / "sams" / ".backdrop-export-tmp").mkdir()
    (models_dir / "sams" / ".backdrop-export-tmp" / "half.safetensors").write_bytes(b"x")
    (models_dir / "sams" / ".partial.pth").write_bytes(b"x")
    (models_dir / "LLM" / "Florence-2-base").mkdir()
    (models_dir / "LLM" / "stray.bin").write_bytes(b"x")
    locator = get_locator()
    assert locator.list("sams") == ["a.pth", "sub/b.safetensors"]
    assert locator.list("LLM") == ["Florence-2-base"]
    assert locator.resolve("sams", "sub/b.safetensors") == models_dir / "sams" / "sub" / "b.safetensors"


@pytest.mark.parametrize("name", ["missing.pth", "../sams/a.pth", "/etc/passwd", "notes.txt"])
def test_resolve_refuses_unlisted_names_and_names_the_folder(models_dir, name):
    (models_dir / "sams" / "a.pth").write_bytes(b"x")
    (models_dir / "sams" / "notes.txt").write_text("x")
    with pytest.raises(MissingModelError) as err:
        get_locator().resolve("sams", name)
    message = str(err.value)
    assert "models/sams" in message and ".pth" in message and "sam_vit_b_01ec64.pth" in message


def test_every_folder_kind_has_an_example_in_its_error(tmp_path):
    locator = ModelLocator.from_models_dir(tmp_path)
    for kind, spec in MODEL_FOLDERS.items():
        with pytest.raises(MissingModelError, match=f"models/{kind}") as err:
            locator.resolve(kind, "nope")
        assert spec.example in str(err.value)


def test_unknown_kind_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown model folder kind"):
        ModelLocator.from_models_dir(tmp_path).list("vae_magic")


def test_env_var_sets_default_models_dir(tmp_path, monkeypatch):
    from comfyui_backdrop.runtime import models

    monkeypatch.setenv(models.MODELS_DIR_ENV, str(tmp_path))
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "x.safetensors").write_bytes(b"x")
    assert ModelLocator.from_models_dir().list("loras") == ["x.safetensors"]


def test_load_state_dict_safetensors_and_pth(tmp_path):
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    save_file(tensors, tmp_path / "a.safetensors")
    torch.save({"state_dict": tensors}, tmp_path / "b.pth")
    assert torch.equal(load_state_dict(tmp_path / "a.safetensors")["w"], tensors["w"])
    assert torch.equal(load_state_dict(tmp_path / "b.pth")["w"], tensors["w"])


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickled_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"w": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(InvalidModelError, match="evil.pth"):
        load_state_dict(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()


def test_corrupt_and_empty_files(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage" * 10)
    (tmp_path / "bad.pth").write_bytes(b"not a zip")
    for name in ("bad.safetensors", "bad.pth"):
        with pytest.raises(InvalidModelError, match=name):
            load_state_dict(tmp_path / name)


def test_model_cache_reuses_and_frees():
    cache = ModelCache()
    calls = []
    first = cache.get_or_load("k", lambda: calls.append(1) or object())
    assert cache.get_or_load("k", lambda: calls.append(1) or object()) is first
    assert calls == [1] and len(cache) == 1
    assert cache.free() == 1 and len(cache) == 0


class _Config:
    """A plain object pickled beside the tensors, as many training scripts save their settings."""

    def __init__(self) -> None:
        self.lr = 1e-4


def test_pickled_objects_are_refused_with_a_plain_message(tmp_path):
    # before: torch's advice was relayed ("Re-running torch.load with weights_only set to False will likely
    # succeed"), which is the one thing that runs the file's code
    torch.save({"w": torch.ones(2), "config": _Config()}, tmp_path / "trained.ckpt")
    with pytest.raises(InvalidModelError) as err:
        load_state_dict(tmp_path / "trained.ckpt")
    message = str(err.value)
    assert "trained.ckpt was refused for safety" in message and "pickled Python objects" in message
    assert "_Config" in message and "Nothing in it was run" in message and "safetensors" in message
    assert "weights_only" not in message and "likely succeed" not in message


def test_symlinked_model_subfolders_are_listed_and_loops_do_not_hang(models_dir, tmp_path):
    # before: Path.rglob did not follow a symlinked sub-folder, so models shared that way were invisible
    shared = tmp_path / "shared_loras"
    (shared / "styles").mkdir(parents=True)
    (shared / "styles" / "glam.safetensors").write_bytes(b"x")
    (shared / ".cache").mkdir()
    (shared / ".cache" / "hidden.safetensors").write_bytes(b"x")
    (shared / "styles" / "loop").symlink_to(shared, target_is_directory=True)  # a loop back up
    (models_dir / "loras" / "team").symlink_to(shared, target_is_directory=True)
    (models_dir / "loras" / "own.safetensors").write_bytes(b"x")
    (models_dir / "loras" / "linked.safetensors").symlink_to(shared / "styles" / "glam.safetensors")
    (models_dir / "loras" / "gone").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    locator = get_locator()
    assert locator.list("loras") == ["linked.safetensors", "own.safetensors", "team/styles/glam.safetensors"]
    assert locator.resolve("loras", "team/styles/glam.safetensors").read_bytes() == b"x"
