"""Fixtures for the deployment checks: the package as publish builds it, the Python 3.13
worker's indexer, and checkov's report. Each is built once per session; the environments they
need are cached under `.devstack/venvs` (see venvs.py)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from tests.infra.package import build_package
from tests.infra.venvs import ROOT, cached_venv, find_python

INFRA = ROOT / "infra"
HERE = Path(__file__).resolve().parent
# Set by .ci/run: there the worker-indexer check must run, never be skipped.
REQUIRE_INDEXER = "MAILGATE_REQUIRE_PYTHON313"
INDEXER_PYTHON = "3.13"


@dataclass(frozen=True)
class Package:
    """The deployment package: its zip entries and where it is unpacked."""

    entries: list[str]
    directory: Path


@dataclass(frozen=True)
class Indexed:
    """What the worker's indexer answered for one app directory."""

    returncode: int
    document: dict[str, Any]
    stderr: str


def bicep_files() -> list[Path]:
    """Every Bicep file under infra/."""
    return sorted(INFRA.rglob("*.bicep"))


@functools.cache
def _bicep_parser() -> BicepParser:
    return BicepParser()


@functools.cache
def parse_bicep(path: Path) -> dict[str, Any]:
    """The Bicep file as pycep (checkov's parser) reads it; shared between tests, do not modify."""
    return dict(_bicep_parser().parse(file_path=path))


def last_json_line(output: str) -> dict[str, Any]:
    """The last line of `output` that is a JSON object."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            document: dict[str, Any] = json.loads(line)
            return document
    raise AssertionError(f"no JSON document in the output:\n{output}")


def function_names(app_directory: Path, python: str = sys.executable) -> list[str]:
    """The names `function_app.app.get_functions()` lists for the app in `app_directory`.

    A separate process: `get_functions()` may be called only once per app object.
    """
    script = (
        "import json, os, sys; sys.path.insert(0, os.getcwd()); import function_app; "
        "print(json.dumps({'names': [f.get_function_name() "
        "for f in function_app.app.get_functions()]}))"
    )
    result = subprocess.run(
        [python, "-I", "-c", script],
        cwd=app_directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    names: list[str] = last_json_line(result.stdout)["names"]
    return names


def repo_function_names() -> list[str]:
    """The function names of the repository's own app."""
    return function_names(ROOT)


def infra_python_version() -> str:
    """The runtime Python version infra/main.bicep deploys by default."""
    default = parse_bicep(INFRA / "main.bicep")["parameters"]["pythonVersion"]["default"]
    return str(default)


@pytest.fixture(scope="session")
def package(tmp_path_factory: pytest.TempPathFactory) -> Package:
    """The package publish would upload, zipped and unpacked again."""
    work = tmp_path_factory.mktemp("package")
    archive = work / "package.zip"
    entries = build_package(ROOT, archive)
    directory = work / "unpacked"
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(directory)
    return Package(entries=entries, directory=directory)


@pytest.fixture(scope="session")
def package_python() -> tuple[str, Path]:
    """The Python version and a venv with requirements.txt alone, as the remote build has.

    The runtime's version from infra/ when this machine has it, else the test interpreter's.
    """
    version = infra_python_version()
    python = find_python(version) or sys.executable
    venv = cached_venv("package", python, [ROOT / "requirements.txt"])
    return version, venv / "bin" / "python"


@pytest.fixture(scope="session")
def indexer_python() -> Path:
    """Python 3.13 with requirements.txt and azure-functions-runtime (the worker's library)."""
    python = find_python(INDEXER_PYTHON)
    if python is None:
        where = "python3.13 on PATH or under $(pyenv root)/versions/3.13*/bin"
        if os.environ.get(REQUIRE_INDEXER):
            pytest.fail(f"{REQUIRE_INDEXER} is set but no Python 3.13 was found ({where})")
        pytest.skip(
            f"DID NOT RUN: the worker-indexer check needs Python 3.13 ({where}); install it "
            "to check that the host would load every function"
        )
    venv = cached_venv(
        "indexer", python, [ROOT / "requirements.txt", HERE / "indexer-requirements.txt"]
    )
    return venv / "bin" / "python"


def run_indexer(python: Path, app_directory: Path) -> Indexed:
    """Index `app_directory` with the worker's own indexer."""
    result = subprocess.run(
        [str(python), "-I", str(HERE / "index_app.py"), str(app_directory)],
        cwd=app_directory,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return Indexed(result.returncode, last_json_line(result.stdout), result.stderr)


@pytest.fixture(scope="session")
def checkov_report() -> dict[str, Any]:
    """checkov's JSON report on infra/ (Bicep), from a pinned checkov in its own venv."""
    venv = cached_venv("checkov", sys.executable, [HERE / "checkov-requirements.txt"])
    command = [str(venv / "bin" / "python"), "-m", "checkov.main", "--directory", "infra"]
    command += ["--framework", "bicep", "--output", "json", "--skip-download", "--compact"]
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"checkov printed no JSON report ({result.returncode}):\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        ) from None
    # One framework gives one report object; several give a list.
    if isinstance(report, list):
        [report] = [r for r in report if r.get("check_type") == "bicep"]
    assert isinstance(report, dict), report
    return report
