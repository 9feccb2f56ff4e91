"""Soak: 2,000 messages through the local stack with transient faults and two host SIGKILLs.

    make soak            (or: python -m bench.soak [--messages N] [--fault-rate R] [--seed S])

Prints one table: accepted, sent, dead-lettered, duplicates (inside and outside the crash
window), lost, and the time to drain. The targets are lost = 0 and no duplicate outside the
crash window (a message whose status was `sending` when the host was killed).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from azure.data.tables import TableClient

from bench.stack import client_headers
from devstack.azurite import Azurite
from devstack.host_process import LocalHostProcess
from devstack.sendgrid_standin import SendGridStandIn

TABLE = "soakstatus"
FAULTS: list[dict[str, Any]] = [
    {"status": 500},
    {"status": 503},
    {"status": 429, "headers": {"Retry-After": "1"}},
    {"drop_connection": True},
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=2017)
    parser.add_argument("--drain-timeout", type=float, default=900)
    return parser.parse_args(argv)


def host_settings(azurite: Azurite, standin: SendGridStandIn) -> dict[str, str]:
    """The gateway's settings for the soak: fast retries, short hold after a kill."""
    return {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": azurite.connection_string,
        "MAIL_QUEUE_NAME": "mail-soak",
        "STATUS_TABLE_NAME": TABLE,
        "ALLOWED_SENDERS": "@example.com",
        "SENDGRID_API_BASE_URL": standin.base_url,
        "SENDGRID_API_KEY": standin.api_key,
        # As infra/ deploys it; unset, the host would leave the retention timer out, in error.
        "RETENTION_SCHEDULE": "0 17 * * * *",
        "SENDGRID_CONNECT_TIMEOUT_SECONDS": "1",
        "SENDGRID_TIMEOUT_SECONDS": "2",
        "MAX_DELIVERY_ATTEMPTS": "8",
        "RETRY_BASE_DELAY_SECONDS": "1",
        "RETRY_MAX_DELAY_SECONDS": "5",
        "LOCAL_QUEUE_HOLD_SECONDS": "5",
    }


def states(table: TableClient) -> dict[str, str]:
    """Every message's state, from the status table."""
    return {
        e["PartitionKey"]: e["state"]
        for e in table.query_entities("RowKey eq 'status'", select=["PartitionKey", "state"])
    }


def submit(host: LocalHostProcess, count: int) -> list[str]:
    """POST `count` messages from 16 threads; return the accepted ids."""
    headers = client_headers(host.settings)

    def post(n: int) -> str | None:
        message = {
            "from": "soak@example.com",
            "to": [f"r{n}@example.org"],
            "subject": f"Soak {n}",
            "text": "soak",
        }
        response = host.http.post("/api/v1/messages", json=message, headers=headers)
        return str(response.json()["id"]) if response.status_code == 202 else None

    with ThreadPoolExecutor(max_workers=16) as pool:
        return [i for i in pool.map(post, range(count)) if i]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak and return its figures."""
    rng = random.Random(args.seed)
    with (
        tempfile.TemporaryDirectory() as workdir,
        Azurite(in_memory=True) as azurite,
        SendGridStandIn(outbox=Path(workdir) / "outbox") as standin,
    ):
        script = [
            rng.choice(FAULTS) if rng.random() < args.fault_rate else {"status": 202}
            for _ in range(int(args.messages * 2))
        ]
        standin.script(script)
        host = LocalHostProcess(host_settings(azurite, standin), Path(workdir))
        table = TableClient.from_connection_string(azurite.connection_string, TABLE)
        started = time.monotonic()
        try:
            ids = submit(host, args.messages)
            crash_window: set[str] = set()
            for fraction in (0.25, 0.6):
                while sum(s == "sent" for s in states(table).values()) < fraction * len(ids):
                    time.sleep(0.2)
                host.kill()
                crash_window |= {i for i, s in states(table).items() if s == "sending"}
                host.restart()
            deadline = time.monotonic() + args.drain_timeout
            while time.monotonic() < deadline:
                current = states(table)
                if all(current.get(i) in {"sent", "failed"} for i in ids):
                    break
                time.sleep(0.5)
            drained = time.monotonic() - started
            final = states(table)
        finally:
            host.stop()
        counts = Counter(
            m["payload"]["personalizations"][0]["custom_args"]["mailgate_id"]
            for m in standin.mails()
        )
        requests = len(standin.requests())
    duplicates = {i for i in ids if counts[i] > 1}
    return {
        "accepted": len(ids),
        "sent": sum(final.get(i) == "sent" for i in ids),
        "dead-lettered": sum(final.get(i) == "failed" for i in ids),
        "duplicates in crash window": len(duplicates & crash_window),
        "duplicates outside it": len(duplicates - crash_window),
        "lost": sum(counts[i] == 0 and final.get(i) != "failed" for i in ids),
        "crash window (sending at a kill)": len(crash_window),
        "SendGrid requests (faults included)": requests,
        "time to drain (s)": round(drained, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak, print its table; 1 if anything was lost or duplicated outside the window."""
    args = parse_args(argv)
    figures = run(args)
    print(
        f"\nsoak: {args.messages} messages, {args.fault_rate:.0%} transient faults "
        f"(500, 503, 429, dropped connection), 2 host SIGKILLs, seed {args.seed}\n"
    )
    width = max(len(k) for k in figures)
    print(f"| {'figure'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in figures.items():
        print(f"| {name.ljust(width)} | {value} |")
    ok = figures["lost"] == 0 and figures["duplicates outside it"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
