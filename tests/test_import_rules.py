"""The layering of DESIGN.md, enforced: every import in the package is read (lazy ones inside functions too).

    cli/      may import runtime/, export/ and nodes/ (the application layer)
    nodes/    imports runtime/, and export/ for the engine nodes; the only package that touches ComfyUI
    export/   imports runtime/ only
    runtime/  imports none of nodes/, export/, cli/; no argparse (commands live in cli/)
    __init__  (the ComfyUI entry) imports nodes/ only

Imports inside the package are relative (ComfyUI imports the folder by path), and no module takes part in an import
cycle. The checker is also run on small synthetic trees holding each violation it must catch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "export", "nodes", "runtime")
ALLOWED = {  # top-level package -> the other top-level packages it may import
    "": {"nodes"},
    "cli": {"runtime", "export", "nodes"},
    "nodes": {"runtime", "export"},
    "export": {"runtime"},
    "runtime": set(),
}
EXPORT_IMPORTERS_IN_NODES = {"nodes.engines"}  # "nodes/ imports runtime/ (and export/ for the engine nodes)"
COMFYUI_MODULES = {"folder_paths", "comfy", "comfy_extras", "comfy_execution", "comfy_api", "server", "execution",
                   "nodes", "latent_preview", "node_helpers"}
FORBIDDEN_OUTSIDE_CLI = {"argparse"}  # parsing command lines is the application layer's job


def module_files(root: Path) -> dict[str, Path]:
    """{dotted module name relative to the package root ('' for the root __init__): file}."""
    files = {"": root / "__init__.py"} if (root / "__init__.py").is_file() else {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else ():
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(name: str, path: Path, modules: set[str]) -> list[tuple[str, int, bool]]:
    """(imported name, line, relative?) for every import statement in the file, resolved against ``modules``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, False) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if not node.level:
                found.append((node.module or "", node.lineno, False))
                continue
            base = package.split(".") if package else []
            base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:  # `from . import x` may name a submodule
                sub = f"{target}.{alias.name}" if target else alias.name
                found.append((sub if sub in modules else target, node.lineno, True))
    return found


def import_problems(root: Path) -> list[str]:
    """Every broken layering rule and every import cycle in the package at ``root``."""
    files = module_files(root)
    modules = set(files)
    graph: dict[str, set[str]] = {name: set() for name in files}
    problems = []
    for name, path in files.items():
        top = name.split(".")[0]
        where = f"{path.relative_to(root)}"
        for target, line, relative in imports_of(name, path, modules):
            head = target.split(".")[0]
            if not relative:
                if head == "comfyui_backdrop":
                    problems.append(f"{where}:{line}: absolute import of {target}; imports inside the package are "
                                    "relative (ComfyUI imports the folder by path)")
                elif head in COMFYUI_MODULES and top != "nodes":
                    problems.append(f"{where}:{line}: imports ComfyUI ({target}); only nodes/ may")
                elif head in FORBIDDEN_OUTSIDE_CLI and top != "cli":
                    problems.append(f"{where}:{line}: imports {target}; command-line parsing belongs in cli/")
                continue
            if target not in modules:
                problems.append(f"{where}:{line}: relative import of {target!r}, which is not a module here")
                continue
            graph[name].add(target)
            if head != top and head not in ALLOWED.get(top, set()):
                problems.append(f"{where}:{line}: {top or 'the root __init__'}/ must not import {head}/ ({target})")
            elif top == "nodes" and head == "export" and name not in EXPORT_IMPORTERS_IN_NODES:
                problems.append(f"{where}:{line}: only the engine nodes import export/ ({name} imports {target})")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module, or a module importing itself
    (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(_one_cycle(sorted(component), graph))
    return found


def _one_cycle(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A concrete path around the component, for the message."""
    members, path = set(component), [component[0]]
    while True:
        step = min(t for t in graph[path[-1]] if t in members)
        if step in path:
            return [*path[path.index(step):], step]
        path.append(step)


def test_the_package_follows_the_import_rules():
    assert import_problems(REPO) == []


def test_the_rules_see_every_package():
    files = module_files(REPO)
    assert {"cli.main", "cli.run", "runtime.host", "nodes.comfy_host", "export.engine_export"} <= set(files)
    assert sum(name.startswith("runtime.") for name in files) > 50  # lazy imports inside functions are read too


# ---- the checker fails on each violation the application-layer issue found ---------------------------------------

VIOLATIONS = {
    "a cycle between a command and the CLI": (
        {"cli/main.py": "def main():\n    from .run import run_command\n",
         "cli/run.py": "def run_command():\n    from .main import main\n"},
        "import cycle: cli.main -> cli.run -> cli.main"),
    "runtime/ importing nodes/": (
        {"runtime/workflow_command.py": "def f():\n    from ..nodes import comfy_bridge\n",
         "nodes/comfy_bridge.py": ""},
        "runtime/ must not import nodes/"),
    "runtime/ and export/ importing each other": (
        {"runtime/bench_command.py": "from ..export.bench import measure\n",
         "export/bench.py": "from ..runtime.imaging import read_image\n", "runtime/imaging.py": ""},
        "runtime/ must not import export/"),
    "a command living in runtime/": (
        {"runtime/cli.py": "import argparse\n"}, "command-line parsing belongs in cli/"),
    "export/ importing nodes/": (
        {"export/attach.py": "from ..nodes import comfy_bridge\n", "nodes/comfy_bridge.py": ""},
        "export/ must not import nodes/"),
    "nodes/ importing cli/": (
        {"nodes/masking.py": "from ..cli.inputs import collect_inputs\n", "cli/inputs.py": ""},
        "nodes/ must not import cli/"),
    "a non-engine node importing export/": (
        {"nodes/masking.py": "from ..export.cache import key\n", "export/cache.py": ""},
        "only the engine nodes import export/"),
    "runtime/ touching ComfyUI": (
        {"runtime/models/locator.py": "import folder_paths\n"}, "imports ComfyUI (folder_paths); only nodes/ may"),
    "an absolute import of the package": (
        {"runtime/imaging.py": "from comfyui_backdrop.runtime import errors\n"}, "absolute import"),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_the_checker_catches(case, tmp_path):
    files, expected = VIOLATIONS[case]
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    problems = import_problems(tmp_path)
    assert any(expected in problem for problem in problems), problems
