"""Relative links and `#anchors` in the repository's Markdown, checked as GitHub resolves them.

The Markdown is parsed with markdown-it-py (CommonMark, plus GitHub's tables), so a link inside
a code span or a fenced block is text, not a link, as on GitHub. A heading's anchor is the slug
GitHub gives it, as github-slugger reproduces it (Flet/github-slugger, `index.js` and
`script/generate-regex.mjs`): the heading's text (inline code without its backticks, a link's
text, no emphasis marks), lowercased; letters, marks, digits, `_`, `-` and spaces kept and every
other punctuation, symbol or control character dropped; each space turned into `-`; and a heading
whose slug was taken already gets `-1`, `-2`, ... (`echo`, `echo-1`, `echo-2`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import unquote

from markdown_it import MarkdownIt
from markdown_it.token import Token

_PARSER = MarkdownIt("commonmark").enable("table")
# The Unicode general categories github-slugger strips, but for letters (Alphabetic), `-` and
# the space: other numbers, punctuation other than connectors (`_`), symbols (emoji among them),
# controls, private use, format, unassigned and separators.
_DROPPED = frozenset(
    {"No", "Pe", "Pf", "Pi", "Ps", "Po", "Pd", "Sm", "Sc", "Sk", "So", "Cc", "Co", "Cf", "Cn"}
    | {"Zs", "Zl", "Zp"}
)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# GitHub's anchors on a source file's lines: #L10, #L10-L20.
_LINE_ANCHOR = re.compile(r"^L\d+(-L\d+)?$")


def github_slug(text: str) -> str:
    """The anchor GitHub gives a heading with this text, before repeats are numbered."""
    kept = (
        char
        for char in text.lower()
        if char in " -" or char.isalpha() or unicodedata.category(char) not in _DROPPED
    )
    return "".join(kept).replace(" ", "-")


def numbered(slugs: Iterable[str]) -> list[str]:
    """Slugs in document order, a repeated one suffixed `-1`, `-2`, ... as GitHub does."""
    occurrences: dict[str, int] = {}
    anchors = []
    for base in slugs:
        slug = base
        while slug in occurrences:
            occurrences[base] += 1
            slug = f"{base}-{occurrences[base]}"
        occurrences[slug] = 0
        anchors.append(slug)
    return anchors


def _plain_text(inline: Token) -> str:
    # What the rendered heading reads: text and code spans; tags and markup add nothing.
    parts = []
    for child in inline.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif child.type == "image":
            parts.append(_plain_text(child))
    return "".join(parts)


def heading_anchors(markdown: str) -> list[str]:
    """Every heading's anchor in a Markdown document, in order."""
    tokens = _PARSER.parse(markdown)
    texts = [
        _plain_text(tokens[index + 1])
        for index, token in enumerate(tokens)
        if token.type == "heading_open"
    ]
    return numbered(github_slug(text) for text in texts)


@dataclass(frozen=True)
class Link:
    """A link or image target written in a Markdown file, with the line it is on."""

    line: int
    target: str


def _targets(tokens: list[Token], line: int = 0) -> Iterator[Link]:
    for token in tokens:
        here = token.map[0] + 1 if token.map else line
        if token.type == "link_open":
            yield Link(here, str(token.attrs["href"]))
        elif token.type == "image":
            yield Link(here, str(token.attrs["src"]))
        if token.children:
            yield from _targets(token.children, here)


def links(markdown: str) -> list[Link]:
    """Every link and image target of a Markdown document (not those in code)."""
    return list(_targets(_PARSER.parse(markdown)))


@cache
def _anchors_of(path: Path) -> frozenset[str]:
    return frozenset(heading_anchors(path.read_text(encoding="utf-8")))


def _problem(root: Path, source: Path, target: str) -> str | None:
    """Why a link target written in `source` does not resolve, or None when it does."""
    if _SCHEME.match(target) or target.startswith("//"):
        return None  # another site: not this repository's to check
    address, _, fragment = target.partition("#")
    address, fragment = unquote(address), unquote(fragment)
    if address.startswith("/"):
        return "is absolute; write it relative to the page, which works on GitHub and locally"
    resolved = (source.parent / address).resolve() if address else source
    if not resolved.is_relative_to(root.resolve()):
        return "points outside the repository"
    if not resolved.exists():
        return f"names {resolved.relative_to(root.resolve()).as_posix()}, which does not exist"
    if not fragment:
        return None
    if resolved.suffix == ".md":
        if fragment in _anchors_of(resolved):
            return None
        page = resolved.relative_to(root.resolve()).as_posix()
        return f"no heading of {page} has the anchor #{fragment}"
    if resolved.is_file() and _LINE_ANCHOR.match(fragment):
        return None
    return f"#{fragment} is no anchor GitHub makes in a file that is not Markdown"


def broken_links(root: Path, files: Iterable[Path]) -> list[str]:
    """`file:line: target: why` for each link in these Markdown files that does not resolve."""
    _anchors_of.cache_clear()
    problems = []
    for source in files:
        resolved = source.resolve()
        for link in links(resolved.read_text(encoding="utf-8")):
            if (why := _problem(root, resolved, link.target)) is not None:
                name = resolved.relative_to(root.resolve()).as_posix()
                problems.append(f"{name}:{link.line}: {link.target}: {why}")
    return problems


def markdown_files(root: Path) -> list[Path]:
    """The documentation: the Markdown at the top of the repository and under docs/."""
    return sorted([*root.glob("*.md"), *root.glob("docs/**/*.md")])
