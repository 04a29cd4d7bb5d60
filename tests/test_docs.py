"""The documentation: every relative link resolves, and the README stays a front door.

Checks every relative Markdown link in README.md, docs/*.md and data/README.md: the file (or folder)
it names exists inside the repository, and a `#fragment` into a Markdown file names one of its
headings by GitHub's anchor rule (lowercase; punctuation dropped; spaces become '-'; a repeated
heading gets -1, -2, ...). Links inside code (fenced blocks, `inline code`) are not links and are
skipped; absolute URLs (https:, mailto:, ...) are not checked. Standard library only.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 200

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)")
# [text](target) and ![alt](target), with an optional <...> around the target and an optional "title".
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s)]+)(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def documentation_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "data" / "README.md"]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked out."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)[0] * 3  # a fence closes with the same character
            continue
        if fence is not None:
            if line.lstrip().startswith(fence):
                fence = None
            continue
        lines.append((number, INLINE_CODE.sub(lambda span: " " * len(span.group(0)), line)))
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lowercased, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "").replace("*", "")  # code and emphasis markers are not rendered
    text = text.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    text = markdown.read_text(encoding="utf-8")
    raw_lines = text.splitlines()
    for number, _ in prose_lines(text):
        heading = HEADING.match(raw_lines[number - 1])  # the raw line: a heading's code spans count
        if not heading:
            continue
        slug = github_slug(heading.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def link_targets(markdown: Path) -> list[tuple[int, str]]:
    """(line number, target) of every inline and reference link in the file's prose."""
    targets = []
    for number, line in prose_lines(markdown.read_text(encoding="utf-8")):
        found = [match.group(1) for match in INLINE_LINK.finditer(line)]
        reference = REFERENCE_LINK.match(line)
        if reference:
            found.append(reference.group(1))
        targets.extend((number, target.strip("<>")) for target in found)
    return targets


def broken_links(markdown: Path, root: Path) -> list[str]:
    """'file:line: target: problem' for every relative link of `markdown` that does not resolve."""
    problems = []
    for number, target in link_targets(markdown):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # an absolute URL: not ours to check
        path_part, _, fragment = target.partition("#")
        if path_part.startswith("/"):
            destination = root / unquote(path_part).lstrip("/")  # GitHub: relative to the repository
        else:
            destination = markdown.parent / unquote(path_part) if path_part else markdown
        destination = destination.resolve()
        where = f"{markdown.relative_to(root)}:{number}: {target}"
        if not destination.is_relative_to(root.resolve()):
            problems.append(f"{where}: leaves the repository")
        elif not destination.exists():
            problems.append(f"{where}: no such file")
        elif fragment and destination.suffix == ".md" and unquote(fragment).lower() not in anchors(destination):
            problems.append(f"{where}: no heading with this anchor")
    return problems


# ---------------------------------------------------------------- the project's documentation

@pytest.mark.parametrize("markdown", documentation_files(ROOT), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(markdown):
    assert markdown.is_file(), f"{markdown.relative_to(ROOT)} is missing"
    assert broken_links(markdown, ROOT) == []


def test_the_readme_is_a_front_door_of_at_most_200_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


# ---------------------------------------------------------------- the checker itself

@pytest.mark.parametrize("heading, slug", [
    ("Other datasets (`--format`)", "other-datasets---format"),
    ("Stage 2: training (`make train`)", "stage-2-training-make-train"),
    ("Ablation (seeds 3–5)", "ablation-seeds-35"),
    ("Round 2 (locks, caps, escaped output, untrusted class names)",
     "round-2-locks-caps-escaped-output-untrusted-class-names"),
    ("The `band_norm` lever and **why**", "the-band_norm-lever-and-why"),
    ("See [the data](data/README.md)", "see-the-data"),
])
def test_slugs_follow_githubs_rule(heading, slug):
    assert github_slug(heading) == slug


def test_the_checker_reports_each_kind_of_broken_link_and_nothing_else(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## A section (`x`)\n\n## A section (`x`)\n", encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text("\n".join([
        "# Top",
        "[ok](docs/page.md) [ok](docs/page.md#a-section-x) [ok](docs/page.md#a-section-x-1) [ok](#top)",
        "[ok](<docs/page.md>) [ok](docs/) [ok](https://example.com/missing.md) ![ok](docs/page.md \"title\")",
        "[missing file](docs/gone.md)",
        "[missing anchor](docs/page.md#no-such-heading)",
        "[missing local anchor](#nowhere)",
        "[out of the repository](../outside.md)",
        "`[in code](docs/gone.md)`",
        "```",
        "[in a fence](docs/gone.md)",
        "```",
        "[ref]: docs/also-gone.md",
    ]) + "\n", encoding="utf-8")
    problems = broken_links(readme, tmp_path)
    assert [problem.split(": ")[0] for problem in problems] == [
        "README.md:4", "README.md:5", "README.md:6", "README.md:7", "README.md:12"]
    assert problems[1].endswith("no heading with this anchor") and problems[3].endswith("leaves the repository")
