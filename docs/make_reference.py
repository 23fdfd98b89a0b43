"""Regenerate the reference in docs/*.md from the code, so it cannot go stale.

    .venv/bin/python docs/make_reference.py          # rewrite the generated sections of docs/*.md (or: make docs)
    .venv/bin/python docs/make_reference.py --check  # exit 1 and name the stale files and sections

Each generated file holds its sections between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``;
everything outside the markers is hand-written and left alone (a missing file is created with bare
markers). Every file starts with an ``about`` section saying it is generated, from what, and by which
command. The sections and where they go:

- ``docs/nodes.md``: ``node-index`` and ``nodes``, from the node classes in
  ``comfyui_backdrop.nodes.NODE_CLASS_MAPPINGS`` (CATEGORY, DESCRIPTION, EXPERIMENTAL, INPUT_TYPES in widget
  order with tooltips, RETURN_TYPES / RETURN_NAMES / OUTPUT_TOOLTIPS, OUTPUT_NODE). Model combos are rendered
  as the folder they list, not as this machine's files: while rendering, the model locator answers every
  listing with a marker naming its folder.
- ``docs/model-folders.md``: ``model-folders``, from ``runtime.models.MODEL_FOLDERS``, plus which nodes and CLI
  options use each folder.
- ``docs/cli.md``: ``cli``, ``backdrop --help`` and ``backdrop <sub> --help`` from ``cli.main.build_parser()``,
  at a fixed width of 100 columns and without colour.

docs/troubleshooting.md and docs/watermark.md are hand-written: nothing here touches them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = 100
REGENERATE = "python docs/make_reference.py"

# file (relative to the repo root) -> (its title when the file is created, its generated sections in order)
FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "docs/nodes.md": ("Nodes", ("about", "node-index", "nodes")),
    "docs/cli.md": ("Command line", ("about", "cli")),
    "docs/model-folders.md": ("Model folders", ("about", "model-folders")),
}
_SOURCES = {
    "docs/nodes.md": "the node classes (`DESCRIPTION`, `INPUT_TYPES` and their tooltips, `RETURN_NAMES`, "
                     "`OUTPUT_TOOLTIPS`, `EXPERIMENTAL`)",
    "docs/cli.md": "the `backdrop` argument parser (`cli/main.py`: `build_parser()`)",
    "docs/model-folders.md": "`runtime.models.MODEL_FOLDERS` and the nodes and CLI options that name each folder",
}

_MARKER = "\x00models/{kind}\x00"
_MARKER_RE = re.compile("\x00models/([A-Za-z0-9_]+)\x00")
_INPUT_IMAGE = "backdrop-reference-input-image.png"  # what combos listing ComfyUI's input folder show
_INPUT_FOLDER = "backdrop-reference-input-folder"
_INPUT_NAMES = {_INPUT_IMAGE: "an image in ComfyUI's `input` folder",
                _INPUT_FOLDER: "a folder in ComfyUI's `input` folder"}
_PRESET_ENVS = ("BACKDROP_STYLES_FILE", "BACKDROP_COMPOSITIONS_FILE")


# --------------------------------------------------------------------------------------------- sections

def begin_marker(name: str) -> str:
    return f"<!-- generated:{name} -->"


def end_marker(name: str) -> str:
    return f"<!-- /generated:{name} -->"


def read_sections(text: str, names: tuple[str, ...] | None = None) -> dict[str, str]:
    """The current body of every generated section found in ``text`` (without the markers)."""
    found = {}
    for name in names or re.findall(r"<!-- generated:([\w-]+) -->", text):
        begin, end = begin_marker(name), end_marker(name)
        if begin in text and end in text:
            found[name] = text.split(begin, 1)[1].split(end, 1)[0].strip("\n")
    return found


def replace_sections(text: str, sections: dict[str, str]) -> str:
    """``text`` with each section's body replaced; a section whose markers are missing is an error."""
    for name, body in sections.items():
        begin, end = begin_marker(name), end_marker(name)
        if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
            raise ValueError(f"the file needs exactly one {begin} ... {end} pair")
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{body.strip(chr(10))}\n{end}{tail}"
    return text


def skeleton(path: str) -> str:
    """What a missing generated file starts as: its title, and its sections' markers with nothing between."""
    title, names = FILES[path]
    about, rest = names[0], names[1:]
    parts = [f"{begin_marker(about)}\n{end_marker(about)}", f"# {title}"]
    parts += [f"{begin_marker(name)}\n{end_marker(name)}" for name in rest]
    return "\n\n".join(parts) + "\n"


def render_about(path: str) -> str:
    return (f"> **Generated file.** Its reference sections come from {_SOURCES[path]},\n"
            f"> written by `{REGENERATE}` (or `make docs`); `tests/test_readme.py` fails while they are stale.\n"
            f"> Change the code and regenerate; only the text outside the `<!-- generated:... -->` markers is "
            f"written by hand.")


def render_sections() -> dict[str, dict[str, str]]:
    """Every generated section of every file, rendered from the code as it is now: {file: {section: body}}."""
    with reference_environment() as inputs:
        nodes = collect_nodes(inputs)
        parser = _parser()
        bodies = {"node-index": render_node_index(nodes), "nodes": render_nodes(nodes),
                  "model-folders": render_model_folders(nodes, parser), "cli": render_cli(parser)}
    return {path: {name: (render_about(path) if name == "about" else bodies[name]) for name in names}
            for path, (_, names) in FILES.items()}


def render_file(path: str, current: str | None, sections: dict[str, str]) -> str:
    """The whole text ``path`` should have: ``current`` (or its skeleton) with its generated sections replaced."""
    return replace_sections(skeleton(path) if current is None else current, sections)


def stale_files(root: Path = ROOT) -> dict[str, list[str]]:
    """Per generated file under ``root`` that differs from what the code gives now: its stale section names
    (every section when the file is missing)."""
    stale = {}
    for path, sections in render_sections().items():
        file = root / path
        if not file.exists():
            stale[path] = list(sections)
            continue
        current = read_sections(file.read_text(encoding="utf-8"), tuple(sections))
        names = [name for name, body in sections.items() if current.get(name) != body.strip("\n")]
        if names:
            stale[path] = names
    return stale


# ------------------------------------------------------------------------------------------ environment

@contextlib.contextmanager
def reference_environment() -> Iterator[Path]:
    """Shipped presets, markers instead of the listings of model and input folders, 100 columns, no colour.
    Yields the input folder the nodes' host should list."""
    from comfyui_backdrop.runtime import models

    class FolderMarkers(models.ModelLocator):
        def list(self, kind: str) -> list[str]:
            models.MODEL_FOLDERS[kind]  # unknown kinds still fail loudly
            return [_MARKER.format(kind=kind)]

    saved_env = {k: os.environ.get(k) for k in (*_PRESET_ENVS, "COLUMNS", "LINES",
                                                "NO_COLOR", "PYTHON_COLORS")}
    previous = models.get_locator()
    with tempfile.TemporaryDirectory() as inputs:
        Path(inputs, _INPUT_IMAGE).touch()
        Path(inputs, _INPUT_FOLDER).mkdir()
        try:
            for key in _PRESET_ENVS:
                os.environ.pop(key, None)
            os.environ.update({"COLUMNS": str(COLUMNS), "LINES": "50",
                               "NO_COLOR": "1", "PYTHON_COLORS": "0"})
            models.set_locator(FolderMarkers(lambda kind: [], description="docs reference"))
            yield Path(inputs)
        finally:
            models.set_locator(previous)
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


# ---------------------------------------------------------------------------------------------- nodes

def collect_nodes(input_dir: Path) -> list[dict[str, Any]]:
    """One dict per registered node: id, display name, category, description, inputs, outputs, flags. Combos that
    list input files list ``input_dir``."""
    from comfyui_backdrop.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from comfyui_backdrop.nodes.comfy_host import bind_host
    from comfyui_backdrop.runtime.host import HeadlessHost

    nodes = []
    for node_id, cls in bind_host(NODE_CLASS_MAPPINGS, HeadlessHost(input_dir, input_dir)).items():
        schema = cls.INPUT_TYPES()
        inputs = [(name, spec, section == "optional") for section in ("required", "optional")
                  for name, spec in schema.get(section, {}).items()]
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        listed = getattr(cls, "OUTPUT_IS_LIST", None) or (False,) * len(cls.RETURN_TYPES)
        tooltips = getattr(cls, "OUTPUT_TOOLTIPS", None) or ("",) * len(cls.RETURN_TYPES)
        nodes.append({"id": node_id, "name": NODE_DISPLAY_NAME_MAPPINGS.get(node_id, node_id),
                      "category": cls.CATEGORY, "description": getattr(cls, "DESCRIPTION", ""),
                      "inputs": inputs,
                      "outputs": list(zip(names, cls.RETURN_TYPES, listed, tooltips, strict=True)),
                      "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
                      "experimental": bool(getattr(cls, "EXPERIMENTAL", False))})
    return nodes


def render_node_index(nodes: list[dict[str, Any]]) -> str:
    lines = ["| node | category | what it does |", "|---|---|---|"]
    for node in _by_category(nodes):
        link = f"[**{_text(node['name'])}**](#{anchor(_heading(node))})"
        if node["experimental"]:
            link += " *(experimental)*"
        lines.append(f"| {link} `{node['id']}` | {node['category']} | {_text(first_sentence(node['description']))} |")
    return "\n".join(lines)


def render_nodes(nodes: list[dict[str, Any]]) -> str:
    out = []
    category = None
    for node in _by_category(nodes):
        if node["category"] != category:
            category = node["category"]
            out.append(f"{chr(10) if out else ''}### {category}")
        out.append(f"\n#### {_heading(node)}\n")
        out.append(_text(node["description"]))
        if node["experimental"]:
            out.append("\n*Experimental (`EXPERIMENTAL = True`): ComfyUI flags it in the node library; its inputs "
                       "and outputs may still change.*")
        if node["output_node"]:
            out.append("\n*Output node: ComfyUI runs it even when nothing is connected to its outputs.*")
        out.append("")
        if node["inputs"]:
            out.append("| input | type | default | values | notes |")
            out.append("|---|---|---|---|---|")
            out.extend(_input_row(name, spec, optional) for name, spec, optional in node["inputs"])
        else:
            out.append("No inputs.")
        if node["outputs"]:
            out += ["", "| output | type | notes |", "|---|---|---|"]
            out.extend(f"| `{name}` | {'list of ' if listed else ''}{kind} | {_text(tooltip)} |"
                       for name, kind, listed, tooltip in node["outputs"])
        else:
            out.append("\nNo outputs (it writes files).")
    return "\n".join(out)


def _by_category(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Grouped by category in order of first appearance; nodes keep their registration order."""
    order = list(dict.fromkeys(n["category"] for n in nodes))
    return sorted(nodes, key=lambda n: order.index(n["category"]))


def _heading(node: dict[str, Any]) -> str:
    return f"{node['name']} (`{node['id']}`)"


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def first_sentence(text: str) -> str:
    match = re.match(r"(.+?[.!?])(\s|$)", text.strip(), re.S)
    return (match.group(1) if match else text).strip()


def _input_row(name: str, spec: tuple, optional: bool) -> str:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    label = f"`{name}`" + (" *(optional)*" if optional else "")
    if isinstance(kind, list):
        return _row(label, "combo", _default(options.get("default"), kind), _choices(kind), options)
    type_name = kind
    if options.get("forceInput"):
        type_name += " (socket)"
    elif options.get("multiline"):
        type_name += " (multiline)"
    default = _value(options["default"]) if "default" in options else ""
    return _row(label, type_name, default, _range(kind, options), options)


def _row(label: str, type_name: str, default: str, values: str, options: dict) -> str:
    notes = _text(options.get("tooltip", ""))
    return f"| {label} | {type_name} | {default} | {values} | {notes} |"


def _default(default: Any, choices: list[str]) -> str:
    value = choices[0] if default is None and choices else default
    if value is None or _MARKER_RE.search(str(value)):
        return "first listed"
    return _value(value)


def _choices(choices: list[str]) -> str:
    """Literal choices in code; a model listing as the folder it reads (``<file>`` from ``models/kind``)."""
    from comfyui_backdrop.runtime.models import MODEL_FOLDERS

    parts = []
    for choice in choices:
        match = _MARKER_RE.search(choice)
        if choice in _INPUT_NAMES:
            parts.append(_INPUT_NAMES[choice])
        elif match is None:
            parts.append(_code(choice))
        else:
            kind = match.group(1)
            placeholder = "<folder>" if MODEL_FOLDERS[kind].holds_folders else "<file>"
            shown = choice[:match.start()] + placeholder + choice[match.end():]
            parts.append(f"`{shown}` in `models/{kind}`")
    return ", ".join(parts)


def _range(kind: str, options: dict) -> str:
    if kind not in ("INT", "FLOAT") or "min" not in options:
        return ""
    text = f"{_value(options['min'])} … {_value(options['max'])}"
    step = options.get("step")
    if step is not None and step != 1:
        text += f", step {_value(step)}"
    return text


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= 2**31 - 1 and (value + 1) & value == 0:
        return f"2^{(value + 1).bit_length() - 1}−1"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return _code(value) if value else "*(empty)*"
    return str(value)


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("\n", " ") + "`"


def _text(text: str) -> str:
    """Plain text safe in a markdown table cell: `code` spans kept, markup characters outside them escaped."""
    parts = re.split(r"(`[^`]*`)", " ".join(str(text).split()))
    for i, part in enumerate(parts):
        if part.startswith("`"):
            parts[i] = part.replace("|", "\\|")
        else:
            for char in ("\\", "*", "|"):
                part = part.replace(char, "\\" + char)
            parts[i] = part.replace("<", "&lt;")  # GitHub would read <name> as an HTML tag
    return "".join(parts)


# -------------------------------------------------------------------------------------- model folders

def render_model_folders(nodes: list[dict[str, Any]], parser: argparse.ArgumentParser) -> str:
    from comfyui_backdrop.runtime.models import MODEL_FOLDERS

    lines = ["| folder | holds | files | example | used by |", "|---|---|---|---|---|"]
    for kind, spec in MODEL_FOLDERS.items():
        files = "a folder per model" if spec.holds_folders else ", ".join(f"`{e}`" for e in spec.extensions)
        users = [f"`{n['id']}`" for n in nodes if _node_uses(n, kind)] + [f"`{o}`" for o in _cli_uses(parser, kind)]
        lines.append(f"| `{kind}` | {_text(spec.holds)} | {files} | `{spec.example}` | {', '.join(users) or '—'} |")
    return "\n".join(lines)


def _node_uses(node: dict[str, Any], kind: str) -> bool:
    """The node lists ``kind`` in a combo, or names ``models/kind`` in its description or a tooltip."""
    pattern = re.compile(rf"models/{re.escape(kind)}\b")
    texts = [node["description"]]
    for _, spec, _ in node["inputs"]:
        if isinstance(spec[0], list):
            texts.extend(spec[0])
        if len(spec) > 1:
            texts.append(str(spec[1].get("tooltip", "")))
    return any(pattern.search(t.replace("\x00", "")) for t in texts)


def _cli_uses(parser: argparse.ArgumentParser, kind: str) -> list[str]:
    pattern = re.compile(rf"models/{re.escape(kind)}\b")
    found = []
    for name, sub in _subcommands(parser).items():
        for action in sub._actions:
            if action.help and pattern.search(action.help):
                flag = max(action.option_strings, key=len) if action.option_strings else action.dest
                found.append(f"backdrop {name} {flag}")
    return found


# ------------------------------------------------------------------------------------------------- cli

def _parser() -> argparse.ArgumentParser:
    from comfyui_backdrop.cli.main import build_parser

    return build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def render_cli(parser: argparse.ArgumentParser) -> str:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    out = [f"<!-- Generated from cli/main.py by {REGENERATE}: argparse of Python {version}, "
           f"{COLUMNS} columns. -->", "", "### `backdrop`", "", "```text", "$ backdrop --help",
           parser.format_help().rstrip(), "```"]
    for name, sub in _subcommands(parser).items():
        out += ["", f"### `backdrop {name}`", "", "```text", f"$ backdrop {name} --help", sub.format_help().rstrip(),
                "```"]
    return "\n".join(out)


def cli_python_version(section: str) -> str | None:
    """The Python version a rendered ``cli`` section was made with (argparse's layout varies by version)."""
    match = re.search(r"argparse of Python (\d+\.\d+)", section)
    return match.group(1) if match else None


def cli_option_strings(section_or_parser: str | argparse.ArgumentParser) -> dict[str, set[str]]:
    """Per subcommand, every option string (``--style``...) and positional name: the CLI's shape without
    argparse's layout. From a parser, or read back from the option lines of a rendered ``cli`` section."""
    if isinstance(section_or_parser, argparse.ArgumentParser):
        return {name: {s for a in sub._actions for s in (a.option_strings or [a.metavar or a.dest])} - _HELP
                for name, sub in _subcommands(section_or_parser).items()}
    found: dict[str, set[str]] = {}
    for block in re.split(r"\n#+ `backdrop ", section_or_parser)[1:]:
        name = block.split("`", 1)[0]
        help_text = block.split("```text", 1)[1].split("```", 1)[0]
        options: set[str] = set()
        for line in help_text.splitlines():
            match = re.match(r"  ([-a-z][^ ]*(?: [^ ]+)*?)(?:  |$)", line)  # the invocation, before the help
            if match:
                options |= set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", match.group(1)))
                if match.group(1)[0] != "-":
                    options.add(match.group(1).split()[0])
        found[name] = options - _HELP
    return found


_HELP = {"-h", "--help"}


# ------------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if a generated file is stale")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the repository whose docs/ to check or write (default: this one)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.root)
        for path, names in stale.items():
            print(f"{path}: stale generated sections: {', '.join(names)}; run {REGENERATE}")
        if not stale:
            print(f"{', '.join(FILES)}: up to date")
        return 1 if stale else 0
    for path, sections in render_sections().items():
        file = args.root / path
        current = file.read_text(encoding="utf-8") if file.exists() else None
        updated = render_file(path, current, sections)
        if updated == current:
            print(f"{path}: already up to date")
            continue
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=file.parent, suffix=".tmp",
                                         delete=False) as handle:
            handle.write(updated)
        os.chmod(handle.name, file.stat().st_mode & 0o777 if current is not None else 0o644)
        os.replace(handle.name, file)
        print(f"{path}: {'regenerated' if current is not None else 'created'} {', '.join(sections)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
