"""The one pass over a request body's bytes that bounds it before it is parsed."""

from __future__ import annotations

import json
from typing import Annotated, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import FieldProblem
from shared.json_limits import (
    MAX_NUMBER_CHARS,
    ItemLimit,
    JsonLimits,
    bounded_collections,
    item_limits,
)

TO = ItemLimit(3, "too many in to", is_object=False)
HEADERS = ItemLimit(2, "too many headers", is_object=True)
LIMITS = JsonLimits(
    each={("to",): TO, ("headers",): HEADERS, ("parts", "*", "to"): TO},
    together=(
        (
            frozenset({("to",), ("cc",), ("parts", "*", "to")}),
            ItemLimit(5, "too many recipients", is_object=False, pointer="#/to"),
        ),
    ),
    max_depth=4,
    max_values=50,
)


def first_problem(document: Any, limits: JsonLimits = LIMITS, **dumps: Any) -> FieldProblem | None:
    return limits.first_problem(json.dumps(document, **dumps).encode())


def depth_of(value: Any) -> int:
    """Levels of arrays and objects, the outermost counted."""
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


def values_in(value: Any) -> int:
    """Every string, number, literal, array and object; member names not counted."""
    if isinstance(value, list):
        return 1 + sum(values_in(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(values_in(v) for v in value.values())
    return 1


# --- lists and objects the schema bounds ---------------------------------------------------


def test_should_pass_a_body_within_every_bound() -> None:
    assert first_problem({"to": ["a", "b", "c"], "headers": {"X": "1", "Y": "2"}}) is None


def test_should_refuse_the_list_at_its_first_item_too_many() -> None:
    assert first_problem({"to": ["a", "b", "c", "d"]}) == FieldProblem("#/to", "too many in to")


def test_should_refuse_an_object_with_too_many_members() -> None:
    problem = first_problem({"headers": {"A": "1", "B": "2", "C": "3"}})

    assert problem == FieldProblem("#/headers", "too many headers")


def test_should_bound_each_list_at_a_path_through_array_items() -> None:
    document = {"parts": [{"to": ["a"]}, {"to": ["a", "b", "c", "d"]}]}

    assert first_problem(document) == FieldProblem("#/parts/1/to", "too many in to")


def test_should_count_lists_together_across_paths() -> None:
    document = {"to": ["a", "b"], "cc": ["c", "d"], "parts": [{"to": ["e", "f"]}]}

    assert first_problem(document) == FieldProblem("#/to", "too many recipients")


def test_should_leave_a_container_of_the_other_kind_to_the_schema() -> None:
    # An object where a list belongs is refused by the model, at the cost of one error.
    assert first_problem({"to": {"a": 1, "b": 2, "c": 3, "d": 4}}) is None


def test_should_follow_a_member_name_written_with_escapes() -> None:
    body = b'{"t\\u006f": ["a", "b", "c", "d"]}'

    assert LIMITS.first_problem(body) == FieldProblem("#/to", "too many in to")


# --- depth, values and numbers everywhere --------------------------------------------------


def test_should_refuse_nesting_past_the_depth_at_the_container_too_deep() -> None:
    assert first_problem({"a": [[{}]]}) is None
    problem = first_problem({"a": [[{"b": []}]]})

    assert problem is not None
    assert problem.pointer == "#/a/0/0/b"
    assert "deeper than 4 levels" in problem.detail


def test_should_refuse_more_values_than_the_bound_where_they_pile_up() -> None:
    assert first_problem({"data": list(range(48))}) is None
    problem = first_problem({"data": list(range(49))})

    assert problem is not None
    assert problem.pointer == "#/data"
    assert "more than 50 values" in problem.detail


@pytest.mark.parametrize(
    ("body", "pointer", "detail"),
    [
        (b'{"a": NaN}', "#/a", "NaN and Infinity are not JSON numbers"),
        (b'{"a": [1, Infinity]}', "#/a/1", "NaN and Infinity are not JSON numbers"),
        (b'{"a": -Infinity}', "#/a", "NaN and Infinity are not JSON numbers"),
        (b'{"a": {"b": 1e400}}', "#/a/b", "beyond the range of a double"),
        (b'{"a": -1.5E+309}', "#/a", "beyond the range of a double"),
        (b'{"a": ' + b"1" * 101 + b"}", "#/a", f"more than {MAX_NUMBER_CHARS} characters"),
    ],
    ids=["NaN", "Infinity", "-Infinity", "1e400", "-1.5E+309", "101 digits"],
)
def test_should_refuse_a_number_python_cannot_carry_naming_it(
    body: bytes, pointer: str, detail: str
) -> None:
    problem = LIMITS.first_problem(body)

    assert problem is not None
    assert problem.pointer == pointer
    assert detail in problem.detail


@pytest.mark.parametrize("number", [b"1e-400", b"1.7976931348623157e308", b"-0.0", b"1" * 100])
def test_should_pass_numbers_a_double_or_an_int_holds(number: bytes) -> None:
    assert LIMITS.first_problem(b'{"a": ' + number + b"}") is None


@pytest.mark.parametrize(
    "body",
    [b'{"to": ["a", "b', b"]]]", b'{"to" "a"}', b'{"a": tru}', b"\xff\xfe"],
    ids=["unterminated string", "closing first", "no colon", "bad literal", "not UTF-8"],
)
def test_should_leave_a_body_that_is_not_json_to_the_parser(body: bytes) -> None:
    assert LIMITS.first_problem(body) is None


# --- strings are skipped whole, whatever they hold -----------------------------------------


@pytest.mark.parametrize(
    "text",
    ['"', "\\", '\\"', '\\\\"', '"]}[{,:', "\\u0022", "a\\", "\u202e\x00\n"],
)
def test_should_not_read_structure_inside_strings(text: str) -> None:
    document = {"to": [text, text, text], "headers": {text: text, "X": text}}

    assert first_problem(document) is None
    assert first_problem({"to": [text] * 4}) == FieldProblem("#/to", "too many in to")


def _json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text()
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=30,
    )


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(document=_json_values(), ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_should_count_depth_and_values_as_the_parsed_document_has_them(
    document: Any, ascii_only: bool, indent: int | None
) -> None:
    dumps = {"ensure_ascii": ascii_only, "indent": indent}
    depth, values = depth_of(document), values_in(document)
    exact = JsonLimits(max_depth=max(depth, 1), max_values=values)

    assert first_problem(document, exact, **dumps) is None
    if depth > 1:
        too_shallow = JsonLimits(max_depth=depth - 1, max_values=values)
        assert first_problem(document, too_shallow, **dumps) is not None
    too_few = JsonLimits(max_depth=max(depth, 1), max_values=values - 1)
    assert first_problem(document, too_few, **dumps) is not None


# --- the bounds come from the models -------------------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: list[str] = Field(max_length=3)
    note: str | None = None


class _Settings(BaseModel):
    model_config = ConfigDict(extra="allow")

    flags: Annotated[list[int], Field(max_length=7)] | None = None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parts: list[_Part] = Field(max_length=2)
    headers: Annotated[dict[str, str], Field(max_length=5)] | None = None
    settings: _Settings | None = None
    free: dict[str, Any] | None = None


def test_should_find_every_bounded_list_and_map_of_a_model_and_its_models() -> None:
    assert bounded_collections(_Body) == {
        (): (4, True),
        ("parts",): (2, False),
        ("parts", "*"): (2, True),
        ("parts", "*", "to"): (3, False),
        ("headers",): (5, True),
        ("settings", "flags"): (7, False),
    }


def test_should_word_each_limit_as_told() -> None:
    limits = item_limits(_Body, lambda path, most, is_object: f"{'.'.join(path)} {most}")

    assert limits[("parts", "*", "to")] == ItemLimit(3, "parts.*.to 3", is_object=False)
    assert limits[()] == ItemLimit(4, " 4", is_object=True)
