"""requirements.txt pins azure-functions to one tested version for every Python infra/ may deploy:
its 1.x runs on 3.10-3.12 only and its 2.x on 3.13 only, so a range would let the remote build
pick a version no test ran with."""

from __future__ import annotations

import sys
from importlib.metadata import version

from packaging.requirements import Requirement

from tests.infra.conftest import INFRA, parse_bicep
from tests.infra.venvs import ROOT

PACKAGE = "azure-functions"


def pins(python: str) -> list[str]:
    """The versions requirements.txt installs of azure-functions on this `major.minor`."""
    found = []
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        requirement = Requirement(text)
        if requirement.name != PACKAGE:
            continue
        if requirement.marker and not requirement.marker.evaluate({"python_version": python}):
            continue
        specifiers = list(requirement.specifier)
        assert [s.operator for s in specifiers] == ["=="], f"not an exact pin: {text}"
        found.append(specifiers[0].version)
    return found


def deployable_pythons() -> list[str]:
    parameter = parse_bicep(INFRA / "main.bicep")["parameters"]["pythonVersion"]
    [allowed] = [d["argument"] for d in parameter["decorators"] if d["type"] == "allowed"]
    return [str(v) for v in allowed]


def test_should_pin_one_azure_functions_for_every_python_infra_deploys() -> None:
    pythons = deployable_pythons()
    assert {"3.12", "3.13"} <= set(pythons)

    for python in pythons:
        [pinned] = pins(python)
        major = int(pinned.split(".")[0])
        assert major == (2 if python == "3.13" else 1), (python, pinned)


def test_should_pin_the_azure_functions_these_tests_run_with() -> None:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"

    assert pins(python) == [version(PACKAGE)]
