"""The package layout is the architecture: groups import only from groups below them, and no
two modules import each other, however indirectly."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "daemon" / "ai_server"
# Lowest first. A module may import from its own group and from groups before it.
LAYERS = ["base", "access", "config", "desired", "engines", "haproxy", "fleet", "children", "observe", "daemon",
          "install", "check", "demo", "cli", "__main__"]
KNOWN_CYCLES: set[str] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The ai_server modules `name` imports, anywhere in it (function bodies too)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ai_server.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ai_server"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return {m for m in found if m != name and m != "ai_server"}


def group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_is_in_a_layer() -> None:
    assert {group(m) for m in modules()} - {"__init__"} <= set(LAYERS)


def test_groups_import_only_from_below() -> None:
    mods = modules()
    wrong = []
    for name, tree in mods.items():
        for target in imports(name, tree, set(mods)):
            if group(name) == "__init__" or group(target) == "__init__":
                continue
            if LAYERS.index(group(target)) > LAYERS.index(group(name)):
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_no_import_cycles() -> None:
    mods = modules()
    graph = {name: imports(name, tree, set(mods)) for name, tree in mods.items()}
    cycles = []

    def visit(node: str, path: list[str], done: set[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target in path:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in done:
                visit(target, path + [target], done)
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name], done)
    assert set(cycles) - KNOWN_CYCLES == set()
