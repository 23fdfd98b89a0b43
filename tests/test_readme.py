"""README.md's reference sections are what the code gives now, and its links and pictures exist."""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def ref():
    """docs/make_readme_reference.py, imported from its file (docs/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("make_readme_reference", ROOT / "docs" / "make_readme_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered(ref):
    return ref.render_sections()


@pytest.fixture(scope="module")
def readme_sections(ref):
    return ref.read_sections(README.read_text(encoding="utf-8"))


def _stale(ref, name: str, current: str, expected: str) -> str:
    diff = list(difflib.unified_diff(current.splitlines(), expected.splitlines(), "README.md", "the code now",
                                     lineterm="", n=1))
    return (f"README.md's generated section {name!r} is stale: run `{ref.REGENERATE}` and commit README.md.\n"
            + "\n".join(diff[:40]))


@pytest.mark.parametrize("name", ["node-index", "nodes", "model-folders"])
def test_generated_sections_match_the_code(ref, rendered, readme_sections, name):
    assert name in readme_sections, f"README.md lacks {ref.begin_marker(name)} ... {ref.end_marker(name)}"
    current, expected = readme_sections[name], rendered[name].strip("\n")
    assert current == expected, _stale(ref, name, current, expected)


def test_cli_reference_matches_the_parser(ref, rendered, readme_sections):
    """Exact on the Python version it was generated with; elsewhere argparse lays help out differently,
    so the same options per subcommand are required instead."""
    assert "cli" in readme_sections, f"README.md lacks {ref.begin_marker('cli')} ... {ref.end_marker('cli')}"
    current, expected = readme_sections["cli"], rendered["cli"].strip("\n")
    if ref.cli_python_version(current) == f"{sys.version_info.major}.{sys.version_info.minor}":
        assert current == expected, _stale(ref, "cli", current, expected)
    else:
        assert ref.cli_option_strings(current) == ref.cli_option_strings(ref._parser()), \
            _stale(ref, "cli", current, expected)


def test_cli_reference_reads_back_every_option(ref, rendered):
    assert ref.cli_option_strings(rendered["cli"]) == ref.cli_option_strings(ref._parser())
    assert {"--checkpoint", "--dtype", "--models-dir", "inputs"} <= ref.cli_option_strings(rendered["cli"])["run"]


def test_every_node_is_documented(readme_sections):
    from comfyui_backdrop.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        description = getattr(cls, "DESCRIPTION", "")
        assert isinstance(description, str) and len(description.split()) >= 5, f"{node_id} needs a DESCRIPTION"
        heading = f"#### {NODE_DISPLAY_NAME_MAPPINGS[node_id]} (`{node_id}`)"
        assert heading in readme_sections.get("nodes", ""), f"{node_id} is missing from the node reference"
        assert f"`{node_id}`" in readme_sections.get("node-index", ""), f"{node_id} is missing from the index"


def test_model_combos_show_their_folder_not_this_machines_files(ref, rendered, models_dir):
    (models_dir / "sams" / "sam_vit_b_01ec64.pth").write_bytes(b"not read")
    (models_dir / "diffusers" / "my-sdxl").mkdir()
    from comfyui_backdrop.runtime.models import get_locator

    locator = get_locator()
    again = ref.render_sections()
    assert again == rendered
    assert get_locator() is locator, "the generator must put the locator back"
    assert "`<file>` in `models/sams`" in again["nodes"] and "sam_vit_b_01ec64.pth" not in again["nodes"]
    assert "`diffusers/<folder>` in `models/diffusers`" in again["nodes"]


def test_environment_is_restored(ref, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "33")
    monkeypatch.setenv("BACKDROP_STYLES_FILE", str(tmp_path / "studio_styles.json"))  # ignored while rendering
    ref.render_sections()
    assert os.environ["COLUMNS"] == "33"
    assert os.environ["BACKDROP_STYLES_FILE"] == str(tmp_path / "studio_styles.json")


def test_check_flags_a_stale_readme_and_a_rewrite_fixes_it(ref, tmp_path, capsys):
    copy = tmp_path / "README.md"
    copy.write_text(README.read_text(encoding="utf-8").replace("| `sams` |", "| `samz` |", 1), encoding="utf-8")
    assert ref.main(["--check", "--readme", str(copy)]) == 1
    assert "model-folders" in capsys.readouterr().out
    before = copy.read_text(encoding="utf-8")
    assert ref.main(["--readme", str(copy)]) == 0
    after = copy.read_text(encoding="utf-8")
    assert ref.main(["--check", "--readme", str(copy)]) == 0
    assert after != before and "| `samz` |" not in after
    outside = before.split(ref.begin_marker("model-folders"))[0]
    assert after.startswith(outside), "text outside the markers must stay as written"


def test_missing_markers_are_an_error(ref):
    with pytest.raises(ValueError, match="generated:cli"):
        ref.replace_sections("# no markers here\n", {"cli": "x"})


def _headings_anchors(text: str, ref) -> set[str]:
    outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
    return {ref.anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", outside_code, re.M)}


def test_relative_links_and_images_exist(ref):
    text = README.read_text(encoding="utf-8")
    outside_code = re.sub(r"```.*?```", "", text, flags=re.S)
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", outside_code)
    targets += re.findall(r"<img[^>]+src=\"([^\"]+)\"", outside_code)
    assert any(t.endswith(".png") for t in targets), "the README should show the before/after picture"
    anchors = _headings_anchors(text, ref)
    for target in targets:
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, fragment = target.partition("#")
        if path:
            assert (ROOT / path).exists(), f"README.md links to {path}, which is not in the repo"
        elif fragment:
            assert fragment in anchors, f"README.md links to #{fragment}, but no heading has that anchor"
