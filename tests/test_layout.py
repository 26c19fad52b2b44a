"""The top-level packages depend on each other one way only (the order in the README's tour).

A module may import its own room and the rooms listed before it, never one listed after it.
Two checks: a static one over every import statement that runs (imports under
``if TYPE_CHECKING:`` are annotations only and are skipped; imports inside functions count,
they run when the function does), and a runtime one that imports the rooms from the lowest up
in a fresh interpreter and fails if a room pulled in a module of a higher one.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT

# Lowest first (docs/DESIGN.md, "The rooms and their order"): the losses and the baselines
# share the step contract (``step``) and the model parts below them (``components``).
ROOMS = (
    "core",
    "pretrained",
    "metrics",
    "prompts",
    "preparation",
    "datamodules",
    "generation",
    "step",
    "backbones",
    "components",
    "training",
    "exports",
    "losses",
    "models",
    "callbacks",
    "benchmark",
)
TOP_LEVEL = {room.split(".")[0] for room in ROOMS}


def room_of(module: str) -> str | None:
    """The room a dotted module name belongs to (the longest matching room), or None."""
    matches = [r for r in ROOMS if module == r or module.startswith(r + ".")]
    return max(matches, key=len) if matches else None


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> list[Path]:
    files = (p for top in TOP_LEVEL for p in (REPO_ROOT / top).rglob("*.py"))
    return sorted(p for p in files if "__pycache__" not in p.parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(
    source: str, module: str, is_package: bool, annotations: bool = False
) -> list[tuple[int, str]]:
    """(line, imported module) for every import that runs, relative ones resolved
    (``annotations``: those under ``if TYPE_CHECKING:`` too)."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not annotations:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found.append((node.lineno, base))
            # ``from pkg import sub`` imports the module pkg.sub when it is one
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def upward_imports() -> list[str]:
    """Imports of a later room, annotation-only ones included: a loss written against a
    baseline's class, even for a type hint, is the coupling the order exists to prevent
    (losses read the module through losses/model_view.py)."""
    problems = []
    for path in project_files():
        module = module_name(path)
        source_room = room_of(module)
        is_package = path.name == "__init__.py"
        for line, target in runtime_imports(path.read_text(), module, is_package, True):
            target_room = room_of(target)
            if target_room is None or source_room is None:
                continue
            if ROOMS.index(target_room) > ROOMS.index(source_room):
                problems.append(
                    f"{path.relative_to(REPO_ROOT)}:{line}: {source_room} imports {target} "
                    f"({target_room} comes later in the order)"
                )
    return problems


def module_graph() -> dict[str, set[str]]:
    """Each project module -> the project modules its running imports load (an imported name
    counts as its module: ``from core.concept import ConceptSpec`` -> ``core.concept``)."""
    paths = {module_name(p): p for p in project_files()}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets = set()
        for _, target in runtime_imports(path.read_text(), name, path.name == "__init__.py"):
            parts = target.split(".")
            hits = [".".join(parts[:n]) for n in range(len(parts), 0, -1)]
            hit = next((h for h in hits if h in paths), None)
            if hit is not None and hit != name:
                targets.add(hit)
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same imports between top-level packages (importing ``a.b.c`` runs ``a``'s
    ``__init__`` too, so a cycle of packages is a real one)."""
    packages: dict[str, set[str]] = {}
    for source, targets in graph.items():
        top = source.split(".")[0]
        packages.setdefault(top, set()).update(
            t.split(".")[0] for t in targets if t.split(".")[0] != top
        )
    return packages


def test_no_runtime_import_cycle_between_files() -> None:
    assert import_cycles(module_graph()) == []


def test_no_runtime_import_cycle_between_packages() -> None:
    assert import_cycles(package_graph(module_graph())) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    graph = {"a.x": {"a.y"}, "a.y": {"b.z"}, "b.z": {"a.x"}, "c.w": {"a.x"}}
    assert import_cycles(graph) == [["a.x", "a.y", "b.z"]]
    assert import_cycles(package_graph(graph)) == [["a", "b"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_every_project_module_belongs_to_a_room() -> None:
    assert all(room_of(module_name(p)) for p in project_files())


def test_no_import_goes_up_the_order() -> None:
    assert upward_imports() == []


def test_the_static_check_sees_an_upward_import(tmp_path: Path) -> None:
    # The check itself must be able to fail: a loss importing a callback is flagged; the same
    # import under TYPE_CHECKING is not for the runtime graph, and is for the order.
    source = (
        "from typing import TYPE_CHECKING\n"
        "from callbacks.analysis import AnalysisCallback\n"
        "if TYPE_CHECKING:\n"
        "    from models.base import PersonalizationModule\n"
    )
    imports = runtime_imports(source, "losses.fake", is_package=False)
    targets = [t for _, t in imports]
    assert "callbacks.analysis" in targets
    assert "models.base" not in targets
    with_annotations = runtime_imports(source, "losses.fake", False, annotations=True)
    assert "models.base" in [t for _, t in with_annotations]


@pytest.mark.slow
def test_importing_each_room_pulls_in_no_higher_room() -> None:
    modules = {room: [] for room in ROOMS}
    for path in project_files():
        module = module_name(path)
        modules[room_of(module)].append(module)
    script = (
        "import importlib, json, sys\n"
        f"rooms = {list(ROOMS)!r}\n"
        f"modules = {modules!r}\n"
        "def room_of(m):\n"
        "    hits = [r for r in rooms if m == r or m.startswith(r + '.')]\n"
        "    return max(hits, key=len) if hits else None\n"
        "problems = []\n"
        "for index, room in enumerate(rooms):\n"
        "    for name in modules[room]:\n"
        "        importlib.import_module(name)\n"
        "    for loaded in list(sys.modules):\n"
        "        other = room_of(loaded)\n"
        # a room's parent package loads with it (were a room a subpackage)
        "        parent = any(r.startswith(loaded + '.') for r in rooms[: index + 1])\n"
        "        if other is not None and rooms.index(other) > index and not parent:\n"
        "            problems.append(f'importing {room} loaded {loaded} ({other})')\n"
        "    if problems:\n"
        "        break\n"
        "print(json.dumps(problems))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
