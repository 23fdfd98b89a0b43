"""The generated reference in docs/*.md is what the code gives now; README.md is a front page of at most
15 KB; the links, pictures and paths in README.md and the docs it points to exist."""

from __future__ import annotations

import difflib
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.fixtures.docs_scripts import load_docs_script

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_LIMIT = 15 * 1024
HAND_WRITTEN = ("docs/troubleshooting.md",)


GENERATOR = load_docs_script("make_reference")
GENERATED = [(path, name) for path, (_, names) in GENERATOR.FILES.items() for name in names]


@pytest.fixture(scope="module")
def ref():
    return GENERATOR


@pytest.fixture(scope="module")
def rendered(ref):
    return ref.render_sections()


@pytest.fixture(scope="module")
def current(ref):
    """{file: {section: body}} as the files on disk hold them now."""
    found = {}
    for path, (_, names) in ref.FILES.items():
        file = ROOT / path
        found[path] = ref.read_sections(file.read_text(encoding="utf-8"), names) if file.exists() else {}
    return found


def _stale(ref, path: str, name: str, now: str, expected: str) -> str:
    diff = list(difflib.unified_diff(now.splitlines(), expected.splitlines(), path, "the code now",
                                     lineterm="", n=1))
    return (f"{path}'s generated section {name!r} is stale: run `{ref.REGENERATE}` (or `make docs`) and commit "
            f"{path}.\n" + "\n".join(diff[:40]))


# ----------------------------------------------------------------------------------- generated files

@pytest.mark.parametrize(("path", "name"), [pn for pn in GENERATED if pn[1] != "cli"])
def test_generated_sections_match_the_code(ref, rendered, current, path, name):
    assert (ROOT / path).exists(), f"{path} is missing: run `{ref.REGENERATE}`"
    assert name in current[path], f"{path} lacks {ref.begin_marker(name)} ... {ref.end_marker(name)}"
    now, expected = current[path][name], rendered[path][name].strip("\n")
    assert now == expected, _stale(ref, path, name, now, expected)


def test_cli_reference_matches_the_parser(ref, rendered, current):
    """Exact on the Python version it was generated with; elsewhere argparse lays help out differently,
    so the same options per subcommand are required instead."""
    path = "docs/cli.md"
    assert "cli" in current[path], f"{path} lacks {ref.begin_marker('cli')} ... {ref.end_marker('cli')}"
    now, expected = current[path]["cli"], rendered[path]["cli"].strip("\n")
    if ref.cli_python_version(now) == f"{sys.version_info.major}.{sys.version_info.minor}":
        assert now == expected, _stale(ref, path, "cli", now, expected)
    else:
        assert ref.cli_option_strings(now) == ref.cli_option_strings(ref._parser()), \
            _stale(ref, path, "cli", now, expected)


def test_cli_reference_reads_back_every_option(ref, rendered):
    cli = rendered["docs/cli.md"]["cli"]
    assert ref.cli_option_strings(cli) == ref.cli_option_strings(ref._parser())
    assert {"--checkpoint", "--dtype", "--models-dir", "inputs"} <= ref.cli_option_strings(cli)["run"]
    assert "$ backdrop --help" in cli


@pytest.mark.parametrize("path", list(GENERATOR.FILES))
def test_each_generated_file_says_so_at_the_top(ref, path):
    text = (ROOT / path).read_text(encoding="utf-8")
    assert text.startswith(ref.begin_marker("about")), f"{path} must open with its generated 'about' note"
    about = ref.read_sections(text, ("about",))["about"]
    assert "Generated" in about and f"`{ref.REGENERATE}`" in about


def test_every_node_is_documented(ref, rendered, current):
    from comfyui_backdrop.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    nodes = current["docs/nodes.md"]
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        description = getattr(cls, "DESCRIPTION", "")
        assert isinstance(description, str) and len(description.split()) >= 5, f"{node_id} needs a DESCRIPTION"
        heading = f"#### {NODE_DISPLAY_NAME_MAPPINGS[node_id]} (`{node_id}`)"
        assert heading in nodes.get("nodes", ""), f"{node_id} is missing from the node reference"
        assert f"`{node_id}`" in nodes.get("node-index", ""), f"{node_id} is missing from the index"
        for tooltip in getattr(cls, "OUTPUT_TOOLTIPS", None) or ():
            assert ref._text(tooltip) in rendered["docs/nodes.md"]["nodes"], \
                f"{node_id}'s output tooltip {tooltip!r} is missing from the reference"


def test_output_tooltips_and_experimental_are_shown(ref, monkeypatch, tmp_path):
    from comfyui_backdrop.nodes import NODE_CLASS_MAPPINGS

    class TooltipProbe:
        CATEGORY = "Backdrop/probe"
        DESCRIPTION = "A probe node that only exists in this test."
        RETURN_TYPES = ("IMAGE", "STRING")
        RETURN_NAMES = ("image", "notes")
        OUTPUT_IS_LIST = (False, True)
        OUTPUT_TOOLTIPS = ("the picture with a | pipe", "one note per image")
        EXPERIMENTAL = True
        FUNCTION = "run"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.1,
                                                        "tooltip": "how hard"})}}

    monkeypatch.setitem(NODE_CLASS_MAPPINGS, "BackdropTooltipProbe", TooltipProbe)
    nodes = ref.collect_nodes(tmp_path)
    text, index = ref.render_nodes(nodes), ref.render_node_index(nodes)
    block = text.split("#### BackdropTooltipProbe (`BackdropTooltipProbe`)", 1)[1]
    assert "| `image` | IMAGE | the picture with a \\| pipe |" in block
    assert "| `notes` | list of STRING | one note per image |" in block
    assert "| `strength` | FLOAT | 0.5 | 0 … 1, step 0.1 | how hard |" in block
    assert "*Experimental" in block
    probe_row = next(line for line in index.splitlines() if "`BackdropTooltipProbe`" in line)
    assert "*(experimental)*" in probe_row
    plain = next(n for n in nodes if n["id"] != "BackdropTooltipProbe" and not n["experimental"])
    assert "*(experimental)*" not in next(line for line in index.splitlines() if f"`{plain['id']}`" in line)


def test_model_combos_show_their_folder_not_this_machines_files(ref, rendered, models_dir):
    (models_dir / "sams" / "sam_vit_b_01ec64.pth").write_bytes(b"not read")
    (models_dir / "diffusers" / "my-sdxl").mkdir()
    from comfyui_backdrop.runtime.models import get_locator

    locator = get_locator()
    again = ref.render_sections()
    assert again == rendered
    assert get_locator() is locator, "the generator must put the locator back"
    nodes = again["docs/nodes.md"]["nodes"]
    assert "`<file>` in `models/sams`" in nodes and "sam_vit_b_01ec64.pth" not in nodes
    assert "`diffusers/<folder>` in `models/diffusers`" in nodes


def test_environment_is_restored(ref, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "33")
    monkeypatch.setenv("BACKDROP_STYLES_FILE", str(tmp_path / "studio_styles.json"))  # ignored while rendering
    ref.render_sections()
    assert os.environ["COLUMNS"] == "33"
    assert os.environ["BACKDROP_STYLES_FILE"] == str(tmp_path / "studio_styles.json")


def _copy_docs(ref, root: Path) -> None:
    for path in ref.FILES:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / path, root / path)


def test_check_flags_a_stale_file_and_a_rewrite_fixes_it(ref, tmp_path, capsys):
    _copy_docs(ref, tmp_path)
    copy = tmp_path / "docs" / "model-folders.md"
    copy.write_text(copy.read_text(encoding="utf-8").replace("| `sams` |", "| `samz` |", 1), encoding="utf-8")
    assert ref.main(["--check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "docs/model-folders.md: stale generated sections: model-folders" in out
    before = copy.read_text(encoding="utf-8")
    assert ref.main(["--root", str(tmp_path)]) == 0
    after = copy.read_text(encoding="utf-8")
    assert ref.main(["--check", "--root", str(tmp_path)]) == 0
    assert after != before and "| `samz` |" not in after
    outside = before.split(ref.begin_marker("model-folders"))[0]
    assert after.startswith(outside), "text outside the markers must stay as written"
    assert after.endswith(before.split(ref.end_marker("model-folders"))[1])


def test_a_missing_file_is_created_with_its_note_and_sections(ref, tmp_path, capsys):
    _copy_docs(ref, tmp_path)
    (tmp_path / "docs" / "cli.md").unlink()
    assert ref.main(["--check", "--root", str(tmp_path)]) == 1
    assert "docs/cli.md" in capsys.readouterr().out
    assert ref.main(["--root", str(tmp_path)]) == 0
    text = (tmp_path / "docs" / "cli.md").read_text(encoding="utf-8")
    assert text.startswith(ref.begin_marker("about")) and "# Command line" in text and "$ backdrop --help" in text
    assert ref.main(["--check", "--root", str(tmp_path)]) == 0


def test_missing_markers_are_an_error(ref):
    with pytest.raises(ValueError, match="generated:cli"):
        ref.replace_sections("# no markers here\n", {"cli": "x"})


# ------------------------------------------------------------------------------------------- README

def test_readme_is_a_front_page_of_at_most_15_kb():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, (f"README.md is {size} bytes, over {README_LIMIT}: move detail to docs/ "
                                  f"(nodes.md, cli.md, troubleshooting.md...) and link it")


def test_readme_shows_the_pictures_the_commands_and_the_reference():
    text = README.read_text(encoding="utf-8")
    for needed in ("docs/images/before_after.png", "docs/images/workflow_product_background.png",
                   "make demo", "make test", "requirements.txt", "custom_nodes", "## Layout",
                   "docs/nodes.md", "docs/cli.md", "docs/troubleshooting.md", "docs/watermark.md"):
        assert needed in text, f"README.md should mention {needed}"


def test_readme_lists_every_shipped_workflow():
    text = README.read_text(encoding="utf-8")
    for workflow in sorted((ROOT / "workflows").glob("*.json")):
        assert f"| `{workflow.stem}` |" in text, f"README.md's workflow table lacks {workflow.stem}"


# ------------------------------------------------------------------------------ links, pictures, paths

def _linked_pages() -> list[Path]:
    """The README, the generated and hand-written reference, and every other page under docs/."""
    pages = [README, *(ROOT / path for path in (*GENERATOR.FILES, *HAND_WRITTEN))]
    return pages + sorted(set((ROOT / "docs").glob("*.md")) - set(pages))


def _anchors(file: Path) -> set[str]:
    outside_code = re.sub(r"```.*?```", "", file.read_text(encoding="utf-8"), flags=re.S)
    return {GENERATOR.anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", outside_code, re.M)}


@pytest.mark.parametrize("page", _linked_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_exist(page):
    assert page.exists(), f"{page.relative_to(ROOT)} is missing"
    outside_code = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", outside_code)
    targets += re.findall(r"<img[^>]+src=\"([^\"]+)\"", outside_code)
    name = page.relative_to(ROOT)
    for target in targets:
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{name} links to {path}, which is not in the repo"
        assert linked == ROOT or ROOT in linked.parents, f"{name} links outside the repo: {path}"
        if fragment and linked.suffix == ".md":
            assert fragment in _anchors(linked), f"{name} links to {target}, but no heading has that anchor"


_REPO_PATH = re.compile(r"(?<![\w/.-])((?:assets|benchmarks|cli|docs|export|nodes|runtime|tests|workflows)"
                        r"/[\w./-]+\.(?:py|mjs|json|md|png|jpg))\b")


@pytest.mark.parametrize("page", _linked_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_repo_paths_named_in_the_text_exist(page):
    """Hand-written text only (generated sections follow the code); catches paths left behind by a move,
    such as the bench scripts that went from tests/bench_*.py to benchmarks/."""
    text = page.read_text(encoding="utf-8")
    for body in GENERATOR.read_sections(text).values():
        text = text.replace(body, "")
    assert "tests/bench_" not in text, "the bench scripts live in benchmarks/ now"
    for path in sorted(set(_REPO_PATH.findall(text))):
        assert (ROOT / path).exists(), f"{page.relative_to(ROOT)} names {path}, which is not in the repo"
