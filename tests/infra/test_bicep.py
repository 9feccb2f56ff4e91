"""infra/ parses with pycep (checkov's Bicep parser) and follows the house style: every
parameter and output described, role ids only in the role map, azd parameters that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import INFRA, bicep_files, parse_bicep

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
ROLE_MAP_ENTRY = re.compile(r"^\s*'[A-Z][A-Za-z ]+': '" + GUID.pattern + r"'$", re.IGNORECASE)


def relative(path: Path) -> str:
    return path.relative_to(INFRA).as_posix()


def described(declaration: dict[str, Any]) -> bool:
    return any(
        d.get("type") == "description" and str(d.get("argument", "")).strip()
        for d in declaration.get("decorators", [])
    )


@pytest.mark.parametrize("path", bicep_files(), ids=relative)
def test_should_parse_with_pycep(path: Path) -> None:
    parsed = parse_bicep(path)
    assert parsed.get("resources") or parsed.get("modules"), f"{relative(path)} declares nothing"


@pytest.mark.parametrize("path", bicep_files(), ids=relative)
def test_should_describe_every_parameter_and_output(path: Path) -> None:
    parsed = parse_bicep(path)
    missing = [
        f"{kind[:-1]} {name}"
        for kind in ("parameters", "outputs")
        for name, declaration in parsed.get(kind, {}).items()
        if not described(declaration)
    ]
    assert missing == [], f"{relative(path)}: no @description on {missing}"


def test_should_name_outputs_of_main_in_upper_snake_case() -> None:
    outputs = parse_bicep(INFRA / "main.bicep")["outputs"]
    assert [n for n in outputs if not re.fullmatch(r"[A-Z][A-Z0-9_]*", n)] == []


def test_should_write_role_ids_only_in_the_role_map() -> None:
    stray = [
        f"{relative(path)}:{number}: {line.strip()}"
        for path in bicep_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if GUID.search(line) and not (path.name == "rbac.bicep" and ROLE_MAP_ENTRY.match(line))
    ]
    assert stray == []


def test_should_name_role_assignments_from_scope_principal_and_role() -> None:
    text = (INFRA / "app" / "rbac.bicep").read_text(encoding="utf-8")
    assignments = re.findall(r"'Microsoft\.Authorization/roleAssignments@[^']+'", text)
    # The scope may be one element of a loop over existing resources: `containers[index].id`.
    # The role is a built-in one from the map, or a custom one defined in the file (`role.id`).
    names = re.findall(
        r"name: guid\((\w+(?:\[\w+\])?)\.id, (\w+), (?:roles\[[^\]]+\]|\w+\.id)\)", text
    )
    assert len(names) == len(assignments) > 0
    for other in bicep_files():
        if other.name != "rbac.bicep":
            assert "roleAssignments" not in other.read_text(encoding="utf-8"), relative(other)


def test_should_give_azd_parameters_that_main_declares() -> None:
    declared = parse_bicep(INFRA / "main.bicep")["parameters"]
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert set(given) <= set(declared)
    required = {name for name, p in declared.items() if p.get("default") is None}
    assert required <= set(given), "azd cannot fill these required parameters"
