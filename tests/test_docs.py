"""The documentation stands on its own: relative links of README.md and docs/*.md resolve (file and heading),
and no project file cites a document that a clone of the repository does not have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# Names of the internal design notes the code once cited (assembled so that this file does not match itself).
FOREIGN = [name + ".md" for name in ("evaluation", "anchors", "measurements")] + ["shared/" + "reference"]
SOURCE_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".cfg"}


def heading_anchor(title: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {heading_anchor(m.group(1)) for m in re.finditer(r"^#+ (.*)$", path.read_text(), re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_relative_links_resolve(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, fragment = target.partition("#")
        resolved = (doc.parent / path) if path else doc
        assert resolved.exists(), f"{doc.name}: link to missing {target}"
        if fragment and resolved.suffix == ".md":
            assert fragment in anchors(resolved), f"{doc.name}: no heading for #{fragment} in {resolved.name}"


def project_files() -> list[Path]:
    skip = {".venv", ".git", ".cache", "runs", "Datasets_SCOT", "node_modules"}
    return [p for p in REPO_ROOT.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES
            and not skip & set(p.relative_to(REPO_ROOT).parts)]


def test_no_citation_of_documents_outside_the_repository():
    hits = []
    for path in project_files():
        text = path.read_text(errors="replace")
        for name in FOREIGN:
            if name in text:
                hits.append(f"{path.relative_to(REPO_ROOT)}: {name}")
        if re.search(r"\.md`?\s*\u00a7", text):  # a section-sign citation: cite docs/ headings
            hits.append(f"{path.relative_to(REPO_ROOT)}: a '<doc>.md \u00a7N' citation")
        rel = path.relative_to(REPO_ROOT).parts
        if "../shared" in text and rel[0] != "tests":  # only tests may use the optional real data
            hits.append(f"{path.relative_to(REPO_ROOT)}: ../shared")
    assert not hits, "cite docs/ instead:\n" + "\n".join(hits)
