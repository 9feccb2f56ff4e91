"""Sampling profiles of the host process with py-spy, summarised as top frames and packages.

`python -m bench --profile DIR` records one profile per measured window of the gateway (accept
at each concurrency, the delivery drain) as py-spy's collapsed-stack text in DIR, and prints
where the samples fell: the repository's own frames and the library calls they make
(inclusive), and the innermost frames and their packages (self). Only threads holding the GIL
are sampled, so the shares are of the host's Python CPU time, not of time spent waiting.
"""

from __future__ import annotations

import itertools
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SAMPLES_PER_SECOND = 100
STOP_TIMEOUT_SECONDS = 60.0
_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")
_SITE = re.compile(r".*/(?:site|dist)-packages/")
_STDLIB = re.compile(r".*/lib/python3\.\d+/")

Stack = tuple[tuple[str, ...], int]


def parse_collapsed(text: str) -> list[Stack]:
    """py-spy's raw output: one `frame;frame;...;leaf count` line per distinct stack."""
    stacks: list[Stack] = []
    for line in text.splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        stacks.append((tuple(frames.split(";")), int(count)))
    return stacks


def short_path(path: str, repo: str = "") -> str:
    """A file path without the interpreter's or the repository's prefix."""
    # Site-packages first: the virtual environment may live inside the repository.
    for pattern in (_SITE, _STDLIB):
        shortened = pattern.sub("", path, count=1)
        if shortened != path:
            return shortened
    if repo and path.startswith(repo.rstrip("/") + "/"):
        return path[len(repo.rstrip("/")) + 1 :]
    return path


def short_frame(frame: str, repo: str = "") -> str:
    """`function (file.py:123)` as `function (file.py)`, with short paths (lines merged)."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    return f"{match['name']} ({short_path(match['file'], repo)})"


def package_of(frame: str, repo: str = "") -> str:
    """The package a frame's file belongs to: `azure/core`, `pydantic`, `shared`, `json`..."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    parts = short_path(match["file"], repo).split("/")
    if parts[0] in ("azure", "devstack") and len(parts) > 2:
        return "/".join(parts[:2])
    return parts[0].removesuffix(".py")


@dataclass(frozen=True)
class Share:
    """A frame or package and its share of the samples."""

    name: str
    samples: int
    percent: float


def _shares(counter: Counter[str], total: int, limit: int) -> list[Share]:
    return [Share(name, n, 100.0 * n / total) for name, n in counter.most_common(limit)]


def is_own(frame: str, repo: str) -> bool:
    """Whether a frame is the repository's code (not a library in its virtual environment)."""
    match = _FRAME.match(frame)
    if match is None or not repo:
        return False
    path = match["file"]
    return path.startswith(repo.rstrip("/") + "/") and _SITE.match(path) is None


def top_inclusive(
    stacks: Iterable[Stack], limit: int = 20, repo: str = "", *, own_only: bool = False
) -> list[Share]:
    """Frames by the share of samples they appear in (anywhere in the stack)."""
    counter: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        chosen = {short_frame(f, repo) for f in frames if not own_only or is_own(f, repo)}
        for frame in chosen:
            counter[frame] += count
    return _shares(counter, total, limit) if total else []


def library_calls(stacks: Iterable[Stack], limit: int = 20, repo: str = "") -> list[Share]:
    """Library functions the repository's code calls, by the share of samples under them."""
    counter: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        calls = {
            short_frame(callee, repo)
            for caller, callee in itertools.pairwise(frames)
            if is_own(caller, repo) and not is_own(callee, repo)
        }
        for call in calls:
            counter[call] += count
    return _shares(counter, total, limit) if total else []


def top_self(stacks: Iterable[Stack], limit: int = 20, repo: str = "") -> list[Share]:
    """Frames by the share of samples in which they were the innermost Python frame."""
    counter: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        counter[short_frame(frames[-1], repo)] += count
    return _shares(counter, total, limit) if total else []


def by_package(stacks: Iterable[Stack], limit: int = 20, repo: str = "") -> list[Share]:
    """Packages by the share of samples whose innermost frame is theirs."""
    counter: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        counter[package_of(frames[-1], repo)] += count
    return _shares(counter, total, limit) if total else []


def render_profile(title: str, stacks: list[Stack], repo: str = "", limit: int = 15) -> str:
    """A profile summary as markdown: the repository's frames, its library calls, self time."""
    total = sum(count for _, count in stacks)
    out = [f"### {title} ({total} samples at {SAMPLES_PER_SECOND}/s, threads holding the GIL)"]
    for heading, shares in (
        ("the repository's code, inclusive", top_inclusive(stacks, limit, repo, own_only=True)),
        (
            "library calls made by the repository's code, inclusive",
            library_calls(stacks, limit, repo),
        ),
        ("self (innermost Python frame)", top_self(stacks, limit, repo)),
        ("self by package", by_package(stacks, limit, repo)),
    ):
        out += ["", f"{heading}:", "", "| % | frame |", "|---:|---|"]
        out += [f"| {s.percent:.1f} | `{s.name}` |" for s in shares]
    return "\n".join(out)


def py_spy_executable() -> str:
    """py-spy next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: pip install -r requirements-dev.txt")
    return found


class ProfileSession:
    """py-spy recording one process between `start()` and `stop()`."""

    def __init__(self, pid: int, output: Path) -> None:
        self.pid = pid
        self.output = output
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Attach py-spy (non-blocking: it never pauses the host)."""
        log = self.output.with_suffix(".log").open("wb")
        self._process = subprocess.Popen(
            [
                py_spy_executable(),
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(SAMPLES_PER_SECOND),
                "--format",
                "raw",
                "--output",
                str(self.output),
                "--nonblocking",
                # CPU, not waiting: only threads that hold the GIL (the host is one process).
                "--gil",
                "--full-filenames",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def stop(self) -> None:
        """Stop sampling (SIGINT makes py-spy write its output) and wait for the file."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Profiler:
    """Makes one ProfileSession per named window and summarises them at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sessions: dict[str, ProfileSession] = {}

    def session(self, name: str, pid: int) -> ProfileSession:
        """A new session writing `<name>.txt`."""
        session = ProfileSession(pid, self.directory / f"{name}.txt")
        self.sessions[name] = session
        return session

    def summary(self, repo: str = "") -> str:
        """Every recorded profile, summarised."""
        parts = []
        for name, session in self.sessions.items():
            if not session.output.exists():
                parts.append(f"### {name}\n\npy-spy wrote nothing (see {session.output}.log)")
                continue
            stacks = parse_collapsed(session.output.read_text(errors="replace"))
            parts.append(render_profile(name, stacks, repo))
        return "\n\n".join(parts)
