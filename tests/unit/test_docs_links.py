"""Every relative link in the documentation leads somewhere: to a file of the repository and, with a
`#fragment`, to a heading of that file (as GitHub makes its anchors); and every page the code, the
sample configuration and the systemd unit name exists with the section they name. So moving a
section cannot leave a reader at a dead link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted([REPO / "README.md", REPO / "CHANGELOG.md", *(REPO / "docs").glob("*.md")])

LINK = re.compile(r"\]\(([^)\s]+)\)")
# A page named in code or configuration, with the section it names, if any: `docs/running.md#logs`,
# `docs/running.md, "Exit status"`, `docs/status.md ("The JSON view")`.
POINTER = re.compile(r"docs/([a-z-]+\.md)(?:#([\w-]+))?(?:(?:,\s*|\s+\()(?:section\s+)?[\"']([^\"']+)[\"'])?")
POINTING = sorted(
    [*(REPO / "synkler").rglob("*.py"), *(REPO / "systemd").iterdir(), REPO / "sample-config"]
    + [REPO / "pyproject.toml"]
)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of a page's headings; a repeated heading gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if m:
            a = anchor(m.group(1))
            n = seen.get(a, 0)
            seen[a] = n + 1
            found.add(a if n == 0 else f"{a}-{n}")
    return found


def links(page: Path) -> list[str]:
    """The targets of the page's Markdown links, outside code blocks and code spans."""
    text = CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_the_anchor_of_a_heading_is_githubs() -> None:
    assert anchor("The whole relay: synkler status --relay") == "the-whole-relay-synkler-status---relay"
    assert anchor("Bounded history (keep_history_days)") == "bounded-history-keep_history_days"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page: Path) -> None:
    dead = []
    for target in links(page):
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            dead.append(f"{target}: no file {dest.relative_to(REPO)}")
        elif fragment and (dest.suffix != ".md" or fragment not in anchors(dest)):
            dead.append(f"{target}: no heading #{fragment} in {dest.relative_to(REPO)}")
    assert not dead, "\n".join(dead)


def test_every_page_and_section_the_code_names_exists() -> None:
    """Log lines, notices, comments and the systemd unit name the page that holds the section: never
    operations.md, which only maps its former sections to their pages."""
    dead = []
    for path in POINTING:
        for m in POINTER.finditer(path.read_text(encoding="utf-8")):
            name, fragment, section = m.groups()
            page = REPO / "docs" / name
            where = f"{path.relative_to(REPO)}: {' '.join(m.group(0).split())}"
            if name == "operations.md" or not page.exists():
                dead.append(f"{where}: name the page that holds it")
            elif fragment and fragment not in anchors(page):
                dead.append(f"{where}: no heading #{fragment}")
            elif section and not has_section(page, " ".join(section.split())):
                dead.append(f"{where}: no heading or paragraph {section!r}")
    assert not dead, "\n".join(dead)


def has_section(page: Path, section: str) -> bool:
    """A heading that starts with the name, a paragraph that starts with it in bold (as
    troubleshooting's), or a table's column of that name."""
    text = page.read_text(encoding="utf-8")
    return (
        any(a.startswith(anchor(section)) for a in anchors(page))
        or f"**{section}" in text
        or f"| {section} |" in text
    )
