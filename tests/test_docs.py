"""The README and docs/ stay true to the repository: short front page, every relative link and
anchor resolves, every `featinv <verb>` named exists."""

import re
from pathlib import Path

import pytest

from featinv.cli import VERBS

COMMANDS = {v.command for v in VERBS.values()}

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", page.read_text(), re.M)}


def test_the_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    assert len(PAGES) >= 12


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.name}: broken links: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_featinv_verb_named_exists(page):
    named = set(re.findall(r"(?:`|^\s*|\$ )featinv ([a-z][a-z0-9-]*)", page.read_text(), re.M))
    unknown = sorted(named - COMMANDS)
    assert not unknown, f"{page.name} names featinv verbs that do not exist: {unknown}"


def test_the_evaluation_docs_name_every_table1_column_and_no_other():
    from featinv.metrics.tables import Table1

    header = Table1(fid_column="fid[<features>, N=<n>]", level=95, scoring="resize", rows=[]).header
    text = (ROOT / "docs/evaluation.md").read_text()
    table = text[text.index("| column | meaning |"):].split("\n\n")[0].splitlines()[2:]
    documented = []
    for line in table:
        for name in re.findall(r"`([^`]+)`", line.split(" | ")[0]):
            documented += [name[:-len("low/high")] + end for end in ("low", "high")] if name.endswith("low/high") else [name]
    assert sorted(documented) == sorted(header)
