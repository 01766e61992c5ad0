"""The README and docs/: every relative link resolves inside the repository (files and their heading anchors)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", path.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or not path.resolve().is_relative_to(ROOT) or (anchor and anchor not in _anchors(path)):
            broken.append(target)
    assert broken == []


def test_the_readme_is_a_landing_page_and_the_docs_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for name in ("method", "findings", "configuration", "reproduce", "scaling", "decoding"):
        assert f"docs/{name}.md" in readme and (ROOT / "docs" / f"{name}.md").exists()
    assert "../shared" not in readme + "".join(p.read_text() for p in PAGES)  # users do not have it
