"""Interpreters and cached virtual environments for the deployment checks.

Each environment lives under `.devstack/venvs/<name>-<key>`, where the key hashes the Python
version and the requirement files: it is built once (this needs PyPI) and reused until one of
them changes. A build goes to a temporary directory first and is renamed into place, so an
interrupted or concurrent build never leaves a half-installed environment behind.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / ".devstack" / "venvs"


def python_version(python: str) -> str:
    """`major.minor` of an interpreter, or "" when it does not run (a pyenv shim without it)."""
    try:
        result = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def find_python(version: str) -> str | None:
    """An interpreter of this `major.minor`: on PATH as pythonX.Y, else under pyenv, else None."""
    candidates = [shutil.which(f"python{version}") or ""]
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(
        glob.glob(os.path.join(pyenv_root, "versions", f"{version}*", "bin", f"python{version}")),
        reverse=True,
    )
    for candidate in candidates:
        if candidate and python_version(candidate) == version:
            return candidate
    return None


def cached_venv(name: str, python: str, requirements: list[Path]) -> Path:
    """A virtual environment with `requirements` installed by `python`; built on first use."""
    version = python_version(python)
    digest = hashlib.sha256(version.encode())
    for path in requirements:
        digest.update(path.read_bytes())
    target = VENVS / f"{name}-py{version}-{digest.hexdigest()[:12]}"
    if (target / "bin" / "python").exists():
        return target
    VENVS.mkdir(parents=True, exist_ok=True)
    building = VENVS / f".{target.name}.{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    try:
        _run([python, "-m", "venv", str(building)], f"creating the {name} environment")
        install = [str(building / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        install += ["--disable-pip-version-check", "--no-input"]
        for path in requirements:
            install += ["-r", str(path)]
        _run(install, f"installing {', '.join(p.name for p in requirements)} for {name} (PyPI)")
        try:
            building.rename(target)
        except OSError:
            # Another run finished the same environment first; use theirs.
            if not (target / "bin" / "python").exists():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    for stale in VENVS.glob(f"{name}-py*"):
        if stale != target:
            shutil.rmtree(stale, ignore_errors=True)
    return target


def _run(command: list[str], doing: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{doing} failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
