"""The bench table: rows with their targets, the machine they ran on, and docs/performance.md."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import psutil

RESULTS_BEGIN = "<!-- bench:results:begin (written by `make bench`; edit outside these markers) -->"
RESULTS_END = "<!-- bench:results:end -->"
HEADER = ("scenario", "figure", "gateway", "baseline", "ratio", "target", "met?")
VERSIONED_PACKAGES = ("azure-storage-queue", "azure-data-tables", "azure-core", "httpx", "sendgrid")


@dataclass(frozen=True)
class Target:
    """What a ratio must reach: at least (`>=`) or at most (`<=`) a bound."""

    op: str
    bound: float

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise ValueError(f"unknown target operator {self.op!r}")

    def met(self, value: float | None) -> bool | None:
        """True or False for a measured ratio; None when nothing was measured."""
        if value is None:
            return None
        return value >= self.bound if self.op == ">=" else value <= self.bound

    def __str__(self) -> str:
        symbol = "≥" if self.op == ">=" else "≤"
        return f"{symbol} {format_number(self.bound)}"


@dataclass(frozen=True)
class Row:
    """One line of the table; `ratio` is gateway ÷ baseline unless given."""

    scenario: str
    figure: str
    gateway: float | str | None
    baseline: float | str | None = None
    ratio: float | None = None
    target: Target | str | None = None

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None for a row without one."""
        return self.target.met(self.ratio) if isinstance(self.target, Target) else None

    def cells(self) -> tuple[str, ...]:
        """The row's cells as text."""
        met = {True: "met", False: "**NOT met**", None: ""}[self.met]
        return (
            self.scenario,
            self.figure,
            _cell(self.gateway),
            _cell(self.baseline),
            "" if self.ratio is None else format_number(self.ratio),
            "" if self.target is None else str(self.target),
            met,
        )


def format_number(value: float) -> str:
    """Three significant digits or so, without scientific notation: 0.0123, 4.56, 78.9, 1,234."""
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1 or magnitude == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _cell(value: float | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return format_number(value)


def render_table(rows: Sequence[Row]) -> str:
    """The rows as one markdown table."""
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * 3 + ["---"] * 2) + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def missed(rows: Sequence[Row]) -> list[Row]:
    """The rows whose target was not met."""
    return [row for row in rows if row.met is False]


def cpu_model() -> str:
    """The CPU's model name, as the kernel reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines() -> list[str]:
    """What the numbers were measured on."""
    versions = ", ".join(f"{name} {_version(name)}" for name in VERSIONED_PACKAGES)
    return [
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores "
        f"(load average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())})",
        f"- RAM: {psutil.virtual_memory().total / 2**30:.1f} GiB",
        f"- Python {platform.python_version()} ({sys.implementation.name}), "
        f"{platform.system()} {platform.release()}",
        f"- Packages: {versions}",
    ]


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def replace_results(document: str, section: str) -> str:
    """The document with the text between the result markers replaced (appended if none)."""
    block = f"{RESULTS_BEGIN}\n{section.strip()}\n{RESULTS_END}"
    start = document.find(RESULTS_BEGIN)
    end = document.find(RESULTS_END)
    if start == -1 or end == -1 or end < start:
        return document.rstrip("\n") + "\n\n" + block + "\n"
    return document[:start] + block + document[end + len(RESULTS_END) :]


def write_results(path: Path, section: str) -> None:
    """Put `section` between the result markers of `path`, keeping the hand-written rest."""
    document = path.read_text(encoding="utf-8") if path.exists() else "# Performance\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_results(document, section), encoding="utf-8")
