"""The README and the docs pages link to each other by relative paths: every such link must name a
file that exists and, where it has one, a heading of that file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def prose(text: str) -> str:
    """The text outside code blocks and inline code, where a link is a link."""
    return re.sub(r"`[^`\n]*`", "", without_code_blocks(text))


def anchors(path: Path) -> set[str]:
    """The anchors a Markdown renderer (GitHub's) gives the headings of a file: lower case, spaces to
    hyphens, punctuation dropped, and -1, -2, ... after a repeated one."""
    found: set[str] = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", without_code_blocks(path.read_text()), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, repeat = slug, 0
        while anchor in found:
            repeat += 1
            anchor = f"{slug}-{repeat}"
        found.add(anchor)
    return found


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text())) if not EXTERNAL.match(target)]


def test_the_pages_exist_and_link_somewhere():
    assert (REPO / "docs" / "configuration.md") in PAGES
    assert relative_links(REPO / "README.md")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(REPO) if linked.is_relative_to(REPO) else linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(REPO)}")
    assert broken == []


def test_the_anchor_rule_matches_headings_with_code_and_punctuation(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# The pool folder: `pool.dir`\n\n## I/O plan\n\n## Notes\n\n## Notes\n\n```\n# not a heading\n```\n"
    )
    assert anchors(page) == {"the-pool-folder-pooldir", "io-plan", "notes", "notes-1"}


def test_links_in_code_and_to_other_sites_are_not_checked(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](missing.md#x) `[b](code.md)` [c](https://example.org/d.md) ![e](e.png)\n```\n[f](g.md)\n```\n")
    assert relative_links(page) == ["missing.md#x", "e.png"]
