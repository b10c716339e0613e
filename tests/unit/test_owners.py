"""Each library at a boundary has one owner in synkler (docs/architecture.md, "The code"): the rest
of the code never sees a pika, sqlite3, paramiko … object, so a split of a module cannot spread one."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "synkler"

# library -> the modules (or a package, ending in /) that may import it
OWNERS = {
    "pika": {"broker/amqp/"},
    "sqlite3": {"state/"},
    "paramiko": {"hops/sftp.py", "hops/sftpcopy.py", "hops/sftpwire.py"},
    "prometheus_client": {"observe/metrics.py"},
    "smtplib": {"observe/channels.py"},
    "rich": {"cli/screen.py"},
    "cryptography": {"receipts.py"},
    "daemon": {"service/daemonize.py"},
}


@functools.lru_cache(maxsize=1)
def imported() -> dict[str, frozenset[str]]:
    """The absolute imports of each module of synkler, wherever the import stands."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.add(node.module or "")
        found[path.relative_to(PACKAGE).as_posix()] = frozenset(names)
    return found


def importers(library: str) -> set[str]:
    """Every module of synkler that imports `library` or a module of it."""
    return {m for m, names in imported().items() if any(n.split(".")[0] == library for n in names)}


def owned(module: str, owners: set[str]) -> bool:
    return any(module.startswith(o) if o.endswith("/") else module == o for o in owners)


def test_each_library_is_imported_by_its_owner_only() -> None:
    strays = {lib: sorted(m for m in importers(lib) if not owned(m, o)) for lib, o in OWNERS.items()}
    assert {lib: mods for lib, mods in strays.items() if mods} == {}


def test_every_owner_still_imports_its_library() -> None:
    for lib, owners in OWNERS.items():
        found = importers(lib)
        for owner in owners:
            assert any(owned(m, {owner}) for m in found), f"{owner} no longer imports {lib}: update OWNERS"
