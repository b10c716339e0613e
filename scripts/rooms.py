#!/usr/bin/env python3
"""How big synkler's rooms are (issue 21's measures): the biggest modules and classes, the longest
functions (lines, and lines without the docstring), import cycles (imports inside functions
included) and the longest chain of imports between modules.

    .venv/bin/python scripts/rooms.py [--top N] [--min-lines L] [PATH ...]   (default: synkler bench)
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def functions(paths: list[Path]) -> list[tuple[int, int, str]]:
    """(lines, lines without the docstring, where) of every function and class."""
    rows = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))

        def walk(node: ast.AST, prefix: str, path: Path = path) -> None:
            for n in ast.iter_child_nodes(node):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    start = min([n.lineno] + [d.lineno for d in n.decorator_list])
                    total = (n.end_lineno or n.lineno) - start + 1
                    first = n.body[0] if n.body else None
                    doc = 0
                    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                        doc = (first.end_lineno or first.lineno) - first.lineno + 1
                    kind = "class " if isinstance(n, ast.ClassDef) else ""
                    rows.append((total, total - doc, f"{path}:{n.lineno} {kind}{prefix}{n.name}"))
                    walk(n, f"{prefix}{n.name}.")

        walk(tree, "")
    return rows


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (`from x import y`: x.y if a module, else x)."""
    names = {}
    for p in root.rglob("*.py"):
        parts = list(p.with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for name, p in names.items():
        package = name if p.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] if node.level else [])
                module = ".".join(x for x in (base, node.module or "") if x)
                found |= {
                    f"{module}.{a.name}" if f"{module}.{a.name}" in names else module for a in node.names
                }
        graph[name] = {m for m in found if m in names and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while (w := stack.pop()) != v:
                group.append(w)
            if group:
                found.append(sorted([v, *group]))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    memo: dict[str, list[str]] = {}

    def chain(v: str) -> list[str]:
        if v not in memo:
            memo[v] = [v]
            memo[v] = [v] + max((chain(w) for w in graph[v]), key=len, default=[])
        return memo[v]

    return max((chain(v) for v in sorted(graph)), key=len)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="*", default=["synkler", "bench"])
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--min-lines", type=int, default=50, help="functions at least this long")
    args = p.parse_args()
    roots = map(Path, args.paths)
    files = sorted(f for path in roots for f in (path.rglob("*.py") if path.is_dir() else [path]))
    sizes = sorted(((len(f.read_text(encoding="utf-8").splitlines()), str(f)) for f in files), reverse=True)
    print(f"{sum(n for n, _ in sizes):,} lines in {len(files)} modules; the biggest:")
    print("\n".join(f"  {n:5} {f}" for n, f in sizes[: args.top]))
    rows = functions(files)
    classes = sorted((r for r in rows if " class " in r[2]), reverse=True)[: args.top]
    print("the biggest classes (lines):")
    print("\n".join(f"  {n:5} {where}" for n, _, where in classes))
    long = sorted((r for r in rows if " class " not in r[2] and r[0] >= args.min_lines), reverse=True)
    print(f"functions of {args.min_lines} lines or more (lines, without the docstring):")
    print("\n".join(f"  {n:5} {m:5} {where}" for n, m, where in long) or "  none")
    for root in (Path(a) for a in args.paths):
        if (root / "__init__.py").exists():
            graph = import_graph(root)
            found = cycles(graph)
            chain = longest_chain(graph) if not found else []
            print(
                f"{root}: {len(graph)} modules, {sum(map(len, graph.values()))} imports between them, "
                f"{len(found)} cycles" + "".join(f"\n  cycle: {' '.join(c)}" for c in found)
            )
            if chain:
                print(f"  longest chain of imports: {len(chain)} modules: {' -> '.join(chain)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
