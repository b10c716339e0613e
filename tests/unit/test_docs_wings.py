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
CORE_PACKAGES = {"config"}


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
