"""What the operator commands print by default: their JSON documents as readable tables.

Each table is a view of the very document `--json` prints, so the two never disagree. Columns
are left-aligned and two spaces apart; the last column (a reason, a list of senders) is cut to
what is left of the terminal's width, with an ellipsis, and is whole only in `--json`. Times
are shown as ages: 45s, 3m, 2h, 5d.
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

DEFAULT_WIDTH = 120
# The last column keeps at least this much, however narrow the terminal.
MIN_LAST_COLUMN = 30
GAP = "  "
NONE = "-"

# shared/replay_advice.py Replay, as a column: can a replay help?
REPLAY_SHOWN = {"helps": "yes", "after_fix": "after fix", "no": "no"}

_BLANKS = re.compile(r"\s+")
# The table's room is short: "SendGrid refused the message with 403: ..." reads "SendGrid 403:
# ..." there (whole in --json).
_SENDGRID_SAID = re.compile(r"SendGrid (?:refused the message with|answered) (\d{3})")


def human_age(seconds: float) -> str:
    """An age in its largest whole unit: 45s, 3m, 2h, 5d (never negative)."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def age_since(iso: str | None, now: datetime) -> str:
    """The age of an ISO 8601 time at `now`, or NONE without one (or one that is unreadable)."""
    if not iso:
        return NONE
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return NONE
    return human_age((now - then).total_seconds())


def one_line(text: str, most: int) -> str:
    """The text on one line (runs of blanks and line breaks made one space), cut to `most`
    characters with an ellipsis."""
    flat = _BLANKS.sub(" ", text).strip()
    if len(flat) <= most:
        return flat
    return flat[: max(0, most - 1)] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> list[str]:
    """Rows under headers, each column as wide as its widest cell but the last, which is cut
    to fit `width` (MIN_LAST_COLUMN at least)."""
    fixed = [
        max(len(header), *(len(row[index]) for row in rows)) if rows else len(header)
        for index, header in enumerate(headers[:-1])
    ]
    last = max(MIN_LAST_COLUMN, width - sum(fixed) - len(GAP) * len(fixed))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(size) for cell, size in zip(row[:-1], fixed, strict=True)]
        lines.append(GAP.join([*cells, one_line(row[-1], last)]).rstrip())
    return lines


def dead_letter_lines(document: Mapping[str, Any], now: datetime, width: int) -> list[str]:
    """`make poison`: id, age, attempts, whether a replay helps and the reason of each dead
    letter; then what to do, once per cause."""
    letters = document["dead_letters"]
    if not letters:
        return ["The poison queue is empty."]
    rows = [
        [
            letter["id"] or NONE,
            age_since(letter["dead_lettered_at"], now),
            NONE if letter["attempts"] is None else str(letter["attempts"]),
            REPLAY_SHOWN.get(letter.get("replay") or "", NONE),
            _SENDGRID_SAID.sub(r"SendGrid \1", letter["reason"]),
        ]
        for letter in letters
    ]
    lines = table(["ID", "AGE", "ATTEMPTS", "REPLAY", "REASON"], rows, width)
    lines += [
        "",
        f"{len(letters)} dead letter(s); --json (make poison FORMAT=json) has whole "
        "reasons and SendGrid's errors.",
    ]
    causes = Counter(letter["cause"] for letter in letters if letter.get("action"))
    if causes:
        lines += ["", "What to do:"]
        actions = {letter["cause"]: letter for letter in letters if letter.get("action")}
        for cause, count in causes.items():
            advice = actions[cause]
            replay = REPLAY_SHOWN.get(advice["replay"], advice["replay"])
            lines += textwrap.wrap(
                f"{cause} ({count}, replay: {replay}): {advice['action']}",
                width=max(width, MIN_LAST_COLUMN),
                initial_indent="  ",
                subsequent_indent="    ",
            )
    return lines


def walk_report_lines(document: Mapping[str, Any], done: str, width: int) -> list[str]:
    """`make replay` and `make purge`: each id and what became of it (`done`: "replayed" or
    "purged")."""
    rows = [[id, done, ""] for id in document["done"]]
    rows += [[id, "skipped", why] for id, why in document["skipped"].items()]
    rows += [[id, "not found", ""] for id in document["not_found"]]
    summary = (
        f"{len(document['done'])} {done}, {len(document['skipped'])} skipped, "
        f"{len(document['not_found'])} not found."
    )
    if not rows:
        return [summary]
    return [*table(["ID", "RESULT", "WHY"], rows, width), "", summary]


def client_lines(clients: Sequence[Mapping[str, Any]], now: datetime, width: int) -> list[str]:
    """`make clients` (and the client a command made or changed): never a key."""
    if not clients:
        return ["No clients yet: make client NAME=<name> SENDERS=<addresses and @domains>."]
    rows = [
        [
            client["name"],
            "yes" if client["enabled"] else "no",
            str(client["rate_per_minute"]),
            ",".join(client["features"]) or NONE,
            age_since(client["created_at"], now),
            ",".join(client["senders"]),
        ]
        for client in clients
    ]
    return table(["NAME", "ENABLED", "RATE/MIN", "FEATURES", "AGE", "SENDERS"], rows, width)
