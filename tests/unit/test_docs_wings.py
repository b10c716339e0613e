"""docs/architecture.md draws the direction of imports between synkler's wings (its folders, and the
core at the root); every import in the code goes that way, so the picture cannot drift from the code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "synkler"
DOC = REPO / "docs" / "architecture.md"

# The import against the arrows that the document names: the entry point of `python -m synkler`.
EXCEPTIONS = {("__main__.py", "cli")}
# Packages that belong to the core although they are folders (config/ is planned as one).
CORE_PACKAGES = {"config", "state"}


def drawn() -> dict[str, set[str]]:
    """Each wing and the wings it may import, from the arrows in "The code"."""
    section = DOC.read_text(encoding="utf-8").split("## The code\n", 1)[1].split("\n## ", 1)[0]
    chains = [line for line in section.splitlines() if " → " in line and not line.startswith("|")]
    allowed: dict[str, set[str]] = {}
    for chain in chains:
        steps = [set(re.findall(r"[a-z]+", step)) for step in chain.split(" → ")]
        for i, wings in enumerate(steps):
            below = set().union(*steps[i + 1 :])
            for wing in wings:
                allowed.setdefault(wing, set()).update(below)
    return allowed


def wing(module: str) -> str:
    """The wing of a module named `synkler.x.y`: its folder, or `core` for the root's modules."""
    parts = module.split(".")
    if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() and parts[1] not in CORE_PACKAGES:
        return parts[1]
    return "core"


def imports(path: Path) -> set[str]:
    """Every synkler module a file imports, wherever the import stands (functions, TYPE_CHECKING)."""
    rel = path.relative_to(REPO).with_suffix("")
    package = list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} | {f"{module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("synkler.")}


def test_the_arrows_name_every_wing_of_the_package() -> None:
    wings = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} - CORE_PACKAGES | {"core"}
    assert set(drawn()) == wings


def test_every_import_goes_the_way_the_arrows_point() -> None:
    allowed = drawn()
    against = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        here = wing("synkler." + rel.replace("/", "."))
        for module in sorted(imports(path)):
            there = wing(module)
            if there != here and there not in allowed[here] and (rel, there) not in EXCEPTIONS:
                against.append(f"{rel} ({here}) imports {module} ({there})")
    assert not against, "\n".join(against)


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The modules that import each other, directly or round a longer way (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The modules of synkler a file imports, wherever the import stands: for `from x import y`,
    the module x.y if there is one, else x."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] if node.level else [])
            module = ".".join(x for x in (base, node.module or "") if x)
            found |= {f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names}
    return {m for m in found if m in known}


def test_no_modules_import_each_other() -> None:
    """Not even through an import inside a function: what a module imports never imports it back."""
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    graph = {module_name(p): imported_modules(p, known) - {module_name(p)} for p in paths}
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
