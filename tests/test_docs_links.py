"""The documentation's relative links resolve, and the README stays a front door.

Every relative Markdown link ``[text](path)`` and image ``![alt](path)`` in README.md,
bench/README.md, docs/*.md and docs/reports/*/README.md must name an existing file or folder,
relative to the file that holds it (any ``#anchor`` stripped; http(s) and mailto links skipped).
Links inside fenced code blocks and inline code are not links. No heavy imports: this runs in
milliseconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 220

# the "](target)" that ends [text](target) and ![alt](target), nested ones included; the target runs
# up to the first space or closing parenthesis (an optional "title" after a space is ignored)
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
SKIP_SCHEMES = ("http://", "https://", "mailto:")


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "bench" / "README.md"]
    files += sorted((ROOT / "docs").glob("*.md"))
    files += sorted((ROOT / "docs" / "reports").glob("*/README.md"))
    return [f for f in files if f.is_file()]


def relative_links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every relative link outside code."""
    found: list[tuple[int, str]] = []
    in_fence = False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match.group(1)
            if target.startswith(SKIP_SCHEMES) or target.startswith("#"):
                continue
            target = target.split("#", 1)[0]
            if target:
                found.append((number, target))
    return found


def test_the_documents_exist() -> None:
    names = {f.relative_to(ROOT).as_posix() for f in doc_files()}
    assert {"README.md", "bench/README.md"} <= names


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path: Path) -> None:
    broken = [
        f"{path.relative_to(ROOT)}:{number}: {target}"
        for number, target in relative_links(path.read_text(encoding="utf-8"))
        if not (path.parent / target).exists()
    ]
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_the_link_finder() -> None:
    text = "\n".join([
        "[a](x.md) and ![b](img/y.png#frag) and [c](https://e.org) [d](#top) [e](mailto:a@b)",
        "`[not](code.md)`",
        "```",
        "[not](fenced.md)",
        "```",
        '[f](<z.md>) [g](dir/ "title") [![badge](i.svg)](page.md)',
    ])  # fmt: skip
    assert relative_links(text) == [(1, "x.md"), (1, "img/y.png"), (6, "z.md"), (6, "dir/"), (6, "i.svg"),
                                    (6, "page.md")]  # fmt: skip
