"""The README and docs/: every relative link resolves, the README stays a short front page
whose first commands are `make demo` and `make test`, and the benchmark tables on
docs/benchmarks.md are the ones benchmarks/results/ holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 150  # lines; the front page says what autotune is and links the rest

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
DEFINITION = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, inline code removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(INLINE_CODE.sub("", line))
    return lines


def links(text: str) -> list[str]:
    found = []
    for line in prose_lines(text):
        found += LINK.findall(line)
        found += DEFINITION.findall(line)
    return found


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file; repeated headings get -1, -2, ..."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not heading:
            continue
        base = slug(heading.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file, folder or anchor does not exist."""
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if EXTERNAL.match(target):
            continue
        where, _, anchor = target.partition("#")
        path = (page.parent / where).resolve() if where else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{target}: no heading #{anchor} in {path.name}")
    return broken


def first_code_block(text: str) -> list[str]:
    block: list[str] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            if fenced:
                return block
            fenced = True
        elif fenced:
            block.append(line.strip())
    return block


def test_docs_exist_and_the_readme_links_each_page() -> None:
    docs = [p for p in PAGES if p != README]
    assert docs, "docs/ holds no page"
    linked = {(README.parent / t.partition("#")[0]).resolve()
              for t in links(README.read_text(encoding="utf-8"))}
    assert [p.name for p in docs if p.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# A page\n\n## `code`: and more\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md) [ok](other.md#code-and-more) [ok](#here)\n"
                    "[gone](missing.md) [no anchor](other.md#nowhere) ![img](pic.png)\n"
                    "[web](https://example.com/x.md) `[in code](nothing.md)`\n"
                    "```\n[in a block](nothing.md)\n```\n# Here\n", encoding="utf-8")
    assert broken_links(page) == ["missing.md: no such file",
                                  "other.md#nowhere: no heading #nowhere in other.md",
                                  "pic.png: no such file"]


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_LIMIT, f"README.md has {len(lines)} lines; move detail to docs/"


def test_readme_first_commands_are_make_demo_and_make_test() -> None:
    block = first_code_block(README.read_text(encoding="utf-8"))
    commands = [line.split("#")[0].strip() for line in block if line and not line.startswith("#")]
    assert commands[:2] == ["make demo", "make test"]


def test_readme_says_the_first_make_builds_into_wheels() -> None:
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "The first `make` compiles llama-cpp-python" in text
    assert "`.wheels/`" in text


@pytest.mark.parametrize("result", sorted((ROOT / "benchmarks" / "results").glob("*.md")),
                         ids=lambda p: p.name)
def test_benchmarks_page_has_each_results_table_as_it_is(result: Path) -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8").splitlines()
    lines = result.read_text(encoding="utf-8").splitlines()
    wanted = [lines[0], *(line for line in lines if line.startswith("|"))]
    missing = [line for line in wanted if line not in page]
    assert missing == [], f"docs/benchmarks.md does not show {result.name} as it is now"
    assert f"../benchmarks/results/{result.name}" in "\n".join(page)
