"""Every relative link and `#anchor` in README.md, SECURITY.md and docs/ resolves."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.docs.markdown_links import (
    broken_links,
    github_slug,
    heading_anchors,
    markdown_files,
    numbered,
)
from tests.infra.venvs import ROOT

PAGES = [
    "README.md",
    "SECURITY.md",
    "docs/api.md",
    "docs/architecture.md",
    "docs/deploy.md",
    "docs/development.md",
    "docs/operations.md",
    "docs/performance.md",
    "docs/sendgrid.md",
    "docs/settings.md",
]
# The README's first block, as it has always opened.
FRONT = "\n".join(
    [
        "# mailgate",
        "",
        "```sh",
        "make run    # the gateway on http://127.0.0.1:7071, with local storage (Azurite)"
        " and a SendGrid stand-in",
        "make test   # ruff, mypy and the whole test suite, end-to-end tests against Azurite"
        " included",
        "```",
    ]
)


def test_should_check_the_readme_security_and_every_docs_page() -> None:
    checked = {path.relative_to(ROOT).as_posix() for path in markdown_files(ROOT)}
    assert set(PAGES) <= checked


def test_should_resolve_every_relative_link_and_anchor_in_the_docs() -> None:
    assert broken_links(ROOT, markdown_files(ROOT)) == []


def test_should_link_the_readme_to_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    docs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    assert [page for page in docs if f"]({page})" not in readme] == []


def test_should_keep_the_readme_to_a_couple_of_screens() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 120, "the README is the front door: move the detail into docs/"


def test_should_start_the_readme_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.startswith(FRONT), "the README opens with `make run` and `make test`"


# Cases from github-slugger's own fixtures (Flet/github-slugger, test/fixtures.json), and the
# kinds of heading these docs have.
@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("heading with a - dash", "heading-with-a---dash"),
        ("heading with an _ underscore", "heading-with-an-_-underscore"),
        ("heading with a period.txt", "heading-with-a-periodtxt"),
        (
            "exchange.bind_headers(exchange, routing [, bindCallback])",
            "exchangebind_headersexchange-routing--bindcallback",
        ),
        ("apostrophe\u2019s should be trimmed", "apostrophes-should-be-trimmed"),
        ("I ♥ unicode", "i--unicode"),
        ("en\u2013dash", "endash"),
        ("😄 - an emoji", "---an-emoji"),
        ("Привет non-latin 你好", "привет-non-latin-你好"),
        ("Delivery events (SendGrid's Event Webhook)", "delivery-events-sendgrids-event-webhook"),
        ("Beyond 1,000 mails/s: what breaks first", "beyond-1000-mailss-what-breaks-first"),
    ],
)
def test_should_make_the_anchor_github_makes(heading: str, anchor: str) -> None:
    assert github_slug(heading) == anchor


def test_should_number_repeated_anchors_as_github_does() -> None:
    slugs = ["echo", "echo", "echo-1", "echo-1", "echo"]
    assert numbered(slugs) == ["echo", "echo-1", "echo-1-1", "echo-1-2", "echo-2"]


def test_should_read_a_headings_text_without_code_marks_links_or_emphasis() -> None:
    markdown = (
        "# mailgate\n\n"
        "### The operator console: `GET /api/console`\n\n"
        "## A [linked](other.md) *word* and &amp; an entity\n\n"
        "Setext heading\n---\n\n"
        "```sh\n# not a heading\n```\n\n"
        "## Alerts\n\n## Alerts\n"
    )
    assert heading_anchors(markdown) == [
        "mailgate",
        "the-operator-console-get-apiconsole",
        "a-linked-word-and--an-entity",
        "setext-heading",
        "alerts",
        "alerts-1",
    ]


def write(root: Path, files: dict[str, str]) -> list[Path]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return sorted(root / name for name in files if name.endswith(".md"))


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        (
            {"README.md": "[api](docs/api.md)\n"},
            "README.md:1: docs/api.md: names docs/api.md, which",
        ),
        (
            {"README.md": "# Top\n\nSee [below](#bottom).\n"},
            "README.md:3: #bottom: no heading of README.md has the anchor #bottom",
        ),
        (
            {"README.md": "[x](docs/a.md#gone)\n", "docs/a.md": "# Here\n"},
            "README.md:1: docs/a.md#gone: no heading of docs/a.md has the anchor #gone",
        ),
        (
            {
                "docs/a.md": "text\n\n| a | b |\n|---|---|\n| [x](b.md#one) | y |\n",
                "docs/b.md": "# Two\n",
            },
            "docs/a.md:5: b.md#one: no heading of docs/b.md has the anchor #one",
        ),
        ({"docs/a.md": "[up](../../outside.md)\n"}, "points outside the repository"),
        ({"README.md": "[abs](/docs/a.md)\n", "docs/a.md": "# A\n"}, "is absolute"),
        (
            {"README.md": "[code](app.py#settings)\n", "app.py": "x = 1\n"},
            "#settings is no anchor GitHub makes in a file that is not Markdown",
        ),
        (
            {"README.md": "A [reference][ref].\n\n[ref]: docs/missing.md\n"},
            "README.md:1: docs/missing.md: names docs/missing.md",
        ),
        ({"README.md": "![diagram](docs/flow.png)\n"}, "names docs/flow.png, which does not exist"),
        (
            {"README.md": "# Alerts\n\n# Alerts\n\n[second](#alerts-1) [third](#alerts-2)\n"},
            "README.md:5: #alerts-2: no heading of README.md has the anchor #alerts-2",
        ),
    ],
    ids=[
        "missing page",
        "missing anchor in the same page",
        "missing anchor in another page",
        "missing anchor from a table cell",
        "outside the repository",
        "absolute path",
        "anchor into a source file",
        "reference-style link",
        "missing image",
        "a third heading that is not there",
    ],
)
def test_should_report_a_link_that_does_not_resolve(
    tmp_path: Path, files: dict[str, str], problem: str
) -> None:
    [found] = broken_links(tmp_path, write(tmp_path, files))
    assert problem in found


@pytest.mark.parametrize(
    "files",
    [
        {"README.md": "```sh\n[x](no.md)\n```\n\nA `[y](no.md)`.\n\n    [z](no.md)\n"},
        {"README.md": "[site](https://example.com/a.md#b) <mailto:ops@example.com>\n"},
        {"README.md": "# Alerts\n\n# Alerts\n\n[second](#alerts-1)\n"},
        {"README.md": "[tests](tests/) [line](app.py#L3-L5)\n", "tests/x.py": "", "app.py": ""},
        {"docs/a.md": "[readme](../README.md#top)\n", "README.md": "# Top\n"},
        {
            "README.md": "[key](docs/a.md#set-the-sendgrid-key)\n",
            "docs/a.md": "## Set the SendGrid key\n",
        },
    ],
    ids=[
        "links in code are not links",
        "other sites are not checked",
        "a repeated heading's anchor",
        "a directory, and a source file's lines",
        "up to the top",
        "an anchor in another page",
    ],
)
def test_should_accept_a_link_that_resolves(tmp_path: Path, files: dict[str, str]) -> None:
    assert broken_links(tmp_path, write(tmp_path, files)) == []


def test_should_report_the_links_a_renamed_heading_breaks_in_a_copy_of_the_docs(
    tmp_path: Path,
) -> None:
    for page in PAGES:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / page, tmp_path / page)
    # The copy holds the pages only, so links to code fail in it already; compare with that.
    before = set(broken_links(tmp_path, markdown_files(tmp_path)))
    operations = tmp_path / "docs" / "operations.md"
    text = operations.read_text(encoding="utf-8")
    assert "\n## Alerts\n" in text
    operations.write_text(text.replace("\n## Alerts\n", "\n## Alarms\n"), encoding="utf-8")

    after = set(broken_links(tmp_path, markdown_files(tmp_path)))

    new = sorted(after - before)
    assert new, "renaming a heading others link to must break those links"
    assert all("#alerts" in problem for problem in new), new
    assert {problem.split(":")[0] for problem in new} >= {"docs/operations.md", "docs/deploy.md"}
