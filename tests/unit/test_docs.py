"""The README and docs/ link to each other and to the repository's files: every relative link
must name a file that exists, and every page in docs/ must be reachable from the README."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target): inline links only; the docs use no reference-style links.
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_every_relative_link_names_a_file() -> None:
    broken = [f"{page.relative_to(ROOT)}: {target}"
              for page in PAGES for target in relative_links(page)
              if not (page.parent / target.split("#", 1)[0]).exists()]
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in relative_links(ROOT / "README.md")}
    pages = set((ROOT / "docs").glob("*.md"))
    assert pages, "docs/ holds the reference pages"
    assert {p.name for p in pages if p.resolve() not in linked} == set()


def test_the_first_screen_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:6]
    assert any(line.startswith(".ci/dev serve") for line in head)
    assert any(line.startswith(".ci/dev test") for line in head)
