"""The deployment package as `func azure functionapp publish` builds it: the project directory
zipped, less what `.funcignore` excludes (gitignore-style patterns)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pathspec


def funcignore_spec(root: Path) -> pathspec.GitIgnoreSpec:
    """The patterns of `root/.funcignore`."""
    lines = (root / ".funcignore").read_text(encoding="utf-8").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def package_files(root: Path) -> list[str]:
    """Every file publish would upload, as POSIX paths relative to `root`, sorted."""
    spec = funcignore_spec(root)
    files: list[str] = []
    for directory, subdirectories, names in os.walk(root):
        relative = Path(directory).relative_to(root).as_posix()
        prefix = "" if relative == "." else f"{relative}/"
        # Prune ignored directories (.venv, node_modules) instead of walking them.
        subdirectories[:] = sorted(
            d for d in subdirectories if not spec.match_file(f"{prefix}{d}/")
        )
        for name in sorted(names):
            path = f"{prefix}{name}"
            if not spec.match_file(path) and not os.path.islink(root / path):
                files.append(path)
    return sorted(files)


def build_package(root: Path, archive: Path) -> list[str]:
    """Zip the package into `archive`; return the archive's entry names."""
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for path in package_files(root):
            zipped.write(root / path, path)
    with zipfile.ZipFile(archive) as zipped:
        return zipped.namelist()
