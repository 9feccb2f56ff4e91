"""The table: targets, cells, markdown, and the marked section of docs/performance.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.report import (
    RESULTS_BEGIN,
    RESULTS_END,
    Row,
    Target,
    format_number,
    missed,
    render_table,
    replace_results,
    write_results,
)


def test_should_judge_at_least_and_at_most_targets() -> None:
    assert Target(">=", 0.8).met(0.8) is True
    assert Target(">=", 0.8).met(0.79) is False
    assert Target("<=", 2.0).met(2.0) is True
    assert Target("<=", 2.0).met(2.01) is False
    assert Target("<=", 2.0).met(None) is None


def test_should_refuse_an_unknown_operator() -> None:
    with pytest.raises(ValueError, match="operator"):
        Target("==", 1.0)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0.00"),
        (0.0123, "0.0123"),
        (4.567, "4.57"),
        (78.91, "78.9"),
        (512.4, "512"),
        (12345.6, "12,346"),
    ],
)
def test_should_format_numbers_to_about_three_digits(value: float, text: str) -> None:
    assert format_number(value) == text


def test_should_mark_a_missed_target_loudly_and_a_met_one_plainly() -> None:
    missed_row = Row("1 accept", "requests/s", 10.0, 100.0, 0.1, Target(">=", 0.8))
    met_row = Row("1 accept", "requests/s", 90.0, 100.0, 0.9, Target(">=", 0.8))
    info_row = Row("4 cost", "peak RSS MiB", 72.5)
    assert missed_row.cells()[-1] == "**NOT met**"
    assert met_row.cells()[-1] == "met"
    assert info_row.cells() == ("4 cost", "peak RSS MiB", "72.5", "", "", "", "")
    assert missed([missed_row, met_row, info_row]) == [missed_row]


def test_should_render_one_markdown_table_with_escaped_pipes() -> None:
    table = render_table([Row("2 delivery", "a | b", "1 / 2", None, 0.5, "text")])
    lines = table.splitlines()
    assert lines[0] == "| scenario | figure | gateway | baseline | ratio | target | met? |"
    assert lines[1].count("|") == 8
    assert lines[2] == "| 2 delivery | a \\| b | 1 / 2 |  | 0.5 | text |  |"


def test_should_replace_only_the_text_between_the_markers() -> None:
    document = (
        f"# Title\n\nintro\n\n{RESULTS_BEGIN}\nold\n{RESULTS_END}\n\n## Capacity model\nkept\n"
    )
    updated = replace_results(document, "new table")
    assert updated == (
        f"# Title\n\nintro\n\n{RESULTS_BEGIN}\nnew table\n{RESULTS_END}\n"
        "\n## Capacity model\nkept\n"
    )


def test_should_append_the_markers_when_the_document_has_none() -> None:
    assert replace_results("# Title\n", "table") == (
        f"# Title\n\n{RESULTS_BEGIN}\ntable\n{RESULTS_END}\n"
    )


def test_should_create_the_document_if_missing(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "performance.md"
    write_results(path, "table")
    assert path.read_text().startswith("# Performance\n")
    assert "table" in path.read_text()
