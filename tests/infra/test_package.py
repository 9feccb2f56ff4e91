"""The deployment package, built as `func azure functionapp publish` builds it: only the app,
and the app loads from it with requirements.txt alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.infra.conftest import Package, last_json_line, repo_function_names
from tests.infra.package import package_files

# The app and what the remote build needs.
REQUIRED = ["function_app.py", "host.json", "requirements.txt", "functions/", "shared/"]
# Never deployed: tests, local tooling and state, settings with local secrets, infrastructure.
FORBIDDEN = [
    "tests/",
    ".venv/",
    "node_modules/",
    "local.settings.json",
    "local.settings.example.json",
    "devstack/",
    ".devstack/",
    "admin/",
    "infra/",
    "azure.yaml",
    ".azure/",
    ".git/",
    ".ci/",
]

LIST_FUNCTIONS = """
import json, os, sys
sys.path.insert(0, os.getcwd())
import function_app
print(json.dumps({
    "names": [f.get_function_name() for f in function_app.app.get_functions()],
    "files": [m.__file__ for n, m in sorted(sys.modules.items())
              if n.split(".")[0] in {"function_app", "functions", "shared"}],
}))
"""


def test_should_follow_funcignore_like_gitignore(tmp_path: Path) -> None:
    for path in [
        "function_app.py",
        "shared/settings.py",
        "shared/__pycache__/settings.cpython-312.pyc",
        "tests/test_a.py",
        "shared/tests/test_b.py",
        ".venv/bin/python",
        "local.settings.json",
        "docs/notes/keep.md",
    ]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    (tmp_path / ".funcignore").write_text(
        "tests\n.venv\n__pycache__\nlocal.settings.json\ndocs/*\n"
    )
    assert package_files(tmp_path) == [".funcignore", "function_app.py", "shared/settings.py"]


def present(entries: list[str], name: str) -> bool:
    return any(e == name or (name.endswith("/") and e.startswith(name)) for e in entries)


def test_should_hold_the_app(package: Package) -> None:
    assert [name for name in REQUIRED if not present(package.entries, name)] == []


def test_should_leave_out_tests_tooling_and_local_settings(package: Package) -> None:
    assert [name for name in FORBIDDEN if present(package.entries, name)] == []
    assert [e for e in package.entries if "__pycache__/" in e or e.endswith(".pyc")] == []


def test_should_load_every_function_with_requirements_txt_alone(
    package: Package, package_python: tuple[str, Path]
) -> None:
    version, python = package_python
    result = subprocess.run(
        [str(python), "-I", "-c", LIST_FUNCTIONS],
        cwd=package.directory,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"the package does not import on Python {version}:\n" + (
        result.stderr
    )
    loaded = last_json_line(result.stdout)
    expected = repo_function_names()
    assert {"submit_message", "health", "deliver_message"} <= set(expected)
    assert loaded["names"] == expected
    # Every module of the app came from the package, none from the repository.
    outside = [f for f in loaded["files"] if not Path(f).is_relative_to(package.directory)]
    assert outside == []


def test_should_carry_the_console_page_it_serves(package: Package) -> None:
    # The page's HTML, CSS and JS are read at run time; a package without them would 500.
    pages = sorted(e for e in package.entries if e.startswith("shared/console_page/"))

    assert pages == [
        "shared/console_page/console.css",
        "shared/console_page/console.html",
        "shared/console_page/console.js",
    ]
