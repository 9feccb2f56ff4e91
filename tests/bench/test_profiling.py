"""Summaries of py-spy's collapsed stacks."""

from __future__ import annotations

import pytest

from bench.profiling import (
    by_package,
    is_own,
    library_calls,
    package_of,
    parse_collapsed,
    render_profile,
    short_frame,
    top_inclusive,
    top_self,
)

SITE = "/repo/.venv/lib/python3.11/site-packages"
THREAD = "run (/usr/lib/python3.11/threading.py:10)"
SUBMIT = "submit_message (/repo/functions/messages.py:20)"
RAW = "\n".join(
    [
        f"{THREAD};{SUBMIT};send ({SITE}/azure/core/pipeline/_base.py:5) 60",
        f"{THREAD};{SUBMIT};validate ({SITE}/pydantic/main.py:7) 30",
        "run (/usr/lib/python3.11/threading.py:10);run (/usr/lib/python3.11/threading.py:12) 10",
        "not a stack line",
    ]
)


def test_should_parse_each_stack_with_its_count() -> None:
    stacks = parse_collapsed(RAW)
    assert [count for _, count in stacks] == [60, 30, 10]
    assert len(stacks[0][0]) == 3


def test_should_shorten_paths_and_merge_line_numbers() -> None:
    assert short_frame(f"send ({SITE}/azure/core/pipeline/_base.py:5)") == (
        "send (azure/core/pipeline/_base.py)"
    )
    assert short_frame("submit (/repo/functions/messages.py:20)", "/repo") == (
        "submit (functions/messages.py)"
    )
    assert short_frame("<module> (<string>)") == "<module> (<string>)"


@pytest.mark.parametrize(
    ("frame", "package"),
    [
        (f"send ({SITE}/azure/core/pipeline/_base.py:5)", "azure/core"),
        (f"validate ({SITE}/pydantic/main.py:7)", "pydantic"),
        ("dumps (/usr/lib/python3.11/json/__init__.py:1)", "json"),
        ("run (/usr/lib/python3.11/threading.py:10)", "threading"),
        ("deliver (/repo/shared/delivery.py:3)", "shared"),
    ],
)
def test_should_name_the_package_of_a_frame(frame: str, package: str) -> None:
    assert package_of(frame, "/repo") == package


def test_should_count_a_frame_once_per_stack_for_inclusive_time() -> None:
    shares = {s.name: s.percent for s in top_inclusive(parse_collapsed(RAW), repo="/repo")}
    # The recursive `run` appears twice in the last stack but counts once.
    assert shares["run (threading.py)"] == pytest.approx(100.0)
    assert shares["submit_message (functions/messages.py)"] == pytest.approx(90.0)


def test_should_attribute_self_time_to_the_innermost_frame() -> None:
    stacks = parse_collapsed(RAW)
    assert [(s.name, s.percent) for s in top_self(stacks)] == [
        ("send (azure/core/pipeline/_base.py)", 60.0),
        ("validate (pydantic/main.py)", 30.0),
        ("run (threading.py)", 10.0),
    ]
    assert [s.name for s in by_package(stacks)] == ["azure/core", "pydantic", "threading"]


def test_should_render_three_tables_and_cope_with_no_samples() -> None:
    text = render_profile("accept", parse_collapsed(RAW), "/repo", limit=2)
    assert text.startswith("### accept (100 samples")
    assert text.count("| % | frame |") == 4
    assert top_inclusive([]) == []


def test_should_tell_the_repositorys_frames_from_its_virtual_environments() -> None:
    assert is_own("submit (/repo/shared/submission.py:3)", "/repo")
    assert not is_own("send (/repo/.venv/lib/python3.11/site-packages/httpx/_client.py:1)", "/repo")
    assert not is_own("run (/usr/lib/python3.11/threading.py:10)", "/repo")
    assert not is_own("submit (/repo/shared/submission.py:3)", "")


def test_should_list_the_library_calls_made_from_the_repositorys_code() -> None:
    stacks = parse_collapsed(RAW)
    calls = {s.name: s.percent for s in library_calls(stacks, repo="/repo")}
    assert calls == {
        "send (azure/core/pipeline/_base.py)": 60.0,
        "validate (pydantic/main.py)": 30.0,
    }
    own = {s.name: s.percent for s in top_inclusive(stacks, repo="/repo", own_only=True)}
    assert own == {"submit_message (functions/messages.py)": 90.0}
