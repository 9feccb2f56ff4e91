"""The Python 3.13 worker's own indexer accepts every function of the package, as the host
needs at start-up, and refuses what `get_functions()` alone lets through."""

from __future__ import annotations

from pathlib import Path

from tests.infra.conftest import HERE, Package, function_names, repo_function_names, run_indexer

BROKEN_APP = HERE / "broken_app"


def test_should_index_every_function_of_the_package(package: Package, indexer_python: Path) -> None:
    indexed = run_indexer(indexer_python, package.directory)
    assert indexed.returncode == 0, indexed.document.get("error") or indexed.stderr
    functions = indexed.document["functions"]
    assert [f["name"] for f in functions] == repo_function_names()
    for function in functions:
        triggers = [b for b in function["bindings"] if b["type"].endswith("Trigger")]
        assert len(triggers) == 1, function


def test_should_refuse_a_binding_that_names_no_parameter(indexer_python: Path) -> None:
    indexed = run_indexer(indexer_python, BROKEN_APP)
    assert indexed.returncode == 1
    assert "deliver_message" in indexed.document["error"]
    assert "{'msg'}" in indexed.document["error"]


def test_should_be_needed_because_get_functions_accepts_the_broken_app() -> None:
    assert function_names(BROKEN_APP) == ["deliver_message"]
