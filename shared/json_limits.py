"""Bounds on a JSON request body, checked on its raw bytes before any of it is parsed.

A body may be up to MAX_REQUEST_BYTES (30 MB), and what it costs to parse and validate grows
with the number of values in it, not with its size: 30 MB of `"x",` is 7.5 million strings,
each of which pydantic would validate (and report) before it looked at the list's length. So
one pass over the bytes comes first. A regular expression finds each token, and no Python
object is built for any value; the pass stops at the first of these problems:

- the body nests deeper than MAX_JSON_DEPTH arrays and objects: the queue envelope wraps the
  body one level deeper, and the parser that reads it back at delivery has a depth limit of
  its own (about 200), which the envelope must never reach;
- it has more than MAX_JSON_VALUES values (every string, number, literal, array and object;
  a member's name does not count), the bound on everything free-form (template data);
- a list or object the schema bounds has more items than it allows (`ItemLimit`), or lists
  counted together (the recipients of a message) have more items together;
- a number that JSON allows and Python cannot carry: `NaN` and `Infinity` (not JSON, but
  accepted by lenient parsers), a float beyond the double range (`1e400` would be read as
  infinity and written back as `null`), a number longer than MAX_NUMBER_CHARS.

The pass reads a body that is not JSON as far as it can and leaves the syntax error to the
parser: everything it reports about a body is a problem of a body that could be valid JSON.
Its work is bounded by MAX_JSON_VALUES tokens (plus as many closing brackets and names); long
strings are skipped by the regular expression in one step.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from shared.errors import FieldProblem, json_pointer

MAX_JSON_DEPTH = 64
MAX_JSON_VALUES = 200_000
MAX_NUMBER_CHARS = 100

# A path pattern: member names from the root, "*" for any item of an array.
Path = tuple[str, ...]
ANY_ITEM = "*"

# One token per match, separators and whitespace skipped inside it (they cost no iteration).
# Strings are matched as `"[^"]*"` in a copy of the body whose escaped quotes and backslashes
# are blanked out (`_without_escaped_quotes`): a string of millions of escapes is then one step
# of the regular expression, not millions. Integers of up to 15 digits and the literals need no
# look; any other scalar is checked as a number.
_TOKEN = re.compile(
    rb'[\s,:]*(?:("[^"]*")|([\[{])|([\]}])'
    rb'|((?:-?[0-9]{1,15}|true|false|null)(?![^\s,:\[\]{}"]))|([^\s,:\[\]{}"]+)|("))'
)
_STRING, _OPEN, _CLOSE, _PLAIN_SCALAR, _OTHER_SCALAR, _UNTERMINATED = 1, 2, 3, 4, 5, 6
_NOT_NUMBERS = frozenset((b"NaN", b"Infinity", b"-Infinity", b"+Infinity"))


def _without_escaped_quotes(body: bytes) -> bytes:
    """The body with each `\\\\` and `\\"` replaced by two underscores: the same length, and no
    quote left in it that does not open or close a string.

    Escapes are read left to right in pairs, and so does `bytes.replace`: in valid JSON a run of
    backslashes always begins at an escape's start, so the pairs it replaces are escapes.
    """
    if b"\\" not in body:
        return body
    return body.replace(b"\\\\", b"__").replace(b'\\"', b"__")


@dataclass(frozen=True)
class ItemLimit:
    """An array (or an object: `is_object`) holds at most `most` items, else `message`.

    `pointer` names the field the problem is reported at; by default the array or object
    itself. A container of the other kind is left to the schema to refuse.
    """

    most: int
    message: str
    is_object: bool
    pointer: str | None = None


@dataclass(frozen=True)
class JsonLimits:
    """What one kind of request body may hold: depth, values, and its bounded lists."""

    # Each list or object at one of these paths holds at most that many items.
    each: Mapping[Path, ItemLimit] = field(default_factory=dict)
    # The lists at all these paths together hold at most that many items.
    together: tuple[tuple[frozenset[Path], ItemLimit], ...] = ()
    max_depth: int = MAX_JSON_DEPTH
    max_values: int = MAX_JSON_VALUES
    # Every path that leads to a bounded one: only there are names decoded and followed.
    _tracked: frozenset[Path] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bounded = set(self.each) | {path for paths, _ in self.together for path in paths}
        tracked = {path[:length] for path in bounded for length in range(len(path) + 1)}
        object.__setattr__(self, "_tracked", frozenset(tracked))

    def first_problem(self, body: bytes) -> FieldProblem | None:
        """The first bound the body breaks, located by a JSON Pointer; None if it keeps all."""
        return _Scan(self).run(body)


class _Container:
    """An array or object open at the point the scan has reached."""

    __slots__ = ("checked", "groups", "is_object", "items", "key", "limit", "path", "wants_name")

    def __init__(
        self,
        is_object: bool,
        path: Path | None,
        limit: ItemLimit | None,
        groups: tuple[int, ...],
    ) -> None:
        self.is_object = is_object
        # The path pattern, or None where no bounded path lies below.
        self.path = path
        self.limit = limit
        self.groups = groups
        self.checked = limit is not None or bool(groups)
        self.items = 0
        self.wants_name = is_object
        # Where the name of the member being read is in the body, quotes included.
        self.key = (0, 0)


class _Scan:
    """One pass over a body (see the module docstring)."""

    def __init__(self, limits: JsonLimits) -> None:
        self._limits = limits
        self._stack: list[_Container] = []
        self._together = [0] * len(limits.together)
        self._groups: dict[Path, tuple[int, ...]] = {}
        for index, (paths, _) in enumerate(limits.together):
            for path in paths:
                self._groups[path] = (*self._groups.get(path, ()), index)

    def run(self, body: bytes) -> FieldProblem | None:
        limits, stack = self._limits, self._stack
        max_values, max_depth = limits.max_values, limits.max_depth
        values = 0
        parent: _Container | None = None
        for token in _TOKEN.finditer(_without_escaped_quotes(body)):
            kind = token.lastindex
            if kind == _CLOSE:
                if parent is None:
                    return None
                stack.pop()
                parent = stack[-1] if stack else None
                continue
            if parent is not None:
                if parent.wants_name:
                    if kind != _STRING:
                        return None
                    parent.key = token.span(_STRING)
                    parent.wants_name = False
                    continue
                parent.items += 1
                parent.wants_name = parent.is_object
                if parent.checked:
                    problem = self._count(parent, body)
                    if problem is not None:
                        return problem
            values += 1
            if values > max_values:
                return FieldProblem(
                    self._pointer(body),
                    f"the body has more than {max_values:,} values (strings, numbers, "
                    "arrays, objects, ...): this gateway accepts at most that many",
                )
            if kind == _OPEN:
                if len(stack) >= max_depth:
                    return FieldProblem(
                        self._pointer(body, with_value=True),
                        f"nests deeper than {max_depth} levels of arrays and objects "
                        "(the whole body counted): this gateway accepts at most that many",
                    )
                is_object = token.group(_OPEN) == b"{"
                if parent is None or parent.path is not None:
                    parent = self._open(is_object, parent, body)
                else:
                    parent = _Container(is_object, None, None, ())
                stack.append(parent)
            elif kind == _OTHER_SCALAR:
                problem = self._number_problem(token.group(_OTHER_SCALAR), body)
                if problem is not None:
                    return problem
        return None

    def _count(self, container: _Container, body: bytes) -> FieldProblem | None:
        for index in container.groups:
            self._together[index] += 1
            _, shared_limit = self._limits.together[index]
            if self._together[index] > shared_limit.most:
                return FieldProblem(
                    shared_limit.pointer or self._pointer(body), shared_limit.message
                )
        limit = container.limit
        if limit is not None and container.items > limit.most:
            return FieldProblem(limit.pointer or self._pointer(body), limit.message)
        return None

    def _open(self, is_object: bool, parent: _Container | None, body: bytes) -> _Container:
        path: Path | None = ()
        if parent is not None:
            path = None
            if parent.path is not None:
                step = _name(body, parent.key) if parent.is_object else ANY_ITEM
                if (*parent.path, step) in self._limits._tracked:
                    path = (*parent.path, step)
        if path is None:
            return _Container(is_object, None, None, ())
        limit: ItemLimit | None = self._limits.each.get(path)
        groups = tuple(
            index
            for index in self._groups.get(path, ())
            if self._limits.together[index][1].is_object == is_object
        )
        if limit is not None and limit.is_object != is_object:
            limit = None
        return _Container(is_object, path, limit, groups)

    def _number_problem(self, scalar: bytes, body: bytes) -> FieldProblem | None:
        problem = None
        if scalar in _NOT_NUMBERS:
            problem = "NaN and Infinity are not JSON numbers: send a number, or a string"
        elif scalar[:1] not in b"-0123456789":
            return None  # not JSON: the parser says so
        elif len(scalar) > MAX_NUMBER_CHARS:
            problem = f"is a number of more than {MAX_NUMBER_CHARS} characters: send it as a string"
        elif any(c in scalar for c in b".eE"):
            try:
                number = float(scalar)
            except ValueError:
                return None
            if math.isinf(number):
                problem = (
                    "is a number beyond the range of a double (it would be read as Infinity): "
                    "send it as a string"
                )
        return None if problem is None else FieldProblem(self._pointer(body, True), problem)

    def _pointer(self, body: bytes, with_value: bool = False) -> str:
        """The pointer of the innermost open container, or of the value just read in it."""
        stack = self._stack if with_value else self._stack[:-1]
        return json_pointer(
            _name(body, container.key) if container.is_object else container.items - 1
            for container in stack
        )


def _name(body: bytes, span: tuple[int, int]) -> str:
    """The member name at `span` of the body (its JSON text, quotes included), decoded."""
    raw = body[span[0] : span[1]]
    if b"\\" not in raw:
        return raw[1:-1].decode("utf-8", "replace")
    try:
        name = json.loads(raw)
    except ValueError:
        return raw[1:-1].decode("utf-8", "replace")
    return name if isinstance(name, str) else ""


def bounded_collections(model: type[BaseModel]) -> dict[Path, tuple[int, bool]]:
    """Path → (most items, is an object) for each list and dict of `model` that has a
    `max_length`, and of the models in its fields, found by their aliases; and for each of these
    models that refuses unknown fields, its number of fields as the most members it can have."""
    found: dict[Path, tuple[int, bool]] = {}

    def walk_model(current: type[BaseModel], path: Path) -> None:
        if current.model_config.get("extra") == "forbid":
            found.setdefault(path, (len(current.model_fields), True))
        for name, info in current.model_fields.items():
            walk_type(info.annotation, (*path, info.alias or name), _max_length(info.metadata))

    def walk_type(annotation: Any, path: Path, most: int | None) -> None:
        origin = typing.get_origin(annotation)
        arguments = typing.get_args(annotation)
        if origin is Annotated:
            most = _max_length(arguments[1:]) or most
            walk_type(arguments[0], path, most)
        elif origin in (typing.Union, types.UnionType):
            for argument in arguments:
                walk_type(argument, path, most)
        elif origin in (list, dict):
            if most is not None:
                found[path] = (most, origin is dict)
            if origin is list:
                walk_type(arguments[0], (*path, ANY_ITEM), None)
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            walk_model(annotation, path)

    walk_model(model, ())
    return found


def _max_length(metadata: Iterable[object]) -> int | None:
    for item in metadata:
        if isinstance(item, annotated_types.MaxLen):
            return item.max_length
        if isinstance(item, FieldInfo):
            nested = _max_length(item.metadata)
            if nested is not None:
                return nested
    return None


def item_limits(
    model: type[BaseModel], describe: Callable[[Path, int, bool], str]
) -> dict[Path, ItemLimit]:
    """An ItemLimit for each bounded list and dict of `model`, worded by `describe(path, most,
    is_object)`."""
    return {
        path: ItemLimit(most, describe(path, most, is_object), is_object)
        for path, (most, is_object) in bounded_collections(model).items()
    }
